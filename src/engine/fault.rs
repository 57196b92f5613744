//! Infrastructure faults of running tasks: what the stream thread does instead of exiting.
//!
//! A task that fails for a reason other than its record (a store read fails, the producer
//! cannot take a record, a changelog send fails before the commit) is rolled back to the last
//! commit, shown in `/health` (`tasks.<p>.error`) and retried after a backoff that doubles from
//! [`FIRST_BACKOFF`] to [`MAX_BACKOFF`]. The instance keeps heartbeating, answering queries and
//! taking assignments meanwhile; the first commit that moves a source offset again clears the
//! fault. (A record's own fault is not this: see `Task::process`, it is dead-lettered.)

use std::time::{Duration, Instant};

/// Wait after the first fault.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The current fault: which partition failed, and when processing may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub partition: i32,
    pub backoff: Duration,
    pub retry_at: Instant,
}

impl Fault {
    /// The fault after `previous` (if the last attempt failed too) on `partition`, at `now`.
    pub fn next(previous: Option<&Fault>, partition: i32, now: Instant) -> Fault {
        let backoff = previous.map_or(FIRST_BACKOFF, |f| (f.backoff * 2).min(MAX_BACKOFF));
        Fault {
            partition,
            backoff,
            retry_at: now + backoff,
        }
    }

    /// Whether processing must still wait at `now`.
    pub fn waiting(&self, now: Instant) -> bool {
        now < self.retry_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_starts_over_after_a_clear() {
        let t0 = Instant::now();
        let mut fault = Fault::next(None, 3, t0);
        assert_eq!(fault.backoff, FIRST_BACKOFF);
        assert!(fault.waiting(t0) && !fault.waiting(t0 + FIRST_BACKOFF));
        let mut waits = vec![fault.backoff];
        for _ in 0..10 {
            fault = Fault::next(Some(&fault), 3, t0);
            waits.push(fault.backoff);
        }
        assert_eq!(waits[1], FIRST_BACKOFF * 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        assert_eq!(Fault::next(None, 3, t0).backoff, FIRST_BACKOFF);
    }
}
