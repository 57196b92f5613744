//! `paystream drill`: a failover rehearsal on a cluster of real instances.
//!
//! Starts N `paystream run` processes (one group), loads known orders, keeps a steady query load
//! on them across the live instances, SIGKILLs instances one round at a time (optionally
//! restarting them), and reports: queries failed, stale answers (from standbys) and their max
//! lag, time until every partition answers again, time until every partition has an active again,
//! and whether the final views equal the model (nothing lost, nothing applied twice).
//!
//! - [`cluster`]: child processes, their endpoints, health and metadata.
//! - [`load`]: the query load and what it saw.

pub mod cluster;
pub mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use paystream_topology::order::StoredOrder;
use serde::Serialize;
use thiserror::Error;

use crate::config::ProcessingGuarantee;
use crate::kafka::admin::{ensure_topics, TopicSpec};
use crate::produce::{produce, GeneratorOptions, ProduceOptions, Traffic};
use cluster::Cluster;
use load::QueryLoad;

/// What `paystream drill` does.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub bootstrap_servers: String,
    pub instances: usize,
    /// Kill rounds.
    pub rounds: usize,
    /// Restart each killed instance (same state directory) before the next round.
    pub restart: bool,
    /// Which instance to kill (index); `None` = a different one each round.
    pub victim: Option<usize>,
    /// Orders loaded before the drill (queried throughout) and orders produced during it.
    pub orders_before: u64,
    pub orders_during: u64,
    /// Events per second while the drill runs.
    pub rate: u64,
    /// Queries per second of the steady load.
    pub query_rate: u64,
    pub standby_replicas: u32,
    pub session_timeout_ms: u64,
    /// What the instances run with (`--processing-guarantee`).
    pub processing_guarantee: ProcessingGuarantee,
    pub work_dir: PathBuf,
    /// The `paystream` binary to start instances with.
    pub binary: PathBuf,
    pub seed: u64,
}

#[derive(Debug, Error)]
pub enum DrillError {
    #[error("{0}")]
    Step(String),
}

pub(crate) fn step<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> DrillError {
    move |e| DrillError::Step(format!("{what}: {e}"))
}

/// One kill round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub victim: usize,
    /// From the kill until a sweep of one key per partition all answered 200.
    pub answers_again_ms: u64,
    /// From the kill until every partition had an active on a live instance again.
    pub all_active_ms: u64,
}

/// The drill's findings.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub queries: u64,
    pub failed: u64,
    pub stale: u64,
    pub max_stale_lag: i64,
    pub first_failures: Vec<String>,
    pub rounds: Vec<RoundReport>,
    pub orders: usize,
    pub views_differing: usize,
    pub views_match: bool,
}

impl DrillReport {
    /// Nothing lost, no query failed.
    pub fn passed(&self) -> bool {
        self.views_match && self.failed == 0
    }
}

/// Run the drill.
pub async fn run(opts: &DrillOptions) -> Result<DrillReport, DrillError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let topic = format!("drill-{nanos}");
    let app = format!("drill-{nanos}");
    ensure_topics(
        &opts.bootstrap_servers,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 12,
            replication_factor: 1,
            configs: vec![],
        }],
    )
    .await
    .map_err(step("create topic"))?;

    let before = GeneratorOptions {
        seed: opts.seed,
        orders: opts.orders_before,
        ..Default::default()
    };
    let during = GeneratorOptions {
        seed: opts.seed.wrapping_add(1),
        orders: opts.orders_during,
        first_order: opts.orders_before,
        ..Default::default()
    };
    let mut model: BTreeMap<String, StoredOrder> = Traffic::generate(&before)
        .map_err(DrillError::Step)?
        .model();
    model.extend(
        Traffic::generate(&during)
            .map_err(DrillError::Step)?
            .model(),
    );

    let mut cluster = Cluster::new(opts, &app, &topic);
    for i in 0..opts.instances {
        cluster.start(i)?;
    }
    cluster.wait_stable(Duration::from_secs(120)).await?;
    tracing::info!(instances = opts.instances, "cluster up");

    send(opts, &topic, before.clone(), None).await?;
    let known: Vec<String> = Traffic::generate(&before)
        .map_err(DrillError::Step)?
        .model()
        .into_keys()
        .collect();
    let first = cluster
        .wait_views(&model_subset(&model, &known), Duration::from_secs(180))
        .await;
    if !first.is_empty() {
        return Err(DrillError::Step(format!(
            "{} orders never reached their final view before the drill",
            first.len()
        )));
    }

    let load = QueryLoad::start(cluster.live.clone(), known.clone(), opts.query_rate);
    let producer = {
        let (opts, topic) = (opts.clone(), topic.clone());
        tokio::spawn(async move { send(&opts, &topic, during, Some(opts.rate)).await })
    };
    let mut rounds = Vec::new();
    for round in 0..opts.rounds {
        let victim = opts.victim.unwrap_or(round % opts.instances);
        let generation = cluster.generation().await;
        let killed_at = Instant::now();
        cluster.kill9(victim).await;
        tracing::info!(victim, round, "killed instance");
        let answers_again = cluster
            .wait_all_partitions_answer(&known, Duration::from_secs(120))
            .await?;
        let all_active = cluster
            .wait_all_active(generation, Duration::from_secs(120))
            .await?;
        rounds.push(RoundReport {
            victim,
            answers_again_ms: answers_again.duration_since(killed_at).as_millis() as u64,
            all_active_ms: all_active.duration_since(killed_at).as_millis() as u64,
        });
        if opts.restart {
            cluster.start(victim)?;
            cluster.wait_stable(Duration::from_secs(120)).await?;
        }
    }
    producer.await.map_err(step("producer task"))??;
    let differing = cluster.wait_views(&model, Duration::from_secs(180)).await;
    let seen = load.stop().await;
    cluster.stop_all();
    Ok(DrillReport {
        queries: seen.queries,
        failed: seen.failed,
        stale: seen.stale,
        max_stale_lag: seen.max_stale_lag,
        first_failures: seen.first_failures,
        rounds,
        orders: model.len(),
        views_differing: differing.len(),
        views_match: differing.is_empty(),
    })
}

fn model_subset(
    model: &BTreeMap<String, StoredOrder>,
    keys: &[String],
) -> BTreeMap<String, StoredOrder> {
    keys.iter()
        .filter_map(|k| model.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

async fn send(
    opts: &DrillOptions,
    topic: &str,
    generator: GeneratorOptions,
    rate: Option<u64>,
) -> Result<(), DrillError> {
    let p = ProduceOptions::to_existing(&opts.bootstrap_servers, topic, generator, rate);
    tokio::task::spawn_blocking(move || produce(&p))
        .await
        .map_err(step("producer"))?
        .map_err(step("produce"))?;
    Ok(())
}
