//! Client configurations, in one place so every client agrees on the settings that matter.
//!
//! The user's `--kafka-property` settings ([`set_user_properties`]) go on every client made
//! here, after paystream's own (the keys paystream must own are refused by `config`).

use std::sync::RwLock;

use rdkafka::ClientConfig;

/// `--kafka-property` settings of this process.
static USER_PROPERTIES: RwLock<Vec<(String, String)>> = RwLock::new(Vec::new());

/// The librdkafka properties every client made from now on gets (validated by `config`).
pub fn set_user_properties(props: &[(String, String)]) {
    if let Ok(mut p) = USER_PROPERTIES.write() {
        *p = props.to_vec();
    }
}

/// The properties [`set_user_properties`] gave (for clients not made by librdkafka).
pub fn user_properties() -> Vec<(String, String)> {
    USER_PROPERTIES
        .read()
        .map(|p| p.clone())
        .unwrap_or_default()
}

/// `c` (paystream's settings) with the user's properties applied over it.
fn finish(mut c: ClientConfig) -> ClientConfig {
    if let Ok(props) = USER_PROPERTIES.read() {
        for (k, v) in props.iter() {
            c.set(k, v);
        }
    }
    c
}

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
    finish(c)
}

/// A transaction's lifetime on the broker before it aborts it (Kafka Streams uses the same under
/// exactly-once): what an instance that dies mid-transaction holds back of its partitions'
/// `read_committed` readers. Deliveries may not take longer than their transaction.
pub const TRANSACTION_TIMEOUT_MS: &str = "10000";

/// [`producer_config`] plus a `transactional.id` (exactly-once): every commit is one Kafka
/// transaction holding changelog, output and dead-letter records and the source offsets.
pub fn transactional_producer_config(bootstrap: &str, transactional_id: &str) -> ClientConfig {
    let mut c = producer_config(bootstrap);
    c.set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
        .set("message.timeout.ms", TRANSACTION_TIMEOUT_MS);
    if super::failpoint::stop_in_commit_armed() {
        let open = super::failpoint::STOP_IN_COMMIT_TRANSACTION_TIMEOUT_MS;
        c.set("linger.ms", super::failpoint::STOP_IN_COMMIT_LINGER_MS)
            .set("transaction.timeout.ms", open)
            .set("message.timeout.ms", open);
    }
    finish(c)
}

