//! Reading changelogs for the state updater: one `read_committed` consumer for every store's
//! changelog topic.
//!
//! Where "the end" is: the changelog's log-end offset (high watermark, read `read_uncommitted`
//! by [`LogEnds`]) when the read starts, and a read is there once the consumer's *position*
//! reached it. Not the last stable offset, and not the end-of-partition event (which comes at the
//! last stable offset): right after the previous owner's `commit_transaction` returned, the
//! broker has not yet written the commit markers, the last stable offset still lies before that
//! last transaction, and a restore that stopped there would miss the last commit while the source
//! offsets (fetched `require_stable`) already include it: events lost from the view. Waiting for
//! the position also waits out a transaction still open on the changelog (a dead instance's,
//! aborted by the broker after `transaction.timeout.ms`), as Kafka Streams' restore does.
//! Commit markers are never delivered, but librdkafka moves the position past them.
//!
//! One consumer for all of them, so an instance has one prefetch budget: librdkafka's
//! `queued.max.messages.kbytes` bounds a consumer's whole queue (16 MiB here, see
//! `kafka::client`). With one consumer per store at librdkafka's defaults, a restore of six
//! stores prefetched up to six times 64 MiB (restore peak RSS at 1M orders: 973 MiB, now 337
//! MiB). One consumer still fetches faster than the restore applies (`paystream bench` reads
//! the same changelogs with such a consumer about three times as fast). Records say which store
//! they belong to by their topic.
//!
//! Partitions come and go with `incremental_assign` / `incremental_unassign` (explicit start
//! offsets), so adding one task never restarts the fetches of the others.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError as RdError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::kafka::client::{log_end_client_config, restore_consumer_config};
use crate::telemetry::Metrics;

/// How long a watermark query may take before the partition is retried later.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// Client context: feeds each partition's lag in the first store's changelog into the metrics.
pub(crate) struct ReaderContext {
    topic: String,
    lag_to: Option<Arc<Metrics>>,
}

impl ClientContext for ReaderContext {
    fn stats(&self, stats: Statistics) {
        let Some(metrics) = &self.lag_to else { return };
        let Some(t) = stats.topics.get(&self.topic) else {
            return;
        };
        for (p, s) in &t.partitions {
            if *p < 0 || s.ls_offset < 0 {
                continue;
            }
            // Records between what was applied and the last stable offset. May count one
            // trailing commit marker: an upper bound, never an understatement.
            let applied = if s.app_offset >= 0 {
                s.app_offset
            } else {
                s.next_offset
            };
            if applied >= 0 {
                metrics
                    .task(*p)
                    .lag
                    .store((s.ls_offset - applied).max(0), Ordering::Relaxed);
            }
        }
    }

    fn error(&self, error: RdError, reason: &str) {
        tracing::warn!(topic = %self.topic, %error, reason, "changelog consumer error");
    }
}

impl ConsumerContext for ReaderContext {}

/// What one poll of a reader gave.
pub(crate) enum Polled<'a> {
    Record {
        /// Which store's changelog (the index of its topic in [`ChangelogReader::new`]).
        store: usize,
        partition: i32,
        offset: i64,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
    },
    Nothing,
}

/// The consumer of every store's changelog.
pub(crate) struct ChangelogReader {
    /// Changelog topic of each store, in the stores' order.
    topics: Vec<String>,
    consumer: BaseConsumer<ReaderContext>,
    /// Partitions assigned, per store.
    assigned: Vec<usize>,
    created: Instant,
}

impl ChangelogReader {
    /// A reader for `topics` (one per store, in the stores' order); `lag_to`: report the
    /// per-partition lag of the first one into these metrics.
    pub(crate) fn new(
        bootstrap: &str,
        group_id: &str,
        topics: Vec<String>,
        lag_to: Option<Arc<Metrics>>,
    ) -> Result<Self, RdError> {
        let mut config = restore_consumer_config(bootstrap, group_id);
        if lag_to.is_some() {
            config.set("statistics.interval.ms", "1000");
        }
        let consumer = config.create_with_context(ReaderContext {
            topic: topics.first().cloned().unwrap_or_default(),
            lag_to,
        })?;
        Ok(Self {
            assigned: vec![0; topics.len()],
            topics,
            consumer,
            created: Instant::now(),
        })
    }

