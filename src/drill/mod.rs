//! `paystream drill`: a failover rehearsal that checks every answer.
//!
//! Starts N `paystream run` processes (one group), or drives a running cluster through the
//! operator's commands ([`RunningCluster`]), produces known traffic while it records
//! what the broker acknowledged and what the group committed, keeps a query load on every
//! instance (the victim included), injects faults round by round (`kill`, `pause`, `rolling`,
//! `broker`), and reports: queries sent, failed, answered stale (and how far behind), answered
//! **wrong**, recovery times per round, views differing from the model at the end, and SMS sent
//! twice or never.
//!
//! - [`model`]: the drill's own statement of the view and SMS rules (never the processor's).
//! - [`checker`]: judges one answer against the model and the recorded facts (pure).
//! - [`traffic`]: the producer and the watch on the group's committed offsets.
//! - [`load`]: the query load.
//! - [`faults`]: the rounds and their timelines.
//! - [`audit`]: reads the SMS topics at the end.
//! - [`cluster`]: child processes (or a running cluster's endpoints), health and metadata.
//! - [`command`]: operator commands (`--kill-cmd`, `--broker-kill-cmd`, ...).
//! - [`report`]: the findings, as text or JSON, and whether they pass.

pub mod args;
pub mod audit;
pub mod checker;
pub mod cluster;
pub mod command;
pub mod faults;
pub mod load;
pub mod model;
pub mod report;
pub mod traffic;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paystream_topology::partition_for_key;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::ProcessingGuarantee;
use crate::kafka::admin::{ensure_topics, TopicSpec};
use crate::produce::{GeneratorOptions, Traffic, TrafficEvent};
use checker::Checker;
use cluster::Cluster;
pub use faults::{Fault, RoundReport};
use load::{LoadOptions, QueryLoad};
use model::{events_by_order, SmsAudit};
pub use report::DrillReport;
use traffic::Facts;

/// Partitions of the drill's input topic.
pub const PARTITIONS: i32 = 12;

/// What `paystream drill` does.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub bootstrap_servers: String,
    pub instances: usize,
    /// The faults, each run for `rounds` rounds, in this order.
    pub faults: Vec<Fault>,
    pub rounds: usize,
    /// Restart each killed instance (same state directory) after its round.
    pub restart: bool,
    /// Which instance to kill or pause (index); `None` = a different one each round.
    pub victim: Option<usize>,
    /// Orders produced before the faults begin, and at most this many while they run (traffic
    /// stops when the last round ends).
    pub orders_before: u64,
    pub orders_during: u64,
    /// Events per second while the drill runs.
    pub rate: u64,
    /// Queries per second of the steady load.
    pub query_rate: u64,
    /// A query that got no answer within this long failed.
    pub query_deadline_ms: u64,
    pub standby_replicas: u32,
    pub session_timeout_ms: u64,
    /// How long a `pause` lasts; `None`: the session timeout plus 3 s.
    pub pause_ms: Option<u64>,
    /// Instances run with `--group-instance-id` (static membership).
    pub static_membership: bool,
    /// Replication factor of the input topic and of the instances' topics (3 for `broker`).
    pub replication_factor: i32,
    /// `broker` fault: commands with `{id}` for the broker's node id.
    pub broker_kill_cmd: String,
    pub broker_start_cmd: String,
    /// How long a killed broker stays down.
    pub broker_down_ms: u64,
    /// What the instances run with (`--processing-guarantee`).
    pub processing_guarantee: ProcessingGuarantee,
    pub work_dir: PathBuf,
    /// The `paystream` binary to start instances with.
    pub binary: PathBuf,
    /// A running cluster to drill instead of starting instances (`--targets`).
    pub running: Option<RunningCluster>,
    pub seed: u64,
}

/// A cluster the drill did not start: where its instances answer, what they consume, and the
/// commands that act on one of them (`{index}`: 0-based in `targets` order, `{endpoint}`: its
/// `host:port`).
#[derive(Debug, Clone, Default)]
pub struct RunningCluster {
    /// Each instance's query endpoint as it advertises itself (`/metadata` `served_by`).
    pub targets: Vec<String>,
    /// The cluster's `--application-id` (its consumer group).
    pub application_id: String,
    pub input_topic: String,
    pub sms_topic: String,
    pub commands: Commands,
}

/// Operator commands for a running cluster; a fault whose commands are missing is refused.
#[derive(Debug, Clone, Default)]
pub struct Commands {
    /// Kill the instance at once (`kill -9`, `docker kill`, `kubectl delete pod --now`).
    pub kill: Option<String>,
    /// Start it again (with its state directory); may return before it is ready.
    pub start: Option<String>,
    /// Stop it gracefully (SIGTERM) and return once it exited.
    pub stop: Option<String>,
    /// Freeze it (SIGSTOP) and thaw it (SIGCONT).
    pub pause: Option<String>,
    pub resume: Option<String>,
}

