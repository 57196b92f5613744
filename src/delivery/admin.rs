//! The delivering instance's HTTP API: `/health` and `/metrics` for everyone, and, only when a
//! token is configured, `GET`/`PUT /admin/permits` behind `Authorization: Bearer <token>`.
//! Errors are JSON (`{"error": code, "message": ...}`) with a 4xx status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::permits::PermitsStatus;
use super::runtime::{Delivery, DeliveryStatus};

/// A refused admin request.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("no such route")]
    NotFound,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AdminError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        };
        let body = Json(json!({ "error": code, "message": self.to_string() }));
        let mut response = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The router; admin routes exist only when `delivery` has a token.
pub fn app(delivery: Arc<Delivery>) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    if delivery.admin_token().is_some() {
        router = router.route("/admin/permits", get(get_permits).put(put_permits));
    }
    router
        .fallback(|| async { AdminError::NotFound })
        .with_state(delivery)
}

async fn health(State(d): State<Arc<Delivery>>) -> Json<DeliveryStatus> {
    Json(d.status())
}

async fn metrics(State(d): State<Arc<Delivery>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        d.metrics_text(),
    )
}

/// The bearer token matches (compared without an early exit).
fn authorize(d: &Delivery, headers: &HeaderMap) -> Result<(), AdminError> {
    let want = d.admin_token().ok_or(AdminError::NotFound)?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AdminError::Unauthorized)?;
    let (a, b) = (want.as_bytes(), given.trim().as_bytes());
    let differ = a.len() != b.len() || a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) != 0;
    if differ {
        Err(AdminError::Unauthorized)
    } else {
        Ok(())
    }
}

async fn get_permits(
    State(d): State<Arc<Delivery>>,
    headers: HeaderMap,
) -> Result<Json<PermitsStatus>, AdminError> {
    authorize(&d, &headers)?;
    Ok(Json(d.permits().status()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPermits {
    permits: usize,
}

/// Sets the permits; a lowering answers once in-flight calls are below the new limit.
async fn put_permits(
    State(d): State<Arc<Delivery>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PermitsStatus>, AdminError> {
    authorize(&d, &headers)?;
    let SetPermits { permits } = serde_json::from_slice(&body)
        .map_err(|e| AdminError::BadRequest(format!("the body must be {{\"permits\": N}}: {e}")))?;
    d.permits()
        .set(permits)
        .await
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
    tracing::info!(permits, "permits changed");
    Ok(Json(d.permits().status()))
}
