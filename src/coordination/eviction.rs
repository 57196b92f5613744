//! Which members the leader removes from the group before their session times out: the pure
//! decision, from the results of probing every member's query endpoint.
//!
//! A `kill -9`ed instance stops heartbeating, but the coordinator only notices after the session
//! timeout (10–45 s); its partitions have no active meanwhile. Its query endpoint, though, stops
//! accepting connections at once: the kernel answers a connection attempt with a reset
//! (*refused*). A paused instance (SIGSTOP, a long GC pause, a full machine) is different: the
//! kernel still accepts connections for it, or the attempt times out (a network cut); neither is
//! proof that the process is gone, so such a member is left to the session timeout, which is
//! what it is for.
//!
//! ```text
//!   probe round ─▶ ProbeStreaks::record ─▶ evictions(policy, leader, members) ─▶ LeaveGroup
//!   (I/O: cluster::probe)     (consecutive refusals per member)         (I/O: membership)
//! ```
//!
//! A static member (`--group-instance-id`) is never evicted here: its owner chose static
//! membership so that a restart keeps its seat and moves no partition, and a restart closes the
//! port for a while. It is left to the session timeout, which is the tolerance its owner set.
//!
//! A member evicted by mistake (its endpoint refused while it was still alive, e.g. restarting
//! its HTTP server) is fenced by the generation: its commits are refused, its next heartbeat
//! answers UNKNOWN_MEMBER_ID, and it joins again. Nothing is lost; it costs one more rebalance.

use std::collections::BTreeMap;

/// What one connection attempt to a member's query endpoint found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The connection was accepted: something listens there (maybe paused, still alive).
    Accepted,
    /// The connection was actively refused: nothing listens there any more.
    Refused,
    /// Timed out or failed otherwise (unreachable network, no route, a bad address): says
    /// nothing about the process, so it neither counts as a refusal nor as a sign of life.
    Inconclusive,
}

/// When the leader removes members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictionPolicy {
    /// Off: every member stays until the coordinator's session timeout.
    pub enabled: bool,
    /// Consecutive refused probes that prove a member's process gone (at least 1).
    pub refusals: u32,
}

/// A member of the current generation as the leader probes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// Its query endpoint (`HOST:PORT`), from its subscription.
    pub endpoint: String,
    /// Probes refused in a row, up to the latest one.
    pub consecutive_refusals: u32,
}

/// A member to remove from the group, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub endpoint: String,
    pub reason: String,
}

/// Consecutive refusals per member id, carried from one probe round to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeStreaks {
    refusals: BTreeMap<String, u32>,
}

impl ProbeStreaks {
    /// Counts one probe of `member_id`: a refusal extends its streak, anything else ends it
    /// (an inconclusive probe too: the refusals must be consecutive).
    pub fn record(&mut self, member_id: &str, outcome: ProbeOutcome) -> u32 {
        let streak = self.refusals.entry(member_id.to_owned()).or_default();
        *streak = match outcome {
            ProbeOutcome::Refused => streak.saturating_add(1),
            ProbeOutcome::Accepted | ProbeOutcome::Inconclusive => 0,
        };
        *streak
    }

    /// Refusals in a row of `member_id` so far.
    pub fn get(&self, member_id: &str) -> u32 {
        self.refusals.get(member_id).copied().unwrap_or(0)
    }
}

