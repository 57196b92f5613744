//! `paystream demo`: a paystream cluster on one machine with nothing installed.
//!
//! ```text
//!  demo process ─────────────────────────────────────────────┐
//!  │ embedded broker (librdkafka mock cluster, loopback port) │◀── produce: seeded traffic
//!  └──────────────────────────────▲───────────────────────────┘
//!        paystream run ×N (child processes of the same binary, one group,
//!        own state dir + HTTP port each, --standby-replicas 1 when N > 1)
//! ```
//!
//! The demo starts the broker ([`broker`]), creates the topics (the mock has no CreateTopics),
//! starts N instances ([`instances`]), produces traffic, waits until the group is stable and
//! prints `curl` commands that show routing and a `kill -9` that shows failover. With `--verify`
//! (the test suite's mode) it checks every order on every instance against the generator's
//! model, SIGKILLs one instance, checks every order again on the others ([`verify`]) and exits.
//!
//! The instances run `at_least_once`: the mock cannot give exactly-once. Its TxnOffsetCommit
//! handler answers without storing the offsets, its EndTxn neither commits nor aborts anything,
//! and its Fetch reports the last stable offset as the end of the log with no aborted
//! transactions, so `read_committed` readers would see aborted records
//! (`rdkafka_mock_handlers.c` in librdkafka 2.12). The mock is for the demo only; the tests of
//! coordination, failover and delivery run against a real Kafka.

mod broker;
mod instances;
mod verify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use paystream_topology::order::StoredOrder;
use paystream_topology::shipped_topology;
use thiserror::Error;

use crate::config::RunArgs;
use crate::produce::{produce, GeneratorOptions, ProduceOptions, Traffic};
use broker::EmbeddedBroker;
use instances::{addresses, InstanceSpec, Instances};

