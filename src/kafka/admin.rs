//! Topic administration: read partition counts from metadata, create the topics paystream owns.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;

use super::client::{admin_config, restore_consumer_config};
use super::KafkaError;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a metadata read keeps retrying a broker that does not answer (busy, restarting, not
/// up yet) before the caller sees the error: Kafka clients' `default.api.timeout.ms`.
pub const METADATA_DEADLINE: Duration = Duration::from_secs(60);
const METADATA_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Events served after a failed metadata read, looking for a refusal (an empty queue answers
/// at once, so this bounds the work, not the time).
const MAX_EVENTS_SERVED: usize = 256;

/// A topic paystream needs, with the settings it should be created with.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic-level configs, e.g. `cleanup.policy=compact`.
    pub configs: Vec<(String, String)>,
}

/// Partition count of `topic`, or `None` if it does not exist. Blocking: call from a blocking
/// context (`spawn_blocking` in async code).
///
/// A broker that cannot be reached or does not answer is retried for [`METADATA_DEADLINE`]: an
/// instance started while its broker is overloaded or restarting waits for it, as Kafka
/// clients do, instead of exiting on the first timeout.
pub fn partition_count(bootstrap: &str, topic: &str) -> Result<Option<i32>, KafkaError> {
    partition_count_within(bootstrap, topic, METADATA_DEADLINE)
}

/// [`partition_count`], retrying an unreachable broker for `deadline` instead.
pub fn partition_count_within(
    bootstrap: &str,
    topic: &str,
    deadline: Duration,
) -> Result<Option<i32>, KafkaError> {
    let consumer = metadata_client(bootstrap)?;
    count_with(&consumer, topic, Instant::now() + deadline)
}

/// Partition counts of several topics through one client (`None`: the topic does not exist).
/// Blocking, like [`partition_count`].
pub fn partition_counts(
    bootstrap: &str,
    topics: &[String],
) -> Result<Vec<Option<i32>>, KafkaError> {
    let consumer = metadata_client(bootstrap)?;
    let deadline = Instant::now() + METADATA_DEADLINE;
    topics
        .iter()
        .map(|t| count_with(&consumer, t, deadline))
        .collect()
}

/// The metadata client's context. librdkafka reports a refused password or certificate only
/// through the error callback (the metadata call itself sees "all brokers down"): this keeps the
/// first refusal, so a metadata read stops on it at once, saying so, instead of retrying an
/// unreachable broker until [`METADATA_DEADLINE`].
#[derive(Default)]
struct RefusalWatch {
    refused: std::sync::Mutex<Option<String>>,
}

impl RefusalWatch {
    fn refusal(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }
}

impl ClientContext for RefusalWatch {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)
        ) {
            if let Ok(mut refused) = self.refused.lock() {
                refused.get_or_insert_with(|| reason.to_owned());
            }
        }
        tracing::error!(target: "rdkafka::client", "librdkafka: {error}: {reason}");
    }
}

impl ConsumerContext for RefusalWatch {}

type MetadataClient = BaseConsumer<RefusalWatch>;

fn metadata_client(bootstrap: &str) -> Result<MetadataClient, KafkaError> {
    restore_consumer_config(bootstrap, "paystream-metadata")
        .create_with_context(RefusalWatch::default())
        .map_err(KafkaError::client("metadata"))
}

/// Whether a failed metadata read may succeed if asked again: the broker was not reached or did
/// not answer in time (as opposed to a refusal, which asking again does not change).
fn is_unreachable(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::Resolve
        )
    )
}

