//! The registry of this instance's queryable stores, shared by the stream thread (which adds and
//! removes partitions as tasks start and stop) and the query layer (which reads them).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::store::StoreReader;
use crate::telemetry::TaskMetrics;

/// Whether a local copy is the partition's active (a running task: processing the source, its
/// store is what the partition has committed) or a standby (following the changelog, or an
/// active that is restoring or suspended: possibly behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Standby,
}

/// One queryable partition on this instance.
#[derive(Clone)]
pub struct LocalPartition {
    pub role: Role,
    /// Read handles of the partition's stores, by store name.
    pub readers: HashMap<String, StoreReader>,
    pub metrics: Arc<TaskMetrics>,
}

/// Partition → local copy. Reads are frequent (every query), writes rare (task start/stop).
#[derive(Default)]
pub struct LocalStores {
    partitions: RwLock<HashMap<i32, LocalPartition>>,
}

impl LocalStores {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn insert(&self, partition: i32, local: LocalPartition) {
        match self.partitions.write() {
            Ok(mut p) => {
                p.insert(partition, local);
            }
            Err(poisoned) => {
                poisoned.into_inner().insert(partition, local);
            }
        }
    }

    pub fn remove(&self, partition: i32) {
        match self.partitions.write() {
            Ok(mut p) => {
                p.remove(&partition);
            }
            Err(poisoned) => {
                poisoned.into_inner().remove(&partition);
            }
        }
    }

    pub fn get(&self, partition: i32) -> Option<LocalPartition> {
        match self.partitions.read() {
            Ok(p) => p.get(&partition).cloned(),
            Err(poisoned) => poisoned.into_inner().get(&partition).cloned(),
        }
    }

    /// Every local copy, sorted by partition.
    pub fn snapshot(&self) -> Vec<(i32, LocalPartition)> {
        let mut v: Vec<(i32, LocalPartition)> = match self.partitions.read() {
            Ok(p) => p.iter().map(|(k, v)| (*k, v.clone())).collect(),
            Err(poisoned) => poisoned
                .into_inner()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        };
        v.sort_unstable_by_key(|(p, _)| *p);
        v
    }

    /// Partitions held locally, with their role, sorted.
    pub fn roles(&self) -> Vec<(i32, Role)> {
        let mut v: Vec<(i32, Role)> = match self.partitions.read() {
            Ok(p) => p.iter().map(|(k, v)| (*k, v.role)).collect(),
            Err(poisoned) => poisoned
                .into_inner()
                .iter()
                .map(|(k, v)| (*k, v.role))
                .collect(),
        };
        v.sort_unstable_by_key(|(p, _)| *p);
        v
    }
}
