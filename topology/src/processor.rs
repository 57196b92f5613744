//! The processor API: what a topology node is and what it can touch while processing a record.
//!
//! Entry point for custom logic: implement [`Processor`], add it with
//! [`crate::dsl::KStream::process`]. A node sees one record at a time through a
//! [`ProcessorContext`], which gives it the task's stores, lets it `forward` records to the next
//! node (or to the sink), and lets it send a record it cannot handle to the dead-letter topic.
//!
//! The runtime (root crate) and the in-memory [`crate::driver::TestDriver`] both execute topologies
//! by implementing [`TaskIo`]; nothing here knows about Kafka or RocksDB.

use std::any::Any;
use std::sync::Arc;

use paystream_state::store::{KeyValueStore, StoreError};
use paystream_state::window::WindowStore;
use thiserror::Error;

/// One record flowing through a topology. Keys and values are bytes; nodes decode what they need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Event time in epoch milliseconds (the Kafka record timestamp unless a node changes it).
    pub timestamp: i64,
    /// Headers to carry to the sink (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The value as a node already decoded it, for the nodes after it (see [`Decoded`]).
    pub decoded: Decoded,
}

/// A decoded form of a record's value that one node attaches for the nodes after it (the parsed
/// order event), so each value is decoded once per record rather than once per node. It is
/// derived from the value: equality ignores it, and a node that changes `value` must reset it
/// (`Decoded::default()`); records built anew start without one.
#[derive(Clone, Default)]
pub struct Decoded(Option<Arc<dyn Any + Send + Sync>>);

impl Decoded {
    pub fn of<T: Any + Send + Sync>(value: Arc<T>) -> Self {
        Decoded(Some(value))
    }

    /// The attached value if it is a `T`.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.0.clone().and_then(|v| v.downcast::<T>().ok())
    }
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Decoded(..)"
        } else {
            "None"
        })
    }
}

impl PartialEq for Decoded {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Decoded {}

impl Record {
    /// A keyed record with a value.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, timestamp: i64) -> Self {
        Self {
            key: Some(key.into()),
            value: Some(value.into()),
            timestamp,
            headers: Vec::new(),
            decoded: Decoded::default(),
        }
    }
}

/// Where the record being processed came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A failure while processing a record. Bad input a processor recognises goes to the
/// dead-letter topic through [`ProcessorContext::dead_letter`] and is not an error at all. Of the
/// errors, those [`ProcessError::caused_by_record`] names were caused by the record itself (the
/// executor rolls back and dead-letters the record); every other one is an infrastructure fault
/// that stops the task until it is retried.
#[derive(Debug, Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something the record produced (a sink record) is larger than Kafka accepts.
    #[error("a record of {bytes} bytes for {topic} is larger than the {limit} Kafka accepts")]
    OutputTooLarge {
        topic: String,
        bytes: usize,
        limit: usize,
    },
    #[error("topology uses store {0:?} but the task has no such store")]
    MissingStore(String),
    #[error("processor sends to topic {0:?}, which it did not declare as an output")]
    UndeclaredOutput(String),
    #[error("schedule() is only allowed in Processor::init (interval {0} ms)")]
    ScheduleOutsideInit(i64),
    #[error("{0}")]
    Other(String),
}

impl ProcessError {
    /// The dead-letter reason if the record being processed caused this error (so processing it
    /// again would fail again): `output_too_large` for a sink record or a store entry larger than
    /// Kafka accepts. `None` for faults of the infrastructure or the topology.
    pub fn caused_by_record(&self) -> Option<&'static str> {
        match self {
            ProcessError::OutputTooLarge { .. }
            | ProcessError::Store(StoreError::TooLarge { .. }) => Some("output_too_large"),
            _ => None,
        }
    }
}

