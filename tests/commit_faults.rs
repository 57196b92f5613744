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
//! - An instance frozen inside a commit (after its source offsets joined the transaction;
//!   `PAYSTREAM_FAILPOINT_STOP_IN_COMMIT`) whose partitions another instance takes over, and
//!   which then wakes up and commits that transaction (the broker does not check `EndTxn`
//!   against the group): the new owner's views still hold every event its offsets skip.
//! - A `send_offsets_to_transaction` that never returns (librdkafka#5456;
//!   `PAYSTREAM_FAILPOINT_HANG_SEND_OFFSETS`) is given up after the watchdog's limit: the
//!   producer is replaced and the actives catch up from their changelogs, losing nothing.
//! - A commit slow to write its batch into the local stores
//!   (`PAYSTREAM_FAILPOINT_SLOW_LOCAL_APPLY_MS`): an `active` answer still holds every event
//!   whose offset the group committed before the query.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::model::{expected_sms, order_views, view_matches};
use common::{
    assert_views_match, bootstrap, create_topic, free_port, produce_traffic, read_topic, sent,
    signal, unique, wait_all_committed, Proc,
};
use paystream::partition_for_key;
use paystream::produce::GeneratorOptions;
use paystream_topology::sms::SmsRequest;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, TopicPartitionList};

/// One instance at a time: on 2 cores, two starve each other's commits.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PARTITIONS: i32 = 4;

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

/// `<app>.SEND_SMS`, read committed, holds each (order, template) of `want` once and nothing else.
async fn assert_sms_exactly_once(app: &str, want: &std::collections::BTreeSet<(String, String)>) {
    let t = format!("{app}.SEND_SMS");
    let counts = tokio::task::spawn_blocking(move || sms_counts(&t))
        .await
        .expect("join");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "SMS sent twice: {twice:?}");
    let got: std::collections::BTreeSet<_> = counts.into_keys().collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} SMS expected, {} sent; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
        want.len(),
        got.len()
    );
}

/// A fresh topic and application, and one instance of it with the failpoint `env` (commits
/// every 50 ms), ready: (topic, application id, its work directory, the instance).
async fn one_ready_instance(
    name: &str,
    env: &[(&str, &str)],
) -> (String, String, tempfile::TempDir, Proc) {
    let topic = unique(name);
    let app = unique(&format!("{name}-app"));
    create_topic(&topic, PARTITIONS).await;
    let work = tempfile::tempdir().expect("tempdir");
    let mut p = Proc::run_with_env(
        &app,
        &topic,
        &work.path().join("a"),
        free_port(),
        &["--commit-interval-ms", "50"],
        env,
    );
    p.wait_health("ready", Duration::from_secs(120), |h| h["ready"] == true)
        .await;
    (topic, app, work, p)
}

/// One instance with the failpoint `env` under 4,000 orders at a steady rate: once every event is
/// committed, `check` looks at the instance (did the fault happen?), then its views must match
/// the model and `SEND_SMS` must hold each expected SMS once.
async fn one_instance_under_a_failpoint(
    name: &str,
    env: &[(&str, &str)],
    check: impl AsyncFnOnce(&Proc),
) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (topic, app, _work, mut p) = one_ready_instance(name, env).await;
    let g = GeneratorOptions {
        orders: 4_000,
        seed: 73,
        ..Default::default()
    };
    // A steady rate, so that many commits (and the faults) fall inside the traffic.
    let all = sent(&produce_traffic(&topic, PARTITIONS, g, Some(1_000)).await);
    wait_all_committed(&app, &topic, &mut [&mut p], Duration::from_secs(180)).await;
    check(&p).await;
    assert_views_match(
        &p.http,
        &order_views(&all),
        Duration::from_secs(60),
        &format!("after {name}"),
    )
    .await;
    let want = expected_sms(&all);
    assert!(want.len() > 1_000, "the traffic completes most orders");
    assert_sms_exactly_once(&app, &want).await;
    p.assert_alive();
    p.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_costs_no_event_and_no_second_sms() {
    // Every 3rd committed transaction is reported to the engine as a fatal producer error.
    let env = [("PAYSTREAM_FAILPOINT_LOSE_COMMIT_ANSWER", "3")];
    one_instance_under_a_failpoint("lostanswer", &env, async |p: &Proc| {
        let lost = p.health_count("commits_unknown_outcome").await;
        assert!(
            lost >= 2,
            "the failpoint fired during the traffic: {lost} times; warnings:\n{}",
            p.log_warnings()
        );
    })
    .await;
}

