//! A deadline around a blocking librdkafka call that may never return.
//!
//! librdkafka 2.12's `rd_kafka_send_offsets_to_transaction` waits for its background operation
//! with no timeout of its own (`RD_POLL_INFINITE`; the API timeout is handed to the operation,
//! which can lose track of it when the group coordinator's broker restarts:
//! confluentinc/librdkafka#5456, #5511). Seen in the broker drill with gdb: the stream thread
//! blocked in that call for good, and the instance stopped processing without an error.
//!
//! [`call`] runs such a call on a thread of its own and stops waiting at a deadline. The call's
//! thread is then left behind with everything it holds (callers move an `Arc` of the producer
//! in), so the producer is destroyed only if and when the call returns, never under it. The
//! caller must give that producer up: a new one with the same `transactional.id` fences it at
//! `init_transactions` and the coordinator aborts whatever transaction it left open.
//!
//! ```text
//!   caller ──spawn──▶ call thread: f() ──result──▶ channel
//!     └── recv_timeout(limit) ── Ok(result)  or  Hung (the thread stays, detached)
//! ```
//!
//! One short-lived thread per call: a commit makes two such calls, tens of microseconds next to
//! the broker round trips they wait for.

use std::sync::mpsc;
use std::time::Duration;

/// The call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// No answer within the deadline: the call is still blocked (left behind).
    #[error("librdkafka gave no answer to {call} within {} s (confluentinc/librdkafka#5456)", .after.as_secs())]
    Hung { call: &'static str, after: Duration },
    /// No thread could be started for the call; the call was not made.
    #[error("cannot start a thread for {call}: {source}")]
    Spawn {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Run `f` (the librdkafka call `name`) on its own thread; its result, or
/// [`WatchdogError::Hung`] once `limit` passed without one.
pub fn call<T, F>(name: &'static str, limit: Duration, f: F) -> Result<T, WatchdogError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(format!("txn-{name}"))
        .spawn(move || {
            // The receiver is gone once the caller stopped waiting: nothing to tell.
            let _ = tx.send(f());
        })
        .map_err(|source| WatchdogError::Spawn { call: name, source })?;
    rx.recv_timeout(limit).map_err(|_| WatchdogError::Hung {
        call: name,
        after: limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_answer_within_the_deadline_is_returned() {
        let got = call("test", Duration::from_secs(10), || 7);
        assert_eq!(got.ok(), Some(7));
    }

    #[test]
    fn a_call_that_blocks_is_given_up_and_what_it_holds_lives_until_it_returns() {
        let (release, blocked) = mpsc::channel::<()>();
        let held = Arc::new(());
        let inside = Arc::clone(&held);
        let got = call("test", Duration::from_millis(50), move || {
            let _keep = inside;
            blocked.recv().ok()
        });
        assert!(
            matches!(got, Err(WatchdogError::Hung { call: "test", .. })),
            "{got:?}"
        );
        assert_eq!(
            Arc::strong_count(&held),
            2,
            "the blocked call still holds it"
        );
        release.send(()).expect("the call is still waiting");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&held) > 1 {
            assert!(std::time::Instant::now() < deadline, "the call never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
