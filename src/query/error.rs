//! The query API's one error type: a stable `error` code for clients, details in `message`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QueryError {
    #[error("invalid order id: {0}")]
    InvalidId(String),
    #[error("order {id} not found (partition {partition})")]
    NotFound { id: String, partition: i32 },
    #[error("partition {partition} is not being served right now (starting, restoring or moving); retry shortly")]
    PartitionUnavailable { partition: i32 },
    #[error("store read failed: {0}")]
    Store(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("no such route")]
    RouteNotFound,
    #[error("invalid query parameter: {0}")]
    InvalidParam(String),
    #[error("the {0} topology is switched off on this instance")]
    TopologyDisabled(&'static str),
    #[error("order {id} did not reach {want} in time (state: {})", state.unwrap_or("unknown order"))]
    WaitTimeout {
        id: String,
        want: &'static str,
        state: Option<&'static str>,
    },
}

impl QueryError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::InvalidId(_) => "invalid_order_id",
            QueryError::NotFound { .. } => "order_not_found",
            QueryError::PartitionUnavailable { .. } => "partition_unavailable",
            QueryError::Store(_) => "store_unavailable",
            QueryError::Internal(_) => "internal_error",
            QueryError::RouteNotFound => "route_not_found",
            QueryError::InvalidParam(_) => "invalid_parameter",
            QueryError::TopologyDisabled(_) => "topology_disabled",
            QueryError::WaitTimeout { .. } => "wait_timeout",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            QueryError::InvalidId(_) | QueryError::InvalidParam(_) => StatusCode::BAD_REQUEST,
            QueryError::WaitTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            QueryError::NotFound { .. }
            | QueryError::RouteNotFound
            | QueryError::TopologyDisabled(_) => StatusCode::NOT_FOUND,
            QueryError::PartitionUnavailable { .. } | QueryError::Store(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = self.status();
        // 503s are expected while partitions move; only real faults are worth a warning.
        if status == StatusCode::INTERNAL_SERVER_ERROR || matches!(self, QueryError::Store(_)) {
            tracing::warn!(error = %self, "query failed");
        } else {
            tracing::debug!(error = %self, "query refused");
        }
        let body = Json(json!({ "error": self.code(), "message": self.to_string() }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            (status, [(header::RETRY_AFTER, "1")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}
