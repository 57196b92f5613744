//! The output producer: one idempotent producer per instance for changelogs, dead letters and
//! sinks, with delivery tracking so a commit can tell what has been acknowledged.
//!
//! Delivery guarantee (at-least-once): records are enqueued without waiting; before source
//! offsets are committed the owner calls [`OutputProducer::flush`], which waits for every
//! outstanding delivery and fails if any delivery failed since the last flush. The acknowledged
//! changelog offsets it then reports are what checkpoints record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paystream_state::logging::ChangelogWriter;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

use super::client::producer_config;
use super::KafkaError;

/// How long `send` waits for room in librdkafka's queue before giving up (back-pressure).
const QUEUE_FULL_TIMEOUT: Duration = Duration::from_secs(60);

/// Delivery bookkeeping, updated from librdkafka's delivery callbacks.
pub struct DeliveryTracker {
    /// Per tracked topic (changelogs), per partition: highest acknowledged offset (-1 = none).
    acked: HashMap<String, Vec<AtomicI64>>,
    failures: AtomicU64,
    first_failure: Mutex<Option<(String, String)>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(msg) => {
                if let Some(parts) = self.acked.get(msg.topic()) {
                    if let Some(slot) = usize::try_from(msg.partition())
                        .ok()
                        .and_then(|p| parts.get(p))
                    {
                        slot.fetch_max(msg.offset(), Ordering::AcqRel);
                    }
                }
            }
            Err((err, msg)) => {
                self.failures.fetch_add(1, Ordering::AcqRel);
                if let Ok(mut first) = self.first_failure.lock() {
                    if first.is_none() {
                        *first = Some((msg.topic().to_owned(), err.to_string()));
                    }
                }
                tracing::error!(topic = msg.topic(), partition = msg.partition(), error = %err, "delivery failed");
            }
        }
    }
}

/// The instance's producer. Cheap to share (`Arc`); `send_*` never blocks on the network.
pub struct OutputProducer {
    inner: ThreadedProducer<DeliveryTracker>,
}

impl OutputProducer {
    /// Create a producer that tracks acknowledged offsets of `tracked` topics
    /// (name, partition count).
    pub fn new(bootstrap: &str, tracked: &[(String, i32)]) -> Result<Arc<Self>, KafkaError> {
        let acked = tracked
            .iter()
            .map(|(t, n)| (t.clone(), (0..*n).map(|_| AtomicI64::new(-1)).collect()))
            .collect();
        let ctx = DeliveryTracker {
            acked,
            failures: AtomicU64::new(0),
            first_failure: Mutex::new(None),
        };
        let inner = producer_config(bootstrap)
            .create_with_context(ctx)
            .map_err(KafkaError::client("producer"))?;
        Ok(Arc::new(Self { inner }))
    }

    /// Enqueue a record to an explicit partition, waiting while librdkafka's queue is full.
    pub fn send(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        timestamp: Option<i64>,
    ) -> Result<(), KafkaError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(partition);
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let started = Instant::now();
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if started.elapsed() > QUEUE_FULL_TIMEOUT {
                        return Err(KafkaError::Timeout {
                            what: format!("room in the producer queue for {topic}"),
                            seconds: QUEUE_FULL_TIMEOUT.as_secs(),
                        });
                    }
                    record = back;
                    // The background thread drains the queue; yield briefly.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    return Err(KafkaError::Delivery {
                        topic: topic.to_owned(),
                        message: e.to_string(),
                    })
                }
            }
        }
    }

    /// Wait until every enqueued record is acknowledged; fail if any delivery failed since the
    /// last successful flush (the caller must then not commit).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout).map_err(|e| KafkaError::Timeout {
            what: format!("producer flush ({e})"),
            seconds: timeout.as_secs(),
        })?;
        let ctx = self.inner.context();
        if ctx.failures.swap(0, Ordering::AcqRel) > 0 {
            let (topic, message) = ctx
                .first_failure
                .lock()
                .ok()
                .and_then(|mut f| f.take())
                .unwrap_or_else(|| ("?".into(), "unknown".into()));
            return Err(KafkaError::Delivery { topic, message });
        }
        Ok(())
    }

    /// Highest acknowledged offset of a tracked topic's partition (-1 when none yet).
    pub fn acked_offset(&self, topic: &str, partition: i32) -> i64 {
        self.inner
            .context()
            .acked
            .get(topic)
            .and_then(|p| usize::try_from(partition).ok().and_then(|i| p.get(i)))
            .map_or(-1, |a| a.load(Ordering::Acquire))
    }
}

/// Headers for a dead-lettered record: why, and where it came from.
pub fn dead_letter_headers(
    reason: &str,
    detail: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedHeaders {
    let p = partition.to_string();
    let o = offset.to_string();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "paystream.dlq.reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "paystream.dlq.detail",
            value: Some(detail),
        })
        .insert(Header {
            key: "paystream.source.topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "paystream.source.partition",
            value: Some(p.as_str()),
        })
        .insert(Header {
            key: "paystream.source.offset",
            value: Some(o.as_str()),
        })
}

/// [`ChangelogWriter`] for one store of one task: `<app>-<store>-changelog`, same partition as
/// the task (as Kafka Streams does), so a partition's state can be restored on its own.
pub struct KafkaChangelogWriter {
    producer: Arc<OutputProducer>,
    topic: Arc<str>,
    partition: i32,
}

impl KafkaChangelogWriter {
    pub fn new(producer: Arc<OutputProducer>, topic: Arc<str>, partition: i32) -> Self {
        Self {
            producer,
            topic,
            partition,
        }
    }
}

impl ChangelogWriter for KafkaChangelogWriter {
    fn send(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        self.producer
            .send(&self.topic, self.partition, Some(key), value, None, None)
            .map_err(|e| e.to_string())
    }
}
