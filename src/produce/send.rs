//! Sending generated traffic to Kafka.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use paystream_topology::partition_for_key;
use thiserror::Error;

use super::generator::{GeneratorOptions, Traffic};
use crate::kafka::admin::{partition_count, TopicSpec};
use crate::kafka::producer::{Delivery, OutputProducer};
use crate::kafka::KafkaError;

/// What `paystream produce` was asked to do.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub bootstrap_servers: String,
    pub topic: String,
    /// Events per second; `None` = as fast as the producer goes.
    pub rate: Option<u64>,
    /// Create the topic when missing (with `partitions` partitions).
    pub create_topic: bool,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Write the expected final view of every order here (JSON lines): each chunk's orders
    /// before that chunk is sent.
    pub model_out: Option<PathBuf>,
    pub generator: GeneratorOptions,
}

impl ProduceOptions {
    /// Traffic for a topic that already exists (its partition count is read from metadata), no
    /// model file: what benchmarks and drills use.
    pub fn to_existing(
        bootstrap: &str,
        topic: &str,
        generator: GeneratorOptions,
        rate: Option<u64>,
    ) -> Self {
        Self {
            bootstrap_servers: bootstrap.to_owned(),
            topic: topic.to_owned(),
            rate: rate.filter(|r| *r > 0),
            create_topic: false,
            partitions: 12,
            replication_factor: 1,
            model_out: None,
            generator,
        }
    }
}

#[derive(Debug, Error)]
pub enum ProduceError {
    #[error("topic {0} does not exist: pass --create-topic or create it")]
    TopicMissing(String),
    #[error("generator: {0}")]
    Generator(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("writing model to {path}: {source}")]
    Model {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What was sent.
#[derive(Debug, Clone, Copy)]
pub struct ProduceReport {
    pub events: u64,
    pub orders: u64,
    pub malformed: u64,
    pub elapsed: Duration,
}

/// Generate and send traffic (blocking; use `spawn_blocking` from async code).
pub fn produce(opts: &ProduceOptions) -> Result<ProduceReport, ProduceError> {
    let partitions = match partition_count(&opts.bootstrap_servers, &opts.topic)? {
        Some(n) => n,
        None if opts.create_topic => {
            let spec = TopicSpec {
                name: opts.topic.clone(),
                partitions: opts.partitions,
                replication_factor: opts.replication_factor,
                configs: vec![],
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ProduceError::Generator(e.to_string()))?;
            rt.block_on(crate::kafka::admin::ensure_topics(
                &opts.bootstrap_servers,
                &[spec],
            ))?;
            opts.partitions
        }
        None => return Err(ProduceError::TopicMissing(opts.topic.clone())),
    };
    let producer = OutputProducer::new(&opts.bootstrap_servers, &[], &Delivery::AtLeastOnce)?;
    let mut model = match &opts.model_out {
        Some(path) => Some(ModelFile::create(path)?),
        None => None,
    };
    // Sending time only (not generating): what the report's rate is about.
    let (mut sent, mut sending) = (0u64, Duration::ZERO);
    for chunk in super::chunks::plan(&opts.generator) {
        let traffic = Traffic::generate(&chunk).map_err(ProduceError::Generator)?;
        if let Some(m) = &mut model {
            m.append(&traffic)?;
        }
        let started = Instant::now();
        for e in &traffic.events {
            if let Some(rate) = opts.rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                let now = sending + started.elapsed();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let partition = match &e.key {
                Some(k) if !k.is_empty() => partition_for_key(k.as_bytes(), partitions),
                _ => (sent % partitions.max(1) as u64) as i32,
            };
            producer.send(
                &opts.topic,
                partition,
                e.key.as_deref().map(str::as_bytes),
                Some(e.value.as_bytes()),
                None,
                Some(e.timestamp),
            )?;
            sent += 1;
        }
        // Each chunk delivered before the next is generated: one chunk in memory at a time.
        producer.flush(Duration::from_secs(120))?;
        sending += started.elapsed();
    }
    if let Some(m) = model {
        m.finish()?;
    }
    Ok(ProduceReport {
        events: sent,
        orders: opts.generator.orders,
        malformed: opts.generator.malformed,
        elapsed: sending,
    })
}

/// The model file: JSON lines, one order's expected view per line, each chunk's orders sorted
/// by order id. Written before each chunk is sent.
struct ModelFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl ModelFile {
    fn create(path: &std::path::Path) -> Result<Self, ProduceError> {
        let model_err = |source| ProduceError::Model {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(model_err)?;
        }
        let file = std::fs::File::create(path).map_err(model_err)?;
        Ok(Self {
            path: path.to_owned(),
            out: std::io::BufWriter::new(file),
        })
    }

    fn append(&mut self, traffic: &Traffic) -> Result<(), ProduceError> {
        let write = |out: &mut std::io::BufWriter<std::fs::File>| -> std::io::Result<()> {
            for stored in traffic.model().values() {
                serde_json::to_writer(&mut *out, &stored.view)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        };
        write(&mut self.out).map_err(|source| ProduceError::Model {
            path: self.path.clone(),
            source,
        })
    }

    fn finish(mut self) -> Result<(), ProduceError> {
        self.out.flush().map_err(|source| ProduceError::Model {
            path: self.path,
            source,
        })
    }
}