/// The members to remove now. Rules:
/// 1. nothing when the policy is off;
/// 2. never the leader itself, nor a member advertising the leader's own endpoint (the leader is
///    alive, so a refusal there is a misconfiguration, not a death);
/// 3. never a static member (it has a `group_instance_id`): a restart keeps its seat until the
///    session timeout, which a probe cannot tell from a death;
/// 4. a member is removed when its last `policy.refusals` probes (at least one) were all refused;
/// 5. each member at most once, in the order given.
pub fn evictions(
    policy: &EvictionPolicy,
    leader_member_id: &str,
    leader_endpoint: &str,
    members: &[ProbedMember],
) -> Vec<Eviction> {
    if !policy.enabled {
        return Vec::new();
    }
    let needed = policy.refusals.max(1);
    let mut out: Vec<Eviction> = Vec::new();
    for m in members {
        if m.member_id == leader_member_id
            || m.endpoint == leader_endpoint
            || m.group_instance_id.is_some()
            || m.consecutive_refusals < needed
            || out.iter().any(|e| e.member_id == m.member_id)
        {
            continue;
        }
        out.push(Eviction {
            member_id: m.member_id.clone(),
            group_instance_id: m.group_instance_id.clone(),
            endpoint: m.endpoint.clone(),
            reason: format!(
                "query endpoint {} refused {} connections in a row: the process is gone",
                m.endpoint, m.consecutive_refusals
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, endpoint: &str, refusals: u32) -> ProbedMember {
        ProbedMember {
            member_id: id.into(),
            group_instance_id: None,
            endpoint: endpoint.into(),
            consecutive_refusals: refusals,
        }
    }

    const ON: EvictionPolicy = EvictionPolicy {
        enabled: true,
        refusals: 3,
    };

    #[test]
    fn a_member_refusing_three_times_in_a_row_is_evicted_and_no_one_else() {
        let members = [
            member("leader", "h:1", 9),
            member("dead", "h:2", 3),
            member("flaky", "h:3", 2),
            member("paused", "h:4", 0),
        ];
        let out = evictions(&ON, "leader", "h:1", &members);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].member_id, "dead");
        assert!(out[0].reason.contains("h:2"), "{}", out[0].reason);
        let off = EvictionPolicy {
            enabled: false,
            ..ON
        };
        assert!(evictions(&off, "leader", "h:1", &members).is_empty());
    }

    #[test]
    fn a_member_on_the_leaders_endpoint_is_never_evicted() {
        let members = [member("other", "h:1", 10)];
        assert!(evictions(&ON, "leader", "h:1", &members).is_empty());
    }

    #[test]
    fn a_static_member_is_left_to_its_session_timeout() {
        let mut restarting = member("static", "h:2", 50);
        restarting.group_instance_id = Some("paystream-2".into());
        assert!(evictions(&ON, "leader", "h:1", &[restarting]).is_empty());
    }

    #[test]
    fn only_consecutive_refusals_count() {
        let mut s = ProbeStreaks::default();
        use ProbeOutcome::*;
        for o in [Refused, Refused, Inconclusive, Refused, Refused] {
            s.record("m", o);
        }
        assert_eq!(s.get("m"), 2);
        s.record("m", Refused);
        assert_eq!(s.get("m"), 3);
        s.record("m", Accepted);
        assert_eq!(s.get("m"), 0);
        assert_eq!(s.get("never-probed"), 0);
    }

    fn outcome() -> impl Strategy<Value = ProbeOutcome> {
        prop_oneof![
            Just(ProbeOutcome::Accepted),
            Just(ProbeOutcome::Refused),
            Just(ProbeOutcome::Inconclusive)
        ]
    }

    proptest! {
        /// Over any history of probes of a few members: a member is evicted exactly when its
        /// last `refusals` probes were all refused and it is neither the leader nor on the
        /// leader's endpoint and not static; a member that is paused (never refuses) is never evicted.
        #[test]
        fn evicts_exactly_the_members_whose_last_probes_were_all_refused(
            history in proptest::collection::vec(proptest::collection::vec(outcome(), 5), 0..12),
            refusals in 1u32..5,
            enabled in any::<bool>(),
        ) {
            let ids = ["leader", "a", "b", "c", "s"];
            // "c" shares the leader's endpoint; "s" is a static member
            let endpoints = ["h:1", "h:2", "h:3", "h:1", "h:5"];
            let mut streaks = ProbeStreaks::default();
            for round in &history {
                for (id, o) in ids.iter().zip(round) {
                    streaks.record(id, *o);
                }
            }
            let members: Vec<ProbedMember> = ids
                .iter()
                .zip(endpoints)
                .map(|(id, ep)| {
                    let mut m = member(id, ep, streaks.get(id));
                    if *id == "s" {
                        m.group_instance_id = Some("static-s".into());
                    }
                    m
                })
                .collect();
            let policy = EvictionPolicy { enabled, refusals };
            let out = evictions(&policy, "leader", "h:1", &members);
            for (i, id) in ids.iter().enumerate() {
                let tail = history.len() >= refusals as usize
                    && history[history.len() - refusals as usize..]
                        .iter()
                        .all(|round| round[i] == ProbeOutcome::Refused);
                let expected =
                    enabled && tail && *id != "leader" && endpoints[i] != "h:1" && *id != "s";
                let evicted = out.iter().filter(|e| e.member_id == *id).count();
                prop_assert_eq!(evicted, usize::from(expected), "member {}", id);
                let never_refused = history.iter().all(|r| r[i] != ProbeOutcome::Refused);
                prop_assert!(!(never_refused && evicted > 0));
            }
        }
    }
}
