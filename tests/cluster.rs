//! The cluster against a real broker: several instances in one group, every key answered on any
//! instance, and scale-out under load with every answer checked. (Failover drills, every fault
//! kind: `tests/drill.rs`.) Instances are child processes started by the drill module
//! (`paystream drill` uses the same).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use paystream::drill::cluster::Cluster;
use paystream::drill::load::{LoadOptions, QueryLoad};
use paystream::drill::model::final_views;
use paystream::drill::traffic::Facts;
use paystream::drill::DrillOptions;
use paystream::produce::{GeneratorOptions, Traffic};

/// One cluster at a time: two 3-instance clusters plus the broker on a 2-core machine starve
/// each other until live members miss their session timeout, which tests the machine, not the
/// failover.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options(work: &std::path::Path, instances: usize) -> DrillOptions {
    let mut o = DrillOptions::new(
        &bootstrap(),
        work.to_owned(),
        PathBuf::from(env!("CARGO_BIN_EXE_paystream")),
    );
    o.instances = instances;
    o
}

/// The drill's model of every order's final answer (not the processor's fold).
fn model_of(g: &GeneratorOptions) -> std::collections::BTreeMap<String, Option<serde_json::Value>> {
    let t = Traffic::generate(g).unwrap();
    final_views(
        t.events
            .iter()
            .map(|e| (e.key.as_deref(), e.value.as_str())),
    )
}

