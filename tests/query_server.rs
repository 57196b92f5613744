//! The query server against a real broker: a peer stopped with SIGSTOP (alive to the kernel,
//! which still accepts its connections, silent to everyone) must not hang the queries routed to
//! it. Each answer arrives within its deadline: from a standby copy, from the new active once
//! the group moved the partition, or a 503 JSON error; never later.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use paystream::produce::GeneratorOptions;
use paystream_topology::partition_for_key;

/// Resumes a stopped child even when the test fails (SIGKILL in `Proc::drop` works on stopped
/// processes, but a stopped process left behind by a panic would hold its ports until then).
struct Resume<'a>(&'a Proc);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.child.id().to_string()])
            .status();
    }
}

async fn partitions(p: &Proc, field: &str) -> BTreeSet<i32> {
    p.health()
        .await
        .and_then(|h| {
            h[field].as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_i64())
                    .map(|v| v as i32)
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Per partition, the lag `GET /metadata` reports for `p`'s local copy (None: no copy).
async fn local_lags(p: &Proc) -> BTreeMap<i32, Option<i64>> {
    let Ok(r) = reqwest::get(format!("http://{}/metadata", p.http)).await else {
        return BTreeMap::new();
    };
    let md: serde_json::Value = r.json().await.unwrap_or_default();
    md["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|x| {
                    (
                        x["partition"].as_i64().unwrap_or(-1) as i32,
                        x["lag"].as_i64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One query's outcome, with how long it took.
struct Outcome {
    url: String,
    status: u16,
    body: serde_json::Value,
    took: Duration,
}

async fn query(client: &reqwest::Client, url: String) -> Outcome {
    let started = Instant::now();
    // The client's own timeout is far past any deadline: reaching it means the server hung.
    let resp = client
        .get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: no answer ({e}) after {:?}", started.elapsed()));
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    Outcome {
        url,
        status,
        body,
        took: started.elapsed(),
    }
}

/// Deadline + slack: the answer's contract (slack for a loaded 2-core machine).
const SLACK: Duration = Duration::from_millis(1_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_routed_to_a_stopped_peer_answer_within_their_deadline() {
    let work = tempfile::tempdir().unwrap();
    let topic = unique("sigstop");
    let app = unique("sigstop");
    create_topic(&topic, 6).await;
    let query_timeout = Duration::from_millis(3_000);
    let extra = [
        "--session-timeout-ms",
        "6000",
        "--query-timeout-ms",
        "3000",
        "--peer-timeout-ms",
        "1000",
    ];
    let mut a = Proc::run(&app, &topic, &work.path().join("a"), free_port(), &extra);
    let mut b = Proc::run(&app, &topic, &work.path().join("b"), free_port(), &extra);
    for p in [&mut a, &mut b] {
        p.wait_health("ready", Duration::from_secs(120), |h| h["ready"] == true)
            .await;
    }
    let g = GeneratorOptions {
        orders: 300,
        seed: 7,
        ..Default::default()
    };
    let traffic = produce_traffic(&topic, 6, g, None).await;
    let model = model::order_views(&sent(&traffic));
    assert!(
        wait_views_match_model(&b.http, &model, "", Duration::from_secs(90))
            .await
            .is_empty(),
        "views never matched the model"
    );
    // A's actives, each with a caught-up standby copy on B.
    let on_a = partitions(&a, "active_partitions").await;
    assert!(!on_a.is_empty(), "the group gave A no partition");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lags = local_lags(&b).await;
        if on_a
            .iter()
            .all(|p| lags.get(p).copied().flatten() == Some(0))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's standbys of {on_a:?} never caught up: {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let keys: Vec<&String> = model
        .keys()
        .filter(|k| on_a.contains(&partition_for_key(k.as_bytes(), 6)))
        .take(12)
        .collect();
    assert!(!keys.is_empty());

    signal(&a, "-STOP");
    let _resume = Resume(&a);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // Ask through B for ~12 s: before the group notices (session timeout 6 s) and after it
    // moved A's partitions to B.
    let until = Instant::now() + Duration::from_secs(12);
    let (mut answered, mut refused) = (0, 0);
    while Instant::now() < until {
        for (i, id) in keys.iter().enumerate() {
            let (suffix, deadline) = match i % 3 {
                0 => ("", query_timeout),
                1 => ("?consistency=active", query_timeout),
                _ => (
                    "?wait_for=CANCELLED&timeout_ms=2000",
                    Duration::from_millis(2_000),
                ),
            };
            let o = query(&client, format!("http://{}/orders/{id}{suffix}", b.http)).await;
            assert!(
                o.took < deadline + SLACK,
                "{}: answered after {:?} (deadline {deadline:?}): {} {}",
                o.url,
                o.took,
                o.status,
                o.body
            );
            match o.status {
                200 => {
                    answered += 1;
                    assert_eq!(o.body["served_by"], b.http.as_str(), "{}", o.body);
                    assert!(
                        model::view_matches(&o.body["order"], &model[id.as_str()]),
                        "{}: wrong view {}",
                        o.url,
                        o.body
                    );
                    if suffix.contains("consistency=active") {
                        assert_eq!(o.body["role"], "active", "{}", o.body);
                    }
                }
                408 | 503 => {
                    refused += 1;
                    let code = o.body["code"].as_str().unwrap_or_default();
                    assert!(
                        matches!(
                            code,
                            "partition_unavailable" | "deadline_exceeded" | "wait_timeout"
                        ),
                        "{}: {} {}",
                        o.url,
                        o.status,
                        o.body
                    );
                }
                s => panic!("{}: unexpected {s} {}", o.url, o.body),
            }
        }
        b.assert_alive();
    }
    // Plain queries are answered (by B's standby, later its active), not just refused.
    assert!(answered > 0, "nothing answered ({refused} refused)");
}
