//! Where a partition can be read: the partition map of the group's latest assignment (every
//! partition's active endpoint and standby endpoints), which the query layer routes by.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::coordination::assignor::PartitionOwners;

/// This instance's own partitions in an assignment: (active, standby).
type OwnPartitions = (Vec<i32>, Vec<i32>);

/// The partition map of the current generation, and how often it changed.
#[derive(Default, Debug)]
pub struct RoutingTable {
    inner: RwLock<(i32, BTreeMap<i32, PartitionOwners>)>,
    /// Assignments received (generations joined, or standalone's one).
    updates: AtomicU64,
    /// This instance's partitions in the latest assignment.
    own: Mutex<Option<OwnPartitions>>,
    /// Assignments that changed this instance's own partitions.
    own_changes: AtomicU64,
}

impl RoutingTable {
    pub fn update(&self, generation: i32, map: BTreeMap<i32, PartitionOwners>) {
        match self.inner.write() {
            Ok(mut g) => *g = (generation, map),
            Err(p) => *p.into_inner() = (generation, map),
        }
        self.updates.fetch_add(1, Ordering::Relaxed);
    }

    /// Note this instance's own partitions in the assignment just received; counted as an
    /// assignment change when they differ from the previous assignment's.
    pub fn own_partitions(&self, active: &[i32], standby: &[i32]) {
        let mut own = match self.own.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        let new = (sorted(active), sorted(standby));
        if own.as_ref() != Some(&new) {
            self.own_changes.fetch_add(1, Ordering::Relaxed);
            *own = Some(new);
        }
    }

    /// (assignments received, assignments that changed this instance's partitions).
    pub fn changes(&self) -> (u64, u64) {
        (
            self.updates.load(Ordering::Relaxed),
            self.own_changes.load(Ordering::Relaxed),
        )
    }

    /// The generation and every partition's owners.
    pub fn snapshot(&self) -> (i32, BTreeMap<i32, PartitionOwners>) {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Owners of `partition` in the latest generation.
    pub fn owners(&self, partition: i32) -> Option<PartitionOwners> {
        match self.inner.read() {
            Ok(g) => g.1.get(&partition).cloned(),
            Err(p) => p.into_inner().1.get(&partition).cloned(),
        }
    }

    pub fn generation(&self) -> i32 {
        match self.inner.read() {
            Ok(g) => g.0,
            Err(p) => p.into_inner().0,
        }
    }
}

fn sorted(p: &[i32]) -> Vec<i32> {
    let mut v = p.to_vec();
    v.sort_unstable();
    v
}