async fn produce_orders(
    topic: &str,
    first: u64,
    orders: u64,
    rate: Option<u64>,
) -> GeneratorOptions {
    let g = GeneratorOptions {
        orders,
        first_order: first,
        seed: 1000 + first,
        ..Default::default()
    };
    produce_traffic(topic, 12, g.clone(), rate).await;
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_answer_two_thousand_random_keys_on_any_instance() {
    let _one = ONE_CLUSTER.lock().await;
    let work = work_dir();
    let topic = unique("cluster");
    create_topic(&topic, 12).await;
    let opts = options(work.path(), 3);
    let mut cluster = Cluster::new(&opts, &unique("app"), &topic);
    for i in 0..3 {
        cluster.start(i).await.unwrap();
    }
    cluster.wait_stable(Duration::from_secs(120)).await.unwrap();
    // Each instance is active for about a third of the partitions and standby for others (the
    // standby tasks appear once each instance has restored them: poll with a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for i in 0..3 {
        loop {
            let h: serde_json::Value =
                reqwest::get(format!("http://{}/health", cluster.endpoint(i)))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            let active = h["active_partitions"].as_array().unwrap().len();
            let standby = h["standby_partitions"].as_array().unwrap().len();
            if (3..=5).contains(&active) && standby >= 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "instance {i}: {h}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Steady produce while we query.
    let g = produce_orders(&topic, 0, 6_000, Some(6_000)).await;
    let model = model_of(&g);
    let sample: std::collections::BTreeMap<_, _> = model
        .iter()
        .step_by(3)
        .take(2_000)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(sample.len(), 2_000);
    let differing = cluster.wait_views(&sample, Duration::from_secs(120)).await;
    assert!(
        differing.is_empty(),
        "{} keys differ, e.g. {:?}",
        differing.len(),
        &differing[..differing.len().min(5)]
    );
    // Served from several instances: some answers were forwarded.
    let forwarded = {
        let r: serde_json::Value = reqwest::get(format!(
            "http://{}/orders/O-000001/location",
            cluster.endpoint(0)
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        r["active"].as_str().unwrap().to_owned()
    };
    assert!(cluster.live.read().unwrap().contains(&forwarded));
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_from_one_to_three_under_load_fails_no_query() {
    let _one = ONE_CLUSTER.lock().await;
    let work = work_dir();
    let topic = unique("scale");
    create_topic(&topic, 12).await;
    let opts = options(work.path(), 3);
    let mut cluster = Cluster::new(&opts, &unique("app"), &topic);
    cluster.start(0).await.unwrap();
    cluster.wait_stable(Duration::from_secs(120)).await.unwrap();
    let before = produce_orders(&topic, 0, 3_000, None).await;
    let before_model = model_of(&before);
    assert!(cluster
        .wait_views(&before_model, Duration::from_secs(120))
        .await
        .is_empty());

    // Every answer is checked: these orders are settled, so anything but their final view (or
    // a labelled standby answer behind it) is wrong.
    let settled = Facts::settled(&Traffic::generate(&before).unwrap().events, 12);
    let load = QueryLoad::start(
        LoadOptions {
            endpoints: (0..3).map(|i| cluster.endpoint(i)).collect(),
            rate: 300,
            deadline: Duration::from_secs(5),
            attempt_timeout: Duration::from_millis(1_000),
        },
        settled,
    );
    let during = {
        let topic = topic.clone();
        tokio::spawn(async move { produce_orders(&topic, 3_000, 3_000, Some(1_500)).await })
    };
    cluster.start(1).await.unwrap();
    cluster.wait_stable(Duration::from_secs(120)).await.unwrap();
    cluster.start(2).await.unwrap();
    cluster.wait_stable(Duration::from_secs(120)).await.unwrap();
    let during = during.await.unwrap();
    let mut model = before_model;
    model.extend(model_of(&during));
    let differing = cluster.wait_views(&model, Duration::from_secs(180)).await;
    let seen = load.stop().await;
    assert!(seen.queries > 100, "the load ran: {seen:?}");
    assert_eq!(seen.failed, 0, "failed queries during scale-out: {seen:?}");
    assert_eq!(seen.wrong, 0, "wrong answers during scale-out: {seen:?}");
    assert!(
        differing.is_empty(),
        "{} orders differ from the model",
        differing.len()
    );
    // The work is spread: every instance is active for some partitions.
    for i in 0..3 {
        let h: serde_json::Value = reqwest::get(format!("http://{}/health", cluster.endpoint(i)))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            !h["active_partitions"].as_array().unwrap().is_empty(),
            "instance {i} got no active: {h}"
        );
    }
    cluster.stop_all();
}

/// An instance that can never join its group has failed, and says so: another application's
/// plain Kafka consumers hold the group (the same id, the standard `range` protocol, which
/// paystream's members do not speak), so the coordinator refuses every join with
/// INCONSISTENT_GROUP_PROTOCOL. The instance must exit non-zero naming the group membership (it
/// used to stop "cleanly" with exit code 0 and a warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_refused_by_its_group_exits_non_zero_saying_why() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let topic = unique("refused-group");
    create_topic(&topic, 4).await;
    let app = unique("refused-app");

    // The other application's consumer, kept polling (so it stays in the group) until the end.
    let stop = Arc::new(AtomicBool::new(false));
    let (assigned_tx, assigned_rx) = std::sync::mpsc::channel();
    let other = {
        let (stop, topic, app) = (stop.clone(), topic.clone(), app.clone());
        std::thread::spawn(move || {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("group.id", &app)
                .set("partition.assignment.strategy", "range")
                .create()
                .expect("consumer");
            consumer.subscribe(&[&topic]).expect("subscribe");
            let mut told = false;
            while !stop.load(Ordering::Relaxed) {
                let _ = consumer.poll(Duration::from_millis(100));
                if !told && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    told = assigned_tx.send(()).is_ok();
                }
            }
        })
    };
    assigned_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the other application's consumer joined the group");

    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::run(&app, &topic, &dir.path().join("state"), free_port(), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            p.kill9();
            panic!(
                "the refused instance still runs after 90 s; log:\n{}",
                p.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::Relaxed);
    other.join().unwrap();
    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
    assert!(
        !status.success(),
        "a refused instance exited with {status}; log:\n{}",
        p.log_tail()
    );
    assert!(
        log.contains("group membership"),
        "the error does not name the group membership; log:\n{}",
        p.log_tail()
    );
}
