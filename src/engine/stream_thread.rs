//! The stream thread: polls the source for its running tasks, processes, commits. Assignments,
//! restores and standbys happen elsewhere ([`super::task_manager`], [`super::state_updater`]),
//! so this loop never blocks on them.
//!
//! ```text
//!   command? (Assign → commit, TaskManager::handle_assignment; Revoke → commit + suspend)
//!   updater event? (Restored(task) → running: assign its source partition at the committed offset)
//!   heartbeat older than the session timeout? → self-fence: abort, suspend every active
//!   poll source ─▶ Task::process (topology → store buffers, outputs into the transaction)
//!   every commit interval, or when the buffers hold --max-uncommitted-bytes: commit
//!     failure → abort: tasks drop their uncommitted writes and restart at the committed offset;
//!     fenced → also suspend until the next assignment; outcome unknown (the producer failed
//!     after the transaction may have committed) → catch up from the changelogs first
//! ```

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paystream_topology::processor::Record;
use paystream_topology::Topology;
use rdkafka::message::Headers;
use rdkafka::Message;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::commit::{CommitFailure, Committer};
use super::fault::Fault;
use super::local::LocalStores;
use super::source::Source;
use super::state_updater::{StateUpdater, UpdaterError, UpdaterEvent};
use super::status::{SharedStatus, Status};
use super::task::{TaskError, TaskOutputs};
use super::task_manager::{SourceChanges, TaskManager};
use super::{
    next_command, now_ms, EngineCommand, Liveness, Next, OffsetCommitter, SharedHeldTasks,
};
use crate::config::RunSettings;
use crate::kafka::producer::{CommitError, Delivery, OutputProducer};
use crate::kafka::transaction::GroupMetadata;
use crate::kafka::KafkaError;
use crate::telemetry::trace_context::TraceContext;
use crate::telemetry::Metrics;

