//! One commit of the stream thread's running tasks, under either processing guarantee.
//!
//! ```text
//!  prepare: every store's dirty keys → changelog records (one per key)
//!  exactly_once_v2:  send_offsets_to_transaction(offsets, generation) + commit_transaction
//!                    ─▶ post-commit: RocksDB batches, checkpoints, committed offsets
//!  at_least_once:    flush (every record acknowledged) ─▶ RocksDB batches, checkpoints
//!                    ─▶ source offsets committed through the group (generation-checked)
//! ```
//!
//! Under exactly-once the changelog records, the output and dead-letter records the tasks sent
//! since the last commit and the source offsets are one Kafka transaction: all of it becomes
//! visible to `read_committed` readers, or none. RocksDB is written only after the transaction
//! committed, so it never holds state that Kafka does not.
//!
//! On failure the caller aborts the tasks ([`super::task::Task::abort`]): they drop their
//! uncommitted writes and are fed again from their last committed offset.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::task::{Task, TaskError, TaskState};
use super::{CommitRefused, OffsetCommitter};
use crate::kafka::producer::{CommitError, OutputProducer};
use crate::kafka::transaction::GroupMetadata;
use crate::telemetry::Metrics;

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitFailure {
    /// Kafka refused it (fenced, aborted, or the producer failed); nothing of it is visible
    /// (exactly-once) and the tasks must go back to their last commit.
    #[error(transparent)]
    Kafka(#[from] CommitError),
    /// A task failed before the transaction was committed (a changelog send): nothing of the
    /// commit is visible; the tasks roll back and retry (see [`super::fault`]).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A store failed to apply a committed transaction locally: its RocksDB is now behind its
    /// changelog, and only a restart (which restores the tail) repairs it.
    #[error("after the commit: {0}")]
    Local(#[source] TaskError),
}

/// What a successful commit did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub changelog_records: usize,
    pub offsets: usize,
}

/// Commits for one stream thread.
pub struct Committer {
    pub source_topic: String,
    /// The group membership the offsets are committed as (updated with every assignment).
    pub group: GroupMetadata,
    /// At-least-once only: where source offsets are committed after the records are
    /// acknowledged. `None` under exactly-once (the offsets are part of the transaction).
    pub via_group: Option<Box<dyn OffsetCommitter>>,
    pub metrics: Arc<Metrics>,
}

impl Committer {
    /// Commit every running task of `tasks` through `producer`. `ending` is called once the
    /// transaction is about to commit (exactly-once only): from then until this returns, Kafka
    /// may show offsets whose records the local stores do not hold yet.
    pub fn commit(
        &mut self,
        producer: &OutputProducer,
        tasks: &mut BTreeMap<i32, Task>,
        ending: &dyn Fn(),
    ) -> Result<Committed, CommitFailure> {
        let started = Instant::now();
        let mut done = Committed::default();
        let mut offsets = Vec::new();
        for (p, t) in tasks.iter_mut() {
            if t.state() != TaskState::Running {
                continue;
            }
            done.changelog_records += t.prepare_commit(producer)?;
            if let Some(o) = t.offset_to_commit() {
                offsets.push((*p, o));
            }
        }
        done.offsets = offsets.len();
        let prepared = started.elapsed();
        let in_txn = if producer.is_transactional() {
            offsets.as_slice()
        } else {
            &[]
        };
        if let Err(e) = producer.commit(&self.source_topic, in_txn, &self.group, ending) {
            self.count_failure(&e);
            return Err(e.into());
        }
        let kafka = started.elapsed();
        crate::kafka::failpoint::slow_local_apply();
        for t in tasks.values_mut() {
            if t.state() == TaskState::Running {
                t.post_commit(producer).map_err(CommitFailure::Local)?;
            }
        }
        tracing::debug!(
            records = done.changelog_records,
            offsets = done.offsets,
            prepare_ms = prepared.as_millis() as u64,
            kafka_ms = (kafka - prepared).as_millis() as u64,
            local_ms = (started.elapsed() - kafka).as_millis() as u64,
            "committed"
        );
        if let Some(group) = &self.via_group {
            if !offsets.is_empty() {
                match group.commit(offsets) {
                    Ok(()) => {}
                    Err(CommitRefused::Fenced(why)) => {
                        let e = CommitError::Fenced(why);
                        self.count_failure(&e);
                        return Err(e.into());
                    }
                    // The records are acknowledged and in RocksDB: the next commit covers these
                    // offsets too, and a crash before it only means reprocessing.
                    Err(CommitRefused::Failed(why)) => {
                        tracing::warn!(why, "offset commit failed; the next commit retries it");
                        return Ok(done);
                    }
                }
            }
        }
        for t in tasks.values_mut() {
            if t.state() == TaskState::Running {
                t.mark_committed();
            }
        }
        self.metrics.commits.fetch_add(1, Ordering::Relaxed);
        self.metrics.commit_took(started.elapsed());
        Ok(done)
    }

    fn count_failure(&self, e: &CommitError) {
        let counter = match e {
            CommitError::Fenced(_) => &self.metrics.commits_fenced,
            CommitError::Aborted(_) | CommitError::Fatal(_) | CommitError::Hung(_) => {
                &self.metrics.commits_aborted
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
