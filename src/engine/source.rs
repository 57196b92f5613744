//! The source consumer of the running tasks: which input partitions it reads and from where.
//!
//! A partition starts at its group's committed offset, which this module fetches itself rather
//! than assigning at "the stored offset" and leaving the fetch to librdkafka: librdkafka 2.12
//! drops a committed-offset fetch that fails on the network when the assignment changed while it
//! was in flight, and that partition then never fetches again (seen in the broker drill: the
//! coordinator's broker was killed while the stream thread assigned partitions one by one as
//! their restores finished; four partitions stopped for good). Kafka Streams also fetches the
//! committed offsets itself before it resumes a task.
//!
//! ```text
//!  assign(p) ──▶ pending ──serve_pending: OffsetFetch (read_committed: stable offsets only)──▶
//!     ├─ committed offset n         → fetching from n
//!     ├─ none committed             → fetching from the beginning (auto.offset.reset=earliest)
//!     └─ error (coordinator moving,
//!        transaction still open)    → stays pending; retried after a back-off
//!  unassign(p): pending or fetching → gone
//! ```

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::kafka::client::source_consumer_config;
use crate::telemetry::Metrics;

/// How long one committed-offset fetch may block the stream thread.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// First wait after a failed fetch; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A partition pending longer than this is logged as a warning (then every such period).
const WARN_AFTER: Duration = Duration::from_secs(10);

/// Where a partition starts, from the answer of a committed-offset fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Fetch from here.
    At(Offset),
    /// No usable answer yet (coordinator unreachable, offsets unstable): ask again later.
    Retry,
}

/// Pure decision: the group's answer for one partition → where it starts.
pub fn start_from(answer: Result<Offset, ()>) -> Start {
    match answer {
        Ok(Offset::Offset(n)) if n >= 0 => Start::At(Offset::Offset(n)),
        // Nothing committed yet: the whole partition, as auto.offset.reset=earliest says.
        Ok(Offset::Invalid) => Start::At(Offset::Beginning),
        Ok(_) | Err(()) => Start::Retry,
    }
}

/// Feeds librdkafka's view of each source partition's lag into the metrics.
pub struct LagContext {
    metrics: Arc<Metrics>,
    topic: String,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        let Some(t) = stats.topics.get(&self.topic) else {
            return;
        };
        for (p, s) in &t.partitions {
            if *p >= 0 && s.ls_offset >= 0 && s.app_offset >= 0 {
                self.metrics
                    .task(*p)
                    .lag
                    .store((s.ls_offset - s.app_offset).max(0), Ordering::Relaxed);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// The input partitions of the running tasks.
pub struct Source {
    consumer: BaseConsumer<LagContext>,
    topic: String,
    /// Assigned, but its start offset is not known yet; since when.
    pending: BTreeSet<i32>,
    pending_since: Option<Instant>,
    next_try: Instant,
    backoff: Duration,
    last_warning: Option<Instant>,
}

impl Source {
    pub fn new(
        bootstrap: &str,
        group_id: &str,
        topic: &str,
        metrics: Arc<Metrics>,
    ) -> KafkaResult<Self> {
        let consumer =
            source_consumer_config(bootstrap, group_id).create_with_context(LagContext {
                metrics,
                topic: topic.to_string(),
            })?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            pending: BTreeSet::new(),
            pending_since: None,
            next_try: Instant::now(),
            backoff: FIRST_BACKOFF,
            last_warning: None,
        })
    }

    /// Start reading `partition` at its committed offset (once [`Self::serve_pending`] knows it).
    pub fn assign(&mut self, partition: i32) {
        if self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
            self.next_try = Instant::now();
            self.backoff = FIRST_BACKOFF;
        }
        self.pending.insert(partition);
    }

