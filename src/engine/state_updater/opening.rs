//! Tasks whose stores could not be opened yet: retried with backoff, reported in `/health`.
//!
//! Opening a task's stores fails for reasons outside its files (a lock still held, no file
//! handle left, a full disk; see `paystream_state::open`): those are never answered by deleting
//! the store, nor by stopping the instance. The partition waits here, shown in `/health` as
//! `"opening"` with the error, and is opened again after a backoff that doubles up to
//! [`BACKOFF_MAX`]. A store whose files are proven unusable was already wiped by
//! `TaskStore::open` and does not end up here (unless even the wipe failed, which is retried
//! the same way).
//!
//! ```text
//! Create ──▶ try open ──Ok──▶ held (restore / follow)
//!              │ Err
//!              ▼
//!           Opening{retry_at, backoff} ──due──▶ try open again
//!              │ Close: forgotten   SetRole: new role kept for when it opens
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::super::task::Task;
use super::held::Held;
use super::{StateUpdater, UpdaterError, BACKOFF_MAX, BACKOFF_MIN};

/// A partition waiting for its stores to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Opening {
    /// The role it was created with (or last set to).
    pub(super) active: bool,
    pub(super) retry_at: Instant,
    /// The wait after the next failure.
    pub(super) backoff: Duration,
}

/// The wait after `backoff`'s: doubled, at most [`BACKOFF_MAX`].
pub(super) fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

impl StateUpdater {
    /// Open `partition`'s task and take it; on failure, report it and schedule a retry after
    /// `backoff`.
    pub(super) fn try_open(
        &self,
        held: &mut BTreeMap<i32, Held>,
        opening: &mut BTreeMap<i32, Opening>,
        partition: i32,
        active: bool,
        backoff: Duration,
    ) -> Result<(), UpdaterError> {
        opening.remove(&partition);
        match Task::open(
            partition,
            &self.topology,
            &self.state_dir,
            &self.application_id,
            self.metrics.task(partition),
        ) {
            Ok(task) => self.take(held, task, active, true),
            Err(e) => {
                tracing::warn!(partition, error = %e, retry_in = ?backoff, "cannot open the stores of a task; keeping its files and retrying");
                if !self.status.tasks().contains_key(&partition) {
                    self.status.task_state(partition, "opening");
                }
                self.status.task_error(
                    partition,
                    Some(format!("cannot open store (retrying): {e}")),
                );
                opening.insert(
                    partition,
                    Opening {
                        active,
                        retry_at: Instant::now() + backoff,
                        backoff: next_backoff(backoff),
                    },
                );
                Ok(())
            }
        }
    }

    /// Open again every waiting task whose backoff ran out.
    pub(super) fn retry_opening(
        &self,
        held: &mut BTreeMap<i32, Held>,
        opening: &mut BTreeMap<i32, Opening>,
    ) -> Result<(), UpdaterError> {
        let now = Instant::now();
        let due: Vec<(i32, Opening)> = opening
            .iter()
            .filter(|(_, o)| o.retry_at <= now)
            .map(|(p, o)| (*p, *o))
            .collect();
        for (p, o) in due {
            self.try_open(held, opening, p, o.active, o.backoff)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut b = BACKOFF_MIN;
        let mut seen = vec![b];
        for _ in 0..10 {
            b = next_backoff(b);
            seen.push(b);
        }
        assert_eq!(seen[1], BACKOFF_MIN * 2);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*seen.last().unwrap(), BACKOFF_MAX);
    }
}