/// Something a processor did that the runtime counts in its metrics (see
/// [`ProcessorContext::tally`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally<'a> {
    /// An SMS request was written.
    SmsSent,
    /// An SMS request was suppressed, with the reason it carries.
    SmsSuppressed { reason: &'a str },
    /// An approval alert was written, with its status (`timeout`, `resolved`).
    ApprovalAlert { status: &'a str },
}

/// What the executor of a task provides: its stores, its sinks, its dead-letter queue.
pub trait TaskIo {
    /// The task's key-value store called `name` (already layered: logging, metering, ...).
    fn store(&mut self, name: &str) -> Option<&mut dyn KeyValueStore>;
    /// The task's window store called `name` (executors without window stores keep the default).
    fn window_store(&mut self, _name: &str) -> Option<&mut dyn WindowStore> {
        None
    }
    /// Send a record to a sink topic. Keyed records are partitioned with Kafka's murmur2 rule.
    fn send(&mut self, topic: &str, record: Record) -> Result<(), ProcessError>;
    /// Send a record that cannot be processed to the dead-letter topic with `reason` (a short
    /// stable code, e.g. `invalid_json`) and `detail` (human text). Processing goes on.
    fn dead_letter(
        &mut self,
        record: Record,
        reason: &str,
        detail: &str,
    ) -> Result<(), ProcessError>;
    /// Count something a processor did, for the executor's metrics. Required, not defaulted: a
    /// wrapper that forgot to pass it on would lose the counts silently.
    fn tally(&mut self, what: Tally<'_>);
    /// What the records sent from now on come from (see [`Origin`]): the executor carries the
    /// trace context of the record being processed onto what a record makes, and none onto
    /// what a punctuation makes. Required for the same reason as [`TaskIo::tally`].
    fn origin(&mut self, origin: Origin);
}

/// What the records a task sends come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The record being processed (its outputs and dead letters belong to its trace).
    Record,
    /// A punctuation: outputs made from the task's state, not from the record that moved
    /// stream time (an approval timeout belongs to no record seen now).
    Punctuation,
}

/// How a scheduled callback is clocked (Kafka Streams' `PunctuationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PunctuationType {
    /// Fires when the task's stream time (the largest record timestamp it has seen) has advanced
    /// by the interval. Driven by data: a partition that receives nothing does not fire, and a
    /// replay after a crash fires at the same event times again.
    StreamTime,
    /// Fires when the executor's wall clock has advanced by the interval, with or without data.
    WallClock,
}

/// A callback a processor asked for in `init` (see [`ProcessorContext::schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleRequest {
    pub kind: PunctuationType,
    pub interval_ms: i64,
}

/// The time a context exposes: the task's stream time and the executor's wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskTime {
    /// Largest record timestamp the task has processed (`i64::MIN` before the first record).
    pub stream_time: i64,
    /// The executor's clock in epoch ms (controlled by the test driver in tests).
    pub wall_clock: i64,
}

/// The context handed to a [`Processor`] for one record (or one punctuation).
pub struct ProcessorContext<'a> {
    pub(crate) io: &'a mut dyn TaskIo,
    pub(crate) meta: &'a RecordMeta,
    pub(crate) forwarded: &'a mut Vec<Record>,
    pub(crate) time: TaskTime,
    /// `Some` only during `init`: where `schedule` requests go.
    pub(crate) schedules: Option<&'a mut Vec<ScheduleRequest>>,
    /// Topics this node may `send` to.
    pub(crate) outputs: &'a [String],
    /// Records this node reported as late (added to the task's counter).
    pub(crate) late: &'a mut u64,
}

