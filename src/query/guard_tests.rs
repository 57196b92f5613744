//! The query server nobody can hang: deadlines shared by forwards, a hung peer asked once, the
//! concurrency limit, bounded input, honest roles and `max_lag`. `app()` driven with `oneshot`;
//! peers are loopback sockets that accept and never answer (a stopped process looks the same).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use paystream_topology::partition_for_key;
use tower::ServiceExt;

use super::tests::{fixture, get};
use super::QueryState;
use crate::config::QuerySettings;
use crate::coordination::assignor::PartitionOwners;
use crate::engine::{Role, Status};

/// A peer that accepts connections and never answers; counts the connections.
async fn hung_peer() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (addr, accepted)
}

fn name_active(state: &QueryState, active: &str) {
    let p = partition_for_key(b"O-000001", 12);
    state.routing.update(
        3,
        BTreeMap::from([(
            p,
            PartitionOwners {
                active: active.into(),
                standbys: vec![state.self_addr.clone()],
            },
        )]),
    );
}

fn limits(timeout_ms: u64, peer_ms: u64) -> QuerySettings {
    QuerySettings {
        query_timeout: Duration::from_millis(timeout_ms),
        peer_timeout: Duration::from_millis(peer_ms),
        ..QuerySettings::default()
    }
}

/// Slack over a deadline for an answer to arrive (scheduling on a loaded 2-core machine).
const SLACK: Duration = Duration::from_millis(750);

