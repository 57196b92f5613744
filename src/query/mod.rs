//! The interactive-query API (axum).
//!
//! Entry point: [`app`], a `Router` with no socket attached, so handlers are tested with
//! `tower::ServiceExt::oneshot`. The caller serves it (see `instance::Instance::run`).
//!
//! One query: `GET /orders/{id}` → the guard (bounds, concurrency limit, the request's one
//! deadline: `deadline`) → validate id and parameters → partition = murmur2(id) % partition
//! count (the count from topic metadata, never from the assignment) → a copy chosen by `route`
//! (local, or one hop away, within the deadline) → RocksDB read on a blocking thread → JSON.
//!
//! The API is described in `docs/openapi.json`, served at `GET /openapi.json`.

mod dashboard;
pub mod deadline;
mod error;
pub mod forward;
mod metrics;
mod orders;
pub mod route;
pub mod suspects;
pub mod windowed;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use paystream_topology::order::OrderView;
use paystream_topology::partition_for_key;
use serde::Serialize;

pub use error::QueryError;

use crate::cluster::lag::GroupLag;
use crate::cluster::routing::RoutingTable;
use crate::config::QuerySettings;
use crate::engine::{Liveness, LocalStores, Role, SharedStatus, Status};
use crate::telemetry::Metrics;

/// Longest order id accepted (ids are Kafka keys; anything longer is a client mistake).
pub const MAX_ID_LEN: usize = 256;
/// Longest deadline a request may ask for (`timeout_ms`, e.g. of a `wait_for` long-poll).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The OpenAPI 3 description of this API (served at `/openapi.json`).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// What the handlers share.
#[derive(Clone)]
pub struct QueryState {
    pub local: Arc<LocalStores>,
    /// Partitions of the input topic, from topic metadata (never from the assignment).
    pub partition_count: i32,
    /// `HOST:PORT` this instance is reached at (`served_by`).
    pub self_addr: String,
    pub metrics: Arc<Metrics>,
    pub status: Arc<SharedStatus>,
    pub routing: Arc<RoutingTable>,
    /// The group's lag per partition, read from the broker (for `/metrics`).
    pub group_lag: Arc<GroupLag>,
    /// Whether this instance is still in touch with its group (a copy it runs is active only
    /// then).
    pub liveness: Arc<Liveness>,
    /// Pooled client for forwarding (its connect timeout: `--peer-connect-timeout-ms`).
    pub client: reqwest::Client,
    /// Deadlines, peer timeouts, the concurrency limit.
    pub limits: QuerySettings,
    /// One permit per request in flight (`--max-concurrent-queries`).
    pub permits: Arc<tokio::sync::Semaphore>,
    /// Peers that just failed to answer: asked last for a few seconds.
    pub suspects: Arc<suspects::Suspects>,
}

impl QueryState {
    /// The forwarding client for `limits` (pooled; connect timeout per peer).
    pub fn client(limits: &QuerySettings) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .connect_timeout(limits.peer_connect_timeout)
            .build()
    }

    /// The permits of `limits`.
    pub fn permits(limits: &QuerySettings) -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_queries))
    }
}

/// The query API's routes.
pub fn app(state: QueryState) -> Router {
    Router::new()
        .route("/", get(dashboard::get_index))
        .route("/cluster", get(dashboard::get_cluster))
        .route("/orders/{id}", get(orders::get_order))
        .route("/orders/{id}/location", get(get_location))
        .route("/sms/{id}", get(windowed::get_sms))
        .route("/alerts", get(windowed::get_alerts))
        .route("/metadata", get(get_metadata))
        .route("/health", get(get_health))
        .route("/metrics", get(metrics::get_metrics))
        .route("/openapi.json", get(get_openapi))
        .fallback(|| async { QueryError::RouteNotFound })
        .method_not_allowed_fallback(|| async { QueryError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline::guard,
        ))
        .with_state(state)
}

/// Body of a successful `GET /orders/{id}`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct OrderResponse {
    pub order: OrderView,
    pub partition: i32,
    pub served_by: String,
    pub role: String,
    pub lag: i64,
}

