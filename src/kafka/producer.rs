//! The output producer: everything an instance writes (changelogs, sinks, dead letters), with
//! delivery tracking and, under exactly-once, one Kafka transaction per commit.
//!
//! ```text
//!   exactly_once_v2:  send … send ─▶ commit(offsets, group) = flush (every record in the log)
//!                     (a transaction        + send_offsets_to_transaction
//!                      opens lazily)        + commit_transaction      ─▶ all or nothing
//!                                           abort() on failure        ─▶ nothing visible
//!   at_least_once:    send … send ─▶ commit(..) = flush: every record acknowledged, or an error
//! ```
//!
//! One producer per stream thread, with `transactional.id = <application-id>-<process-id>-<n>`:
//! a restarted instance (same process id, kept in its state directory) fences its own earlier
//! incarnation's open transaction at start-up (`init_transactions`). Fencing of an instance that
//! lost its partitions comes from the group generation sent with the offsets (KIP-447, see
//! [`super::transaction`]).
//!
//! **Records before offsets.** The offsets join the transaction only once every record of it is
//! in the log. The group coordinator checks the generation when the offsets join, but nothing
//! checks the commit (`EndTxn`) that follows: an instance frozen between the two (SIGSTOP, a VM
//! pause) that wakes after another instance took its partitions over still commits. The new
//! owner's restore reads its changelogs up to their log end, and its committed-offset fetch
//! (`require_stable`) waits for the frozen transaction. If the frozen transaction's records were
//! still in this producer's buffer, the restore stopped before them while the offsets then
//! skipped their events: views missing events (found by the pause drill; reproduced by
//! `PAYSTREAM_FAILPOINT_STOP_IN_COMMIT`, see tests/commit_faults.rs). With the records in the log
//! first, the restore waits for the frozen transaction like the offset fetch does, and sees its
//! records if and only if its offsets count.
//!
//! **A call that never returns.** librdkafka can leave `send_offsets_to_transaction` blocked for
//! good when the coordinator's broker restarts (see [`super::watchdog`]). Both calls of a commit
//! run under a deadline ([`WATCHDOG_LIMIT`]); past it the producer is *wedged*: the commit fails
//! as [`CommitError::Hung`] (its outcome unknown, so the engine catches its tasks up from their
//! changelogs), every later transactional call fails at once, and the engine replaces the
//! producer, whose `init_transactions` fences the wedged one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paystream_state::transactional::ChangelogWriter;
use paystream_state::StoreError;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::client::{producer_config, transactional_producer_config};
use super::transaction::{self, send_offsets_to_transaction, GroupMetadata, TxnError};
use super::watchdog::{self, WatchdogError};
use super::KafkaError;

/// How long `send` waits for room in librdkafka's queue before giving up (back-pressure).
const QUEUE_FULL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one transactional call (init, offsets, commit, abort).
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a commit's call may take before the producer is given up as wedged: the call's own
/// timeout and a margin (librdkafka caps that timeout to the transaction's, 10 s).
const WATCHDOG_LIMIT: Duration = Duration::from_secs(35);

/// Delivery bookkeeping, updated from librdkafka's delivery callbacks.
pub struct DeliveryTracker {
    /// Per tracked topic (changelogs), per partition: highest acknowledged offset (-1 = none).
    acked: HashMap<String, Vec<AtomicI64>>,
    failures: AtomicU64,
    first_failure: Mutex<Option<(String, String)>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(msg) => {
                if let Some(parts) = self.acked.get(msg.topic()) {
                    if let Some(slot) = usize::try_from(msg.partition())
                        .ok()
                        .and_then(|p| parts.get(p))
                    {
                        slot.fetch_max(msg.offset(), Ordering::AcqRel);
                    }
                }
            }
            Err((err, msg)) => {
                self.failures.fetch_add(1, Ordering::AcqRel);
                // One warning per commit: the commit's error counts the rest (a broker outage
                // fails every record in flight, tens of thousands of lines otherwise).
                let first_of_commit = self.first_failure.lock().is_ok_and(|mut first| {
                    let was_none = first.is_none();
                    if was_none {
                        *first = Some((msg.topic().to_owned(), err.to_string()));
                    }
                    was_none
                });
                if first_of_commit {
                    tracing::warn!(topic = msg.topic(), partition = msg.partition(), error = %err, "delivery failed (further failures until the next commit are counted in its error)");
                } else {
                    tracing::debug!(topic = msg.topic(), partition = msg.partition(), error = %err, "delivery failed");
                }
            }
        }
    }
}

