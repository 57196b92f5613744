//! One paystream instance: topics checked, stream thread started, query API served.

use std::collections::HashMap;
use std::sync::Arc;

use paystream_topology::{shipped_topology, Changelog, StoreKind};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::RunSettings;
use crate::coordination::leader::GroupAssignor;
use crate::coordination::membership::{GroupMember, MembershipConfig, MembershipError};
use crate::coordination::protocol::SubscriptionInfo;
use crate::kafka::admin::{ensure_topics, partition_count, TopicSpec};
use crate::kafka::producer::OutputProducer;
use crate::kafka::KafkaError;
use crate::query::routing::RoutingTable;
use crate::query::{self, QueryState};
use crate::runtime::group::{commit_channel, GroupLoop, Standalone};
use crate::runtime::local::LocalStores;
use crate::runtime::stream_thread::{SharedStatus, Status, StreamThread, StreamThreadError};
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
    #[error("http server: {0}")]
    Http(#[source] std::io::Error),
    #[error("group membership: {0}")]
    Group(#[from] MembershipError),
    #[error("state directory {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running instance's shared parts (for embedding, tests and the demo).
pub struct Instance;

impl Instance {
    /// Run one instance until `shutdown` is cancelled or a fatal error occurs. The caller binds
    /// `listener` (so tests can use port 0).
    pub async fn run(
        settings: RunSettings,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), RunError> {
        let bootstrap = settings.bootstrap_servers.clone();
        let input = settings.input_topic.clone();
        let partitions = {
            let (b, t) = (bootstrap.clone(), input.clone());
            tokio::task::spawn_blocking(move || partition_count(&b, &t))
                .await
                .map_err(|_| RunError::Panicked)??
        }
        .ok_or_else(|| RunError::InputTopicMissing {
            topic: input.clone(),
            bootstrap: bootstrap.clone(),
        })?;
        let topology = Arc::new(
            shipped_topology(&input, &settings.shipped)
                .map_err(|e| RunError::Topology(e.to_string()))?,
        );
        tracing::info!(topology = %topology.describe(), "topology");

        // Internal changelogs: compacted; a window store's also deletes what is older than the
        // store keeps (plus a day, as Kafka Streams does), so it does not grow forever.
        let mut specs: Vec<TopicSpec> = topology
            .stores()
            .iter()
            .filter(|st| matches!(st.changelog, Changelog::Internal))
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
        // Output topics (SEND_SMS, alerts, ...) get the input's partition count: a ledger store
        // of partition p is rebuilt from partition p of its topic, so keys must land alike.
        // Existing ones must match (ensure_topics refuses otherwise).
        // Timestamps: the broker's retention judges records by their timestamp, and these
        // carry event times; append time keeps a backfill of old events from being deleted
        // at once (a ledger topic losing records would let an SMS go out twice).
        for sink in topology.sink_topics() {
            specs.push(TopicSpec {
                name: sink,
                partitions,
                replication_factor: settings.replication_factor,
                configs: vec![("message.timestamp.type".into(), "LogAppendTime".into())],
            });
        }
        let tracked: Vec<(String, i32)> = topology
            .stores()
            .iter()
            .map(|st| (st.changelog_topic(&settings.application_id), partitions))
            .collect();
        let dlq_partitions = {
            let (b, t) = (bootstrap.clone(), settings.dlq_topic.clone());
            tokio::task::spawn_blocking(move || partition_count(&b, &t))
                .await
                .map_err(|_| RunError::Panicked)??
        };
        if dlq_partitions.is_none() {
            specs.push(TopicSpec {
                name: settings.dlq_topic.clone(),
                partitions,
                replication_factor: settings.replication_factor,
                configs: vec![],
            });
        }
        ensure_topics(&bootstrap, &specs).await?;
        let dlq_partitions = dlq_partitions.unwrap_or(partitions);

        let mut sink_partitions = HashMap::new();
        for sink in topology.sink_topics() {
            let (b, t) = (bootstrap.clone(), sink.clone());
            let n = tokio::task::spawn_blocking(move || partition_count(&b, &t))
                .await
                .map_err(|_| RunError::Panicked)??
                .ok_or_else(|| KafkaError::Topic {
                    topic: sink.clone(),
                    message: "sink topic does not exist".into(),
                })?;
            sink_partitions.insert(sink, n);
        }

        let producer = OutputProducer::new(&bootstrap, &tracked)?;
        let metrics = Metrics::new();
        let local = LocalStores::new();
        let status = Arc::new(SharedStatus::default());
        let routing = Arc::new(RoutingTable::default());
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .connect_timeout(std::time::Duration::from_millis(500))
            .build()
            .map_err(|e| RunError::Http(std::io::Error::other(e)))?;
        let query_state = QueryState {
            local: local.clone(),
            partition_count: partitions,
            self_addr: settings.advertised_addr.clone(),
            metrics: metrics.clone(),
            status: status.clone(),
            routing: routing.clone(),
            client,
        };

        // Group membership: who runs what, and the partition map for routing.
        let process_id = process_id(&settings)?;
        // Only stores with a checkpoint say how caught up a local copy is (ledgers are rebuilt),
        // and the first of them is the one `Task::changelog_position` reports.
        let store_names: Vec<String> = topology
            .stores()
            .iter()
            .filter(|s| matches!(s.changelog, Changelog::Internal))
            .take(1)
            .map(|s| s.name.clone())
            .collect();
        let subscription = Arc::new(std::sync::Mutex::new(SubscriptionInfo {
            process_id: process_id.clone(),
            endpoint: settings.advertised_addr.clone(),
            prev_active: vec![],
            prev_standby: vec![],
            offsets: local_offsets(&settings, &store_names, partitions),
        }));
        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
        let (committer, commits) = commit_channel();
        let group_task = if settings.standalone {
            tracing::info!("standalone: this instance owns all {partitions} partitions");
            let (addr, app, b, t) = (
                settings.advertised_addr.clone(),
                settings.application_id.clone(),
                bootstrap.clone(),
                input.clone(),
            );
            let standalone = Standalone {
                partitions,
                self_addr: addr,
                commands: cmd_tx,
                commits,
                routing,
                bootstrap: b,
                group_id: app,
                topic: t,
            };
            tokio::spawn(async move {
                standalone.run().await;
                Ok(())
            })
        } else {
            let mut membership = MembershipConfig::new(
                bootstrap.split(',').map(|s| s.trim().to_owned()).collect(),
                settings.application_id.clone(),
                input.clone(),
            );
            membership.client_id = format!("paystream-{}", settings.advertised_addr);
            membership.session_timeout = settings.session_timeout;
            membership.heartbeat_interval =
                (settings.session_timeout / 5).min(std::time::Duration::from_secs(1));
            membership.group_instance_id = settings.group_instance_id.clone();
            let member = GroupMember::connect(membership).await?;
            let mut assignor = GroupAssignor::new(partitions, settings.standby_replicas);
            assignor.acceptable_recovery_lag = settings.acceptable_recovery_lag;
            let group = GroupLoop {
                member,
                assignor,
                commands: cmd_tx,
                commits,
                subscription: subscription.clone(),
                routing,
                shutdown: shutdown.clone(),
                probing_interval: settings.probing_rebalance_interval,
                heartbeat_interval: (settings.session_timeout / 5)
                    .min(std::time::Duration::from_secs(1)),
                leave_on_shutdown: settings.group_instance_id.is_none(),
            };
            tracing::info!(process_id = %process_id, "joining group {}", settings.application_id);
            tokio::spawn(group.run())
        };

        let thread = StreamThread {
            settings: settings.clone(),
            topology,
            producer,
            dlq_partitions,
            sink_partitions,
            local,
            metrics,
            status: status.clone(),
            shutdown: shutdown.clone(),
            commands: cmd_rx,
            committer,
            subscription,
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("stream-thread".into())
            .spawn(move || {
                let r = thread.run();
                let _ = done_tx.send(r);
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
        match group_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "group loop ended with an error"),
            Err(e) => tracing::warn!(error = %e, "group loop task failed"),
        }
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "http server error"),
            Err(e) => tracing::warn!(error = %e, "http server task failed"),
        }
        result
    }
}

/// The instance's stable identity, kept in `<state-dir>/<app-id>/process-id` so a restarted
/// instance is recognised (and gets back the partitions whose stores it still has).
fn process_id(settings: &RunSettings) -> Result<String, RunError> {
    let dir = settings.state_dir.join(&settings.application_id);
    let path = dir.join("process-id");
    let err = |source| RunError::StateDir {
        path: path.clone(),
        source,
    };
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    std::fs::create_dir_all(&dir).map_err(err)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("{:x}-{:x}", nanos, std::process::id());
    std::fs::write(&path, &id).map_err(err)?;
    Ok(id)
}

/// Changelog offsets of the stores left on disk by an earlier run (from their checkpoints), so
/// the leader can hand those partitions back to this instance instead of restoring elsewhere.
fn local_offsets(
    settings: &RunSettings,
    stores: &[String],
    partitions: i32,
) -> std::collections::BTreeMap<i32, i64> {
    use paystream_state::checkpoint::Checkpoint;
    let mut out = std::collections::BTreeMap::new();
    for p in 0..partitions {
        let mut min: Option<i64> = None;
        for s in stores {
            let dir = crate::runtime::task::store_dir(
                &settings.state_dir,
                &settings.application_id,
                p,
                s,
            );
            match Checkpoint::read(&dir) {
                Ok(Some(c)) => {
                    min = Some(min.map_or(c.changelog_offset, |m: i64| m.min(c.changelog_offset)))
                }
                _ => {
                    min = None;
                    break;
                }
            }
        }
        if let Some(m) = min {
            out.insert(p, m);
        }
    }
    out
}
