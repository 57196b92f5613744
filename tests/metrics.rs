//! `GET /metrics` of a real 2-instance cluster against a real broker: `promtool check metrics`
//! (the Prometheus project's own linter) accepts it, and its numbers agree with what can be
//! counted independently of the code that counts them — records on the input topic, records
//! and their reason headers on the dead-letter topic, records on the SMS topic, the answers the
//! test's own queries got, the owners `/metadata` names.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// One sample: labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// A minimal reader of the text format (names, labels, values; no escapes needed here), so the
/// test does not read the page with the library that wrote it.
fn parse(page: &str) -> BTreeMap<String, Vec<Sample>> {
    let mut out: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        let value = value.parse().expect("value");
        out.entry(name.to_owned())
            .or_default()
            .push((labels, value));
    }
    out
}

/// Sum of `name`'s samples whose labels include all of `with`.
fn sum(page: &BTreeMap<String, Vec<Sample>>, name: &str, with: &[(&str, &str)]) -> f64 {
    page.get(name)
        .map(|samples| {
            samples
                .iter()
                .filter(|(l, _)| {
                    with.iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|(_, v)| v)
                .sum()
        })
        .unwrap_or(0.0)
}

async fn scrape(http: &str) -> String {
    reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body")
}

/// `promtool check metrics` on `page`: its exit status and what it said.
fn promtool_check(page: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run deploy/setup.sh (Debian package `prometheus`)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_agree_with_the_topics_and_the_answers() {
    let work = work_dir();
    let app = unique("metrics");
    let topic = format!("{app}-orders");
    create_topic(&topic, 12).await;
    let mut a = Proc::run(&app, &topic, &work.path().join("a"), free_port(), &[]);
    let mut b = Proc::run(&app, &topic, &work.path().join("b"), free_port(), &[]);
    let generation = wait_cluster_stable(&mut [&mut a, &mut b]).await;

    let (report, sent) = produce(&topic, 300, None, 25, None).await;
    wait_all_committed(
        &app,
        &topic,
        &mut [&mut a, &mut b],
        Duration::from_secs(120),
    )
    .await;

    // Queries on `a`: every order once, one id nobody sent, one id that is too long.
    let model = model::order_views(&sent);
    let client = reqwest::Client::new();
    let mut answered: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for id in model.keys().take(40) {
        let r = client
            .get(format!("http://{}/orders/{id}", a.http))
            .send()
            .await
            .expect("query");
        assert!(r.status().is_success(), "order {id}: {}", r.status());
        let body: serde_json::Value = r.json().await.expect("json");
        let role = if body["served_by"] == a.http.as_str() {
            if body["role"] == "active" {
                "active"
            } else {
                "standby"
            }
        } else {
            "forwarded"
        };
        *answered.entry(("ok", role)).or_default() += 1.0;
    }
    let missing = client
        .get(format!("http://{}/orders/no-such-order", a.http))
        .send()
        .await
        .expect("query");
    assert_eq!(missing.status(), 404);
    let too_long = client
        .get(format!("http://{}/orders/{}", a.http, "x".repeat(300)))
        .send()
        .await
        .expect("query");
    assert_eq!(too_long.status(), 400);

    // The group lag: every partition, named with the owner /metadata gives, down to 0.
    let owners: BTreeMap<String, String> = metadata(&a.http).await["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["partition"].to_string(),
                p["active"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (page_a, page_b) = loop {
        let (pa, pb) = (parse(&scrape(&a.http).await), parse(&scrape(&b.http).await));
        let lag_ok = |page: &BTreeMap<String, Vec<Sample>>| {
            let lags = page
                .get("paystream_partition_lag_records")
                .cloned()
                .unwrap_or_default();
            lags.len() == 12
                && lags
                    .iter()
                    .all(|(l, v)| *v == 0.0 && owners.get(&l["partition"]) == l.get("owner"))
        };
        if lag_ok(&pa) && lag_ok(&pb) {
            break (pa, pb);
        }
        assert!(
            Instant::now() < deadline,
            "partition lag never reached 0 with the owners of /metadata ({owners:?}) on both: {:?} / {:?}",
            pa.get("paystream_partition_lag_records"),
            pb.get("paystream_partition_lag_records")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // The linter.
    let raw = scrape(&a.http).await;
    let (ok, said) = promtool_check(&raw);
    assert!(ok, "promtool check metrics: {said}\n{raw}");

    // Records: every input record processed once (no rebalance since the cluster was stable).
    let both =
        |name: &str, with: &[(&str, &str)]| sum(&page_a, name, with) + sum(&page_b, name, with);
    assert_eq!(
        metadata(&a.http).await["generation"].as_i64(),
        Some(generation),
        "a rebalance happened mid-test"
    );
    assert_eq!(
        both("paystream_records_processed_total", &[]),
        report.events as f64
    );
    // Dead letters by reason, against the reason headers on the dead-letter topic.
    let dlq = read_topic(&format!("{topic}.DLQ"), "read_committed");
    let mut reasons: BTreeMap<String, f64> = BTreeMap::new();
    for r in &dlq {
        *reasons
            .entry(r.headers["paystream.dlq.reason"].clone())
            .or_default() += 1.0;
    }
    assert!(!reasons.is_empty(), "no dead letters on {topic}.DLQ");
    for (reason, n) in &reasons {
        assert_eq!(
            both(
                "paystream_records_dead_lettered_total",
                &[("reason", reason)]
            ),
            *n,
            "reason {reason}"
        );
    }
    assert_eq!(
        both("paystream_records_dead_lettered_total", &[]),
        reasons.values().sum::<f64>()
    );
    // SMS, against the SMS topic.
    let sms = read_topic(&format!("{app}.SEND_SMS"), "read_committed").len() as f64;
    assert!(sms > 0.0, "no SMS written");
    assert_eq!(both("paystream_sms_sent_total", &[]), sms);
    // Queries, against the answers the test got.
    for ((outcome, role), n) in &answered {
        assert_eq!(
            sum(
                &page_a,
                "paystream_query_duration_seconds_count",
                &[("outcome", outcome), ("role", role)]
            ),
            *n,
            "queries {outcome}/{role}"
        );
    }
    assert!(
        answered.contains_key(&("ok", "forwarded")),
        "no query was forwarded: {answered:?}"
    );
    assert_eq!(
        sum(
            &page_a,
            "paystream_query_duration_seconds_count",
            &[("outcome", "not_found")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &page_a,
            "paystream_query_duration_seconds_count",
            &[("outcome", "bad_request"), ("role", "none")]
        ),
        1.0
    );
    // The group as both see it.
    for page in [&page_a, &page_b] {
        assert_eq!(
            sum(page, "paystream_group_generation", &[]),
            generation as f64
        );
        assert_eq!(sum(page, "paystream_group_members", &[]), 2.0);
        assert_eq!(sum(page, "paystream_partitions_without_active", &[]), 0.0);
        assert!(sum(page, "paystream_rebalances_total", &[]) >= 1.0);
        assert!(sum(page, "paystream_commits_total", &[]) >= 1.0);
        assert!(sum(page, "paystream_commit_duration_seconds_count", &[]) >= 1.0);
    }
    assert_eq!(
        sum(&page_a, "paystream_task_state", &[("state", "running")])
            + sum(&page_b, "paystream_task_state", &[("state", "running")]),
        12.0,
        "every partition running exactly once"
    );
}
