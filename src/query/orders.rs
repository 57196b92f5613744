//! `GET /orders/{id}`: validate the id and parameters → partition = murmur2(id) % partition
//! count → a copy chosen by [`super::route`] → RocksDB read on a blocking thread → decode → JSON.
//! With `wait_for`, a long-poll until the order reaches that state or the deadline passes.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use paystream_topology::order::{decode_order, EventType, ORDERS_STORE};
use paystream_topology::partition_for_key;
use serde::Deserialize;

use super::deadline::Deadline;
use super::forward::{request_trace, ALLOW_STANDBY, FORWARDED};
use super::metrics::role_name;
use super::route::{Ask, Route, Served};
use super::{percent_encode, validate_id, OrderResponse, QueryError, QueryState, MAX_WAIT};
use crate::engine::store::StoreReader;
use crate::engine::LocalPartition;

/// Which copies may answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Consistency {
    /// The active copy only (503 when it cannot answer).
    Active,
    /// The active, else a standby (within `max_lag`, when given).
    #[default]
    Any,
}

/// Query parameters of the keyed endpoints. Unknown or repeated parameters are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyedParams {
    #[serde(default)]
    pub(super) consistency: Consistency,
    /// Long-poll until the order reaches this state (`/orders` only).
    pub(super) wait_for: Option<String>,
    /// This request's deadline (at most 60000; default --query-timeout-ms).
    pub(super) timeout_ms: Option<u64>,
    /// Refuse a standby answer more than this many records behind.
    pub(super) max_lag: Option<u64>,
}

impl KeyedParams {
    pub(super) fn from_query(
        q: Result<Query<KeyedParams>, QueryRejection>,
    ) -> Result<Self, QueryError> {
        let Query(p) = q.map_err(|e| QueryError::InvalidParam(e.body_text()))?;
        if p.timeout_ms
            .is_some_and(|t| Duration::from_millis(t) > MAX_WAIT)
        {
            return Err(QueryError::InvalidParam(format!(
                "timeout_ms: at most {} ms",
                MAX_WAIT.as_millis()
            )));
        }
        Ok(p)
    }

    /// `max_lag` as the lag counters count (larger values mean no bound).
    pub(super) fn max_lag(&self) -> Option<i64> {
        self.max_lag.map(|m| i64::try_from(m).unwrap_or(i64::MAX))
    }
}

/// The routing request of a keyed query at `path` (forwarded as is).
pub(super) fn ask<'a>(
    st: &'a QueryState,
    partition: i32,
    path: String,
    params: &KeyedParams,
    deadline: Deadline,
    headers: &HeaderMap,
) -> Ask<'a> {
    Ask {
        st,
        partition,
        path,
        deadline,
        active_only: params.consistency == Consistency::Active,
        max_lag: params.max_lag(),
        long_poll: params.wait_for.is_some(),
        forwarded: headers.contains_key(FORWARDED),
        allow_standby: headers.contains_key(ALLOW_STANDBY),
        trace: request_trace(headers),
    }
}

pub(super) async fn get_order(
    State(st): State<QueryState>,
    Extension(deadline): Extension<Deadline>,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<KeyedParams>, QueryRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    order(&st, deadline, id, params, raw, &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn order(
    st: &QueryState,
    deadline: Deadline,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<KeyedParams>, QueryRejection>,
    raw: Option<String>,
    headers: &HeaderMap,
) -> Result<Response, QueryError> {
    let id = validate_id(id)?;
    let params = KeyedParams::from_query(params)?;
    let wait_for: Option<EventType> = match &params.wait_for {
        Some(w) => Some(
            w.parse()
                .map_err(|_| QueryError::InvalidParam(format!("wait_for: unknown state {w:?}")))?,
        ),
        None => None,
    };
    let partition = partition_for_key(id.as_bytes(), st.partition_count);
    let path = match raw {
        Some(q) => format!("/orders/{}?{q}", percent_encode(&id)),
        None => format!("/orders/{}", percent_encode(&id)),
    };
    let mut route = Route::new(ask(st, partition, path, &params, deadline, headers));
    // The future owns what it reads (a borrowing one trips the handler's `Send` check).
    let serve = |l: LocalPartition, s: Served| {
        let (st, id) = (st.clone(), id.clone());
        async move { serve_local(&st, l, s, &id, partition, wait_for, deadline).await }
    };
    retry_until_deadline(&mut route, deadline, headers, serve).await
}

/// While partitions move (a rebalance, a promotion catching up its changelog tail) there can be
/// a moment when no copy answers: the client should see latency then, not an error, as long as
/// its deadline allows. Only the first instance retries: forwarded requests answer at once, so
/// retries never multiply.
pub(super) async fn retry_until_deadline<F, Fut>(
    route: &mut Route<'_>,
    deadline: Deadline,
    headers: &HeaderMap,
    serve: F,
) -> Result<Response, QueryError>
where
    F: Fn(LocalPartition, Served) -> Fut,
    Fut: std::future::Future<Output = Result<Response, QueryError>>,
{
    loop {
        let result = route.run(&serve).await;
        let retriable = matches!(
            result,
            Err(QueryError::PartitionUnavailable { .. } | QueryError::LagExceeded { .. })
        );
        let pause = Duration::from_millis(100);
        if !retriable || headers.contains_key(FORWARDED) || deadline.remaining() < pause * 2 {
            return result;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Read from a local copy; with `wait_for`, poll until the order reaches that state.
async fn serve_local(
    st: &QueryState,
    local: LocalPartition,
    served: Served,
    id: &str,
    partition: i32,
    wait_for: Option<EventType>,
    deadline: Deadline,
) -> Result<Response, QueryError> {
    let reader = match local.readers.get(ORDERS_STORE) {
        Some(StoreReader::KeyValue(r)) => r.clone(),
        _ => return Err(QueryError::PartitionUnavailable { partition }),
    };
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
        let reached = match (&view, wait_for) {
            (Some(_), None) => true,
            (Some(v), Some(want)) => v.state == want,
            (None, _) => false,
        };
        let pause = Duration::from_millis(20);
        if reached || wait_for.is_none() || deadline.remaining() <= pause {
            return match (view, wait_for) {
                (Some(order), _) if reached => Ok(Json(OrderResponse {
                    order,
                    partition,
                    served_by: st.self_addr.clone(),
                    role: role_name(served.role).into(),
                    lag: served.shown_lag(),
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
                    served_by: st.self_addr.clone(),
                    role: role_name(served.role),
                    lag: served.shown_lag(),
                }),
            };
        }
        tokio::time::sleep(pause).await;
    }
}
