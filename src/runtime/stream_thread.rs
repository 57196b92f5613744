//! The stream thread: poll → process → commit for actives, changelog → store for standbys, and
//! task changes when the group hands out a new assignment — all on one plain OS thread.
//!
//! RocksDB writes and librdkafka polls block, so this loop never runs on the async runtime.
//! Delivery guarantee, at-least-once: a source offset is committed (with the group generation,
//! through [`Committer`]) only after every changelog and dead-letter write of the records before
//! it is acknowledged; after a crash the records since the last commit are processed again, and
//! the order-view topology recognises events it already applied.
//!
//! ```text
//!   command? (Assign → reconcile tasks; Revoke → commit + suspend actives)
//!   poll source ─▶ task.process (topology → RocksDB + changelog enqueue)
//!   poll standby changelogs ─▶ task.apply_changelog
//!   every commit interval: producer.flush ─▶ checkpoints (every 10k writes) ─▶ commit offsets
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paystream_topology::processor::Record;
use paystream_topology::Topology;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::RunSettings;
use crate::coordination::protocol::{AssignmentInfo, SubscriptionInfo};
use crate::kafka::client::{restore_consumer_config, source_consumer_config};
use crate::kafka::producer::OutputProducer;
use crate::kafka::KafkaError;
use crate::runtime::group::{Command, CommitRefused, Committer};
use crate::runtime::local::{LocalStores, Role};
use crate::runtime::restore::{restore_tasks, RestoreError};
use crate::runtime::task::{Task, TaskError, TaskOutputs, TaskState};
use crate::telemetry::Metrics;

/// How long a commit waits for outstanding deliveries before failing.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Records handled per poll round before commands and the other consumer get a turn.
const ROUND: usize = 2_000;

/// The wall clock in epoch milliseconds (for wall-clock punctuation).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Coarse status of the instance, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Status {
    Starting = 0,
    Restoring = 1,
    Running = 2,
    Stopping = 3,
    Failed = 4,
}

/// [`Status`] shared between threads.
#[derive(Debug, Default)]
pub struct SharedStatus(AtomicU8);

impl SharedStatus {
    pub fn set(&self, s: Status) {
        self.0.store(s as u8, Ordering::Release);
    }
    pub fn get(&self) -> Status {
        match self.0.load(Ordering::Acquire) {
            0 => Status::Starting,
            1 => Status::Restoring,
            2 => Status::Running,
            3 => Status::Stopping,
            _ => Status::Failed,
        }
    }
}

#[derive(Debug, Error)]
pub enum StreamThreadError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("consumer: {0}")]
    Consumer(#[source] rdkafka::error::KafkaError),
}

