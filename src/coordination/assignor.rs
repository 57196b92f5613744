//! The partition assignor: who runs each input partition as ACTIVE, who keeps STANDBY and
//! WARM-UP copies of its store, and the partition map every instance routes queries with.
//!
//! Entry point: [`assign`]. The group leader calls it once per rebalance with the metadata every
//! member sent in JoinGroup ([`MemberInfo`]: endpoint, previous assignment, how caught up each
//! local store is) and ships each member its [`MemberAssignment`] plus the shared
//! [`AssignorOutput::partition_map`] in SyncGroup. It is a pure function: no I/O, no clock, no
//! randomness, so the property tests below can check it without a broker.
//!
//! The idea is Kafka Streams' high-availability assignor: never pay a full store restore just to
//! make the numbers even. An active moves to another instance only when that instance is already
//! caught up; otherwise it gets a warm-up copy, the old owner keeps processing, and the leader asks
//! for a follow-up (probing) rebalance that moves the active once the warm-up has caught up.
//!
//! # Rules (the spec the property tests check)
//!
//! Terms: `end(p)` is the changelog end offset of partition `p` (from the input, else the highest
//! offset any member reports, else 0). The *lag* of a member on `p` is `end(p) - offset` (or
//! `end(p)` when it has no local copy), never negative. A member is *caught up* on `p` when its lag
//! is at most `acceptable_recovery_lag`. An *instance* is a `process_id`: it survives restarts,
//! member ids do not (members that share a process id are one instance; one of them gets the work).
//!
//! 1. Every partition `0..partitions` has exactly one active, on some member (none if there are
//!    no members).
//! 2. Stickiness: a partition whose previous active instance is still in the group stays there,
//!    unless moving it is needed for balance (its owner has at least two more actives than the
//!    receiver) AND the receiver is caught up on it.
//! 3. A partition without a live previous owner goes to the instance with the lowest lag (ties:
//!    fewest actives, then process id), even when nobody is caught up: that promotes the standby on
//!    failover instead of restoring from scratch. The balance step of rule 4 may then move it on,
//!    but only to another caught-up instance.
//! 4. Balance: when every instance is caught up on what it would receive, active counts differ by
//!    at most one. When balance needs an active to move to an instance that is not caught up, the
//!    active stays, that instance gets a WARM-UP copy (listed in the partition map) and
//!    `followup_rebalance` is set; once it reports a caught-up offset, a later call moves the
//!    active. Every move balance still needs gets its warm-up at once (no cap like Kafka's
//!    `max.warmup.replicas`), so one follow-up round usually finishes the job.
//! 5. Standbys: each partition gets `min(standby_replicas, instances - 1)` standbys, never on the
//!    active's instance, never two copies on one instance. A warm-up is a copy too (so no standby
//!    beside it on the same instance) but it comes on top of the standbys, which then use only
//!    the remaining instances: a lagging warm-up never displaces a standby ready for failover.
//!    Standbys go first to instances below their fair share of copies (actives + standbys +
//!    warm-ups, divided by instances, rounded up), then to instances that already hold a copy
//!    (previous standby or active, or any reported offset), then to the lowest lag, then to the
//!    least loaded.
//! 6. Determinism: the same input, with members in any order, gives the same output.
//! 7. The partition map lists per partition the active's endpoint and the standby and warm-up
//!    endpoints, most caught up first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How far behind (in changelog records) an instance may be and still count as caught up; the
/// same default as Kafka Streams' `acceptable.recovery.lag`.
pub const DEFAULT_ACCEPTABLE_RECOVERY_LAG: i64 = 10_000;

const fn default_acceptable_recovery_lag() -> i64 {
    DEFAULT_ACCEPTABLE_RECOVERY_LAG
}

