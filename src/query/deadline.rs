//! Every request's one deadline, and the guard every request passes before its handler.
//!
//! ```text
//! request ─▶ guard: body? URI too long? ─▶ 413 / 414
//!                   permit free? (not for /health, /metrics, /openapi.json, /, /cluster)
//!                                                                 ─▶ 503 overloaded (counted)
//!                   deadline = now + (timeout_ms ≤ 60 s, else --query-timeout-ms),
//!                              capped by the caller's X-Paystream-Deadline-Ms
//!            ─▶ handler (reads the Deadline; every forward spends what is left of it)
//!            ─▶ still running at deadline + GRACE? ─▶ 503 deadline_exceeded
//!            ─▶ latency by outcome and answering copy (queries, not probes or scrapes)
//! ```
//!
//! A query carrying a trace context (`traceparent` or `b3`) gets a server span when spans are
//! exported, and the guard puts that span's context in the request's headers, so forwards carry
//! it on (see `telemetry::traces`).
//!
//! A forward tells the peer how much of the budget is left ([`DEADLINE_HEADER`], minus
//! [`HOP_RESERVE`] for the answer's way back), so no hop outlives the request that caused it.

use std::time::Duration;

use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::Instrument;

use super::forward::request_trace;
use super::{QueryError, QueryState, MAX_WAIT};
use crate::telemetry::trace_context::{B3, TRACEPARENT};
use crate::telemetry::traces::{self, SPAN_TARGET};

/// Header carrying the milliseconds a forwarded request has left.
pub const DEADLINE_HEADER: &str = "x-paystream-deadline-ms";
/// Time kept back on each hop for the answer to travel back to the caller.
pub const HOP_RESERVE: Duration = Duration::from_millis(100);
/// How long past its deadline a handler may run before the guard answers for it.
pub const GRACE: Duration = Duration::from_millis(250);
/// Longest path plus query string accepted (ids are at most 256 bytes, a few parameters).
pub const MAX_URI_BYTES: usize = 2_048;
/// The API takes no request bodies; anything larger is refused unread.
pub const MAX_BODY_BYTES: u64 = 1_024;

/// When a request must be answered. Copied into every forward it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Deadline(Instant::now() + budget)
    }

    pub fn at(self) -> Instant {
        self.0
    }

    /// Time left (zero once passed).
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn expired(self) -> bool {
        Instant::now() >= self.0
    }

    /// What a forward may tell the next hop: the time left minus the way back, or `None` when
    /// too little is left to be worth a hop.
    pub fn for_next_hop(self) -> Option<Duration> {
        self.remaining()
            .checked_sub(HOP_RESERVE)
            .filter(|d| *d >= Duration::from_millis(10))
    }
}

/// The one parameter the guard reads (the handler validates all of them).
#[derive(Deserialize)]
struct Budget {
    timeout_ms: Option<u64>,
}

/// The deadline of a request: its `timeout_ms` (when valid) or the default, capped by what the
/// forwarding peer said is left.
pub(super) fn deadline_of(
    default: Duration,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Deadline {
    let asked = Query::<Budget>::try_from_uri(uri)
        .ok()
        .and_then(|Query(b)| b.timeout_ms)
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_WAIT)
        .unwrap_or(default);
    let from_peer = headers
        .get(DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    Deadline::after(from_peer.map_or(asked, |p| p.min(asked)))
}

/// Routes that are cheap, local and must answer under load (probes, scrapes).
fn unlimited(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/metrics" | "/openapi.json" | "/" | "/cluster"
    )
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>().unwrap_or(u64::MAX));
    length.is_some_and(|n| n > MAX_BODY_BYTES) || headers.contains_key(header::TRANSFER_ENCODING)
}

/// The middleware: bounds, concurrency limit, deadline (see the module diagram).
pub(super) async fn guard(State(st): State<QueryState>, mut req: Request, next: Next) -> Response {
    if has_body(req.headers()) {
        return QueryError::BodyTooLarge.into_response();
    }
    let uri_len = req.uri().path().len() + req.uri().query().map_or(0, str::len);
    if uri_len > MAX_URI_BYTES {
        return QueryError::UriTooLong.into_response();
    }
    let _permit = if unlimited(req.uri().path()) {
        None
    } else {
        match st.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                st.metrics
                    .queries_refused_overloaded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return QueryError::Overloaded.into_response();
            }
        }
    };
    let timed = _permit.is_some();
    let started = Instant::now();
    let deadline = deadline_of(st.limits.query_timeout, req.uri(), req.headers());
    req.extensions_mut().insert(deadline);
    let span = if timed { server_span(&mut req) } else { None };
    let run = next
        .run(req)
        .instrument(span.unwrap_or_else(tracing::Span::none));
    let response = match tokio::time::timeout_at(deadline.at() + GRACE, run).await {
        Ok(r) => r,
        Err(_) => QueryError::DeadlineExceeded.into_response(),
    };
    if timed {
        super::metrics::observe(&st, &response, started.elapsed());
    }
    response
}

/// A server span for a traced request (when spans are exported), its context written into the
/// request's `traceparent` and `b3` for the handlers' forwards.
fn server_span(req: &mut Request) -> Option<tracing::Span> {
    if !traces::exporting() {
        return None;
    }
    let parent = request_trace(req.headers())?;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "query",
        otel.name = %format_args!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = %route,
        url.path = %req.uri().path(),
    );
    traces::set_remote_parent(&span, &parent);
    if let Some(cx) = traces::context_of(&span) {
        for (name, value) in [(TRACEPARENT, cx.traceparent()), (B3, cx.b3())] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                req.headers_mut().insert(name, v);
            }
        }
    }
    Some(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_comes_from_timeout_ms_or_the_default_capped_by_the_peer() {
        let default = Duration::from_secs(5);
        let uri = |q: &str| q.parse::<axum::http::Uri>().unwrap();
        let none = HeaderMap::new();
        let near = |d: Deadline, want: Duration| {
            let left = d.remaining();
            assert!(
                left <= want && left + Duration::from_millis(500) > want,
                "{left:?} vs {want:?}"
            );
        };
        near(deadline_of(default, &uri("/orders/a"), &none), default);
        near(
            deadline_of(default, &uri("/orders/a?timeout_ms=20000"), &none),
            Duration::from_secs(20),
        );
        // Over the cap or not a number: the default (the handler refuses it with 400).
        near(
            deadline_of(default, &uri("/orders/a?timeout_ms=600000"), &none),
            default,
        );
        let mut peer = HeaderMap::new();
        peer.insert(DEADLINE_HEADER, "1200".parse().unwrap());
        let d = deadline_of(default, &uri("/orders/a?timeout_ms=20000"), &peer);
        near(d, Duration::from_millis(1200));
        assert!(d
            .for_next_hop()
            .is_some_and(|h| h < Duration::from_millis(1100)));
        let almost_gone = Deadline::after(HOP_RESERVE);
        assert_eq!(
            almost_gone.for_next_hop(),
            None,
            "too little left for another hop"
        );
    }
}
