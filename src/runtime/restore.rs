//! Restore: bring a task's stores up to the end of their changelogs before it processes.
//!
//! For each store, restore starts at the local checkpoint (the changelog offset up to which the
//! local files are durable) or, without a usable checkpoint, at the changelog's beginning with
//! the local store wiped. Ledger stores (whose "changelog" is an output topic, e.g. `SEND_SMS`)
//! never have a checkpoint: they are rebuilt from the topic's beginning on every open. It reads to the end offset seen when restore began, applying records
//! in batches (a changelog record is a whole value, so applying one again is harmless), and
//! finishes with a flush and a fresh checkpoint. Progress is logged every few seconds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::kafka::client::{restore_consumer_config, QuietEof};
use crate::runtime::task::{Task, TaskError, TaskState};

const WATERMARK_TIMEOUT: Duration = Duration::from_secs(15);
const BATCH: usize = 2_000;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("restore of {topic}/{partition}: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        #[source]
        source: RdError,
    },
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// What a restore did, for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreSummary {
    pub records: u64,
    pub elapsed: Duration,
    /// True when shutdown interrupted the restore (the tasks are not ready).
    pub interrupted: bool,
}

struct Pending {
    task: usize,
    store: usize,
    end: i64,
    done: bool,
    batch: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Restore every store of `tasks` (in state `Created`: from the checkpoint; or `Suspended`: from
/// where the live copy is) to the changelog's end; they are left in `Restoring` and the caller
/// moves them to `Running`.
pub fn restore_tasks(
    bootstrap: &str,
    group_id: &str,
    tasks: &mut [Task],
    shutdown: &CancellationToken,
) -> Result<RestoreSummary, RestoreError> {
    let started = Instant::now();
    let consumer: BaseConsumer<QuietEof> = restore_consumer_config(bootstrap, group_id)
        .create_with_context(QuietEof)
        .map_err(|source| RestoreError::Kafka {
            topic: "-".into(),
            partition: -1,
            source,
        })?;
    let mut tpl = TopicPartitionList::new();
    // Keyed by (topic index, partition): looking a record up must not allocate a String.
    let mut pending: HashMap<(usize, i32), Pending> = HashMap::new();
    let mut topics: Vec<String> = Vec::new();
    let mut total: i64 = 0;
    for (ti, task) in tasks.iter_mut().enumerate() {
        let fresh = task.state() == TaskState::Created;
        task.transition(TaskState::Restoring)?;
        let partition = task.partition;
        for (si, s) in task.stores.iter_mut().enumerate() {
            if !fresh {
                // A live copy (standby being promoted, active resumed): it holds exactly up to
                // its changelog position.
                s.checkpointed = Some(s.changelog_end);
            }
            let topic = s.changelog_topic.to_string();
            let (lo, hi) = consumer
                .fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)
                .map_err(|source| RestoreError::Kafka {
                    topic: topic.clone(),
                    partition,
                    source,
                })?;
            let start = match s.checkpointed {
                Some(c) if c >= lo && c <= hi => c,
                Some(c) => {
                    // The changelog no longer holds what lies between the checkpoint and its
                    // beginning (or was recreated): the local copy cannot be trusted.
                    tracing::warn!(partition, store = %s.name, checkpoint = c, lo, hi, "checkpoint outside the changelog; restoring from scratch");
                    s.wipe()
                        .map_err(|source| TaskError::Store { partition, source })?;
                    lo
                }
                None => {
                    if s.approximate_len().unwrap_or(0) > 0 {
                        tracing::warn!(partition, store = %s.name, "local store without checkpoint; restoring from scratch");
                        s.wipe()
                            .map_err(|source| TaskError::Store { partition, source })?;
                    }
                    match s.ledger_horizon_ms {
                        Some(horizon) => {
                            ledger_start(&consumer, &topic, partition, horizon, (lo, hi))?
                        }
                        None => lo,
                    }
                }
            };
            s.changelog_end = start;
            if start >= hi {
                s.changelog_end = hi;
                continue;
            }
            total += hi - start;
            tpl.add_partition_offset(&topic, partition, Offset::Offset(start))
                .map_err(|source| RestoreError::Kafka {
                    topic: topic.clone(),
                    partition,
                    source,
                })?;
            tracing::info!(partition, store = %s.name, from = start, to = hi, "restoring from changelog");
            let ti_topic = match topics.iter().position(|t| *t == topic) {
                Some(i) => i,
                None => {
                    topics.push(topic);
                    topics.len() - 1
                }
            };
            pending.insert(
                (ti_topic, partition),
                Pending {
                    task: ti,
                    store: si,
                    end: hi,
                    done: false,
                    batch: Vec::with_capacity(BATCH),
                },
            );
        }
    }
    let mut summary = RestoreSummary::default();
    if pending.is_empty() {
        finish(tasks, &pending)?;
        summary.elapsed = started.elapsed();
        return Ok(summary);
    }
    consumer
        .assign(&tpl)
        .map_err(|source| RestoreError::Kafka {
            topic: "-".into(),
            partition: -1,
            source,
        })?;
    let mut remaining = pending.len();
    let mut last_progress = Instant::now();
    while remaining > 0 {
        if shutdown.is_cancelled() {
            summary.interrupted = true;
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => flush_batches(tasks, &mut pending)?,
            Some(Ok(msg)) => {
                let Some(t) = topics.iter().position(|t| t == msg.topic()) else {
                    continue;
                };
                let Some(p) = pending.get_mut(&(t, msg.partition())) else {
                    continue;
                };
                if p.done {
                    continue;
                }
                let ts = msg.timestamp().to_millis().unwrap_or(0);
                if let Some(entry) =
                    tasks[p.task].stores[p.store].map_record(msg.key(), msg.payload(), ts)
                {
                    p.batch.push(entry);
                }
                summary.records += 1;
                if msg.offset() + 1 >= p.end {
                    p.done = true;
                    remaining -= 1;
                }
                if p.batch.len() >= BATCH || p.done {
                    apply(tasks, p)?;
                }
            }
            Some(Err(RdError::PartitionEOF(partition))) => {
                // EOF carries no topic; every store of a task has its own topic, so mark the
                // partitions whose position reached their end.
                for ((t, part), p) in pending.iter_mut() {
                    let topic = &topics[*t];
                    if *part != partition || p.done {
                        continue;
                    }
                    let reached = consumer
                        .position()
                        .ok()
                        .and_then(|pos| pos.find_partition(topic, *part).map(|e| e.offset()))
                        .and_then(|o| o.to_raw())
                        .is_some_and(|o| o >= p.end);
                    if reached {
                        apply(tasks, p)?;
                        p.done = true;
                        remaining -= 1;
                    }
                }
            }
            Some(Err(e)) => {
                let fatal = matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::TopicAuthorizationFailed
                    )
                );
                if fatal {
                    return Err(RestoreError::Kafka {
                        topic: "changelog".into(),
                        partition: -1,
                        source: e,
                    });
                }
                tracing::warn!(error = %e, "restore consumer error (retrying)");
            }
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let pct = if total > 0 {
                summary.records as f64 * 100.0 / total as f64
            } else {
                100.0
            };
            tracing::info!(
                restored = summary.records,
                total,
                percent = format!("{pct:.0}"),
                partitions_left = remaining,
                "restoring"
            );
        }
    }
    flush_batches(tasks, &mut pending)?;
    if !summary.interrupted {
        finish(tasks, &pending)?;
    }
    summary.elapsed = started.elapsed();
    tracing::info!(
        records = summary.records,
        seconds = summary.elapsed.as_secs_f64(),
        "restore finished"
    );
    Ok(summary)
}

