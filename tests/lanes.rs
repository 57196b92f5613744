//! Processing lanes (`--processing-threads`, `engine::batch`) against a real broker: a backlog on
//! twelve partitions, processed on four lanes, gives what the independent model says: every
//! order's view (which depends on the order of its events: counts, last event, timestamps)
//! and every SMS exactly once; and the rounds did run on several lanes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const PARTITIONS: i32 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_processed_on_four_lanes_equals_the_model_with_each_sms_once() {
    let topic = unique("orders");
    create_topic(&topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let (report, sent) = produce(&topic, 12_000, Some(60_000), 0, None).await;
    assert_eq!(report.events, 60_000);
    let model = model::order_views(&sent);
    let want_sms = model::expected_sms(&sent);

    let app = unique("app");
    let mut p = Proc::run(
        &app,
        &topic,
        &dir.path().join("state"),
        free_port(),
        &["--processing-threads", "4"],
    );
    let health = p
        .wait_health("60,000 records processed", Duration::from_secs(240), |h| {
            h["records_processed"] == 60_000
        })
        .await;
    // Proof that the lanes ran (not one thread doing it all), so the checks below are about
    // them.
    let parallel = health["rounds_parallel"].as_u64().unwrap_or(0);
    assert!(
        parallel > 0,
        "no round ran on several lanes; health: {health}"
    );
    assert_views_match(&p.http, &model, Duration::from_secs(60), "after processing").await;

    // The SMS topic is read until every expected SMS is there (or a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let counts: BTreeMap<(String, String), usize> = loop {
        let (_, sms) = windowed_outputs(&app).await;
        let got = sms.keys().filter(|k| want_sms.contains(*k)).count();
        if got == want_sms.len() || std::time::Instant::now() > deadline {
            break sms;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "SMS sent more than once: {twice:?}");
    let missing: Vec<_> = want_sms
        .iter()
        .filter(|k| !counts.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = counts
        .keys()
        .filter(|k| !want_sms.contains(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} SMS expected, {} sent; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
        want_sms.len(),
        counts.len()
    );
    assert_eq!(
        p.terminate().code(),
        Some(0),
        "clean shutdown exits 0; log:\n{}",
        p.log_tail()
    );
}