    /// Stop reading these partitions (pending or fetching).
    pub fn unassign(&mut self, partitions: &[i32]) -> KafkaResult<()> {
        for p in partitions {
            self.pending.remove(p);
        }
        if self.pending.is_empty() {
            self.pending_since = None;
        }
        let assigned = self.consumer.assignment()?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            if assigned.find_partition(&self.topic, *p).is_some() {
                tpl.add_partition(&self.topic, *p);
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer.incremental_unassign(&tpl)
    }

    /// Partitions assigned whose start offset is not known yet.
    pub fn pending(&self) -> impl Iterator<Item = i32> + '_ {
        self.pending.iter().copied()
    }

    /// Fetch the committed offsets of the pending partitions (when the back-off allows) and
    /// start each one whose answer came. Blocks for at most [`FETCH_TIMEOUT`].
    pub fn serve_pending(&mut self) -> KafkaResult<()> {
        if self.pending.is_empty() || Instant::now() < self.next_try {
            return Ok(());
        }
        let mut ask = TopicPartitionList::new();
        for p in &self.pending {
            ask.add_partition(&self.topic, *p);
        }
        let answers = match self.consumer.committed_offsets(ask, FETCH_TIMEOUT) {
            Ok(a) => a,
            Err(e) => {
                self.retry_later(&e.to_string());
                return Ok(());
            }
        };
        let mut start = TopicPartitionList::new();
        let mut started = Vec::new();
        let mut why_not = None;
        for p in &self.pending {
            let answer = match answers.find_partition(&self.topic, *p) {
                Some(e) => match e.error() {
                    Ok(()) => Ok(e.offset()),
                    Err(err) => {
                        why_not = Some(err.to_string());
                        Err(())
                    }
                },
                None => Err(()),
            };
            if let Start::At(offset) = start_from(answer) {
                start.add_partition_offset(&self.topic, *p, offset)?;
                started.push(*p);
            }
        }
        if start.count() > 0 {
            self.consumer.incremental_assign(&start)?;
            for (p, offset) in started
                .iter()
                .zip(start.elements().iter().map(|e| e.offset()))
            {
                tracing::debug!(partition = p, ?offset, "source partition started");
                self.pending.remove(p);
            }
        }
        if self.pending.is_empty() {
            self.pending_since = None;
            self.last_warning = None;
        } else {
            self.retry_later(why_not.as_deref().unwrap_or("no answer for the partition"));
        }
        Ok(())
    }

    fn retry_later(&mut self, why: &str) {
        let now = Instant::now();
        self.next_try = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        let waiting = self.pending_since.map_or(Duration::ZERO, |s| now - s);
        let warn_due = self
            .last_warning
            .map_or(waiting >= WARN_AFTER, |w| now - w >= WARN_AFTER);
        if warn_due {
            self.last_warning = Some(now);
            tracing::warn!(
                partitions = ?self.pending,
                waiting_ms = waiting.as_millis() as u64,
                error = why,
                "cannot fetch the committed offsets of source partitions yet; retrying"
            );
        } else {
            tracing::debug!(partitions = ?self.pending, error = why, "committed offsets not fetched; retrying");
        }
    }

    /// The next record (or error) of the fetching partitions.
    pub fn poll(&self, timeout: Duration) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        self.consumer.poll(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_offset_is_where_the_partition_starts() {
        assert_eq!(
            start_from(Ok(Offset::Offset(0))),
            Start::At(Offset::Offset(0))
        );
        assert_eq!(
            start_from(Ok(Offset::Offset(41_337))),
            Start::At(Offset::Offset(41_337))
        );
    }

    #[test]
    fn a_partition_without_a_commit_starts_at_the_beginning() {
        assert_eq!(
            start_from(Ok(Offset::Invalid)),
            Start::At(Offset::Beginning)
        );
    }

    #[test]
    fn an_error_or_an_odd_answer_is_asked_again_never_guessed() {
        assert_eq!(start_from(Err(())), Start::Retry);
        assert_eq!(start_from(Ok(Offset::End)), Start::Retry);
        assert_eq!(start_from(Ok(Offset::Stored)), Start::Retry);
        assert_eq!(start_from(Ok(Offset::Offset(-5))), Start::Retry);
    }
}
