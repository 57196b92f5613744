//! A record's trace while the stream thread processes it: the processing span under the
//! producer's span, and the context each record made from it carries on.
//!
//! With spans exported ([`traces::exporting`]) a traced record gets a `process` span (a child
//! of the span its `traceparent` or `b3` header names) and every record it makes a `send` span
//! under it, whose context goes on that record. Without, no span is made: the records it makes
//! carry the input's own context, so downstream traces stay whole across an untraced paystream.

use crate::telemetry::trace_context::TraceContext;
use crate::telemetry::traces::{self, SPAN_TARGET};

/// The trace of the record being processed.
pub(super) struct RecordTrace {
    /// The processing span, when spans are exported.
    span: Option<tracing::Span>,
    /// The input's context (what outputs carry when no span is made).
    parent: TraceContext,
}

impl RecordTrace {
    /// Start tracing the record at `topic`/`partition`/`offset` whose producer's span is
    /// `parent`.
    pub(super) fn start(
        parent: TraceContext,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
    ) -> Self {
        if !traces::exporting() {
            return Self { span: None, parent };
        }
        let key = key.map(String::from_utf8_lossy).unwrap_or_default();
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "process",
            otel.name = %format_args!("process {topic}"),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation = "process",
            messaging.destination.name = topic,
            messaging.kafka.partition = partition,
            messaging.kafka.offset = offset,
            messaging.kafka.message.key = %key,
        );
        traces::set_remote_parent(&span, &parent);
        Self {
            span: Some(span),
            parent,
        }
    }

    /// The context for a record this one made, sent to `topic`/`partition`: a `send` span's
    /// under the processing span, or the input's own when spans are not exported.
    pub(super) fn for_output(&self, topic: &str, partition: i32) -> TraceContext {
        let Some(span) = &self.span else {
            return self.parent;
        };
        let send = tracing::info_span!(
            target: SPAN_TARGET,
            parent: span,
            "send",
            otel.name = %format_args!("send {topic}"),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation = "publish",
            messaging.destination.name = topic,
            messaging.kafka.partition = partition,
        );
        traces::context_of(&send).unwrap_or(self.parent)
    }
}
