//! The delivering instance's metrics, each event logged where it is counted (one method per
//! event: the log line and the metric together). Gauges of state owned elsewhere (permits,
//! held records, the circuit) are set at each scrape by [`DeliveryMetrics::encode`].

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::breaker::{CircuitState, Transition};
use super::permits::PermitsStatus;

type Labels = Vec<(&'static str, String)>;

/// What `/metrics` shows of delivery.
#[derive(Debug)]
pub struct DeliveryMetrics {
    registry: Registry,
    calls: Family<Labels, Histogram>,
    delivered: Counter,
    retries: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    skipped: Counter,
    transitions: Family<Labels, Counter>,
    permits: Gauge,
    in_flight: Gauge,
    permit_waits: Counter<u64, AtomicU64>,
    permit_wait_timeouts: Counter<u64, AtomicU64>,
    circuit: Gauge<i64, AtomicI64>,
    buffered: Gauge,
}

fn call_buckets() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// A circuit state as the `paystream_delivery_circuit_state` gauge shows it.
pub fn circuit_code(state: CircuitState) -> i64 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::Open => 1,
        CircuitState::HalfOpen => 2,
    }
}

/// The state's name in logs and `/health`.
pub fn circuit_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half_open",
    }
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = DeliveryMetrics {
            registry: Registry::default(),
            calls: Family::new_with_constructor(call_buckets),
            delivered: Counter::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            skipped: Counter::default(),
            transitions: Family::default(),
            permits: Gauge::default(),
            in_flight: Gauge::default(),
            permit_waits: Counter::default(),
            permit_wait_timeouts: Counter::default(),
            circuit: Gauge::default(),
            buffered: Gauge::default(),
        };
        let p = "paystream_delivery";
        registry.register(
            format!("{p}_call_duration_seconds"),
            "Gateway calls by outcome (delivered, retryable, rejected), in seconds.",
            m.calls.clone(),
        );
        registry.register(
            format!("{p}_delivered"),
            "SMS the gateway accepted (2xx).",
            m.delivered.clone(),
        );
        registry.register(
            format!("{p}_retries"),
            "SMS sent to a retry topic, by level (1 = first retry) and reason.",
            m.retries.clone(),
        );
        registry.register(
            format!("{p}_dead_letters"),
            "SMS sent to the DLQ, by reason class (rejected, exhausted, invalid).",
            m.dead_letters.clone(),
        );
        registry.register(
            format!("{p}_circuit_skips"),
            "SMS sent on to the first retry topic without a call because the circuit was open.",
            m.skipped.clone(),
        );
        registry.register(
            format!("{p}_circuit_transitions"),
            "Circuit state changes, by the state entered.",
            m.transitions.clone(),
        );
        registry.register(
            format!("{p}_permits"),
            "Gateway calls allowed in flight (--permits, PUT /admin/permits).",
            m.permits.clone(),
        );
        registry.register(
            format!("{p}_in_flight"),
            "Gateway calls holding a permit now.",
            m.in_flight.clone(),
        );
        registry.register(
            format!("{p}_permit_waits"),
            "Calls that had to wait for a permit.",
            m.permit_waits.clone(),
        );
        registry.register(
            format!("{p}_permit_wait_timeouts"),
            "Waits for a permit longer than --permit-wait (the gateway cannot keep up).",
            m.permit_wait_timeouts.clone(),
        );
        registry.register(
            format!("{p}_circuit_state"),
            "The circuit: 0 closed, 1 open, 2 half-open.",
            m.circuit.clone(),
        );
        registry.register(
            format!("{p}_buffered"),
            "Polled SMS held (waiting for a permit, their order, or their retry time).",
            m.buffered.clone(),
        );
        DeliveryMetrics { registry, ..m }
    }
}

impl DeliveryMetrics {
    /// A gateway call ended.
    pub fn call(&self, outcome: &'static str, took: Duration) {
        self.calls
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// The gateway accepted an SMS.
    pub fn delivered(&self) {
        self.delivered.inc();
    }

    /// An SMS went to retry topic `level`.
    pub fn retried(&self, level: usize, reason: &str, event_id: &str) {
        tracing::debug!(level, reason, event_id, "SMS sent to a retry topic");
        self.retries
            .get_or_create(&vec![
                ("level", level.to_string()),
                ("reason", reason_class(reason).to_owned()),
            ])
            .inc();
    }

    /// An SMS went on to the first retry topic without a call (open circuit).
    pub fn skipped(&self) {
        self.skipped.inc();
    }

    /// An SMS went to the DLQ.
    pub fn dead_lettered(&self, reason: &str, event_id: &str) {
        tracing::warn!(reason, event_id, "SMS sent to the dead-letter topic");
        let class = reason.split(':').next().unwrap_or("other").trim();
        self.dead_letters
            .get_or_create(&vec![("reason", class.to_owned())])
            .inc();
    }

    /// The circuit changed state.
    pub fn transition(&self, t: Transition) {
        let (from, to) = (circuit_name(t.from), circuit_name(t.to));
        match t.to {
            CircuitState::Open => {
                tracing::warn!(
                    from,
                    to,
                    "circuit opened: SMS go to the retry topic uncalled"
                )
            }
            _ => tracing::info!(from, to, "circuit changed"),
        }
        self.circuit.set(circuit_code(t.to));
        self.transitions
            .get_or_create(&vec![("to", to.to_owned())])
            .inc();
    }

    /// The Prometheus text of delivery's metrics, with the gauges set from the current state.
    pub fn encode(&self, permits: PermitsStatus, buffered: usize, circuit: CircuitState) -> String {
        self.permits.set(gauge(permits.permits));
        self.in_flight.set(gauge(permits.in_flight));
        self.buffered.set(gauge(buffered));
        self.circuit.set(circuit_code(circuit));
        // The permit counters are kept by the permits themselves; bring these up to them.
        let catch_up = |c: &Counter<u64, AtomicU64>, total: u64| {
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        };
        catch_up(&self.permit_waits, permits.waits);
        catch_up(&self.permit_wait_timeouts, permits.wait_timeouts);
        crate::telemetry::exposition::encode(&self.registry)
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `http 503` → `http_5xx`, `timeout`, `connection`, `circuit_open`: bounded label values.
fn reason_class(reason: &str) -> &'static str {
    match reason {
        "timeout" => "timeout",
        "connection" => "connection",
        "circuit open" => "circuit_open",
        "http 429" => "http_429",
        r if r.starts_with("http 5") => "http_5xx",
        r if r.starts_with("http ") => "http_other",
        _ => "other",
    }
}
