//! Logging set-up and metrics.
//!
//! Metrics are typed: each thing worth counting is one field of [`Metrics`] with its meaning in
//! its doc comment; [`exposition`] encodes them (and the other layers' collectors) at
//! `GET /metrics` in the Prometheus text format.

pub mod exposition;
mod metrics;
pub mod trace_context;
pub mod traces;

pub use metrics::{Metrics, QueryLabels, TallyFamily, TaskMetrics};

/// Install the `tracing` subscriber: `RUST_LOG` if set, else `info` (and quieter dependencies);
/// with `traces`, also the layer that exports spans (see [`traces`]).
/// Colours only when stderr is a terminal: logs redirected to a file stay plain text.
pub fn init_logging(traces: Option<&traces::TraceExport>) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    // One global filter (a per-layer EnvFilter on the log layer lost events: an INFO line of the
    // stream thread never reached the log in tests/commit_faults.rs); the trace layer filters
    // its own spans on top (see `traces::TraceExport::layer`).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,hyper=warn,reqwest=warn"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests calling main-like code twice) is harmless: ignore the error.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces.map(traces::TraceExport::layer))
        .try_init();
}
