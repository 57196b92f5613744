//! Reading changelogs for the state updater: one `read_committed` consumer per changelog topic.
//!
//! Why one per topic: "caught up" means the consumer's fetch position reached the partition's
//! last stable offset, and under transactions the last records of a changelog are control
//! records (commit markers) that are never delivered, so no delivered offset ever equals the
//! end. librdkafka signals the end with an end-of-partition event, but rdkafka reports it with
//! the partition number only; with one consumer per topic the event is unambiguous.
//!
//! Partitions come and go with `incremental_assign` / `incremental_unassign` (explicit start
//! offsets), so adding one task never restarts the fetches of the others.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError as RdError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::kafka::client::restore_consumer_config;
use crate::telemetry::Metrics;

/// How long a watermark query may take before the partition is retried later.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// Client context: quiet about end-of-partition (reaching it is the point), and, for the
/// consumer of the first store's changelog, feeding each partition's lag into the metrics.
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
        use rdkafka::error::RDKafkaErrorCode;
        if matches!(
            error,
            RdError::PartitionEOF(_) | RdError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        tracing::warn!(topic = %self.topic, %error, reason, "changelog consumer error");
    }
}

impl ConsumerContext for ReaderContext {}

/// What one poll of a reader gave.
pub(crate) enum Polled<'a> {
    Record {
        partition: i32,
        offset: i64,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
    },
    /// The consumer reached the end (last stable offset) of this partition.
    End {
        partition: i32,
    },
    Nothing,
}

/// The consumer of one changelog topic.
pub(crate) struct ChangelogReader {
    pub(crate) topic: String,
    consumer: BaseConsumer<ReaderContext>,
    assigned: usize,
}

impl ChangelogReader {
    /// A reader for `topic`; `lag_to`: report per-partition lag into these metrics.
    pub(crate) fn new(
        bootstrap: &str,
        group_id: &str,
        topic: &str,
        lag_to: Option<Arc<Metrics>>,
    ) -> Result<Self, RdError> {
        let mut config = restore_consumer_config(bootstrap, group_id);
        if lag_to.is_some() {
            config.set("statistics.interval.ms", "1000");
        }
        let consumer = config.create_with_context(ReaderContext {
            topic: topic.to_owned(),
            lag_to,
        })?;
        Ok(Self {
            topic: topic.to_owned(),
            consumer,
            assigned: 0,
        })
    }

    /// `(low, high)` watermarks of `partition`; high is the last stable offset.
    pub(crate) fn watermarks(&self, partition: i32) -> Result<(i64, i64), RdError> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
    }

    /// Start reading `partition` at `offset`.
    pub(crate) fn assign(&mut self, partition: i32, offset: i64) -> Result<(), RdError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        self.consumer.incremental_assign(&tpl)?;
        self.assigned += 1;
        Ok(())
    }

    /// Stop reading `partition` (a no-op when it is not assigned).
    pub(crate) fn unassign(&mut self, partition: i32) -> Result<(), RdError> {
        let current = self.consumer.assignment()?;
        if current.find_partition(&self.topic, partition).is_none() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        self.consumer.incremental_unassign(&tpl)?;
        self.assigned = self.assigned.saturating_sub(1);
        Ok(())
    }

    pub(crate) fn has_assignment(&self) -> bool {
        self.assigned > 0
    }

    /// Poll once, waiting at most `timeout`; hands the record (or event) to `f` while the
    /// message is borrowed. Consumer errors are logged by the context and yield `Nothing`.
    pub(crate) fn poll<R>(&self, timeout: Duration, f: impl FnOnce(Polled<'_>) -> R) -> R {
        match self.consumer.poll(timeout) {
            Some(Ok(m)) => f(Polled::Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key(),
                value: m.payload(),
            }),
            Some(Err(RdError::PartitionEOF(partition))) => f(Polled::End { partition }),
            Some(Err(e)) => {
                tracing::debug!(topic = %self.topic, error = %e, "changelog consumer error");
                f(Polled::Nothing)
            }
            None => f(Polled::Nothing),
        }
    }
}
