//! The stream thread: restore, then poll → process → commit, on a plain OS thread.
//!
//! RocksDB writes and librdkafka polls block, so this loop runs on its own thread and never on
//! the async runtime. Delivery guarantee, at-least-once: a source offset is committed only after
//! every changelog (and dead-letter) write of the records before it is acknowledged; after a
//! crash the records since the last commit are processed again, and the order-view topology
//! recognises events it already applied.
//!
//! ```text
//!   poll ─▶ task.process (topology → RocksDB + changelog enqueue) ─▶ ... every commit interval:
//!   producer.flush (wait for acks) ─▶ checkpoints (every 10k writes) ─▶ commit source offsets
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paystream_topology::processor::Record;
use paystream_topology::Topology;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::RunSettings;
use crate::kafka::client::source_consumer_config;
use crate::kafka::producer::OutputProducer;
use crate::kafka::KafkaError;
use crate::runtime::local::{LocalStores, Role};
use crate::runtime::restore::{restore_tasks, RestoreError};
use crate::runtime::task::{Task, TaskError, TaskOutputs, TaskState};
use crate::telemetry::Metrics;

/// How long a commit waits for outstanding deliveries before failing.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Coarse status of the instance, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Status {
    Starting = 0,
    Restoring = 1,
    Running = 2,
    Stopping = 3,
    Failed = 4,
}

/// [`Status`] shared between threads.
#[derive(Debug, Default)]
pub struct SharedStatus(AtomicU8);

impl SharedStatus {
    pub fn set(&self, s: Status) {
        self.0.store(s as u8, Ordering::Release);
    }
    pub fn get(&self) -> Status {
        match self.0.load(Ordering::Acquire) {
            0 => Status::Starting,
            1 => Status::Restoring,
            2 => Status::Running,
            3 => Status::Stopping,
            _ => Status::Failed,
        }
    }
}

#[derive(Debug, Error)]
pub enum StreamThreadError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("source consumer: {0}")]
    Consumer(#[source] rdkafka::error::KafkaError),
}

/// Feeds librdkafka's per-partition consumer lag into the metrics.
struct SourceContext {
    metrics: Arc<Metrics>,
    topic: String,
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        if let Some(t) = stats.topics.get(&self.topic) {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    self.metrics
                        .task(*p)
                        .lag
                        .store(s.consumer_lag, Ordering::Relaxed);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {}

/// Everything the stream thread needs.
pub struct StreamThread {
    pub settings: RunSettings,
    pub topology: Arc<Topology>,
    /// Source partitions this thread processes.
    pub partitions: Vec<i32>,
    pub producer: Arc<OutputProducer>,
    pub dlq_partitions: i32,
    pub sink_partitions: HashMap<String, i32>,
    pub local: Arc<LocalStores>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<SharedStatus>,
    pub shutdown: CancellationToken,
}

impl StreamThread {
    /// Run until `shutdown` is cancelled (then commit and return `Ok`) or a fatal error (then
    /// return it without committing what was not acknowledged).
    pub fn run(self) -> Result<(), StreamThreadError> {
        let s = &self.settings;
        let mut tasks = Vec::with_capacity(self.partitions.len());
        for &p in &self.partitions {
            tasks.push(Task::open(
                p,
                &self.topology,
                &s.state_dir,
                &s.application_id,
                &self.producer,
                self.metrics.task(p),
            )?);
        }
        self.status.set(Status::Restoring);
        let restored = restore_tasks(
            &s.bootstrap_servers,
            &format!("{}-restore", s.application_id),
            &mut tasks,
            &self.shutdown,
        )?;
        if restored.interrupted {
            return Ok(());
        }
        for t in &mut tasks {
            t.transition(TaskState::Running)?;
            self.local
                .insert(t.partition, t.local_partition(Role::Active));
        }

        let ctx = SourceContext {
            metrics: self.metrics.clone(),
            topic: s.input_topic.clone(),
        };
        let consumer: BaseConsumer<SourceContext> =
            source_consumer_config(&s.bootstrap_servers, &s.application_id)
                .create_with_context(ctx)
                .map_err(StreamThreadError::Consumer)?;
        let mut tpl = TopicPartitionList::new();
        for &p in &self.partitions {
            // Stored = the group's committed offset; none yet → auto.offset.reset (earliest).
            tpl.add_partition_offset(&s.input_topic, p, Offset::Stored)
                .map_err(StreamThreadError::Consumer)?;
        }
        consumer.assign(&tpl).map_err(StreamThreadError::Consumer)?;
        self.status.set(Status::Running);
        tracing::info!(partitions = ?self.partitions, topic = %s.input_topic, "processing");

        let mut index: HashMap<i32, usize> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            index.insert(t.partition, i);
        }
        let outputs = TaskOutputs {
            producer: &self.producer,
            dlq_topic: &s.dlq_topic,
            dlq_partitions: self.dlq_partitions,
            sink_partitions: &self.sink_partitions,
        };
        let mut last_commit = Instant::now();
        let mut dirty = false;
        while !self.shutdown.is_cancelled() {
            match consumer.poll(Duration::from_millis(50)) {
                None => {}
                Some(Ok(msg)) => {
                    let Some(&i) = index.get(&msg.partition()) else {
                        continue;
                    };
                    let record = Record {
                        key: msg.key().map(<[u8]>::to_vec),
                        value: msg.payload().map(<[u8]>::to_vec),
                        timestamp: msg.timestamp().to_millis().unwrap_or(0),
                        headers: Vec::new(),
                    };
                    tasks[i].process(msg.topic(), msg.offset(), record, &outputs)?;
                    dirty = true;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "source consumer error (librdkafka retries)")
                }
            }
            if dirty && last_commit.elapsed() >= s.commit_interval {
                self.commit(&consumer, &mut tasks, false)?;
                last_commit = Instant::now();
                dirty = false;
            }
        }
        self.status.set(Status::Stopping);
        self.commit(&consumer, &mut tasks, true)?;
        for t in &mut tasks {
            self.local.remove(t.partition);
            t.transition(TaskState::Closed)?;
        }
        tracing::info!("stream thread stopped cleanly");
        Ok(())
    }

    /// Flush the producer, checkpoint, then commit source offsets.
    fn commit(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        tasks: &mut [Task],
        force_checkpoint: bool,
    ) -> Result<(), StreamThreadError> {
        self.producer.flush(FLUSH_TIMEOUT)?;
        for t in tasks.iter_mut() {
            t.checkpoint(&self.producer, force_checkpoint)?;
        }
        let mut tpl = TopicPartitionList::new();
        for t in tasks.iter() {
            if let Some(next) = t.next_offset.filter(|n| Some(*n) != t.committed_offset) {
                tpl.add_partition_offset(
                    &self.settings.input_topic,
                    t.partition,
                    Offset::Offset(next),
                )
                .map_err(StreamThreadError::Consumer)?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                for t in tasks.iter_mut() {
                    t.committed_offset = t.next_offset;
                }
                self.metrics.commits.fetch_add(1, Ordering::Relaxed);
            }
            // Not fatal: the records stay acknowledged in the changelog; the next commit covers
            // them, and a crash before it only means reprocessing.
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; will retry at the next interval")
            }
        }
        Ok(())
    }
}
