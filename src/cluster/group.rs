//! The instance's seat in the consumer group: join, heartbeat, hand assignments to the stream
//! thread, commit its offsets with the current generation, rebalance.
//!
//! ```text
//!        ┌──────────── join (SubscriptionInfo: endpoint, held partitions, store offsets) ◀──────┐
//!        ▼                                                                                      │
//!   Assign ─▶ stream thread reconciles tasks ─▶ heartbeat loop (serves commit requests) ─┐      │
//!                                                                                         │      │
//!   RebalanceNeeded / follow-up probe ─▶ Revoke: stream thread commits + suspends actives ─┴──────┘
//! ```
//! Eager rebalancing: every active is committed and paused before rejoining, so two instances
//! never process one partition in the same generation. Stores stay open and queryable throughout.
//! Commits carry the generation (in the transaction under exactly-once, in OffsetCommit under
//! at-least-once): a member that was cut off and comes back is refused (fenced), and its stream
//! thread drops its actives until the next assignment. Every successful heartbeat is reported to
//! the engine's [`Liveness`], so an instance that stops hearing from the coordinator fences
//! itself before anyone else has to.
//!
//! Two things make the group see a change the coordinator would not tell it about in time:
//! - On the leader, a [`MemberProber`] probes the other members' query endpoints; a member whose
//!   endpoint refuses connections several times in a row (its process is gone) is removed with
//!   LeaveGroup and the rebalance starts at once, not after its session timeout. In a dynamic
//!   group every follower probes the leader the same way (a killed leader has no one else to
//!   notice it); a static group leaves its members, the leader too, to the session timeout.
//! - A member whose assignment names another endpoint for its own copies (a static member that
//!   restarted with a new endpoint got its stored assignment back without a rebalance) leaves
//!   and rejoins, so the leader sees the new endpoint and every instance routes to it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::probe::{MemberProber, ProbeSettings};
use super::routing::RoutingTable;
use crate::coordination::eviction::Eviction;
use crate::coordination::leader::GroupAssignor;
use crate::coordination::membership::{
    Assignment, GroupMember, HeartbeatOutcome, MemberToRemove, MembershipError,
};
use crate::coordination::protocol::{endpoint_of_member, AssignmentInfo, SubscriptionInfo};
use crate::engine::{
    lock, CommitRefused, EngineCommand, Liveness, OffsetCommitter, SharedHeldTasks,
};

/// A commit of source offsets, from the stream thread, with the reply.
pub struct CommitRequest {
    pub offsets: Vec<(i32, i64)>,
    pub reply: oneshot::Sender<Result<(), CommitRefused>>,
}

/// The stream thread's side of the channel to the group loop (at-least-once commits).
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<CommitRequest>,
}

impl OffsetCommitter for GroupCommitter {
    /// Commit and wait for the answer (blocking: called from the stream thread).
    fn commit(&self, offsets: Vec<(i32, i64)>) -> Result<(), CommitRefused> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(CommitRequest { offsets, reply })
            .map_err(|_| CommitRefused::Failed("group loop is gone".into()))?;
        rx.blocking_recv()
            .map_err(|_| CommitRefused::Failed("group loop dropped the commit".into()))?
    }
}

/// Build the channel pair.
pub fn commit_channel() -> (GroupCommitter, mpsc::Receiver<CommitRequest>) {
    let (tx, rx) = mpsc::channel(16);
    (GroupCommitter { tx }, rx)
}

/// Who this instance is in the group, besides what the engine reports.
#[derive(Debug, Clone)]
pub struct Identity {
    pub process_id: String,
    /// `HOST:PORT` of its query API.
    pub endpoint: String,
}

/// Everything the group loop needs.
pub struct GroupLoop {
    pub member: GroupMember,
    pub assignor: GroupAssignor,
    pub commands: std::sync::mpsc::Sender<EngineCommand>,
    pub commits: mpsc::Receiver<CommitRequest>,
    pub identity: Identity,
    /// What the engine holds and how far each copy is; read at every join.
    pub held: SharedHeldTasks,
    pub liveness: Arc<Liveness>,
    pub routing: Arc<RoutingTable>,
    pub shutdown: CancellationToken,
    /// After an assignment that placed warm-ups, rejoin this much later to move actives.
    pub probing_interval: Duration,
    pub heartbeat_interval: Duration,
    /// Leave the group on shutdown (not with static membership: the seat is kept for a restart).
    pub leave_on_shutdown: bool,
    /// The leader's probes of the other members (off: dead members wait for the session timeout).
    pub probes: ProbeSettings,
}

/// How often in a row a member may leave and rejoin because its assignment named a stale
/// endpoint; beyond it, the assignment is taken as it is (a leader that keeps publishing
/// another endpoint must not cause a rebalance storm).
const MAX_STALE_ENDPOINT_REJOINS: u32 = 3;

