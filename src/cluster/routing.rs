//! Where a partition can be read: the partition map of the group's latest assignment (every
//! partition's active endpoint and standby endpoints), which the query layer routes by.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::coordination::assignor::PartitionOwners;

/// The partition map of the current generation.
#[derive(Default)]
pub struct RoutingTable {
    inner: RwLock<(i32, BTreeMap<i32, PartitionOwners>)>,
}

impl RoutingTable {
    pub fn update(&self, generation: i32, map: BTreeMap<i32, PartitionOwners>) {
        match self.inner.write() {
            Ok(mut g) => *g = (generation, map),
            Err(p) => *p.into_inner() = (generation, map),
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
