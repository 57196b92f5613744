//! What happens to an SMS after a gateway call: delivered, retried later through a retry topic,
//! or dead-lettered with a reason. Pure: the classification of an answer, the retry schedule
//! (`--retry-delays 10s,1m,10m`) and the route that follows from both.

use std::time::{Duration, SystemTime};

/// How one gateway call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// An HTTP answer.
    Status {
        code: u16,
        /// The wait a `Retry-After` header asked for ([`retry_after_delay`]).
        retry_after: Option<Duration>,
    },
    /// No answer within the call's timeout.
    Timeout,
    /// The connection could not be made or broke (refused, reset).
    Connection,
}

/// The class of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth another attempt later (timeout, connection trouble, 5xx, 429); the gateway may ask
    /// for a minimum wait.
    Retryable {
        reason: String,
        at_least: Option<Duration>,
    },
    /// Another attempt would be refused the same way (4xx but 408 and 429).
    Rejected {
        reason: String,
    },
}

/// The wait a `Retry-After` header value asks for at `now`: delay-seconds (`120`) or an
/// HTTP-date (`Wed, 21 Oct 2026 07:28:00 GMT`; one in the past asks for no wait). `None` when the
/// value is neither (the retry level's own delay applies then).
pub fn retry_after_delay(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Classifies a call's result.
pub fn classify(result: &CallResult) -> Outcome {
    match result {
        CallResult::Status { code, .. } if (200..300).contains(code) => Outcome::Delivered,
        CallResult::Status { code, retry_after } if *code == 429 || *code == 503 => {
            Outcome::Retryable {
                reason: format!("http {code}"),
                at_least: *retry_after,
            }
        }
        CallResult::Status { code, .. } if *code == 408 || *code >= 500 => Outcome::Retryable {
            reason: format!("http {code}"),
            at_least: None,
        },
        CallResult::Status { code, .. } => Outcome::Rejected {
            reason: format!("http {code}"),
        },
        CallResult::Timeout => Outcome::Retryable {
            reason: "timeout".into(),
            at_least: None,
        },
        CallResult::Connection => Outcome::Retryable {
            reason: "connection".into(),
            at_least: None,
        },
    }
}

/// Where a record goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Done,
    /// To retry topic `level` (1-based: `SEND_SMS.RETRY.<level>`), not to be called before
    /// `delay` after now.
    Retry {
        level: usize,
        delay: Duration,
    },
    DeadLetter {
        reason: String,
    },
}

/// Why a `--retry-delays` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: {reason}")]
pub struct DelaysError {
    pub value: String,
    pub reason: &'static str,
}

/// The retry schedule: one delay per retry topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    /// Parses `10s,1m,10m` (units ms, s, m, h; increasing, at most 10 levels, each 24 h at most).
    pub fn parse(value: &str) -> Result<Self, DelaysError> {
        let refuse = |reason| DelaysError {
            value: value.to_owned(),
            reason,
        };
        let delays = value
            .split(',')
            .map(|part| {
                parse_duration(part.trim())
                    .ok_or_else(|| refuse("each delay is a number with ms, s, m or h"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > 10 {
            return Err(refuse("between 1 and 10 delays"));
        }
        if delays.windows(2).any(|w| w[1] < w[0]) {
            return Err(refuse("delays must not decrease"));
        }
        if delays
            .iter()
            .any(|d| d.is_zero() || *d > Duration::from_secs(86_400))
        {
            return Err(refuse("each delay is above 0 and at most 24h"));
        }
        Ok(RetrySchedule { delays })
    }

    /// Retry topics (levels).
    pub fn levels(&self) -> usize {
        self.delays.len()
    }

    /// Where a record goes after `attempts` calls (this one included) ended in `outcome`.
    pub fn route(&self, attempts: usize, outcome: &Outcome) -> Route {
        match outcome {
            Outcome::Delivered => Route::Done,
            Outcome::Rejected { reason } => Route::DeadLetter {
                reason: format!("rejected: {reason}"),
            },
            Outcome::Retryable { reason, at_least } => {
                match self.delays.get(attempts.saturating_sub(1)) {
                    Some(&delay) => Route::Retry {
                        level: attempts.max(1),
                        delay: at_least.map_or(delay, |a| a.max(delay)),
                    },
                    None => Route::DeadLetter {
                        reason: format!("exhausted after {attempts} attempts: {reason}"),
                    },
                }
            }
        }
    }
}

/// `250ms`, `10s`, `1m`, `2h` (a whole number and a unit).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> CallResult {
        CallResult::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn answers_are_classed_as_the_issue_lists_them() {
        assert_eq!(classify(&status(200)), Outcome::Delivered);
        assert_eq!(classify(&status(204)), Outcome::Delivered);
        for retryable in [
            status(500),
            status(502),
            status(503),
            status(408),
            CallResult::Timeout,
            CallResult::Connection,
        ] {
            assert!(
                matches!(classify(&retryable), Outcome::Retryable { .. }),
                "{retryable:?}"
            );
        }
        for rejected in [400, 401, 404, 422] {
            assert!(
                matches!(classify(&status(rejected)), Outcome::Rejected { .. }),
                "{rejected}"
            );
        }
        let slow_down = CallResult::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(120)),
        };
        assert_eq!(
            classify(&slow_down),
            Outcome::Retryable {
                reason: "http 429".into(),
                at_least: Some(Duration::from_secs(120))
            }
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        // 2026-10-21T07:28:00Z: 20,747 days after 1970-01-01, then 07:28.
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(20_747 * 86_400 + 7 * 3600 + 28 * 60);
        let now = at - Duration::from_secs(90);
        assert_eq!(
            retry_after_delay(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after_delay("Wed, 21 Oct 2026 07:28:00 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after_delay("Wed, 21 Oct 2026 07:28:00 GMT", at + Duration::from_secs(5)),
            Some(Duration::ZERO),
            "a date in the past asks for no wait"
        );
        assert_eq!(retry_after_delay("soon", now), None);
        assert_eq!(retry_after_delay("-5", now), None);
    }

    #[test]
    fn each_attempt_goes_one_level_further_until_the_dead_letter_topic() {
        let s = RetrySchedule::parse("10s, 1m,10m").unwrap();
        let retry = classify(&CallResult::Timeout);
        assert_eq!(
            s.route(1, &retry),
            Route::Retry {
                level: 1,
                delay: Duration::from_secs(10)
            }
        );
        assert_eq!(
            s.route(2, &retry),
            Route::Retry {
                level: 2,
                delay: Duration::from_secs(60)
            }
        );
        assert_eq!(
            s.route(3, &retry),
            Route::Retry {
                level: 3,
                delay: Duration::from_secs(600)
            }
        );
        assert!(
            matches!(s.route(4, &retry), Route::DeadLetter { reason } if reason.contains("exhausted after 4"))
        );
        assert!(
            matches!(s.route(1, &classify(&status(400))), Route::DeadLetter { reason } if reason == "rejected: http 400")
        );
        // A Retry-After longer than the level's delay wins; a shorter one does not.
        let asked = Outcome::Retryable {
            reason: "http 429".into(),
            at_least: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            s.route(1, &asked),
            Route::Retry {
                level: 1,
                delay: Duration::from_secs(30)
            }
        );
        assert_eq!(
            s.route(2, &asked),
            Route::Retry {
                level: 2,
                delay: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in [
            "",
            "10",
            "10x",
            "1m,10s",
            "0s",
            "25h",
            "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s",
        ] {
            assert!(RetrySchedule::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(RetrySchedule::parse("500ms,2h").unwrap().levels(), 2);
    }
}
