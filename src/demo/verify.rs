//! What the demo checks over HTTP: the group is stable, and every order answers as the
//! generator's model says, on every instance.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use paystream_topology::order::StoredOrder;

use super::instances::Instances;
use super::DemoError;
use crate::query::OrderResponse;

/// Orders per batch of concurrent requests.
const BATCH: usize = 64;

/// What the answers showed.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// `served_by` of the answers: more than one means queries were routed.
    pub(crate) served_by: BTreeSet<String>,
    /// Answers by role (`active`, `standby`).
    pub(crate) roles: BTreeMap<String, usize>,
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

async fn json(client: &reqwest::Client, addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let r = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Polls until every live instance is ready and reports the same generation, in which every
/// partition has its active (and, with standbys, at least one standby) on a live instance.
pub(crate) async fn wait_stable(
    instances: &mut Instances,
    client: &reqwest::Client,
    with_standbys: bool,
    timeout: Duration,
) -> Result<i64, DemoError> {
    let deadline = Instant::now() + timeout;
    loop {
        instances.check_exited()?;
        let live: Vec<String> = instances
            .alive()
            .into_iter()
            .map(|i| instances.addr(i).to_string())
            .collect();
        let mut generations = BTreeSet::new();
        let mut ok = true;
        for ep in &live {
            let Ok(addr) = ep.parse::<SocketAddr>() else {
                continue;
            };
            let ready = json(client, addr, "/health")
                .await
                .is_some_and(|h| h["ready"] == true);
            let placed = match json(client, addr, "/metadata").await {
                Some(md) => {
                    generations.insert(md["generation"].as_i64().unwrap_or(-1));
                    all_placed(&md, &live, with_standbys)
                }
                None => false,
            };
            ok &= ready && placed;
        }
        if ok && generations.len() == 1 {
            return Ok(generations.into_iter().next().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            return Err(DemoError::Verify(format!(
                "the group did not become stable in {timeout:?} (generations {generations:?}); \
                 logs in {}",
                instances
                    .log_path(0)
                    .parent()
                    .map_or_else(String::new, |d| d.display().to_string())
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every partition of `/metadata` has its active (and a standby, if wanted) among `live`.
fn all_placed(md: &serde_json::Value, live: &[String], with_standbys: bool) -> bool {
    let is_live = |v: &serde_json::Value| v.as_str().is_some_and(|a| live.iter().any(|e| e == a));
    md["partitions"].as_array().is_some_and(|ps| {
        !ps.is_empty()
            && ps.iter().all(|p| {
                is_live(&p["active"])
                    && (!with_standbys
                        || p["standbys"]
                            .as_array()
                            .is_some_and(|s| s.iter().any(is_live)))
            })
    })
}

/// Polls until every order of `model` answers exactly as the model says on every address of
/// `addrs`; fails naming an example once `timeout` is over.
pub(crate) async fn all_orders_match(
    client: &reqwest::Client,
    addrs: &[SocketAddr],
    model: &BTreeMap<String, StoredOrder>,
    timeout: Duration,
) -> Result<Seen, DemoError> {
    let deadline = Instant::now() + timeout;
    let mut seen = Seen::default();
    let mut pending: Vec<(SocketAddr, &String)> = addrs
        .iter()
        .flat_map(|a| model.keys().map(move |id| (*a, id)))
        .collect();
    loop {
        let mut still = Vec::new();
        for chunk in pending.chunks(BATCH) {
            let answers =
                futures::future::join_all(chunk.iter().map(|(addr, id)| order(client, *addr, id)))
                    .await;
            for (&(addr, id), answer) in chunk.iter().zip(answers) {
                match answer {
                    Some(a) if model.get(id).is_some_and(|m| m.view == a.order) => {
                        seen.served_by.insert(a.served_by);
                        *seen.roles.entry(a.role).or_default() += 1;
                    }
                    _ => still.push((addr, id)),
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            let (addr, id) = pending[0];
            return Err(DemoError::Verify(format!(
                "{} answers still differ from the model after {timeout:?}, e.g. order {id} on {addr}",
                pending.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn order(client: &reqwest::Client, addr: SocketAddr, id: &str) -> Option<OrderResponse> {
    let r = client
        .get(format!("http://{addr}/orders/{id}"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placed_means_a_live_active_and_with_standbys_a_live_standby() {
        let live = vec!["a:1".to_owned(), "b:2".to_owned()];
        let md = |active: &str, standbys: &[&str]| serde_json::json!({"partitions": [{"partition": 0, "active": active, "standbys": standbys}]});
        assert!(all_placed(&md("a:1", &["b:2"]), &live, true));
        assert!(all_placed(&md("a:1", &[]), &live, false));
        assert!(!all_placed(&md("a:1", &[]), &live, true));
        assert!(!all_placed(&md("c:3", &["b:2"]), &live, true));
        assert!(!all_placed(&md("a:1", &["c:3"]), &live, true));
        assert!(!all_placed(
            &serde_json::json!({"partitions": []}),
            &live,
            false
        ));
    }
}
