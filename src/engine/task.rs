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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use paystream_state::store::{KeyValueStore, StoreError};
use paystream_state::window::WindowStore;
use paystream_topology::processor::{ProcessError, Record, RecordMeta, TaskIo};
use paystream_topology::{partition_for_key, TaskProcessors, Topology};
use rdkafka::message::{Header, OwnedHeaders};
use thiserror::Error;

use super::local::{LocalPartition, Role};
use super::store::{StoreHandle, TaskStore};
use crate::kafka::producer::{dead_letter_headers, OutputProducer, APPLICATION_HEADER};
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

/// Task failures: a store or a processor failed. They stop the instance without committing
/// (a restart reprocesses from the last commit, so nothing is lost).
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
    #[error("task {partition}: illegal transition {from:?} -> {to:?}")]
    IllegalTransition {
        partition: i32,
        from: TaskState,
        to: TaskState,
    },
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
    /// Written into a header of every sink record ([`APPLICATION_HEADER`]).
    pub application_id: &'a str,
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
    pub fn process(
        &mut self,
        topic: &str,
        offset: i64,
        record: Record,
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
        let mut io = Io {
            stores: &mut self.stores,
            outputs,
            meta: &self.meta,
            metrics: &self.metrics,
        };
        processors
            .process(&mut io, &self.meta, record, wall_clock)
            .map_err(|source| TaskError::Process { partition, source })?;
        self.next_offset = Some(offset + 1);
        self.metrics
            .records_processed
            .fetch_add(1, Ordering::Relaxed);
        let late = processors.late_records();
        if late != self.late_seen {
            self.metrics
                .records_late
                .fetch_add(late.saturating_sub(self.late_seen), Ordering::Relaxed);
            self.late_seen = late;
        }
        Ok(())
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
    pub fn post_commit(&mut self, producer: &OutputProducer) -> Result<(), TaskError> {
        let partition = self.partition;
        for s in &mut self.stores {
            s.commit(producer, partition)
                .and_then(|()| s.maybe_checkpoint(false))
                .map_err(|source| TaskError::Store { partition, source })?;
        }
        Ok(())
    }

    /// The source offset of the last processed record is committed too.
    pub fn mark_committed(&mut self) {
        if let Some(n) = self.next_offset {
            self.committed_offset = Some(n);
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

/// [`TaskIo`] for a running task: its stores, the producer for sinks and dead letters.
struct Io<'a, 'o> {
    stores: &'a mut [TaskStore],
    outputs: &'a TaskOutputs<'o>,
    meta: &'a RecordMeta,
    metrics: &'a TaskMetrics,
}

impl TaskIo for Io<'_, '_> {
    fn store(&mut self, name: &str) -> Option<&mut dyn KeyValueStore> {
        let s = self.stores.iter_mut().find(|s| s.name == name)?;
        match &mut s.store {
            StoreHandle::KeyValue(kv) => Some(kv),
            StoreHandle::Window(_) => None,
        }
    }

    fn window_store(&mut self, name: &str) -> Option<&mut dyn WindowStore> {
        let s = self.stores.iter_mut().find(|s| s.name == name)?;
        match &mut s.store {
            StoreHandle::Window(w) => Some(w),
            StoreHandle::KeyValue(_) => None,
        }
    }

    fn send(&mut self, topic: &str, record: Record) -> Result<(), ProcessError> {
        let n = self
            .outputs
            .sink_partitions
            .get(topic)
            .copied()
            .ok_or_else(|| {
                ProcessError::Other(format!("sink topic {topic} has no known partition count"))
            })?;
        let partition = match &record.key {
            Some(k) if !k.is_empty() => partition_for_key(k, n),
            _ => self.meta.partition % n,
        };
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: APPLICATION_HEADER,
            value: Some(self.outputs.application_id),
        });
        self.outputs
            .producer
            .send(
                topic,
                partition,
                record.key.as_deref(),
                record.value.as_deref(),
                Some(headers),
                Some(record.timestamp),
            )
            .map_err(|e| ProcessError::Other(e.to_string()))
    }

    fn dead_letter(
        &mut self,
        record: Record,
        reason: &str,
        detail: &str,
    ) -> Result<(), ProcessError> {
        let headers = dead_letter_headers(
            reason,
            detail,
            &self.meta.topic,
            self.meta.partition,
            self.meta.offset,
        );
        let partition = self.meta.partition % self.outputs.dlq_partitions.max(1);
        self.metrics
            .records_dead_lettered
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            partition = self.meta.partition,
            offset = self.meta.offset,
            reason,
            detail,
            "dead-lettered record"
        );
        self.outputs
            .producer
            .send(
                self.outputs.dlq_topic,
                partition,
                record.key.as_deref(),
                record.value.as_deref(),
                Some(headers),
                Some(record.timestamp),
            )
            .map_err(|e| ProcessError::Other(e.to_string()))
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
