//! Failpoints: faults the test suite injects into a real `paystream run` process through its
//! environment, for failures a real broker cannot be made to produce on cue. Never set in
//! production; unset, each check is one relaxed atomic load.
//!
//! - `PAYSTREAM_FAILPOINT_LOSE_COMMIT_ANSWER=N`: every N-th transaction that commits is reported
//!   to the engine as a fatal producer error, as when the answer to `EndTxn` is lost with its
//!   broker: the transaction committed, and the engine cannot know it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const LOSE_COMMIT_ANSWER: &str = "PAYSTREAM_FAILPOINT_LOSE_COMMIT_ANSWER";

static EVERY: OnceLock<u64> = OnceLock::new();
static COMMITS: AtomicU64 = AtomicU64::new(0);

fn every() -> u64 {
    *EVERY.get_or_init(|| {
        let n = std::env::var(LOSE_COMMIT_ANSWER)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if n > 0 {
            tracing::warn!(
                every = n,
                "failpoint {LOSE_COMMIT_ANSWER} is set: committed transactions will be reported as failed"
            );
        }
        n
    })
}

/// Called after a transaction committed: whether to report it as failed instead.
pub fn lose_commit_answer() -> bool {
    let n = every();
    n > 0 && (COMMITS.fetch_add(1, Ordering::Relaxed) + 1) % n == 0
}
