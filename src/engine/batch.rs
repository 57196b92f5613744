//! One round of processing, task by task on up to `--processing-threads` threads ("lanes").
//!
//! Each running task's input partition has its own librdkafka queue ([`super::source`]). A round
//! spreads the running tasks over lanes ([`plan_lanes`], a pure function) and each lane, on its
//! own thread, takes chunks of records from its partitions' queues in turn and runs them through
//! their tasks until it has done its share of the round or its queues are empty. The stream
//! thread runs the first lane itself, scoped threads the others. Tasks share nothing but the
//! producer (thread-safe) and the metrics (atomics), so lanes take no lock; every record they
//! produce belongs to the one open transaction, and the stream thread commits only after every
//! lane of the round has finished.
//!
//! ```text
//!  stray records (consumer queue) ─▶ stream thread, first (older than their partition's queue)
//!  lane 0 (stream thread): p0 p2 p4 … ─┐ chunk of ≤ 500 from each queue in turn,
//!  lane 1 (scoped thread): p1 p3 p5 … ─┴▶ each partition's records in offset order; join;
//!                                         then the stream thread commits if due
//! ```
//!
//! What a task does with a record is exactly what it did when the stream thread processed
//! records one at a time: only the interleaving *between* partitions changes, and partitions
//! share no state. A round goes parallel only when the round before it was busy (at least
//! [`MIN_PARALLEL_RECORDS`]): a trickle of records is not worth a thread.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use paystream_topology::processor::Record;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;

use super::source::{Source, SourceQueue};
use super::task::{Task, TaskError, TaskOutputs};
use crate::telemetry::Metrics;

/// A round after one that processed fewer records than this runs on the stream thread alone.
pub const MIN_PARALLEL_RECORDS: usize = 256;
/// Records a lane takes from one partition's queue before its next partition's turn.
const CHUNK: usize = 500;

/// The source record `msg` as the topology's input.
pub fn record_of(msg: &BorrowedMessage<'_>) -> Record {
    Record {
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        timestamp: msg.timestamp().to_millis().unwrap_or(0),
        headers: Vec::new(),
        decoded: Default::default(),
    }
}

/// Pure: spread `partitions` over at most `lanes` lanes, round-robin in partition order: every
/// partition on exactly one lane, no lane empty, lane sizes differing by at most one.
pub fn plan_lanes(partitions: &[i32], lanes: usize) -> Vec<Vec<i32>> {
    let mut sorted = partitions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let lanes = lanes.max(1).min(sorted.len());
    let mut plan = vec![Vec::new(); lanes];
    for (i, p) in sorted.into_iter().enumerate() {
        plan[i % lanes].push(p);
    }
    plan
}

/// How many records a round processed, or the error that stopped it (see [`process`]).
pub type RoundResult = Result<usize, TaskError>;

/// What a round needs besides the tasks.
pub struct RoundInput<'a, 'o> {
    pub source: &'a Source,
    pub outputs: &'a TaskOutputs<'o>,
    pub topic: &'a str,
    pub wall_clock: i64,
    /// Lanes to use (1: the stream thread alone).
    pub threads: usize,
    /// Records the whole round takes at most (split evenly over the lanes).
    pub budget: usize,
    /// Counts the rounds that ran on several lanes.
    pub metrics: &'a Metrics,
}

