//! A checkpoint that cannot be written (here: its temporary file's name is taken by a
//! directory, as a full disk or a read-only mount would refuse it) does not stop the instance:
//! the failure shows in `/health` for that partition, processing and commits go on, views stay
//! right, and the error clears once a checkpoint can be written again. Real broker, real RocksDB.

mod common;

use std::time::{Duration, Instant};

use common::model::order_views;
use common::{
    assert_views_match, create_topic, free_port, produce_traffic, sent, unique, wait_all_committed,
    Proc,
};
use paystream::produce::GeneratorOptions;

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
