//! The group's input lag per partition, as the broker sees it: the log end offset of each input
//! partition minus the offset the group committed there, read every [`LAG_INTERVAL`].
//!
//! Every instance reads it for every partition, so a partition whose owner is paused, stuck or
//! gone still shows its lag growing (from the other instances) — the owner's own clients, the
//! ones that would report it, are the ones that stopped. [`super::metrics`] labels each
//! partition with its owner from the routing table.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::kafka::client::log_end_client_config;

/// How often the lags are read (2 requests per partition each time).
pub const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// How long one read may wait for the broker.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The latest lags read; empty until the first read succeeds, and after a read fails (a stale
/// lag would show a stuck partition as fine, or a recovered one as stuck).
#[derive(Debug, Default)]
pub struct GroupLag {
    lags: RwLock<BTreeMap<i32, i64>>,
}

impl GroupLag {
    /// Lag per input partition, in records.
    pub fn get(&self) -> BTreeMap<i32, i64> {
        match self.lags.read() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, lags: BTreeMap<i32, i64>) {
        match self.lags.write() {
            Ok(mut l) => *l = lags,
            Err(p) => *p.into_inner() = lags,
        }
    }
}

/// Reads the group's lag until shutdown.
pub struct LagMonitor {
    pub bootstrap: String,
    /// The application id: the group whose committed offsets count.
    pub group_id: String,
    pub topic: String,
    pub partitions: i32,
    pub lag: Arc<GroupLag>,
}

impl LagMonitor {
    /// Read every [`LAG_INTERVAL`] until `shutdown` (a tokio task; the reads run on the
    /// blocking pool).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut config = log_end_client_config(&self.bootstrap);
        config.set("group.id", &self.group_id);
        let consumer: Arc<BaseConsumer> = match config.create() {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the lag reader; no group lag metrics");
                return;
            }
        };
        let mut tick = tokio::time::interval(LAG_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let (c, topic, n) = (consumer.clone(), self.topic.clone(), self.partitions);
            match tokio::task::spawn_blocking(move || read_lags(&c, &topic, n)).await {
                Ok(Ok(lags)) => {
                    if failing {
                        tracing::info!("group lag readable again");
                        failing = false;
                    }
                    self.lag.set(lags);
                }
                Ok(Err(e)) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the group's lag; retrying");
                        failing = true;
                    }
                    self.lag.set(BTreeMap::new());
                }
                Err(_) => return,
            }
        }
    }
}

/// Log end minus committed offset of each partition of `topic` (the whole partition when the
/// group committed nothing there yet).
fn read_lags(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> KafkaResult<BTreeMap<i32, i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, READ_TIMEOUT)?;
    let mut lags = BTreeMap::new();
    for e in committed.elements() {
        let p = e.partition();
        let (low, high) = consumer.fetch_watermarks(topic, p, READ_TIMEOUT)?;
        let from = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lags.insert(p, (high - from).max(0));
    }
    Ok(lags)
}
