//! A task: one partition's share of the topology, with its own stores.
//!
//! ```text
//!                 ┌─────────────── promote ───────────────┐
//!                 ▼                                        │
//!   Created ──▶ Restoring ──caught up──▶ Running ──suspend──▶ Suspended
//!      │          │  ▲                                       │   │
//!      │  demote  ▼  │ promote                      recycle  │   │ resume (catch up first)
//!      └────────▶ Standby ◀───────────────────────────────────┘   └──▶ Restoring
//!   any ──close──▶ Closed
//! ```
//! `Created`: stores opened, nothing read yet. `Restoring` (an active, on the state updater):
//! applying its changelogs from the local checkpoint (or the beginning) up to their end.
//! `Standby` (on the state updater): following its changelogs as they grow. `Running` (on the
//! stream thread): processing source records. `Suspended`: an active that stopped processing
//! (revoked, fenced) with committed state only; before it runs again it catches up its
//! changelogs, which another instance may have written meanwhile. `Closed`: stores closed.
//! [`Task::transition`] refuses any other move.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use paystream_state::store::StoreError;
use paystream_topology::processor::{Origin, ProcessError, Record, RecordMeta, TaskIo};
use paystream_topology::{partition_for_key, TaskProcessors, Topology};
use thiserror::Error;

use super::local::{LocalPartition, Role};
use super::store::TaskStore;
use super::task_io::Io;
use super::trace::RecordTrace;
use crate::kafka::producer::OutputProducer;
use crate::telemetry::trace_context::TraceContext;
use crate::telemetry::TaskMetrics;

/// Lifecycle of a task; see the module diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Restoring,
    Standby,
    Running,
    Suspended,
    Closed,
}

impl TaskState {
    fn can_move_to(self, next: TaskState) -> bool {
        use TaskState::*;
        self != Closed
            && matches!(
                (self, next),
                (Created, Restoring | Standby)
                    | (Restoring, Running | Standby)
                    | (Standby, Restoring)
                    | (Running, Suspended)
                    | (Suspended, Restoring | Standby)
                    | (_, Closed)
            )
    }

    /// How `/health` names the state.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Created => "created",
            TaskState::Restoring => "restoring",
            TaskState::Standby => "standby",
            TaskState::Running => "running",
            TaskState::Suspended => "suspended",
            TaskState::Closed => "closed",
        }
    }
}

/// Task failures. `Poisoned` is the record's fault and only rolls the task back; the others are
/// faults of a store or the topology, which stop processing without committing (processing
/// restarts from the last commit, so nothing is lost).
#[derive(Debug, Error)]
pub enum TaskError {
    #[error("task {partition}: {source}")]
    Store {
        partition: i32,
        #[source]
        source: StoreError,
    },
    #[error("task {partition}: {source}")]
    Process {
        partition: i32,
        #[source]
        source: ProcessError,
    },
    /// The record at `offset` caused the failure (too large an output, a processor panic):
    /// the caller rolls back to the last commit; the task dead-letters the record when it
    /// comes again.
    #[error(
        "task {partition}: record at offset {offset} cannot be processed ({reason}): {detail}"
    )]
    Poisoned {
        partition: i32,
        offset: i64,
        reason: &'static str,
        detail: String,
    },
    #[error("task {partition}: illegal transition {from:?} -> {to:?}")]
    IllegalTransition {
        partition: i32,
        from: TaskState,
        to: TaskState,
    },
}

impl TaskError {
    /// The partition that failed.
    pub fn partition(&self) -> i32 {
        match self {
            TaskError::Store { partition, .. }
            | TaskError::Process { partition, .. }
            | TaskError::Poisoned { partition, .. }
            | TaskError::IllegalTransition { partition, .. } => *partition,
        }
    }

    /// A fault of a store or of Kafka that may pass: roll back and retry (not a record's fault,
    /// not a bug in the lifecycle).
    pub fn is_retryable(&self) -> bool {
        matches!(self, TaskError::Store { .. } | TaskError::Process { .. })
    }
}

/// Directory of one store of one partition: `<state-dir>/<app-id>/<partition>/<store>`.
pub fn store_dir(state_dir: &Path, application_id: &str, partition: i32, store: &str) -> PathBuf {
    state_dir
        .join(application_id)
        .join(partition.to_string())
        .join(store)
}

