//! Settings of the two windowed topologies `paystream run` ships: SMS notifications and the
//! missing-completion detector. Each is on by default and switched off with
//! `--sms-enabled false` / `--approval-timeout-enabled false` (or the TOML keys
//! `sms-enabled = false`, `approval-timeout-enabled = false`).

use clap::Args;
use paystream_topology::approval::ApprovalTimeoutConfig;
use paystream_topology::shipped::{TimestampSource, DEFAULT_MAX_FUTURE_MS};
use paystream_topology::sms::SmsConfig;
use paystream_topology::ShippedTopologies;
use serde::Deserialize;

use super::{invalid, validate_topic_like, ConfigError};

/// `--timestamp-source`: the flag's spelling of [`TimestampSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TimestampSourceArg {
    /// The event's JSON `ts`: a replay of old history keeps its original times.
    Event,
    /// The Kafka record timestamp (producer or broker time).
    Record,
}

/// Flags of the shipped topologies' clock and of the windowed topologies (part of
/// `paystream run`).
#[derive(Debug, Clone, Default, Args)]
pub struct WindowedArgs {
    /// The one clock of every topology: stream time, windows, grace, approval deadlines. `event`:
    /// the event's JSON `ts` (a replay of year-old history raises the alerts it raised then);
    /// `record`: the Kafka record timestamp. [default: event]
    #[arg(long, env = "PAYSTREAM_TIMESTAMP_SOURCE", value_name = "SOURCE")]
    pub timestamp_source: Option<TimestampSourceArg>,

    /// Records whose time is more than this far ahead of the wall clock go to the dead-letter
    /// topic (reason timestamp_in_future) and never move stream time: one event dated 2100 would
    /// otherwise make every later event "late". [default: 3600000 (1 h)]
    #[arg(long, env = "PAYSTREAM_MAX_FUTURE_MS", value_name = "MS")]
    pub max_future_ms: Option<i64>,

    /// Run the SMS notification topology: one request on --sms-topic per approved or cancelled
    /// order, never two within the dedup window. [default: true]
    #[arg(long, env = "PAYSTREAM_SMS_ENABLED", value_name = "BOOL")]
    pub sms_enabled: Option<bool>,

    /// Topic SMS requests are written to (created with the input's partition count if
    /// missing). [default: SEND_SMS]
    #[arg(long, env = "PAYSTREAM_SMS_TOPIC", value_name = "TOPIC")]
    pub sms_topic: Option<String>,

    /// Topic for SMS not sent (over the per-phone cap, or no phone), with the reason.
    /// [default: <sms-topic>.SUPPRESSED]
    #[arg(long, env = "PAYSTREAM_SMS_SUPPRESSED_TOPIC", value_name = "TOPIC")]
    pub sms_suppressed_topic: Option<String>,

    /// The same SMS for the same order is never sent twice within this much event time.
    /// [default: 86400000 (24 h)]
    #[arg(long, env = "PAYSTREAM_SMS_DEDUP_WINDOW_MS", value_name = "MS")]
    pub sms_dedup_window_ms: Option<i64>,

    /// At most this many SMS per phone number within --sms-rate-window-ms (counted per
    /// partition); the excess goes to the suppressed topic. [default: 5]
    #[arg(long, env = "PAYSTREAM_SMS_RATE_LIMIT", value_name = "N")]
    pub sms_rate_limit: Option<u32>,

    /// Window of the per-phone cap. [default: 3600000 (1 h)]
    #[arg(long, env = "PAYSTREAM_SMS_RATE_WINDOW_MS", value_name = "MS")]
    pub sms_rate_window_ms: Option<i64>,

    /// How far (event time) behind the newest event an SMS event may arrive and still be handled;
    /// later ones are dropped and counted (paystream_records_late_total). [default: 3600000]
    #[arg(long, env = "PAYSTREAM_SMS_GRACE_MS", value_name = "MS")]
    pub sms_grace_ms: Option<i64>,

    /// Run the missing-completion detector: an APPROVAL_REQUESTED with no APPROVAL_COMPLETED or
    /// APPROVAL_FAILED within the timeout raises an alert. [default: true]
    #[arg(long, env = "PAYSTREAM_APPROVAL_TIMEOUT_ENABLED", value_name = "BOOL")]
    pub approval_timeout_enabled: Option<bool>,

    /// Topic alerts (status TIMEOUT) and their resolutions (status RESOLVED) go to.
    /// [default: PAYMENT.APPROVAL_TIMEOUT]
    #[arg(long, env = "PAYSTREAM_APPROVAL_TIMEOUT_TOPIC", value_name = "TOPIC")]
    pub approval_timeout_topic: Option<String>,

    /// Event time an approval may take before it is alerted. [default: 300000 (5 min)]
    #[arg(long, env = "PAYSTREAM_APPROVAL_TIMEOUT_MS", value_name = "MS")]
    pub approval_timeout_ms: Option<i64>,

