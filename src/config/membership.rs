//! Settings of the leader's probes of the other members (`paystream run --evict-dead-members
//! ...`): how a `kill -9`ed instance is removed from the group in about a second instead of
//! after the session timeout (see `coordination::eviction`).

use std::time::Duration;

use clap::Args;

use super::{invalid, ConfigError};
use crate::cluster::probe::ProbeSettings;
use crate::coordination::eviction::EvictionPolicy;

/// Probing is on: a crashed instance's partitions move in about a second.
pub(super) const DEFAULT_EVICT_DEAD_MEMBERS: bool = true;
/// Time between probes: three refusals take about 0.6 s.
pub(super) const DEFAULT_MEMBER_PROBE_INTERVAL_MS: u64 = 200;
/// Refusals in a row that prove a process gone: one refusal can be a server restarting its
/// listener; three, 0.4 s apart end to end, cannot.
pub(super) const DEFAULT_MEMBER_PROBE_REFUSALS: u32 = 3;

/// Flags of the member probes (part of `paystream run`).
#[derive(Debug, Clone, Default, Args)]
pub struct MembershipArgs {
    /// On the group leader, probe every other instance's query endpoint and remove an instance
    /// from the group as soon as its endpoint refuses connections --member-probe-refusals times
    /// in a row (its process is gone), so its partitions move at once instead of after
    /// --session-timeout-ms. A paused or unreachable instance (connections accepted or timing
    /// out) is left to the session timeout. With --group-instance-id, a restart that keeps the
    /// endpoint closed for longer than the probes costs one rebalance; turn this off to keep
    /// static seats through slow restarts. [default: true]
    #[arg(
        long,
        env = "PAYSTREAM_EVICT_DEAD_MEMBERS",
        value_name = "true|false",
        action = clap::ArgAction::Set
    )]
    pub evict_dead_members: Option<bool>,

    /// Time between the leader's probes of the other instances (each probe is one TCP connect,
    /// bounded by this interval too). [default: 200]
    #[arg(long, env = "PAYSTREAM_MEMBER_PROBE_INTERVAL_MS", value_name = "MS")]
    pub member_probe_interval_ms: Option<u64>,

    /// Refused connections in a row after which the leader removes an instance. [default: 3]
    #[arg(long, env = "PAYSTREAM_MEMBER_PROBE_REFUSALS", value_name = "N")]
    pub member_probe_refusals: Option<u32>,
}

/// The probe keys of the TOML file (kept apart from `FileConfig`'s others).
#[derive(Debug, Default)]
pub(super) struct MembershipFile {
    pub(super) evict_dead_members: Option<bool>,
    pub(super) member_probe_interval_ms: Option<u64>,
    pub(super) member_probe_refusals: Option<u32>,
}

impl MembershipArgs {
    /// Merge with the file, apply defaults, validate: the probes must be able to remove a member
    /// before its session timeout would.
    pub(super) fn build(
        &self,
        file: &MembershipFile,
        session_timeout: Duration,
    ) -> Result<ProbeSettings, ConfigError> {
        let enabled = self
            .evict_dead_members
            .or(file.evict_dead_members)
            .unwrap_or(DEFAULT_EVICT_DEAD_MEMBERS);
        let interval_ms = self
            .member_probe_interval_ms
            .or(file.member_probe_interval_ms)
            .unwrap_or(DEFAULT_MEMBER_PROBE_INTERVAL_MS);
        if !(20..=60_000).contains(&interval_ms) {
            return Err(invalid(
                "member-probe-interval-ms",
                format!("{interval_ms} is outside 20..=60000"),
            ));
        }
        let refusals = self
            .member_probe_refusals
            .or(file.member_probe_refusals)
            .unwrap_or(DEFAULT_MEMBER_PROBE_REFUSALS);
        if !(1..=100).contains(&refusals) {
            return Err(invalid(
                "member-probe-refusals",
                format!("{refusals} is outside 1..=100"),
            ));
        }
        let interval = Duration::from_millis(interval_ms);
        if enabled && interval * refusals >= session_timeout {
            return Err(invalid(
                "member-probe-interval-ms",
                format!(
                    "{refusals} probes {interval_ms} ms apart take as long as the session timeout \
                     ({} ms): lower them, or set --evict-dead-members false",
                    session_timeout.as_millis()
                ),
            ));
        }
        Ok(ProbeSettings {
            policy: EvictionPolicy { enabled, refusals },
            interval,
            connect_timeout: interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(10);

    #[test]
    fn defaults_file_flags_and_errors_name_the_key() {
        let s = MembershipArgs::default()
            .build(&MembershipFile::default(), SESSION)
            .unwrap();
        assert!(s.policy.enabled);
        assert_eq!(s.policy.refusals, 3);
        assert_eq!(s.interval, Duration::from_millis(200));
        let s = MembershipArgs {
            evict_dead_members: Some(true),
            ..Default::default()
        }
        .build(
            &MembershipFile {
                evict_dead_members: Some(false),
                member_probe_refusals: Some(5),
                ..Default::default()
            },
            SESSION,
        )
        .unwrap();
        assert!(s.policy.enabled, "the flag wins over the file");
        assert_eq!(s.policy.refusals, 5);
        for (args, key) in [
            (
                MembershipArgs {
                    member_probe_interval_ms: Some(0),
                    ..Default::default()
                },
                "member-probe-interval-ms",
            ),
            (
                MembershipArgs {
                    member_probe_refusals: Some(0),
                    ..Default::default()
                },
                "member-probe-refusals",
            ),
            (
                MembershipArgs {
                    member_probe_interval_ms: Some(5_000),
                    ..Default::default()
                },
                "member-probe-interval-ms",
            ),
        ] {
            let err = args
                .build(&MembershipFile::default(), SESSION)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
        // Off: the probes are not checked against the session timeout.
        let off = MembershipArgs {
            evict_dead_members: Some(false),
            member_probe_interval_ms: Some(5_000),
            ..Default::default()
        };
        assert!(
            !off.build(&MembershipFile::default(), SESSION)
                .unwrap()
                .policy
                .enabled
        );
    }
}
