//! The group as this instance sees it, as Prometheus families: every partition's lag with its
//! owner, the generation, the members, partitions without an active, rebalances.

use std::collections::BTreeSet;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::lag::GroupLag;
use super::routing::RoutingTable;
use crate::telemetry::exposition::{counters, gauges, NONE};

/// Owner label of a partition without an active.
pub const NO_OWNER: &str = "none";

#[derive(Debug)]
pub struct ClusterCollector {
    pub routing: Arc<RoutingTable>,
    pub lag: Arc<GroupLag>,
    /// Partitions of the input topic.
    pub partitions: i32,
}

impl Collector for ClusterCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let (generation, map) = self.routing.snapshot();
        let (rebalances, changes) = self.routing.changes();
        // Before its first assignment an instance knows no owner: it would report every
        // partition as without an active. It shows the lags and that count only once it knows.
        let assigned = rebalances > 0;
        let owner = |p: i32| {
            map.get(&p)
                .map(|o| o.active.clone())
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| NO_OWNER.to_owned())
        };
        let lags = self.lag.get();
        let lags = lags
            .into_iter()
            .filter(|_| assigned)
            .map(|(p, lag)| ([("partition", p.to_string()), ("owner", owner(p))], lag));
        gauges(
            &mut enc,
            "paystream_partition_lag_records",
            "Input records of the partition the group has not committed yet (log end minus committed offset, read from the broker every 5 s), with the instance that owns the partition's active copy.",
            lags,
        )?;
        gauges(
            &mut enc,
            "paystream_group_generation",
            "Generation of the latest assignment this instance joined.",
            [(NONE, i64::from(generation))],
        )?;
        let members: BTreeSet<&str> = map
            .values()
            .flat_map(|o| std::iter::once(&o.active).chain(&o.standbys))
            .map(String::as_str)
            .filter(|e| !e.is_empty())
            .collect();
        gauges(
            &mut enc,
            "paystream_group_members",
            "Instances holding an active or standby copy in the latest assignment.",
            [(NONE, members.len() as i64)],
        )?;
        let without = (0..self.partitions)
            .filter(|p| owner(*p) == NO_OWNER)
            .count();
        gauges(
            &mut enc,
            "paystream_partitions_without_active",
            "Input partitions without an active copy in the latest assignment (absent before the first).",
            [(NONE, without as i64)].into_iter().filter(|_| assigned),
        )?;
        counters(
            &mut enc,
            "paystream_rebalances",
            "Assignments (generations) this instance joined.",
            [(NONE, rebalances)],
        )?;
        counters(
            &mut enc,
            "paystream_assignment_changes",
            "Assignments that changed this instance's own active or standby partitions.",
            [(NONE, changes)],
        )
    }
}