/// What one group member tells the leader in its JoinGroup metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Group member id from the coordinator. New on every restart, so it only keys the output.
    pub member_id: String,
    /// Stable identity of the instance, kept in its state directory: stickiness follows it, so an
    /// instance that restarts gets back the partitions whose stores it still has.
    pub process_id: String,
    /// `HOST:PORT` of its query API, published in the partition map.
    pub endpoint: String,
    /// Partitions it ran as active in the previous generation.
    #[serde(default)]
    pub prev_active: Vec<i32>,
    /// Partitions it kept as standby or warm-up in the previous generation.
    #[serde(default)]
    pub prev_standby: Vec<i32>,
    /// Partition -> changelog offset its local store holds; absent means no local copy.
    #[serde(default)]
    pub offsets: BTreeMap<i32, i64>,
}

/// Everything [`assign`] needs: the members and the shape of the work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignorInput {
    pub members: Vec<MemberInfo>,
    /// Partition count of the input topic; partitions are `0..partitions`.
    pub partitions: i32,
    /// Standby copies wanted per partition (capped by the number of other instances).
    pub standby_replicas: u32,
    /// See [`DEFAULT_ACCEPTABLE_RECOVERY_LAG`].
    #[serde(default = "default_acceptable_recovery_lag")]
    pub acceptable_recovery_lag: i64,
    /// Changelog end offset per partition. Missing entries fall back to the highest offset any
    /// member reports (or 0), so a leader that could not list offsets still assigns sensibly.
    #[serde(default)]
    pub end_offsets: BTreeMap<i32, i64>,
}

impl Default for AssignorInput {
    fn default() -> Self {
        Self {
            members: Vec::new(),
            partitions: 0,
            standby_replicas: 0,
            acceptable_recovery_lag: DEFAULT_ACCEPTABLE_RECOVERY_LAG,
            end_offsets: BTreeMap::new(),
        }
    }
}

/// One member's share; each list is sorted and the three are disjoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAssignment {
    pub active: Vec<i32>,
    pub standby: Vec<i32>,
    /// Standby copies placed so that a later rebalance can move the active here once caught up.
    pub warmup: Vec<i32>,
}

/// Who serves one partition's queries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOwners {
    /// Endpoint of the active.
    pub active: String,
    /// Endpoints of the standby and warm-up copies, most caught up first.
    pub standbys: Vec<String>,
}

/// The result of one assignment round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignorOutput {
    /// Keyed by member id; every input member has an entry, possibly empty.
    pub members: BTreeMap<String, MemberAssignment>,
    /// Sent to every member, for query routing.
    pub partition_map: BTreeMap<i32, PartitionOwners>,
    /// Warm-ups were placed: rebalance again once they have caught up (a probing rebalance).
    pub followup_rebalance: bool,
}

/// Records `member` must replay before its copy of `partition` is current: `end - offset`, or
/// `end` when it has no local copy; never negative.
pub fn lag(member: &MemberInfo, partition: i32, end: i64) -> i64 {
    lag_at(member.offsets.get(&partition).copied(), end)
}

fn lag_at(offset: Option<i64>, end: i64) -> i64 {
    offset.map_or(end, |o| end.saturating_sub(o)).max(0)
}

/// The changelog end offset [`assign`] measures lag against (see [`AssignorInput::end_offsets`]).
pub(crate) fn end_offset(input: &AssignorInput, partition: i32) -> i64 {
    input
        .end_offsets
        .get(&partition)
        .copied()
        .unwrap_or_else(|| {
            let reported = input
                .members
                .iter()
                .filter_map(|m| m.offsets.get(&partition));
            reported.copied().max().unwrap_or(0)
        })
}

/// One instance: the members sharing a process id folded together, so that input order and a
/// not-yet-expired member of a restarted instance cannot change the result.
struct Client<'a> {
    member_id: &'a str,
    endpoint: &'a str,
    prev_active: BTreeSet<i32>,
    prev_standby: BTreeSet<i32>,
    offsets: BTreeMap<i32, i64>,
}

