//! Handler tests: `app()` driven with `oneshot`, no socket, over a real RocksDB store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use paystream_state::rocks::RocksDbStore;
use paystream_state::store::KeyValueStore;
use paystream_topology::order::{encode_order, EventType, OrderView, StoredOrder, ORDERS_STORE};
use paystream_topology::partition_for_key;
use tower::ServiceExt;

use super::forward::FORWARDED;
use super::{app, QueryState};
use crate::cluster::routing::RoutingTable;
use crate::coordination::assignor::PartitionOwners;
use crate::engine::{LocalPartition, LocalStores, Role};
use crate::engine::{SharedStatus, Status};
use crate::telemetry::Metrics;

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) state: QueryState,
}

fn view(id: &str, state: EventType) -> StoredOrder {
    StoredOrder {
        view: OrderView {
            order_id: id.into(),
            state,
            amount: 12_000,
            currency: "KRW".into(),
            member_id: "M-42".into(),
            created_ts: 1,
            updated_ts: 2,
            events: 2,
            last_event_id: "e2".into(),
        },
        seen: vec!["e1".into(), "e2".into()],
    }
}

/// One instance holding partition `p` of `O-000001` with `role`, and the order in it.
pub(super) fn fixture(role: Role, with_order: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let p = partition_for_key(b"O-000001", 12);
    let mut store = RocksDbStore::open(dir.path(), ORDERS_STORE).unwrap();
    if with_order {
        store
            .put(
                b"O-000001",
                &encode_order(&view("O-000001", EventType::ApprovalCompleted)).unwrap(),
            )
            .unwrap();
    }
    let metrics = Metrics::new();
    let local = LocalStores::new();
    local.insert(
        p,
        LocalPartition {
            role,
            readers: HashMap::from([(
                ORDERS_STORE.to_owned(),
                crate::engine::store::StoreReader::KeyValue(store.reader()),
            )]),
            metrics: metrics.task(p),
        },
    );
    let status = Arc::new(SharedStatus::default());
    status.set(Status::Running);
    Fixture {
        _dir: dir,
        state: QueryState {
            local,
            partition_count: 12,
            self_addr: "127.0.0.1:1".into(),
            metrics,
            status,
            routing: Arc::new(RoutingTable::default()),
            group_lag: Arc::default(),
            liveness: crate::engine::Liveness::always(),
            client: reqwest::Client::new(),
            limits: crate::config::QuerySettings::default(),
            permits: QueryState::permits(&crate::config::QuerySettings::default()),
            suspects: Default::default(),
        },
    }
}

pub(super) async fn get(
    state: &QueryState,
    uri: &str,
    forwarded: bool,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().uri(uri);
    if forwarded {
        req = req.header(FORWARDED, "127.0.0.1:2");
    }
    let resp = app(state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test]
async fn an_order_on_a_local_active_is_served_with_its_partition_and_role() {
    let f = fixture(Role::Active, true);
    let (status, body) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["order"]["order_id"], "O-000001");
    assert_eq!(body["order"]["state"], "APPROVAL_COMPLETED");
    assert_eq!(body["order"]["events"], 2);
    assert_eq!(body["partition"], partition_for_key(b"O-000001", 12));
    assert_eq!(body["role"], "active");
    assert_eq!(body["served_by"], "127.0.0.1:1");
}

#[tokio::test]
async fn unknown_orders_bad_ids_and_bad_parameters_get_json_errors() {
    let f = fixture(Role::Active, false);
    let (s, b) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("order_not_found"))
    );
    let (s, b) = get(&f.state, "/orders/%01bad", false).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_order_id"))
    );
    let long = "x".repeat(300);
    let (s, b) = get(&f.state, &format!("/orders/{long}"), false).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_order_id"))
    );
    let (s, b) = get(&f.state, "/orders/O-000001?consistency=maybe", false).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_parameter"))
    );
    let (s, b) = get(&f.state, "/orders/O-000001?wait_for=SHIPPED", false).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_parameter"))
    );
    let (s, b) = get(&f.state, "/nope", false).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("route_not_found"))
    );
}

#[tokio::test]
async fn a_partition_held_nowhere_is_503_with_retry_after() {
    let f = fixture(Role::Active, true);
    // O-000002 lives on another partition, which no one serves.
    let p2 = partition_for_key(b"O-000002", 12);
    assert_ne!(p2, partition_for_key(b"O-000001", 12));
    let resp = app(f.state.clone())
        .oneshot(
            Request::builder()
                .uri("/orders/O-000002")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
}

#[tokio::test]
async fn standby_copies_answer_unless_consistency_active_and_forwarded_requests_are_not_forwarded_again(
) {
    let f = fixture(Role::Standby, true);
    let p = partition_for_key(b"O-000001", 12);
    // The partition map names a dead active elsewhere.
    f.state.routing.update(
        3,
        BTreeMap::from([(
            p,
            PartitionOwners {
                active: "127.0.0.1:9".into(),
                standbys: vec!["127.0.0.1:1".into()],
            },
        )]),
    );
    let (s, b) = get(&f.state, "/orders/O-000001", false).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["role"], "standby");
    let (s, b) = get(&f.state, "/orders/O-000001?consistency=active", false).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("partition_unavailable")
        )
    );
    // A forwarded request without permission to use a standby is refused, never re-forwarded.
    let (s, _) = get(&f.state, "/orders/O-000001", true).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn wait_for_returns_when_reached_and_times_out_with_408_otherwise() {
    let f = fixture(Role::Active, true);
    let (s, b) = get(
        &f.state,
        "/orders/O-000001?wait_for=APPROVAL_COMPLETED&timeout_ms=100",
        false,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = get(
        &f.state,
        "/orders/O-000001?wait_for=CANCELLED&timeout_ms=100",
        false,
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::REQUEST_TIMEOUT, Some("wait_timeout"))
    );
}

#[tokio::test]
async fn metadata_location_and_health_describe_the_instance() {
    let f = fixture(Role::Active, true);
    let p = partition_for_key(b"O-000001", 12);
    f.state.routing.update(
        5,
        BTreeMap::from([(
            p,
            PartitionOwners {
                active: "127.0.0.1:1".into(),
                standbys: vec!["127.0.0.1:7".into()],
            },
        )]),
    );
    let (s, md) = get(&f.state, "/metadata", false).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(md["partition_count"], 12);
    assert_eq!(md["generation"], 5);
    assert_eq!(md["partitions"][p as usize]["active"], "127.0.0.1:1");
    assert_eq!(md["partitions"][p as usize]["standbys"][0], "127.0.0.1:7");
    let (_, loc) = get(&f.state, "/orders/O-000001/location", false).await;
    assert_eq!(loc["partition"], p);
    assert_eq!(loc["active"], "127.0.0.1:1");
    let (s, h) = get(&f.state, "/health", false).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["active_partitions"][0], p);
    f.state.status.set(Status::Restoring);
    let (s, h) = get(&f.state, "/health", false).await;
    assert_eq!(
        (s, h["ready"].as_bool()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(false))
    );
}