/// How the producer delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Idempotent, no transactions: [`OutputProducer::commit`] waits for acknowledgements.
    AtLeastOnce,
    /// Transactional with this `transactional.id`.
    ExactlyOnce { transactional_id: String },
}

/// Why a commit did not go through. In every case nothing of it is visible to
/// `read_committed` readers (exactly-once) and the caller must go back to its last commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The group refused this instance's generation: it lost its partitions (a zombie).
    #[error("fenced: {0}")]
    Fenced(String),
    /// The transaction or a delivery failed and was aborted; processing may go on.
    #[error("aborted: {0}")]
    Aborted(String),
    /// The producer can no longer be used (e.g. another producer took its transactional id);
    /// create a new one.
    #[error("producer failed: {0}")]
    Fatal(String),
    /// A transactional call never returned (module doc): the producer is wedged and the
    /// commit's outcome unknown; create a new one, as for [`CommitError::Fatal`].
    #[error("producer wedged: {0}")]
    Hung(String),
}

/// The instance's producer. Cheap to share (`Arc`); `send` never blocks on the network.
pub struct OutputProducer {
    /// Shared with a commit's call threads (see [`super::watchdog`]).
    inner: Arc<ThreadedProducer<DeliveryTracker>>,
    transactional: bool,
    /// A transaction is open (begun lazily by the first send after a commit or abort).
    in_transaction: AtomicBool,
    /// A transactional call never returned: the producer must be replaced (module doc).
    wedged: AtomicBool,
}

impl OutputProducer {
    /// Create a producer that tracks acknowledged offsets of `tracked` topics (name, partition
    /// count). Transactional ones are initialized (`init_transactions`) before this returns.
    pub fn new(
        bootstrap: &str,
        tracked: &[(String, i32)],
        delivery: &Delivery,
    ) -> Result<Arc<Self>, KafkaError> {
        let acked = tracked
            .iter()
            .map(|(t, n)| (t.clone(), (0..*n).map(|_| AtomicI64::new(-1)).collect()))
            .collect();
        let ctx = DeliveryTracker {
            acked,
            failures: AtomicU64::new(0),
            first_failure: Mutex::new(None),
        };
        let config = match delivery {
            Delivery::AtLeastOnce => producer_config(bootstrap),
            Delivery::ExactlyOnce { transactional_id } => {
                transactional_producer_config(bootstrap, transactional_id)
            }
        };
        let inner: ThreadedProducer<DeliveryTracker> = config
            .create_with_context(ctx)
            .map_err(KafkaError::client("producer"))?;
        let transactional = matches!(delivery, Delivery::ExactlyOnce { .. });
        if transactional {
            inner
                .init_transactions(TXN_TIMEOUT)
                .map_err(KafkaError::client("init_transactions"))?;
        }
        Ok(Arc::new(Self {
            inner: Arc::new(inner),
            transactional,
            in_transaction: AtomicBool::new(false),
            wedged: AtomicBool::new(false),
        }))
    }

