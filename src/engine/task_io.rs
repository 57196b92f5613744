//! What a running task's topology touches ([`TaskIo`]): its stores, the producer for sink
//! records and dead letters.
//!
//! Every record written here fits in one Kafka record or is refused first: a sink record larger
//! than [`MAX_ENTRY_BYTES`] is an [`ProcessError::OutputTooLarge`] (the record that produced it is
//! dead-lettered by the task), and a dead letter that would not fit keeps its headers, source
//! offset and key with its value cut short (header `paystream.dlq.truncated`).

use paystream_state::store::{KeyValueStore, MAX_ENTRY_BYTES};
use paystream_state::window::WindowStore;
use paystream_topology::partition_for_key;
use paystream_topology::processor::{Origin, ProcessError, Record, RecordMeta, Tally, TaskIo};
use rdkafka::message::{Header, OwnedHeaders};

use super::store::{StoreHandle, TaskStore};
use super::task::TaskOutputs;
use super::trace::RecordTrace;
use crate::kafka::producer::{dead_letter_headers, APPLICATION_HEADER};
use crate::kafka::KafkaError;
use crate::telemetry::trace_context::{B3, TRACEPARENT};
use crate::telemetry::TaskMetrics;

/// Room kept for headers in a dead letter (reason, detail, source, truncation note).
const DEAD_LETTER_HEADROOM: usize = 16 * 1024;
/// Longest `paystream.dlq.detail` kept.
const MAX_DETAIL_BYTES: usize = 2_048;

/// [`TaskIo`] for a running task.
pub(super) struct Io<'a, 'o> {
    pub(super) stores: &'a mut [TaskStore],
    pub(super) outputs: &'a TaskOutputs<'o>,
    pub(super) meta: &'a RecordMeta,
    pub(super) metrics: &'a TaskMetrics,
    /// The trace of the record being processed (`None`: it carries no context).
    pub(super) trace: Option<&'a RecordTrace>,
    /// What is being sent from now: the record's outputs carry its trace, a punctuation's none.
    pub(super) origin: Origin,
}

impl Io<'_, '_> {
    /// `headers` with the trace context of a record sent to `topic`/`partition`, if it is the
    /// processed record's output and that record is traced.
    fn traced(&self, headers: OwnedHeaders, topic: &str, partition: i32) -> OwnedHeaders {
        let Some(trace) = self.trace.filter(|_| self.origin == Origin::Record) else {
            return headers;
        };
        let cx = trace.for_output(topic, partition);
        let (traceparent, b3) = (cx.traceparent(), cx.b3());
        headers
            .insert(Header {
                key: TRACEPARENT,
                value: Some(traceparent.as_str()),
            })
            .insert(Header {
                key: B3,
                value: Some(b3.as_str()),
            })
    }

    /// Send `record` to the dead-letter topic with `reason`, `detail` and `extra` headers.
    pub(super) fn dead_letter_with(
        &mut self,
        record: Record,
        reason: &str,
        detail: &str,
        extra: &[(&str, String)],
    ) -> Result<(), ProcessError> {
        let detail = cut(detail.as_bytes(), MAX_DETAIL_BYTES);
        let detail = String::from_utf8_lossy(detail);
        let mut headers = dead_letter_headers(
            reason,
            &detail,
            &self.meta.topic,
            self.meta.partition,
            self.meta.offset,
        );
        for (key, value) in extra {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let room = MAX_ENTRY_BYTES - DEAD_LETTER_HEADROOM;
        let key = record.key.as_deref().map(|k| cut(k, room / 2));
        let value_room = room - key.map_or(0, <[u8]>::len);
        let value = record.value.as_deref().map(|v| cut(v, value_room));
        let original =
            record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len);
        let kept = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        if kept < original {
            let note = format!("{original} bytes of key and value cut to {kept}");
            headers = headers.insert(Header {
                key: "paystream.dlq.truncated",
                value: Some(note.as_str()),
            });
        }
        let partition = self.meta.partition % self.outputs.dlq_partitions.max(1);
        let headers = self.traced(headers, self.outputs.dlq_topic, partition);
        self.metrics.dead_lettered(reason);
        tracing::debug!(
            partition = self.meta.partition,
            offset = self.meta.offset,
            reason,
            detail = %detail,
            "dead-lettered record"
        );
        self.outputs
            .producer
            .send(
                self.outputs.dlq_topic,
                partition,
                key,
                value,
                Some(headers),
                Some(record.timestamp),
            )
            .map_err(|e| ProcessError::Other(e.to_string()))
    }
}

/// The first `max` bytes of `bytes`.
fn cut(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

impl TaskIo for Io<'_, '_> {
    fn store(&mut self, name: &str) -> Option<&mut dyn KeyValueStore> {
        let s = self.stores.iter_mut().find(|s| s.name == name)?;
        match &mut s.store {
            StoreHandle::KeyValue(kv) => Some(kv),
            StoreHandle::Window(_) => None,
        }
    }

    fn window_store(&mut self, name: &str) -> Option<&mut dyn WindowStore> {
        let s = self.stores.iter_mut().find(|s| s.name == name)?;
        match &mut s.store {
            StoreHandle::Window(w) => Some(w),
            StoreHandle::KeyValue(_) => None,
        }
    }

    fn send(&mut self, topic: &str, record: Record) -> Result<(), ProcessError> {
        let too_large = |bytes| ProcessError::OutputTooLarge {
            topic: topic.to_owned(),
            bytes,
            limit: MAX_ENTRY_BYTES,
        };
        let bytes =
            record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len);
        if bytes > MAX_ENTRY_BYTES {
            return Err(too_large(bytes));
        }
        let n = self
            .outputs
            .sink_partitions
            .get(topic)
            .copied()
            .ok_or_else(|| {
                ProcessError::Other(format!("sink topic {topic} has no known partition count"))
            })?;
        let partition = match &record.key {
            Some(k) if !k.is_empty() => partition_for_key(k, n),
            _ => self.meta.partition % n,
        };
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: APPLICATION_HEADER,
            value: Some(self.outputs.application_id),
        });
        let headers = self.traced(headers, topic, partition);
        self.outputs
            .producer
            .send(
                topic,
                partition,
                record.key.as_deref(),
                record.value.as_deref(),
                Some(headers),
                Some(record.timestamp),
            )
            .map_err(|e| match e {
                KafkaError::TooLarge { bytes, .. } => too_large(bytes),
                e => ProcessError::Other(e.to_string()),
            })
    }

    fn dead_letter(
        &mut self,
        record: Record,
        reason: &str,
        detail: &str,
    ) -> Result<(), ProcessError> {
        self.dead_letter_with(record, reason, detail, &[])
    }

    fn tally(&mut self, what: Tally<'_>) {
        self.metrics.tally(what);
    }

    fn origin(&mut self, origin: Origin) {
        self.origin = origin;
    }
}
