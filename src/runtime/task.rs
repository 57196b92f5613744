//! A task: one partition's share of the topology, with its own stores.
//!
//! ```text
//!   Created ──restore──▶ Restoring ──caught up──▶ Running ──suspend──▶ Suspended ──close──▶ Closed
//!      │                    ▲                        ▲                     │
//!      │                    └──── catch up (promote) ─┼─────────────────────┤
//!      │                                             └──────resume─────────┘
//!      └────────────────────┴──────────────────────── close ──────────────────────────▶ Closed
//! ```
//! `Created`: stores opened, nothing read yet. `Restoring`: applying the changelog from the
//! local checkpoint (or from the beginning) to its end. `Running`: an active processes source
//! records; a standby applies changelog records as they arrive. `Suspended`: flushed,
//! checkpointed and committed, keeping its stores (a revoked active, or a standby about to be
//! promoted: `Suspended → Restoring` catches up the changelog's tail before it runs as active).
//! `Closed`: stores closed. [`Task::transition`] refuses any other move.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use paystream_state::store::{KeyValueStore, StoreError};
use paystream_state::window::WindowStore;
use paystream_topology::processor::{ProcessError, Record, RecordMeta, TaskIo};
use paystream_topology::{partition_for_key, TaskProcessors, Topology};
use thiserror::Error;

use crate::kafka::producer::{dead_letter_headers, KafkaChangelogWriter, OutputProducer};
use crate::runtime::local::{LocalPartition, Role};
pub use crate::runtime::store::{StoreHandle, StoreReader, TaskStore};
use crate::telemetry::TaskMetrics;

/// Lifecycle of a task; see the module diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Restoring,
    Running,
    Suspended,
    Closed,
}

impl TaskState {
    fn can_move_to(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Created, Restoring)
                | (Restoring, Running)
                | (Running, Suspended)
                | (Suspended, Running)
                | (Suspended, Restoring)
                | (_, Closed)
        ) && self != Closed
    }
}

/// Task failures. All of them stop the instance without committing: a restart reprocesses from
/// the last commit, so nothing is lost.
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

/// Checkpoint once this many changelog records were written since the last one (Kafka Streams
/// uses the same threshold): each checkpoint flushes RocksDB memtables, so doing it on every
/// commit would make many tiny files; restore replays at most this much extra.
pub const CHECKPOINT_DELTA: u64 = 10_000;

/// One partition's processing unit.
pub struct Task {
    pub partition: i32,
    /// Active (processes the source) or standby (replays the changelog).
    pub role: Role,
    state: TaskState,
    pub stores: Vec<TaskStore>,
    processors: TaskProcessors,
    /// Next source offset to process (what a commit records), once something was processed.
    pub next_offset: Option<i64>,
    pub committed_offset: Option<i64>,
    pub metrics: Arc<TaskMetrics>,
    /// Where the record being processed came from (reused across records).
    meta: RecordMeta,
    /// Late records already added to the metrics.
    late_seen: u64,
}

/// Where the task writes what its topology emits.
pub struct TaskOutputs<'a> {
    pub producer: &'a OutputProducer,
    pub dlq_topic: &'a str,
    pub dlq_partitions: i32,
    /// Partition count of each sink topic (keyed records are routed with murmur2).
    pub sink_partitions: &'a HashMap<String, i32>,
}

/// Directory of one store of one partition: `<state-dir>/<app-id>/<partition>/<store>`.
pub fn store_dir(state_dir: &Path, application_id: &str, partition: i32, store: &str) -> PathBuf {
    state_dir
        .join(application_id)
        .join(partition.to_string())
        .join(store)
}