    /// Whether commits are Kafka transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Enqueue a record to an explicit partition, waiting while librdkafka's queue is full.
    /// Under exactly-once the record joins the open transaction (opening one if needed).
    pub fn send(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        timestamp: Option<i64>,
    ) -> Result<(), KafkaError> {
        self.begin()?;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(partition);
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        // Read the clock only once the queue is full: a clock read per record shows in profiles.
        let mut started = None;
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if started.get_or_insert_with(Instant::now).elapsed() > QUEUE_FULL_TIMEOUT {
                        return Err(KafkaError::Timeout {
                            what: format!("room in the producer queue for {topic}"),
                            seconds: QUEUE_FULL_TIMEOUT.as_secs(),
                        });
                    }
                    record = back;
                    // The background thread drains the queue; yield briefly.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((RdError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), r)) => {
                    let bytes = r.key.map_or(0, <[u8]>::len) + r.payload.map_or(0, <[u8]>::len);
                    return Err(KafkaError::TooLarge {
                        topic: topic.to_owned(),
                        bytes,
                    });
                }
                Err((e, _)) => {
                    return Err(KafkaError::Delivery {
                        topic: topic.to_owned(),
                        message: e.to_string(),
                    })
                }
            }
        }
    }

    fn begin(&self) -> Result<(), KafkaError> {
        if !self.transactional || self.in_transaction.load(Ordering::Acquire) {
            return Ok(());
        }
        self.inner
            .begin_transaction()
            .map_err(KafkaError::client("begin_transaction"))?;
        self.in_transaction.store(true, Ordering::Release);
        Ok(())
    }

    /// Make everything sent since the last commit durable, with `offsets` (source partition →
    /// next offset to consume) of `source_topic`:
    /// - exactly-once: the offsets join the transaction with `group`'s generation, and the
    ///   transaction commits: all of it or none of it becomes visible. On failure the
    ///   transaction is aborted before this returns.
    /// - at-least-once: waits until every record is acknowledged; the caller commits the offsets
    ///   through the group afterwards.
    ///
    /// `ending` is called right before the transaction is asked to commit (exactly-once only):
    /// from then on its offsets may be visible in Kafka.
    pub fn commit(
        &self,
        source_topic: &str,
        offsets: &[(i32, i64)],
        group: &GroupMetadata,
        ending: &dyn Fn(),
    ) -> Result<(), CommitError> {
        if !self.transactional {
            return self
                .flush(TXN_TIMEOUT)
                .map_err(|e| CommitError::Aborted(e.to_string()));
        }
        if offsets.is_empty() && !self.in_transaction.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.wedged.load(Ordering::Acquire) {
            return Err(CommitError::Hung(WEDGED.into()));
        }
        self.begin()
            .map_err(|e| CommitError::Fatal(e.to_string()))?;
        let result = self.commit_transaction(source_topic, offsets, group, ending);
        if let Err(e) = &result {
            tracing::warn!(error = %e, "transaction failed; aborting it");
            if !matches!(e, CommitError::Fatal(_) | CommitError::Hung(_)) {
                if let Err(abort) = self.abort() {
                    return Err(CommitError::Fatal(format!(
                        "{e}; then the abort failed: {abort}"
                    )));
                }
            }
        }
        result
    }

    fn commit_transaction(
        &self,
        source_topic: &str,
        offsets: &[(i32, i64)],
        group: &GroupMetadata,
        ending: &dyn Fn(),
    ) -> Result<(), CommitError> {
        if !offsets.is_empty() {
            // Records before offsets (module documentation). Only waiting: a delivery that
            // failed puts the transaction in an abortable state, which the calls below report
            // (the failure count may still hold purged deliveries of an earlier aborted
            // transaction, which must not fail this one).
            if !transaction::flush(&*self.inner, TXN_TIMEOUT) {
                return Err(CommitError::Aborted(format!(
                    "records not delivered within {TXN_TIMEOUT:?} of the commit"
                )));
            }
            let mut tpl = TopicPartitionList::new();
            for (p, o) in offsets {
                tpl.add_partition_offset(source_topic, *p, Offset::Offset(*o))
                    .map_err(|e| CommitError::Aborted(e.to_string()))?;
            }
            let (inner, group) = (Arc::clone(&self.inner), group.clone());
            self.bounded("send_offsets_to_transaction", move || {
                super::failpoint::hang_send_offsets();
                send_offsets_to_transaction(&*inner, &tpl, &group, TXN_TIMEOUT)
            })?;
            super::failpoint::stop_in_commit();
        }
        ending();
        let inner = Arc::clone(&self.inner);
        let committed = self.bounded("commit_transaction", move || {
            transaction::commit_transaction(&*inner, TXN_TIMEOUT)
        });
        self.take_failures();
        committed?;
        self.in_transaction.store(false, Ordering::Release);
        if super::failpoint::lose_commit_answer() {
            return Err(CommitError::Fatal(
                "failpoint: the transaction committed but its answer was lost".into(),
            ));
        }
        Ok(())
    }

    /// A transactional call under [`WATCHDOG_LIMIT`]; a call that never answers wedges the
    /// producer.
    fn bounded(
        &self,
        call: &'static str,
        f: impl FnOnce() -> Result<(), TxnError> + Send + 'static,
    ) -> Result<(), CommitError> {
        match watchdog::call(call, WATCHDOG_LIMIT, f) {
            Ok(answer) => answer.map_err(classify),
            Err(e @ WatchdogError::Hung { .. }) => {
                self.wedged.store(true, Ordering::Release);
                tracing::error!(error = %e, "transactional call hung: giving the producer up (its thread is left behind)");
                Err(CommitError::Hung(e.to_string()))
            }
            Err(e @ WatchdogError::Spawn { .. }) => Err(CommitError::Aborted(e.to_string())),
        }
    }

    /// Abort the open transaction (exactly-once; nothing of it becomes visible), or forget
    /// delivery failures since the last commit (at-least-once). A wedged producer refuses: it
    /// must be replaced, which aborts its transaction.
    pub fn abort(&self) -> Result<(), KafkaError> {
        self.take_failures();
        if !self.transactional || !self.in_transaction.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.wedged.load(Ordering::Acquire) {
            return Err(KafkaError::Timeout {
                what: WEDGED.into(),
                seconds: WATCHDOG_LIMIT.as_secs(),
            });
        }
        self.inner
            .abort_transaction(TXN_TIMEOUT)
            .map_err(KafkaError::client("abort_transaction"))?;
        self.in_transaction.store(false, Ordering::Release);
        Ok(())
    }

    /// Wait until every enqueued record is acknowledged; fail if any delivery failed since the
    /// last successful flush (the caller must then not commit).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        if !transaction::flush(&*self.inner, timeout) {
            return Err(KafkaError::Timeout {
                what: "producer flush".into(),
                seconds: timeout.as_secs(),
            });
        }
        if let Some((topic, message)) = self.take_failures() {
            return Err(KafkaError::Delivery { topic, message });
        }
        Ok(())
    }

    /// The first delivery failure since the last call, if any (and reset the count).
    fn take_failures(&self) -> Option<(String, String)> {
        let ctx = self.inner.context();
        if ctx.failures.swap(0, Ordering::AcqRel) == 0 {
            return None;
        }
        Some(
            ctx.first_failure
                .lock()
                .ok()
                .and_then(|mut f| f.take())
                .unwrap_or_else(|| ("?".into(), "unknown".into())),
        )
    }

    /// Highest acknowledged offset of a tracked topic's partition (-1 when none yet).
    pub fn acked_offset(&self, topic: &str, partition: i32) -> i64 {
        self.inner
            .context()
            .acked
            .get(topic)
            .and_then(|p| usize::try_from(partition).ok().and_then(|i| p.get(i)))
            .map_or(-1, |a| a.load(Ordering::Acquire))
    }
}