/// Records handled per poll round before commands, the updater and commits get a turn.
const ROUND: usize = 2_000;
/// Wait between attempts to create a producer after a fatal producer error.
const PRODUCER_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum StreamThreadError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("state updater: {0}")]
    Updater(#[from] UpdaterError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("source consumer: {0}")]
    Consumer(#[source] rdkafka::error::KafkaError),
    #[error("could not start the state updater thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Everything the stream thread needs.
pub struct StreamThread {
    pub settings: RunSettings,
    pub topology: Arc<Topology>,
    pub producer: Arc<OutputProducer>,
    /// How to create the producer again after a fatal error (same transactional id).
    pub delivery: Delivery,
    /// Changelog topics (with the partition count) whose acknowledged offsets are tracked.
    pub tracked: Vec<(String, i32)>,
    pub dlq_partitions: i32,
    /// Partition count of the input topic (where each key belongs).
    pub input_partitions: i32,
    pub sink_partitions: HashMap<String, i32>,
    pub local: Arc<LocalStores>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<SharedStatus>,
    pub shutdown: CancellationToken,
    pub commands: Receiver<EngineCommand>,
    /// At-least-once: source offsets are committed through the group.
    pub via_group: Option<Box<dyn OffsetCommitter>>,
    pub liveness: Arc<Liveness>,
    pub held: SharedHeldTasks,
}

/// Why the stream thread is not processing although it holds actives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    /// Its commit was refused: it waits for the next assignment.
    Refused,
    /// It stopped hearing from the coordinator: it resumes if the coordinator confirms the
    /// membership again without a rebalance, or with the next assignment.
    Stale,
}

/// The loop's state besides the tasks.
struct Loop {
    source: Source,
    manager: TaskManager,
    committer: Committer,
    producer: Arc<OutputProducer>,
    updater: Receiver<UpdaterEvent>,
    /// Not processing (see [`Fence`]).
    fenced: Option<Fence>,
    /// The last infrastructure fault of a running task, until a commit moves on (see
    /// [`super::fault`]).
    fault: Option<Fault>,
    last_commit: Instant,
    dirty: bool,
}

impl StreamThread {
    /// Run until `shutdown` is cancelled (then commit and return `Ok`) or a fatal error (then
    /// return it without committing).
    pub fn run(mut self) -> Result<(), StreamThreadError> {
        let via_group = self.via_group.take();
        let s = &self.settings;
        let source = Source::new(
            &s.bootstrap_servers,
            &s.application_id,
            &s.input_topic,
            self.metrics.clone(),
        )
        .map_err(StreamThreadError::Consumer)?;
        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
        let (event_tx, event_rx) = std::sync::mpsc::channel();
        let updater = StateUpdater {
            bootstrap: s.bootstrap_servers.clone(),
            application_id: s.application_id.clone(),
            state_dir: s.state_dir.clone(),
            topology: self.topology.clone(),
            metrics: self.metrics.clone(),
            local: self.local.clone(),
            status: self.status.clone(),
            held: self.held.clone(),
            commands: cmd_rx,
            events: event_tx,
        };
        let updater_thread = std::thread::Builder::new()
            .name("state-updater".into())
            .spawn(move || updater.run())
            .map_err(StreamThreadError::Spawn)?;
        let mut l = Loop {
            source,
            manager: TaskManager::new(
                cmd_tx,
                self.local.clone(),
                self.status.clone(),
                self.held.clone(),
            ),
            committer: Committer {
                source_topic: s.input_topic.clone(),
                group: GroupMetadata::standalone(&s.application_id),
                via_group,
                metrics: self.metrics.clone(),
            },
            producer: self.producer.clone(),
            updater: event_rx,
            fenced: None,
            fault: None,
            last_commit: Instant::now(),
            dirty: false,
        };
        let result = self.run_loop(&mut l);
        let finished = match result {
            Ok(()) => {
                self.status.set(Status::Stopping);
                self.commit(&mut l)
                    .and_then(|()| l.manager.shutdown().map_err(Into::into))
            }
            Err(e) => {
                // Stop the updater without committing anything more.
                let _ = l.manager.shutdown();
                Err(e)
            }
        };
        drop(l);
        let _ = updater_thread.join();
        if finished.is_ok() {
            tracing::info!("stream thread stopped cleanly");
        }
        finished
    }

    fn run_loop(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        let s = &self.settings;
        tracing::info!("stream thread waiting for an assignment");
        while !self.shutdown.is_cancelled() {
            // First of all: a member that lost contact with the group (it may just have woken
            // from a long pause) stops before it acts on anything.
            if l.fenced.is_none() && self.liveness.is_stale() {
                self.self_fence(l)?;
            }
            // Nothing to poll: wait for commands (and updater events) instead of spinning.
            let backing_off = l.fault.is_some_and(|f| f.waiting(Instant::now()));
            let idle = l.fenced.is_some() || backing_off || l.manager.running().next().is_none();
            if !self.handle_commands(l, idle)? {
                break;
            }
            self.handle_updater_events(l)?;
            // The coordinator confirmed this member again in the generation it was working in
            // (a new generation comes with its own assignment): its partitions are still its.
            if l.fenced == Some(Fence::Stale)
                && !self.liveness.is_stale()
                && self.liveness.generation() == l.committer.group.generation
            {
                self.resume(l)?;
            }
            if l.fenced.is_none() && !backing_off {
                l.source
                    .serve_pending()
                    .map_err(StreamThreadError::Consumer)?;
                match self.process_round(l) {
                    Err(StreamThreadError::Task(e)) if e.is_retryable() => self.fault(l, &e)?,
                    other => other?,
                }
            }
            let uncommitted: usize = l
                .manager
                .tasks
                .values()
                .map(|t| t.uncommitted_bytes())
                .sum();
            if (l.dirty && l.last_commit.elapsed() >= s.commit_interval)
                || uncommitted >= s.max_uncommitted_bytes
            {
                self.commit(l)?;
                l.manager.publish_positions();
            }
        }
        Ok(())
    }

    /// Take the group's commands; `false` when the group side is gone (shutting down).
    fn handle_commands(&self, l: &mut Loop, idle: bool) -> Result<bool, StreamThreadError> {
        let mut wait = idle.then_some(Duration::from_millis(20));
        loop {
            let cmd = match next_command(&self.commands, wait.take()) {
                Next::Command(c) => c,
                Next::Nothing => return Ok(true),
                Next::Closed => return Ok(false),
            };
            match cmd {
                EngineCommand::Revoke { done } => {
                    self.commit(l)?;
                    let changes = l.manager.suspend_all()?;
                    self.unassign_source(l, &changes)?;
                    let _ = done.send(());
                }
                EngineCommand::Assign {
                    generation,
                    member_id,
                    active,
                    standby,
                } => {
                    self.commit(l)?;
                    l.committer.group = GroupMetadata {
                        group_id: self.settings.application_id.clone(),
                        generation,
                        member_id,
                        group_instance_id: self.settings.group_instance_id.clone(),
                    };
                    l.fenced = None;
                    let changes = l.manager.handle_assignment(&active, &standby)?;
                    self.unassign_source(l, &changes)?;
                    self.update_status(l);
                    tracing::info!(generation, ?active, ?standby, "assignment applied");
                }
            }
        }
    }

    /// Run the tasks the updater restored (if they are still assigned active).
    fn handle_updater_events(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        loop {
            match l.updater.try_recv() {
                Ok(UpdaterEvent::Restored(task)) => {
                    if let Some(p) = l.manager.on_restored(*task)? {
                        if l.fenced.is_some() {
                            let changes = l.manager.suspend_all()?;
                            self.unassign_source(l, &changes)?;
                        } else {
                            self.assign_source(l, p)?;
                            self.update_status(l);
                        }
                    }
                }
                Ok(UpdaterEvent::Failed(e)) => return Err(e.into()),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(()),
            }
        }
    }

    /// Poll the source once (up to [`ROUND`] records) and process what came.
    fn process_round(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        if l.manager.running().next().is_none() {
            return Ok(());
        }
        let outputs = TaskOutputs {
            producer: &l.producer,
            dlq_topic: &self.settings.dlq_topic,
            dlq_partitions: self.dlq_partitions,
            sink_partitions: &self.sink_partitions,
            application_id: &self.settings.application_id,
            input_partitions: self.input_partitions,
        };
        let wall_clock = now_ms();
        for task in l.manager.tasks.values_mut() {
            task.punctuate_wall_clock(wall_clock, &outputs)?;
        }
        for _ in 0..ROUND {
            // Ask without waiting first: a poll with a timeout makes librdkafka read the clock
            // once more per record (the clock was ~9% of the stream thread's profile); only an
            // empty queue waits.
            let polled = match l.source.poll(Duration::ZERO) {
                None => l.source.poll(Duration::from_millis(20)),
                some => some,
            };
            match polled {
                None => break,
                Some(Ok(msg)) => {
                    let Some(task) = l.manager.tasks.get_mut(&msg.partition()) else {
                        continue;
                    };
                    let record = Record {
                        key: msg.key().map(<[u8]>::to_vec),
                        value: msg.payload().map(<[u8]>::to_vec),
                        timestamp: msg.timestamp().to_millis().unwrap_or(0),
                        headers: Vec::new(),
                        decoded: Default::default(),
                    };
                    let trace = msg.headers().and_then(|h| {
                        TraceContext::from_headers(
                            h.iter().map(|h| (h.key, h.value.unwrap_or_default())),
                        )
                    });
                    let (topic, offset) = (msg.topic(), msg.offset());
                    match task.process(topic, offset, record, trace, &outputs, wall_clock) {
                        Ok(()) => l.dirty = true,
                        // The record's own fault: whatever it half did is in the open
                        // transaction and the store buffers. Roll everything back to the last
                        // commit; the task dead-letters the record when it comes again.
                        Err(TaskError::Poisoned { .. }) => return self.roll_back(l),
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "source consumer error (librdkafka retries)");
                    break;
                }
            }
        }
        Ok(())
    }

    /// Commit the running tasks. A failed commit rolls them back to their last commit; a fenced
    /// one also suspends them; a fatal producer error replaces the producer.
    fn commit(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        self.status.commit_started(now_ms());
        let result = self.commit_or_recover(l);
        self.status.commit_ended();
        result
    }

    fn commit_or_recover(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        let ending = || self.status.commit_ending();
        let result = l
            .committer
            .commit(&l.producer, &mut l.manager.tasks, &ending);
        l.last_commit = Instant::now();
        l.dirty = false;
        let failure = match result {
            Ok(done) => {
                if done.offsets > 0 {
                    self.clear_fault(l);
                }
                for (p, t) in l.manager.tasks.iter_mut() {
                    if let Some(error) = t.checkpoint_error_change() {
                        self.status.task_error(*p, error);
                    }
                }
                return Ok(());
            }
            Err(CommitFailure::Task(e)) if e.is_retryable() => return self.fault(l, &e),
            Err(CommitFailure::Task(e) | CommitFailure::Local(e)) => return Err(e.into()),
            Err(CommitFailure::Kafka(e)) => e,
        };
        tracing::warn!(error = %failure, "commit failed; going back to the last commit");
        match failure {
            CommitError::Fenced(_) => {
                self.rewind(l)?;
                self.fence(l, Fence::Refused)?;
            }
            CommitError::Fatal(_) => self.catch_up_from_changelogs(l)?,
            CommitError::Hung(_) => {
                self.metrics
                    .transactional_calls_hung
                    .fetch_add(1, Ordering::Relaxed);
                self.catch_up_from_changelogs(l)?;
            }
            CommitError::Aborted(_) => self.rewind(l)?,
        }
        Ok(())
    }

    /// After a commit whose outcome is unknown: the producer failed (or its abort did) once
    /// the transaction may have reached the coordinator, e.g. an `EndTxn` whose answer was lost
    /// with a broker. The transaction may have committed: then Kafka holds its changelog records,
    /// output and source offsets while the local stores do not, and a plain rewind would go on
    /// from the new offsets with stores missing that batch (seen in the broker drill: views and
    /// SMS of thousands of orders lost). Every running task drops its uncommitted writes and is
    /// suspended at once (queries see a standby copy, never a stale "active" one, while the
    /// producer is replaced); the new producer's `init_transactions` settles the old transaction
    /// either way; then the tasks catch up from their changelogs on the state updater
    /// (`read_committed`: exactly the committed batches) and restart from the committed offsets,
    /// as tasks resumed after a fence do. Kafka Streams closes its tasks dirty and restores them
    /// for the same reason.
    fn catch_up_from_changelogs(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        tracing::warn!(
            "the failed transaction may have committed: catching every active up from its changelog"
        );
        self.metrics.commits_unknown.fetch_add(1, Ordering::Relaxed);
        for t in l.manager.tasks.values_mut() {
            t.abort();
        }
        l.dirty = false;
        let stopped = l.manager.suspend_all()?;
        self.unassign_source(l, &stopped)?;
        let _ = l.producer.abort();
        self.replace_producer(l);
        self.reapply_assignment(l)
    }

    /// Hand the current assignment to the task manager again: suspended actives go through the
    /// state updater (catch up from their changelogs) and run again from the committed offsets.
    fn reapply_assignment(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        let (active, standby) = l.manager.assignment();
        let changes = l.manager.handle_assignment(&active, &standby)?;
        self.unassign_source(l, &changes)?;
        self.update_status(l);
        Ok(())
    }

    /// A running task failed for a reason that may pass: roll back to the last commit, show it
    /// in `/health`, and wait before processing again (see [`super::fault`]).
    fn fault(&self, l: &mut Loop, e: &TaskError) -> Result<(), StreamThreadError> {
        let fault = Fault::next(l.fault.as_ref(), e.partition(), Instant::now());
        tracing::error!(
            error = %e,
            retry_in_ms = fault.backoff.as_millis() as u64,
            "task failed; rolled back to the last commit, retrying"
        );
        self.status.task_error(
            fault.partition,
            Some(format!(
                "{e} (retrying every {} ms)",
                fault.backoff.as_millis()
            )),
        );
        l.fault = Some(fault);
        self.roll_back(l)
    }

    /// A commit moved on: whatever failed before works again.
    fn clear_fault(&self, l: &mut Loop) {
        if let Some(f) = l.fault.take() {
            tracing::info!(partition = f.partition, "task recovered from its fault");
            self.status.task_error(f.partition, None);
        }
    }

    /// Abort the open transaction and go back to the last commit (see [`Self::rewind`]).
    fn roll_back(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        if let Err(e) = l.producer.abort() {
            tracing::warn!(error = %e, "abort failed; replacing the producer");
            self.replace_producer(l);
        }
        l.dirty = false;
        self.rewind(l)
    }

    /// Drop uncommitted writes and restart every running task at its committed source offset.
    fn rewind(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        let running: Vec<i32> = l.manager.running().collect();
        for t in l.manager.tasks.values_mut() {
            t.abort();
        }
        for p in running {
            self.unassign_source(l, &SourceChanges { stopped: vec![p] })?;
            self.assign_source(l, p)?;
        }
        Ok(())
    }

    /// Stop processing (see [`Fence`]).
    fn fence(&self, l: &mut Loop, why: Fence) -> Result<(), StreamThreadError> {
        tracing::warn!(
            ?why,
            "fenced: suspending every active until the group takes this instance back"
        );
        l.fenced = Some(why);
        self.status.set(Status::Fenced);
        let changes = l.manager.suspend_all()?;
        self.unassign_source(l, &changes)
    }

    /// The coordinator confirmed the membership again without a rebalance: the partitions are
    /// still this instance's. Catch the suspended actives up and run them again.
    fn resume(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        tracing::info!("the group confirmed this instance again; resuming its actives");
        l.fenced = None;
        self.reapply_assignment(l)
    }

    /// `running` once every assigned active runs (`ready` in `/health`), `restoring` before.
    fn update_status(&self, l: &Loop) {
        let status = if l.manager.all_actives_running() {
            Status::Running
        } else {
            Status::Restoring
        };
        self.status.set(status);
    }

    /// The last heartbeat is older than the session timeout: the group has most likely given
    /// this instance's partitions to others. Whatever is uncommitted is aborted now rather than
    /// fenced later, and queries fall back to the other copies.
    fn self_fence(&self, l: &mut Loop) -> Result<(), StreamThreadError> {
        self.metrics.self_fenced.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = l.producer.abort() {
            tracing::warn!(error = %e, "abort after losing the group failed; replacing the producer");
            self.replace_producer(l);
        }
        for t in l.manager.tasks.values_mut() {
            t.abort();
        }
        self.fence(l, Fence::Stale)
    }

    /// Create the producer again (same transactional id: this also fences whatever the old one
    /// left open), retrying until it works or the instance shuts down.
    fn replace_producer(&self, l: &mut Loop) {
        while !self.shutdown.is_cancelled() {
            match OutputProducer::new(
                &self.settings.bootstrap_servers,
                &self.tracked,
                &self.delivery,
            ) {
                Ok(p) => {
                    l.producer = p;
                    tracing::info!("producer replaced");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the producer; retrying");
                    std::thread::sleep(PRODUCER_RETRY);
                }
            }
        }
    }

    /// Start the task's source partition at its committed offset (see [`super::source`]).
    fn assign_source(&self, l: &mut Loop, partition: i32) -> Result<(), StreamThreadError> {
        l.source.assign(partition);
        Ok(())
    }

    fn unassign_source(
        &self,
        l: &mut Loop,
        changes: &SourceChanges,
    ) -> Result<(), StreamThreadError> {
        if changes.stopped.is_empty() {
            return Ok(());
        }
        l.source
            .unassign(&changes.stopped)
            .map_err(StreamThreadError::Consumer)
    }
}
