//! The circuit breaker in front of the SMS gateway (the talk's plan B): pure, time passed in.
//!
//! ```text
//!            K failures in a row, or failure rate > R over the window (with >= M calls)
//!   Closed ───────────────────────────────────────────────────────────────▶ Open
//!     ▲                                                                       │ cool-down
//!     │ probe succeeds                                                        ▼ passed
//!     └──────────────────────────── HalfOpen ◀────────────────────────────────┘
//!                                     │ probe fails: Open again (a new cool-down)
//! ```
//!
//! While open, records go to the first retry topic without a call; half-open lets exactly one
//! call (the probe) through and skips the rest until it answers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// When the circuit opens and how long it stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// Open when failures / calls in the window exceed this (0..=1)...
    pub failure_rate: f64,
    /// ...over calls of the last `window`...
    pub window: Duration,
    /// ...once the window holds at least this many calls.
    pub min_calls: usize,
    /// Open this long before a probe.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
            min_calls: 20,
            cool_down: Duration::from_secs(10),
        }
    }
}

/// The circuit's state, as metrics and logs show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

/// What to do with the next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Call the gateway.
    Call,
    /// Call the gateway: this call decides whether the circuit closes.
    Probe,
    /// Do not call: route the record to the first retry topic.
    Skip,
}

/// A change of state, to be logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
}

#[derive(Debug, Clone)]
enum State {
    Closed {
        in_a_row: u32,
        recent: Window,
    },
    Open {
        until: Instant,
    },
    /// The probe is out.
    HalfOpen,
}

/// A circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: closed(),
        }
    }

    pub fn state(&self) -> CircuitState {
        match self.state {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen => CircuitState::HalfOpen,
        }
    }

    /// Whether the next record may call the gateway at `now` (an open circuit whose cool-down
    /// has passed turns half-open and hands out the probe).
    pub fn decide(&mut self, now: Instant) -> (Decision, Option<Transition>) {
        match &mut self.state {
            State::Closed { .. } => (Decision::Call, None),
            State::Open { until } if now < *until => (Decision::Skip, None),
            State::Open { .. } => {
                self.state = State::HalfOpen;
                (
                    Decision::Probe,
                    Some(Transition {
                        from: CircuitState::Open,
                        to: CircuitState::HalfOpen,
                    }),
                )
            }
            State::HalfOpen => (Decision::Skip, None),
        }
    }

    /// The answer of a call made on `decision` (`Skip`s are not reported).
    pub fn record(&mut self, now: Instant, decision: Decision, failed: bool) -> Option<Transition> {
        let before = self.state();
        match (&mut self.state, decision) {
            (State::HalfOpen, Decision::Probe) => {
                self.state = if failed {
                    open(now, self.config.cool_down)
                } else {
                    closed()
                };
            }
            // A call that went out while closed and answers after the circuit opened (or is
            // half-open) changes nothing: the probe decides.
            (State::Closed { in_a_row, recent }, Decision::Call) => {
                *in_a_row = if failed { *in_a_row + 1 } else { 0 };
                let (calls, failures) = recent.record(now, failed, self.config.window);
                let rate_exceeded = calls >= self.config.min_calls as u64
                    && failures as f64 / calls as f64 > self.config.failure_rate;
                if *in_a_row >= self.config.consecutive_failures || rate_exceeded {
                    self.state = open(now, self.config.cool_down);
                }
            }
            _ => {}
        }
        let after = self.state();
        (after != before).then_some(Transition {
            from: before,
            to: after,
        })
    }
}

fn open(now: Instant, cool_down: Duration) -> State {
    State::Open {
        until: now + cool_down,
    }
}

fn closed() -> State {
    State::Closed {
        in_a_row: 0,
        recent: Window::default(),
    }
}

/// Buckets per window: a call leaves the window up to 1/64 of it early, and the window's memory
/// is bounded whatever the call rate (one entry per call was a scan of every call of the last
/// 30 s per answer: 17% of the deliverer's CPU at 11,000 calls/s).
const BUCKETS_PER_WINDOW: u32 = 64;

/// Calls and failures of the last window, in time buckets, with running totals.
#[derive(Debug, Clone, Default)]
struct Window {
    /// (bucket start, calls, failures), oldest first.
    buckets: VecDeque<(Instant, u64, u64)>,
    calls: u64,
    failures: u64,
}

impl Window {
    /// Adds a call answered at `now`, forgets buckets older than `window`; the calls and
    /// failures left.
    fn record(&mut self, now: Instant, failed: bool, window: Duration) -> (u64, u64) {
        let bucket = (window / BUCKETS_PER_WINDOW).max(Duration::from_millis(1));
        let failed = u64::from(failed);
        match self.buckets.back_mut() {
            Some((start, calls, failures)) if now.saturating_duration_since(*start) < bucket => {
                *calls += 1;
                *failures += failed;
            }
            _ => self.buckets.push_back((now, 1, failed)),
        }
        self.calls += 1;
        self.failures += failed;
        while let Some(&(start, calls, failures)) = self.buckets.front() {
            if now.saturating_duration_since(start) <= window {
                break;
            }
            self.buckets.pop_front();
            self.calls -= calls;
            self.failures -= failures;
        }
        (self.calls, self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 6,
            cool_down: Duration::from_secs(5),
        }
    }