/// One round: the records the consumer's own queue holds (see [`Source::poll_stray`]) first,
/// then the lanes. A lane stops at its first error; the others finish their share. Of several
/// errors the first that is not the record's own fault is returned (it decides the recovery),
/// else the first [`TaskError::Poisoned`]: every task that met a poisoned record has remembered
/// it, so one rollback dead-letters them all. If nothing was queued, waits up to `wait` for a
/// record to arrive before returning `Ok(0)`.
pub fn process(
    tasks: &mut BTreeMap<i32, Task>,
    input: &RoundInput<'_, '_>,
    wait: Duration,
) -> RoundResult {
    input.source.arm_wakeup();
    let mut stray = 0;
    let mut failed = None;
    let drained = input.source.poll_stray(input.budget, |msg| {
        if failed.is_some() {
            return;
        }
        let Some(task) = tasks.get_mut(&msg.partition()) else {
            return;
        };
        let record = record_of(msg);
        let (topic, outputs, now) = (input.topic, input.outputs, input.wall_clock);
        match task.process(topic, msg.offset(), record, outputs, now) {
            Ok(()) => stray += 1,
            Err(e) => failed = Some(e),
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    // Stray records are older than their partition's queue: none of that queue before the last
    // of them.
    if !drained {
        return Ok(stray);
    }
    let partitions: Vec<i32> = tasks
        .keys()
        .copied()
        .filter(|p| input.source.queue(*p).is_some())
        .collect();
    let plan = plan_lanes(&partitions, input.threads);
    let share = (input.budget / plan.len().max(1)).max(1);
    let mut task_of: BTreeMap<i32, &mut Task> = tasks.iter_mut().map(|(p, t)| (*p, t)).collect();
    let mut lanes: Vec<Lane<'_, '_>> = plan
        .iter()
        .map(|lane| {
            lane.iter()
                .filter_map(|p| Some((task_of.remove(p)?, input.source.queue(*p)?)))
                .collect()
        })
        .collect();
    let processed = match lanes.len() {
        0 => Ok(0),
        1 => run_lane(lanes.remove(0), share, input),
        n => {
            input
                .metrics
                .rounds_parallel
                .fetch_add(1, Ordering::Relaxed);
            tracing::trace!(lanes = n, "parallel round");
            run_lanes(lanes, share, input)
        }
    }?;
    if stray + processed == 0 {
        input.source.wait_for_records(wait);
    }
    Ok(stray + processed)
}

/// A lane's tasks with their partitions' queues.
type Lane<'t, 'q> = Vec<(&'t mut Task, &'q SourceQueue)>;

/// Every lane but the first on a scoped thread of its own; the first on this one.
fn run_lanes(
    mut lanes: Vec<Lane<'_, '_>>,
    share: usize,
    input: &RoundInput<'_, '_>,
) -> RoundResult {
    let first = lanes.remove(0);
    let mut slots: Vec<Option<Lane<'_, '_>>> = lanes.into_iter().map(Some).collect();
    let mut results: Vec<RoundResult> = std::thread::scope(|s| {
        let handles: Vec<_> = slots
            .iter_mut()
            .map(|slot| {
                std::thread::Builder::new()
                    .name("stream-lane".into())
                    .spawn_scoped(s, move || slot.take().map(|l| run_lane(l, share, input)))
            })
            .collect();
        let mut results = vec![run_lane(first, share, input)];
        // A lane whose thread could not be created stays in its slot (below).
        for handle in handles.into_iter().flatten() {
            let joined = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            results.extend(joined);
        }
        results
    });
    for lane in slots.into_iter().flatten() {
        tracing::warn!("no thread for a processing lane; the stream thread runs it");
        results.push(run_lane(lane, share, input));
    }
    combine(results)
}

/// One lane: a chunk from each of its partitions' queues in turn, until `share` records or
/// every queue is empty.
fn run_lane(mut lane: Lane<'_, '_>, share: usize, input: &RoundInput<'_, '_>) -> RoundResult {
    let mut processed = 0;
    while processed < share && !lane.is_empty() {
        let mut i = 0;
        while i < lane.len() && processed < share {
            let (task, queue) = &mut lane[i];
            let mut drained = false;
            for _ in 0..CHUNK.min(share - processed) {
                match queue.poll(Duration::ZERO) {
                    None => {
                        drained = true;
                        break;
                    }
                    Some(Ok(msg)) => {
                        let record = record_of(&msg);
                        let (topic, outputs, now) = (input.topic, input.outputs, input.wall_clock);
                        task.process(topic, msg.offset(), record, outputs, now)?;
                        processed += 1;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(partition = task.partition, error = %e, "source partition error (librdkafka retries)");
                        drained = true;
                        break;
                    }
                }
            }
            if drained {
                lane.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
    Ok(processed)
}

/// The round's result from its lanes' (see [`process`]).
fn combine(results: Vec<RoundResult>) -> RoundResult {
    let mut processed = 0;
    let mut poisoned = None;
    for result in results {
        match result {
            Ok(n) => processed += n,
            Err(e @ TaskError::Poisoned { .. }) => {
                poisoned.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    poisoned.map_or(Ok(processed), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every partition lands on exactly one lane, no lane is empty, there are never more
        /// lanes than asked for or than partitions, and lane sizes differ by at most one.
        #[test]
        fn lanes_cover_every_partition_once_and_stay_balanced(
            partitions in proptest::collection::btree_set(0i32..256, 0..64),
            lanes in 1usize..8,
        ) {
            let partitions: Vec<i32> = partitions.into_iter().rev().collect();
            let plan = plan_lanes(&partitions, lanes);
            prop_assert_eq!(plan.len(), lanes.min(partitions.len()));
            prop_assert!(plan.iter().all(|lane| !lane.is_empty()));
            let mut seen: Vec<i32> = plan.iter().flatten().copied().collect();
            seen.sort_unstable();
            let mut all = partitions.clone();
            all.sort_unstable();
            prop_assert_eq!(seen, all);
            let sizes: Vec<usize> = plan.iter().map(Vec::len).collect();
            let (min, max) = (sizes.iter().min(), sizes.iter().max());
            if let (Some(min), Some(max)) = (min, max) {
                prop_assert!(max - min <= 1);
            }
        }
    }

    #[test]
    fn the_first_of_several_errors_that_is_not_a_records_fault_decides() {
        let poisoned = |partition| TaskError::Poisoned {
            partition,
            offset: 7,
            reason: "processor_panic",
            detail: String::new(),
        };
        let illegal = TaskError::IllegalTransition {
            partition: 2,
            from: super::super::task::TaskState::Running,
            to: super::super::task::TaskState::Running,
        };
        assert!(matches!(combine(vec![Ok(3), Ok(4)]), Ok(7)));
        assert!(matches!(
            combine(vec![Err(poisoned(1)), Ok(4), Err(poisoned(3))]),
            Err(TaskError::Poisoned { partition: 1, .. })
        ));
        assert!(matches!(
            combine(vec![Err(poisoned(1)), Err(illegal)]),
            Err(TaskError::IllegalTransition { partition: 2, .. })
        ));
    }
}
