//! Forwarding a query one hop to the instance that holds the partition.
//!
//! Loop guard: a forwarded request carries [`FORWARDED`]; an instance answers such a request
//! from its own stores or refuses it, and never forwards it again.
//!
//! Time: a hop never outlives its request. It may take `--peer-timeout-ms` (a long-poll: what is
//! left of the deadline), never more than the request has left (half of it when another copy
//! could answer instead, so a paused active leaves time for its standby), and tells the peer its
//! share in [`DEADLINE_HEADER`] so the peer answers (408, 503) before the caller stops
//! listening.

use crate::telemetry::trace_context::{TraceContext, B3, TRACEPARENT};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

use super::deadline::{Deadline, DEADLINE_HEADER, HOP_RESERVE};

/// Header marking a forwarded query (value: the forwarding instance).
pub const FORWARDED: &str = "x-paystream-forwarded";
/// Header allowing the receiver of a forwarded query to answer from a standby copy.
pub const ALLOW_STANDBY: &str = "x-paystream-allow-standby";
/// Largest answer body read from a peer (an `/alerts` page of every partition fits).
const MAX_PEER_BODY: usize = 64 << 20;

/// Outcome of a forwarding attempt.
pub enum Forwarded {
    /// The peer gave an answer worth passing on (200, 404, 400, 408).
    Answer(Response),
    /// The peer is alive but its copy cannot answer (503); `code` from its JSON body, and the
    /// lag it reported with `lag_exceeded`. Worth asking again later in the same request.
    Refused {
        code: Option<String>,
        lag: Option<i64>,
    },
    /// Unreachable, too slow, or no time left: not worth asking again in this request.
    Unreachable(String),
}

/// One request's forwarding context: who we are, the request's deadline, the per-peer bound.
#[derive(Clone, Copy)]
pub struct Hop<'a> {
    pub client: &'a reqwest::Client,
    pub self_addr: &'a str,
    pub deadline: Deadline,
    /// Longest one peer may take (ignored for long-polls, which may take what is left).
    pub peer_timeout: Duration,
    pub long_poll: bool,
    /// Another copy could answer if this peer does not: leave it half of what is left.
    pub fallback: bool,
    /// The request's trace context (its server span's, when spans are exported).
    pub trace: Option<TraceContext>,
}

/// The trace context a request carries (`traceparent`, else `b3`); the guard has replaced it by
/// its own span's when spans are exported.
pub fn request_trace(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
    TraceContext::from_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

impl Hop<'_> {
    /// How long this hop may take, or `None` when too little is left.
    fn budget(&self) -> Option<Duration> {
        // Our own answer must reach our caller by the deadline too.
        let left = self.deadline.remaining().saturating_sub(HOP_RESERVE);
        let t = match (self.long_poll, self.fallback) {
            (true, _) => left,
            (false, false) => left.min(self.peer_timeout),
            (false, true) => left.min(self.peer_timeout).min(left / 2),
        };
        (t >= HOP_RESERVE + Duration::from_millis(10)).then_some(t)
    }
}

/// Forward `GET {path_and_query}` to `endpoint`, one hop, within the request's deadline.
pub async fn forward(
    hop: &Hop<'_>,
    endpoint: &str,
    path_and_query: &str,
    allow_standby: bool,
) -> Forwarded {
    let Some(budget) = hop.budget() else {
        return Forwarded::Unreachable(format!("{endpoint}: no time left in the deadline"));
    };
    let peer_ms = (budget - HOP_RESERVE).as_millis().to_string();
    let mut req = hop
        .client
        .get(format!("http://{endpoint}{path_and_query}"))
        .header(FORWARDED, hop.self_addr)
        .header(DEADLINE_HEADER, peer_ms)
        .timeout(budget);
    if allow_standby {
        req = req.header(ALLOW_STANDBY, "1");
    }
    if let Some(cx) = hop.trace {
        req = req
            .header(TRACEPARENT, cx.traceparent())
            .header(B3, cx.b3());
    }
    // reqwest's timeout covers connect, headers and body; this one also covers anything else.
    match tokio::time::timeout(budget, exchange(req, endpoint)).await {
        Ok(f) => f,
        Err(_) => Forwarded::Unreachable(format!("{endpoint}: no answer within {budget:?}")),
    }
}

async fn exchange(req: reqwest::RequestBuilder, endpoint: &str) -> Forwarded {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Forwarded::Unreachable(format!("{endpoint}: {e}")),
    };
    let status = resp.status().as_u16();
    let bytes = match read_bounded(resp).await {
        Ok(b) => b,
        Err(e) => return Forwarded::Unreachable(format!("{endpoint}: {e}")),
    };
    if !matches!(status, 200 | 400 | 404 | 408) {
        let body: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        let field = |k: &str| body.as_ref().and_then(|b| b.get(k).cloned());
        return Forwarded::Refused {
            code: field("code").and_then(|c| c.as_str().map(str::to_owned)),
            lag: field("lag").and_then(|l| l.as_i64()),
        };
    }
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Forwarded::Answer(out)
}

/// The body, refused once it grows past [`MAX_PEER_BODY`].
async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_PEER_BODY {
            return Err(format!("answer larger than {MAX_PEER_BODY} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
