//! The instance's counters, shared between the stream thread (writes) and HTTP (reads).
//!
//! Per-record counters are relaxed atomics (a few nanoseconds on the hot path); rarer events with
//! a free-form label (dead-letter reasons, SMS suppression reasons) take a short lock. Latencies
//! are `prometheus-client` histograms. [`super::exposition`] encodes all of it at each scrape.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use paystream_topology::processor::Tally;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Per-partition (task) counters.
#[derive(Debug, Default)]
pub struct TaskMetrics {
    /// Source records processed by the task (including dead-lettered ones).
    pub records_processed: AtomicU64,
    /// Records sent to the dead-letter topic (all reasons; by reason in `tallies`).
    pub records_dead_lettered: AtomicU64,
    /// Records restored from the changelog into the task's store.
    pub records_restored: AtomicU64,
    /// Records a windowed processor dropped because they arrived beyond its grace period.
    pub records_late: AtomicU64,
    /// Records behind, from librdkafka statistics (-1 = unknown): for an active the source
    /// records behind the log end, for a standby the changelog records not yet applied.
    pub lag: AtomicI64,
    /// Counts with a free-form label: family → label value → count (see [`TallyFamily`]).
    tallies: Mutex<BTreeMap<TallyFamily, BTreeMap<String, u64>>>,
}

/// The labelled counts a task keeps, each a metric family of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TallyFamily {
    /// Dead-lettered records by reason.
    DeadLettered,
    /// SMS requests written (label unused: `""`).
    SmsSent,
    /// SMS requests suppressed, by reason.
    SmsSuppressed,
    /// Approval alerts written, by status.
    ApprovalAlerts,
}

impl TaskMetrics {
    /// Count one record sent to the dead-letter topic with `reason`.
    pub fn dead_lettered(&self, reason: &str) {
        self.records_dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.add(TallyFamily::DeadLettered, reason);
    }

    /// Count something a processor reported.
    pub fn tally(&self, what: Tally<'_>) {
        match what {
            Tally::SmsSent => self.add(TallyFamily::SmsSent, ""),
            Tally::SmsSuppressed { reason } => self.add(TallyFamily::SmsSuppressed, reason),
            Tally::ApprovalAlert { status } => self.add(TallyFamily::ApprovalAlerts, status),
        }
    }

    fn add(&self, family: TallyFamily, label: &str) {
        let mut t = match self.tallies.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        let counts = t.entry(family).or_default();
        match counts.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                counts.insert(label.to_owned(), 1);
            }
        }
    }

    /// The counts of `family` by label.
    pub fn tallies(&self, family: TallyFamily) -> BTreeMap<String, u64> {
        let t = match self.tallies.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        t.get(&family).cloned().unwrap_or_default()
    }
}

/// Labels of a query's latency: (`outcome`, `role`).
pub type QueryLabels = [(&'static str, &'static str); 2];

type HistogramFamily = Family<QueryLabels, Histogram, fn() -> Histogram>;

/// Buckets for commit latency: 1 ms to ~16 s, doubling.
fn commit_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Buckets for query latency: 0.25 ms to ~8 s, doubling (long-polls end in the last ones).
fn query_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Instance-wide counters. Cheap to update (relaxed atomics) on the hot path.
#[derive(Debug)]
pub struct Metrics {
    /// Successful commits (a committed transaction, or under at-least-once the records
    /// acknowledged and the source offsets committed).
    pub commits: AtomicU64,
    /// How long commits took (successful or not).
    pub commit_duration: Histogram,
    /// Commits that failed and were rolled back (aborted transactions).
    pub commits_aborted: AtomicU64,
    /// Commits refused because this instance was no longer a member of the generation.
    pub commits_fenced: AtomicU64,
    /// Commits whose outcome was unknown (the producer failed once the transaction may have
    /// committed): the actives caught up from their changelogs before processing again.
    pub commits_unknown: AtomicU64,
    /// Transactional calls that never returned (librdkafka#5456): each wedged a producer,
    /// which was replaced (also counted in `commits_unknown`).
    pub transactional_calls_hung: AtomicU64,
    /// Times the instance stopped processing after losing contact with the group.
    pub self_fenced: AtomicU64,
    /// Query latency by outcome and by the copy that answered.
    queries: HistogramFamily,
    /// Queries recorded in `queries` (every outcome).
    queries_answered: AtomicU64,
    /// Requests refused because every `--max-concurrent-queries` permit was taken.
    pub queries_refused_overloaded: AtomicU64,
    tasks: RwLock<BTreeMap<i32, Arc<TaskMetrics>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            commits: AtomicU64::new(0),
            commit_duration: commit_buckets(),
            commits_aborted: AtomicU64::new(0),
            commits_fenced: AtomicU64::new(0),
            commits_unknown: AtomicU64::new(0),
            transactional_calls_hung: AtomicU64::new(0),
            self_fenced: AtomicU64::new(0),
            queries: Family::new_with_constructor(query_buckets),
            queries_answered: AtomicU64::new(0),
            queries_refused_overloaded: AtomicU64::new(0),
            tasks: RwLock::default(),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The counters of partition `p`, created on first use.
    pub fn task(&self, partition: i32) -> Arc<TaskMetrics> {
        if let Some(m) = self
            .tasks
            .read()
            .ok()
            .and_then(|t| t.get(&partition).cloned())
        {
            return m;
        }
        let mut tasks = match self.tasks.write() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        tasks.entry(partition).or_default().clone()
    }

    /// Every partition's counters, by partition.
    pub fn tasks(&self) -> BTreeMap<i32, Arc<TaskMetrics>> {
        match self.tasks.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Record one commit's duration.
    pub fn commit_took(&self, d: Duration) {
        self.commit_duration.observe(d.as_secs_f64());
    }

    /// Record one query: how it ended (`outcome`), which copy answered (`role`), how long it took.
    pub fn query_took(&self, outcome: &'static str, role: &'static str, d: Duration) {
        self.queries
            .get_or_create(&[("outcome", outcome), ("role", role)])
            .observe(d.as_secs_f64());
        self.queries_answered.fetch_add(1, Ordering::Relaxed);
    }

    /// Queries recorded so far (every outcome).
    pub fn queries_answered(&self) -> u64 {
        self.queries_answered.load(Ordering::Relaxed)
    }

    /// The query latency histograms (for the exposition).
    pub(super) fn queries(&self) -> &HistogramFamily {
        &self.queries
    }

    /// Sum of processed records over all tasks.
    pub fn total_processed(&self) -> u64 {
        self.sum(|t| t.records_processed.load(Ordering::Relaxed))
    }

    /// Sum of restored records over all tasks.
    pub fn total_restored(&self) -> u64 {
        self.sum(|t| t.records_restored.load(Ordering::Relaxed))
    }

    /// Sum of dead-lettered records over all tasks.
    pub fn total_dead_lettered(&self) -> u64 {
        self.sum(|t| t.records_dead_lettered.load(Ordering::Relaxed))
    }

    fn sum(&self, f: impl Fn(&TaskMetrics) -> u64) -> u64 {
        match self.tasks.read() {
            Ok(t) => t.values().map(|m| f(m)).sum(),
            Err(_) => 0,
        }
    }
}