pub(crate) fn validate_id(id: Result<Path<String>, PathRejection>) -> Result<String, QueryError> {
    let Path(id) = id.map_err(|e| QueryError::InvalidId(e.body_text()))?;
    if id.is_empty() || id.trim().is_empty() {
        return Err(QueryError::InvalidId("order id is empty".into()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(QueryError::InvalidId(format!(
            "order id is longer than {MAX_ID_LEN} bytes"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(QueryError::InvalidId(
            "order id contains control characters".into(),
        ));
    }
    Ok(id)
}

/// Ids are mostly `[A-Za-z0-9-]`; escape anything else for the forwarded URL.
fn percent_encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Serialize)]
struct Location {
    order_id: String,
    partition: i32,
    active: Option<String>,
    standbys: Vec<String>,
}

async fn get_location(
    State(st): State<QueryState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Location>, QueryError> {
    let id = validate_id(id)?;
    let partition = partition_for_key(id.as_bytes(), st.partition_count);
    let (active, standbys) = owners(&st, partition);
    Ok(Json(Location {
        order_id: id,
        partition,
        active,
        standbys,
    }))
}

/// Active and standby endpoints of `partition`: the group's partition map, or this instance's
/// own copies before the first assignment.
fn owners(st: &QueryState, partition: i32) -> (Option<String>, Vec<String>) {
    if let Some(o) = st.routing.owners(partition) {
        return (Some(o.active).filter(|a| !a.is_empty()), o.standbys);
    }
    match st.local.get(partition).map(|l| l.role) {
        Some(Role::Active) => (Some(st.self_addr.clone()), vec![]),
        Some(Role::Standby) => (None, vec![st.self_addr.clone()]),
        None => (None, vec![]),
    }
}

#[derive(Serialize)]
struct PartitionInfo {
    partition: i32,
    active: Option<String>,
    standbys: Vec<String>,
    lag: Option<i64>,
}

#[derive(Serialize)]
struct Metadata {
    partition_count: i32,
    served_by: String,
    generation: i32,
    partitions: Vec<PartitionInfo>,
}

async fn get_metadata(State(st): State<QueryState>) -> Json<Metadata> {
    let partitions = (0..st.partition_count)
        .map(|p| {
            let (active, standbys) = owners(&st, p);
            PartitionInfo {
                partition: p,
                active,
                standbys,
                lag: st
                    .local
                    .get(p)
                    .map(|l| route::served_as(&st, p, &l).shown_lag()),
            }
        })
        .collect();
    Json(Metadata {
        partition_count: st.partition_count,
        served_by: st.self_addr.clone(),
        generation: st.routing.generation(),
        partitions,
    })
}

#[derive(Serialize)]
struct Health {
    status: Status,
    ready: bool,
    active_partitions: Vec<i32>,
    standby_partitions: Vec<i32>,
    /// Each partition held: its task's state, restore progress, and why its changelog cannot
    /// be read (if so).
    tasks: std::collections::BTreeMap<i32, crate::engine::status::TaskView>,
    /// Records each copy held here is behind (an active: input records up to the log end; a
    /// standby: changelog records not yet applied; -1 unknown).
    lags: std::collections::BTreeMap<i32, i64>,
    records_processed: u64,
    records_restored: u64,
    records_dead_lettered: u64,
    /// Requests timed in `paystream_query_duration_seconds` (every outcome).
    queries_answered: u64,
    commits: u64,
    /// Commits (transactions) that failed and were rolled back.
    commits_aborted: u64,
    /// Commits the group refused because this instance had lost its partitions.
    commits_fenced: u64,
    /// Commits whose outcome was unknown (the producer failed mid-commit): the actives caught
    /// up from their changelogs before processing again.
    commits_unknown_outcome: u64,
    /// Transactional calls that never returned: each replaced the producer (librdkafka#5456).
    transactional_calls_hung: u64,
    /// Times this instance stopped itself after losing contact with the group.
    self_fenced: u64,
}

/// 200 once the instance serves its partitions, 503 while starting or restoring.
async fn get_health(State(st): State<QueryState>) -> Response {
    let body = health(&st);
    let code = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// This instance's `/health` body.
fn health(st: &QueryState) -> Health {
    let status = st.status.get();
    let roles: Vec<(i32, Role)> = st
        .local
        .snapshot()
        .iter()
        .map(|(p, l)| (*p, route::served_as(st, *p, l).role))
        .collect();
    let lags = st
        .metrics
        .tasks()
        .into_iter()
        .filter(|(p, _)| roles.iter().any(|(q, _)| q == p))
        .map(|(p, t)| (p, t.lag.load(Ordering::Relaxed)))
        .collect();
    Health {
        status,
        ready: status == Status::Running,
        active_partitions: roles
            .iter()
            .filter(|(_, r)| *r == Role::Active)
            .map(|(p, _)| *p)
            .collect(),
        standby_partitions: roles
            .iter()
            .filter(|(_, r)| *r == Role::Standby)
            .map(|(p, _)| *p)
            .collect(),
        tasks: st.status.tasks(),
        lags,
        records_processed: st.metrics.total_processed(),
        records_restored: st.metrics.total_restored(),
        records_dead_lettered: st.metrics.total_dead_lettered(),
        queries_answered: st.metrics.queries_answered(),
        commits: st.metrics.commits.load(Ordering::Relaxed),
        commits_aborted: st.metrics.commits_aborted.load(Ordering::Relaxed),
        commits_fenced: st.metrics.commits_fenced.load(Ordering::Relaxed),
        commits_unknown_outcome: st.metrics.commits_unknown.load(Ordering::Relaxed),
        transactional_calls_hung: st.metrics.transactional_calls_hung.load(Ordering::Relaxed),
        self_fenced: st.metrics.self_fenced.load(Ordering::Relaxed),
    }
}

async fn get_openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod guard_tests;
#[cfg(test)]
mod openapi_tests;
#[cfg(test)]
mod tests;