    #[test]
    fn opens_after_k_failures_probes_after_the_cool_down_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for i in 0..3 {
            assert_eq!(b.decide(t0).0, Decision::Call);
            let t = b.record(t0, Decision::Call, true);
            assert_eq!(t.is_some(), i == 2);
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.decide(t0 + Duration::from_secs(4)).0, Decision::Skip);
        let (d, t) = b.decide(t0 + Duration::from_secs(5));
        assert_eq!(d, Decision::Probe);
        assert_eq!(t.map(|t| t.to), Some(CircuitState::HalfOpen));
        // Only one probe at a time.
        assert_eq!(b.decide(t0 + Duration::from_secs(5)).0, Decision::Skip);
        // The probe fails: open for another cool-down.
        b.record(t0 + Duration::from_secs(6), Decision::Probe, true);
        assert_eq!(b.decide(t0 + Duration::from_secs(10)).0, Decision::Skip);
        assert_eq!(b.decide(t0 + Duration::from_secs(11)).0, Decision::Probe);
        let t = b.record(t0 + Duration::from_secs(11), Decision::Probe, false);
        assert_eq!(t.map(|t| t.to), Some(CircuitState::Closed));
        assert_eq!(b.decide(t0 + Duration::from_secs(11)).0, Decision::Call);
    }

    #[test]
    fn opens_on_the_failure_rate_without_k_in_a_row() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        // fail, fail, ok, fail, fail, ok, fail: never 3 in a row, 5 of 7 failed.
        for (i, failed) in [true, true, false, true, true, false, true]
            .into_iter()
            .enumerate()
        {
            b.decide(t0);
            b.record(t0 + Duration::from_millis(i as u64), Decision::Call, failed);
        }
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for (i, failed) in [true, true, false, true, true].into_iter().enumerate() {
            b.record(t0 + Duration::from_millis(i as u64), Decision::Call, failed);
        }
        // With these in the window the next call would make 4 failures of 6 (over the rate),
        // but by then they are older than the window.
        b.record(t0 + Duration::from_secs(11), Decision::Call, false);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    proptest! {
        /// Against a model that keeps every call: the window counts the calls (and failures) of
        /// the last `window`, except that up to one bucket (1/64 of it) may leave early.
        #[test]
        fn the_window_counts_the_calls_of_the_last_window(
            steps in proptest::collection::vec((0u64..400, any::<bool>()), 1..300),
        ) {
            let window = Duration::from_millis(6_400);
            let bucket = window / BUCKETS_PER_WINDOW;
            let mut w = Window::default();
            let mut all: Vec<(Instant, bool)> = Vec::new();
            let mut now = Instant::now();
            for (dt, failed) in steps {
                now += Duration::from_millis(dt);
                all.push((now, failed));
                let (calls, failures) = w.record(now, failed, window);
                // (calls, failures) of the model no older than `age`.
                let count = |age: Duration| {
                    let kept: Vec<bool> = all
                        .iter()
                        .filter(|(t, _)| now.duration_since(*t) <= age)
                        .map(|(_, f)| *f)
                        .collect();
                    (kept.len() as u64, kept.iter().filter(|f| **f).count() as u64)
                };
                let ((most, most_f), (least, least_f)) = (count(window), count(window - bucket));
                prop_assert!(least <= calls && calls <= most, "{} calls, model {}..={}", calls, least, most);
                prop_assert!(least_f <= failures && failures <= most_f, "{} failures, model {}..={}", failures, least_f, most_f);
            }
        }
    }

    proptest! {
        /// Whatever the answers and timing: never a call while open before the cool-down,
        /// never two probes at once, and the state only moves along the drawn edges.
        #[test]
        fn only_drawn_transitions_and_at_most_one_probe(
            steps in proptest::collection::vec((0u64..3_000, any::<bool>(), any::<bool>()), 1..200),
        ) {
            let mut b = Breaker::new(config());
            let mut now = Instant::now();
            let mut probe_out = false;
            let mut open_until: Option<Instant> = None;
            for (dt, failed, answer_now) in steps {
                now += Duration::from_millis(dt);
                let (d, t) = b.decide(now);
                if let Some(t) = t {
                    prop_assert_eq!((t.from, t.to), (CircuitState::Open, CircuitState::HalfOpen));
                }
                if let Some(until) = open_until {
                    if now < until { prop_assert_eq!(d, Decision::Skip); }
                }
                if d == Decision::Probe {
                    prop_assert!(!probe_out, "two probes in flight");
                    probe_out = true;
                }
                if d != Decision::Skip && answer_now {
                    if d == Decision::Probe { probe_out = false; }
                    if let Some(t) = b.record(now, d, failed) {
                        let edge = (t.from, t.to);
                        prop_assert!(matches!(edge,
                            (CircuitState::Closed, CircuitState::Open)
                            | (CircuitState::HalfOpen, CircuitState::Open)
                            | (CircuitState::HalfOpen, CircuitState::Closed)), "{:?}", edge);
                        open_until = (t.to == CircuitState::Open).then(|| now + config().cool_down);
                    }
                } else if d == Decision::Probe {
                    // An unanswered probe: report it failed at once so the test goes on.
                    probe_out = false;
                    if b.record(now, d, true).is_some() {
                        open_until = Some(now + config().cool_down);
                    }
                }
            }
        }
    }
}
