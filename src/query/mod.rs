//! The interactive-query API (axum).
//!
//! Entry point: [`app`], a `Router` with no socket attached, so handlers are tested with
//! `tower::ServiceExt::oneshot`. The caller serves it (see `instance::Instance::run`).
//!
//! One query: `GET /orders/{id}` → validate id → partition = murmur2(id) % partition count (the
//! count from topic metadata, never from the assignment) → the local copy of that partition →
//! RocksDB read on a blocking thread → decode → JSON.

mod error;
pub mod forward;
pub mod windowed;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use paystream_topology::order::{decode_order, EventType, OrderView, ORDERS_STORE};
use paystream_topology::partition_for_key;
use serde::Serialize;

pub use error::QueryError;

use crate::cluster::routing::RoutingTable;
use crate::engine::store::StoreReader;
use crate::engine::{LocalPartition, LocalStores, Role, SharedStatus, Status};
use crate::telemetry::Metrics;
use forward::{forward, Forwarded, ALLOW_STANDBY, FORWARDED};

/// Longest order id accepted (ids are Kafka keys; anything longer is a client mistake).
pub const MAX_ID_LEN: usize = 256;
/// Longest `wait_for` long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a query keeps looking for a copy that can answer before it gives up with 503.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(3);
/// How long a forwarded hop may take (on top of any `timeout_ms`).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Pooled client for forwarding.
    pub client: reqwest::Client,
}

