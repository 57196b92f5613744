//! The processor API: what a topology node is and what it can touch while processing a record.
//!
//! Entry point for custom logic: implement [`Processor`], add it with
//! [`crate::dsl::KStream::process`]. A node sees one record at a time through a
//! [`ProcessorContext`], which gives it the task's stores, lets it `forward` records to the next
//! node (or to the sink), and lets it send a record it cannot handle to the dead-letter topic.
//!
//! The runtime (root crate) and the in-memory [`crate::driver::TestDriver`] both execute topologies
//! by implementing [`TaskIo`]; nothing here knows about Kafka or RocksDB.

use paystream_state::store::{KeyValueStore, StoreError};
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
}

impl Record {
    /// A keyed record with a value.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, timestamp: i64) -> Self {
        Self {
            key: Some(key.into()),
            value: Some(value.into()),
            timestamp,
            headers: Vec::new(),
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

/// A failure that stops the task (as opposed to bad input, which goes to the dead-letter topic
/// and never stops anything).
#[derive(Debug, Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("topology uses store {0:?} but the task has no such store")]
    MissingStore(String),
    #[error("{0}")]
    Other(String),
}

/// What the executor of a task provides: its stores, its sinks, its dead-letter queue.
pub trait TaskIo {
    /// The task's store called `name` (already layered: logging, metering, ...).
    fn store(&mut self, name: &str) -> Option<&mut dyn KeyValueStore>;
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
}

/// The context handed to a [`Processor`] for one record.
pub struct ProcessorContext<'a> {
    pub(crate) io: &'a mut dyn TaskIo,
    pub(crate) meta: &'a RecordMeta,
    pub(crate) forwarded: &'a mut Vec<Record>,
}

impl<'a> ProcessorContext<'a> {
    /// Build a context (executors use this; processors receive one).
    pub fn new(
        io: &'a mut dyn TaskIo,
        meta: &'a RecordMeta,
        forwarded: &'a mut Vec<Record>,
    ) -> Self {
        Self {
            io,
            meta,
            forwarded,
        }
    }
    /// The partition (= task) this record belongs to.
    pub fn partition(&self) -> i32 {
        self.meta.partition
    }
    /// The source offset of the record being processed.
    pub fn offset(&self) -> i64 {
        self.meta.offset
    }
    /// The source topic of the record being processed.
    pub fn topic(&self) -> &str {
        &self.meta.topic
    }
    /// The task's store called `name`.
    pub fn store(&mut self, name: &str) -> Result<&mut dyn KeyValueStore, ProcessError> {
        self.io
            .store(name)
            .ok_or_else(|| ProcessError::MissingStore(name.to_owned()))
    }
    /// Pass a record to the next node (or the sink, after the last node).
    pub fn forward(&mut self, record: Record) {
        self.forwarded.push(record);
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
}