/// Records the source consumer fetches ahead, at most (librdkafka's default is 64 MiB per
/// consumer): enough for several poll rounds of every partition, and part of the memory an
/// instance holds besides `--state-memory-mb`.
const SOURCE_PREFETCH_KBYTES: &str = "16384";
/// Records the source consumer tries to keep fetched ahead (librdkafka's default is 100,000).
/// With the 10 ms fetch backoff a queue that runs low refills within a poll round, so a small
/// one costs no speed: 20,000 instead of 200,000 took 40 MiB off the peak RSS at the same ingest
/// rate (BENCHMARKS.md, "A smaller source prefetch, bounded restore consumers"). It was 200,000
/// while the backoff was librdkafka's 1 s, when 50,000 cost 15% of the rate.
const SOURCE_QUEUED_MIN_MESSAGES: &str = "20000";
/// Largest fetch response of the source consumer (librdkafka's default is 50 MiB). Fetched
/// records point into their response buffer (for a compressed batch, into its decompressed
/// copy), so a response stays in memory until its last record is processed: in the benchmark,
/// 8 MiB took ~70 MiB off the peak RSS at the same ingest rate (BENCHMARKS.md, "Bounded
/// memory"), and 2 MiB another ~50 MiB for ~2% of the rate (BENCHMARKS.md, "Smaller source
/// fetches"; a heap profile of a 1M-order ingest held 57 MiB in decompressed batches).
const SOURCE_FETCH_MAX_BYTES: &str = "2097152";
/// Largest fetch response of the restore consumer. Its partitions are bounded one by one
/// ([`RESTORE_PARTITION_FETCH_BYTES`]), so this only matters beyond 128 changelog partitions
/// (six stores per input partition: beyond 21 input partitions). Unchanged since it was
/// shared with the source consumer: a restore's rate at 48 partitions was measured with it.
const RESTORE_FETCH_MAX_BYTES: &str = "8388608";
/// How long the source consumer waits before fetching a partition again once its prefetch
/// queue is full. librdkafka's default (1 s since 2.1) throttles any application faster than
/// a second's worth of [`SOURCE_PREFETCH_KBYTES`]: the order view waited for input more than it
/// worked (BENCHMARKS.md, "Default pipeline vs Kafka Streams"). Java's consumer has no such
/// pause; 10 ms only matters while the queue is full, so an idle or slow instance is unchanged.
const SOURCE_FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Consumer settings for the source topic: manual assignment, manual commits (offsets are
/// committed only with the changelog writes they depend on). `read_committed`, as everything
/// paystream reads: it also makes librdkafka fetch committed offsets with `require_stable`, so a
/// commit still in flight in another instance's transaction is waited for, never skipped.
pub fn source_consumer_config(bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("queued.min.messages", SOURCE_QUEUED_MIN_MESSAGES)
        .set("queued.max.messages.kbytes", SOURCE_PREFETCH_KBYTES)
        .set("fetch.max.bytes", SOURCE_FETCH_MAX_BYTES)
        .set("fetch.queue.backoff.ms", SOURCE_FETCH_QUEUE_BACKOFF_MS)
        .set("statistics.interval.ms", "1000");
    finish(c)
}

/// Records the delivery consumer keeps fetched ahead per partition (librdkafka's default is
/// 100,000): the deliverer holds up to `--max-buffered` itself, and a pause throws librdkafka's
/// prefetch away.
const DELIVERY_QUEUED_MIN_MESSAGES: &str = "2000";

/// Consumer settings of `paystream deliver` (SMS requests and their retry topics): Kafka's own
/// group management (cooperative, so a new instance does not stop the others' calls), manual
/// commits of what the gateway finished, committed records only (SEND_SMS is written in
/// transactions under exactly-once), and a small prefetch: what is held waiting for the gateway
/// is bounded by `--max-buffered`, the rest stays in Kafka as lag.
pub fn delivery_consumer_config(bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("queued.min.messages", DELIVERY_QUEUED_MIN_MESSAGES)
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.max.bytes", SOURCE_FETCH_MAX_BYTES)
        .set("fetch.queue.backoff.ms", SOURCE_FETCH_QUEUE_BACKOFF_MS);
    finish(c)
}

/// Records the restore consumer tries to keep fetched ahead, for all its partitions together.
/// Changelog records are small, and librdkafka's bookkeeping of each fetched record is not
/// counted by the 16 MiB queue bound ([`SOURCE_PREFETCH_KBYTES`] counts keys and values only):
/// a heap profile of a restore at 1M orders held 129 MiB in `rd_kafka_op_new_fetch_msg` at its
/// peak. 20,000 records are ~50 ms of restore.
const RESTORE_QUEUED_MIN_MESSAGES: &str = "20000";
/// Largest part of a fetch response for one changelog partition (librdkafka's default is
/// 1 MiB). Restoring 10M orders (BENCHMARKS.md, "Restore memory at 10M orders"), peak RSS: 561
/// MiB with neither bound, 479 with the queue bound alone, 417 with this one alone, 332 with
/// both.
const RESTORE_PARTITION_FETCH_BYTES: &str = "65536";

/// Consumer settings for reading a changelog from a given offset to its end (restore, standby).
/// An instance has one such consumer for every changelog topic (six with every topology on),
/// with the source consumer's prefetch bounds and fetch backoff: one prefetch budget. Six
/// consumers, one per changelog, peaked at 725 MiB of RSS in a restore of 2M records at
/// librdkafka's defaults and 670 MiB with these bounds, 80 MiB of it in RocksDB (BENCHMARKS.md,
/// "A smaller source prefetch, bounded restore consumers"). It never commits: restore progress
/// lives in the local checkpoint, not in the group. It reads committed records only (an open or
/// aborted transaction is never restored); where its end is comes from
/// [`log_end_client_config`]'s client.
pub fn restore_consumer_config(bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .set("queued.min.messages", RESTORE_QUEUED_MIN_MESSAGES)
        .set("queued.max.messages.kbytes", SOURCE_PREFETCH_KBYTES)
        .set("fetch.max.bytes", RESTORE_FETCH_MAX_BYTES)
        .set("max.partition.fetch.bytes", RESTORE_PARTITION_FETCH_BYTES)
        .set("fetch.queue.backoff.ms", SOURCE_FETCH_QUEUE_BACKOFF_MS);
    finish(c)
}

/// A client that only asks for watermarks, `read_uncommitted`: its high watermark is the
/// log-end offset (a `read_committed` client's is the last stable offset, behind an open
/// transaction and, for a moment, behind one whose commit markers are still being written).
pub fn log_end_client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", "paystream-log-ends")
        .set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false");
    finish(c)
}

/// Admin client settings.
pub fn admin_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    finish(c)
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