/// The query API's routes.
pub fn app(state: QueryState) -> Router {
    Router::new()
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/location", get(get_location))
        .route("/sms/{id}", get(windowed::get_sms))
        .route("/alerts", get(windowed::get_alerts))
        .route("/metadata", get(get_metadata))
        .route("/health", get(get_health))
        .route("/metrics", get(get_metrics))
        .fallback(|| async { QueryError::RouteNotFound })
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

/// Query parameters of `GET /orders/{id}`.
#[derive(Debug, Default)]
struct OrderParams {
    /// Refuse answers from standby copies (503 instead).
    active_only: bool,
    wait_for: Option<EventType>,
    timeout: Duration,
}

fn parse_params(raw: Option<&str>) -> Result<OrderParams, QueryError> {
    let mut p = OrderParams {
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let pairs: HashMap<&str, &str> = raw
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    for (k, v) in pairs {
        match k {
            "consistency" => match v {
                "active" => p.active_only = true,
                "any" => p.active_only = false,
                _ => {
                    return Err(QueryError::InvalidParam(format!(
                        "consistency must be active or any, not {v:?}"
                    )))
                }
            },
            "wait_for" => {
                p.wait_for = Some(v.parse().map_err(|_| {
                    QueryError::InvalidParam(format!("wait_for: unknown state {v:?}"))
                })?)
            }
            "timeout_ms" => {
                let ms: u64 = v.parse().map_err(|_| {
                    QueryError::InvalidParam(format!("timeout_ms: {v:?} is not a number"))
                })?;
                p.timeout = Duration::from_millis(ms).min(MAX_WAIT);
            }
            other => {
                return Err(QueryError::InvalidParam(format!(
                    "unknown parameter {other:?}"
                )))
            }
        }
    }
    Ok(p)
}

async fn get_order(
    State(st): State<QueryState>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    // While partitions move (a rebalance, a promotion catching up its changelog tail) there can
    // be a moment when no copy answers; the client should see latency then, not an error. Only
    // the first instance retries: forwarded requests answer at once, so retries never multiply.
    let deadline = Instant::now() + UNAVAILABLE_RETRY;
    let id = match validate_id(id) {
        Ok(id) => id,
        Err(e) => {
            st.metrics.queries_failed.fetch_add(1, Ordering::Relaxed);
            return e.into_response();
        }
    };
    let mut result = route_order(&st, &id, raw.as_deref(), &headers).await;
    while matches!(result, Err(QueryError::PartitionUnavailable { .. }))
        && !headers.contains_key(FORWARDED)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        result = route_order(&st, &id, raw.as_deref(), &headers).await;
    }
    let counter = match &result {
        Ok(r) if r.status().is_success() => &st.metrics.queries_ok,
        Ok(r) if r.status() == StatusCode::NOT_FOUND => &st.metrics.queries_not_found,
        Err(QueryError::NotFound { .. }) => &st.metrics.queries_not_found,
        _ => &st.metrics.queries_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Local active → forward to the active → local standby → forward to a standby → 503.
async fn route_order(
    st: &QueryState,
    id: &str,
    raw: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, QueryError> {
    let params = parse_params(raw)?;
    let partition = partition_for_key(id.as_bytes(), st.partition_count);
    let local = st.local.get(partition);
    if let Some(l) = local.as_ref().filter(|l| l.role == Role::Active) {
        return serve_local(st, l, id, partition, &params).await;
    }
    if headers.contains_key(FORWARDED) {
        // Loop guard: answer from here or not at all.
        return match local {
            Some(l) if headers.contains_key(ALLOW_STANDBY) => {
                serve_local(st, &l, id, partition, &params).await
            }
            _ => Err(QueryError::PartitionUnavailable { partition }),
        };
    }
    let path = match raw {
        Some(q) => format!("/orders/{}?{q}", percent_encode(id)),
        None => format!("/orders/{}", percent_encode(id)),
    };
    let timeout = FORWARD_TIMEOUT
        + if params.wait_for.is_some() {
            params.timeout
        } else {
            Duration::ZERO
        };
    let owners = st.routing.owners(partition);
    if let Some(o) = owners
        .as_ref()
        .filter(|o| !o.active.is_empty() && o.active != st.self_addr)
    {
        match forward(&st.client, &o.active, &path, &st.self_addr, false, timeout).await {
            Forwarded::Answer(r) => return Ok(r),
            Forwarded::Unavailable(why) => tracing::debug!(partition, why, "active unavailable"),
        }
    }
    if params.active_only {
        return Err(QueryError::PartitionUnavailable { partition });
    }
    if let Some(l) = &local {
        return serve_local(st, l, id, partition, &params).await;
    }
    // The active itself goes first again: while it is being promoted it still holds the
    // partition as a (nearly caught-up) standby copy.
    let mut fallbacks: Vec<String> = Vec::new();
    if let Some(o) = owners {
        fallbacks.push(o.active);
        fallbacks.extend(o.standbys);
    }
    fallbacks.retain(|s| !s.is_empty() && *s != st.self_addr);
    for s in &fallbacks {
        match forward(&st.client, s, &path, &st.self_addr, true, timeout).await {
            Forwarded::Answer(r) => return Ok(r),
            Forwarded::Unavailable(why) => tracing::debug!(partition, why, "standby unavailable"),
        }
    }
    Err(QueryError::PartitionUnavailable { partition })
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

/// Read from a local copy; with `wait_for`, poll until the order reaches that state.
async fn serve_local(
    st: &QueryState,
    local: &LocalPartition,
    id: &str,
    partition: i32,
    params: &OrderParams,
) -> Result<Response, QueryError> {
    let reader = match local.readers.get(ORDERS_STORE) {
        Some(StoreReader::KeyValue(r)) => r.clone(),
        _ => return Err(QueryError::PartitionUnavailable { partition }),
    };
    let deadline = Instant::now() + params.timeout;
    loop {
        let (r, key) = (reader.clone(), id.to_owned());
        // RocksDB reads block: keep them off the async workers.
        let bytes = tokio::task::spawn_blocking(move || r.get(key.as_bytes()))
            .await
            .map_err(|e| QueryError::Internal(e.to_string()))?
            .map_err(|e| QueryError::Store(e.to_string()))?;
        let view = match bytes {
            Some(b) => Some(
                decode_order(&b)
                    .map_err(|e| QueryError::Store(e.to_string()))?
                    .view,
            ),
            None => None,
        };
        let reached = match (&view, params.wait_for) {
            (Some(_), None) => true,
            (Some(v), Some(want)) => v.state == want,
            (None, _) => false,
        };
        if reached || params.wait_for.is_none() || Instant::now() >= deadline {
            let role = match local.role {
                Role::Active => "active",
                Role::Standby => "standby",
            };
            return match (view, params.wait_for) {
                (Some(order), _) if reached => Ok(Json(OrderResponse {
                    order,
                    partition,
                    served_by: st.self_addr.clone(),
                    role: role.into(),
                    lag: local.lag(),
                })
                .into_response()),
                (order, Some(want)) => Err(QueryError::WaitTimeout {
                    id: id.to_owned(),
                    want: want.as_str(),
                    state: order.map(|o| o.state.as_str()),
                }),
                (_, None) => Err(QueryError::NotFound {
                    id: id.to_owned(),
                    partition,
                }),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
                lag: st.local.get(p).map(|l| l.lag()),
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
    records_processed: u64,
    records_restored: u64,
    records_dead_lettered: u64,
    commits: u64,
    /// Commits (transactions) that failed and were rolled back.
    commits_aborted: u64,
    /// Commits the group refused because this instance had lost its partitions.
    commits_fenced: u64,
    /// Times this instance stopped itself after losing contact with the group.
    self_fenced: u64,
}

/// 200 once the instance serves its partitions, 503 while starting or restoring.
async fn get_health(State(st): State<QueryState>) -> Response {
    let status = st.status.get();
    let roles = st.local.roles();
    let body = Health {
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
        records_processed: st.metrics.total_processed(),
        records_restored: st.metrics.total_restored(),
        records_dead_lettered: st.metrics.total_dead_lettered(),
        commits: st.metrics.commits.load(Ordering::Relaxed),
        commits_aborted: st.metrics.commits_aborted.load(Ordering::Relaxed),
        commits_fenced: st.metrics.commits_fenced.load(Ordering::Relaxed),
        self_fenced: st.metrics.self_fenced.load(Ordering::Relaxed),
    };
    let code = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn get_metrics(State(st): State<QueryState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
