//! One paystream instance: topics checked, stream thread started, query API served.

use std::collections::HashMap;
use std::sync::Arc;

use paystream_topology::order::order_view_topology;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::RunSettings;
use crate::kafka::admin::{ensure_topics, partition_count, TopicSpec};
use crate::kafka::producer::OutputProducer;
use crate::kafka::KafkaError;
use crate::query::{self, QueryState};
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
    #[error("stream thread: {0}")]
    StreamThread(#[from] StreamThreadError),
    #[error("stream thread panicked")]
    Panicked,
    #[error("http server: {0}")]
    Http(#[source] std::io::Error),
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
        let topology = Arc::new(order_view_topology(&input));
        tracing::info!(topology = %topology.describe(), "topology");

        let mut specs: Vec<TopicSpec> = topology
            .stores()
            .iter()
            .map(|st| TopicSpec {
                name: settings.changelog_topic(&st.name),
                partitions,
                replication_factor: settings.replication_factor,
                configs: vec![("cleanup.policy".into(), "compact".into())],
            })
            .collect();
        let tracked: Vec<(String, i32)> =
            specs.iter().map(|t| (t.name.clone(), partitions)).collect();
        // The DLQ may pre-exist with any partition count; only create it when missing.
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
        let query_state = QueryState {
            local: local.clone(),
            partition_count: partitions,
            self_addr: settings.advertised_addr.clone(),
            metrics: metrics.clone(),
            status: status.clone(),
        };

        let thread = StreamThread {
            settings: settings.clone(),
            topology,
            partitions: (0..partitions).collect(),
            producer,
            dlq_partitions,
            sink_partitions,
            local,
            metrics,
            status: status.clone(),
            shutdown: shutdown.clone(),
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
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "http server error"),
            Err(e) => tracing::warn!(error = %e, "http server task failed"),
        }
        result
    }
}