/// Where a window ledger's rebuild starts: the first record appended within `horizon` ms before
/// now (anything older would expire from the store at once), or the end when there is none.
fn ledger_start(
    consumer: &BaseConsumer<QuietEof>,
    topic: &str,
    partition: i32,
    horizon: i64,
    (lo, hi): (i64, i64),
) -> Result<i64, RestoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let kafka = |source| RestoreError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(
        topic,
        partition,
        Offset::Offset(now.saturating_sub(horizon)),
    )
    .map_err(kafka)?;
    let found = consumer
        .offsets_for_times(tpl, WATERMARK_TIMEOUT)
        .map_err(kafka)?;
    let start = found
        .find_partition(topic, partition)
        .map(|e| e.offset())
        .and_then(|o| match o {
            Offset::Offset(n) => Some(n),
            _ => None,
        })
        .unwrap_or(hi);
    Ok(start.clamp(lo, hi))
}

fn apply(tasks: &mut [Task], p: &mut Pending) -> Result<(), RestoreError> {
    if p.batch.is_empty() {
        return Ok(());
    }
    let task = &mut tasks[p.task];
    let partition = task.partition;
    let s = &mut task.stores[p.store];
    s.apply_batch(&p.batch)
        .map_err(|source| TaskError::Store { partition, source })?;
    task.metrics
        .records_restored
        .fetch_add(p.batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
    p.batch.clear();
    Ok(())
}

fn flush_batches(
    tasks: &mut [Task],
    pending: &mut HashMap<(usize, i32), Pending>,
) -> Result<(), RestoreError> {
    for p in pending.values_mut() {
        apply(tasks, p)?;
    }
    Ok(())
}

/// Flush restored stores and checkpoint them at the end offset they reached.
fn finish(
    tasks: &mut [Task],
    pending: &HashMap<(usize, i32), Pending>,
) -> Result<(), RestoreError> {
    for p in pending.values() {
        let task = &mut tasks[p.task];
        task.stores[p.store].changelog_end = p.end;
    }
    for task in tasks.iter_mut() {
        let partition = task.partition;
        for s in &mut task.stores {
            s.checkpoint_now()
                .map_err(|source| TaskError::Store { partition, source })?;
        }
    }
    Ok(())
}
