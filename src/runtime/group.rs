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
//! Commits carry the generation: a member that was cut off and comes back is refused (fenced),
//! and its stream thread drops its actives until the next assignment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::coordination::leader::GroupAssignor;
use crate::coordination::membership::{GroupMember, HeartbeatOutcome, MembershipError};
use crate::coordination::protocol::{AssignmentInfo, SubscriptionInfo};
use crate::query::routing::RoutingTable;

/// What the group loop tells the stream thread.
pub enum Command {
    /// A new generation: run these actives, keep these standbys and warm-ups.
    Assign {
        generation: i32,
        info: AssignmentInfo,
    },
    /// A rebalance is starting: commit and suspend every active, then acknowledge.
    Revoke { done: oneshot::Sender<()> },
}

/// A commit of source offsets, from the stream thread, with the reply.
pub struct CommitRequest {
    pub offsets: Vec<(i32, i64)>,
    pub reply: oneshot::Sender<Result<(), CommitRefused>>,
}

/// Why a commit was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitRefused {
    /// This instance is no longer a member of the current generation (zombie).
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("{0}")]
    Failed(String),
}

/// The stream thread's side of the channel to the group loop.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<CommitRequest>,
}

impl Committer {
    /// Commit and wait for the answer (blocking: called from the stream thread).
    pub fn commit_blocking(&self, offsets: Vec<(i32, i64)>) -> Result<(), CommitRefused> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(CommitRequest { offsets, reply })
            .map_err(|_| CommitRefused::Failed("group loop is gone".into()))?;
        rx.blocking_recv()
            .map_err(|_| CommitRefused::Failed("group loop dropped the commit".into()))?
    }
}

/// Build the channel pair.
pub fn commit_channel() -> (Committer, mpsc::Receiver<CommitRequest>) {
    let (tx, rx) = mpsc::channel(16);
    (Committer { tx }, rx)
}

/// Everything the group loop needs.
pub struct GroupLoop {
    pub member: GroupMember,
    pub assignor: GroupAssignor,
    pub commands: std::sync::mpsc::Sender<Command>,
    pub commits: mpsc::Receiver<CommitRequest>,
    /// Kept current by the stream thread; sent with every join.
    pub subscription: Arc<Mutex<SubscriptionInfo>>,
    pub routing: Arc<RoutingTable>,
    pub shutdown: CancellationToken,
    /// After an assignment that placed warm-ups, rejoin this much later to move actives.
    pub probing_interval: Duration,
    pub heartbeat_interval: Duration,
    /// Leave the group on shutdown (not with static membership: the seat is kept for a restart).
    pub leave_on_shutdown: bool,
}

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

impl GroupLoop {
    /// Run until shutdown. Returns an error only for failures that retrying cannot fix.
    pub async fn run(mut self) -> Result<(), MembershipError> {
        let mut backoff = Duration::from_millis(200);
        'generations: loop {
            let user_data = {
                let s = match self.subscription.lock() {
                    Ok(s) => s.clone(),
                    Err(p) => p.into_inner().clone(),
                };
                s.encode().map_err(|e| {
                    MembershipError::Config(format!("cannot encode subscription: {e}"))
                })?
            };
            let joined = tokio::select! {
                r = self.member.join(user_data, &self.assignor) => r,
                _ = self.shutdown.cancelled() => break 'generations,
            };
            let assignment = match joined {
                Ok(a) => {
                    backoff = Duration::from_millis(200);
                    a
                }
                Err(e) if e.is_retriable() || matches!(e, MembershipError::Fenced { .. }) => {
                    tracing::warn!(error = %e, "join failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = self.shutdown.cancelled() => break 'generations,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
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
                        continue;
                    }
                }
            };
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
            if self
                .commands
                .send(Command::Assign {
                    generation: assignment.generation_id,
                    info,
                })
                .is_err()
            {
                break 'generations;
            }
            let probe = tokio::time::sleep(if followup {
                self.probing_interval
            } else {
                Duration::from_secs(365 * 24 * 3600)
            });
            tokio::pin!(probe);
            let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = heartbeat.tick() => match self.member.heartbeat().await {
                        Ok(HeartbeatOutcome::Stable) => {}
                        Ok(HeartbeatOutcome::RebalanceNeeded) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "heartbeat failed");
                            if !e.is_retriable() {
                                break;
                            }
                        }
                    },
                    Some(req) = self.commits.recv() => serve_commit(&mut self.member, req).await,
                    _ = &mut probe => {
                        tracing::info!("probing rebalance: warm-ups may have caught up");
                        break;
                    }
                    _ = self.shutdown.cancelled() => break 'generations,
                }
            }
            // Rebalance: the stream thread commits (through us) and suspends its actives.
            let (done, mut done_rx) = oneshot::channel();
            if self.commands.send(Command::Revoke { done }).is_err() {
                break 'generations;
            }
            loop {
                tokio::select! {
                    Some(req) = self.commits.recv() => serve_commit(&mut self.member, req).await,
                    _ = &mut done_rx => break,
                }
            }
        }
        // Shutdown: the stream thread makes its final commit through us; serve commits until it
        // drops its end of the channel, then leave.
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
}

