//! The live dashboard: `GET /` is one static page (no build step, compiled into the binary) that
//! polls `GET /cluster` every second and draws the partition map, every instance's rates and
//! restores.
//!
//! `/cluster` is gathered here, not in the browser: this instance asks every instance in the
//! partition map for its `/health` (in parallel, one second each), so the page needs one origin
//! only (no CORS, works through a single port-forward). An instance that does not answer is
//! shown with the reason instead of being left out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::deadline::{Deadline, HOP_RESERVE};
use super::{health, owners, QueryState};

/// The page: HTML, CSS and script in one file.
const PAGE: &str = include_str!("dashboard.html");
/// Longest one instance may take to answer `/health` (less when the request's deadline is near).
const PEER_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) async fn get_index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

#[derive(Serialize)]
pub(super) struct PartitionRow {
    partition: i32,
    active: Option<String>,
    standbys: Vec<String>,
    /// The group's input lag of the partition (log end − committed), when read.
    lag: Option<i64>,
}

/// Body of `GET /cluster`.
#[derive(Serialize)]
pub(super) struct ClusterView {
    served_by: String,
    generation: i32,
    partition_count: i32,
    partitions: Vec<PartitionRow>,
    /// Every instance's `/health` body, or `{"unreachable": why}`.
    instances: BTreeMap<String, serde_json::Value>,
}

pub(super) async fn get_cluster(
    State(st): State<QueryState>,
    Extension(deadline): Extension<Deadline>,
) -> Json<ClusterView> {
    let lags = st.group_lag.get();
    let partitions: Vec<PartitionRow> = (0..st.partition_count)
        .map(|p| {
            let (active, standbys) = owners(&st, p);
            PartitionRow {
                partition: p,
                active,
                standbys,
                lag: lags.get(&p).copied(),
            }
        })
        .collect();
    let peers: BTreeSet<String> = partitions
        .iter()
        .flat_map(|r| r.active.iter().chain(&r.standbys))
        .filter(|e| !e.is_empty() && **e != st.self_addr)
        .cloned()
        .collect();
    let mut instances = BTreeMap::new();
    let own = serde_json::to_value(health(&st)).unwrap_or_default();
    instances.insert(st.self_addr.clone(), own);
    // Within the request's deadline, keeping the way back.
    let timeout = PEER_TIMEOUT.min(deadline.remaining().saturating_sub(HOP_RESERVE));
    let asks = peers
        .iter()
        .map(|peer| ask_health(&st.client, peer, timeout));
    for (peer, answer) in peers.iter().zip(futures::future::join_all(asks).await) {
        instances.insert(peer.clone(), answer);
    }
    Json(ClusterView {
        served_by: st.self_addr.clone(),
        generation: st.routing.generation(),
        partition_count: st.partition_count,
        partitions,
        instances,
    })
}

/// `peer`'s `/health` (200 or 503: both carry the body), or why there is none.
async fn ask_health(client: &reqwest::Client, peer: &str, timeout: Duration) -> serde_json::Value {
    let answer = client
        .get(format!("http://{peer}/health"))
        .timeout(timeout)
        .send()
        .await;
    match answer {
        Ok(r) => match r.json::<serde_json::Value>().await {
            Ok(v) => v,
            Err(e) => serde_json::json!({ "unreachable": format!("unreadable /health: {e}") }),
        },
        Err(e) => serde_json::json!({ "unreachable": e.to_string() }),
    }
}