/// Where a running task writes what its topology emits.
pub struct TaskOutputs<'a> {
    pub producer: &'a OutputProducer,
    pub dlq_topic: &'a str,
    pub dlq_partitions: i32,
    /// Partition count of each sink topic (keyed records are routed with murmur2).
    pub sink_partitions: &'a HashMap<String, i32>,
    /// Written into a header of every sink record (`paystream.application.id`).
    pub application_id: &'a str,
    /// Partition count of the source topic: a keyed record belongs on `murmur2(key) % n`.
    pub input_partitions: i32,
}

/// One partition's processing unit.
pub struct Task {
    pub partition: i32,
    state: TaskState,
    pub stores: Vec<TaskStore>,
    topology: Arc<Topology>,
    /// Fresh for every run from committed state (created when the task starts running).
    processors: Option<TaskProcessors>,
    /// Next source offset to process, once something was processed since the last commit.
    next_offset: Option<i64>,
    /// The source offset of the last commit (what processing restarts from after an abort).
    committed_offset: Option<i64>,
    pub metrics: Arc<TaskMetrics>,
    /// Where the record being processed came from (reused across records).
    meta: RecordMeta,
    /// Late records already added to the metrics.
    late_seen: u64,
    /// Why the last checkpoint could not be written (see [`Task::post_commit`]).
    checkpoint_error: Option<String>,
    checkpoint_error_changed: bool,
    /// Source offsets whose processing failed because of the record itself, with the reason:
    /// dead-lettered whenever they come again (kept across rollbacks until committed).
    poison: BTreeMap<i64, Poison>,
}

/// Why a record cannot be processed (see [`Task::process`]).
struct Poison {
    reason: &'static str,
    detail: String,
}

/// Prefix-free text of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

impl Task {
    /// Open (or create) the task's stores.
    pub fn open(
        partition: i32,
        topology: &Arc<Topology>,
        state_dir: &Path,
        application_id: &str,
        metrics: Arc<TaskMetrics>,
    ) -> Result<Self, TaskError> {
        let mut stores = Vec::new();
        for spec in topology.stores() {
            let dir = store_dir(state_dir, application_id, partition, &spec.name);
            let topic: Arc<str> = spec.changelog_topic(application_id).into();
            let store = TaskStore::open(spec, dir, topic)
                .map_err(|source| TaskError::Store { partition, source })?;
            stores.push(store);
        }
        Ok(Self {
            partition,
            state: TaskState::Created,
            stores,
            topology: topology.clone(),
            processors: None,
            next_offset: None,
            committed_offset: None,
            metrics,
            meta: RecordMeta {
                topic: String::new(),
                partition,
                offset: -1,
            },
            late_seen: 0,
            poison: BTreeMap::new(),
            checkpoint_error: None,
            checkpoint_error_changed: false,
        })
    }

    pub fn state(&self) -> TaskState {
        self.state
    }

    /// Move to `next`, refusing moves the lifecycle does not allow. Entering `Running` starts
    /// fresh processors (their `init` reads the committed stores); leaving it drops them.
    pub fn transition(&mut self, next: TaskState) -> Result<(), TaskError> {
        if !self.state.can_move_to(next) {
            return Err(TaskError::IllegalTransition {
                partition: self.partition,
                from: self.state,
                to: next,
            });
        }
        tracing::debug!(partition = self.partition, from = ?self.state, to = ?next, "task transition");
        if next == TaskState::Running {
            self.processors = Some(self.topology.instantiate());
            self.next_offset = None;
            self.committed_offset = None;
        } else {
            self.processors = None;
        }
        self.state = next;
        Ok(())
    }

    /// What queries may read of this task: a running task's copy is the active one, any other
    /// is a standby copy (possibly behind).
    pub fn local_partition(&self) -> LocalPartition {
        LocalPartition {
            role: if self.state == TaskState::Running {
                Role::Active
            } else {
                Role::Standby
            },
            readers: self
                .stores
                .iter()
                .map(|s| (s.name.clone(), s.reader.clone()))
                .collect(),
            metrics: self.metrics.clone(),
        }
    }

