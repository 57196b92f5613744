//! `paystream deliver` settings: flags (and `PAYSTREAM_*` variables) → validated
//! [`DeliverSettings`]. Every refusal names the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{invalid, ConfigError, KafkaArgs, KafkaSettings};
use crate::delivery::breaker::BreakerConfig;
use crate::delivery::permits::MAX_PERMITS;
use crate::delivery::policy::{parse_duration, RetrySchedule};

/// Flags of `paystream deliver`.
#[derive(Debug, Clone, Args)]
pub struct DeliverArgs {
    /// Kafka brokers, comma-separated HOST:PORT.
    #[arg(
        long,
        env = "PAYSTREAM_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_servers: String,
    /// The topic of SMS requests (`paystream run --sms-topic`). Its retry topics are
    /// `<topic>.RETRY.1`, `.2`, ... and its dead-letter topic `<topic>.DLQ`, created with its
    /// partition count if missing.
    #[arg(long, default_value = "SEND_SMS")]
    pub sms_topic: String,
    /// Consumer group of the delivering instances (start more with the same group to share the
    /// partitions).
    #[arg(long, default_value = "paystream-deliver")]
    pub group_id: String,
    /// Address of this instance's HTTP server: /health, /metrics, /admin/permits.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub http_addr: SocketAddr,
    /// Replication factor of the retry and dead-letter topics it creates.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// How SMS are delivered: the flags `paystream deliver` and `paystream run` share.
#[derive(Debug, Clone, Default, Args)]
pub struct DeliveryArgs {
    /// The SMS gateway: every SMS request is POSTed here as JSON, with an `Idempotency-Key`
    /// header holding the SMS's event id (a gateway that honours it never sends twice). For
    /// `paystream run`: deliver this instance's application's SMS too (off without it).
    #[arg(long, env = "PAYSTREAM_SMS_GATEWAY_URL", value_name = "URL")]
    pub sms_gateway_url: Option<String>,
    /// Gateway calls in flight at most, per instance. Changed at run time with
    /// `PUT /admin/permits` (needs --admin-token).
    #[arg(long, default_value_t = 8)]
    pub permits: usize,
    /// Delay before each retry: one retry topic per delay, increasing. After the last, an SMS
    /// that still fails goes to the DLQ.
    #[arg(long, default_value = "10s,1m,10m")]
    pub retry_delays: String,
    /// A gateway call that has not answered after this long is a failure (retryable).
    #[arg(long, default_value = "5s")]
    pub call_timeout: String,
    /// Records held (polled and not finished: waiting for a permit, their order or their retry
    /// time, or in a call) at which the consumer pauses its partitions, resuming them at half:
    /// what bounds memory when the gateway is slow (lag grows instead). librdkafka takes about a
    /// second to fetch again after a resume, so half of this should cover a second of delivery
    /// (BENCHMARKS.md, "SMS delivery").
    #[arg(long, default_value_t = 10_000)]
    pub max_buffered: usize,
    /// A wait for a permit longer than this is counted as timed out (the
    /// `paystream_delivery_permit_wait_timeouts_total` metric: the gateway cannot keep up).
    #[arg(long, default_value = "1s")]
    pub permit_wait: String,
    /// The circuit opens after this many failed calls in a row...
    #[arg(long, default_value_t = 5)]
    pub circuit_failures: u32,
    /// ...or when more than this share of the calls of --circuit-window failed...
    #[arg(long, default_value_t = 0.5)]
    pub circuit_failure_rate: f64,
    /// ...(the window)...
    #[arg(long, default_value = "30s")]
    pub circuit_window: String,
    /// ...once the window holds this many calls.
    #[arg(long, default_value_t = 20)]
    pub circuit_min_calls: usize,
    /// How long an open circuit skips the gateway (records go to the first retry topic) before
    /// one probe call decides whether it closes.
    #[arg(long, default_value = "10s")]
    pub circuit_cool_down: String,
    /// Bearer token of the admin endpoints (`GET`/`PUT /admin/permits`). Without a token (or
    /// --admin-token-file) there are no admin endpoints.
    #[arg(long, env = "PAYSTREAM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding the admin token (its first line).
    #[arg(long, conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
}

/// Where a delivering instance runs: what `paystream deliver` has flags for, and `paystream
/// run` takes from its own settings.
#[derive(Debug, Clone)]
pub struct DeliveryPlace {
    pub bootstrap_servers: String,
    pub sms_topic: String,
    pub group_id: String,
    pub http_addr: SocketAddr,
    pub replication_factor: i32,
    pub kafka: KafkaSettings,
}

/// Validated settings of one delivering instance.
#[derive(Debug, Clone)]
pub struct DeliverSettings {
    pub bootstrap_servers: String,
    pub gateway_url: String,
    pub sms_topic: String,
    pub group_id: String,
    pub permits: usize,
    pub retry: RetrySchedule,
    pub call_timeout: Duration,
    pub max_buffered: usize,
    pub permit_wait: Duration,
    pub breaker: BreakerConfig,
    pub admin_token: Option<String>,
    pub http_addr: SocketAddr,
    pub replication_factor: i32,
    pub kafka: KafkaSettings,
}

impl DeliverSettings {
    /// `<sms topic>.RETRY.<level>` (level from 1).
    pub fn retry_topic(&self, level: usize) -> String {
        format!("{}.RETRY.{level}", self.sms_topic)
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("{}.DLQ", self.sms_topic)
    }
}

fn duration(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value.trim())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            invalid(
                key,
                format!("{value:?} is not a duration like 500ms, 5s, 1m"),
            )
        })
}