async fn serve_commit(member: &mut GroupMember, req: CommitRequest) {
    let r = member
        .commit_offsets(&req.offsets)
        .await
        .map_err(|e| match e {
            MembershipError::Fenced { .. } => CommitRefused::Fenced(e.to_string()),
            other => CommitRefused::Failed(other.to_string()),
        });
    if let Err(e) = &r {
        tracing::warn!(error = %e, "offset commit refused");
    }
    let _ = req.reply.send(r);
}

/// How a join attempt ended.
enum Joined {
    /// In a generation; rejoin after the probing interval if the leader asked for it. On the
    /// leader, the probes of the other members.
    Assigned {
        followup: bool,
        prober: Option<MemberProber>,
    },
    /// Try again (after the backoff).
    Retry,
    /// Shutting down.
    Stop,
}

impl GroupLoop {
    /// Run until shutdown. Returns an error only for failures that retrying cannot fix.
    pub async fn run(mut self) -> Result<(), MembershipError> {
        let mut backoff = Duration::from_millis(200);
        let mut stale_rejoins = 0;
        loop {
            match self.join_once(&mut stale_rejoins).await? {
                Joined::Stop => break,
                Joined::Retry => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = self.shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Joined::Assigned { followup, prober } => {
                    backoff = Duration::from_millis(200);
                    if !self.heartbeat_until_rebalance(followup, prober).await
                        || !self.revoke().await
                    {
                        break;
                    }
                }
            }
        }
        // Shutdown: the stream thread makes its final commit through us (at-least-once); serve
        // commits until it drops its end of the channel, then leave.
        while let Some(req) = self.commits.recv().await {
            serve_commit(&mut self.member, req).await;
        }
        if self.leave_on_shutdown {
            if let Err(e) = self.member.leave().await {
                tracing::warn!(error = %e, "leave group failed");
            }
        }
        Ok(())
    }

    /// Join (or rejoin) and hand the assignment to the engine. `stale_rejoins` counts the
    /// rejoins in a row caused by a stale endpoint in the assignment.
    async fn join_once(&mut self, stale_rejoins: &mut u32) -> Result<Joined, MembershipError> {
        let user_data = self
            .subscription()
            .encode()
            .map_err(|e| MembershipError::Config(format!("cannot encode subscription: {e}")))?;
        let joined = tokio::select! {
            r = self.member.join(user_data, &self.assignor) => r,
            _ = self.shutdown.cancelled() => return Ok(Joined::Stop),
        };
        let assignment = match joined {
            Ok(a) => a,
            Err(e) if e.is_retriable() || matches!(e, MembershipError::Fenced { .. }) => {
                tracing::warn!(error = %e, "join failed; retrying");
                return Ok(Joined::Retry);
            }
            Err(e) => return Err(e),
        };
        let info = if assignment.user_data.is_empty() {
            AssignmentInfo::default()
        } else {
            match AssignmentInfo::decode(&assignment.user_data) {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(error = %e, "unreadable assignment; rejoining");
                    return Ok(Joined::Retry);
                }
            }
        };
        if self
            .endpoint_is_stale(&assignment, &info, stale_rejoins)
            .await
        {
            return Ok(Joined::Retry);
        }
        // Before the engine hears of the new generation, so it never sees it as stale.
        self.liveness.joined(assignment.generation_id);
        tracing::info!(
            generation = assignment.generation_id,
            leader = assignment.leader,
            active = ?info.active,
            standby = ?info.standby,
            warmup = ?info.warmup,
            "joined group"
        );
        self.routing
            .update(assignment.generation_id, info.partition_map.clone());
        let followup = info.followup_rebalance;
        let prober = if assignment.leader {
            MemberProber::new(
                self.probes,
                &assignment.member_id,
                &self.identity.endpoint,
                &assignment.members,
            )
        } else {
            self.leader_prober(&assignment, &info)
        };
        let standby: Vec<i32> = info.standby.iter().chain(&info.warmup).copied().collect();
        self.routing.own_partitions(&info.active, &standby);
        let assign = EngineCommand::Assign {
            generation: assignment.generation_id,
            member_id: assignment.member_id.clone(),
            active: info.active,
            standby,
        };
        if self.commands.send(assign).is_err() {
            return Ok(Joined::Stop);
        }
        Ok(Joined::Assigned { followup, prober })
    }

    /// Heartbeat (and serve commits) until a rebalance is due; `false` on shutdown. On the
    /// leader, `prober` probes the other members and removes the dead ones, which starts the
    /// rebalance at once.
    async fn heartbeat_until_rebalance(
        &mut self,
        followup: bool,
        mut prober: Option<MemberProber>,
    ) -> bool {
        let probe = tokio::time::sleep(if followup {
            self.probing_interval
        } else {
            Duration::from_secs(365 * 24 * 3600)
        });
        tokio::pin!(probe);
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut member_probe = tokio::time::interval(
            prober
                .as_ref()
                .map_or(Duration::from_secs(3600), MemberProber::interval),
        );
        member_probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = member_probe.tick(), if prober.is_some() => {
                    let evictions = match prober.as_mut() {
                        Some(p) => p.round().await,
                        None => Vec::new(),
                    };
                    if !evictions.is_empty() && self.evict(evictions).await {
                        return true;
                    }
                }
                _ = heartbeat.tick() => match self.member.heartbeat().await {
                    Ok(HeartbeatOutcome::Stable) => self.liveness.confirmed(),
                    Ok(HeartbeatOutcome::RebalanceNeeded) => return true,
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed");
                        if !e.is_retriable() {
                            return true;
                        }
                    }
                },
                Some(req) = self.commits.recv() => serve_commit(&mut self.member, req).await,
                _ = &mut probe => {
                    tracing::info!("probing rebalance: warm-ups may have caught up");
                    return true;
                }
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    /// Rebalance: the stream thread commits (through us under at-least-once) and suspends its
    /// actives; `false` when it is gone.
    async fn revoke(&mut self) -> bool {
        let (done, mut done_rx) = oneshot::channel();
        if self.commands.send(EngineCommand::Revoke { done }).is_err() {
            return false;
        }
        loop {
            tokio::select! {
                Some(req) = self.commits.recv() => serve_commit(&mut self.member, req).await,
                r = &mut done_rx => return r.is_ok(),
            }
        }
    }
}