    /// Run one source record through the topology (`wall_clock`: epoch ms, for processors).
    ///
    /// Before the topology: a record at an offset found poisonous earlier is dead-lettered with
    /// the reason found then; a keyed record on a partition its key does not hash to (murmur2,
    /// as Java's default partitioner) is dead-lettered as `wrong_partition`, as no query would
    /// ever find it here. A failure the record itself caused (see
    /// [`ProcessError::caused_by_record`], or a processor panic) is [`TaskError::Poisoned`]: the
    /// caller rolls back to the last commit, and the record is dead-lettered when it comes again.
    pub fn process(
        &mut self,
        topic: &str,
        offset: i64,
        record: Record,
        trace: Option<TraceContext>,
        outputs: &TaskOutputs<'_>,
        wall_clock: i64,
    ) -> Result<(), TaskError> {
        let partition = self.partition;
        let Some(processors) = self.processors.as_mut() else {
            return Ok(());
        };
        // The first record after (re)starting is where the last commit left the source.
        self.committed_offset.get_or_insert(offset);
        // One RecordMeta per task, reused: no allocation per record on the hot path.
        if self.meta.topic != topic {
            self.meta.topic = topic.to_owned();
        }
        self.meta.offset = offset;
        let trace =
            trace.map(|t| RecordTrace::start(t, topic, partition, offset, record.key.as_deref()));
        let mut io = Io {
            stores: &mut self.stores,
            outputs,
            meta: &self.meta,
            metrics: &self.metrics,
            trace: trace.as_ref(),
            origin: Origin::Record,
        };
        let expected = record
            .key
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(|k| partition_for_key(k, outputs.input_partitions));
        // Kept until committed: a later rollback brings the record back once more.
        let outcome = if let Some(poison) = self.poison.get(&offset) {
            io.dead_letter(record, poison.reason, &poison.detail)
        } else if let Some(expected) = expected.filter(|&e| e != partition) {
            let detail = format!(
                "the key hashes to partition {expected} (murmur2, as Java's default \
                 partitioner) but the record is on partition {partition}: queries look for it \
                 on {expected}"
            );
            io.dead_letter_with(
                record,
                "wrong_partition",
                &detail,
                &[
                    ("paystream.dlq.expected_partition", expected.to_string()),
                    ("paystream.dlq.actual_partition", partition.to_string()),
                ],
            )
        } else {
            let meta = &self.meta;
            let run = AssertUnwindSafe(|| processors.process(&mut io, meta, record, wall_clock));
            match std::panic::catch_unwind(run) {
                Ok(outcome) => outcome,
                Err(panic) => {
                    let detail = format!("a processor panicked: {}", panic_message(&*panic));
                    return Err(self.poisoned(offset, "processor_panic", detail));
                }
            }
        };
        if let Err(e) = outcome {
            return Err(match e.caused_by_record() {
                Some(reason) => self.poisoned(offset, reason, e.to_string()),
                None => TaskError::Process {
                    partition,
                    source: e,
                },
            });
        }
        self.next_offset = Some(offset + 1);
        self.metrics
            .records_processed
            .fetch_add(1, Ordering::Relaxed);
        let late = self
            .processors
            .as_ref()
            .map_or(0, TaskProcessors::late_records);
        if late != self.late_seen {
            self.metrics
                .records_late
                .fetch_add(late.saturating_sub(self.late_seen), Ordering::Relaxed);
            self.late_seen = late;
        }
        Ok(())
    }

    /// Remember that the record at `offset` cannot be processed: when it comes again (after the
    /// caller rolled back), it is dead-lettered with `reason`.
    fn poisoned(&mut self, offset: i64, reason: &'static str, detail: String) -> TaskError {
        tracing::warn!(
            partition = self.partition,
            offset,
            reason,
            %detail,
            "a record cannot be processed; rolling back to dead-letter it"
        );
        self.poison.insert(
            offset,
            Poison {
                reason,
                detail: detail.clone(),
            },
        );
        TaskError::Poisoned {
            partition: self.partition,
            offset,
            reason,
            detail,
        }
    }

    /// Fire the wall-clock punctuations due at `now` (epoch ms), for a running task.
    pub fn punctuate_wall_clock(
        &mut self,
        now: i64,
        outputs: &TaskOutputs<'_>,
    ) -> Result<(), TaskError> {
        let partition = self.partition;
        let Some(processors) = self.processors.as_mut() else {
            return Ok(());
        };
        self.meta.offset = -1;
        let mut io = Io {
            stores: &mut self.stores,
            outputs,
            meta: &self.meta,
            metrics: &self.metrics,
            trace: None,
            origin: Origin::Punctuation,
        };
        processors
            .punctuate_wall_clock(&mut io, &self.meta, now)
            .map_err(|source| TaskError::Process { partition, source })
    }

