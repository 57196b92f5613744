//! Spans exported over OTLP (`--otlp-endpoint`): one per traced input record, one per record
//! made from it, one per traced query.
//!
//! ```text
//!  producer span (order service)      traceparent / b3 on the PAYMENT.ORDER record
//!   └─ process PAYMENT.ORDER          consumer span, one per record that carries a context
//!       ├─ send SEND_SMS              producer span: its context is the SMS record's traceparent
//!       ├─ send PAYMENT.ORDER.DLQ     (dead letters, alerts, suppressed SMS alike)
//!  GET /orders/{id}                   server span when the request carries a context;
//!   └─ (forwarded to the owner)       the forward carries the server span's traceparent
//! ```
//!
//! Spans are `tracing` spans with the target [`SPAN_TARGET`], turned into OpenTelemetry spans by
//! `tracing-opentelemetry` and batched to the collector by the SDK on a thread of its own (a slow
//! or absent collector costs dropped spans, never a stalled stream thread). Only records and
//! requests that carry a trace context are traced: untraced traffic makes no spans. With no
//! endpoint nothing here is installed, and [`exporting`] is false: the engine then makes no
//! spans at all and passes the input's own context on.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use thiserror::Error;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::trace_context::TraceContext;

/// The `tracing` target of every exported span (other spans and events are logs only).
pub const SPAN_TARGET: &str = "paystream::trace";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an endpoint was configured and the exporter installed).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Why the exporter could not be set up.
#[derive(Debug, Error)]
pub enum TraceExportError {
    #[error("otlp-endpoint {url}: {source}")]
    Exporter {
        url: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The installed exporter; [`TraceExport::shutdown`] flushes what is batched.
pub struct TraceExport {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::Tracer,
}

impl TraceExport {
    /// An exporter posting to `url` (OTLP/HTTP, protobuf), naming this process
    /// `service.name=paystream` and `service.instance.id=instance`.
    ///
    /// Must be called outside an async runtime (the HTTP client it makes is a blocking one, used
    /// from the SDK's own export thread).
    pub fn start(
        url: &str,
        instance: &str,
        application_id: &str,
    ) -> Result<Self, TraceExportError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|source| TraceExportError::Exporter {
                url: url.to_owned(),
                source,
            })?;
        let resource = Resource::builder()
            .with_service_name("paystream")
            .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
            .with_attribute(KeyValue::new(
                "paystream.application_id",
                application_id.to_owned(),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("paystream");
        Ok(Self { provider, tracer })
    }

    /// The `tracing` layer that turns [`SPAN_TARGET`] spans into exported spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        EXPORTING.store(true, Ordering::Relaxed);
        let only_spans = tracing_subscriber::filter::Targets::new()
            .with_target(SPAN_TARGET, tracing::Level::TRACE);
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_filter(only_spans)
    }

    /// Export what is batched and stop (at the end of `paystream run`).
    pub fn shutdown(self) {
        EXPORTING.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}

/// Make `span` a child of the remote span `parent` (before it is entered or asked for its
/// context). A no-op when spans are not exported.
pub fn set_remote_parent(span: &tracing::Span, parent: &TraceContext) {
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        flags,
        true,
        TraceState::default(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    let _ = span.set_parent(cx);
}

/// The context `span` passes on (its own ids), or `None` when it is not exported.
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    })
}
