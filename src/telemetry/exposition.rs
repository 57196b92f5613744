//! `GET /metrics`: the Prometheus text format, encoded by `prometheus-client`.
//!
//! Each layer that has something to show implements [`Collector`] over its own state (this
//! module: the engine's [`Metrics`]; the engine's status, the cluster's view of the group
//! elsewhere); the query layer registers them all and calls [`encode`] at each scrape. Values are
//! read when scraped: nothing on the hot path knows about Prometheus. Names follow Prometheus'
//! conventions (the encoder adds `_total` to counters); docs/metrics.md lists every family.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::metrics::{Metrics, TallyFamily, TaskMetrics};

/// The Prometheus text exposition (format 0.0.4) of every collector in `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; a collector's own error leaves a partial page.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "metrics encoding failed part-way");
    }
    out
}

/// One counter family, one sample per label set (the encoder appends `_total` to `name`).
pub fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge family, one sample per label set.
pub fn gauges<L: EncodeLabelSet, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// No labels.
pub const NONE: [(&str, &str); 0] = [];

/// The engine's counters as Prometheus families.
#[derive(Debug)]
pub struct MetricsCollector(pub Arc<Metrics>);

impl MetricsCollector {
    fn per_task(
        enc: &mut DescriptorEncoder,
        tasks: &BTreeMap<i32, Arc<TaskMetrics>>,
        name: &str,
        help: &str,
        field: fn(&TaskMetrics) -> &AtomicU64,
    ) -> std::fmt::Result {
        let series = tasks.iter().map(|(p, t)| {
            (
                [("partition", p.to_string())],
                field(t).load(Ordering::Relaxed),
            )
        });
        counters(enc, name, help, series)
    }

    /// A tally family summed over the tasks, by label.
    fn tally_sum(
        tasks: &BTreeMap<i32, Arc<TaskMetrics>>,
        family: TallyFamily,
    ) -> BTreeMap<String, u64> {
        let mut sum = BTreeMap::new();
        for t in tasks.values() {
            for (label, n) in t.tallies(family) {
                *sum.entry(label).or_insert(0) += n;
            }
        }
        sum
    }

    fn records(
        enc: &mut DescriptorEncoder,
        tasks: &BTreeMap<i32, Arc<TaskMetrics>>,
    ) -> std::fmt::Result {
        Self::per_task(
            enc,
            tasks,
            "paystream_records_processed",
            "Source records processed by the partition's task (dead-lettered ones included).",
            |t| &t.records_processed,
        )?;
        Self::per_task(
            enc,
            tasks,
            "paystream_records_restored",
            "Changelog records applied to the partition's stores (restores and standby updates).",
            |t| &t.records_restored,
        )?;
        Self::per_task(
            enc,
            tasks,
            "paystream_records_late",
            "Records a windowed processor dropped because they came beyond its grace period.",
            |t| &t.records_late,
        )?;
        let dead = tasks.iter().flat_map(|(p, t)| {
            t.tallies(TallyFamily::DeadLettered)
                .into_iter()
                .map(move |(reason, n)| ([("partition", p.to_string()), ("reason", reason)], n))
        });
        counters(
            enc,
            "paystream_records_dead_lettered",
            "Records sent to the dead-letter topic, by reason (the paystream.dlq.reason header).",
            dead,
        )
    }

    fn outputs(
        enc: &mut DescriptorEncoder,
        tasks: &BTreeMap<i32, Arc<TaskMetrics>>,
    ) -> std::fmt::Result {
        let sent = Self::tally_sum(tasks, TallyFamily::SmsSent)
            .values()
            .sum::<u64>();
        counters(
            enc,
            "paystream_sms_sent",
            "SMS requests written to the SMS topic.",
            [(NONE, sent)],
        )?;
        let suppressed = Self::tally_sum(tasks, TallyFamily::SmsSuppressed)
            .into_iter()
            .map(|(reason, n)| ([("reason", reason)], n));
        counters(
            enc,
            "paystream_sms_suppressed",
            "SMS requests written to the suppressed topic instead of sent, by reason.",
            suppressed,
        )?;
        let alerts = Self::tally_sum(tasks, TallyFamily::ApprovalAlerts)
            .into_iter()
            .map(|(status, n)| ([("status", status)], n));
        counters(
            enc,
            "paystream_approval_alerts",
            "Approval-timeout alerts written, by status: timeout (raised) or resolved.",
            alerts,
        )
    }

    fn commits(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let m = &self.0;
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        for (name, help, v) in [
            ("paystream_commits", "Commits that succeeded (a committed transaction under exactly_once_v2).", &m.commits),
            ("paystream_commits_aborted", "Commits that failed and were rolled back (aborted transactions).", &m.commits_aborted),
            ("paystream_commits_fenced", "Commits refused because this instance was no longer a member of the generation (a newer owner fenced it).", &m.commits_fenced),
            ("paystream_commits_unknown_outcome", "Commits whose outcome was unknown; the actives caught up from their changelogs before processing again.", &m.commits_unknown),
            ("paystream_transactional_calls_hung", "Transactional calls that never returned; each replaced the producer.", &m.transactional_calls_hung),
            ("paystream_self_fenced", "Times this instance stopped processing after losing contact with the group.", &m.self_fenced),
            ("paystream_queries_refused_overloaded", "Requests refused (503 overloaded) because every --max-concurrent-queries permit was taken.", &m.queries_refused_overloaded),
        ] {
            counters(enc, name, help, [(NONE, g(v))])?;
        }
        let family = enc.encode_descriptor(
            "paystream_commit_duration_seconds",
            "How long commits took: under exactly_once_v2 until the transaction committed; under at_least_once the flush and the offset commit.",
            None,
            MetricType::Histogram,
        )?;
        m.commit_duration.encode(family)?;
        let family = enc.encode_descriptor(
            "paystream_query_duration_seconds",
            "Query latency by outcome (ok, not_found, bad_request, unavailable, error) and by the copy that answered (active, standby, forwarded, none).",
            None,
            MetricType::Histogram,
        )?;
        m.queries().encode(family)
    }
}

impl Collector for MetricsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let tasks = self.0.tasks();
        Self::records(&mut enc, &tasks)?;
        Self::outputs(&mut enc, &tasks)?;
        self.commits(&mut enc)?;
        let mem = paystream_state::rocks_memory::memory_usage();
        gauges(
            &mut enc,
            "paystream_state_memory_limit_bytes",
            "Bound of all RocksDB memory (--state-memory-mb).",
            [(NONE, mem.limit_bytes)],
        )?;
        gauges(
            &mut enc,
            "paystream_state_memory_bytes",
            "RocksDB memory in use: everything charged to the shared cache (blocks and memtables), and of it the memtables.",
            [
                ([("kind", "cache")], mem.cache_bytes),
                ([("kind", "memtables")], mem.memtable_bytes),
            ],
        )
    }
}