impl Task {
    /// Open (or create) the task's stores. A store that cannot be opened (corrupt files) is wiped
    /// and will be restored from the changelog in full.
    pub fn open(
        partition: i32,
        topology: &Topology,
        state_dir: &Path,
        application_id: &str,
        producer: &Arc<OutputProducer>,
        metrics: Arc<TaskMetrics>,
    ) -> Result<Self, TaskError> {
        let mut stores = Vec::new();
        for spec in topology.stores() {
            let dir = store_dir(state_dir, application_id, partition, &spec.name);
            let topic: Arc<str> = spec.changelog_topic(application_id).into();
            let writer = KafkaChangelogWriter::new(producer.clone(), topic.clone(), partition);
            let store = TaskStore::open(spec, dir, topic, writer)
                .map_err(|source| TaskError::Store { partition, source })?;
            stores.push(store);
        }
        Ok(Self {
            partition,
            role: Role::Active,
            state: TaskState::Created,
            stores,
            processors: topology.instantiate(),
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

    /// Move to `next`, refusing moves the lifecycle does not allow.
    pub fn transition(&mut self, next: TaskState) -> Result<(), TaskError> {
        if !self.state.can_move_to(next) {
            return Err(TaskError::IllegalTransition {
                partition: self.partition,
                from: self.state,
                to: next,
            });
        }
        tracing::debug!(partition = self.partition, from = ?self.state, to = ?next, "task transition");
        self.state = next;
        Ok(())
    }

    /// What queries may read of this task.
    pub fn local_partition(&self) -> LocalPartition {
        LocalPartition {
            role: self.role,
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
        debug_assert_eq!(self.state, TaskState::Running);
        let partition = self.partition;
        // One RecordMeta per task, reused: no allocation per record on the hot path.
        if self.meta.topic != topic {
            self.meta.topic = topic.to_owned();
        }
        self.meta.offset = offset;
        let meta = &self.meta;
        let mut io = Io {
            stores: &mut self.stores,
            outputs,
            meta,
            metrics: &self.metrics,
        };
        self.processors
            .process(&mut io, meta, record, wall_clock)
            .map_err(|source| TaskError::Process { partition, source })?;
        self.next_offset = Some(offset + 1);
        self.metrics
            .records_processed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let late = self.processors.late_records();
        if late != self.late_seen {
            self.metrics
                .records_late
                .fetch_add(late - self.late_seen, std::sync::atomic::Ordering::Relaxed);
            self.late_seen = late;
        }
        Ok(())
    }

    /// Fire the wall-clock punctuations due at `now` (epoch ms). Only for a running active that
    /// has processed a record (its processors are initialized then).
    pub fn punctuate_wall_clock(
        &mut self,
        now: i64,
        outputs: &TaskOutputs<'_>,
    ) -> Result<(), TaskError> {
        if self.role != Role::Active || self.state != TaskState::Running {
            return Ok(());
        }
        let partition = self.partition;
        self.meta.offset = -1;
        let mut io = Io {
            stores: &mut self.stores,
            outputs,
            meta: &self.meta,
            metrics: &self.metrics,
        };
        self.processors
            .punctuate_wall_clock(&mut io, &self.meta, now)
            .map_err(|source| TaskError::Process { partition, source })
    }

    /// Standby: apply one changelog (or ledger topic) record of store `store` (no re-logging:
    /// the changelog is where it came from).
    pub fn apply_changelog(
        &mut self,
        store: usize,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
        offset: i64,
    ) -> Result<(), TaskError> {
        let partition = self.partition;
        let Some(s) = self.stores.get_mut(store) else {
            return Ok(());
        };
        if let Some((k, v)) = s.map_record(key, value, timestamp) {
            s.apply_one(&k, v.as_deref())
                .map_err(|source| TaskError::Store { partition, source })?;
        }
        s.changelog_end = offset + 1;
        s.writes_since_checkpoint += 1;
        Ok(())
    }

    /// How caught up the local copy is, for the group's metadata: the changelog position of the
    /// first store with an internal changelog (the order view's, which every event writes).
    /// Offsets of different topics cannot be combined, and every instance reports the same
    /// store, so the leader compares like with like.
    pub fn changelog_position(&self) -> i64 {
        self.stores
            .iter()
            .find(|s| !s.is_ledger())
            .or(self.stores.first())
            .map_or(0, |s| s.changelog_end)
    }

    /// After the producer has been flushed: record how far the changelog is acknowledged, and
    /// write a checkpoint if enough changed (or `force`, on shutdown and revoke).
    pub fn checkpoint(&mut self, producer: &OutputProducer, force: bool) -> Result<(), TaskError> {
        let partition = self.partition;
        for s in &mut self.stores {
            let acked = producer.acked_offset(&s.changelog_topic, partition);
            if acked >= 0 {
                s.changelog_end = s.changelog_end.max(acked + 1);
            }
            if s.writes_since_checkpoint == 0 && !force {
                continue;
            }
            if s.writes_since_checkpoint >= CHECKPOINT_DELTA || force {
                s.checkpoint_now()
                    .map_err(|source| TaskError::Store { partition, source })?;
            }
        }
        Ok(())
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
        // Every access may write; counting accesses over-estimates writes, which only makes
        // checkpoints a little more frequent.
        s.writes_since_checkpoint += 1;
        match &mut s.store {
            StoreHandle::KeyValue(kv) => Some(kv),
            StoreHandle::Window(_) => None,
        }
    }

    fn window_store(&mut self, name: &str) -> Option<&mut dyn WindowStore> {
        let s = self.stores.iter_mut().find(|s| s.name == name)?;
        s.writes_since_checkpoint += 1;
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
        self.outputs
            .producer
            .send(
                topic,
                partition,
                record.key.as_deref(),
                record.value.as_deref(),
                None,
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
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        assert!(Created.can_move_to(Restoring));
        assert!(Restoring.can_move_to(Running));
        assert!(Running.can_move_to(Suspended));
        assert!(Suspended.can_move_to(Running));
        assert!(Running.can_move_to(Closed));
        assert!(!Created.can_move_to(Running));
        assert!(!Running.can_move_to(Restoring));
        assert!(!Closed.can_move_to(Closed));
        assert!(!Closed.can_move_to(Running));
    }
}
