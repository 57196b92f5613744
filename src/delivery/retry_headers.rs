//! What a record in a retry topic carries in its headers: how many calls it has had, when and
//! why it first failed, and when it is due. Written by the delivering instance; read back from
//! Kafka, so a missing or garbled header is an error to report, never a panic.

/// Header names.
pub const ATTEMPTS: &str = "paystream.delivery.attempts";
pub const FIRST_FAILURE_MS: &str = "paystream.delivery.first-failure-ms";
pub const FIRST_REASON: &str = "paystream.delivery.first-reason";
pub const DUE_MS: &str = "paystream.delivery.due-ms";
/// The idempotency key sent to the gateway (the SMS's event id).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Header of a dead-lettered SMS: why it was given up.
pub const DEAD_LETTER_REASON: &str = "paystream.delivery.dead-letter-reason";

/// Whether `name` is one of the headers this module writes (replaced, not copied, on a retry).
pub fn is_retry_header(name: &str) -> bool {
    [
        ATTEMPTS,
        FIRST_FAILURE_MS,
        FIRST_REASON,
        DUE_MS,
        DEAD_LETTER_REASON,
    ]
    .contains(&name)
}

/// A retry record's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryState {
    /// Gateway calls so far (0 for a record an open circuit sent on without a call).
    pub attempts: u32,
    pub first_failure_ms: i64,
    pub first_reason: String,
    /// Not to be called before this time (epoch milliseconds).
    pub due_ms: i64,
}

/// A header that is missing or not what this module wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry header {name}: {problem}")]
pub struct HeaderError {
    pub name: &'static str,
    pub problem: &'static str,
}

impl RetryState {
    /// The headers to write.
    pub fn to_headers(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            (ATTEMPTS, self.attempts.to_string().into_bytes()),
            (
                FIRST_FAILURE_MS,
                self.first_failure_ms.to_string().into_bytes(),
            ),
            (FIRST_REASON, self.first_reason.clone().into_bytes()),
            (DUE_MS, self.due_ms.to_string().into_bytes()),
        ]
    }

    /// Reads the state back from a record's headers (`get` returns a header's value by name).
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Self, HeaderError> {
        let text = |name: &'static str| -> Result<&'a str, HeaderError> {
            let raw = get(name).ok_or(HeaderError {
                name,
                problem: "missing",
            })?;
            std::str::from_utf8(raw).map_err(|_| HeaderError {
                name,
                problem: "not UTF-8",
            })
        };
        let number = |name: &'static str| -> Result<i64, HeaderError> {
            text(name)?.parse().map_err(|_| HeaderError {
                name,
                problem: "not a number",
            })
        };
        let attempts = u32::try_from(number(ATTEMPTS)?).map_err(|_| HeaderError {
            name: ATTEMPTS,
            problem: "not a count",
        })?;
        Ok(RetryState {
            attempts,
            first_failure_ms: number(FIRST_FAILURE_MS)?,
            first_reason: text(FIRST_REASON)?.to_owned(),
            due_ms: number(DUE_MS)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(headers: &[(&'static str, Vec<u8>)]) -> Result<RetryState, HeaderError> {
        RetryState::from_headers(|name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_slice())
        })
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back(attempts in 0u32.., first in any::<i64>(), reason in ".*", due in any::<i64>()) {
            let s = RetryState { attempts, first_failure_ms: first, first_reason: reason, due_ms: due };
            prop_assert_eq!(read(&s.to_headers()), Ok(s));
        }

        #[test]
        fn garbage_is_an_error_never_a_panic(value in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut h = RetryState { attempts: 1, first_failure_ms: 0, first_reason: String::new(), due_ms: 0 }.to_headers();
            h[0].1 = value;
            let _ = read(&h);
        }
    }

    #[test]
    fn missing_and_negative_attempts_are_named() {
        assert_eq!(read(&[]).unwrap_err().name, ATTEMPTS);
        let mut h = RetryState {
            attempts: 1,
            first_failure_ms: 0,
            first_reason: "timeout".into(),
            due_ms: 0,
        }
        .to_headers();
        h[0].1 = b"-1".to_vec();
        assert_eq!(read(&h).unwrap_err().problem, "not a count");
    }
}