    /// Extra event time to wait for out-of-order completions before alerting. [default: 10000]
    #[arg(long, env = "PAYSTREAM_APPROVAL_TIMEOUT_GRACE_MS", value_name = "MS")]
    pub approval_timeout_grace_ms: Option<i64>,

    /// How often, in stream time, pending approvals are checked: an alert comes at most this
    /// much event time after its deadline + grace. [default: 5000]
    #[arg(
        long,
        env = "PAYSTREAM_APPROVAL_TIMEOUT_CHECK_INTERVAL_MS",
        value_name = "MS"
    )]
    pub approval_timeout_check_interval_ms: Option<i64>,

    /// How long raised alerts are remembered (event time): no order is alerted twice within it,
    /// and `GET /alerts` lists that far back. [default: 604800000 (7 days)]
    #[arg(
        long,
        env = "PAYSTREAM_APPROVAL_TIMEOUT_ALERT_RETENTION_MS",
        value_name = "MS"
    )]
    pub approval_timeout_alert_retention_ms: Option<i64>,
}

/// The windowed keys of the TOML file (moved out of `FileConfig`).
#[derive(Debug, Default)]
pub(super) struct WindowedFile {
    pub(super) sms_enabled: Option<bool>,
    pub(super) sms_topic: Option<String>,
    pub(super) sms_suppressed_topic: Option<String>,
    pub(super) sms_dedup_window_ms: Option<i64>,
    pub(super) sms_rate_limit: Option<u32>,
    pub(super) sms_rate_window_ms: Option<i64>,
    pub(super) sms_grace_ms: Option<i64>,
    pub(super) approval_timeout_enabled: Option<bool>,
    pub(super) approval_timeout_topic: Option<String>,
    pub(super) approval_timeout_ms: Option<i64>,
    pub(super) approval_timeout_grace_ms: Option<i64>,
    pub(super) approval_timeout_check_interval_ms: Option<i64>,
    pub(super) approval_timeout_alert_retention_ms: Option<i64>,
    pub(super) timestamp_source: Option<TimestampSourceArg>,
    pub(super) max_future_ms: Option<i64>,
}

const MAX_WINDOW_MS: i64 = 30 * 24 * 3_600_000;

fn window_ms(key: &'static str, value: i64, min: i64) -> Result<i64, ConfigError> {
    if !(min..=MAX_WINDOW_MS).contains(&value) {
        return Err(invalid(
            key,
            format!("{value} is outside {min}..={MAX_WINDOW_MS} (30 days)"),
        ));
    }
    Ok(value)
}