/// Standalone mode (no group protocol): this instance owns every partition. Used with brokers
/// that cannot host paystream's group (librdkafka's mock cluster in `paystream demo`) and by
/// users who run exactly one instance. Offsets are committed as a simple consumer (generation
/// -1), which the broker accepts only while no group member owns the group id.
pub struct Standalone {
    pub partitions: i32,
    pub self_addr: String,
    pub commands: std::sync::mpsc::Sender<Command>,
    pub commits: mpsc::Receiver<CommitRequest>,
    pub routing: Arc<RoutingTable>,
    pub bootstrap: String,
    pub group_id: String,
    pub topic: String,
}

impl Standalone {
    /// Hand the stream thread every partition, then serve its commits until it is done.
    pub async fn run(self) {
        let Standalone {
            partitions,
            self_addr,
            commands,
            commits,
            routing,
            bootstrap,
            group_id,
            topic,
        } = self;
        run_standalone(
            partitions,
            self_addr,
            commands,
            commits,
            routing,
            (bootstrap, group_id, topic),
        )
        .await;
    }
}

async fn run_standalone(
    partitions: i32,
    self_addr: String,
    commands: std::sync::mpsc::Sender<Command>,
    mut commits: mpsc::Receiver<CommitRequest>,
    routing: Arc<RoutingTable>,
    (bootstrap, group_id, topic): (String, String, String),
) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let map = (0..partitions)
        .map(|p| {
            (
                p,
                crate::coordination::assignor::PartitionOwners {
                    active: self_addr.clone(),
                    standbys: vec![],
                },
            )
        })
        .collect();
    routing.update(0, map);
    let info = AssignmentInfo {
        active: (0..partitions).collect(),
        partition_map: routing_snapshot(&routing, partitions),
        ..Default::default()
    };
    if commands
        .send(Command::Assign {
            generation: 0,
            info,
        })
        .is_err()
    {
        return;
    }
    let consumer: Option<Arc<BaseConsumer>> =
        crate::kafka::client::source_consumer_config(&bootstrap, &group_id)
            .create()
            .map(Arc::new)
            .map_err(|e| tracing::error!(error = %e, "cannot create the offset committer"))
            .ok();
    while let Some(req) = commits.recv().await {
        let Some(c) = consumer.clone() else {
            let _ = req
                .reply
                .send(Err(CommitRefused::Failed("no committer".into())));
            continue;
        };
        let topic = topic.clone();
        let offsets = req.offsets;
        let r = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &offsets {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(*o))
                    .map_err(|e| e.to_string())?;
            }
            c.commit(&tpl, CommitMode::Sync).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let _ = req.reply.send(r.map_err(CommitRefused::Failed));
    }
}

fn routing_snapshot(
    routing: &RoutingTable,
    partitions: i32,
) -> std::collections::BTreeMap<i32, crate::coordination::assignor::PartitionOwners> {
    (0..partitions)
        .filter_map(|p| routing.owners(p).map(|o| (p, o)))
        .collect()
}
