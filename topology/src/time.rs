//! One clock: where a record's time comes from, and which times a task refuses.
//!
//! Entry points: [`TimePolicy`] (given to [`crate::dsl::StreamsBuilder::stream_timed`]) and the
//! [`TimestampExtractor`] trait (Kafka Streams' `TimestampExtractor`). The time a policy gives a
//! record is the only time the task uses: it becomes [`Record::timestamp`], stream time, the time
//! windows are keyed by, and the time stream-time punctuations (deadlines) fire at. Processors
//! never read another clock from the record.
//!
//! A record whose time cannot be used goes to the dead-letter topic and never moves stream time:
//! - no time at all (the extractor cannot read one): the extractor's reason;
//! - a negative time: `invalid_timestamp`;
//! - a time more than `max_future_ms` ahead of the wall clock: `timestamp_in_future` (one event
//!   dated 2100 would otherwise move every window a century ahead and drop all later events as
//!   late).

use std::sync::Arc;

use crate::processor::Record;

/// A record refused before it reaches the first node: it goes to the dead-letter topic with
/// `reason` (a stable code) and `detail` (human text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: &'static str,
    pub detail: String,
}

impl Rejected {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Reads the time of a source record (epoch milliseconds).
pub trait TimestampExtractor: Send + Sync {
    /// The record's time, or why it has none.
    fn extract(&self, record: &Record) -> Result<i64, Rejected>;

    /// [`extract`](Self::extract), attaching to [`Record::decoded`] whatever the extractor
    /// decoded on the way, for the nodes after it (the event-time extractor parses the whole
    /// order event once rather than its `ts` here and the event again in the first node).
    fn extract_and_decode(&self, record: &mut Record) -> Result<i64, Rejected> {
        self.extract(record)
    }
}

/// The Kafka record timestamp (the executor puts it in [`Record::timestamp`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordTime;

impl TimestampExtractor for RecordTime {
    fn extract(&self, record: &Record) -> Result<i64, Rejected> {
        Ok(record.timestamp)
    }
}

/// How a task times its records: an extractor and how far ahead of the wall clock a time may be.
#[derive(Clone)]
pub struct TimePolicy {
    pub extractor: Arc<dyn TimestampExtractor>,
    /// Records more than this far ahead of the executor's wall clock are dead-lettered.
    pub max_future_ms: i64,
}

impl Default for TimePolicy {
    /// The Kafka record timestamp, any time in the future accepted (topologies built with plain
    /// [`crate::dsl::StreamsBuilder::stream`]).
    fn default() -> Self {
        Self {
            extractor: Arc::new(RecordTime),
            max_future_ms: i64::MAX,
        }
    }
}

impl std::fmt::Debug for TimePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimePolicy")
            .field("max_future_ms", &self.max_future_ms)
            .finish_non_exhaustive()
    }
}

impl TimePolicy {
    /// The time of `record`, or why the task refuses it, at executor wall clock `wall_clock`.
    /// The extractor may attach its decoding of the value to `record` (see
    /// [`TimestampExtractor::extract_and_decode`]).
    pub fn time_of(&self, record: &mut Record, wall_clock: i64) -> Result<i64, Rejected> {
        let ts = self.extractor.extract_and_decode(record)?;
        if ts < 0 {
            return Err(Rejected::new(
                "invalid_timestamp",
                format!("record time {ts} is negative"),
            ));
        }
        let ahead = ts.saturating_sub(wall_clock);
        if ahead > self.max_future_ms {
            return Err(Rejected::new(
                "timestamp_in_future",
                format!(
                    "record time {ts} is {ahead} ms ahead of the wall clock {wall_clock}; \
                     at most {} ms are accepted (--max-future-ms)",
                    self.max_future_ms
                ),
            ));
        }
        Ok(ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ts: i64) -> Record {
        Record::new(b"k".to_vec(), b"v".to_vec(), ts)
    }

    #[test]
    fn times_ahead_of_the_bound_and_negative_times_are_refused() {
        let policy = TimePolicy {
            extractor: Arc::new(RecordTime),
            max_future_ms: 1_000,
        };
        assert_eq!(policy.time_of(&mut at(5_000), 4_000), Ok(5_000));
        assert_eq!(policy.time_of(&mut at(0), 4_000), Ok(0));
        assert_eq!(
            policy.time_of(&mut at(5_001), 4_000).map_err(|r| r.reason),
            Err("timestamp_in_future")
        );
        assert_eq!(
            policy.time_of(&mut at(-1), 4_000).map_err(|r| r.reason),
            Err("invalid_timestamp")
        );
        let unbounded = TimePolicy::default();
        assert_eq!(unbounded.time_of(&mut at(i64::MAX), i64::MIN), Ok(i64::MAX));
    }
}
