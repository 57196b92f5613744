//! The query API's one error type: a stable code for clients (in both `error` and `code`),
//! details in `message`. Every 503 carries `Retry-After`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QueryError {
    #[error("invalid order id: {0}")]
    InvalidId(String),
    /// Said by one copy: `role` and `lag` tell whether a fresher copy might know the order (a
    /// standby behind its active has not seen the newest orders yet).
    #[error("order {id} not found (partition {partition}, {role} copy on {served_by})")]
    NotFound {
        id: String,
        partition: i32,
        served_by: String,
        role: &'static str,
        lag: i64,
    },
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
    #[error("too many queries in flight on this instance; retry shortly")]
    Overloaded,
    #[error("the request's deadline passed before any copy answered; retry, or give a longer timeout_ms")]
    DeadlineExceeded,
    #[error("{}", lag_message(*partition, *lag, *max_lag))]
    LagExceeded {
        partition: i32,
        /// The lag of the freshest standby that answered (`None`: unknown).
        lag: Option<i64>,
        max_lag: i64,
    },
    #[error("this API takes no request body")]
    BodyTooLarge,
    #[error(
        "path and query string are longer than {} bytes",
        super::deadline::MAX_URI_BYTES
    )]
    UriTooLong,
    #[error("method not allowed: every route answers GET only")]
    MethodNotAllowed,
    #[error("order {id} did not reach {want} in time (state: {})", state.unwrap_or("unknown order"))]
    WaitTimeout {
        id: String,
        want: &'static str,
        state: Option<&'static str>,
    },
}

fn lag_message(partition: i32, lag: Option<i64>, max_lag: i64) -> String {
    match lag {
        Some(lag) => format!(
            "partition {partition}: the active copy cannot answer and the freshest standby is {lag} records behind, more than max_lag={max_lag}; retry shortly or raise max_lag"
        ),
        None => format!(
            "partition {partition}: the active copy cannot answer and no standby knows its lag (max_lag={max_lag}); retry shortly"
        ),
    }
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
            QueryError::Overloaded => "overloaded",
            QueryError::DeadlineExceeded => "deadline_exceeded",
            QueryError::LagExceeded { .. } => "lag_exceeded",
            QueryError::BodyTooLarge => "body_too_large",
            QueryError::UriTooLong => "uri_too_long",
            QueryError::MethodNotAllowed => "method_not_allowed",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            QueryError::InvalidId(_) | QueryError::InvalidParam(_) => StatusCode::BAD_REQUEST,
            QueryError::WaitTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            QueryError::NotFound { .. }
            | QueryError::RouteNotFound
            | QueryError::TopologyDisabled(_) => StatusCode::NOT_FOUND,
            QueryError::PartitionUnavailable { .. }
            | QueryError::Store(_)
            | QueryError::Overloaded
            | QueryError::DeadlineExceeded
            | QueryError::LagExceeded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            QueryError::UriTooLong => StatusCode::URI_TOO_LONG,
            QueryError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
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
        let mut body = json!({
            "error": self.code(),
            "code": self.code(),
            "message": self.to_string(),
        });
        if let QueryError::LagExceeded {
            partition,
            lag,
            max_lag,
        } = &self
        {
            body["partition"] = json!(partition);
            body["lag"] = json!(lag);
            body["max_lag"] = json!(max_lag);
        }
        if let QueryError::NotFound {
            partition,
            served_by,
            role,
            lag,
            ..
        } = &self
        {
            body["partition"] = json!(partition);
            body["served_by"] = json!(served_by);
            body["role"] = json!(role);
            body["lag"] = json!(lag);
        }
        let answered = match &self {
            QueryError::NotFound { role, .. } => Some(*role),
            _ => None,
        }
        .map(super::metrics::AnsweredBy);
        let body = Json(body);
        let mut response = if status == StatusCode::SERVICE_UNAVAILABLE {
            (status, [(header::RETRY_AFTER, "1")], body).into_response()
        } else {
            (status, body).into_response()
        };
        if let Some(a) = answered {
            response.extensions_mut().insert(a);
        }
        response
    }
}
