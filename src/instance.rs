//! One paystream instance: topics checked, engine and cluster membership started, query API
//! served; the composition root, the only module that knows every layer.

use std::collections::HashMap;
use std::sync::Arc;

use paystream_topology::{shipped_topology, StoreKind, Topology};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::group::{commit_channel, CommitRequest, GroupLoop, Identity};
use crate::cluster::identity::{checkpointed_positions, process_id, IdentityError};
use crate::cluster::lag::{GroupLag, LagMonitor};
use crate::cluster::routing::RoutingTable;
use crate::cluster::standalone::Standalone;
use crate::config::{ProcessingGuarantee, RunSettings};
use crate::coordination::leader::GroupAssignor;
use crate::coordination::membership::{GroupMember, MembershipConfig, MembershipError};
use crate::engine::stream_thread::{StreamThread, StreamThreadError};
use crate::engine::{
    EngineCommand, HeldTasks, Liveness, LocalStores, OffsetCommitter, SharedHeldTasks,
    SharedStatus, Status,
};
use crate::kafka::admin::{ensure_topics, partition_count, partition_counts, TopicSpec};
use crate::kafka::producer::{Delivery, OutputProducer};
use crate::kafka::KafkaError;
use crate::query::{self, QueryState};
use crate::telemetry::Metrics;

