//! What the engine reports about itself, for `/health`: the instance's coarse status, and per
//! partition the state of its task, its restore progress and whether a changelog cannot be read.
//!
//! Written by the stream thread and the state updater, read by the query layer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use serde::Serialize;

use super::lock;

/// Coarse status of the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Status {
    Starting = 0,
    /// Some assigned actives are still being restored (the others already process).
    Restoring = 1,
    /// Every assigned active is running: the instance is `ready`.
    Running = 2,
    /// Not processing: its last heartbeat is older than the session timeout, or its last commit
    /// was fenced; it waits to rejoin the group.
    Fenced = 3,
    Stopping = 4,
    Failed = 5,
}

/// One partition as `/health` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskView {
    /// `restoring`, `standby`, `running`, `suspended`, or `opening` (its stores cannot be opened
    /// yet: see `error`; retried with backoff).
    pub state: &'static str,
    /// Changelog records restored so far by the current restore, and how many it needs in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<(u64, u64)>,
    /// Why a changelog of this partition cannot be read right now (retried with backoff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The instance status plus one [`TaskView`] per partition held.
#[derive(Debug, Default)]
pub struct SharedStatus {
    status: AtomicU8,
    tasks: Mutex<BTreeMap<i32, TaskView>>,
    /// Epoch ms at which the commit in flight started; 0 when none is.
    commit_started_ms: AtomicI64,
    /// The commit in flight asked Kafka to commit its transaction.
    commit_ending: AtomicBool,
    /// Commits ended so far (committed or rolled back).
    commits_ended: AtomicU64,
    /// Woken at the end of every commit.
    commit_end: Notify,
}

/// A commit that was in flight when [`SharedStatus::commit_in_flight`] looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightCommit {
    /// Epoch ms it started at.
    pub started_ms: i64,
    /// [`SharedStatus::commits_ended`] when it was seen running: it has ended once that count
    /// is higher.
    ended_before: u64,
}

impl SharedStatus {
    pub fn set(&self, s: Status) {
        self.status.store(s as u8, Ordering::Release);
    }

    pub fn get(&self) -> Status {
        match self.status.load(Ordering::Acquire) {
            0 => Status::Starting,
            1 => Status::Restoring,
            2 => Status::Running,
            3 => Status::Fenced,
            4 => Status::Stopping,
            _ => Status::Failed,
        }
    }

    /// Set `partition`'s state, keeping nothing of an earlier restore or error.
    pub fn task_state(&self, partition: i32, state: &'static str) {
        lock(&self.tasks).insert(
            partition,
            TaskView {
                state,
                ..TaskView::default()
            },
        );
    }

    /// Record restore progress of `partition`.
    pub fn restore_progress(&self, partition: i32, done: u64, total: u64) {
        if let Some(t) = lock(&self.tasks).get_mut(&partition) {
            t.restore = Some((done, total));
        }
    }

    /// Record (or clear, with `None`) why `partition`'s changelog cannot be read.
    pub fn task_error(&self, partition: i32, error: Option<String>) {
        if let Some(t) = lock(&self.tasks).get_mut(&partition) {
            t.error = error;
        }
    }

    /// `partition` is no longer held.
    pub fn task_gone(&self, partition: i32) {
        lock(&self.tasks).remove(&partition);
    }

    /// A commit started at `now_ms` (epoch ms).
    pub fn commit_started(&self, now_ms: i64) {
        self.commit_started_ms
            .store(now_ms.max(1), Ordering::Release);
    }

    /// The commit in flight is about to ask Kafka to commit its transaction: from now until it
    /// ends, Kafka may show offsets whose records the local stores do not hold yet.
    pub fn commit_ending(&self) {
        self.commit_ending.store(true, Ordering::Release);
    }

    /// The commit finished: committed, or rolled back and its tasks rewound or suspended.
    pub fn commit_ended(&self) {
        self.commit_ending.store(false, Ordering::Release);
        self.commit_started_ms.store(0, Ordering::Release);
        self.commits_ended.fetch_add(1, Ordering::AcqRel);
        self.commit_end.notify_waiters();
    }

