//! Failpoints: faults the test suite injects into a real `paystream run` process through its
//! environment, for failures a real broker cannot be made to produce on cue. Never set in
//! production; unset, each check is one relaxed atomic load.
//!
//! - `PAYSTREAM_FAILPOINT_LOSE_COMMIT_ANSWER=N`: every N-th transaction that commits is reported
//!   to the engine as a fatal producer error, as when the answer to `EndTxn` is lost with its
//!   broker: the transaction committed, and the engine cannot know it.
//! - `PAYSTREAM_FAILPOINT_STOP_IN_COMMIT=N`: the N-th transaction with offsets stops the whole
//!   process (`SIGSTOP` to itself, as an operator's `kill -STOP`, a VM freeze or a long GC pause
//!   would) right after its source offsets joined the transaction, before it commits; `kill
//!   -CONT` resumes it. While it is set, transactional producers linger 30 s (instead of 5 ms)
//!   before sending, so that the records of a transaction leave the producer only when its
//!   commit flushes them (a freeze before that flush then finds them all still in the buffer,
//!   as a real one landing within `linger.ms` finds the last ones), and transactions may stay
//!   open 60 s (instead of 10), so that the frozen one outlives another instance's takeover of
//!   its partitions.
//! - `PAYSTREAM_FAILPOINT_HANG_SEND_OFFSETS=N`: the N-th `send_offsets_to_transaction` never
//!   returns (its thread parks for good before reaching librdkafka), as librdkafka's call did
//!   after the coordinator's broker restarted (see [`super::watchdog`]).
//! - `PAYSTREAM_FAILPOINT_SLOW_LOCAL_APPLY_MS=N`: every commit waits N ms between the Kafka
//!   transaction's commit and writing its batch into the local stores, as a loaded machine or a
//!   slow disk stretches that step, so that queries fall into it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const LOSE_COMMIT_ANSWER: &str = "PAYSTREAM_FAILPOINT_LOSE_COMMIT_ANSWER";
const STOP_IN_COMMIT: &str = "PAYSTREAM_FAILPOINT_STOP_IN_COMMIT";
const HANG_SEND_OFFSETS: &str = "PAYSTREAM_FAILPOINT_HANG_SEND_OFFSETS";
const SLOW_LOCAL_APPLY_MS: &str = "PAYSTREAM_FAILPOINT_SLOW_LOCAL_APPLY_MS";

/// `linger.ms` of transactional producers while [`STOP_IN_COMMIT`] is set.
pub const STOP_IN_COMMIT_LINGER_MS: &str = "30000";
/// `transaction.timeout.ms` (and `message.timeout.ms`) of transactional producers while
/// [`STOP_IN_COMMIT`] is set.
pub const STOP_IN_COMMIT_TRANSACTION_TIMEOUT_MS: &str = "60000";

static LOSE_EVERY: OnceLock<u64> = OnceLock::new();
static COMMITS: AtomicU64 = AtomicU64::new(0);
static STOP_AT: OnceLock<u64> = OnceLock::new();
static OFFSET_COMMITS: AtomicU64 = AtomicU64::new(0);
static HANG_AT: OnceLock<u64> = OnceLock::new();
static SEND_OFFSETS: AtomicU64 = AtomicU64::new(0);
static SLOW_APPLY: OnceLock<u64> = OnceLock::new();

/// The failpoint's `N` from the environment (0: off), warned about once when set.
fn armed(cell: &OnceLock<u64>, var: &str, what: &str) -> u64 {
    *cell.get_or_init(|| {
        let n = std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if n > 0 {
            tracing::warn!(n, "failpoint {var} is set: {what}");
        }
        n
    })
}

/// Called after a transaction committed: whether to report it as failed instead.
pub fn lose_commit_answer() -> bool {
    let n = armed(
        &LOSE_EVERY,
        LOSE_COMMIT_ANSWER,
        "every n-th committed transaction will be reported as failed",
    );
    n > 0 && (COMMITS.fetch_add(1, Ordering::Relaxed) + 1) % n == 0
}

/// Whether `PAYSTREAM_FAILPOINT_STOP_IN_COMMIT` is set (producers then linger longer).
pub fn stop_in_commit_armed() -> bool {
    armed(
        &STOP_AT,
        STOP_IN_COMMIT,
        "the n-th transaction with offsets will stop this process before it commits",
    ) > 0
}

/// Called once the source offsets joined a transaction, before it commits: on the N-th call,
/// stop this process until someone sends it `SIGCONT`.
pub fn stop_in_commit() {
    if !stop_in_commit_armed() {
        return;
    }
    let n = STOP_AT.get().copied().unwrap_or(0);
    if OFFSET_COMMITS.fetch_add(1, Ordering::Relaxed) + 1 != n {
        return;
    }
    tracing::warn!("failpoint {STOP_IN_COMMIT}: stopping this process inside a commit");
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &std::process::id().to_string()])
        .status();
    tracing::warn!(?stopped, "failpoint {STOP_IN_COMMIT}: resumed");
}

/// Called on the thread of a `send_offsets_to_transaction` call, before it reaches librdkafka: on
/// the N-th call, never return.
pub fn hang_send_offsets() {
    let n = armed(
        &HANG_AT,
        HANG_SEND_OFFSETS,
        "the n-th send_offsets_to_transaction will never return",
    );
    if n == 0 || SEND_OFFSETS.fetch_add(1, Ordering::Relaxed) + 1 != n {
        return;
    }
    tracing::warn!(
        "failpoint {HANG_SEND_OFFSETS}: this send_offsets_to_transaction hangs for good"
    );
    loop {
        std::thread::park();
    }
}

/// Called after a transaction committed, before its batch is written into the local stores:
/// sleep the failpoint's N ms.
pub fn slow_local_apply() {
    let ms = armed(
        &SLOW_APPLY,
        SLOW_LOCAL_APPLY_MS,
        "every commit waits n ms before writing the local stores",
    );
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