impl DrillOptions {
    /// One `kill` round on 3 instances with one standby each, exactly-once, small traffic.
    pub fn new(bootstrap_servers: &str, work_dir: PathBuf, binary: PathBuf) -> DrillOptions {
        DrillOptions {
            bootstrap_servers: bootstrap_servers.to_owned(),
            instances: 3,
            faults: vec![Fault::Kill],
            rounds: 1,
            restart: false,
            victim: None,
            orders_before: 2_000,
            orders_during: 50_000,
            rate: 1_000,
            query_rate: 300,
            query_deadline_ms: 5_000,
            standby_replicas: 1,
            session_timeout_ms: 6_000,
            pause_ms: None,
            static_membership: false,
            replication_factor: 1,
            broker_kill_cmd: "bash deploy/kafka.sh kill-broker {id}".into(),
            broker_start_cmd: "bash deploy/kafka.sh start-broker {id}".into(),
            broker_down_ms: 10_000,
            processing_guarantee: ProcessingGuarantee::ExactlyOnceV2,
            work_dir,
            binary,
            running: None,
            seed: 42,
        }
    }

    pub fn pause_ms(&self) -> u64 {
        self.pause_ms.unwrap_or(self.session_timeout_ms + 3_000)
    }

    /// Fails on options that cannot make a meaningful drill.
    pub fn validate(&self) -> Result<(), DrillError> {
        let bad = |m: String| Err(DrillError::Options(m));
        if self.instances < 2 {
            return bad(format!("--instances: at least 2, got {}", self.instances));
        }
        if self.victim.is_some_and(|v| v >= self.instances) {
            return bad(format!(
                "--victim: must be below --instances ({})",
                self.instances
            ));
        }
        let kills = if self.faults.contains(&Fault::Kill) {
            self.rounds
        } else {
            0
        };
        if !self.restart && kills >= self.instances {
            return bad(format!(
                "{kills} kill rounds without --restart would leave no instance of {}",
                self.instances
            ));
        }
        match &self.running {
            None => {
                if self.faults.contains(&Fault::Broker) && self.replication_factor < 3 {
                    return bad(
                        "the broker fault needs --replication-factor 3 (and 3 brokers)".into(),
                    );
                }
                if self.faults.contains(&Fault::Rolling) && !self.static_membership {
                    return bad(
                        "the rolling fault needs --static-membership (no partition may move)"
                            .into(),
                    );
                }
            }
            Some(r) => self.validate_running(r)?,
        }
        Ok(())
    }