#[tokio::test]
async fn a_hung_active_is_asked_once_and_answers_come_within_the_deadline() {
    let mut f = fixture(Role::Standby, true);
    f.state.limits = limits(1_500, 300);
    let (peer, accepted) = hung_peer().await;
    name_active(&f.state, &peer);
    let deadline = f.state.limits.query_timeout;

    let started = Instant::now();
    let (s, b) = get(&f.state, "/orders/O-000001", false).await;
    assert!(
        started.elapsed() < deadline + SLACK,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (s, b["role"].as_str()),
        (StatusCode::OK, Some("standby")),
        "{b}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the hung active is asked once"
    );

    let started = Instant::now();
    let (s, b) = get(&f.state, "/orders/O-000001?consistency=active", false).await;
    assert!(
        started.elapsed() < deadline + SLACK,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (s, b["code"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("partition_unavailable")
        )
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "not asked again: it failed to answer the last request (a suspect for 5 s)"
    );

    // A long-poll forwarded to the hung active spends its own timeout_ms, and no more.
    let started = Instant::now();
    let (s, b) = get(
        &f.state,
        "/orders/O-000001?wait_for=CANCELLED&timeout_ms=800&consistency=active",
        false,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(800) + SLACK,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
}

#[tokio::test]
async fn after_a_hung_active_failed_once_the_next_queries_skip_it_for_a_while() {
    let mut f = fixture(Role::Standby, true);
    f.state.limits = limits(5_000, 1_000);
    let (peer, accepted) = hung_peer().await;
    name_active(&f.state, &peer);
    let (s, _) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The next queries do not wait out the peer timeout again: the local standby answers.
    for _ in 0..5 {
        let started = Instant::now();
        let (s, b) = get(&f.state, "/orders/O-000001", false).await;
        assert_eq!((s, b["role"].as_str()), (StatusCode::OK, Some("standby")));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the suspect was not asked again"
    );
    // consistency=active waits (within its deadline) for an active other than the suspect,
    // never on the suspect itself: 503 by its deadline.
    let started = Instant::now();
    let (s, _) = get(
        &f.state,
        "/orders/O-000001?consistency=active&timeout_ms=300",
        false,
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(300) + SLACK,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_forwarded_long_poll_ends_within_the_budget_its_caller_sent() {
    let f = fixture(Role::Active, true);
    let req = Request::builder()
        .uri("/orders/O-000001?wait_for=CANCELLED&timeout_ms=60000")
        .header(super::forward::FORWARDED, "127.0.0.1:2")
        .header(super::deadline::DEADLINE_HEADER, "300")
        .body(Body::empty())
        .unwrap();
    let started = Instant::now();
    let resp = super::app(f.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() < Duration::from_millis(300) + SLACK);
}

#[tokio::test]
async fn a_full_instance_refuses_at_once_with_503_retry_after_and_json() {
    let mut f = fixture(Role::Active, true);
    f.state.limits.max_concurrent_queries = 1;
    f.state.permits = QueryState::permits(&f.state.limits);
    let held = f.state.permits.clone().try_acquire_owned().unwrap();
    let resp = super::app(f.state.clone())
        .oneshot(
            Request::get("/orders/O-000001")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let (_, b) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(b["code"], "overloaded");
    let (s, _) = get(&f.state, "/health", false).await;
    assert_eq!(s, StatusCode::OK, "probes are not counted");
    drop(held);
    let (s, _) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn oversized_and_malformed_input_gets_4xx_json_with_a_code() {
    let f = fixture(Role::Active, true);
    let long = format!("/orders/O-000001?consistency={}", "a".repeat(3_000));
    for (uri, status, code) in [
        (long.as_str(), StatusCode::URI_TOO_LONG, "uri_too_long"),
        (
            "/orders/O-000001?timeout_ms=600000",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        ),
        (
            "/orders/O-000001?timeout_ms=-1",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        ),
        (
            "/orders/O-000001?max_lag=-1",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        ),
        (
            "/orders/O-000001?max_lag=1&max_lag=2",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        ),
        (
            "/orders/O-000001?bogus=1",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        ),
        (
            "/sms/O-000001?wait_for=CANCELLED",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        ),
    ] {
        let (s, b) = get(&f.state, uri, false).await;
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{uri}: {b}");
    }
    let post = Request::post("/orders/O-000001")
        .body(Body::empty())
        .unwrap();
    let resp = super::app(f.state.clone()).oneshot(post).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let with_body = Request::get("/orders/O-000001")
        .header("content-length", "5000")
        .body(Body::from(vec![b'x'; 5000]))
        .unwrap();
    let resp = super::app(f.state.clone())
        .oneshot(with_body)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn max_lag_refuses_a_standby_too_far_behind_or_of_unknown_lag() {
    let f = fixture(Role::Standby, true);
    // The active is gone (nothing listens there): only the local standby can answer.
    name_active(&f.state, "127.0.0.1:9");
    let p = partition_for_key(b"O-000001", 12);
    let lag = &f.state.metrics.task(p).lag;
    lag.store(50, Ordering::Relaxed);
    let (s, b) = get(&f.state, "/orders/O-000001?max_lag=100", false).await;
    assert_eq!(
        (s, b["role"].as_str(), b["lag"].as_i64()),
        (StatusCode::OK, Some("standby"), Some(50))
    );
    let (s, b) = get(&f.state, "/orders/O-000001?max_lag=10", false).await;
    assert_eq!(
        (
            s,
            b["code"].as_str(),
            b["lag"].as_i64(),
            b["max_lag"].as_i64()
        ),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("lag_exceeded"),
            Some(50),
            Some(10)
        ),
        "{b}"
    );
    lag.store(-1, Ordering::Relaxed);
    let (s, b) = get(&f.state, "/orders/O-000001?max_lag=1000000", false).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("lag_exceeded"))
    );
    let (s, b) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(
        (s, b["lag"].as_i64()),
        (StatusCode::OK, Some(-1)),
        "unknown lag shows as -1"
    );
}

/// O-000001 is answered by a standby of unknown lag, and refused under `consistency=active`.
async fn answers_as_standby_of_unknown_lag(state: &QueryState) {
    let (s, b) = get(state, "/orders/O-000001", false).await;
    assert_eq!(
        (s, b["role"].as_str(), b["lag"].as_i64()),
        (StatusCode::OK, Some("standby"), Some(-1)),
        "{b}"
    );
    let (s, _) = get(state, "/orders/O-000001?consistency=active", false).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_copy_whose_partition_moved_away_or_whose_instance_is_fenced_answers_as_standby() {
    let f = fixture(Role::Active, true);
    let p = partition_for_key(b"O-000001", 12);
    f.state.metrics.task(p).lag.store(0, Ordering::Relaxed);
    let (_, b) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(b["role"], "active");

    // The group's new map names another instance (unreachable here) before the engine let go.
    name_active(&f.state, "127.0.0.1:9");
    answers_as_standby_of_unknown_lag(&f.state).await;

    // Named active again, but the last commit was fenced.
    name_active(&f.state, &f.state.self_addr.clone());
    f.state.status.set(Status::Fenced);
    let (_, b) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(b["role"], "standby");
    let (_, h) = get(&f.state, "/health", false).await;
    assert_eq!(h["active_partitions"], serde_json::json!([]), "{h}");
    assert_eq!(h["standby_partitions"], serde_json::json!([p]));
    f.state.status.set(Status::Running);
    let (_, b) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(b["role"], "active");
}

#[tokio::test]
async fn an_active_answers_once_its_commit_ended_and_as_standby_while_one_runs_too_long() {
    let f = fixture(Role::Active, true);
    let p = partition_for_key(b"O-000001", 12);
    f.state.metrics.task(p).lag.store(0, Ordering::Relaxed);
    let now = crate::engine::now_ms();
    // A commit in flight may already be visible in Kafka while the local stores do not hold
    // its batch yet: the answer waits for it to end, then comes from the active.
    f.state.status.commit_started(now);
    f.state.status.commit_ending();
    let state = f.state.clone();
    let asked = tokio::spawn(async move { get(&state, "/orders/O-000001", false).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!asked.is_finished(), "the answer waits for the commit");
    f.state.status.commit_ended();
    let (_, b) = asked.await.expect("join");
    assert_eq!(b["role"], "active", "{b}");
    // One running past the limit may be visible in Kafka before it is in the local stores.
    f.state
        .status
        .commit_started(now - super::route::COMMIT_IN_DOUBT_MS - 500);
    answers_as_standby_of_unknown_lag(&f.state).await;
    f.state.status.commit_ended();
    let (_, b) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(b["role"], "active");
}
