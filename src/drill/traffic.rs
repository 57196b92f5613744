//! The drill's producer and its watch on the group's commits: the facts the [`Checker`] judges
//! answers by.
//!
//! Every event is recorded when it is handed to the producer and again when the broker
//! acknowledged it (with its offset); a separate thread reads the group's committed offsets
//! (`require_stable`, as `read_committed` clients do) every few hundred milliseconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::checker::{Checker, Micros};
use super::{step, DrillError};
use crate::kafka::client::{producer_config, source_consumer_config};
use crate::produce::TrafficEvent;
use paystream_topology::partition_for_key;

/// Shared between the producer, the commit watch, the query load and the final audit.
#[derive(Clone)]
pub struct Facts {
    pub checker: Arc<Mutex<Checker>>,
    pub t0: Instant,
}

impl Facts {
    pub fn now(&self) -> Micros {
        self.t0.elapsed().as_micros() as Micros
    }

    /// Facts about traffic already sent and acknowledged in full before the drill looks (no
    /// offsets known: an active answer is held to nothing it has not been shown to commit).
    pub fn settled(events: &[TrafficEvent], partitions: i32) -> Facts {
        let per_order = super::model::events_by_order(
            events.iter().map(|e| (e.key.as_deref(), e.value.as_str())),
        );
        let mut checker = Checker::new(per_order.into_iter().map(|(id, events)| {
            let p = partition_for_key(id.as_bytes(), partitions);
            (id, p, events)
        }));
        let mut index: HashMap<&str, usize> = HashMap::new();
        for e in events {
            let Some(key) = e.key.as_deref() else {
                continue;
            };
            let n = index.entry(key).or_insert(0);
            checker.sent(key, *n, 0);
            checker.acked(key, *n, i64::MAX, 0);
            *n += 1;
        }
        Facts {
            checker: Arc::new(Mutex::new(checker)),
            t0: Instant::now(),
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Checker) -> R) -> Option<R> {
        self.checker.lock().ok().map(|mut c| f(&mut c))
    }
}

/// Send `events` to `topic` (partitioned by murmur2 of the key, as Java producers do) at about
/// `rate` per second (`None`: as fast as possible), recording every send and acknowledgement,
/// until all are sent or `stop` is cancelled. Returns once every event sent was acknowledged;
/// fails on the first delivery error.
pub async fn send(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    events: Vec<TrafficEvent>,
    rate: Option<u64>,
    facts: Facts,
    stop: CancellationToken,
) -> Result<u64, DrillError> {
    let producer: FutureProducer = producer_config(bootstrap)
        .set("linger.ms", "2")
        .create()
        .map_err(step("producer"))?;
    let started = Instant::now();
    let mut next_index: HashMap<String, usize> = HashMap::new();
    let mut deliveries = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if stop.is_cancelled() {
            break;
        }
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let key = e.key.clone().unwrap_or_default();
        let index = {
            let n = next_index.entry(key.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let partition = partition_for_key(key.as_bytes(), partitions);
        facts.with(|c| c.sent(&key, index, facts.now()));
        let mut record = FutureRecord::to(topic)
            .key(key.as_bytes())
            .payload(e.value.as_bytes())
            .partition(partition)
            .timestamp(e.timestamp);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break d,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(DrillError::Step(format!("produce: {e}"))),
            }
        };
        let facts = facts.clone();
        deliveries.push(tokio::spawn(async move {
            match delivery.await {
                Ok(Ok(d)) => {
                    facts.with(|c| c.acked(&key, index, d.offset, facts.now()));
                    Ok(())
                }
                Ok(Err((e, _))) => Err(format!("{key}: {e}")),
                Err(_) => Err(format!("{key}: delivery dropped")),
            }
        }));
    }
    let mut sent = 0;
    for d in deliveries {
        d.await
            .map_err(step("delivery task"))?
            .map_err(|e| DrillError::Step(format!("delivery failed: {e}")))?;
        sent += 1;
    }
    Ok(sent)
}

/// Read the group's committed offsets of `topic` until `stop`, feeding them to the checker.
pub fn watch_commits(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    facts: Facts,
    stop: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, DrillError> {
    // Never subscribes or commits: it only asks the coordinator (OffsetFetch), `read_committed`
    // so a commit still inside an open transaction is not reported yet.
    let consumer: BaseConsumer = source_consumer_config(bootstrap, group)
        .create()
        .map_err(step("commit watch"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let handle = std::thread::spawn(move || {
        while !stop.is_cancelled() {
            if let Ok(committed) = consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
                let at = facts.now();
                facts.with(|c| {
                    for e in committed.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            c.committed(e.partition(), o, at);
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    Ok(handle)
}
