//! Forwarding a query one hop to the instance that holds the partition.
//!
//! Loop guard: a forwarded request carries [`FORWARDED`]; an instance answers such a request
//! from its own stores or refuses it, and never forwards it again.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

/// Header marking a forwarded query (value: the forwarding instance).
pub const FORWARDED: &str = "x-paystream-forwarded";
/// Header allowing the receiver of a forwarded query to answer from a standby copy.
pub const ALLOW_STANDBY: &str = "x-paystream-allow-standby";

/// Outcome of a forwarding attempt.
pub enum Forwarded {
    /// The remote gave an answer worth passing on (200, 404, 400, 408).
    Answer(Response),
    /// The remote could not answer (unreachable, timed out, 503): try elsewhere.
    Unavailable(String),
}

/// Forward `GET {path_and_query}` to `endpoint`, one hop.
pub async fn forward(
    client: &reqwest::Client,
    endpoint: &str,
    path_and_query: &str,
    self_addr: &str,
    allow_standby: bool,
    timeout: Duration,
) -> Forwarded {
    let mut req = client
        .get(format!("http://{endpoint}{path_and_query}"))
        .header(FORWARDED, self_addr)
        .timeout(timeout);
    if allow_standby {
        req = req.header(ALLOW_STANDBY, "1");
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Forwarded::Unavailable(format!("{endpoint}: {e}")),
    };
    let status = resp.status().as_u16();
    if !matches!(status, 200 | 400 | 404 | 408) {
        return Forwarded::Unavailable(format!("{endpoint} answered {status}"));
    }
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Forwarded::Unavailable(format!("{endpoint}: {e}")),
    };
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Forwarded::Answer(out)
}
