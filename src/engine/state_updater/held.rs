//! What the state updater knows of each task it holds: where each store's read stands, whether
//! the copy is queryable, restore progress; and where a read starts.

use std::time::{Duration, Instant};

use super::super::task::{Task, TaskState};
use super::BACKOFF_MIN;

/// Where one store of a held task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StoreRead {
    /// Waiting to learn the changelog's watermarks (again at `retry_at`).
    Pending {
        retry_at: Instant,
        backoff: Duration,
    },
    /// Reading; `end` is the last stable offset when the read began, `reached` whether the read
    /// got there (a standby reads on).
    Reading {
        end: i64,
        moved_at: Instant,
        reached: bool,
    },
    /// At the end (actives only: a standby keeps reading).
    CaughtUp,
}

/// A task the updater holds.
pub(super) struct Held {
    pub(super) task: Task,
    pub(super) reads: Vec<StoreRead>,
    /// Opened from disk (its checkpoint decides where to start), not a live copy.
    pub(super) fresh: bool,
    /// Queryable: every store reached its changelog's end at least once. A copy that never did
    /// may lack whole orders, and would answer "not found" for orders that exist.
    pub(super) synced: bool,
    /// For a restoring active: (records restored, records to restore).
    pub(super) progress: (u64, u64),
}

impl Held {
    pub(super) fn new(task: Task, fresh: bool, synced: bool) -> Self {
        let reads = task
            .stores
            .iter()
            .map(|_| StoreRead::Pending {
                retry_at: Instant::now(),
                backoff: BACKOFF_MIN,
            })
            .collect();
        Self {
            task,
            reads,
            fresh,
            synced,
            progress: (0, 0),
        }
    }

    /// Every store is at (or has been at) its changelog's end.
    pub(super) fn at_end(&self) -> bool {
        self.reads.iter().all(|r| {
            matches!(
                r,
                StoreRead::CaughtUp | StoreRead::Reading { reached: true, .. }
            )
        })
    }

    pub(super) fn is_active(&self) -> bool {
        self.task.state() == TaskState::Restoring
    }

    pub(super) fn caught_up(&self) -> bool {
        self.is_active() && self.reads.iter().all(|r| *r == StoreRead::CaughtUp)
    }
}

/// Changelog records read in one round, per (store index, partition).
#[derive(Default)]
pub(super) struct Batch {
    pub(super) entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub(super) last_offset: i64,
}

/// Where a store's read starts, from its checkpoint (or live position) and the changelog's
/// watermarks: `(start, wipe the local copy first)`. Pure; see the module documentation.
pub(super) fn restore_start(
    position: Option<i64>,
    has_data: bool,
    (lo, hi): (i64, i64),
) -> (i64, bool) {
    match position {
        Some(c) if lo <= c && c <= hi => (c, false),
        Some(_) => (lo, true),
        None => (lo, has_data),
    }
}

#[cfg(test)]
mod tests {
    use super::restore_start;

    #[test]
    fn restore_starts_at_a_position_inside_the_changelog_else_wipes() {
        assert_eq!(restore_start(Some(50), true, (0, 100)), (50, false));
        assert_eq!(restore_start(Some(100), true, (0, 100)), (100, false));
        assert_eq!(restore_start(Some(0), false, (0, 0)), (0, false));
        // Beyond the end (changelog recreated) or before its start (records deleted).
        assert_eq!(restore_start(Some(150), true, (0, 100)), (0, true));
        assert_eq!(restore_start(Some(5), true, (10, 100)), (10, true));
        // No checkpoint: from the beginning, wiping whatever is there.
        assert_eq!(restore_start(None, true, (10, 100)), (10, true));
        assert_eq!(restore_start(None, false, (10, 100)), (10, false));
    }
}