    /// A running cluster: its names are given and every fault asked for has its commands.
    fn validate_running(&self, r: &RunningCluster) -> Result<(), DrillError> {
        let bad = |m: String| Err(DrillError::Options(m));
        if r.targets.len() != self.instances {
            return bad(format!(
                "--targets: {} endpoints for {} instances",
                r.targets.len(),
                self.instances
            ));
        }
        for (flag, value) in [
            ("--application-id", &r.application_id),
            ("--input-topic", &r.input_topic),
            ("--sms-topic", &r.sms_topic),
        ] {
            if value.is_empty() {
                return bad(format!("{flag} is needed with --targets"));
            }
        }
        let c = &r.commands;
        let needs = |fault: Fault, what: &[(&str, &Option<String>)]| {
            if !self.faults.contains(&fault) {
                return Ok(());
            }
            match what.iter().find(|(_, v)| v.is_none()) {
                Some((flag, _)) => bad(format!(
                    "the {} fault on --targets needs {flag}",
                    format!("{fault:?}").to_lowercase()
                )),
                None => Ok(()),
            }
        };
        needs(Fault::Kill, &[("--kill-cmd", &c.kill)])?;
        needs(
            Fault::Pause,
            &[("--pause-cmd", &c.pause), ("--resume-cmd", &c.resume)],
        )?;
        needs(
            Fault::Rolling,
            &[("--stop-cmd", &c.stop), ("--start-cmd", &c.start)],
        )?;
        if self.restart && self.faults.contains(&Fault::Kill) && c.start.is_none() {
            return bad("--restart on --targets needs --start-cmd".into());
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum DrillError {
    #[error("invalid drill options: {0}")]
    Options(String),
    #[error("{0}")]
    Step(String),
}

pub(crate) fn step<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> DrillError {
    move |e| DrillError::Step(format!("{what}: {e}"))
}

/// The traffic of a drill: events before and during the faults, and the checker built from
/// both (each order's events in send order).
struct Plan {
    before: Vec<TrafficEvent>,
    during: Vec<TrafficEvent>,
    checker: Checker,
}

fn plan(opts: &DrillOptions, partitions: i32) -> Result<Plan, DrillError> {
    let now = crate::produce::generator::now_ms();
    let (first, spacing, start_ts) = match &opts.running {
        // A cluster of its own: the generator's ids and event times (a day back, 37 ms apart).
        None => (0, 37, now - 24 * 3_600_000),
        // Someone's cluster: ids no earlier run used, and event time that follows the wall
        // clock at the drill's rate (about 3.3 events per order), so the drill's events are
        // neither late for the cluster's windows nor pushing its stream time ahead.
        Some(_) => {
            let first = (now / 1_000) as u64 * 1_000;
            let spacing = (3_300 / opts.rate.max(1)).max(1) as i64;
            let last_before = first + opts.orders_before;
            (first, spacing, now - 10_000 - last_before as i64 * spacing)
        }
    };
    let before = GeneratorOptions {
        seed: opts.seed,
        orders: opts.orders_before,
        first_order: first,
        order_spacing_ms: spacing,
        start_ts,
        ..Default::default()
    };
    let before = Traffic::generate(&before).map_err(DrillError::Step)?.events;
    // The second batch continues in event time a second after the first ends, so no event is
    // behind the stream time by more than the SMS grace (it would be dropped as late, rightly).
    let first_during = first + opts.orders_before;
    let last_ts = before.iter().map(|e| e.timestamp).max().unwrap_or(start_ts);
    let during = GeneratorOptions {
        seed: opts.seed.wrapping_add(1),
        orders: opts.orders_during,
        first_order: first_during,
        order_spacing_ms: spacing,
        start_ts: last_ts + 1_000 - first_during as i64 * spacing,
        ..Default::default()
    };
    let during = Traffic::generate(&during).map_err(DrillError::Step)?.events;
    let per_order = events_by_order(
        before
            .iter()
            .chain(&during)
            .map(|e| (e.key.as_deref(), e.value.as_str())),
    );
    let checker = Checker::new(per_order.into_iter().map(|(id, events)| {
        let p = partition_for_key(id.as_bytes(), partitions);
        (id, p, events)
    }));
    Ok(Plan {
        before,
        during,
        checker,
    })
}

/// What the drill drives: its input topic, the group (application id), the SMS topics it
/// audits and the partition count.
struct Target {
    topic: String,
    app: String,
    sms_topics: Vec<String>,
    partitions: i32,
}

/// Start the drill's own cluster (a fresh topic and application id) or check the running one;
/// returns once every instance is ready and every partition has an active.
async fn set_up(opts: &DrillOptions, timeout: Duration) -> Result<(Cluster, Target), DrillError> {
    let (topic, app, sms) = match &opts.running {
        Some(r) => (
            r.input_topic.clone(),
            r.application_id.clone(),
            r.sms_topic.clone(),
        ),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let app = format!("drill-{stamp}");
            (app.clone(), app.clone(), format!("{app}.SEND_SMS"))
        }
    };
    let mut cluster = Cluster::new(opts, &app, &topic);
    let partitions = match &opts.running {
        Some(_) => cluster.check_targets(timeout).await?,
        None => {
            let configs = if opts.replication_factor >= 3 {
                vec![("min.insync.replicas".to_owned(), "2".to_owned())]
            } else {
                vec![]
            };
            let spec = TopicSpec {
                name: topic.clone(),
                partitions: PARTITIONS,
                replication_factor: opts.replication_factor,
                configs,
            };
            ensure_topics(&opts.bootstrap_servers, &[spec])
                .await
                .map_err(step("create topic"))?;
            for i in 0..opts.instances {
                cluster.start(i).await?;
            }
            PARTITIONS
        }
    };
    cluster.wait_stable(timeout).await?;
    tracing::info!(instances = opts.instances, partitions, "cluster up");
    let sms_topics = vec![format!("{sms}.SUPPRESSED"), sms];
    Ok((
        cluster,
        Target {
            topic,
            app,
            sms_topics,
            partitions,
        },
    ))
}

/// Run the drill.
pub async fn run(opts: &DrillOptions) -> Result<DrillReport, DrillError> {
    opts.validate()?;
    let timeout = Duration::from_secs(120);
    let (mut cluster, target) = set_up(opts, timeout).await?;
    let Target {
        topic,
        app,
        sms_topics,
        partitions,
    } = target;
    let Plan {
        before,
        during,
        checker,
    } = plan(opts, partitions)?;
    let facts = Facts {
        checker: Arc::new(Mutex::new(checker)),
        t0: Instant::now(),
    };
    // SMS already in the topics are someone else's (or an earlier run's): the audit starts here.
    let sms_from = {
        let (b, t) = (opts.bootstrap_servers.clone(), sms_topics.clone());
        tokio::task::spawn_blocking(move || audit::ends(&b, &t))
            .await
            .map_err(step("audit task"))??
    };
    let stop_watch = CancellationToken::new();
    let watch = traffic::watch_commits(
        &opts.bootstrap_servers,
        &app,
        &topic,
        partitions,
        facts.clone(),
        stop_watch.clone(),
    )?;

    let first_orders: Vec<String> = {
        let mut ids: Vec<String> = before.iter().filter_map(|e| e.key.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    traffic::send(
        &opts.bootstrap_servers,
        &topic,
        partitions,
        before,
        None,
        facts.clone(),
        CancellationToken::new(),
    )
    .await?;
    let expected_first: BTreeMap<String, Option<serde_json::Value>> = facts
        .with(|c| c.final_views())
        .unwrap_or_default()
        .into_iter()
        .filter(|(id, _)| first_orders.binary_search(id).is_ok())
        .collect();
    let differ = cluster.wait_views(&expected_first, timeout).await;
    if !differ.is_empty() {
        return Err(DrillError::Step(format!(
            "{} orders never reached their view before the faults began, e.g. {}",
            differ.len(),
            differ[0]
        )));
    }

    let load = QueryLoad::start(
        LoadOptions {
            endpoints: (0..opts.instances).map(|i| cluster.endpoint(i)).collect(),
            rate: opts.query_rate,
            deadline: Duration::from_millis(opts.query_deadline_ms),
            attempt_timeout: Duration::from_millis(1_000),
        },
        facts.clone(),
    );
    // Traffic flows until the last round ends (or the orders run out).
    let (stop_traffic, traffic_done) = (CancellationToken::new(), CancellationToken::new());
    let producer = {
        let (b, t, f, rate) = (
            opts.bootstrap_servers.clone(),
            topic.clone(),
            facts.clone(),
            opts.rate,
        );
        let (stop, done) = (stop_traffic.clone(), traffic_done.clone());
        tokio::spawn(async move {
            let r = traffic::send(&b, &t, partitions, during, Some(rate), f, stop).await;
            done.cancel();
            r
        })
    };
    let sweep = one_per_partition(&first_orders, partitions);
    let mut rounds = Vec::new();
    let mut ctx = faults::Ctx {
        opts,
        cluster: &mut cluster,
        facts: &facts,
        topic: &topic,
        sweep: &sweep,
        partitions,
        timeout,
        traffic_done: traffic_done.clone(),
    };
    for fault in &opts.faults {
        for round in 0..opts.rounds {
            let victim = opts.victim.unwrap_or(round % opts.instances);
            let r = match fault {
                Fault::Kill => ctx.kill(victim).await?,
                Fault::Pause => ctx.pause(victim).await?,
                Fault::Rolling => ctx.rolling().await?,
                Fault::Broker => ctx.broker().await?,
            };
            rounds.push(r);
        }
    }
    stop_traffic.cancel();
    let sent = producer.await.map_err(step("producer task"))??;
    tracing::info!(sent, "traffic during the faults sent and acknowledged");
    let model = facts.with(|c| c.final_views()).unwrap_or_default();
    let differing = cluster.wait_views(&model, Duration::from_secs(180)).await;
    let seen = load.stop().await;
    stop_watch.cancel();
    let _ = tokio::task::spawn_blocking(move || watch.join()).await;
    let b = opts.bootstrap_servers.clone();
    let mut found = tokio::task::spawn_blocking(move || {
        audit::count_sms(&b, &sms_topics, &sms_from, Duration::from_secs(120))
    })
    .await
    .map_err(step("audit task"))??;
    // Only the drill's own orders: a running cluster's topics hold other SMS too.
    found.retain(|(order, _), _| model.contains_key(order));
    cluster.stop_all();
    Ok(DrillReport {
        instances: opts.instances,
        processing_guarantee: opts.processing_guarantee,
        standby_replicas: opts.standby_replicas,
        load: seen,
        rounds,
        orders: model.len(),
        views_differing: differing.len(),
        first_differing: differing.into_iter().take(10).collect(),
        sms: SmsAudit::compare(
            &facts.with(|c| c.expected_sms()).unwrap_or_default(),
            &found,
        ),
    })
}

/// One order per partition (for the answer sweep).
fn one_per_partition(orders: &[String], partitions: i32) -> Vec<String> {
    let mut per: BTreeMap<i32, String> = BTreeMap::new();
    for o in orders {
        per.entry(partition_for_key(o.as_bytes(), partitions))
            .or_insert_with(|| o.clone());
    }
    per.into_values().collect()
}
