//! The delivering instance's ledger of polled SMS: which are held (waiting for their order, a
//! permit or their due time), which are in a call, and what each partition may commit.
//!
//! Shared by the poll thread (records in, rebalances, pauses, commits) and the call tasks
//! (records out, finished) under one short lock; pure otherwise, so its rules are unit-tested.
//!
//! A partition's lifecycle here: assigned (a fresh epoch) → records polled → revoking (no new
//! call starts; the revoke waits for its calls) → gone. Records of an old epoch still held by the
//! dispatcher are dropped when they come up: the next owner reads them again from the committed
//! position, which never passed them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::dispatch::Dispatcher;
use super::progress::{PartitionProgress, ProgressError};
use super::retry_headers::RetryState;

/// A topic partition.
pub type Tp = (Arc<str>, i32);

/// A polled SMS request.
#[derive(Debug, Clone)]
pub struct Pending {
    pub tp: Tp,
    pub offset: i64,
    /// The assignment it was polled under (set by [`Book::polled`]).
    pub epoch: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Headers of the record, other than the retry headers (kept on retry and DLQ records).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its history, when read from a retry topic.
    pub retry: Option<RetryState>,
    /// Why it cannot be called at all (garbled retry headers): it goes to the DLQ.
    pub invalid: Option<String>,
}

impl Pending {
    fn due_ms(&self) -> i64 {
        self.retry.as_ref().map_or(i64::MIN, |r| r.due_ms)
    }
}

#[derive(Debug)]
struct Part {
    epoch: u64,
    /// From the first record polled (the committed position, or the reset).
    progress: Option<PartitionProgress>,
    /// Records of this epoch handed to a call and not finished.
    calling: usize,
    revoking: bool,
    /// Retry records not yet due, in offset order (the partition is paused while any wait).
    delayed: VecDeque<Pending>,
    /// Last position committed (or -1).
    committed: i64,
}

/// The ledger.
#[derive(Debug, Default)]
pub struct Book {
    dispatcher: Dispatcher<Vec<u8>, Pending>,
    parts: HashMap<Tp, Part>,
    next_epoch: u64,
    delayed: usize,
    /// Bumped by every assignment change (librdkafka forgets pauses of reassigned partitions).
    assignment_changes: u64,
}

impl Book {
    /// The partition is now assigned to this instance.
    pub fn assigned(&mut self, tp: Tp) {
        self.next_epoch += 1;
        self.assignment_changes += 1;
        let part = Part {
            epoch: self.next_epoch,
            progress: None,
            calling: 0,
            revoking: false,
            delayed: VecDeque::new(),
            committed: -1,
        };
        if let Some(old) = self.parts.insert(tp, part) {
            self.delayed -= old.delayed.len();
        }
    }

    /// A polled record (records of a partition arrive in offset order). A record of a partition
    /// not assigned (any more) is dropped.
    pub fn polled(&mut self, mut p: Pending, now_ms: i64) -> Result<(), ProgressError> {
        let Some(part) = self.parts.get_mut(&p.tp) else {
            return Ok(());
        };
        if part.revoking {
            return Ok(());
        }
        part.progress
            .get_or_insert_with(|| PartitionProgress::new(p.offset))
            .started(p.offset)?;
        p.epoch = part.epoch;
        if p.due_ms() > now_ms || !part.delayed.is_empty() {
            part.delayed.push_back(p);
            self.delayed += 1;
        } else {
            self.dispatcher.offer(p.key.clone(), p);
        }
        Ok(())
    }

    /// Moves retry records that are due to the dispatcher; the earliest due time still waiting.
    pub fn release_due(&mut self, now_ms: i64) -> Option<i64> {
        let mut earliest: Option<i64> = None;
        for part in self.parts.values_mut() {
            while part.delayed.front().is_some_and(|p| p.due_ms() <= now_ms) {
                if let Some(p) = part.delayed.pop_front() {
                    self.delayed -= 1;
                    self.dispatcher.offer(p.key.clone(), p);
                }
            }
            if let Some(p) = part.delayed.front() {
                earliest = Some(earliest.map_or(p.due_ms(), |e| e.min(p.due_ms())));
            }
        }
        earliest
    }

    /// The next record to call the gateway with, if one may go.
    pub fn take_next(&mut self) -> Option<Pending> {
        loop {
            let (key, p) = self.dispatcher.take_next()?;
            match self.parts.get_mut(&p.tp) {
                Some(part) if part.epoch == p.epoch && !part.revoking => {
                    part.calling += 1;
                    return Some(p);
                }
                // Revoked (or revoking) since it was polled: its next owner reads it again.
                _ => self.dispatcher.finished(&key),
            }
        }
    }

    /// The call of `p` (and any retry or DLQ record it led to) is done.
    pub fn finished(&mut self, p: &Pending) -> Result<(), ProgressError> {
        self.dispatcher.finished(&p.key);
        match self.parts.get_mut(&p.tp) {
            Some(part) if part.epoch == p.epoch => {
                part.calling = part.calling.saturating_sub(1);
                match part.progress.as_mut() {
                    Some(progress) => progress.finished(p.offset),
                    None => Err(ProgressError::NotInFlight(p.offset)),
                }
            }
            _ => Ok(()),
        }
    }

    /// Whether [`Book::take_next`] may have a record (it may still drop revoked ones).
    pub fn has_ready(&self) -> bool {
        self.dispatcher.ready() > 0
    }

    /// The call of `p` ended without a place for it (shutdown): it is not finished, and the
    /// partition's commit position stays before it.
    pub fn abandoned(&mut self, p: &Pending) {
        self.dispatcher.finished(&p.key);
        if let Some(part) = self
            .parts
            .get_mut(&p.tp)
            .filter(|part| part.epoch == p.epoch)
        {
            part.calling = part.calling.saturating_sub(1);
        }
    }

