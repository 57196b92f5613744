//! The state updater: a thread of its own that restores actives and keeps standbys up to date
//! (Kafka Streams' `StateUpdater` + `StoreChangelogReader`), so that a long restore never stops
//! the stream thread from processing its other partitions, nor the group loop from answering a
//! rebalance.
//!
//! ```text
//!  stream thread ──UpdaterCommand──▶ updater: Create / Adopt / SetRole / Close / Shutdown
//!                                       │  per store: watermarks → where to start (checkpoint,
//!                                       │  live position, or wipe) → read to the end
//!  stream thread ◀──Restored(task)──────┘  an active whose every store reached its changelog end
//! ```
//!
//! Where a store starts: a store opened from disk starts at its checkpoint, a live copy (a
//! standby being promoted, an active handed back) at its changelog position; either must lie
//! within the changelog's `[low, high]` watermarks, else the local copy is wiped and restored
//! from the beginning. "The end" is the log-end offset when the read starts, reached when the
//! `read_committed` consumer's position gets there (past the last commit marker; see
//! `changelog_reader` for why not the last stable offset).
//! A changelog partition that cannot be read (its leader is down, the topic is gone) is retried
//! with backoff and reported in `/health`; so is one that stops making progress, and so is a
//! task whose stores cannot be opened (`opening`: a lock, file-handle or disk error).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paystream_topology::Topology;
use rdkafka::error::KafkaError as RdError;
use thiserror::Error;

use super::changelog_reader::{ChangelogReader, LogEnds, Polled};
use super::local::LocalStores;
use super::status::SharedStatus;
use super::task::{Task, TaskError, TaskState};
use super::{lock, next_command, Next, SharedHeldTasks};
use crate::telemetry::Metrics;

/// Records taken per round, before commands and hand-overs get a turn.
const ROUND: usize = 10_000;
/// How long an idle round waits for records before looking at commands again.
const IDLE_WAIT: Duration = Duration::from_millis(10);
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A restoring store that has not moved for this long is reported in `/health`.
const STALL_AFTER: Duration = Duration::from_secs(30);
/// What the stream thread asks of the updater.
pub enum UpdaterCommand {
    /// Open `partition`'s task from disk and restore it (`active`) or follow it (standby).
    Create { partition: i32, active: bool },
    /// Take over a task from the stream thread (a suspended active, a restored task that is no
    /// longer active): catch it up (`active`) or follow its changelogs (standby).
    Adopt { task: Box<Task>, active: bool },
    /// Promote a standby (`active`) or demote a restoring active; ignored if the updater does
    /// not hold `partition` (the stream thread then gets it back with `Restored` and decides).
    SetRole { partition: i32, active: bool },
    /// Checkpoint and close `partition`'s task; ignored if not held.
    Close { partition: i32 },
    /// Checkpoint and close everything, then stop.
    Shutdown,
}

/// What the updater tells the stream thread.
pub enum UpdaterEvent {
    /// An active caught up with every changelog; it is still `Restoring` for the stream thread
    /// to start.
    Restored(Box<Task>),
    /// The updater stopped because of this error.
    Failed(UpdaterError),
}

