//! Which offset of a partition may be committed when records finish out of order.
//!
//! Records are handed to gateway calls in offset order but finish in any order. The committed
//! position must never pass a record that has not finished (a crash would lose it), so it is the
//! lowest offset still in flight, or one past the last record handed out when none is. Pure.

use std::collections::BTreeSet;

/// A record was reported in a way the tracker cannot accept: a caller bug, never input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgressError {
    #[error("offset {offset} handed out after {last}: offsets must increase")]
    NotIncreasing { offset: i64, last: i64 },
    #[error("offset {0} finished but was not in flight")]
    NotInFlight(i64),
}

/// The records of one partition in flight, and the position that is safe to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    in_flight: BTreeSet<i64>,
    /// One past the last offset handed out (the position when nothing is in flight).
    next: i64,
}

impl PartitionProgress {
    /// A partition whose records before `position` are done (its committed position).
    pub fn new(position: i64) -> Self {
        PartitionProgress {
            in_flight: BTreeSet::new(),
            next: position,
        }
    }

    /// `offset` was handed out. Gaps (compacted or transaction-marker offsets) are allowed.
    pub fn started(&mut self, offset: i64) -> Result<(), ProgressError> {
        if offset < self.next {
            return Err(ProgressError::NotIncreasing {
                offset,
                last: self.next - 1,
            });
        }
        self.in_flight.insert(offset);
        self.next = offset + 1;
        Ok(())
    }

    /// `offset` finished (delivered, sent to a retry topic or to the DLQ).
    pub fn finished(&mut self, offset: i64) -> Result<(), ProgressError> {
        if self.in_flight.remove(&offset) {
            Ok(())
        } else {
            Err(ProgressError::NotInFlight(offset))
        }
    }

    /// The offset to commit: every record before it has finished.
    pub fn commit_position(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }

    /// Records handed out and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_position_waits_for_the_lowest_unfinished_record() {
        let mut p = PartitionProgress::new(10);
        for o in [10, 11, 13] {
            p.started(o).unwrap();
        }
        p.finished(11).unwrap();
        p.finished(13).unwrap();
        assert_eq!(p.commit_position(), 10);
        p.finished(10).unwrap();
        assert_eq!(p.commit_position(), 14);
        assert_eq!(
            p.started(12),
            Err(ProgressError::NotIncreasing {
                offset: 12,
                last: 13
            })
        );
        assert_eq!(p.finished(13), Err(ProgressError::NotInFlight(13)));
    }

    proptest! {
        /// Against a model that remembers every record: the position is never past an
        /// unfinished record, never goes back, and reaches the end once all are finished.
        #[test]
        fn never_passes_an_unfinished_record(
            gaps in proptest::collection::vec(1i64..4, 1..60),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 60),
        ) {
            let start = 100;
            let mut offsets = Vec::new();
            let mut o = start;
            for g in &gaps {
                offsets.push(o);
                o += g;
            }
            let mut p = PartitionProgress::new(start);
            for &o in &offsets {
                p.started(o).unwrap();
            }
            let mut unfinished: Vec<i64> = offsets.clone();
            let mut last = p.commit_position();
            for idx in order.iter().take(offsets.len()) {
                if unfinished.is_empty() { break; }
                let o = unfinished.remove(idx.index(unfinished.len()));
                p.finished(o).unwrap();
                let pos = p.commit_position();
                prop_assert!(pos >= last, "went back from {} to {}", last, pos);
                prop_assert!(unfinished.iter().all(|&u| u >= pos), "{} passes one of {:?}", pos, unfinished);
                last = pos;
            }
            for o in unfinished.clone() { p.finished(o).unwrap(); }
            prop_assert_eq!(p.commit_position(), offsets.last().unwrap() + 1);
            prop_assert_eq!(p.in_flight(), 0);
        }
    }
}
