//! Logging set-up and metrics.
//!
//! Metrics are typed: each thing worth counting is one field of [`Metrics`] with its meaning in
//! its doc comment; [`exposition`] encodes them (and the other layers' collectors) at
//! `GET /metrics` in the Prometheus text format.

pub mod exposition;
mod metrics;

pub use metrics::{Metrics, QueryLabels, TallyFamily, TaskMetrics};

/// Install the `tracing` subscriber: `RUST_LOG` if set, else `info` (and quieter dependencies).
/// Colours only when stderr is a terminal: logs redirected to a file stay plain text.
pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,hyper=warn,reqwest=warn"));
    // A second init (tests calling main-like code twice) is harmless: ignore the error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
