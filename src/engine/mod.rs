//! The processing engine of one instance, shaped like Kafka Streams' own: tasks, a task manager,
//! a state updater, the commit protocol and a stream thread that only polls, processes and
//! commits.
//!
//! Entry point: [`stream_thread::StreamThread::run`], fed [`EngineCommand`]s by the cluster layer
//! (the group loop or standalone mode). Everything here is plain OS threads: librdkafka polls and
//! RocksDB writes block, so none of it runs on the async runtime.
//!
//! ```text
//!  cluster ──EngineCommand──▶ stream thread ─────────────▶ task_manager::TaskManager
//!  (Assign / Revoke)           poll source → Task::process      │ create / recycle / close
//!                              commit (commit.rs): one Kafka     │ UpdaterCommand
//!                              transaction per interval          ▼
//!                                        ◀── Restored(task) ── state_updater (own thread):
//!                                                               restore actives, follow standbys
//! ```
//!
//! # Layout
//! - [`task`]: [`task::Task`], one partition's processors and stores, and its lifecycle.
//! - [`store`]: [`store::TaskStore`], one store of a task: `transactional(rocksdb)` plus its
//!   changelog position and checkpoint.
//! - [`task_manager`]: `handle_assignment` — which task goes where (stream thread or updater).
//! - [`state_updater`]: the thread that restores actives and keeps standbys up to date.
//! - [`commit`]: one commit under `exactly_once_v2` (a Kafka transaction) or `at_least_once`.
//! - [`stream_thread`]: the loop.
//! - [`source`]: the running tasks' input partitions, each started at its committed offset.
//! - [`local`]: [`local::LocalStores`], the read handles the query layer uses.
//! - [`status`]: what `/health` shows: the instance's status, each task's state and restore
//!   progress, changelog partitions that cannot be read.
//!
//! Nothing here imports the query or cluster layers; they read from (and drive) the engine.

mod changelog_reader;
pub mod commit;
pub mod fault;
pub mod local;
pub mod source;
pub mod state_updater;
pub mod status;
pub mod store;
pub mod stream_thread;
pub mod task;
mod task_io;
pub mod task_manager;
mod trace;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

pub use local::{LocalPartition, LocalStores, Role};
pub use status::{SharedStatus, Status};

/// What the cluster layer tells the stream thread.
pub enum EngineCommand {
    /// A new generation: run these actives, keep these standbys (warm-ups included). The
    /// generation and member id go with every transactional offset commit, so the group
    /// coordinator can fence this instance once it is no longer a member of that generation.
    Assign {
        generation: i32,
        member_id: String,
        active: Vec<i32>,
        standby: Vec<i32>,
    },
    /// A rebalance is starting: commit and suspend every active, then acknowledge.
    Revoke { done: oneshot::Sender<()> },
}

/// Why an offset commit through the group (at-least-once) was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitRefused {
    /// This instance is no longer a member of the current generation (zombie).
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("{0}")]
    Failed(String),
}

/// Commits source offsets through the group membership (at-least-once only; under
/// exactly-once the offsets travel in the transaction). Blocking: called from the stream thread.
pub trait OffsetCommitter: Send {
    fn commit(&self, offsets: Vec<(i32, i64)>) -> Result<(), CommitRefused>;
}

/// When this instance last heard from the group coordinator, for self-fencing: an instance
/// whose last successful heartbeat is older than the session timeout has probably been expelled
/// (a GC pause, SIGSTOP, a network cut), so it stops processing until it has rejoined.
#[derive(Debug)]
pub struct Liveness {
    /// Epoch ms of the last successful heartbeat or join; `i64::MAX` = never stale (standalone).
    last_ok_ms: AtomicI64,
    session_timeout_ms: i64,
    /// The generation those confirmations are for.
    generation: AtomicI32,
}

impl Liveness {
    /// For a group member with this session timeout.
    pub fn group(session_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            last_ok_ms: AtomicI64::new(now_ms()),
            session_timeout_ms: i64::try_from(session_timeout.as_millis()).unwrap_or(i64::MAX),
            generation: AtomicI32::new(-1),
        })
    }

    /// For an instance outside any group: never stale.
    pub fn always() -> Arc<Self> {
        Arc::new(Self {
            last_ok_ms: AtomicI64::new(i64::MAX),
            session_timeout_ms: i64::MAX,
            generation: AtomicI32::new(-1),
        })
    }

    /// This member joined `generation` (call before handing its assignment to the engine).
    pub fn joined(&self, generation: i32) {
        self.generation.store(generation, Ordering::Release);
        self.confirmed();
    }

    /// The coordinator just confirmed this member in its current generation (a heartbeat).
    pub fn confirmed(&self) {
        if self.last_ok_ms.load(Ordering::Relaxed) != i64::MAX {
            self.last_ok_ms.store(now_ms(), Ordering::Release);
        }
    }

    /// The generation the last confirmation was for (-1 before the first join, or standalone).
    pub fn generation(&self) -> i32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the last confirmation is older than the session timeout.
    pub fn is_stale(&self) -> bool {
        let last = self.last_ok_ms.load(Ordering::Acquire);
        last != i64::MAX && now_ms().saturating_sub(last) > self.session_timeout_ms
    }
}

/// What this instance holds, for the group's next join: the leader places actives where their
/// state is (sticky) and moves them only to copies that are caught up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldTasks {
    pub active: Vec<i32>,
    pub standby: Vec<i32>,
    /// Partition → changelog position of its first store (how caught up the local copy is).
    pub positions: BTreeMap<i32, i64>,
}

/// [`HeldTasks`] shared between the engine (writes) and the group loop (reads at each join).
pub type SharedHeldTasks = Arc<Mutex<HeldTasks>>;

/// What waiting for the next command on a channel gave.
pub(crate) enum Next<T> {
    Command(T),
    /// Nothing (yet).
    Nothing,
    /// The sender is gone.
    Closed,
}

/// The next command on `rx`: waiting up to `wait`, or only what is there already (`None`).
pub(crate) fn next_command<T>(
    rx: &std::sync::mpsc::Receiver<T>,
    wait: Option<Duration>,
) -> Next<T> {
    use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
    match wait {
        Some(w) => match rx.recv_timeout(w) {
            Ok(c) => Next::Command(c),
            Err(RecvTimeoutError::Timeout) => Next::Nothing,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        },
        None => match rx.try_recv() {
            Ok(c) => Next::Command(c),
            Err(TryRecvError::Empty) => Next::Nothing,
            Err(TryRecvError::Disconnected) => Next::Closed,
        },
    }
}

/// Lock a mutex even if a thread panicked while holding it (the data is plain bookkeeping).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The wall clock in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_goes_stale_after_the_session_timeout_and_standalone_never_does() {
        let l = Liveness::group(Duration::from_millis(50));
        assert!(!l.is_stale());
        l.last_ok_ms.store(now_ms() - 51, Ordering::Release);
        assert!(l.is_stale());
        l.confirmed();
        assert!(!l.is_stale());
        let s = Liveness::always();
        s.confirmed();
        assert!(!s.is_stale());
    }
}