#[derive(Debug, Error)]
pub enum UpdaterError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("changelog consumer for {topic}: {source}")]
    Consumer {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Everything the updater thread needs.
pub struct StateUpdater {
    pub bootstrap: String,
    pub application_id: String,
    pub state_dir: PathBuf,
    pub topology: Arc<Topology>,
    pub metrics: Arc<Metrics>,
    pub local: Arc<LocalStores>,
    pub status: Arc<SharedStatus>,
    pub held: SharedHeldTasks,
    pub commands: Receiver<UpdaterCommand>,
    pub events: Sender<UpdaterEvent>,
}

mod held;
mod opening;
mod stall;

use held::{restore_start, Batch, Held, StoreRead};
use opening::Opening;

impl StateUpdater {
    /// Run on the current thread until `Shutdown` (or the command channel closes).
    pub fn run(self) {
        let events = self.events.clone();
        if let Err(e) = self.run_inner() {
            tracing::error!(error = %e, "state updater failed");
            let _ = events.send(UpdaterEvent::Failed(e));
        }
    }

    fn run_inner(self) -> Result<(), UpdaterError> {
        let mut reader = self.new_reader()?;
        let ends = LogEnds::new(&self.bootstrap).map_err(|source| UpdaterError::Consumer {
            topic: "(log-end offsets)".into(),
            source,
        })?;
        let mut held: BTreeMap<i32, Held> = BTreeMap::new();
        let mut opening: BTreeMap<i32, Opening> = BTreeMap::new();
        let mut last_progress = Instant::now();
        let mut last_delivery = Instant::now();
        // After a round that read nothing, the next one waits a little for records instead of
        // spinning.
        let mut wait = Duration::ZERO;
        loop {
            if !self.handle_commands(&mut held, &mut opening, &mut reader)? {
                break;
            }
            self.retry_opening(&mut held, &mut opening)?;
            self.start_pending(&mut held, &mut reader, &ends)?;
            if !held.is_empty() && !reader.has_assignment() {
                std::thread::sleep(IDLE_WAIT);
            }
            let read = self.read_round(&mut held, &mut reader, wait)?;
            if read > 0 || !reader.has_assignment() {
                last_delivery = Instant::now();
            }
            wait = if read == 0 { IDLE_WAIT } else { Duration::ZERO };
            self.hand_over_caught_up(&mut held, &mut reader)?;
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                self.report(&mut held);
                self.reset_stalled(&held, &mut reader, last_delivery.elapsed())?;
            }
        }
        for (p, mut h) in std::mem::take(&mut held) {
            self.close(p, &mut h, &mut reader)?;
        }
        Ok(())
    }

    /// The consumer of every store's changelog.
    fn new_reader(&self) -> Result<ChangelogReader, UpdaterError> {
        let group = format!("{}-restore", self.application_id);
        let topics: Vec<String> = self
            .topology
            .stores()
            .iter()
            .map(|s| s.changelog_topic(&self.application_id))
            .collect();
        ChangelogReader::new(
            &self.bootstrap,
            &group,
            topics.clone(),
            Some(self.metrics.clone()),
        )
        .map_err(|source| UpdaterError::Consumer {
            topic: topics.join(","),
            source,
        })
    }

    /// Replace the consumer by a new one, which resumes every read at what was applied, when
    /// [`stall::stalled_reads`] says so (`silent`: how long it has delivered nothing).
    fn reset_stalled(
        &self,
        held: &BTreeMap<i32, Held>,
        reader: &mut ChangelogReader,
        silent: Duration,
    ) -> Result<(), UpdaterError> {
        let (reads, waits): (Vec<(usize, i32, i64)>, Vec<Duration>) = held
            .iter()
            .flat_map(|(&p, h)| {
                h.reads
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, r)| match *r {
                        StoreRead::Reading {
                            end,
                            moved_at,
                            reached: false,
                        } => Some(((i, p, end), moved_at.elapsed())),
                        _ => None,
                    })
            })
            .unzip();
        let stalled: Vec<(&str, i32, i64)> = stall::stalled_reads(silent, reader.age(), &waits)
            .into_iter()
            .map(|k| {
                let (i, p, end) = reads[k];
                (reader.topic(i), p, end)
            })
            .collect();
        if stalled.is_empty() {
            return Ok(());
        }
        let positions = reader.positions().unwrap_or_default();
        tracing::warn!(?stalled, ?positions, "changelog reads (topic, partition, end) made no progress (a transaction still open on the changelog, or a stuck consumer); replacing the consumer");
        *reader = self.new_reader()?;
        for (&p, h) in held.iter() {
            for (i, read) in h.reads.iter().enumerate() {
                if matches!(read, StoreRead::Reading { .. }) {
                    reader
                        .assign(i, p, h.task.stores[i].changelog_end)
                        .map_err(|e| consumer_error(reader, i, e))?;
                }
            }
        }
        Ok(())
    }

    /// Handle every queued command; `false` once told to stop.
    fn handle_commands(
        &self,
        held: &mut BTreeMap<i32, Held>,
        opening: &mut BTreeMap<i32, Opening>,
        reader: &mut ChangelogReader,
    ) -> Result<bool, UpdaterError> {
        // Nothing held: wait for work instead of spinning.
        let mut wait = held.is_empty().then_some(Duration::from_millis(100));
        loop {
            let cmd = match next_command(&self.commands, wait.take()) {
                Next::Command(c) => c,
                Next::Nothing => return Ok(true),
                Next::Closed => return Ok(false),
            };
            match cmd {
                UpdaterCommand::Create { partition, active } => {
                    self.try_open(held, opening, partition, active, BACKOFF_MIN)?;
                }
                UpdaterCommand::Adopt { task, active } => {
                    self.take(held, *task, active, false)?;
                }
                UpdaterCommand::SetRole { partition, active } => {
                    if let Some(o) = opening.get_mut(&partition) {
                        o.active = active;
                    }
                    if let Some(mut h) = held.remove(&partition) {
                        if h.is_active() == active {
                            held.insert(partition, h);
                            continue;
                        }
                        self.unassign_all(partition, &mut h, reader)?;
                        let next = if active {
                            TaskState::Restoring
                        } else {
                            TaskState::Standby
                        };
                        h.task.transition(next)?;
                        self.status.task_state(partition, h.task.state().name());
                        let synced = h.synced;
                        held.insert(partition, Held::new(h.task, false, synced));
                    }
                }
                UpdaterCommand::Close { partition } => {
                    if opening.remove(&partition).is_some() {
                        self.status.task_gone(partition);
                    }
                    if let Some(mut h) = held.remove(&partition) {
                        self.close(partition, &mut h, reader)?;
                    }
                }
                UpdaterCommand::Shutdown => return Ok(false),
            }
        }
    }

    fn take(
        &self,
        held: &mut BTreeMap<i32, Held>,
        mut task: Task,
        active: bool,
        fresh: bool,
    ) -> Result<(), UpdaterError> {
        let next = if active {
            TaskState::Restoring
        } else {
            TaskState::Standby
        };
        if task.state() != next {
            task.transition(next)?;
        }
        let p = task.partition;
        self.status.task_state(p, task.state().name());
        // A live copy handed over by the stream thread was queryable there: it stays so (as a
        // standby copy, possibly behind). One opened from disk waits until it caught up.
        if fresh {
            self.local.remove(p);
        } else {
            self.local.insert(p, task.local_partition());
        }
        held.insert(p, Held::new(task, fresh, !fresh));
        Ok(())
    }

    fn close(
        &self,
        partition: i32,
        h: &mut Held,
        reader: &mut ChangelogReader,
    ) -> Result<(), UpdaterError> {
        self.unassign_all(partition, h, reader)?;
        self.local.remove(partition);
        self.status.task_gone(partition);
        h.task.checkpoint()?;
        // The files stay (and say how far they are) for when the partition comes back.
        lock(&self.held)
            .positions
            .insert(partition, h.task.changelog_position());
        h.task.transition(TaskState::Closed)?;
        tracing::info!(partition, "closed task");
        Ok(())
    }

    fn unassign_all(
        &self,
        partition: i32,
        h: &mut Held,
        reader: &mut ChangelogReader,
    ) -> Result<(), UpdaterError> {
        for (i, read) in h.reads.iter_mut().enumerate() {
            if matches!(read, StoreRead::Reading { .. }) {
                reader
                    .unassign(i, partition)
                    .map_err(|e| consumer_error(reader, i, e))?;
            }
            *read = StoreRead::CaughtUp;
        }
        Ok(())
    }

    /// Find out where each pending store starts and ends, and start reading it.
    fn start_pending(
        &self,
        held: &mut BTreeMap<i32, Held>,
        reader: &mut ChangelogReader,
        ends: &LogEnds,
    ) -> Result<(), UpdaterError> {
        let now = Instant::now();
        for (&p, h) in held.iter_mut() {
            for i in 0..h.reads.len() {
                let StoreRead::Pending { retry_at, backoff } = h.reads[i] else {
                    continue;
                };
                if retry_at > now {
                    continue;
                }
                let (lo, hi) = match ends.watermarks(reader.topic(i), p) {
                    Ok(w) => w,
                    Err(e) => {
                        let why = format!("changelog {} unreadable: {e}", reader.topic(i));
                        tracing::warn!(partition = p, error = %why, retry_in = ?backoff, "cannot read changelog; retrying");
                        self.status.task_error(p, Some(why));
                        h.reads[i] = StoreRead::Pending {
                            retry_at: now + backoff,
                            backoff: (backoff * 2).min(BACKOFF_MAX),
                        };
                        continue;
                    }
                };
                self.status.task_error(p, None);
                let active = h.is_active();
                let s = &mut h.task.stores[i];
                let position = if h.fresh {
                    s.checkpointed
                } else {
                    Some(s.changelog_end)
                };
                let has_data = s.approximate_len().unwrap_or(0) > 0;
                let (start, wipe) = restore_start(position, has_data, (lo, hi));
                if wipe {
                    tracing::warn!(partition = p, store = %s.name, ?position, lo, hi, "local copy does not fit the changelog; restoring from scratch");
                    s.wipe().map_err(|source| TaskError::Store {
                        partition: p,
                        source,
                    })?;
                }
                s.changelog_end = start;
                if active && start >= hi {
                    h.reads[i] = StoreRead::CaughtUp;
                    continue;
                }
                if active {
                    h.progress.1 += u64::try_from(hi - start).unwrap_or(0);
                    tracing::info!(partition = p, store = %s.name, from = start, to = hi, "restoring from changelog");
                }
                reader
                    .assign(i, p, start)
                    .map_err(|e| consumer_error(reader, i, e))?;
                h.reads[i] = StoreRead::Reading {
                    end: hi,
                    moved_at: now,
                    // A standby with nothing to read is at the end already (its position
                    // shows only once it read something).
                    reached: start >= hi,
                };
            }
        }
        Ok(())
    }

    /// Read what the consumer has (up to [`ROUND`] records) and apply it in batches.
    fn read_round(
        &self,
        held: &mut BTreeMap<i32, Held>,
        reader: &mut ChangelogReader,
        mut wait: Duration,
    ) -> Result<usize, UpdaterError> {
        let mut batches: HashMap<(usize, i32), Batch> = HashMap::new();
        let mut total = 0;
        if reader.has_assignment() {
            for _ in 0..ROUND {
                let timeout = std::mem::take(&mut wait);
                let got = reader.poll(timeout, |polled| match polled {
                    Polled::Record {
                        store,
                        partition,
                        offset,
                        key,
                        value,
                    } => {
                        let b = batches.entry((store, partition)).or_default();
                        if let Some(k) = key {
                            b.entries.push((k.to_vec(), value.map(<[u8]>::to_vec)));
                        }
                        b.last_offset = offset;
                        true
                    }
                    Polled::Nothing => false,
                });
                if !got {
                    break;
                }
                total += 1;
            }
        }
        for ((i, p), batch) in batches {
            let Some(h) = held.get_mut(&p) else { continue };
            let s = &mut h.task.stores[i];
            s.apply_batch(&batch.entries, batch.last_offset)
                .and_then(|()| s.maybe_checkpoint(false))
                .map_err(|source| TaskError::Store {
                    partition: p,
                    source,
                })?;
            let n = batch.entries.len() as u64;
            h.task
                .metrics
                .records_restored
                .fetch_add(n, Ordering::Relaxed);
            if let StoreRead::Reading { moved_at, .. } = &mut h.reads[i] {
                *moved_at = Instant::now();
                if h.task.state() == TaskState::Restoring {
                    h.progress.0 += n;
                }
            }
        }
        // Reached the end: the position (past records, commit markers and aborted records)
        // got to the log-end offset the read started with.
        let short = held.values().any(|h| {
            h.reads
                .iter()
                .any(|r| matches!(r, StoreRead::Reading { reached: false, .. }))
        });
        if short {
            let positions = reader
                .positions()
                .map_err(|source| UpdaterError::Consumer {
                    topic: "(changelog positions)".into(),
                    source,
                })?;
            let ended = positions
                .into_iter()
                .filter(|&(i, p, position)| {
                    matches!(
                        held.get(&p).map(|h| h.reads[i]),
                        Some(StoreRead::Reading { end, reached: false, .. }) if position >= end
                    )
                })
                .map(|(i, p, _)| (i, p))
                .collect();
            mark_ended(held, reader, ended)?;
        }
        Ok(total)
    }

    /// Make copies that caught up for the first time queryable, and hand every active whose
    /// stores all reached their end to the stream thread.
    fn hand_over_caught_up(
        &self,
        held: &mut BTreeMap<i32, Held>,
        reader: &mut ChangelogReader,
    ) -> Result<(), UpdaterError> {
        for (&p, h) in held.iter_mut() {
            if !h.synced && h.at_end() {
                h.synced = true;
                self.local.insert(p, h.task.local_partition());
                tracing::info!(
                    partition = p,
                    "local copy caught up; serving queries from it"
                );
            }
        }
        let done: Vec<i32> = held
            .iter()
            .filter(|(_, h)| h.caught_up())
            .map(|(p, _)| *p)
            .collect();
        for p in done {
            let Some(mut h) = held.remove(&p) else {
                continue;
            };
            self.unassign_all(p, &mut h, reader)?;
            h.task.checkpoint()?;
            self.status.restore_progress(p, h.progress.0, h.progress.1);
            tracing::info!(
                partition = p,
                restored = h.progress.0,
                "restored; handing over to the stream thread"
            );
            if self
                .events
                .send(UpdaterEvent::Restored(Box::new(h.task)))
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }

    /// Progress in logs and `/health`, positions for the group, stalled reads flagged.
    fn report(&self, held: &mut BTreeMap<i32, Held>) {
        let (mut done, mut total, mut restoring) = (0, 0, 0);
        for (&p, h) in held.iter() {
            if h.is_active() {
                restoring += 1;
                done += h.progress.0;
                total += h.progress.1;
                self.status.restore_progress(p, h.progress.0, h.progress.1);
            }
            let stalled = h.reads.iter().any(|r| {
                matches!(r, StoreRead::Reading { moved_at, .. } if h.is_active() && moved_at.elapsed() > STALL_AFTER)
            });
            if stalled {
                self.status.task_error(
                    p,
                    Some(format!(
                        "restore made no progress for {} s (changelog leader unavailable, or a \
                         transaction left open on the changelog?)",
                        STALL_AFTER.as_secs()
                    )),
                );
            }
        }
        if restoring > 0 {
            tracing::info!(restored = done, total, partitions = restoring, "restoring");
        }
        let mut shared = lock(&self.held);
        for (&p, h) in held.iter() {
            shared.positions.insert(p, h.task.changelog_position());
        }
    }
}

/// Stores whose read reached the end it started with: a standby's read goes on (it is now
/// queryable, see `Held::synced`), an active's store is caught up and leaves its consumer.
fn mark_ended(
    held: &mut BTreeMap<i32, Held>,
    reader: &mut ChangelogReader,
    ended: Vec<(usize, i32)>,
) -> Result<(), UpdaterError> {
    for (i, p) in ended {
        let Some(h) = held.get_mut(&p) else { continue };
        if let StoreRead::Reading { reached, .. } = &mut h.reads[i] {
            *reached = true;
        }
        if h.is_active() && matches!(h.reads[i], StoreRead::Reading { .. }) {
            reader
                .unassign(i, p)
                .map_err(|e| consumer_error(reader, i, e))?;
            h.reads[i] = StoreRead::CaughtUp;
        }
    }
    Ok(())
}

/// A consumer error about store `i`'s changelog.
fn consumer_error(reader: &ChangelogReader, i: usize, source: RdError) -> UpdaterError {
    UpdaterError::Consumer {
        topic: reader.topic(i).to_owned(),
        source,
    }
}