impl<'a> ProcessorContext<'a> {
    /// Build a context (executors use this; processors receive one).
    pub fn new(
        io: &'a mut dyn TaskIo,
        meta: &'a RecordMeta,
        forwarded: &'a mut Vec<Record>,
        time: TaskTime,
        outputs: &'a [String],
        late: &'a mut u64,
    ) -> Self {
        Self {
            io,
            meta,
            forwarded,
            time,
            schedules: None,
            outputs,
            late,
        }
    }
    /// The partition (= task) this record belongs to.
    pub fn partition(&self) -> i32 {
        self.meta.partition
    }
    /// The source offset of the record being processed (-1 in a punctuation).
    pub fn offset(&self) -> i64 {
        self.meta.offset
    }
    /// The source topic of the record being processed.
    pub fn topic(&self) -> &str {
        &self.meta.topic
    }
    /// The task's stream time: the largest record timestamp processed so far, including the
    /// current record (`i64::MIN` before any record).
    pub fn stream_time(&self) -> i64 {
        self.time.stream_time
    }
    /// The executor's wall clock, epoch ms.
    pub fn wall_clock(&self) -> i64 {
        self.time.wall_clock
    }
    /// The task's key-value store called `name`.
    pub fn store(&mut self, name: &str) -> Result<&mut dyn KeyValueStore, ProcessError> {
        self.io
            .store(name)
            .ok_or_else(|| ProcessError::MissingStore(name.to_owned()))
    }
    /// The task's window store called `name`.
    pub fn window_store(&mut self, name: &str) -> Result<&mut dyn WindowStore, ProcessError> {
        self.io
            .window_store(name)
            .ok_or_else(|| ProcessError::MissingStore(name.to_owned()))
    }
    /// Pass a record to the next node (or the sink, after the last node).
    pub fn forward(&mut self, record: Record) {
        self.forwarded.push(record);
    }
    /// Send a record straight to `topic`, one of the outputs this node declared (see
    /// [`crate::dsl::KStream::process_with`]). Keyed records are partitioned with murmur2.
    pub fn send(&mut self, topic: &str, record: Record) -> Result<(), ProcessError> {
        if !self.outputs.iter().any(|t| t == topic) {
            return Err(ProcessError::UndeclaredOutput(topic.to_owned()));
        }
        self.io.send(topic, record)
    }
    /// Ask for [`Processor::punctuate`] to be called every `interval_ms` of `kind` time. Only
    /// in `init`; the first call comes one interval after the first record's time.
    pub fn schedule(
        &mut self,
        kind: PunctuationType,
        interval_ms: i64,
    ) -> Result<(), ProcessError> {
        match self.schedules.as_mut() {
            Some(s) if interval_ms > 0 => {
                s.push(ScheduleRequest { kind, interval_ms });
                Ok(())
            }
            _ => Err(ProcessError::ScheduleOutsideInit(interval_ms)),
        }
    }
    /// Count a record this node dropped because it arrived too late for its windows (beyond
    /// grace). Counted per task; the runtime exports it as a metric.
    pub fn record_late(&mut self) {
        *self.late += 1;
    }
    /// Count something this node did, for the runtime's metrics (SMS sent, alerts raised...).
    pub fn tally(&mut self, what: Tally<'_>) {
        self.io.tally(what);
    }
    /// Send `record` to the dead-letter topic with a reason code and detail; processing goes on.
    pub fn dead_letter(
        &mut self,
        record: Record,
        reason: &str,
        detail: &str,
    ) -> Result<(), ProcessError> {
        self.io.dead_letter(record, reason, detail)
    }
}

/// One node of a topology, instantiated once per task (partition).
pub trait Processor: Send {
    /// Called once before the first record of the task.
    fn init(&mut self, _ctx: &mut ProcessorContext<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
    /// Process one record; forward zero or more records downstream.
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: Record,
    ) -> Result<(), ProcessError>;
    /// A scheduled callback (see [`ProcessorContext::schedule`]); `timestamp` is the stream time
    /// or wall-clock time that triggered it. Forwarded records continue down the chain.
    fn punctuate(
        &mut self,
        _ctx: &mut ProcessorContext<'_>,
        _kind: PunctuationType,
        _timestamp: i64,
    ) -> Result<(), ProcessError> {
        Ok(())
    }
}