    /// Store `store`'s changelog topic.
    pub(crate) fn topic(&self, store: usize) -> &str {
        &self.topics[store]
    }

    /// Where the consumer stands in each assigned partition, as `(store, partition, offset)`:
    /// the offset of the next record it will hand out, past commit markers and aborted records.
    /// Partitions it has not read from yet are left out.
    pub(crate) fn positions(&self) -> Result<Vec<(usize, i32, i64)>, RdError> {
        Ok(self
            .consumer
            .position()?
            .elements()
            .iter()
            .filter_map(|e| match (self.store_of(e.topic()), e.offset()) {
                (Some(store), Offset::Offset(o)) => Some((store, e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    fn store_of(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    /// Start reading store `store`'s `partition` at `offset`.
    pub(crate) fn assign(
        &mut self,
        store: usize,
        partition: i32,
        offset: i64,
    ) -> Result<(), RdError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topics[store], partition, Offset::Offset(offset))?;
        self.consumer.incremental_assign(&tpl)?;
        self.assigned[store] += 1;
        Ok(())
    }

    /// Stop reading store `store`'s `partition` (a no-op when it is not assigned).
    pub(crate) fn unassign(&mut self, store: usize, partition: i32) -> Result<(), RdError> {
        let topic = &self.topics[store];
        let current = self.consumer.assignment()?;
        if current.find_partition(topic, partition).is_none() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        self.consumer.incremental_unassign(&tpl)?;
        self.assigned[store] = self.assigned[store].saturating_sub(1);
        Ok(())
    }

    /// How long ago this consumer was created.
    pub(crate) fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// Whether any partition of any changelog is assigned.
    pub(crate) fn has_assignment(&self) -> bool {
        self.assigned.iter().any(|&n| n > 0)
    }

    /// Poll once, waiting at most `timeout`; hands the record (or event) to `f` while the
    /// message is borrowed. Consumer errors are logged by the context and yield `Nothing`.
    pub(crate) fn poll<R>(&self, timeout: Duration, f: impl FnOnce(Polled<'_>) -> R) -> R {
        match self.consumer.poll(timeout) {
            Some(Ok(m)) => match self.store_of(m.topic()) {
                Some(store) => f(Polled::Record {
                    store,
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key(),
                    value: m.payload(),
                }),
                // Only assigned topics are fetched: cannot happen.
                None => {
                    tracing::warn!(topic = m.topic(), "record from a topic no store reads");
                    f(Polled::Nothing)
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "changelog consumer error");
                f(Polled::Nothing)
            }
            None => f(Polled::Nothing),
        }
    }
}

/// The changelogs' watermarks as a `read_uncommitted` client sees them: the high one is the
/// log-end offset, past every record written, committed or not (see the module documentation).
pub(crate) struct LogEnds {
    consumer: BaseConsumer,
}

impl LogEnds {
    pub(crate) fn new(bootstrap: &str) -> Result<Self, RdError> {
        Ok(Self {
            consumer: log_end_client_config(bootstrap).create()?,
        })
    }

    /// `(low, high)` watermarks of `topic`'s `partition`; high is the log-end offset.
    ///
    /// After a broker failure librdkafka's metadata cache can lack the partition or name a dead
    /// leader ("Unknown partition" and friends, for as long as the cache lives: minutes for a
    /// topic no consumer subscribes to); such an error refreshes the topic's metadata and asks
    /// once more.
    pub(crate) fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), RdError> {
        match self
            .consumer
            .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
        {
            Err(e) if stale_metadata(&e) => {
                tracing::debug!(topic, partition, error = %e, "refreshing metadata");
                self.consumer
                    .fetch_metadata(Some(topic), WATERMARK_TIMEOUT)?;
                self.consumer
                    .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
            }
            r => r,
        }
    }
}

/// Errors that mean "the client's idea of where the partition lives is out of date".
fn stale_metadata(e: &RdError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::UnknownPartition
                | C::UnknownTopicOrPartition
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::BrokerNotAvailable
        )
    )
}
