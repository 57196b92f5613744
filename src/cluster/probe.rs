//! The leader's probes of the other members' query endpoints, and the removal of members whose
//! process is gone (see [`crate::coordination::eviction`] for the decision and why only refusals
//! count).
//!
//! ```text
//!   leader's heartbeat loop ── every probe interval ─▶ probe_round (TCP connect to each endpoint)
//!        ▲                                                   │ Accepted / Refused / Inconclusive
//!        │                                                   ▼
//!        └── rebalance now ◀── LeaveGroup(dead members) ◀── MemberProber::observe ─▶ evictions
//! ```
//! Only the I/O lives here: one TCP connect per member and round, bounded by a timeout, all
//! members of a round at once.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::coordination::eviction::{
    evictions, Eviction, EvictionPolicy, ProbeOutcome, ProbeStreaks, ProbedMember,
};
use crate::coordination::membership::JoinedMember;
use crate::coordination::protocol::SubscriptionInfo;

/// Settings of the leader's member probes (`--evict-dead-members`, `--member-probe-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    pub policy: EvictionPolicy,
    /// Time between probe rounds.
    pub interval: Duration,
    /// Bound on one connection attempt; a probe that takes longer is inconclusive.
    pub connect_timeout: Duration,
}

/// One member as the leader probes it.
#[derive(Debug, Clone)]
struct Target {
    member_id: String,
    group_instance_id: Option<String>,
    endpoint: String,
}

/// The probes of one generation: on its leader of every other member, on a follower of the
/// leader.
#[derive(Debug)]
pub struct MemberProber {
    settings: ProbeSettings,
    /// The probing member (never evicted by its own probes, nor a member on its endpoint).
    leader_member_id: String,
    leader_endpoint: String,
    targets: Vec<Target>,
    streaks: ProbeStreaks,
}

impl MemberProber {
    /// Probes for the generation whose members the leader got in its JoinGroup answer; `None`
    /// when probing is off or no other member has a readable endpoint.
    pub fn new(
        settings: ProbeSettings,
        leader_member_id: &str,
        leader_endpoint: &str,
        members: &[JoinedMember],
    ) -> Option<Self> {
        if !settings.policy.enabled {
            return None;
        }
        let targets: Vec<Target> = members
            .iter()
            .filter(|m| m.member_id != leader_member_id)
            .filter_map(|m| {
                let endpoint = SubscriptionInfo::decode(&m.user_data).ok()?.endpoint;
                Some(Target {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    endpoint,
                })
            })
            .collect();
        if targets.is_empty() {
            return None;
        }
        Some(Self {
            settings,
            leader_member_id: leader_member_id.to_owned(),
            leader_endpoint: leader_endpoint.to_owned(),
            targets,
            streaks: ProbeStreaks::default(),
        })
    }

    /// A follower's probes of the group leader at `leader_endpoint` (a killed leader has no
    /// one else to notice it): the same rules, with this member in the prober's place. `None`
    /// when probing is off or the leader is this member's own endpoint.
    pub fn of_leader(
        settings: ProbeSettings,
        own_member_id: &str,
        own_endpoint: &str,
        leader_member_id: &str,
        leader_endpoint: &str,
    ) -> Option<Self> {
        if !settings.policy.enabled || leader_endpoint == own_endpoint {
            return None;
        }
        Some(Self {
            settings,
            leader_member_id: own_member_id.to_owned(),
            leader_endpoint: own_endpoint.to_owned(),
            targets: vec![Target {
                member_id: leader_member_id.to_owned(),
                group_instance_id: None,
                endpoint: leader_endpoint.to_owned(),
            }],
            streaks: ProbeStreaks::default(),
        })
    }

    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    /// Probes every member once (all at once) and returns the members to remove now.
    pub async fn round(&mut self) -> Vec<Eviction> {
        let timeout = self.settings.connect_timeout;
        let outcomes = futures::future::join_all(
            self.targets
                .iter()
                .map(|t| probe_endpoint(&t.endpoint, timeout)),
        )
        .await;
        self.observe(&outcomes)
    }

    /// Counts one round's outcomes (in the order of the targets) and decides.
    fn observe(&mut self, outcomes: &[ProbeOutcome]) -> Vec<Eviction> {
        let mut probed = Vec::with_capacity(self.targets.len());
        for (t, outcome) in self.targets.iter().zip(outcomes) {
            let refusals = self.streaks.record(&t.member_id, *outcome);
            if *outcome == ProbeOutcome::Refused {
                tracing::debug!(member_id = %t.member_id, endpoint = %t.endpoint, refusals, "member's query endpoint refused a probe");
            }
            probed.push(ProbedMember {
                member_id: t.member_id.clone(),
                group_instance_id: t.group_instance_id.clone(),
                endpoint: t.endpoint.clone(),
                consecutive_refusals: refusals,
            });
        }
        evictions(
            &self.settings.policy,
            &self.leader_member_id,
            &self.leader_endpoint,
            &probed,
        )
    }
}

/// One TCP connection attempt to `endpoint` (`HOST:PORT`), closed at once.
pub async fn probe_endpoint(endpoint: &str, timeout: Duration) -> ProbeOutcome {
    match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
        Ok(Ok(_stream)) => ProbeOutcome::Accepted,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => ProbeOutcome::Refused,
        Ok(Err(_)) | Err(_) => ProbeOutcome::Inconclusive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn joined(id: &str, endpoint: &str) -> JoinedMember {
        let info = SubscriptionInfo {
            process_id: id.into(),
            endpoint: endpoint.into(),
            prev_active: vec![],
            prev_standby: vec![],
            offsets: BTreeMap::new(),
        };
        JoinedMember {
            member_id: id.into(),
            group_instance_id: None,
            user_data: info.encode().unwrap_or_default(),
        }
    }

    const SETTINGS: ProbeSettings = ProbeSettings {
        policy: EvictionPolicy {
            enabled: true,
            refusals: 3,
        },
        interval: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(200),
    };

    #[tokio::test]
    async fn a_closed_port_is_refused_and_a_listening_one_accepted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let t = Duration::from_millis(500);
        assert_eq!(probe_endpoint(&open, t).await, ProbeOutcome::Accepted);
        assert_eq!(probe_endpoint(&closed, t).await, ProbeOutcome::Refused);
        assert_eq!(
            probe_endpoint("not-an-endpoint", t).await,
            ProbeOutcome::Inconclusive
        );
    }

    #[tokio::test]
    async fn the_leader_removes_a_member_after_three_refused_rounds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let alive = listener.local_addr().unwrap().to_string();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let members = [
            joined("leader", "127.0.0.1:1"),
            joined("alive", &alive),
            joined("dead", &dead),
            JoinedMember {
                member_id: "unreadable".into(),
                group_instance_id: None,
                user_data: Bytes::from_static(b"?"),
            },
        ];
        let mut prober = MemberProber::new(SETTINGS, "leader", "127.0.0.1:1", &members).unwrap();
        assert!(prober.round().await.is_empty());
        assert!(prober.round().await.is_empty());
        let out = prober.round().await;
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            (out[0].member_id.as_str(), &out[0].endpoint),
            ("dead", &dead)
        );
        let off = ProbeSettings {
            policy: EvictionPolicy {
                enabled: false,
                refusals: 3,
            },
            ..SETTINGS
        };
        assert!(MemberProber::new(off, "leader", "127.0.0.1:1", &members).is_none());
        assert!(MemberProber::new(SETTINGS, "leader", "x", &members[..1]).is_none());
    }
}