/// librdkafka's `send_offsets_to_transaction` can block for good (seen after a coordinator
/// restart in the broker drill); the 3rd one here never returns. The commit is given up after
/// the watchdog's limit, the producer replaced, the actives caught up from their changelogs: no
/// event lost, no SMS twice, and processing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_offsets_call_that_never_returns_is_given_up_and_costs_no_event() {
    let env = [("PAYSTREAM_FAILPOINT_HANG_SEND_OFFSETS", "3")];
    one_instance_under_a_failpoint("hungoffsets", &env, async |p: &Proc| {
        // The input can be all committed before the hung commit is given up (the hang may hit a
        // commit after the last records): the replacement follows the give-up, so wait for it.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let hung = log.find("transactional call hung");
            let replaced = hung.and_then(|at| log[at..].find("producer replaced"));
            if replaced.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the call hung, was given up and the producer replaced; log:\n{}",
                log.lines()
                    .filter(|l| !l.contains(" DEBUG "))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(p.health_count("commits_unknown_outcome").await >= 1);
        assert_eq!(
            p.health_count("transactional_calls_hung").await,
            1,
            "/health counts the one hung call"
        );
    })
    .await;
}

/// Whether the process is stopped (`T` in `/proc/<pid>/stat`).
fn is_stopped(p: &Proc) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", p.child.id()))
        .ok()
        .and_then(|s| {
            let after_name = s.rsplit_once(')')?.1.trim_start().to_owned();
            after_name.chars().next()
        })
        == Some('T')
}