#[derive(Debug, Error)]
pub enum RunError {
    #[error(
        "input topic {topic} does not exist on {bootstrap}: create it (e.g. `paystream produce \
         --create-topic`) or set --input-topic"
    )]
    InputTopicMissing { topic: String, bootstrap: String },
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("topology: {0}")]
    Topology(String),
    #[error("stream thread: {0}")]
    StreamThread(#[from] StreamThreadError),
    #[error("stream thread panicked")]
    Panicked,
    #[error("group membership task panicked")]
    GroupPanicked,
    #[error("http server: {0}")]
    Http(#[source] std::io::Error),
    #[error("group membership: {0}")]
    Group(#[from] MembershipError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("--state-memory-mb: {0}")]
    StateMemory(#[from] paystream_state::rocks_memory::LimitTooSmall),
}

/// A running instance's shared parts (for embedding, tests and the demo).
pub struct Instance;

/// Partition count of `topic`, off the async runtime.
async fn count(bootstrap: &str, topic: &str) -> Result<Option<i32>, RunError> {
    let (b, t) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || partition_count(&b, &t))
        .await
        .map_err(|_| RunError::Panicked)?
        .map_err(Into::into)
}

/// Partition counts of `topics` (one metadata client), off the async runtime.
async fn counts(bootstrap: &str, topics: &[String]) -> Result<Vec<Option<i32>>, RunError> {
    let (b, t) = (bootstrap.to_owned(), topics.to_vec());
    tokio::task::spawn_blocking(move || partition_counts(&b, &t))
        .await
        .map_err(|_| RunError::Panicked)?
        .map_err(Into::into)
}

/// The topics an instance writes, created if missing: changelogs, the dead-letter topic and the
/// output topics. Returns (dead-letter partitions, partitions of each output topic).
async fn ensure_own_topics(
    settings: &RunSettings,
    topology: &Topology,
    partitions: i32,
) -> Result<(i32, HashMap<String, i32>), RunError> {
    let bootstrap = &settings.bootstrap_servers;
    // Changelogs: compacted; a window store's also deletes what is older than the store keeps
    // (plus a day, as Kafka Streams does), so it does not grow forever.
    let mut specs: Vec<TopicSpec> = topology
        .stores()
        .iter()
        .map(|st| TopicSpec {
            name: st.changelog_topic(&settings.application_id),
            partitions,
            replication_factor: settings.replication_factor,
            configs: match st.kind {
                StoreKind::KeyValue => vec![("cleanup.policy".into(), "compact".into())],
                StoreKind::Window { retention_ms } => vec![
                    ("cleanup.policy".into(), "compact,delete".into()),
                    (
                        "retention.ms".into(),
                        retention_ms.saturating_add(86_400_000).to_string(),
                    ),
                ],
            },
        })
        .collect();
    // Output topics (SEND_SMS, alerts, ...) may be shared with other applications and
    // pre-created with any partition count and config: paystream only writes them (keyed records
    // go to murmur2(key) % their own partition count). Missing ones are created like the input,
    // with append time, so the broker's retention follows when they were written, not the event
    // times they carry (a backfill of old events must not be deleted before anyone reads it).
    let sinks = topology.sink_topics();
    let mut wanted = sinks.clone();
    wanted.push(settings.dlq_topic.clone());
    let mut existing = counts(bootstrap, &wanted).await?;
    let dlq_partitions = existing.pop().flatten();
    for (sink, n) in sinks.iter().zip(&existing) {
        if n.is_none() {
            specs.push(TopicSpec {
                name: sink.clone(),
                partitions,
                replication_factor: settings.replication_factor,
                configs: vec![("message.timestamp.type".into(), "LogAppendTime".into())],
            });
        }
    }
    if dlq_partitions.is_none() {
        specs.push(TopicSpec {
            name: settings.dlq_topic.clone(),
            partitions,
            replication_factor: settings.replication_factor,
            configs: vec![],
        });
    }
    ensure_topics(bootstrap, &specs).await?;
    let mut sink_partitions = HashMap::new();
    for (sink, n) in sinks.iter().zip(counts(bootstrap, &sinks).await?) {
        let n = n.ok_or_else(|| KafkaError::Topic {
            topic: sink.clone(),
            message: "sink topic does not exist".into(),
        })?;
        sink_partitions.insert(sink.clone(), n);
    }
    Ok((dlq_partitions.unwrap_or(partitions), sink_partitions))
}

/// What an instance found and set up before it joins anything.
struct Prepared {
    partitions: i32,
    topology: Arc<Topology>,
    dlq_partitions: i32,
    sink_partitions: HashMap<String, i32>,
    process_id: String,
    /// Changelog topics whose acknowledged offsets the producer tracks.
    tracked: Vec<(String, i32)>,
    delivery: Delivery,
    producer: Arc<OutputProducer>,
}

/// The parts the engine, the cluster layer and the query layer share.
struct Shared {
    metrics: Arc<Metrics>,
    local: Arc<LocalStores>,
    status: Arc<SharedStatus>,
    routing: Arc<RoutingTable>,
    group_lag: Arc<GroupLag>,
    held: SharedHeldTasks,
    liveness: Arc<Liveness>,
}

/// How long a missing input topic is looked for again: a topic created a moment ago may not be
/// known yet to the broker this instance asks (metadata reaches every broker asynchronously).
const INPUT_TOPIC_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Partition count of the input topic; missing after [`INPUT_TOPIC_GRACE`] is an error.
async fn input_partitions(bootstrap: &str, input: &str) -> Result<i32, RunError> {
    let deadline = tokio::time::Instant::now() + INPUT_TOPIC_GRACE;
    loop {
        if let Some(n) = count(bootstrap, input).await? {
            return Ok(n);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RunError::InputTopicMissing {
                topic: input.to_owned(),
                bootstrap: bootstrap.to_owned(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Input partitions, topology, own topics, process id and the producer.
async fn prepare(settings: &RunSettings) -> Result<Prepared, RunError> {
    // Before any store opens (restores, standbys): one bound for all RocksDB memory.
    paystream_state::rocks_memory::set_memory_limit(settings.state_memory_bytes)?;
    let bootstrap = &settings.bootstrap_servers;
    let input = &settings.input_topic;
    let partitions = input_partitions(bootstrap, input).await?;
    let topology = Arc::new(
        shipped_topology(input, &settings.shipped)
            .map_err(|e| RunError::Topology(e.to_string()))?,
    );
    tracing::info!(topology = %topology.describe(), guarantee = settings.processing_guarantee.as_str(), "topology");
    let (dlq_partitions, sink_partitions) =
        ensure_own_topics(settings, &topology, partitions).await?;
    let process_id = process_id(&settings.state_dir, &settings.application_id)?;
    let tracked: Vec<(String, i32)> = topology
        .stores()
        .iter()
        .map(|st| (st.changelog_topic(&settings.application_id), partitions))
        .collect();
    let delivery = match settings.processing_guarantee {
        ProcessingGuarantee::ExactlyOnceV2 => Delivery::ExactlyOnce {
            // One producer per stream thread (there is one): `<app>-<process id>-<thread>`.
            transactional_id: format!("{}-{}-0", settings.application_id, process_id),
        },
        ProcessingGuarantee::AtLeastOnce => Delivery::AtLeastOnce,
    };
    let producer = {
        let (b, t, d) = (bootstrap.clone(), tracked.clone(), delivery.clone());
        tokio::task::spawn_blocking(move || OutputProducer::new(&b, &t, &d))
            .await
            .map_err(|_| RunError::Panicked)??
    };
    Ok(Prepared {
        partitions,
        topology,
        dlq_partitions,
        sink_partitions,
        process_id,
        tracked,
        delivery,
        producer,
    })
}

impl Shared {
    fn new(settings: &RunSettings, p: &Prepared) -> Self {
        // What this instance holds, starting with the stores an earlier run left on disk, so the
        // leader can hand those partitions back instead of restoring them elsewhere. Positions
        // are the first store's changelog offsets (what every instance reports, comparable).
        let first_store: Vec<String> = p
            .topology
            .stores()
            .iter()
            .take(1)
            .map(|s| s.name.clone())
            .collect();
        let held = Arc::new(std::sync::Mutex::new(HeldTasks {
            positions: checkpointed_positions(
                &settings.state_dir,
                &settings.application_id,
                &first_store,
                p.partitions,
            ),
            ..HeldTasks::default()
        }));
        Self {
            metrics: Metrics::new(),
            local: LocalStores::new(),
            status: Arc::new(SharedStatus::default()),
            routing: Arc::new(RoutingTable::default()),
            group_lag: Arc::default(),
            held,
            liveness: if settings.standalone {
                Liveness::always()
            } else {
                Liveness::group(settings.session_timeout)
            },
        }
    }
}

/// Start the group loop (or standalone mode), which drives the engine through `commands`.
async fn start_cluster(
    settings: &RunSettings,
    p: &Prepared,
    shared: &Shared,
    commands: std::sync::mpsc::Sender<EngineCommand>,
    commits: tokio::sync::mpsc::Receiver<CommitRequest>,
    shutdown: &CancellationToken,
) -> Result<JoinHandle<Result<(), MembershipError>>, RunError> {
    let input = settings.input_topic.clone();
    if settings.standalone {
        tracing::info!(
            "standalone: this instance owns all {} partitions",
            p.partitions
        );
        let standalone = Standalone {
            partitions: p.partitions,
            self_addr: settings.advertised_addr.clone(),
            commands,
            commits,
            routing: shared.routing.clone(),
            bootstrap: settings.bootstrap_servers.clone(),
            group_id: settings.application_id.clone(),
            topic: input,
            shutdown: shutdown.clone(),
        };
        return Ok(tokio::spawn(async move {
            standalone.run().await;
            Ok(())
        }));
    }
    let mut membership = MembershipConfig::new(
        settings
            .bootstrap_servers
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        settings.application_id.clone(),
        input,
    );
    membership.client_id = crate::coordination::protocol::client_id(&settings.advertised_addr);
    membership.session_timeout = settings.session_timeout;
    let heartbeat = (settings.session_timeout / 5).min(std::time::Duration::from_secs(1));
    membership.heartbeat_interval = heartbeat;
    membership.group_instance_id = settings.group_instance_id.clone();
    membership.security = settings.kafka.security.clone();
    let member = GroupMember::connect(membership).await?;
    let mut assignor = GroupAssignor::new(p.partitions, settings.standby_replicas);
    assignor.acceptable_recovery_lag = settings.acceptable_recovery_lag;
    let group = GroupLoop {
        member,
        assignor,
        commands,
        commits,
        identity: Identity {
            process_id: p.process_id.clone(),
            endpoint: settings.advertised_addr.clone(),
        },
        held: shared.held.clone(),
        liveness: shared.liveness.clone(),
        routing: shared.routing.clone(),
        shutdown: shutdown.clone(),
        probing_interval: settings.probing_rebalance_interval,
        heartbeat_interval: heartbeat,
        leave_on_shutdown: settings.group_instance_id.is_none(),
        probes: settings.member_probes,
    };
    tracing::info!(process_id = %p.process_id, "joining group {}", settings.application_id);
    Ok(tokio::spawn(group.run()))
}

impl Instance {
    /// Run one instance until `shutdown` is cancelled or a fatal error occurs. The caller binds
    /// `listener` (so tests can use port 0).
    pub async fn run(
        settings: RunSettings,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), RunError> {
        crate::kafka::client::set_user_properties(&settings.kafka.properties);
        let p = prepare(&settings).await?;
        crate::heap_trim::start(settings.heap_trim_interval, shutdown.clone());
        let shared = Shared::new(&settings, &p);
        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
        let (committer, commits) = commit_channel();
        // Under exactly-once the offsets travel in the transaction: nobody sends on the channel,
        // and dropping its sender lets the group side finish once the stream thread is done.
        let via_group: Option<Box<dyn OffsetCommitter>> = match settings.processing_guarantee {
            ProcessingGuarantee::ExactlyOnceV2 => {
                drop(committer);
                None
            }
            ProcessingGuarantee::AtLeastOnce => Some(Box::new(committer)),
        };
        let group_task = start_cluster(&settings, &p, &shared, cmd_tx, commits, &shutdown).await?;
        let lag_monitor = LagMonitor {
            bootstrap: settings.bootstrap_servers.clone(),
            group_id: settings.application_id.clone(),
            topic: settings.input_topic.clone(),
            partitions: p.partitions,
            lag: shared.group_lag.clone(),
        };
        tokio::spawn(lag_monitor.run(shutdown.clone()));
        let query_state = QueryState {
            local: shared.local.clone(),
            partition_count: p.partitions,
            self_addr: settings.advertised_addr.clone(),
            metrics: shared.metrics.clone(),
            status: shared.status.clone(),
            routing: shared.routing.clone(),
            group_lag: shared.group_lag.clone(),
            liveness: shared.liveness.clone(),
            client: QueryState::client(&settings.query)
                .map_err(|e| RunError::Http(std::io::Error::other(e)))?,
            limits: settings.query,
            permits: QueryState::permits(&settings.query),
            suspects: Default::default(),
        };
        let status = shared.status.clone();
        let thread = StreamThread {
            settings: settings.clone(),
            topology: p.topology,
            producer: p.producer,
            delivery: p.delivery,
            tracked: p.tracked,
            dlq_partitions: p.dlq_partitions,
            input_partitions: p.partitions,
            sink_partitions: p.sink_partitions,
            local: shared.local,
            metrics: shared.metrics,
            status: shared.status,
            shutdown: shutdown.clone(),
            commands: cmd_rx,
            via_group,
            liveness: shared.liveness,
            held: shared.held,
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("stream-thread".into())
            .spawn(move || {
                let _ = done_tx.send(thread.run());
            })
            .map_err(RunError::Http)?;

        let addr = listener.local_addr().map_err(RunError::Http)?;
        tracing::info!(%addr, advertised = %settings.advertised_addr, "query api listening");
        let server_shutdown = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, query::app(query_state))
                .with_graceful_shutdown(server_shutdown.cancelled_owned())
                .await
        });

        let result = match done_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                status.set(Status::Failed);
                tracing::error!(error = %e, "stream thread failed; stopping without committing");
                Err(RunError::StreamThread(e))
            }
            Err(_) => Err(RunError::Panicked),
        };
        shutdown.cancel();
        // A group loop that gave up (a refusal no retry can mend: another application's
        // consumers in the group, no authorization, a bad configuration) closed the stream
        // thread's command channel, so the thread stopped as if asked to: the run failed all the
        // same, and must not exit 0.
        let result = match (result, group_task.await) {
            (Err(e), _) => Err(e),
            (Ok(()), Ok(Ok(()))) => Ok(()),
            (Ok(()), Ok(Err(e))) => {
                status.set(Status::Failed);
                tracing::error!(error = %e, "group membership failed; stopping");
                Err(RunError::Group(e))
            }
            (Ok(()), Err(e)) => {
                status.set(Status::Failed);
                tracing::error!(error = %e, "group loop task failed; stopping");
                Err(RunError::GroupPanicked)
            }
        };
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "http server error"),
            Err(e) => tracing::warn!(error = %e, "http server task failed"),
        }
        result
    }
}