/// Folds members into instances sorted by process id. The member with the smallest id receives
/// the instance's work. A member id that two instances claim (a coordinator bug) serves the first.
fn clients(members: &[MemberInfo]) -> Vec<Client<'_>> {
    let mut by_process: BTreeMap<&str, Client<'_>> = BTreeMap::new();
    for m in members {
        let c = by_process.entry(&m.process_id).or_insert_with(|| Client {
            member_id: &m.member_id,
            endpoint: &m.endpoint,
            prev_active: BTreeSet::new(),
            prev_standby: BTreeSet::new(),
            offsets: BTreeMap::new(),
        });
        if (m.member_id.as_str(), m.endpoint.as_str()) < (c.member_id, c.endpoint) {
            c.member_id = &m.member_id;
            c.endpoint = &m.endpoint;
        }
        c.prev_active.extend(&m.prev_active);
        c.prev_standby.extend(&m.prev_standby);
        for (&p, &o) in &m.offsets {
            let held = c.offsets.entry(p).or_insert(o);
            *held = (*held).max(o);
        }
    }
    let mut seen = BTreeSet::new();
    by_process
        .into_values()
        .filter(|c| seen.insert(c.member_id))
        .collect()
}

/// Compute the assignment; see the module docs for the rules it follows.
pub fn assign(input: &AssignorInput) -> AssignorOutput {
    let mut out = AssignorOutput {
        members: input
            .members
            .iter()
            .map(|m| (m.member_id.clone(), MemberAssignment::default()))
            .collect(),
        ..AssignorOutput::default()
    };
    let clients = clients(&input.members);
    let n = clients.len();
    if n == 0 {
        return out;
    }
    let partitions = input.partitions.max(0);
    let ends: Vec<i64> = (0..partitions).map(|p| end_offset(input, p)).collect();
    // lags[c][i]: lag of instance c on partition i (partition ids are the indexes).
    let lags: Vec<Vec<i64>> = clients
        .iter()
        .map(|c| {
            (0..partitions)
                .zip(&ends)
                .map(|(p, &e)| lag_at(c.offsets.get(&p).copied(), e))
                .collect()
        })
        .collect();
    let caught_up = |c: usize, i: usize| lags[c][i] <= input.acceptable_recovery_lag;

    let (mut owner, sticky) = initial_actives(&clients, &lags);
    let mut counts = vec![0usize; n];
    for &c in &owner {
        counts[c] += 1;
    }
    // Real moves: only to caught-up instances (rule 2).
    while let Some((i, dst)) = best_move(&owner, &counts, &sticky, &lags, &|c, i| caught_up(c, i)) {
        counts[owner[i]] -= 1;
        counts[dst] += 1;
        owner[i] = dst;
    }
    // Moves balance still needs, planned as warm-ups: the active stays put (rule 4). A planned
    // partition is not planned twice.
    let mut warmups: Vec<Vec<usize>> = vec![Vec::new(); owner.len()];
    let (mut planned, mut planned_counts) = (owner.clone(), counts.clone());
    let mut moved = vec![false; owner.len()];
    while let Some((i, dst)) =
        best_move(&planned, &planned_counts, &sticky, &lags, &|_, i| !moved[i])
    {
        planned_counts[planned[i]] -= 1;
        planned_counts[dst] += 1;
        planned[i] = dst;
        moved[i] = true;
        warmups[i].push(dst);
    }
    let standbys = place_standbys(&clients, &lags, &owner, &warmups, input.standby_replicas);

    let mut shares = vec![MemberAssignment::default(); n];
    for (i, p) in (0..partitions).enumerate() {
        shares[owner[i]].active.push(p);
        standbys[i].iter().for_each(|&c| shares[c].standby.push(p));
        warmups[i].iter().for_each(|&c| shares[c].warmup.push(p));
        let mut copies: Vec<usize> = standbys[i].iter().chain(&warmups[i]).copied().collect();
        copies.sort_by_key(|&c| (lags[c][i], c));
        let owners = PartitionOwners {
            active: clients[owner[i]].endpoint.to_owned(),
            standbys: copies
                .iter()
                .map(|&c| clients[c].endpoint.to_owned())
                .collect(),
        };
        out.partition_map.insert(p, owners);
    }
    for (client, share) in clients.iter().zip(shares) {
        out.members.insert(client.member_id.to_owned(), share);
    }
    out.followup_rebalance = warmups.iter().any(|w| !w.is_empty());
    out
}