const APPLICATION_ID: &str = "paystream-demo";
const INPUT_TOPIC: &str = "PAYMENT.ORDER";
/// Bound on the group forming (and on every order answering) before the demo gives up.
const STABLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on every order answering correctly again after an instance was killed.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `paystream demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Query address of the first instance; the others take the following ports (port 0: any
    /// free ports).
    pub http_addr: String,
    /// Instances in the group (`paystream run` child processes).
    pub instances: usize,
    pub orders: u64,
    pub rate: u64,
    pub partitions: i32,
    /// Keep the instances' state and logs here instead of a temporary directory.
    pub state_dir: Option<PathBuf>,
    /// Check every order over HTTP on every instance, kill one, check again, then exit.
    pub verify: bool,
    pub seed: u64,
}

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("embedded broker: {0}")]
    Broker(String),
    #[error("options: {0}")]
    Options(String),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("instance: {0}")]
    Instance(String),
    #[error("producer: {0}")]
    Produce(#[from] crate::produce::ProduceError),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the demo until Ctrl-C (or, with `verify`, until the checks passed or failed).
pub fn run(opts: DemoOptions) -> Result<(), DemoError> {
    if opts.instances == 0 {
        return Err(DemoError::Options("--instances must be at least 1".into()));
    }
    let base: SocketAddr = opts
        .http_addr
        .parse()
        .map_err(|e| DemoError::Options(format!("--http-addr {}: {e}", opts.http_addr)))?;
    let broker = EmbeddedBroker::start(opts.partitions, &topics()?)?;
    let (work_dir, temporary) = match &opts.state_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("paystream-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work_dir)?;
    let spec = InstanceSpec {
        binary: std::env::current_exe()?,
        bootstrap: broker.bootstrap_servers(),
        application_id: APPLICATION_ID.into(),
        input_topic: INPUT_TOPIC.into(),
        standby_replicas: u32::from(opts.instances > 1),
        work_dir: work_dir.clone(),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(drive(&opts, spec, base));
    drop(rt);
    drop(broker);
    if temporary && result.is_ok() {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    result
}

/// Every topic an instance reads or writes (the mock cannot create them on request).
fn topics() -> Result<Vec<String>, DemoError> {
    let settings = RunArgs {
        application_id: Some(APPLICATION_ID.into()),
        input_topic: Some(INPUT_TOPIC.into()),
        ..Default::default()
    }
    .build()?;
    let topology = shipped_topology(INPUT_TOPIC, &settings.shipped)
        .map_err(|e| DemoError::Broker(e.to_string()))?;
    let mut topics = vec![INPUT_TOPIC.to_owned(), settings.dlq_topic.clone()];
    topics.extend(
        topology
            .stores()
            .iter()
            .map(|s| s.changelog_topic(APPLICATION_ID)),
    );
    topics.extend(topology.sink_topics());
    topics.sort();
    topics.dedup();
    Ok(topics)
}

async fn drive(opts: &DemoOptions, spec: InstanceSpec, base: SocketAddr) -> Result<(), DemoError> {
    let addrs = addresses(base, opts.instances)?;
    let bootstrap = spec.bootstrap.clone();
    let standbys = spec.standby_replicas;
    let mut instances = Instances::start(spec, &addrs)?;
    print_header(opts, &bootstrap, standbys, &instances);
    let result = drive_instances(opts, bootstrap, &mut instances).await;
    instances.stop_all().await;
    if result.is_err() {
        eprintln!(
            "instance logs: {}",
            instances
                .log_path(0)
                .parent()
                .map_or_else(String::new, |d| d.display().to_string())
        );
    }
    result
}

async fn drive_instances(
    opts: &DemoOptions,
    bootstrap: String,
    instances: &mut Instances,
) -> Result<(), DemoError> {
    let generator = GeneratorOptions {
        seed: opts.seed,
        orders: opts.orders,
        malformed: opts.orders / 100,
        ..Default::default()
    };
    let produce_opts = ProduceOptions {
        bootstrap_servers: bootstrap,
        topic: INPUT_TOPIC.to_owned(),
        rate: Some(opts.rate).filter(|r| *r > 0),
        create_topic: false,
        partitions: opts.partitions,
        replication_factor: 1,
        model_out: None,
        generator: generator.clone(),
    };
    println!(
        "producing {} orders ({} malformed records go to {INPUT_TOPIC}.DLQ) ...",
        opts.orders, generator.malformed
    );
    let producing = tokio::task::spawn_blocking(move || produce(&produce_opts));
    let client = verify::client();
    let with_standbys = instances.len() > 1;
    let generation = verify::wait_stable(instances, &client, with_standbys, STABLE_TIMEOUT).await?;
    println!("group stable: generation {generation}, every partition has an active instance");
    print_commands(instances);
    let report = producing
        .await
        .map_err(|e| DemoError::Instance(format!("producer task: {e}")))??;
    println!(
        "produced {} events for {} orders in {:.1} s",
        report.events,
        report.orders,
        report.elapsed.as_secs_f64()
    );
    if !opts.verify {
        println!("serving; Ctrl-C stops the instances and the broker");
        let _ = tokio::signal::ctrl_c().await;
        return Ok(());
    }
    let model = Traffic::generate(&generator)
        .map_err(DemoError::Verify)?
        .model();
    verify_cluster(instances, &client, &model).await
}

fn print_header(opts: &DemoOptions, bootstrap: &str, standbys: u32, instances: &Instances) {
    println!(
        "paystream demo: embedded broker (librdkafka mock cluster) at {bootstrap}, topic \
         {INPUT_TOPIC} ({} partitions)",
        opts.partitions
    );
    println!(
        "{} instance(s) in group {APPLICATION_ID}, {standbys} standby per partition, \
         processing guarantee at_least_once",
        instances.len()
    );
    println!(
        "  (the embedded broker cannot do exactly_once_v2: it drops offsets committed in \
         transactions and shows aborted records; run against Kafka for that)"
    );
    for i in 0..instances.len() {
        println!(
            "  instance {i}: http://{}  pid {}  log {}",
            instances.addr(i),
            instances.pid(i),
            instances.log_path(i).display()
        );
    }
    println!();
}

fn print_commands(instances: &Instances) {
    let a = instances.addr(0);
    let b = instances.addr(instances.len() - 1);
    println!();
    println!("try (any instance answers any order; `served_by` names the instance that did):");
    println!(
        "  curl -s http://{a}/orders/O-000001/location   # its partition, active and standbys"
    );
    println!(
        "  curl -s http://{a}/orders/O-000001            # forwarded to its active if need be"
    );
    println!(
        "  curl -s http://{b}/orders/O-000001            # the same answer from another instance"
    );
    println!("  curl -s http://{a}/orders/NO-SUCH-ORDER       # 404 with a JSON error");
    println!("  curl -s http://{a}/sms/O-000001               # SMS sent or suppressed for it");
    println!("  curl -s 'http://{a}/alerts?status=open'       # approvals never completed (5 min)");
    println!(
        "  curl -s http://{a}/metadata                   # every partition's active and standbys"
    );
    println!("  curl -s http://{a}/health");
    println!("  curl -s http://{a}/metrics");
    if instances.len() > 1 {
        let last = instances.len() - 1;
        println!(
            "  kill -9 {}   # kill instance {last}: the others keep answering (standbys, then a \
             rebalance)",
            instances.pid(last)
        );
    }
    println!();
}

/// Every order on every instance; then SIGKILL instance 0 and every order again on the others.
async fn verify_cluster(
    instances: &mut Instances,
    client: &reqwest::Client,
    model: &BTreeMap<String, StoredOrder>,
) -> Result<(), DemoError> {
    let all: Vec<SocketAddr> = (0..instances.len()).map(|i| instances.addr(i)).collect();
    let seen = verify::all_orders_match(client, &all, model, STABLE_TIMEOUT).await?;
    if all.len() > 1 && seen.served_by.len() < 2 {
        return Err(DemoError::Verify(format!(
            "every answer came from {:?}: queries were not routed",
            seen.served_by
        )));
    }
    println!(
        "verified: all {} orders match the model on each of the {} instance(s) (served by {})",
        model.len(),
        all.len(),
        seen.served_by
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if all.len() < 2 {
        return Ok(());
    }
    let victim = 0;
    let pid = instances.pid(victim);
    let killed = Instant::now();
    instances.kill9(victim).await?;
    println!("killed instance {victim} (pid {pid}) with SIGKILL");
    let rest: Vec<SocketAddr> = instances
        .alive()
        .into_iter()
        .map(|i| instances.addr(i))
        .collect();
    let seen = verify::all_orders_match(client, &rest, model, FAILOVER_TIMEOUT).await?;
    println!(
        "verified after the kill: all {} orders match the model on each of the {} remaining \
         instances, {:.1} s after the kill (answers by role: {:?})",
        model.len(),
        rest.len(),
        killed.elapsed().as_secs_f64(),
        seen.roles
    );
    let generation = verify::wait_stable(instances, client, false, FAILOVER_TIMEOUT).await?;
    println!(
        "group rebalanced: generation {generation}, every partition active on a live instance, \
         {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    Ok(())
}