/// Why a wedged producer refuses transactional calls.
const WEDGED: &str =
    "an earlier transactional call of this producer never returned; it must be replaced";

/// Sort a failed transactional call into what the caller does next.
fn classify(e: transaction::TxnError) -> CommitError {
    if e.is_group_fencing()
        || matches!(
            e.code,
            RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
        )
    {
        if e.fatal {
            return CommitError::Fatal(e.to_string());
        }
        return CommitError::Fenced(e.to_string());
    }
    if e.fatal {
        CommitError::Fatal(e.to_string())
    } else {
        CommitError::Aborted(e.to_string())
    }
}

/// Headers for a dead-lettered record: why, and where it came from.
pub fn dead_letter_headers(
    reason: &str,
    detail: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedHeaders {
    let p = partition.to_string();
    let o = offset.to_string();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "paystream.dlq.reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "paystream.dlq.detail",
            value: Some(detail),
        })
        .insert(Header {
            key: "paystream.source.topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "paystream.source.partition",
            value: Some(p.as_str()),
        })
        .insert(Header {
            key: "paystream.source.offset",
            value: Some(o.as_str()),
        })
}

/// The header every output record (SMS, alerts) carries: which application wrote it, so
/// applications sharing an output topic (blue/green deploys) can tell their records apart.
pub const APPLICATION_HEADER: &str = "paystream.application.id";

/// [`ChangelogWriter`] for one store of one task: `<app>-<store>-changelog`, same partition as
/// the task (as Kafka Streams does), so a partition's state can be restored on its own.
pub struct KafkaChangelogWriter<'a> {
    pub producer: &'a OutputProducer,
    pub topic: &'a str,
    pub partition: i32,
}

impl ChangelogWriter for KafkaChangelogWriter<'_> {
    fn send(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        self.producer
            .send(self.topic, self.partition, Some(key), value, None, None)
            .map_err(|e| StoreError::Changelog {
                store: self.topic.to_owned(),
                message: e.to_string(),
            })
    }
}
