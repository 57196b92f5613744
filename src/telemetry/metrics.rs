//! The instance's counters, shared between the stream thread (writes) and HTTP (reads).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Per-partition (task) counters.
#[derive(Debug, Default)]
pub struct TaskMetrics {
    /// Source records processed by the task (including dead-lettered ones).
    pub records_processed: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub records_dead_lettered: AtomicU64,
    /// Of those, records on a partition their key does not hash to (a producer that does not
    /// partition with murmur2): `wrong_partition`.
    pub records_wrong_partition: AtomicU64,
    /// Records restored from the changelog into the task's store.
    pub records_restored: AtomicU64,
    /// Records a windowed processor dropped because they arrived beyond its grace period.
    pub records_late: AtomicU64,
    /// Source records behind the log end (from librdkafka statistics; -1 = unknown).
    pub lag: AtomicI64,
}

/// Count, sum and maximum of a duration (cheap enough for every commit).
#[derive(Debug, Default)]
pub struct Latency {
    pub count: AtomicU64,
    pub total_micros: AtomicU64,
    pub max_micros: AtomicU64,
}

impl Latency {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_micros.fetch_add(us, Ordering::Relaxed);
        self.max_micros.fetch_max(us, Ordering::Relaxed);
    }
}

/// Instance-wide counters. Cheap to update (relaxed atomics) on the hot path.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Successful commits (a committed transaction, or under at-least-once the records
    /// acknowledged and the source offsets committed).
    pub commits: AtomicU64,
    /// How long commits took.
    pub commit_latency: Latency,
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
    /// HTTP queries answered, by outcome.
    pub queries_ok: AtomicU64,
    pub queries_not_found: AtomicU64,
    pub queries_failed: AtomicU64,
    tasks: RwLock<BTreeMap<i32, Arc<TaskMetrics>>>,
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

    /// Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        for (name, v) in [
            ("paystream_commits_total", &self.commits),
            ("paystream_commits_aborted_total", &self.commits_aborted),
            ("paystream_commits_fenced_total", &self.commits_fenced),
            (
                "paystream_commits_unknown_outcome_total",
                &self.commits_unknown,
            ),
            (
                "paystream_transactional_calls_hung_total",
                &self.transactional_calls_hung,
            ),
            ("paystream_self_fenced_total", &self.self_fenced),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", g(v));
        }
        let l = &self.commit_latency;
        let _ = writeln!(out, "# TYPE paystream_commit_seconds summary");
        let _ = writeln!(out, "paystream_commit_seconds_count {}", g(&l.count));
        let _ = writeln!(
            out,
            "paystream_commit_seconds_sum {}",
            g(&l.total_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "# TYPE paystream_commit_seconds_max gauge");
        let _ = writeln!(
            out,
            "paystream_commit_seconds_max {}",
            g(&l.max_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "# TYPE paystream_queries_total counter");
        for (outcome, v) in [
            ("ok", &self.queries_ok),
            ("not_found", &self.queries_not_found),
            ("failed", &self.queries_failed),
        ] {
            let _ = writeln!(
                out,
                "paystream_queries_total{{outcome=\"{outcome}\"}} {}",
                g(v)
            );
        }
        let mem = paystream_state::rocks_memory::memory_usage();
        let _ = writeln!(
            out,
            "# HELP paystream_state_memory_limit_bytes Bound of all RocksDB memory (--state-memory-mb)."
        );
        let _ = writeln!(out, "# TYPE paystream_state_memory_limit_bytes gauge");
        let _ = writeln!(
            out,
            "paystream_state_memory_limit_bytes {}",
            mem.limit_bytes
        );
        let _ = writeln!(
            out,
            "# HELP paystream_state_memory_bytes RocksDB memory in use: everything charged to the shared cache (blocks and memtables), and of it the memtables."
        );
        let _ = writeln!(out, "# TYPE paystream_state_memory_bytes gauge");
        for (kind, v) in [
            ("cache", mem.cache_bytes),
            ("memtables", mem.memtable_bytes),
        ] {
            let _ = writeln!(out, "paystream_state_memory_bytes{{kind=\"{kind}\"}} {v}");
        }
        let tasks = match self.tasks.read() {
            Ok(t) => t.clone(),
            Err(_) => BTreeMap::new(),
        };
        for (name, help) in [
            ("paystream_records_processed_total", "counter"),
            ("paystream_records_dead_lettered_total", "counter"),
            ("paystream_records_wrong_partition_total", "counter"),
            ("paystream_records_restored_total", "counter"),
            ("paystream_records_late_total", "counter"),
            ("paystream_partition_lag", "gauge"),
        ] {
            let _ = writeln!(out, "# TYPE {name} {help}");
            for (p, m) in &tasks {
                let v = match name {
                    "paystream_records_processed_total" => g(&m.records_processed) as i64,
                    "paystream_records_dead_lettered_total" => g(&m.records_dead_lettered) as i64,
                    "paystream_records_wrong_partition_total" => {
                        g(&m.records_wrong_partition) as i64
                    }
                    "paystream_records_restored_total" => g(&m.records_restored) as i64,
                    "paystream_records_late_total" => g(&m.records_late) as i64,
                    _ => m.lag.load(Ordering::Relaxed),
                };
                let _ = writeln!(out, "{name}{{partition=\"{p}\"}} {v}");
            }
        }
        out
    }
}