fn count_with(
    consumer: &MetadataClient,
    topic: &str,
    deadline: Instant,
) -> Result<Option<i32>, KafkaError> {
    let md = loop {
        // Each request waits at most until the deadline (and at least a moment).
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = METADATA_TIMEOUT.min(left).max(METADATA_RETRY_BACKOFF);
        let result = consumer.fetch_metadata(Some(topic), timeout);
        if result.is_err() {
            // Serve librdkafka's queued events (this client is never polled otherwise): each
            // poll serves one (a log line or an error), and the refusal may sit behind others.
            for _ in 0..MAX_EVENTS_SERVED {
                let _ = consumer.poll(Duration::ZERO);
                if let Some(reason) = consumer.context().refusal() {
                    return Err(KafkaError::Refused { reason });
                }
            }
        }
        match result {
            Ok(md) => break md,
            Err(e) if is_unreachable(&e) && Instant::now() + METADATA_RETRY_BACKOFF < deadline => {
                tracing::warn!(topic, error = %e, "broker did not answer a metadata request; retrying");
                std::thread::sleep(METADATA_RETRY_BACKOFF);
            }
            Err(e) => return Err(KafkaError::client(format!("metadata of {topic}"))(e)),
        }
    };
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None => Ok(Some(t.partitions().len() as i32).filter(|n| *n > 0)),
        Some(e) => {
            let code = RDKafkaErrorCode::from(e);
            if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                Ok(None)
            } else {
                Err(KafkaError::Topic {
                    topic: topic.to_owned(),
                    message: format!("metadata error: {code}"),
                })
            }
        }
    }
}

/// Delete `topics`. A topic that is already gone is fine; any other refusal is an error naming
/// the topic.
pub async fn delete_topics(bootstrap: &str, topics: &[String]) -> Result<(), KafkaError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = admin_config(bootstrap)
        .create()
        .map_err(KafkaError::client("admin"))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .delete_topics(&names, &opts)
        .await
        .map_err(KafkaError::client("delete topics"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    topic,
                    message: format!("cannot delete: {code}"),
                })
            }
        }
    }
    Ok(())
}

/// Make sure every topic in `specs` exists with the required partition count. Missing topics are
/// created; an existing topic with a different partition count is an error (a changelog whose
/// partitions do not line up with the source would restore the wrong keys into a task).
pub async fn ensure_topics(bootstrap: &str, specs: &[TopicSpec]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = admin_config(bootstrap)
        .create()
        .map_err(KafkaError::client("admin"))?;
    let existing = {
        let b = bootstrap.to_owned();
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        tokio::task::spawn_blocking(move || partition_counts(&b, &names))
            .await
            .map_err(|e| KafkaError::Topic {
                topic: "-".into(),
                message: e.to_string(),
            })??
    };
    for (spec, existing) in specs.iter().zip(existing) {
        match existing {
            Some(n) if n == spec.partitions => continue,
            Some(n) => {
                return Err(KafkaError::Topic {
                    topic: spec.name.clone(),
                    message: format!(
                        "has {n} partitions but {} are required (it must match the input topic); \
                         delete it or use another --application-id",
                        spec.partitions
                    ),
                })
            }
            None => {}
        }
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication_factor),
        );
        for (k, v) in &spec.configs {
            topic = topic.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .map_err(KafkaError::client(format!("create topic {}", spec.name)))?;
        for r in results {
            match r {
                Ok(_) => {
                    tracing::info!(topic = %spec.name, partitions = spec.partitions, "created topic")
                }
                // Another instance created it at the same time: fine, re-check below.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(KafkaError::Topic {
                        topic: name,
                        message: format!("cannot create: {code}"),
                    })
                }
            }
        }
        wait_for_topic(bootstrap, &spec.name, spec.partitions).await?;
    }
    Ok(())
}

/// Poll metadata until `topic` shows `partitions` partitions on every bootstrap broker (creation
/// propagates asynchronously: a client asking another broker a moment later may not see it yet).
async fn wait_for_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let brokers: Vec<String> = bootstrap
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(str::to_owned)
        .collect();
    let mut waiting = brokers.clone();
    loop {
        let mut still = Vec::new();
        for b in waiting {
            let (addr, t) = (b.clone(), topic.to_owned());
            // A broker that cannot answer (down) is not waited for: the topic exists once the
            // controller created it; only a broker that answers without it is behind.
            let n = tokio::task::spawn_blocking(move || partition_count(&addr, &t))
                .await
                .map_err(|e| KafkaError::Topic {
                    topic: topic.to_owned(),
                    message: e.to_string(),
                })?;
            if matches!(n, Ok(Some(p)) if p == partitions) || (n.is_err() && brokers.len() > 1) {
                continue;
            }
            n?;
            still.push(b);
        }
        if still.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(KafkaError::Timeout {
                what: format!(
                    "topic {topic} to appear with {partitions} partitions on {}",
                    still.join(",")
                ),
                seconds: 30,
            });
        }
        waiting = still;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