    /// Records held: waiting for a permit, their order, or their due time.
    pub fn buffered(&self) -> usize {
        self.dispatcher.buffered() + self.delayed
    }

    /// Partitions with retry records waiting for their due time (to be paused: what they hold
    /// is bounded by one fetch).
    pub fn waiting(&self) -> impl Iterator<Item = &Tp> {
        self.parts
            .iter()
            .filter(|(_, p)| !p.delayed.is_empty())
            .map(|(tp, _)| tp)
    }

    /// Changes with every assignment change.
    pub fn assignment_changes(&self) -> u64 {
        self.assignment_changes
    }

    /// Assigned partitions.
    pub fn assignment(&self) -> impl Iterator<Item = &Tp> {
        self.parts.keys()
    }

    /// No new call starts for `tps`; returns the calls still running for them.
    pub fn revoke_begin(&mut self, tps: &[Tp]) -> usize {
        let mut calling = 0;
        for tp in tps {
            if let Some(part) = self.parts.get_mut(tp) {
                part.revoking = true;
                calling += part.calling;
            }
        }
        calling
    }

    /// Calls still running for `tps`.
    pub fn calling(&self, tps: &[Tp]) -> usize {
        tps.iter()
            .filter_map(|tp| self.parts.get(tp))
            .map(|p| p.calling)
            .sum()
    }

    /// Forgets `tps`; the positions to commit for them (never past an unfinished record).
    pub fn revoke_end(&mut self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        self.assignment_changes += 1;
        let mut out = Vec::new();
        for tp in tps {
            if let Some(part) = self.parts.remove(tp) {
                self.delayed -= part.delayed.len();
                if let Some(pos) = part.progress.map(|p| p.commit_position()) {
                    if pos > part.committed {
                        out.push((tp.clone(), pos));
                    }
                }
            }
        }
        out
    }

    /// Positions that moved since the last call (to commit).
    pub fn to_commit(&mut self) -> Vec<(Tp, i64)> {
        let mut out = Vec::new();
        for (tp, part) in &mut self.parts {
            if let Some(pos) = part.progress.as_ref().map(|p| p.commit_position()) {
                if pos > part.committed {
                    part.committed = pos;
                    out.push((tp.clone(), pos));
                }
            }
        }
        out
    }

    /// Records handed to calls and not finished, all partitions.
    pub fn calls(&self) -> usize {
        self.parts.values().map(|p| p.calling).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        (Arc::from("SEND_SMS"), p)
    }

    fn rec(p: i32, offset: i64, key: &str, due_ms: Option<i64>) -> Pending {
        Pending {
            tp: tp(p),
            offset,
            epoch: 0,
            key: key.as_bytes().to_vec(),
            value: Vec::new(),
            headers: Vec::new(),
            retry: due_ms.map(|due_ms| RetryState {
                attempts: 1,
                first_failure_ms: 0,
                first_reason: "http 503".into(),
                due_ms,
            }),
            invalid: None,
        }
    }

    #[test]
    fn commits_stop_at_the_first_unfinished_record() {
        let mut b = Book::default();
        b.assigned(tp(0));
        for (o, k) in [(10, "a"), (11, "b"), (12, "c")] {
            b.polled(rec(0, o, k, None), 0).expect("polled");
        }
        let first = b.take_next().expect("a");
        let second = b.take_next().expect("b");
        b.finished(&second).expect("finished");
        assert_eq!(b.to_commit(), vec![(tp(0), 10)], "a is still in its call");
        b.finished(&first).expect("finished");
        assert_eq!(b.to_commit(), vec![(tp(0), 12)], "c is still held");
        assert_eq!(b.to_commit(), vec![], "nothing moved");
    }

    #[test]
    fn retry_records_wait_for_their_due_time_in_offset_order() {
        let mut b = Book::default();
        b.assigned(tp(1));
        b.polled(rec(1, 0, "a", Some(1_000)), 0).expect("polled");
        b.polled(rec(1, 1, "b", Some(500)), 0).expect("polled");
        assert!(b.take_next().is_none());
        assert_eq!(b.waiting().count(), 1);
        assert_eq!(b.release_due(999), Some(1_000), "b waits behind a");
        assert!(b.take_next().is_none());
        assert_eq!(b.release_due(1_000), None);
        assert_eq!(b.take_next().map(|p| p.offset), Some(0));
        assert_eq!(b.take_next().map(|p| p.offset), Some(1));
        assert_eq!(b.buffered(), 0);
    }

    #[test]
    fn a_revoked_partition_starts_no_call_and_commits_only_finished_records() {
        let mut b = Book::default();
        b.assigned(tp(0));
        b.assigned(tp(1));
        b.polled(rec(0, 5, "a", None), 0).expect("polled");
        b.polled(rec(0, 6, "b", None), 0).expect("polled");
        b.polled(rec(1, 0, "c", None), 0).expect("polled");
        let a = b.take_next().expect("a");
        assert_eq!(b.revoke_begin(&[tp(0)]), 1, "a's call is running");
        assert_eq!(
            b.take_next().map(|p| p.offset),
            Some(0),
            "b is dropped, c goes"
        );
        b.finished(&a).expect("finished");
        assert_eq!(b.calling(&[tp(0)]), 0);
        assert_eq!(
            b.revoke_end(&[tp(0)]),
            vec![(tp(0), 6)],
            "b was never called"
        );
        // Assigned again: the old record finishing changes nothing in the new epoch.
        b.assigned(tp(0));
        b.finished(&a).expect("stale finish is ignored");
        assert!(
            b.to_commit().iter().all(|(t, _)| *t != tp(0)),
            "nothing polled in the new epoch"
        );
    }
}
