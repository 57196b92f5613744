//! End-to-end tests of one instance against a real Kafka broker: the materialized view equals an
//! independent model of the input (`common::model`) after normal processing, after `kill -9`
//! mid-stream, after losing the local state directory, and with malformed records mixed in.

mod common;

use std::time::Duration;

use common::*;

const PARTITIONS: i32 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_events_fold_into_the_model() {
    let topic = unique("orders");
    create_topic(&topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let (report, sent) = produce(&topic, 10_000, Some(50_000), 0, None).await;
    assert_eq!(report.events, 50_000);
    let model = model::order_views(&sent);
    assert_eq!(model.len(), 10_000);

    let mut p = Proc::run(
        &unique("app"),
        &topic,
        &dir.path().join("state"),
        free_port(),
        &[],
    );
    p.wait_health("50,000 records processed", Duration::from_secs(180), |h| {
        h["records_processed"] == 50_000
    })
    .await;
    assert_views_match(&p.http, &model, Duration::from_secs(60), "after processing").await;
    assert_eq!(
        p.terminate().code(),
        Some(0),
        "clean shutdown exits 0; log:\n{}",
        p.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let topic = unique("orders");
    create_topic(&topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let app = unique("app");
    let port = free_port();

    let mut p = Proc::run(&app, &topic, &state, port, &[]);
    p.wait_health("ready", Duration::from_secs(60), |h| h["ready"] == true)
        .await;
    // Produce at a bounded rate so the kill lands mid-stream.
    let producer = {
        let topic = topic.clone();
        tokio::spawn(async move { produce(&topic, 10_000, Some(50_000), 0, Some(25_000)).await })
    };
    p.wait_health("some records processed", Duration::from_secs(120), |h| {
        h["records_processed"].as_u64().unwrap_or(0) > 10_000
    })
    .await;
    p.kill9();
    let mut p = Proc::run(&app, &topic, &state, port, &[]);
    let (report, sent) = producer.await.unwrap();
    assert_eq!(report.events, 50_000);
    let model = model::order_views(&sent);
    p.wait_health("ready after restart", Duration::from_secs(120), |h| {
        h["ready"] == true
    })
    .await;
    assert_views_match(&p.http, &model, Duration::from_secs(120), "after kill -9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_state_directory_is_restored_from_the_changelog() {
    let topic = unique("orders");
    create_topic(&topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let app = unique("app");
    let port = free_port();
    let (_, sent) = produce(&topic, 5_000, Some(20_000), 0, None).await;
    let model = model::order_views(&sent);

    let mut p = Proc::run(&app, &topic, &state, port, &[]);
    p.wait_health("all processed", Duration::from_secs(120), |h| {
        h["records_processed"] == 20_000
    })
    .await;
    assert!(
        wait_views_match_model(&p.http, &model, "", Duration::from_secs(60))
            .await
            .is_empty()
    );
    assert_eq!(p.terminate().code(), Some(0));

    std::fs::remove_dir_all(&state).unwrap();
    let mut p = Proc::run(&app, &topic, &state, port, &[]);
    let h = p
        .wait_health("ready after restore", Duration::from_secs(120), |h| {
            h["ready"] == true
        })
        .await;
    // Everything came back from the changelog; nothing was reprocessed from the source.
    assert!(
        h["records_restored"].as_u64().unwrap() >= model.len() as u64,
        "{h}"
    );
    assert_eq!(h["records_processed"], 0, "{h}");
    assert_views_match(
        &p.http,
        &model,
        Duration::from_secs(30),
        "after the restore",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_the_dead_letter_topic_with_a_reason() {
    let topic = unique("orders");
    create_topic(&topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let (report, sent) = produce(&topic, 3_000, None, 1_000, None).await;
    let model = model::order_views(&sent);

    let mut p = Proc::run(
        &unique("app"),
        &topic,
        &dir.path().join("state"),
        free_port(),
        &[],
    );
    let total = report.events;
    p.wait_health("all processed", Duration::from_secs(120), |h| {
        h["records_processed"] == total
    })
    .await;
    let h = p.health().await.unwrap();
    assert_eq!(h["records_dead_lettered"], 1_000, "{h}");
    assert_views_match(
        &p.http,
        &model,
        Duration::from_secs(60),
        "good orders next to malformed ones",
    )
    .await;

    // Read the DLQ back: 1,000 records, each with a reason header and its source coordinates.
    let dlq = format!("{topic}.DLQ");
    let records: Vec<(String, i64)> =
        tokio::task::spawn_blocking(move || read_topic(&dlq, "read_committed"))
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                let reason = r.headers.get("paystream.dlq.reason").cloned();
                let offset = r.headers.get("paystream.source.offset");
                (
                    reason.unwrap_or_default(),
                    offset.and_then(|o| o.parse().ok()).unwrap_or(-1),
                )
            })
            .collect();
    assert_eq!(records.len(), 1_000);
    let reasons = [
        "invalid_json",
        "unknown_type",
        "missing_field",
        "missing_key",
    ];
    for (reason, offset) in &records {
        assert!(
            reasons.contains(&reason.as_str()),
            "unexpected reason {reason}"
        );
        assert!(*offset >= 0);
    }
    for r in reasons {
        assert!(
            records.iter().any(|(x, _)| x == r),
            "no record dead-lettered for {r}"
        );
    }
}

/// A TCP proxy to `target` on a free local port that drops every connection for the first
/// `outage` (a broker that does not answer: starting, overloaded), then forwards.
fn flaky_proxy(target: &str, outage: Duration) -> String {
    use std::io::copy;
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address").to_string();
    let target = target
        .split(',')
        .next()
        .expect("a bootstrap server")
        .to_owned();
    let opened = std::time::Instant::now();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if opened.elapsed() < outage {
                drop(client);
                continue;
            }
            let Ok(broker) = TcpStream::connect(&target) else {
                continue;
            };
            let (Ok(mut c2), Ok(mut b2)) = (client.try_clone(), broker.try_clone()) else {
                continue;
            };
            let (mut c1, mut b1) = (client, broker);
            std::thread::spawn(move || copy(&mut c1, &mut b1));
            std::thread::spawn(move || copy(&mut b2, &mut c2));
        }
    });
    addr
}

/// An instance started while its broker does not answer yet waits for it, as Kafka clients do
/// (`default.api.timeout.ms`), instead of exiting on the first timed-out metadata request (seen
/// in CI: a broker too busy to answer ApiVersion for 10 s made a starting instance exit). A read
/// whose deadline ends before the broker answers still fails, naming the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_reads_wait_for_a_broker_that_does_not_answer_yet() {
    use paystream::kafka::admin::partition_count_within;
    let topic = unique("slow-broker");
    create_topic(&topic, 3).await;
    // Longer than one metadata request waits (10 s): only asking again gets through.
    let outage = Duration::from_secs(12);

    let proxy = flaky_proxy(&bootstrap(), outage);
    let t = topic.clone();
    let started = std::time::Instant::now();
    let found = tokio::task::spawn_blocking(move || {
        partition_count_within(&proxy, &t, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(found.unwrap(), Some(3));
    assert!(
        started.elapsed() >= outage,
        "answered after {:?}, before the proxy let anything through",
        started.elapsed()
    );

    let proxy = flaky_proxy(&bootstrap(), Duration::from_secs(600));
    let t = topic.clone();
    let err = tokio::task::spawn_blocking(move || {
        partition_count_within(&proxy, &t, Duration::from_secs(2))
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.to_string().contains(&topic), "{err}");
}

/// The broker's topics named like a `paystream bench` run's (`bench-<millis>...`).
fn bench_topics() -> std::collections::BTreeSet<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with("bench-"))
        .collect()
}

/// A bench run that fails after it made its input topic still deletes it: a failed run at 10M
/// orders would otherwise leave ~20 GB on the broker. The failure: the work directory is a file,
/// so the instance cannot make its state directory and exits, after the produce step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_run_that_fails_part_way_deletes_its_topics() {
    let work = work_dir();
    let not_a_dir = work.path().join("a-file");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let before = bench_topics();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(["bench", "--bootstrap-servers", &bootstrap()])
        .args(["--events", "2000", "--orders", "500", "--partitions", "2"])
        .arg("--work-dir")
        .arg(&not_a_dir)
        .output()
        .expect("run paystream bench");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "the bench should fail: {stdout}");
    // It got as far as producing into its input topic, so there was a topic to delete.
    assert!(stdout.contains("produce (librdkafka"), "{stdout}\n{stderr}");
    assert!(stderr.contains("instance exited early"), "{stderr}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<String> = bench_topics().difference(&before).cloned().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "topics of the failed run still on the broker after 30 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