    /// The commit running now, if it asked Kafka to commit its transaction. Under exactly-once
    /// the local stores are written only after the transaction committed, so from the moment
    /// Kafka may show its offsets until the commit ends the stores lag what the group
    /// committed: an answer that must hold every committed event waits for this commit to end
    /// ([`Self::wait_commit_end`]). Earlier in a commit (writing changelogs, flushing) nothing of
    /// it can be visible, and at-least-once writes the stores before it commits offsets: no
    /// wait.
    pub fn commit_in_flight(&self) -> Option<InFlightCommit> {
        // The count first: a commit that starts after it was read is waited for at most once.
        let ended_before = self.commits_ended.load(Ordering::Acquire);
        if !self.commit_ending.load(Ordering::Acquire) {
            return None;
        }
        match self.commit_started_ms.load(Ordering::Acquire) {
            0 => None,
            started_ms => Some(InFlightCommit {
                started_ms,
                ended_before,
            }),
        }
    }

    /// Wait until `commit` ended, or at most `limit`; whether it ended.
    pub async fn wait_commit_end(
        &self,
        commit: InFlightCommit,
        limit: std::time::Duration,
    ) -> bool {
        let ended = || self.commits_ended.load(Ordering::Acquire) > commit.ended_before;
        let wait = async {
            loop {
                let woken = self.commit_end.notified();
                if ended() {
                    return;
                }
                woken.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok() || ended()
    }

    /// How long the commit in flight has been running at `now_ms`; `None` when none is. A
    /// commit that takes long may have committed in Kafka already while the local stores do
    /// not hold it yet (its answer lost with a broker): the query layer stops calling the
    /// local copies "active" then.
    pub fn commit_running_for(&self, now_ms: i64) -> Option<i64> {
        match self.commit_started_ms.load(Ordering::Acquire) {
            0 => None,
            started => Some(now_ms.saturating_sub(started)),
        }
    }

    /// Every partition held, with its view.
    pub fn tasks(&self) -> BTreeMap<i32, TaskView> {
        lock(&self.tasks).clone()
    }
}

/// The tasks' states, lags and restore progress as Prometheus families (see docs/metrics.md).
#[derive(Debug)]
pub struct StatusCollector {
    pub status: Arc<SharedStatus>,
    pub metrics: Arc<crate::telemetry::Metrics>,
}

impl prometheus_client::collector::Collector for StatusCollector {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use crate::telemetry::exposition::gauges;
        let tasks = self.status.tasks();
        let states = tasks.iter().map(|(p, t)| {
            (
                [("partition", p.to_string()), ("state", t.state.to_owned())],
                1,
            )
        });
        gauges(
            &mut enc,
            "paystream_task_state",
            "1 for the state each task held here is in: restoring, standby, running, suspended or opening.",
            states,
        )?;
        let remaining = tasks.iter().filter_map(|(p, t)| {
            let (done, total) = t.restore?;
            Some(([("partition", p.to_string())], total.saturating_sub(done)))
        });
        gauges(
            &mut enc,
            "paystream_restore_remaining_records",
            "Changelog records the current restore of the partition still has to apply.",
            remaining,
        )?;
        let lags = tasks.iter().filter_map(|(p, t)| {
            let lag = self
                .metrics
                .task(*p)
                .lag
                .load(std::sync::atomic::Ordering::Relaxed);
            let role = if t.state == "standby" {
                "standby"
            } else {
                "active"
            };
            (lag >= 0).then(|| {
                (
                    [("partition", p.to_string()), ("role", role.to_owned())],
                    lag,
                )
            })
        });
        gauges(
            &mut enc,
            "paystream_task_lag_records",
            "Records behind as this instance's Kafka clients see them: role=active the input records up to the log end, role=standby the changelog records not yet applied.",
            lags,
        )
    }
}