/// Feeds librdkafka's per-partition consumer lag into the metrics (source lag for actives,
/// changelog lag for standbys).
struct LagContext {
    metrics: Arc<Metrics>,
    /// Topics whose partition lag is reported (source topic, or the changelog topics).
    topics: Vec<String>,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        for topic in &self.topics {
            if let Some(t) = stats.topics.get(topic) {
                for (p, s) in &t.partitions {
                    if *p >= 0 && s.consumer_lag >= 0 {
                        self.metrics
                            .task(*p)
                            .lag
                            .store(s.consumer_lag, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// Everything the stream thread needs.
pub struct StreamThread {
    pub settings: RunSettings,
    pub topology: Arc<Topology>,
    pub producer: Arc<OutputProducer>,
    pub dlq_partitions: i32,
    pub sink_partitions: HashMap<String, i32>,
    pub local: Arc<LocalStores>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<SharedStatus>,
    pub shutdown: CancellationToken,
    pub commands: Receiver<Command>,
    pub committer: Committer,
    /// What the next join tells the leader; kept current here.
    pub subscription: Arc<Mutex<SubscriptionInfo>>,
}

struct Consumers {
    source: BaseConsumer<LagContext>,
    standby: BaseConsumer<LagContext>,
    has_actives: bool,
    has_standbys: bool,
}

impl StreamThread {
    /// Run until `shutdown` is cancelled (then commit and return `Ok`) or a fatal error (then
    /// return it without committing what was not acknowledged).
    pub fn run(self) -> Result<(), StreamThreadError> {
        let s = &self.settings;
        let changelogs: Vec<String> = self
            .topology
            .stores()
            .iter()
            .map(|st| st.changelog_topic(&s.application_id))
            .collect();
        let source: BaseConsumer<LagContext> =
            source_consumer_config(&s.bootstrap_servers, &s.application_id)
                .create_with_context(LagContext {
                    metrics: self.metrics.clone(),
                    topics: vec![s.input_topic.clone()],
                })
                .map_err(StreamThreadError::Consumer)?;
        let mut standby_cfg = restore_consumer_config(
            &s.bootstrap_servers,
            &format!("{}-standby", s.application_id),
        );
        standby_cfg
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "1000");
        let standby: BaseConsumer<LagContext> = standby_cfg
            .create_with_context(LagContext {
                metrics: self.metrics.clone(),
                topics: changelogs.clone(),
            })
            .map_err(StreamThreadError::Consumer)?;
        let mut consumers = Consumers {
            source,
            standby,
            has_actives: false,
            has_standbys: false,
        };
        let mut tasks: BTreeMap<i32, Task> = BTreeMap::new();
        let store_index: HashMap<String, usize> = changelogs
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        let outputs = TaskOutputs {
            producer: &self.producer,
            dlq_topic: &s.dlq_topic,
            dlq_partitions: self.dlq_partitions,
            sink_partitions: &self.sink_partitions,
        };
        let mut last_commit = Instant::now();
        let mut dirty = false;
        tracing::info!("stream thread waiting for an assignment");
        while !self.shutdown.is_cancelled() {
            // Commands from the group loop.
            let cmd = if tasks.is_empty() {
                // Nothing to poll: wait for work instead of spinning.
                match self.commands.recv_timeout(Duration::from_millis(100)) {
                    Ok(c) => Some(c),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.commands.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            match cmd {
                Some(Command::Revoke { done }) => {
                    self.commit(&mut tasks, true)?;
                    self.suspend_actives(&mut tasks, &mut consumers)?;
                    dirty = false;
                    let _ = done.send(());
                }
                Some(Command::Assign { generation, info }) => {
                    self.reconcile(generation, &info, &mut tasks, &mut consumers)?;
                    if self.shutdown.is_cancelled() {
                        break;
                    }
                }
                None => {}
            }

            let wall_clock = now_ms();
            if consumers.has_actives {
                for task in tasks.values_mut() {
                    task.punctuate_wall_clock(wall_clock, &outputs)?;
                }
                for _ in 0..ROUND {
                    match consumers
                        .source
                        .poll(Duration::from_millis(if consumers.has_standbys {
                            5
                        } else {
                            50
                        })) {
                        None => break,
                        Some(Ok(msg)) => {
                            let Some(task) = tasks.get_mut(&msg.partition()).filter(|t| {
                                t.role == Role::Active && t.state() == TaskState::Running
                            }) else {
                                continue;
                            };
                            let record = Record {
                                key: msg.key().map(<[u8]>::to_vec),
                                value: msg.payload().map(<[u8]>::to_vec),
                                timestamp: msg.timestamp().to_millis().unwrap_or(0),
                                headers: Vec::new(),
                            };
                            task.process(msg.topic(), msg.offset(), record, &outputs, wall_clock)?;
                            dirty = true;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "source consumer error (librdkafka retries)");
                            break;
                        }
                    }
                }
            }
            if consumers.has_standbys {
                let timeout = if consumers.has_actives { 0 } else { 50 };
                for _ in 0..ROUND {
                    match consumers.standby.poll(Duration::from_millis(timeout)) {
                        None => break,
                        Some(Ok(msg)) => {
                            let (Some(task), Some(&store)) = (
                                tasks.get_mut(&msg.partition()),
                                store_index.get(msg.topic()),
                            ) else {
                                continue;
                            };
                            if task.role != Role::Standby {
                                continue;
                            }
                            task.apply_changelog(
                                store,
                                msg.key(),
                                msg.payload(),
                                msg.timestamp().to_millis().unwrap_or(0),
                                msg.offset(),
                            )?;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "standby consumer error (librdkafka retries)");
                            break;
                        }
                    }
                }
            }
            if last_commit.elapsed() >= s.commit_interval {
                if dirty || consumers.has_standbys {
                    self.commit(&mut tasks, false)?;
                    self.publish_offsets(&tasks);
                }
                last_commit = Instant::now();
                dirty = false;
            }
        }
        self.status.set(Status::Stopping);
        self.commit(&mut tasks, true)?;
        for (p, t) in tasks.iter_mut() {
            self.local.remove(*p);
            t.transition(TaskState::Closed)?;
        }
        tracing::info!("stream thread stopped cleanly");
        Ok(())
    }

    /// Bring the set of tasks in line with a new assignment.
    fn reconcile(
        &self,
        generation: i32,
        info: &AssignmentInfo,
        tasks: &mut BTreeMap<i32, Task>,
        consumers: &mut Consumers,
    ) -> Result<(), StreamThreadError> {
        let s = &self.settings;
        let want_active: BTreeSet<i32> = info.active.iter().copied().collect();
        let want_standby: BTreeSet<i32> = info
            .standby
            .iter()
            .chain(info.warmup.iter())
            .copied()
            .collect();
        // Open what is new; catch up actives (new, resumed or promoted) to the changelog's end.
        let mut to_restore: Vec<Task> = Vec::new();
        for &p in want_active.iter().chain(want_standby.iter()) {
            let role = if want_active.contains(&p) {
                Role::Active
            } else {
                Role::Standby
            };
            let existing = tasks.remove(&p);
            let mut t = match existing {
                Some(t) => t,
                None => Task::open(
                    p,
                    &self.topology,
                    &s.state_dir,
                    &s.application_id,
                    &self.producer,
                    self.metrics.task(p),
                )?,
            };
            let promoted = t.role == Role::Standby && role == Role::Active;
            t.role = role;
            match (t.state(), role) {
                (TaskState::Created, _) => to_restore.push(t),
                (TaskState::Running, Role::Active) if promoted => {
                    t.transition(TaskState::Suspended)?;
                    to_restore.push(t);
                }
                (TaskState::Suspended, Role::Active) => to_restore.push(t),
                (TaskState::Suspended, Role::Standby) => {
                    t.transition(TaskState::Running)?;
                    tasks.insert(p, t);
                }
                _ => {
                    tasks.insert(p, t);
                }
            }
        }
        if !to_restore.is_empty() {
            if tasks.is_empty() {
                self.status.set(Status::Restoring);
            }
            let summary = restore_tasks(
                &s.bootstrap_servers,
                &format!("{}-restore", s.application_id),
                &mut to_restore,
                &self.shutdown,
            )?;
            if summary.interrupted {
                return Ok(());
            }
            for mut t in to_restore {
                t.transition(TaskState::Running)?;
                tasks.insert(t.partition, t);
            }
        }
        // Close what we no longer hold, only now: until the new copies were restored, the old ones
        // kept answering queries. Files and checkpoint stay for a later return.
        let gone: Vec<i32> = tasks
            .keys()
            .copied()
            .filter(|p| !want_active.contains(p) && !want_standby.contains(p))
            .collect();
        for p in gone {
            if let Some(mut t) = tasks.remove(&p) {
                t.checkpoint(&self.producer, true)?;
                t.transition(TaskState::Closed)?;
                self.local.remove(p);
                tracing::info!(partition = p, "closed task");
            }
        }
        for (p, t) in tasks.iter() {
            self.local.insert(*p, t.local_partition());
        }
        // Point the consumers at the new work.
        let mut src = TopicPartitionList::new();
        let mut sb = TopicPartitionList::new();
        for (p, t) in tasks.iter() {
            match t.role {
                Role::Active => {
                    src.add_partition_offset(&s.input_topic, *p, Offset::Stored)
                        .map_err(StreamThreadError::Consumer)?;
                }
                Role::Standby => {
                    for st in &t.stores {
                        sb.add_partition_offset(
                            &st.changelog_topic,
                            *p,
                            Offset::Offset(st.changelog_end),
                        )
                        .map_err(StreamThreadError::Consumer)?;
                    }
                }
            }
        }
        consumers.has_actives = src.count() > 0;
        consumers.has_standbys = sb.count() > 0;
        consumers
            .source
            .assign(&src)
            .map_err(StreamThreadError::Consumer)?;
        consumers
            .standby
            .assign(&sb)
            .map_err(StreamThreadError::Consumer)?;
        self.publish_offsets(tasks);
        self.status.set(Status::Running);
        tracing::info!(generation, active = ?want_active, standby = ?want_standby, "assignment applied");
        Ok(())
    }

    /// Stop processing actives (after their final commit): suspended, stores still readable.
    fn suspend_actives(
        &self,
        tasks: &mut BTreeMap<i32, Task>,
        consumers: &mut Consumers,
    ) -> Result<(), StreamThreadError> {
        for t in tasks
            .values_mut()
            .filter(|t| t.role == Role::Active && t.state() == TaskState::Running)
        {
            t.transition(TaskState::Suspended)?;
        }
        consumers
            .source
            .unassign()
            .map_err(StreamThreadError::Consumer)?;
        consumers.has_actives = false;
        Ok(())
    }

    /// Tell the next join what we hold and how far each copy is.
    fn publish_offsets(&self, tasks: &BTreeMap<i32, Task>) {
        let mut sub = match self.subscription.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        sub.prev_active = tasks
            .values()
            .filter(|t| t.role == Role::Active)
            .map(|t| t.partition)
            .collect();
        sub.prev_standby = tasks
            .values()
            .filter(|t| t.role == Role::Standby)
            .map(|t| t.partition)
            .collect();
        for t in tasks.values() {
            sub.offsets.insert(t.partition, t.changelog_position());
        }
    }

    /// Flush the producer, checkpoint, then commit source offsets with the group generation.
    /// A refused commit (this instance was fenced) drops the actives until the next assignment.
    fn commit(
        &self,
        tasks: &mut BTreeMap<i32, Task>,
        force_checkpoint: bool,
    ) -> Result<(), StreamThreadError> {
        self.producer.flush(FLUSH_TIMEOUT)?;
        for t in tasks.values_mut() {
            t.checkpoint(&self.producer, force_checkpoint)?;
        }
        let offsets: Vec<(i32, i64)> = tasks
            .values()
            .filter(|t| t.role == Role::Active)
            .filter_map(|t| {
                t.next_offset
                    .filter(|n| Some(*n) != t.committed_offset)
                    .map(|n| (t.partition, n))
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        match self.committer.commit_blocking(offsets) {
            Ok(()) => {
                for t in tasks.values_mut() {
                    t.committed_offset = t.next_offset;
                }
                self.metrics.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(CommitRefused::Fenced(why)) => {
                // Another instance owns these partitions now: stop writing for them.
                tracing::warn!(
                    why,
                    "commit fenced: this instance lost its partitions; suspending actives"
                );
                for t in tasks
                    .values_mut()
                    .filter(|t| t.role == Role::Active && t.state() == TaskState::Running)
                {
                    t.transition(TaskState::Suspended)?;
                    t.next_offset = t.committed_offset;
                }
            }
            // Not fatal: the records stay acknowledged in the changelog; the next commit covers
            // them, and a crash before it only means reprocessing.
            Err(CommitRefused::Failed(why)) => {
                tracing::warn!(why, "offset commit failed; will retry at the next interval")
            }
        }
        Ok(())
    }
}