impl WindowedArgs {
    /// Merge with the file, apply defaults, validate; `input` and `dlq` are the topics the
    /// outputs must differ from.
    pub(super) fn build(
        &self,
        file: &WindowedFile,
        input: &str,
        dlq: &str,
    ) -> Result<ShippedTopologies, ConfigError> {
        let mut taken: Vec<(&'static str, String)> = vec![
            ("input-topic", input.to_owned()),
            ("dlq-topic", dlq.to_owned()),
        ];
        let mut check_topic = |key: &'static str, topic: &str| -> Result<(), ConfigError> {
            validate_topic_like(key, topic)?;
            if let Some((other, _)) = taken.iter().find(|(_, t)| t == topic) {
                return Err(invalid(key, format!("{topic:?} is already the {other}")));
            }
            taken.push((key, topic.to_owned()));
            Ok(())
        };
        let d = SmsConfig::default();
        let sms = if self.sms_enabled.or(file.sms_enabled).unwrap_or(true) {
            let topic = self
                .sms_topic
                .clone()
                .or(file.sms_topic.clone())
                .unwrap_or(d.topic);
            check_topic("sms-topic", &topic)?;
            let suppressed_topic = self
                .sms_suppressed_topic
                .clone()
                .or(file.sms_suppressed_topic.clone())
                .unwrap_or_else(|| format!("{topic}.SUPPRESSED"));
            check_topic("sms-suppressed-topic", &suppressed_topic)?;
            let rate_limit = self
                .sms_rate_limit
                .or(file.sms_rate_limit)
                .unwrap_or(d.rate_limit);
            if rate_limit == 0 {
                return Err(invalid("sms-rate-limit", "must be at least 1"));
            }
            Some(SmsConfig {
                topic,
                suppressed_topic,
                dedup_window_ms: window_ms(
                    "sms-dedup-window-ms",
                    self.sms_dedup_window_ms
                        .or(file.sms_dedup_window_ms)
                        .unwrap_or(d.dedup_window_ms),
                    1,
                )?,
                rate_limit,
                rate_window_ms: window_ms(
                    "sms-rate-window-ms",
                    self.sms_rate_window_ms
                        .or(file.sms_rate_window_ms)
                        .unwrap_or(d.rate_window_ms),
                    1,
                )?,
                grace_ms: window_ms(
                    "sms-grace-ms",
                    self.sms_grace_ms
                        .or(file.sms_grace_ms)
                        .unwrap_or(d.grace_ms),
                    0,
                )?,
            })
        } else {
            None
        };
        let d = ApprovalTimeoutConfig::default();
        let approval_timeout = if self
            .approval_timeout_enabled
            .or(file.approval_timeout_enabled)
            .unwrap_or(true)
        {
            let topic = self
                .approval_timeout_topic
                .clone()
                .or(file.approval_timeout_topic.clone())
                .unwrap_or(d.topic);
            check_topic("approval-timeout-topic", &topic)?;
            Some(ApprovalTimeoutConfig {
                topic,
                timeout_ms: window_ms(
                    "approval-timeout-ms",
                    self.approval_timeout_ms
                        .or(file.approval_timeout_ms)
                        .unwrap_or(d.timeout_ms),
                    1,
                )?,
                grace_ms: window_ms(
                    "approval-timeout-grace-ms",
                    self.approval_timeout_grace_ms
                        .or(file.approval_timeout_grace_ms)
                        .unwrap_or(d.grace_ms),
                    0,
                )?,
                check_interval_ms: window_ms(
                    "approval-timeout-check-interval-ms",
                    self.approval_timeout_check_interval_ms
                        .or(file.approval_timeout_check_interval_ms)
                        .unwrap_or(d.check_interval_ms),
                    1,
                )?,
                alert_retention_ms: window_ms(
                    "approval-timeout-alert-retention-ms",
                    self.approval_timeout_alert_retention_ms
                        .or(file.approval_timeout_alert_retention_ms)
                        .unwrap_or(d.alert_retention_ms),
                    60_000,
                )?,
            })
        } else {
            None
        };
        let timestamp_source = match self.timestamp_source.or(file.timestamp_source) {
            None | Some(TimestampSourceArg::Event) => TimestampSource::Event,
            Some(TimestampSourceArg::Record) => TimestampSource::Record,
        };
        let max_future_ms = self
            .max_future_ms
            .or(file.max_future_ms)
            .unwrap_or(DEFAULT_MAX_FUTURE_MS);
        if !(0..=MAX_WINDOW_MS * 12).contains(&max_future_ms) {
            return Err(invalid(
                "max-future-ms",
                format!(
                    "{max_future_ms} is outside 0..={} (360 days)",
                    MAX_WINDOW_MS * 12
                ),
            ));
        }
        Ok(ShippedTopologies {
            sms,
            approval_timeout,
            timestamp_source,
            max_future_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::RunArgs;
    use super::*;

    #[test]
    fn both_topologies_run_by_default_and_can_be_switched_off() {
        let s = RunArgs::default().build().unwrap();
        assert_eq!(s.shipped, ShippedTopologies::all());
        let off = RunArgs {
            windowed: WindowedArgs {
                sms_enabled: Some(false),
                approval_timeout_enabled: Some(false),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(off.build().unwrap().shipped, ShippedTopologies::default());
    }

    #[test]
    fn the_clock_is_event_time_with_a_one_hour_future_bound_unless_asked_otherwise() {
        let s = RunArgs::default().build().unwrap().shipped;
        assert_eq!(s.timestamp_source, TimestampSource::Event);
        assert_eq!(s.max_future_ms, 3_600_000);
        let record = RunArgs {
            windowed: WindowedArgs {
                timestamp_source: Some(TimestampSourceArg::Record),
                max_future_ms: Some(0),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = record.build().unwrap().shipped;
        assert_eq!(s.timestamp_source, TimestampSource::Record);
        assert_eq!(s.max_future_ms, 0);
    }

    #[test]
    fn bad_windowed_values_name_their_key() {
        let cases = [
            (
                WindowedArgs {
                    sms_rate_limit: Some(0),
                    ..Default::default()
                },
                "sms-rate-limit",
            ),
            (
                WindowedArgs {
                    sms_dedup_window_ms: Some(0),
                    ..Default::default()
                },
                "sms-dedup-window-ms",
            ),
            (
                WindowedArgs {
                    sms_topic: Some("PAYMENT.ORDER".into()),
                    ..Default::default()
                },
                "sms-topic",
            ),
            (
                WindowedArgs {
                    approval_timeout_topic: Some("SEND_SMS".into()),
                    ..Default::default()
                },
                "approval-timeout-topic",
            ),
            (
                WindowedArgs {
                    approval_timeout_ms: Some(-5),
                    ..Default::default()
                },
                "approval-timeout-ms",
            ),
            (
                WindowedArgs {
                    max_future_ms: Some(-1),
                    ..Default::default()
                },
                "max-future-ms",
            ),
        ];
        for (windowed, key) in cases {
            let err = RunArgs {
                windowed,
                ..Default::default()
            }
            .build()
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
}