    /// Bytes its stores hold in memory, waiting for the next commit.
    pub fn uncommitted_bytes(&self) -> usize {
        self.stores.iter().map(TaskStore::uncommitted_bytes).sum()
    }

    /// The source offset to commit, if the task processed something since its last commit.
    pub fn offset_to_commit(&self) -> Option<i64> {
        self.next_offset
            .filter(|n| Some(*n) != self.committed_offset)
    }

    /// Commit, phase one: send every store's dirty entries to its changelog.
    pub fn prepare_commit(&mut self, producer: &OutputProducer) -> Result<usize, TaskError> {
        let partition = self.partition;
        let mut sent = 0;
        for s in &mut self.stores {
            sent += s
                .prepare(producer, partition)
                .map_err(|source| TaskError::Store { partition, source })?;
        }
        Ok(sent)
    }

    /// Commit, phase two: the changelog records are durable; write RocksDB and checkpoint the
    /// stores that changed enough.
    ///
    /// A checkpoint that cannot be written (a full disk) does not fail the commit: the data is
    /// in RocksDB, and an old checkpoint only means a longer replay after a crash. It is kept in
    /// [`Task::checkpoint_error`] and tried again at the next commit.
    pub fn post_commit(&mut self, producer: &OutputProducer) -> Result<(), TaskError> {
        let partition = self.partition;
        let mut failed = None;
        for s in &mut self.stores {
            s.commit(producer, partition)
                .map_err(|source| TaskError::Store { partition, source })?;
            if let Err(e) = s.maybe_checkpoint(false) {
                failed = Some(e.to_string());
            }
        }
        if failed != self.checkpoint_error {
            match &failed {
                Some(e) => {
                    tracing::warn!(partition, error = %e, "checkpoint failed; retried at the next commit")
                }
                None => tracing::info!(partition, "checkpoint written again"),
            }
            self.checkpoint_error = failed;
            self.checkpoint_error_changed = true;
        }
        Ok(())
    }

    /// Why the last checkpoint attempt failed, if it did, once after each change (for
    /// `/health`).
    pub fn checkpoint_error_change(&mut self) -> Option<Option<String>> {
        std::mem::take(&mut self.checkpoint_error_changed).then(|| self.checkpoint_error.clone())
    }

    /// The source offset of the last processed record is committed too.
    pub fn mark_committed(&mut self) {
        if let Some(n) = self.next_offset {
            self.committed_offset = Some(n);
            // Dead letters before `n` are committed: those records never come again.
            self.poison = self.poison.split_off(&n);
        }
    }

    /// The commit failed: drop every uncommitted write. A running task gets fresh processors
    /// (their in-memory state may reflect the dropped writes) and must be fed again from its
    /// last committed offset.
    pub fn abort(&mut self) {
        for s in &mut self.stores {
            s.abort();
        }
        if self.state == TaskState::Running {
            self.processors = Some(self.topology.instantiate());
            self.next_offset = None;
            self.committed_offset = None;
        }
    }

    /// Flush and checkpoint every store whose checkpoint is behind (on close, on handing over).
    pub fn checkpoint(&mut self) -> Result<(), TaskError> {
        let partition = self.partition;
        for s in &mut self.stores {
            s.maybe_checkpoint(true)
                .map_err(|source| TaskError::Store { partition, source })?;
        }
        Ok(())
    }

    /// How caught up the local copy is, for the group's metadata: the changelog position of the
    /// first store (the order view's, which every valid event writes). Offsets of different
    /// topics cannot be combined, and every instance reports the same store.
    pub fn changelog_position(&self) -> i64 {
        self.stores.first().map_or(0, |s| s.changelog_end)
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::*;

    #[test]
    fn lifecycle_allows_only_drawn_moves() {
        for (from, to) in [
            (Created, Restoring),
            (Created, Standby),
            (Restoring, Running),
            (Restoring, Standby),
            (Standby, Restoring),
            (Running, Suspended),
            (Suspended, Restoring),
            (Suspended, Standby),
            (Running, Closed),
            (Standby, Closed),
        ] {
            assert!(from.can_move_to(to), "{from:?} -> {to:?}");
        }
        for (from, to) in [
            (Created, Running),
            (Standby, Running),
            (Suspended, Running),
            (Running, Restoring),
            (Running, Standby),
            (Closed, Closed),
            (Closed, Running),
        ] {
            assert!(!from.can_move_to(to), "{from:?} -> {to:?}");
        }
    }
}
