//! What the query layer measures and shows: `GET /metrics` (every layer's collectors, encoded
//! at each scrape) and each query's latency by outcome and by the copy that answered.
//!
//! The copy that answered travels back to the guard as a response extension ([`AnsweredBy`]),
//! set where the answer is made (a local read, a forward, a not-found), so the guard times the
//! whole request, retries and forwards included, and labels it without reading the body.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::QueryState;
use crate::cluster::metrics::ClusterCollector;
use crate::engine::status::StatusCollector;
use crate::engine::Role;
use crate::telemetry::exposition::{encode, gauges, MetricsCollector, NONE};

/// Which copy answered a query: `active`, `standby` or `forwarded` (absent: `none`).
#[derive(Debug, Clone, Copy)]
pub(super) struct AnsweredBy(pub &'static str);

/// The label of a local copy's role.
pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Active => "active",
        Role::Standby => "standby",
    }
}

/// `response`, marked as answered by a local copy in `role`.
pub(super) fn answered_locally(mut response: Response, role: Role) -> Response {
    response
        .extensions_mut()
        .insert(AnsweredBy(role_name(role)));
    response
}

/// `response`, marked as another instance's answer.
pub(super) fn answered_by_peer(mut response: Response) -> Response {
    response.extensions_mut().insert(AnsweredBy("forwarded"));
    response
}

/// The `outcome` label of an answer with `status`.
pub(super) fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        404 => "not_found",
        408 => "timeout",
        400..=499 => "bad_request",
        503 => "unavailable",
        _ => "error",
    }
}

/// Record a finished query's latency under its outcome and the copy that answered.
pub(super) fn observe(st: &QueryState, response: &Response, took: std::time::Duration) {
    let role = response
        .extensions()
        .get::<AnsweredBy>()
        .map_or("none", |a| a.0);
    st.metrics
        .query_took(outcome(response.status()), role, took);
}

/// Every layer's collectors over this instance's state.
pub(super) fn registry(st: &QueryState) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(MetricsCollector(st.metrics.clone())));
    r.register_collector(Box::new(StatusCollector {
        status: st.status.clone(),
        metrics: st.metrics.clone(),
    }));
    r.register_collector(Box::new(ClusterCollector {
        routing: st.routing.clone(),
        lag: st.group_lag.clone(),
        partitions: st.partition_count,
    }));
    r.register_collector(Box::new(QueryCollector {
        permits: st.permits.clone(),
        max: st.limits.max_concurrent_queries,
    }));
    r
}

/// The query layer's own gauges: requests holding a permit now.
#[derive(Debug)]
struct QueryCollector {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl Collector for QueryCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let in_flight = self.max.saturating_sub(self.permits.available_permits());
        gauges(
            &mut enc,
            "paystream_queries_in_flight",
            "Queries being answered now (long-polls included; of --max-concurrent-queries).",
            [(NONE, in_flight as i64)],
        )?;
        gauges(
            &mut enc,
            "paystream_queries_in_flight_limit",
            "--max-concurrent-queries: more queries at once are refused with 503.",
            [(NONE, self.max as i64)],
        )
    }
}

pub(super) async fn get_metrics(State(st): State<QueryState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        encode(&registry(&st)),
    )
        .into_response()
}