impl GroupLoop {
    /// On a follower of a dynamic group: probes of the leader, whose endpoint its member id
    /// names ([`endpoint_of_member`]) and the partition map confirms. A static group (this
    /// member has a `group.instance.id`) leaves its leader to the session timeout, as the leader
    /// leaves static members.
    fn leader_prober(
        &self,
        assignment: &Assignment,
        info: &AssignmentInfo,
    ) -> Option<MemberProber> {
        if self.member.config().group_instance_id.is_some() {
            return None;
        }
        let endpoint = endpoint_of_member(&assignment.leader_id)?;
        let known = info
            .partition_map
            .values()
            .any(|o| o.active == endpoint || o.standbys.iter().any(|s| s == endpoint));
        if !known {
            return None;
        }
        MemberProber::of_leader(
            self.probes,
            &assignment.member_id,
            &self.identity.endpoint,
            &assignment.leader_id,
            endpoint,
        )
    }

    /// Removes dead members from the group (LeaveGroup on their behalf); `true` when the
    /// coordinator accepted, so the rebalance has started.
    async fn evict(&mut self, evictions: Vec<Eviction>) -> bool {
        for e in &evictions {
            tracing::warn!(
                member_id = %e.member_id, group_instance_id = ?e.group_instance_id,
                endpoint = %e.endpoint, reason = %e.reason, "evicting member from the group"
            );
        }
        let remove: Vec<MemberToRemove> = evictions
            .into_iter()
            .map(|e| MemberToRemove {
                member_id: e.member_id,
                group_instance_id: e.group_instance_id,
                reason: e.reason,
            })
            .collect();
        match self.member.remove_members(&remove).await {
            Ok(codes) => {
                for (member_id, code) in codes.iter().filter(|(_, c)| *c != 0) {
                    tracing::info!(%member_id, code, "member was already gone or replaced");
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not remove members; probing on");
                false
            }
        }
    }

    /// Whether `info` names another endpoint for this member's copies than the one it has now
    /// (see [`AssignmentInfo::stale_endpoint`]); if so (at most [`MAX_STALE_ENDPOINT_REJOINS`]
    /// times in a row), leaves the group so that the rejoin starts a rebalance in which the
    /// leader reads the current endpoint.
    async fn endpoint_is_stale(
        &mut self,
        assignment: &Assignment,
        info: &AssignmentInfo,
        stale_rejoins: &mut u32,
    ) -> bool {
        let Some((partition, published)) = info.stale_endpoint(&self.identity.endpoint) else {
            *stale_rejoins = 0;
            return false;
        };
        if *stale_rejoins >= MAX_STALE_ENDPOINT_REJOINS {
            tracing::warn!(partition, %published, endpoint = %self.identity.endpoint, "assignment still names a stale endpoint; keeping it");
            return false;
        }
        *stale_rejoins += 1;
        tracing::info!(
            generation = assignment.generation_id, partition, %published,
            endpoint = %self.identity.endpoint,
            "the group publishes a stale endpoint for this member; leaving and rejoining"
        );
        if let Err(e) = self.member.leave().await {
            tracing::warn!(error = %e, "leave group failed");
        }
        true
    }

    /// What the next join tells the leader.
    fn subscription(&self) -> SubscriptionInfo {
        let held = lock(&self.held).clone();
        SubscriptionInfo {
            process_id: self.identity.process_id.clone(),
            endpoint: self.identity.endpoint.clone(),
            prev_active: held.active,
            prev_standby: held.standby,
            offsets: held.positions,
        }
    }
}
