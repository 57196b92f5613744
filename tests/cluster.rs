//! The cluster against a real broker: several instances in one group, every key answered on any
//! instance, scale-out under load, and failover drills (kill -9) with zero failed queries.
//! Instances are child processes started by the drill module (`paystream drill` uses the same).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use paystream::config::ProcessingGuarantee;
use paystream::drill::cluster::Cluster;
use paystream::drill::load::QueryLoad;
use paystream::drill::{run, DrillOptions};
use paystream::produce::{GeneratorOptions, Traffic};

/// One cluster at a time: two 3-instance clusters plus the broker on a 2-core machine starve
/// each other until live members miss their session timeout, which tests the machine, not the
/// failover.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options(work: &std::path::Path, instances: usize) -> DrillOptions {
    DrillOptions {
        bootstrap_servers: bootstrap(),
        instances,
        rounds: 1,
        restart: false,
        victim: None,
        orders_before: 2_000,
        orders_during: 2_000,
        rate: 2_000,
        query_rate: 300,
        standby_replicas: 1,
        session_timeout_ms: 6_000,
        processing_guarantee: ProcessingGuarantee::ExactlyOnceV2,
        work_dir: work.to_owned(),
        binary: PathBuf::from(env!("CARGO_BIN_EXE_paystream")),
        seed: 42,
    }
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
    let work = tempfile::tempdir().unwrap();
    let topic = unique("cluster");
    create_topic(&topic, 12).await;
    let opts = options(work.path(), 3);
    let mut cluster = Cluster::new(&opts, &unique("app"), &topic);
    for i in 0..3 {
        cluster.start(i).unwrap();
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
    let model = Traffic::generate(&g).unwrap().model();
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
    let work = tempfile::tempdir().unwrap();
    let topic = unique("scale");
    create_topic(&topic, 12).await;
    let opts = options(work.path(), 3);
    let mut cluster = Cluster::new(&opts, &unique("app"), &topic);
    cluster.start(0).unwrap();
    cluster.wait_stable(Duration::from_secs(120)).await.unwrap();
    let before = produce_orders(&topic, 0, 3_000, None).await;
    let before_model = Traffic::generate(&before).unwrap().model();
    assert!(cluster
        .wait_views(&before_model, Duration::from_secs(120))
        .await
        .is_empty());

    let load = QueryLoad::start(
        cluster.live.clone(),
        before_model.keys().cloned().collect(),
        300,
    );
    let during = {
        let topic = topic.clone();
        tokio::spawn(async move { produce_orders(&topic, 3_000, 3_000, Some(1_500)).await })
    };
    cluster.start(1).unwrap();
    cluster.wait_stable(Duration::from_secs(120)).await.unwrap();
    cluster.start(2).unwrap();
    cluster.wait_stable(Duration::from_secs(120)).await.unwrap();
    let during = during.await.unwrap();
    let mut model = before_model;
    model.extend(Traffic::generate(&during).unwrap().model());
    let differing = cluster.wait_views(&model, Duration::from_secs(180)).await;
    let seen = load.stop().await;
    assert!(seen.queries > 100, "the load ran: {seen:?}");
    assert_eq!(
        seen.failed, 0,
        "failed queries during scale-out: {:?}",
        seen.first_failures
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_five_kills_in_a_row_under_load_fails_no_query_and_loses_nothing() {
    failover_five_kills(ProcessingGuarantee::ExactlyOnceV2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_five_kills_at_least_once_fails_no_query_and_loses_nothing() {
    failover_five_kills(ProcessingGuarantee::AtLeastOnce).await;
}

async fn failover_five_kills(guarantee: ProcessingGuarantee) {
    let _one = ONE_CLUSTER.lock().await;
    let work = tempfile::tempdir().unwrap();
    let mut opts = options(work.path(), 3);
    opts.processing_guarantee = guarantee;
    opts.rounds = 5;
    opts.restart = true;
    opts.orders_during = 4_000;
    opts.rate = 500;
    let report = run(&opts).await.unwrap();
    assert_eq!(report.rounds.len(), 5);
    assert!(report.queries > 500, "the load ran: {report:?}");
    assert_eq!(
        report.failed, 0,
        "failed queries: {:?}",
        report.first_failures
    );
    assert!(
        report.views_match,
        "{} orders differ from the model",
        report.views_differing
    );
    // Failover came from standbys, not full restores: every round recovered.
    for r in &report.rounds {
        assert!(
            r.all_active_ms > 0 && r.answers_again_ms <= r.all_active_ms + 60_000,
            "{r:?}"
        );
    }
}
