//! Client configurations, in one place so every client agrees on the settings that matter.

use rdkafka::ClientConfig;

/// Producer settings for everything paystream writes (changelogs, dead letters, sinks, traffic):
/// acks=all + idempotence (no duplicates or reordering on retry, which restore relies on),
/// murmur2 partitioning like Java's DefaultPartitioner, and batching tuned for throughput.
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "120000");
    c
}

/// Consumer settings for the source topic: manual assignment, manual commits (offsets are
/// committed only after the changelog writes they depend on are acknowledged).
pub fn source_consumer_config(bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("queued.min.messages", "200000")
        .set("statistics.interval.ms", "1000");
    c
}

/// Consumer settings for reading a changelog from a given offset to its end (restore, standby).
/// It never commits: restore progress lives in the local checkpoint, not in the group.
pub fn restore_consumer_config(bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50")
        .set("queued.min.messages", "200000");
    c
}

/// Admin client settings.
pub fn admin_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Client context for consumers that read to the end on purpose (restore): reaching the end of
/// a partition is the goal, not an error worth an ERROR log line.
pub struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        tracing::error!(%error, reason, "librdkafka error");
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}
