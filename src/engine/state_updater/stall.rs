//! When the changelog consumer is replaced: a pure decision over how long things have waited.
//!
//! Seen after the broker was unreachable for a minute: a changelog consumer never fetched its
//! partitions again while others resumed, and its restores waited forever; a new consumer,
//! resuming every read at what was applied, caught up in seconds. Replacing one is not free
//! (every partition is fetched anew), so it happens only when a read short of its end waits:
//!
//! ```text
//!  consumer age < RESET_AFTER                        → keep it (give it time to fetch)
//!  consumer silent ≥ RESET_AFTER, a read waits ≥ RESET_AFTER      → replace
//!  consumer delivering, a read waits ≥ RESET_READ_AFTER           → replace
//!  (a read's wait counts from its last move, or from the consumer's creation if later)
//! ```

use std::time::Duration;

/// A consumer that delivered nothing for this long while a read is short of its end is replaced.
pub(super) const RESET_AFTER: Duration = Duration::from_secs(10);
/// A read short of its end that has not moved for this long gets a new consumer even while the
/// consumer delivers other partitions' records. Far longer than [`RESET_AFTER`]: one consumer
/// does not serve its partitions evenly. Once its queue is full librdkafka stops fetching every
/// partition and, as the queue drains, fetches first for the partitions it stopped first, so in
/// a restore of many partitions the last ones wait (seen: over a minute with 72 changelog
/// partitions at 10M orders, where 64 KiB per partition and fetch did not change that).
pub(super) const RESET_READ_AFTER: Duration = Duration::from_secs(60);

/// The reads (indexes into `waits`: how long each read short of its end has not moved) that make
/// a consumer `age` old, silent for `silent`, due for replacement; empty = keep it.
///
/// A wait counts only under the current consumer (`min(wait, age)`): counted from before a
/// replacement, a read that waited its turn for over a minute had the new consumer replaced again
/// every [`RESET_AFTER`] (seen at 10M orders: five replacements in 50 s).
pub(super) fn stalled_reads(silent: Duration, age: Duration, waits: &[Duration]) -> Vec<usize> {
    if age < RESET_AFTER {
        return Vec::new();
    }
    let limit = if silent >= RESET_AFTER {
        RESET_AFTER
    } else {
        RESET_READ_AFTER
    };
    waits
        .iter()
        .enumerate()
        .filter(|(_, w)| (**w).min(age) >= limit)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_silent_consumer_is_replaced_once_a_read_waited_ten_seconds() {
        assert_eq!(stalled_reads(S(11), S(30), &[S(11), S(3)]), vec![0]);
        assert!(stalled_reads(S(11), S(30), &[S(9), S(3)]).is_empty());
    }

    #[test]
    fn a_delivering_consumer_is_replaced_only_for_a_read_waiting_a_minute() {
        assert!(stalled_reads(S(0), S(300), &[S(59), S(20)]).is_empty());
        assert_eq!(stalled_reads(S(0), S(300), &[S(59), S(61)]), vec![1]);
    }

    #[test]
    fn a_young_consumer_is_kept_whatever_waited() {
        assert!(stalled_reads(S(9), S(9), &[S(600)]).is_empty());
        assert!(stalled_reads(S(600), S(9), &[S(600)]).is_empty());
    }

    #[test]
    fn a_wait_from_before_the_consumer_does_not_count() {
        // The read waited five minutes, most of it under the consumer this one replaced: the
        // new consumer (15 s old, delivering) gets its own minute.
        assert!(stalled_reads(S(0), S(15), &[S(300)]).is_empty());
        assert!(stalled_reads(S(0), S(59), &[S(300)]).is_empty());
        assert_eq!(stalled_reads(S(0), S(61), &[S(300)]), vec![0]);
        // A silent new consumer is still replaced after its first ten seconds.
        assert_eq!(stalled_reads(S(12), S(12), &[S(300)]), vec![0]);
    }

    #[test]
    fn nothing_waiting_nothing_replaced() {
        assert!(stalled_reads(S(600), S(600), &[]).is_empty());
    }
}