impl DeliverArgs {
    /// Validates every flag; the first error names its flag.
    pub fn build(&self) -> Result<DeliverSettings, ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(invalid("bootstrap-servers", "empty"));
        }
        if self.sms_topic.trim().is_empty() {
            return Err(invalid("sms-topic", "empty"));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid("group-id", "empty"));
        }
        if !(1..=16).contains(&self.replication_factor) {
            return Err(invalid(
                "replication-factor",
                format!("{} is outside 1..=16", self.replication_factor),
            ));
        }
        let place = DeliveryPlace {
            bootstrap_servers: self.bootstrap_servers.trim().to_owned(),
            sms_topic: self.sms_topic.trim().to_owned(),
            group_id: self.group_id.trim().to_owned(),
            http_addr: self.http_addr,
            replication_factor: self.replication_factor,
            kafka: self.kafka.build(None)?,
        };
        self.delivery
            .build(place)?
            .ok_or_else(|| invalid("sms-gateway-url", "required"))
    }
}

impl DeliveryArgs {
    /// The settings of a deliverer at `place`, or `None` without --sms-gateway-url.
    pub fn build(&self, place: DeliveryPlace) -> Result<Option<DeliverSettings>, ConfigError> {
        let Some(url) = self.sms_gateway_url.as_deref().map(str::trim) else {
            return Ok(None);
        };
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| invalid("sms-gateway-url", format!("{url:?}: {e}")))?;
        if parsed.scheme() != "http" {
            return Err(invalid(
                "sms-gateway-url",
                format!("{url:?}: only http:// is supported (put a TLS proxy in front)"),
            ));
        }
        if !(1..=MAX_PERMITS).contains(&self.permits) {
            return Err(invalid(
                "permits",
                format!("{} is outside 1..={MAX_PERMITS}", self.permits),
            ));
        }
        let retry = RetrySchedule::parse(&self.retry_delays)
            .map_err(|e| invalid("retry-delays", e.to_string()))?;
        if !(1..=1_000_000).contains(&self.max_buffered) {
            return Err(invalid(
                "max-buffered",
                format!("{} is outside 1..=1000000", self.max_buffered),
            ));
        }
        if !(self.circuit_failure_rate > 0.0 && self.circuit_failure_rate <= 1.0) {
            return Err(invalid(
                "circuit-failure-rate",
                format!("{} is outside (0, 1]", self.circuit_failure_rate),
            ));
        }
        if self.circuit_failures == 0 {
            return Err(invalid("circuit-failures", "must be at least 1"));
        }
        let breaker = BreakerConfig {
            consecutive_failures: self.circuit_failures,
            failure_rate: self.circuit_failure_rate,
            window: duration("circuit-window", &self.circuit_window)?,
            min_calls: self.circuit_min_calls.max(1),
            cool_down: duration("circuit-cool-down", &self.circuit_cool_down)?,
        };
        let admin_token = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid("admin-token-file", format!("{}: {e}", path.display())))?;
                Some(text.lines().next().unwrap_or("").trim().to_owned())
            }
            (None, None) => None,
        };
        if let Some(t) = &admin_token {
            if t.len() < 16 {
                return Err(invalid(
                    "admin-token",
                    "must be at least 16 characters (it guards the gateway's load)",
                ));
            }
        }
        Ok(Some(DeliverSettings {
            bootstrap_servers: place.bootstrap_servers,
            gateway_url: url.to_owned(),
            sms_topic: place.sms_topic,
            group_id: place.group_id,
            permits: self.permits,
            retry,
            call_timeout: duration("call-timeout", &self.call_timeout)?,
            max_buffered: self.max_buffered,
            permit_wait: duration("permit-wait", &self.permit_wait)?,
            breaker,
            admin_token,
            http_addr: place.http_addr,
            replication_factor: place.replication_factor,
            kafka: place.kafka,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DeliverArgs,
    }

    fn build(extra: &[&str]) -> Result<DeliverSettings, ConfigError> {
        let mut argv = vec!["deliver", "--sms-gateway-url", "http://127.0.0.1:9/send"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("flags parse").args.build()
    }

    fn refused_key(extra: &[&str]) -> &'static str {
        match build(extra) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{extra:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_name_the_derived_topics() {
        let s = build(&[]).expect("defaults");
        assert_eq!(s.permits, 8);
        assert_eq!(s.max_buffered, 10_000);
        assert_eq!(s.retry.levels(), 3);
        assert_eq!(s.retry_topic(2), "SEND_SMS.RETRY.2");
        assert_eq!(s.dead_letter_topic(), "SEND_SMS.DLQ");
        assert_eq!(s.call_timeout, Duration::from_secs(5));
        assert!(s.admin_token.is_none());
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        assert_eq!(refused_key(&["--permits", "0"]), "permits");
        assert_eq!(refused_key(&["--permits", "5000"]), "permits");
        assert_eq!(refused_key(&["--retry-delays", "1m,10s"]), "retry-delays");
        assert_eq!(refused_key(&["--call-timeout", "soon"]), "call-timeout");
        assert_eq!(refused_key(&["--admin-token", "short"]), "admin-token");
        assert_eq!(
            refused_key(&["--circuit-failure-rate", "1.5"]),
            "circuit-failure-rate"
        );
        assert_eq!(
            refused_key(&["--admin-token-file", "/nonexistent/token"]),
            "admin-token-file"
        );
        let mut argv = vec!["deliver", "--sms-gateway-url", "ftp://gateway/send"];
        argv.truncate(3);
        let bad = Cli::try_parse_from(argv).expect("flags parse").args.build();
        assert!(
            matches!(
                bad,
                Err(ConfigError::Invalid {
                    key: "sms-gateway-url",
                    ..
                })
            ),
            "{bad:?}"
        );
    }

    #[test]
    fn the_token_file_gives_its_first_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\nignored\n").expect("write");
        let s = build(&["--admin-token-file", path.to_str().expect("utf-8")]).expect("valid");
        assert_eq!(s.admin_token.as_deref(), Some("0123456789abcdef0123"));
    }
}
