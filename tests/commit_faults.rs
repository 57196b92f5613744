//! Faults around a commit, against a real broker and real RocksDB.
//!
//! - A checkpoint that cannot be written (its temporary file's name is taken by a directory, as
//!   a full disk or a read-only mount would refuse it) does not stop the instance: the failure
//!   shows in `/health` for that partition, processing and commits go on, views stay right, and
//!   the error clears once a checkpoint can be written again.
//! - A transaction that committed while the engine was told it failed (its `EndTxn` answer lost
//!   with a broker; injected with the `PAYSTREAM_FAILPOINT_LOSE_COMMIT_ANSWER` failpoint, since
//!   a broker cannot be made to lose one answer on cue) costs no event and sends no SMS twice:
//!   the actives catch up from their changelogs before going on.

mod common;

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use common::model::{expected_sms, order_views};
use common::{
    assert_views_match, create_topic, free_port, produce_traffic, read_topic, sent, unique,
    wait_all_committed, Proc,
};
use paystream::produce::GeneratorOptions;
use paystream_topology::sms::SmsRequest;

/// One instance at a time: on 2 cores, two starve each other's commits.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `/health`'s `tasks.0.error`, polled until `want` holds (deadline).
async fn wait_task_error(p: &mut Proc, what: &str, want: impl Fn(Option<&str>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        p.assert_alive();
        let health = p.health().await.unwrap_or_default();
        let error = health["tasks"]["0"]["error"].as_str();
        if want(error) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: tasks.0 of /health is {}; log:\n{}",
            health["tasks"]["0"],
            p.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_written_is_reported_and_retried_not_fatal() {
    let _one = ONE_AT_A_TIME.lock().await;
    let topic = unique("ckpt");
    let app = unique("ckpt-app");
    create_topic(&topic, 1).await;
    let work = tempfile::tempdir().expect("tempdir");
    let state = work.path().join("a");
    let extra = [
        "--sms-enabled",
        "false",
        "--approval-timeout-enabled",
        "false",
    ];
    let mut p = Proc::run(&app, &topic, &state, free_port(), &extra);
    p.wait_health("ready", Duration::from_secs(120), |h| h["ready"] == true)
        .await;
    // Block the checkpoint of the one partition's order store.
    let blocker = state
        .join(&app)
        .join("0")
        .join("orders")
        .join(".checkpoint.tmp");
    std::fs::create_dir_all(blocker.join("in-the-way")).expect("blocker");

    // More than one checkpoint interval (10,000 writes) of traffic.
    let mut all = Vec::new();
    let g = GeneratorOptions {
        orders: 10_000,
        seed: 71,
        ..Default::default()
    };
    all.extend(sent(&produce_traffic(&topic, 1, g, None).await));
    wait_all_committed(&app, &topic, &mut [&mut p], Duration::from_secs(180)).await;
    wait_task_error(&mut p, "the failed checkpoint is reported", |e| {
        e.is_some_and(|e| e.contains("checkpoint"))
    })
    .await;
    assert_views_match(
        &p.http,
        &order_views(&all),
        Duration::from_secs(60),
        "blocked",
    )
    .await;

    // Unblocked: the next checkpoint is written and the error goes away.
    std::fs::remove_dir_all(&blocker).expect("unblock");
    let g = GeneratorOptions {
        orders: 10_000,
        first_order: 10_000,
        seed: 72,
        ..Default::default()
    };
    all.extend(sent(&produce_traffic(&topic, 1, g, None).await));
    wait_all_committed(&app, &topic, &mut [&mut p], Duration::from_secs(180)).await;
    wait_task_error(&mut p, "the error clears", |e| e.is_none()).await;
    assert!(
        state
            .join(&app)
            .join("0")
            .join("orders")
            .join(".checkpoint")
            .is_file(),
        "a checkpoint was written"
    );
    assert_views_match(
        &p.http,
        &order_views(&all),
        Duration::from_secs(60),
        "unblocked",
    )
    .await;
    p.assert_alive();
    p.terminate();
}

/// (order, template) → how many SMS `topic` holds (`read_committed`).
fn sms_counts(topic: &str) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for r in read_topic(topic, "read_committed") {
        let sms: SmsRequest = serde_json::from_slice(&r.value).expect("SMS JSON");
        *counts.entry((sms.order_id, sms.template)).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_costs_no_event_and_no_second_sms() {
    let _one = ONE_AT_A_TIME.lock().await;
    let topic = unique("lostanswer");
    let app = unique("lostanswer-app");
    create_topic(&topic, 4).await;
    let work = tempfile::tempdir().expect("tempdir");
    // Every 3rd committed transaction is reported to the engine as a fatal producer error.
    let env = [("PAYSTREAM_FAILPOINT_LOSE_COMMIT_ANSWER", "3")];
    let mut p = Proc::run_with_env(
        &app,
        &topic,
        &work.path().join("a"),
        free_port(),
        &["--commit-interval-ms", "50"],
        &env,
    );
    p.wait_health("ready", Duration::from_secs(120), |h| h["ready"] == true)
        .await;
    let g = GeneratorOptions {
        orders: 4_000,
        seed: 73,
        ..Default::default()
    };
    // A steady rate, so that many commits (and lost answers) fall inside the traffic.
    let all = sent(&produce_traffic(&topic, 4, g, Some(1_000)).await);
    wait_all_committed(&app, &topic, &mut [&mut p], Duration::from_secs(180)).await;
    let lost = p.health_count("commits_unknown_outcome").await;
    assert!(
        lost >= 2,
        "the failpoint fired during the traffic: {lost} times; warnings:\n{}",
        p.log_warnings()
    );
    assert_views_match(
        &p.http,
        &order_views(&all),
        Duration::from_secs(60),
        "after lost commit answers",
    )
    .await;
    let want = expected_sms(&all);
    assert!(want.len() > 1_000, "the traffic completes most orders");
    let t = format!("{app}.SEND_SMS");
    let counts = tokio::task::spawn_blocking(move || sms_counts(&t))
        .await
        .expect("join");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "SMS sent twice: {twice:?}");
    let got: std::collections::BTreeSet<_> = counts.into_keys().collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    assert!(
        missing.is_empty() && got.len() == want.len(),
        "{} SMS expected, {} sent; missing e.g. {missing:?}",
        want.len(),
        got.len()
    );
    p.assert_alive();
    p.terminate();
}
