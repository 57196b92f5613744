//! Stores open safely (issue 10, part 4), against a real broker and real RocksDB: a long-poll
//! holding a store's reader while its partition is revoked and assigned back costs no data and
//! no instance.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use paystream_topology::partitioner::partition_for_key;

const PARTITIONS: i32 = 12;
const MARKER: &str = "left-by-the-test";

/// One order id per partition.
fn one_order_per_partition() -> BTreeMap<i32, String> {
    let mut orders = BTreeMap::new();
    for i in 0.. {
        let id = format!("O-LP-{i:06}");
        orders
            .entry(partition_for_key(id.as_bytes(), PARTITIONS))
            .or_insert(id);
        if orders.len() == PARTITIONS as usize {
            return orders;
        }
    }
    unreachable!()
}

async fn send_events(topic: &str, orders: &BTreeMap<i32, String>, kind: &str) {
    common::send_order_events(&bootstrap(), topic, orders.values(), kind).await;
}

/// Every store directory of the instance whose state dir is `state`.
fn store_dirs(state: &Path, app: &str) -> Vec<PathBuf> {
    let subdirs = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect()
    };
    // `<state>/<app>/<partition>/<store>` (next to files such as `process-id`).
    subdirs(&state.join(app))
        .iter()
        .flat_map(|p| subdirs(p))
        .collect()
}

async fn get_order(client: &reqwest::Client, http: &str, id: &str, query: &str) -> (u16, String) {
    match client
        .get(format!("http://{http}/orders/{id}{query}"))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// `paystream_queries_in_flight` of the instance at `http` (0 when it cannot be read).
async fn queries_in_flight(client: &reqwest::Client, http: &str) -> usize {
    let Ok(r) = client.get(format!("http://{http}/metrics")).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("paystream_queries_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn active_count(h: &serde_json::Value) -> usize {
    h["active_partitions"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_across_revoke_and_reassign_wipes_no_store_and_stops_no_instance() {
    let work = tempfile::tempdir().unwrap();
    let topic = unique("longpoll");
    let app = unique("longpoll");
    create_topic(&topic, PARTITIONS).await;
    // No standbys: a revoked partition's task is closed, and reopened from disk when it comes
    // back (a standby would keep the store open and never reopen it).
    let extra = ["--standby-replicas", "0", "--session-timeout-ms", "6000"];
    let state_a = work.path().join("a");
    let mut a = Proc::run(&app, &topic, &state_a, free_port(), &extra);
    a.wait_health("a ready", Duration::from_secs(120), |h| {
        h["ready"] == true && active_count(h) == PARTITIONS as usize
    })
    .await;
    let orders = one_order_per_partition();
    send_events(&topic, &orders, "APPROVAL_REQUESTED").await;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in orders.values() {
        while get_order(&client, &a.http, id, "").await.0 != 200 {
            a.assert_alive();
            assert!(Instant::now() < deadline, "{id} never became queryable");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for dir in store_dirs(&state_a, &app) {
        std::fs::write(dir.join(MARKER), b"a wipe removes this").unwrap();
    }

    // One long-poll per partition on `a`, each holding its partition's reader.
    let polls: Vec<_> = orders
        .values()
        .map(|id| {
            let (client, http, id) = (client.clone(), a.http.clone(), id.clone());
            tokio::spawn(async move {
                let q = "?wait_for=APPROVAL_COMPLETED&timeout_ms=60000";
                (id.clone(), get_order(&client, &http, &id, q).await)
            })
        })
        .collect();
    // Every long-poll is being answered by `a` (holding its partition's reader) before anything
    // moves: otherwise a late one could find its partition already gone and prove nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let in_flight = queries_in_flight(&client, &a.http).await;
        if in_flight >= orders.len() {
            break;
        }
        a.assert_alive();
        assert!(
            Instant::now() < deadline,
            "only {in_flight} of {} long-polls reached a",
            orders.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Revoke: a second instance takes some actives (after warming up copies of them).
    let mut b = Proc::run(&app, &topic, &work.path().join("b"), free_port(), &extra);
    // The revoke is real only once `b` runs actives and `a` is running again without them: `a`
    // merely rebalancing (every copy shown as a standby meanwhile) or only warming `b` up moves
    // nothing, and the reopen below would never happen.
    b.wait_health("b takes actives", Duration::from_secs(120), |h| {
        h["ready"] == true && active_count(h) > 0
    })
    .await;
    a.wait_health("a gives partitions away", Duration::from_secs(120), |h| {
        h["ready"] == true && active_count(h) < PARTITIONS as usize
    })
    .await;
    // Reassign: `b` leaves, `a` reopens the revoked partitions while the long-polls still
    // hold their readers.
    b.terminate();
    a.wait_health(
        "a owns every partition again",
        Duration::from_secs(120),
        |h| h["ready"] == true && active_count(h) == PARTITIONS as usize,
    )
    .await;
    send_events(&topic, &orders, "APPROVAL_COMPLETED").await;

    // Every long-poll answered (seeing the completion, or its own timeout); none failed.
    for poll in polls {
        let (id, (status, body)) = poll.await.unwrap();
        assert!(
            status == 200 && body.contains("APPROVAL_COMPLETED")
                || status == 408 && body.contains("wait_timeout"),
            "long-poll of {id}: {status} {body}"
        );
    }
    // The state is intact and processing went on: every order completed, served by `a`.
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in orders.values() {
        loop {
            let (status, body) = get_order(&client, &a.http, id, "").await;
            if status == 200 && body.contains("\"state\":\"APPROVAL_COMPLETED\"") {
                break;
            }
            a.assert_alive();
            assert!(Instant::now() < deadline, "{id}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    a.assert_alive();
    let log = std::fs::read_to_string(&a.log).unwrap();
    for dir in store_dirs(&state_a, &app) {
        assert!(
            dir.join(MARKER).exists(),
            "store {} was wiped; log:\n{}",
            dir.display(),
            a.log_tail()
        );
    }
    assert!(!log.contains("wiping it"), "{}", a.log_tail());
    assert!(
        log.contains("reopened a store still open for readers"),
        "no partition was reopened while a long-poll held it: the test proved nothing; log:\n{}",
        a.log_tail()
    );
}
