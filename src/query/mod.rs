//! The interactive-query API (axum).
//!
//! Entry point: [`app`], a `Router` with no socket attached, so handlers are tested with
//! `tower::ServiceExt::oneshot`. The caller serves it (see `runtime::Instance::run`).
//!
//! One query: `GET /orders/{id}` → validate id → partition = murmur2(id) % partition count (the
//! count from topic metadata, never from the assignment) → the local copy of that partition →
//! RocksDB read on a blocking thread → decode → JSON.

mod error;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use paystream_topology::order::{decode_order, OrderView, ORDERS_STORE};
use paystream_topology::partition_for_key;
use serde::Serialize;

pub use error::QueryError;

use crate::runtime::local::{LocalStores, Role};
use crate::runtime::stream_thread::{SharedStatus, Status};
use crate::telemetry::Metrics;

/// Longest order id accepted (ids are Kafka keys; anything longer is a client mistake).
pub const MAX_ID_LEN: usize = 256;

/// What the handlers share.
#[derive(Clone)]
pub struct QueryState {
    pub local: Arc<LocalStores>,
    /// Partitions of the input topic, from topic metadata.
    pub partition_count: i32,
    /// `HOST:PORT` this instance is reached at (`served_by`).
    pub self_addr: String,
    pub metrics: Arc<Metrics>,
    pub status: Arc<SharedStatus>,
}

/// The query API's routes.
pub fn app(state: QueryState) -> Router {
    Router::new()
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/location", get(get_location))
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

fn validate_id(id: Result<Path<String>, PathRejection>) -> Result<String, QueryError> {
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

async fn get_order(
    State(st): State<QueryState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderResponse>, QueryError> {
    let result = lookup(&st, id).await;
    let counter = match &result {
        Ok(_) => &st.metrics.queries_ok,
        Err(QueryError::NotFound { .. }) => &st.metrics.queries_not_found,
        Err(_) => &st.metrics.queries_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    result.map(Json)
}

async fn lookup(
    st: &QueryState,
    id: Result<Path<String>, PathRejection>,
) -> Result<OrderResponse, QueryError> {
    let id = validate_id(id)?;
    let partition = partition_for_key(id.as_bytes(), st.partition_count);
    let local = st
        .local
        .get(partition)
        .ok_or(QueryError::PartitionUnavailable { partition })?;
    let reader = local
        .readers
        .get(ORDERS_STORE)
        .cloned()
        .ok_or(QueryError::PartitionUnavailable { partition })?;
    let key = id.clone();
    // RocksDB reads block: keep them off the async workers.
    let bytes = tokio::task::spawn_blocking(move || reader.get(key.as_bytes()))
        .await
        .map_err(|e| QueryError::Internal(e.to_string()))?
        .map_err(|e| QueryError::Store(e.to_string()))?
        .ok_or_else(|| QueryError::NotFound {
            id: id.clone(),
            partition,
        })?;
    let stored = decode_order(&bytes).map_err(|e| QueryError::Store(e.to_string()))?;
    Ok(OrderResponse {
        order: stored.view,
        partition,
        served_by: st.self_addr.clone(),
        role: match local.role {
            Role::Active => "active".into(),
            Role::Standby => "standby".into(),
        },
        lag: local.lag(),
    })
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

fn owners(st: &QueryState, partition: i32) -> (Option<String>, Vec<String>) {
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
        partitions,
    })
}

#[derive(Serialize)]
struct Health {
    status: Status,
    ready: bool,
    active_partitions: Vec<i32>,
    standby_partitions: Vec<i32>,
    records_processed: u64,
    records_restored: u64,
    records_dead_lettered: u64,
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
        records_processed: st.metrics.total_processed(),
        records_restored: st.metrics.total_restored(),
        records_dead_lettered: st.metrics.total_dead_lettered(),
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