/// Whether `/health` shows every partition `0..n` as an active of this instance that has read
/// its changelogs as far as it is going to read before it processes: restored and running, or
/// stuck restoring (`error` says its reads made no progress for a while: a transaction still open
/// on its changelog).
fn read_all_it_can(health: &serde_json::Value, n: i32) -> bool {
    (0..n).all(|p| {
        let t = &health["tasks"][p.to_string()];
        t["state"] == "running" || (t["state"] == "restoring" && t["error"].is_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_frozen_inside_a_commit_and_resumed_after_a_takeover_loses_no_event() {
    let _one = ONE_AT_A_TIME.lock().await;
    let topic = unique("frozen");
    let app = unique("frozen-app");
    create_topic(&topic, PARTITIONS).await;
    let work = common::work_dir();
    let extra = [
        "--session-timeout-ms",
        "6000",
        "--commit-interval-ms",
        "100",
        "--standby-replicas",
        "0",
    ];
    // Instance a stops itself inside its 3rd transaction with offsets (the traffic flows); b
    // never does.
    let env = [("PAYSTREAM_FAILPOINT_STOP_IN_COMMIT", "3")];
    let mut a = Proc::run_with_env(
        &app,
        &topic,
        &work.path().join("a"),
        free_port(),
        &extra,
        &env,
    );
    let mut b = Proc::run(&app, &topic, &work.path().join("b"), free_port(), &extra);
    for p in [&mut a, &mut b] {
        p.wait_health("ready", Duration::from_secs(120), |h| h["ready"] == true)
            .await;
    }
    let g = GeneratorOptions {
        orders: 6_000,
        seed: 91,
        ..Default::default()
    };
    let traffic = {
        let topic = topic.clone();
        tokio::spawn(async move { sent(&produce_traffic(&topic, PARTITIONS, g, Some(800)).await) })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !is_stopped(&a) {
        a.assert_alive();
        assert!(
            Instant::now() < deadline,
            "the failpoint never stopped instance a; log:\n{}",
            a.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // b takes every partition over (session timeout) and reads its changelogs as far as it can
    // while a sleeps: to their end, or up to a's transaction if a's records are in the log.
    b.wait_health(
        "b took every partition over",
        Duration::from_secs(120),
        |h| read_all_it_can(h, 4),
    )
    .await;
    signal(&a, "-CONT");
    // a finishes the frozen commit, then learns it lost its partitions.
    a.wait_health("a fenced", Duration::from_secs(60), |h| {
        h["self_fenced"].as_u64().unwrap_or(0) + h["commits_fenced"].as_u64().unwrap_or(0) > 0
    })
    .await;
    // The case this test is about happened: the frozen transaction committed after the
    // takeover (had the broker aborted it, or its commit failed, there would be nothing to see).
    let h = a.health().await.unwrap_or_default();
    assert!(
        h["commits_aborted"] == 0 && h["commits_unknown_outcome"] == 0,
        "the frozen commit did not commit when a woke up: {h}; warnings:\n{}",
        a.log_warnings()
    );
    a.kill9();
    let all = traffic.await.expect("traffic");
    wait_all_committed(&app, &topic, &mut [&mut b], Duration::from_secs(180)).await;
    assert_views_match(
        &b.http,
        &order_views(&all),
        Duration::from_secs(60),
        "the new owner after the frozen commit",
    )
    .await;
    assert_sms_exactly_once(&app, &expected_sms(&all)).await;
    b.assert_alive();
    b.terminate();
}

/// Under exactly-once a commit's batch reaches the local stores only after its transaction
/// committed; the failpoint stretches that step to 300 ms. A client that sees the group's
/// committed offset pass its event and then asks must get an answer holding the event, or one
/// labelled standby: never an `active` answer missing it (the rolling drill caught one once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_answer_holds_every_event_the_group_committed_while_the_commit_settles() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = [("PAYSTREAM_FAILPOINT_SLOW_LOCAL_APPLY_MS", "300")];
    let (topic, app, _work, mut p) = one_ready_instance("settle", &env).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    let offsets: Arc<BaseConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", &app)
            .set("isolation.level", "read_committed")
            .create()
            .expect("consumer"),
    );
    let client = reqwest::Client::new();
    let (mut active, mut standby) = (0, 0);
    let mut longest_wait = Duration::ZERO;
    for i in 0..20 {
        let order = format!("S-{i}");
        let json = format!(
            r#"{{"order_id":"{order}","event_id":"r","type":"APPROVAL_REQUESTED","phone":"010-{i}","amount":{},"currency":"KRW","ts":{}}}"#,
            1_000 + i * 100,
            1_700_000_000_000i64 + i
        );
        let want = &order_views(&[(Some(order.clone()), json.clone())])[&order];
        let partition = partition_for_key(order.as_bytes(), PARTITIONS);
        let rec = FutureRecord::<str, str>::to(&topic)
            .key(&order)
            .payload(&json)
            .partition(partition);
        let delivered = producer
            .send(rec, Timeout::After(Duration::from_secs(30)))
            .await
            .expect("produce");
        wait_committed_past(&offsets, &topic, partition, delivered.offset, &p).await;
        let asked = Instant::now();
        let r = client
            .get(format!("http://{}/orders/{order}", p.http))
            .send()
            .await
            .expect("query");
        longest_wait = longest_wait.max(asked.elapsed());
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.expect("json body");
        match body["role"].as_str() {
            Some("active") => {
                active += 1;
                assert!(
                    status == 200 && view_matches(&body["order"], want),
                    "{order} (offset {} of partition {partition}) was committed before the \
                     query, yet the active answered {status} {body}",
                    delivered.offset
                );
            }
            Some("standby") => standby += 1,
            _ => panic!("{order}: unexpected answer {status} {body}"),
        }
    }
    assert!(
        active >= 15,
        "most answers come from the active: {active} active, {standby} standby"
    );
    // The fault happened: commits went through the failpoint, and queries landed inside the
    // stretched window (an answer outside it takes milliseconds).
    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
    assert!(
        log.contains("PAYSTREAM_FAILPOINT_SLOW_LOCAL_APPLY_MS is set"),
        "the failpoint was armed; warnings:\n{}",
        p.log_warnings()
    );
    assert!(
        longest_wait >= Duration::from_millis(100),
        "some query arrived while a commit wrote its batch (longest answer {longest_wait:?})"
    );
    p.assert_alive();
    p.terminate();
}

/// Poll (every 5 ms, 60 s deadline) until the group's committed offset of `partition` is past
/// `offset`.
async fn wait_committed_past(
    consumer: &Arc<BaseConsumer>,
    topic: &str,
    partition: i32,
    offset: i64,
    p: &Proc,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (c, t) = (consumer.clone(), topic.to_owned());
        let committed = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&t, partition);
            c.committed_offsets(tpl, Duration::from_secs(10))
                .ok()
                .and_then(|l| l.elements().first().and_then(|e| e.offset().to_raw()))
        })
        .await
        .expect("join");
        if committed.is_some_and(|c| c > offset) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "offset {offset} of partition {partition} never committed ({committed:?}); log:\n{}",
            p.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