/// Rules 2 and 3 before balancing: each partition goes to its live previous owner (marked sticky)
/// or, lacking one, to the most caught-up instance.
fn initial_actives(clients: &[Client<'_>], lags: &[Vec<i64>]) -> (Vec<usize>, Vec<bool>) {
    let len = lags.first().map_or(0, Vec::len);
    let mut prev: Vec<Option<usize>> = vec![None; len];
    for (c, client) in clients.iter().enumerate() {
        for i in client
            .prev_active
            .iter()
            .filter_map(|&p| usize::try_from(p).ok())
            .filter(|&i| i < len)
        {
            // Two instances claiming one partition means one report is stale: believe the more
            // caught up (the earlier instance on ties).
            match prev[i] {
                Some(o) if lags[o][i] <= lags[c][i] => {}
                _ => prev[i] = Some(c),
            }
        }
    }
    let mut counts = vec![0usize; clients.len()];
    prev.iter().flatten().for_each(|&c| counts[c] += 1);
    let mut owner = Vec::with_capacity(len);
    for (i, p) in prev.iter().enumerate() {
        let c = p.or_else(|| (0..clients.len()).min_by_key(|&c| (lags[c][i], counts[c], c)));
        let c = c.unwrap_or(0); // `clients` is never empty here
        if p.is_none() {
            counts[c] += 1;
        }
        owner.push(c);
    }
    (owner, prev.iter().map(Option::is_some).collect())
}

/// The next move that makes active counts more even: an active from an instance with at least two
/// more actives than the receiver, preferring the widest gap, then partitions that are not sticky,
/// then the receiver with the lowest lag. `None` once no allowed move helps. Every move lowers the
/// sum of squared counts, so repeating it terminates.
fn best_move(
    owner: &[usize],
    counts: &[usize],
    sticky: &[bool],
    lags: &[Vec<i64>],
    allowed: &dyn Fn(usize, usize) -> bool,
) -> Option<(usize, usize)> {
    let candidates = owner.iter().enumerate().flat_map(|(i, &src)| {
        (0..counts.len())
            .filter(move |&dst| counts[src] >= counts[dst] + 2 && allowed(dst, i))
            .map(move |dst| {
                (
                    Reverse(counts[src] - counts[dst]),
                    sticky[i],
                    lags[dst][i],
                    i,
                    dst,
                )
            })
    });
    candidates.min().map(|(_, _, _, i, dst)| (i, dst))
}

/// Rule 5: per partition, standbys on the best remaining instances, counting warm-ups as copies.
fn place_standbys(
    clients: &[Client<'_>],
    lags: &[Vec<i64>],
    owner: &[usize],
    warmups: &[Vec<usize>],
    standby_replicas: u32,
) -> Vec<Vec<usize>> {
    let want = usize::try_from(standby_replicas)
        .unwrap_or(usize::MAX)
        .min(clients.len().saturating_sub(1));
    let mut load = vec![0usize; clients.len()];
    owner
        .iter()
        .chain(warmups.iter().flatten())
        .for_each(|&c| load[c] += 1);
    let holds_copy = |c: usize, p: i32| {
        let client = &clients[c];
        client.prev_standby.contains(&p)
            || client.prev_active.contains(&p)
            || client.offsets.contains_key(&p)
    };
    // Every instance should carry its share of copies (actives + standbys + warm-ups): an
    // instance left without standbys would have nothing to take over with. Instances under the
    // fair share come first; among them, those already holding a copy (no restore needed).
    let copies = owner.len() * (1 + want) + warmups.iter().map(Vec::len).sum::<usize>();
    let cap = copies.div_ceil(clients.len().max(1));
    let mut standbys = vec![Vec::new(); owner.len()];
    for (i, p) in (0..).take(owner.len()).enumerate() {
        let mut taken: Vec<usize> = warmups[i].iter().copied().chain([owner[i]]).collect();
        for _ in 0..want {
            let free = (0..clients.len()).filter(|c| !taken.contains(c));
            let Some(c) =
                free.min_by_key(|&c| (load[c] >= cap, !holds_copy(c, p), lags[c][i], load[c], c))
            else {
                break;
            };
            taken.push(c);
            standbys[i].push(c);
            load[c] += 1;
        }
    }
    standbys
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;

    const END: i64 = 1_000_000;

    fn member(i: usize) -> MemberInfo {
        MemberInfo {
            member_id: format!("m{i}"),
            process_id: format!("proc-{i}"),
            endpoint: format!("10.0.0.{i}:8080"),
            prev_active: Vec::new(),
            prev_standby: Vec::new(),
            offsets: BTreeMap::new(),
        }
    }

    /// `n` fresh members, `partitions` partitions whose changelogs end at `end`.
    fn input(n: usize, partitions: i32, standby_replicas: u32, end: i64) -> AssignorInput {
        AssignorInput {
            members: (0..n).map(member).collect(),
            partitions,
            standby_replicas,
            end_offsets: (0..partitions).map(|p| (p, end)).collect(),
            ..AssignorInput::default()
        }
    }

    /// The next generation of the same instances: they remember `out`, and every copy they were
    /// given (warm-ups included) has caught up to the end offset.
    fn next_round(inp: &AssignorInput, out: &AssignorOutput) -> AssignorInput {
        let mut next = inp.clone();
        for m in &mut next.members {
            let a = &out.members[&m.member_id];
            m.prev_active = a.active.clone();
            m.prev_standby = a.standby.iter().chain(&a.warmup).copied().collect();
            for &p in a.active.iter().chain(&a.standby).chain(&a.warmup) {
                m.offsets.insert(p, end_offset(inp, p));
            }
        }
        next
    }

    /// Partition -> member id of its active.
    fn actives(out: &AssignorOutput) -> BTreeMap<i32, String> {
        let each = out.members.iter();
        each.flat_map(|(id, a)| a.active.iter().map(move |&p| (p, id.clone())))
            .collect()
    }

    /// Max minus min active count over the members.
    fn spread(out: &AssignorOutput) -> usize {
        let counts: Vec<usize> = out.members.values().map(|a| a.active.len()).collect();
        counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0)
    }

    fn by_id<'a>(inp: &'a AssignorInput, id: &str) -> &'a MemberInfo {
        inp.members
            .iter()
            .find(|m| m.member_id == id)
            .expect("member in input")
    }

    #[test]
    fn fresh_start_three_members_twelve_partitions() {
        let out = assign(&input(3, 12, 1, 0));
        for a in out.members.values() {
            assert_eq!(
                (a.active.len(), a.standby.len(), a.warmup.len()),
                (4, 4, 0),
                "{a:?}"
            );
        }
        assert!(!out.followup_rebalance);
        assert_eq!(out.partition_map.len(), 12);
        let map = out.partition_map.values();
        assert!(map
            .into_iter()
            .all(|o| o.standbys.len() == 1 && o.standbys[0] != o.active));
    }

    #[test]
    fn a_third_member_joining_two_that_hold_each_others_copies_gets_standbys_too() {
        // Caught up everywhere, so actives may move; standbys must spread as well, or the
        // newcomer's partitions would have standbys while it holds none to take over with.
        let mut a = member(0);
        let mut b = member(1);
        a.prev_active = (0..6).collect();
        a.prev_standby = (6..12).collect();
        b.prev_active = (6..12).collect();
        b.prev_standby = (0..6).collect();
        for p in 0..12 {
            a.offsets.insert(p, 0);
            b.offsets.insert(p, 0);
        }
        let out = assign(&AssignorInput {
            members: vec![a, b, member(2)],
            partitions: 12,
            standby_replicas: 1,
            ..Default::default()
        });
        for (id, m) in &out.members {
            assert_eq!(m.active.len(), 4, "{id}: {m:?}");
            assert!(!m.standby.is_empty(), "{id} holds no standby: {m:?}");
        }
    }

    #[test]
    fn dead_member_actives_go_to_their_standbys() {
        let first = input(3, 12, 1, END);
        let before = assign(&first);
        let mut next = next_round(&first, &before);
        next.members.retain(|m| m.member_id != "m0");
        let after = assign(&next);
        let owners = actives(&after);
        for &p in &before.members["m0"].active {
            let holder = before.members.iter().find(|(_, a)| a.standby.contains(&p));
            assert_eq!(Some(&owners[&p]), holder.map(|(id, _)| id), "partition {p}");
        }
        assert_eq!(
            (owners.len(), spread(&after), after.followup_rebalance),
            (12, 0, false)
        );
    }

    #[test]
    fn new_member_warms_up_before_taking_actives() {
        let first = input(3, 12, 1, END);
        let mut joined = next_round(&first, &assign(&first));
        joined.members.push(member(3));
        let round1 = assign(&joined);
        let newcomer = &round1.members["m3"];
        assert!(newcomer.active.is_empty() && round1.followup_rebalance);
        assert_eq!(newcomer.warmup.len(), 3);
        for p in &newcomer.warmup {
            assert!(round1.partition_map[p]
                .standbys
                .contains(&"10.0.0.3:8080".to_owned()));
        }
        let round2 = assign(&next_round(&joined, &round1));
        assert!(
            round2.members.values().all(|a| a.active.len() == 3),
            "{round2:?}"
        );
        assert_eq!(round2.members["m3"].active, newcomer.warmup);
        assert!(!round2.followup_rebalance);
    }

    #[test]
    fn restarted_instance_keeps_partitions_under_new_member_id() {
        let first = input(3, 6, 1, END);
        let out = assign(&first);
        let mut next = next_round(&first, &out);
        next.members[1].member_id = "m1-restarted".into();
        assert_eq!(
            assign(&next).members["m1-restarted"].active,
            out.members["m1"].active
        );
    }

    #[test]
    fn edge_inputs() {
        let nobody = AssignorInput {
            partitions: 4,
            ..AssignorInput::default()
        };
        assert_eq!(assign(&nobody), AssignorOutput::default());
        let none = assign(&input(1, 0, 1, 0));
        assert_eq!(none.members["m0"], MemberAssignment::default());
        assert!(none.partition_map.is_empty());
        // One member: every active, no standby possible.
        let solo = assign(&input(1, 3, 2, 0));
        assert_eq!(
            solo.members["m0"],
            MemberAssignment {
                active: vec![0, 1, 2],
                ..Default::default()
            }
        );
        // Two members of one instance (a restart the coordinator has not expired yet): one gets
        // the work, nothing is lost.
        let mut twins = input(1, 2, 1, 0);
        twins.members.push(MemberInfo {
            member_id: "m0-old".into(),
            ..member(0)
        });
        let shared = assign(&twins);
        assert_eq!(shared.members["m0"].active, vec![0, 1]);
        assert_eq!(shared.members["m0-old"], MemberAssignment::default());
    }

    #[test]
    fn lag_and_end_offsets() {
        let mut m = member(0);
        m.offsets.extend([(0, 90), (1, 500)]);
        let lags = [
            lag(&m, 0, 100),
            lag(&m, 1, 100),
            lag(&m, 2, 100),
            lag(&m, 2, -5),
        ];
        assert_eq!(lags, [10, 0, 100, 0]);
        assert_eq!(lag(&m, 0, i64::MIN), 0);
        let mut inp = input(2, 3, 0, 0);
        inp.end_offsets.clear();
        inp.members[0] = m;
        assert_eq!([0, 1, 2].map(|p| end_offset(&inp, p)), [90, 500, 0]);
        // Without end offsets, the member holding the highest offset is the most caught up.
        assert_eq!(actives(&assign(&inp))[&1], "m0");
    }

    #[test]
    fn serde_defaults_and_round_trip() {
        let json = r#"{"members":[{"member_id":"a","process_id":"p","endpoint":"h:1"}],
                       "partitions":2,"standby_replicas":1}"#;
        let inp: AssignorInput = serde_json::from_str(json).expect("valid json");
        assert_eq!(inp.acceptable_recovery_lag, DEFAULT_ACCEPTABLE_RECOVERY_LAG);
        let out = assign(&inp);
        let text = serde_json::to_string(&out).expect("encode");
        assert_eq!(
            serde_json::from_str::<AssignorOutput>(&text).expect("decode"),
            out
        );
    }

    /// Random groups: previous owners may be departed instances (index >= members), offsets are
    /// `end - lag` for a random lag, end offsets are sometimes missing.
    fn arb_input() -> impl Strategy<Value = AssignorInput> {
        let shape = (1usize..=6, 1usize..=24, 0u32..=2, 0i64..=20_000);
        shape.prop_flat_map(|(n, parts, standby_replicas, acceptable_recovery_lag)| {
            let lag = option::of(prop_oneof![Just(0i64), 0i64..=30_000]);
            let prev = vec(option::of(0..n + 2), parts);
            let copies = (vec(vec(any::<bool>(), parts), n), vec(vec(lag, parts), n));
            let ends = vec((0i64..=60_000, any::<bool>()), parts);
            (prev, copies, ends).prop_map(move |(prev, (prev_sb, lags), ends)| {
                let mut inp = input(n, parts as i32, standby_replicas, 0);
                inp.acceptable_recovery_lag = acceptable_recovery_lag;
                inp.end_offsets = (0..)
                    .zip(&ends)
                    .filter(|(_, e)| e.1)
                    .map(|(p, e)| (p, e.0))
                    .collect();
                for (p, owner) in (0..).zip(&prev) {
                    if let Some(m) = owner.and_then(|o| inp.members.get_mut(o)) {
                        m.prev_active.push(p);
                    }
                }
                for (c, m) in inp.members.iter_mut().enumerate() {
                    for (i, p) in (0..parts as i32).enumerate() {
                        if prev_sb[c][i] && !m.prev_active.contains(&p) {
                            m.prev_standby.push(p);
                        }
                        if let Some(l) = lags[c][i] {
                            m.offsets.insert(p, ends[i].0 - l);
                        }
                    }
                }
                inp
            })
        })
    }

    /// Every member reports the end offset of every partition.
    fn all_caught_up(mut inp: AssignorInput) -> AssignorInput {
        inp.end_offsets = (0..inp.partitions)
            .map(|p| (p, end_offset(&inp, p)))
            .collect();
        for m in &mut inp.members {
            m.offsets = inp.end_offsets.clone();
        }
        inp
    }

    /// Rules 1, 5 and 7, and that `followup_rebalance` means warm-ups.
    fn check_invariants(inp: &AssignorInput, out: &AssignorOutput) -> Result<(), TestCaseError> {
        let n = inp.members.len();
        let want = (inp.standby_replicas as usize).min(n - 1);
        let owners = actives(out);
        let total: usize = out.members.values().map(|a| a.active.len()).sum();
        prop_assert_eq!([owners.len(), total], [inp.partitions as usize; 2]);
        for a in out.members.values() {
            let lists = [&a.active, &a.standby, &a.warmup];
            prop_assert!(
                lists.iter().all(|l| l.windows(2).all(|w| w[0] < w[1])),
                "{:?}",
                a
            );
        }
        for p in 0..inp.partitions {
            let (mut copies, mut warm) = (Vec::new(), 0);
            for (id, a) in &out.members {
                let roles = [&a.active, &a.standby, &a.warmup].map(|l| l.contains(&p));
                prop_assert!(
                    roles.iter().filter(|&&r| r).count() <= 1,
                    "{} twice on {}",
                    p,
                    id
                );
                if roles[1] || roles[2] {
                    copies.push(by_id(inp, id));
                }
                warm += usize::from(roles[2]);
            }
            // Warm-ups come on top of standbys, never instead of them.
            prop_assert_eq!(
                copies.len() - warm,
                want.min(n - 1 - warm),
                "standbys of {}",
                p
            );
            let entry = &out.partition_map[&p];
            prop_assert_eq!(&entry.active, &by_id(inp, &owners[&p]).endpoint);
            let mut listed = entry.standbys.clone();
            let mut expected: Vec<String> = copies.iter().map(|m| m.endpoint.clone()).collect();
            let end = end_offset(inp, p);
            let lags: Vec<i64> = listed
                .iter()
                .filter_map(|e| copies.iter().find(|m| &m.endpoint == e))
                .map(|m| lag(m, p, end))
                .collect();
            prop_assert!(
                lags.windows(2).all(|w| w[0] <= w[1]),
                "copies of {} out of order",
                p
            );
            listed.sort();
            expected.sort();
            prop_assert_eq!(listed, expected);
        }
        let any_warmup = out.members.values().any(|a| !a.warmup.is_empty());
        prop_assert_eq!(out.followup_rebalance, any_warmup);
        Ok(())
    }

    proptest! {
        #[test]
        fn invariants_hold(inp in arb_input()) {
            check_invariants(&inp, &assign(&inp))?;
        }

        #[test]
        fn balanced_when_everyone_is_caught_up(inp in arb_input().prop_map(all_caught_up)) {
            let out = assign(&inp);
            prop_assert!(spread(&out) <= 1 && !out.followup_rebalance, "{:?}", out);
        }

        #[test]
        fn sticky_when_already_balanced(
            mut inp in arb_input().prop_map(all_caught_up),
            order in Just((0..24).collect::<Vec<i32>>()).prop_shuffle(),
        ) {
            // A balanced previous assignment: round robin over a random partition order.
            let n = inp.members.len();
            inp.members.iter_mut().for_each(|m| m.prev_active.clear());
            for (k, p) in order.into_iter().filter(|&p| p < inp.partitions).enumerate() {
                inp.members[k % n].prev_active.push(p);
            }
            let owners = actives(&assign(&inp));
            for m in &inp.members {
                for p in &m.prev_active { prop_assert_eq!(&owners[p], &m.member_id); }
            }
        }

        #[test]
        fn actives_move_only_to_caught_up_or_least_lagging(inp in arb_input()) {
            for (p, id) in actives(&assign(&inp)) {
                let end = end_offset(&inp, p);
                let new_lag = lag(by_id(&inp, &id), p, end);
                let caught_up = new_lag <= inp.acceptable_recovery_lag;
                match inp.members.iter().find(|m| m.prev_active.contains(&p)) {
                    Some(prev) => prop_assert!(prev.member_id == id || caught_up, "{} to lagging {}", p, id),
                    None => {
                        let min = inp.members.iter().map(|m| lag(m, p, end)).min().unwrap_or(0);
                        prop_assert!(new_lag == min || caught_up, "orphan {} to {}", p, id);
                    }
                }
            }
        }

        #[test]
        fn member_order_does_not_matter(
            (inp, shuffled) in arb_input().prop_flat_map(|i| (Just(i.clone()), Just(i.members).prop_shuffle())),
        ) {
            prop_assert_eq!(assign(&inp), assign(&AssignorInput { members: shuffled, ..inp.clone() }));
        }

        #[test]
        fn repeated_rounds_converge(mut inp in arb_input()) {
            // Each follow-up round makes at least one real move (the first warm-up planned is now
            // caught up) and each move lowers the sum of squared active counts (at most P^2) by at
            // least 2, so this bound is safe; in practice one or two rounds suffice.
            let p = inp.partitions as usize;
            for _ in 0..=p * p / 2 + 1 {
                let out = assign(&inp);
                check_invariants(&inp, &out)?;
                if !out.followup_rebalance {
                    prop_assert!(spread(&out) <= 1, "settled unbalanced: {:?}", out);
                    return Ok(());
                }
                inp = next_round(&inp, &out);
            }
            prop_assert!(false, "no convergence");
        }
    }
}
