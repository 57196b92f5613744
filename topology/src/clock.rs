//! Stream time and punctuation schedules of one task (used by `TaskProcessors`).
//!
//! Stream time is the largest record timestamp the task has processed; it never goes back. A
//! stream-time schedule first fires one interval after the first record's time; a wall-clock one
//! one interval after `init`. A schedule that fell several intervals behind fires once, as in
//! Kafka Streams, and continues one interval after that.

use crate::processor::{PunctuationType, ScheduleRequest};

/// Stream time and the schedules of one task's processors.
#[derive(Debug)]
pub(crate) struct TaskClock {
    pub(crate) stream_time: i64,
    schedules: Vec<Schedule>,
}

impl Default for TaskClock {
    fn default() -> Self {
        Self {
            stream_time: i64::MIN,
            schedules: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Schedule {
    node: usize,
    kind: PunctuationType,
    interval_ms: i64,
    /// When it fires next; `None` for a stream-time schedule until the first record.
    next: Option<i64>,
}

impl TaskClock {
    pub(crate) fn add(&mut self, node: usize, request: ScheduleRequest, wall_clock: i64) {
        let next = match request.kind {
            PunctuationType::WallClock => Some(wall_clock.saturating_add(request.interval_ms)),
            PunctuationType::StreamTime => (self.stream_time != i64::MIN)
                .then(|| self.stream_time.saturating_add(request.interval_ms)),
        };
        self.schedules.push(Schedule {
            node,
            kind: request.kind,
            interval_ms: request.interval_ms,
            next,
        });
    }

    /// Advance stream time to `ts` if it is later (stream time never goes back).
    pub(crate) fn observe(&mut self, ts: i64) {
        if ts <= self.stream_time {
            return;
        }
        self.stream_time = ts;
        for s in &mut self.schedules {
            if s.kind == PunctuationType::StreamTime && s.next.is_none() {
                s.next = Some(ts.saturating_add(s.interval_ms));
            }
        }
    }

    /// The node of the first `kind` schedule due at `now`, moving it to its next time. A
    /// schedule that fell several intervals behind fires once, as in Kafka Streams.
    pub(crate) fn due(&mut self, kind: PunctuationType, now: i64) -> Option<usize> {
        let s = self
            .schedules
            .iter_mut()
            .find(|s| s.kind == kind && s.next.is_some_and(|n| n <= now))?;
        s.next = Some(now.saturating_add(s.interval_ms));
        Some(s.node)
    }
}
