//! A validated, immutable topology and the per-task processor chain it instantiates.
//!
//! Entry point: build a [`Topology`] with [`crate::dsl::StreamsBuilder`]; the runtime (or the
//! [`crate::driver::TestDriver`]) calls [`Topology::instantiate`] once per task (partition) and
//! feeds each record of that partition to [`TaskProcessors::process`].
//!
//! A topology here is one linear chain, which is all paystream's shipped topologies need:
//!
//! ```text
//! source topic --> node 0 --> node 1 --> ... --> node n-1 --> every sink topic
//! ```
//!
//! A `Topology` is shared by every task on every stream thread, so it holds no per-task state:
//! processors are created by factories (kept in `Arc`s) and the stores are only *declared*
//! ([`StoreSpec`]); the executor creates them per partition and hands them over through
//! [`TaskIo`].

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::clock::TaskClock;
use crate::processor::{
    Origin, ProcessError, Processor, ProcessorContext, PunctuationType, Record, RecordMeta, TaskIo,
    TaskTime,
};
pub use crate::store_spec::{StoreKind, StoreSpec};
use crate::time::TimePolicy;

/// Why [`crate::dsl::StreamsBuilder::build`] rejected a topology. Every check here is about the
/// topology alone; whether topics exist is the runtime's business.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopologyError {
    #[error("topology has no source: call StreamsBuilder::stream once")]
    NoSource,
    #[error("topology reads {} source topics ({}); exactly one is supported", .0.len(), .0.join(", "))]
    MultipleSources(Vec<String>),
    #[error("{what} name is empty")]
    EmptyName { what: &'static str },
    /// Store names become part of changelog topic names, so they obey Kafka's topic name rules too.
    #[error("{what} name {name:?} is not a legal kafka topic name: {why}")]
    InvalidName {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("store {0:?} is declared more than once")]
    DuplicateStore(String),
    #[error("sink topic {0:?} is declared more than once")]
    DuplicateSink(String),
    #[error("sink topic {0:?} is also the source topic (the topology would feed itself)")]
    SinkIsSource(String),
    #[error("node {node} comes after a sink; a topology is one linear chain, so add sinks last")]
    NodeAfterSink { node: String },
    #[error("window store {0:?} needs a positive retention")]
    BadRetention(String),
    #[error("output topic {0:?} is declared by more than one processor")]
    DuplicateOutput(String),
}

/// Predicate of a `filter` node.
pub(crate) type FilterFn = Arc<dyn Fn(&Record) -> bool + Send + Sync>;
/// Function of a `map` node.
pub(crate) type MapFn = Arc<dyn Fn(Record) -> Record + Send + Sync>;
/// Creates a fresh processor for one task.
pub(crate) type ProcessorFactory = Arc<dyn Fn() -> Box<dyn Processor> + Send + Sync>;

/// What a node does (the shared, immutable part; see [`TaskNode`] for the per-task part).
#[derive(Clone)]
pub(crate) enum NodeKind {
    Filter(FilterFn),
    Map(MapFn),
    Process {
        stores: Vec<StoreSpec>,
        /// Topics the processor sends to directly with `ctx.send`.
        outputs: Vec<String>,
        factory: ProcessorFactory,
    },
}

/// One node of the chain with its Kafka Streams-style name (`KSTREAM-FILTER-0000000001`).
#[derive(Clone)]
pub(crate) struct NodeSpec {
    pub(crate) name: String,
    pub(crate) kind: NodeKind,
}

/// A sink node: records leaving the last node are sent to `topic`.
#[derive(Debug, Clone)]
pub(crate) struct SinkSpec {
    pub(crate) name: String,
    pub(crate) topic: String,
}

/// The raw material [`Topology::validate`] turns into a [`Topology`] (the DSL fills it in).
pub(crate) struct Draft {
    pub(crate) source_name: String,
    /// How source records are timed.
    pub(crate) time: TimePolicy,
    pub(crate) source_topic: String,
    pub(crate) nodes: Vec<NodeSpec>,
    pub(crate) sinks: Vec<SinkSpec>,
    /// The first node added after a sink, if any (rejected by validation).
    pub(crate) node_after_sink: Option<String>,
}

/// A validated linear topology: one source topic, a chain of nodes, zero or more sink topics.
///
/// Cheap to clone and `Send + Sync`: one topology serves every task of an instance.
#[derive(Clone)]
pub struct Topology {
    source_name: String,
    time: TimePolicy,
    source_topic: String,
    nodes: Arc<[NodeSpec]>,
    sinks: Arc<[SinkSpec]>,
    stores: Vec<StoreSpec>,
    outputs: Vec<String>,
}

impl Topology {
    /// Check a draft and freeze it. Pure: no topic or store is touched.
    pub(crate) fn validate(draft: Draft) -> Result<Self, TopologyError> {
        check_name("source topic", &draft.source_topic)?;
        if let Some(node) = draft.node_after_sink {
            return Err(TopologyError::NodeAfterSink { node });
        }
        let mut stores: Vec<StoreSpec> = Vec::new();
        let mut all_outputs: Vec<String> = Vec::new();
        for node in draft.nodes.iter() {
            if let NodeKind::Process {
                stores: specs,
                outputs,
                ..
            } = &node.kind
            {
                for topic in outputs {
                    check_name("output topic", topic)?;
                    if *topic == draft.source_topic {
                        return Err(TopologyError::SinkIsSource(topic.clone()));
                    }
                    if all_outputs.contains(topic) {
                        return Err(TopologyError::DuplicateOutput(topic.clone()));
                    }
                    all_outputs.push(topic.clone());
                }
                for spec in specs {
                    check_name("store", &spec.name)?;
                    if stores.iter().any(|s| s.name == spec.name) {
                        return Err(TopologyError::DuplicateStore(spec.name.clone()));
                    }
                    if let StoreKind::Window { retention_ms } = spec.kind {
                        if retention_ms <= 0 {
                            return Err(TopologyError::BadRetention(spec.name.clone()));
                        }
                    }
                    stores.push(spec.clone());
                }
            }
        }
        for (i, sink) in draft.sinks.iter().enumerate() {
            check_name("sink topic", &sink.topic)?;
            if sink.topic == draft.source_topic {
                return Err(TopologyError::SinkIsSource(sink.topic.clone()));
            }
            if draft.sinks[..i].iter().any(|s| s.topic == sink.topic) {
                return Err(TopologyError::DuplicateSink(sink.topic.clone()));
            }
        }
        Ok(Self {
            source_name: draft.source_name,
            time: draft.time,
            source_topic: draft.source_topic,
            nodes: draft.nodes.into(),
            sinks: draft.sinks.into(),
            stores,
            outputs: all_outputs,
        })
    }

    /// The one topic this topology reads.
    pub fn source_topic(&self) -> &str {
        &self.source_topic
    }

    /// The key-value stores the topology's processors declared, in declaration order. The
    /// executor creates each of them for every task before the first record.
    pub fn stores(&self) -> &[StoreSpec] {
        &self.stores
    }

    /// The topics the topology writes to: chain sinks, then processor outputs (in declaration
    /// order).
    pub fn sink_topics(&self) -> Vec<String> {
        self.sinks
            .iter()
            .map(|s| s.topic.clone())
            .chain(self.outputs.iter().cloned())
            .collect()
    }

    /// A human-readable description, one line per node, in the spirit of Kafka Streams'
    /// `TopologyDescription`: `-->` names the successors, `<--` the predecessor of a sink.
    pub fn describe(&self) -> String {
        self.to_string()
    }

    /// Fresh processor instances for one task. Each call gives independent state; call it once per
    /// partition the instance owns (active or standby-promoted).
    pub fn instantiate(&self) -> TaskProcessors {
        let nodes = self
            .nodes
            .iter()
            .map(|node| match &node.kind {
                NodeKind::Filter(f) => TaskNode::Filter(Arc::clone(f)),
                NodeKind::Map(f) => TaskNode::Map(Arc::clone(f)),
                NodeKind::Process {
                    factory, outputs, ..
                } => TaskNode::Process(factory(), outputs.clone()),
            })
            .collect();
        TaskProcessors {
            nodes,
            time: self.time.clone(),
            sinks: Arc::clone(&self.sinks),
            initialized: false,
            batch: Vec::new(),
            next: Vec::new(),
            clock: TaskClock::default(),
            late: 0,
        }
    }

    /// Name of the node after `index` in the chain (`None` = after the last node), for `describe`.
    fn successors(&self, index: Option<usize>) -> String {
        let next = index.map_or(0, |i| i + 1);
        if let Some(node) = self.nodes.get(next) {
            return node.name.clone();
        }
        if self.sinks.is_empty() {
            return "none".to_owned();
        }
        let names: Vec<&str> = self.sinks.iter().map(|s| s.name.as_str()).collect();
        names.join(", ")
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Source: {} (topic: {}) --> {}",
            self.source_name,
            self.source_topic,
            self.successors(None)
        )?;
        for (i, node) in self.nodes.iter().enumerate() {
            let detail = match &node.kind {
                NodeKind::Process { stores, .. } if !stores.is_empty() => {
                    let names: Vec<&str> = stores.iter().map(|s| s.name.as_str()).collect();
                    format!(" (stores: [{}])", names.join(", "))
                }
                _ => String::new(),
            };
            writeln!(
                f,
                "Processor: {}{detail} --> {}",
                node.name,
                self.successors(Some(i))
            )?;
        }
        let last = self
            .nodes
            .last()
            .map_or(self.source_name.as_str(), |n| n.name.as_str());
        for sink in self.sinks.iter() {
            writeln!(f, "Sink: {} (topic: {}) <-- {last}", sink.name, sink.topic)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topology {{\n{self}}}")
    }
}

/// Kafka's topic name rules (`org.apache.kafka.common.internals.Topic.validate`).
fn check_name(what: &'static str, name: &str) -> Result<(), TopologyError> {
    let invalid = |why| TopologyError::InvalidName {
        what,
        name: name.to_owned(),
        why,
    };
    if name.is_empty() {
        return Err(TopologyError::EmptyName { what });
    }
    if name == "." || name == ".." {
        return Err(invalid("\".\" and \"..\" are reserved"));
    }
    if name.len() > 249 {
        return Err(invalid("longer than 249 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "only ascii letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// The per-task instance of a node: filters and maps are shared closures, processors are owned
/// (with the output topics they may `send` to).
enum TaskNode {
    Filter(FilterFn),
    Map(MapFn),
    Process(Box<dyn Processor>, Vec<String>),
}

/// The processor chain of one task (one partition), created by [`Topology::instantiate`].
///
/// Lifecycle: created → initialized (first [`TaskProcessors::init`], or implicitly by the first
/// [`TaskProcessors::process`]) → processing. `init` runs each processor's `init` exactly once.
///
/// Time: the chain keeps the task's stream time (the largest record timestamp seen) and the
/// processors' schedules ([`TaskClock`]). Stream-time punctuations fire after the record that
/// advanced stream time past them; wall-clock ones when the executor calls
/// [`TaskProcessors::punctuate_wall_clock`].
pub struct TaskProcessors {
    nodes: Vec<TaskNode>,
    time: TimePolicy,
    sinks: Arc<[SinkSpec]>,
    initialized: bool,
    /// Records entering the current node (reused between records to avoid allocating).
    batch: Vec<Record>,
    /// Records the current node forwarded: the next node's input.
    next: Vec<Record>,
    clock: TaskClock,
    /// Records processors reported as late (beyond their grace) and dropped.
    late: u64,
}

impl TaskProcessors {
    /// Call every processor's `init` (once; later calls do nothing). `meta` describes the task
    /// (topic, partition) and the first record's offset. `wall_clock` starts the wall-clock
    /// schedules.
    pub fn init(
        &mut self,
        io: &mut dyn TaskIo,
        meta: &RecordMeta,
        wall_clock: i64,
    ) -> Result<(), ProcessError> {
        if self.initialized {
            return Ok(());
        }
        let mut forwarded = Vec::new();
        let time = TaskTime {
            stream_time: self.clock.stream_time,
            wall_clock,
        };
        for (index, node) in self.nodes.iter_mut().enumerate() {
            if let TaskNode::Process(processor, outputs) = node {
                let mut requests = Vec::new();
                let mut ctx = ProcessorContext::new(
                    &mut *io,
                    meta,
                    &mut forwarded,
                    time,
                    outputs,
                    &mut self.late,
                );
                ctx.schedules = Some(&mut requests);
                processor.init(&mut ctx)?;
                for r in requests {
                    self.clock.add(index, r, wall_clock);
                }
            }
        }
        // Forwarding from `init` has nowhere meaningful to go (no record is being processed).
        if !forwarded.is_empty() {
            tracing::warn!(
                count = forwarded.len(),
                "records forwarded from processor init were dropped"
            );
        }
        self.initialized = true;
        Ok(())
    }

    /// The task's stream time (`i64::MIN` before the first record).
    pub fn stream_time(&self) -> i64 {
        self.clock.stream_time
    }

    /// Records the processors dropped as too late so far.
    pub fn late_records(&self) -> u64 {
        self.late
    }

    /// Run one record through the chain: what node `i` forwards is node `i + 1`'s input; what the
    /// last node forwards is sent to every sink with [`TaskIo::send`]. Then fire the stream-time
    /// punctuations the record's time made due.
    ///
    /// The record is timed first by the topology's [`TimePolicy`]: its time replaces
    /// `record.timestamp`; a record the policy refuses goes to the dead-letter topic without
    /// reaching any node. A record that any node dead-letters does not move stream time either
    /// (the nodes that saw it were shown stream time as if it had).
    ///
    /// Nodes run one after another over the whole batch (breadth-first), which yields the same
    /// sink order as Kafka Streams' depth-first forwarding for a linear chain. An error stops the
    /// record where it is; the caller must not commit its offset.
    pub fn process(
        &mut self,
        io: &mut dyn TaskIo,
        meta: &RecordMeta,
        mut record: Record,
        wall_clock: i64,
    ) -> Result<(), ProcessError> {
        self.init(io, meta, wall_clock)?;
        io.origin(Origin::Record);
        let ts = match self.time.time_of(&mut record, wall_clock) {
            Ok(ts) => ts,
            Err(refused) => return io.dead_letter(record, refused.reason, &refused.detail),
        };
        record.timestamp = ts;
        self.batch.clear();
        self.next.clear();
        self.batch.push(record);
        let mut counted = CountingIo {
            inner: io,
            dead_letters: 0,
        };
        let stream_time = self.clock.stream_time.max(ts);
        self.run_from(0, &mut counted, meta, stream_time, wall_clock)?;
        if counted.dead_letters > 0 {
            return Ok(());
        }
        self.clock.observe(ts);
        let stream_time = self.clock.stream_time;
        let mut origin = Origin::Record;
        while let Some(index) = self.clock.due(PunctuationType::StreamTime, stream_time) {
            if origin == Origin::Record {
                origin = Origin::Punctuation;
                io.origin(origin);
            }
            self.punctuate_node(
                index,
                PunctuationType::StreamTime,
                stream_time,
                io,
                meta,
                wall_clock,
            )?;
        }
        Ok(())
    }

    /// Fire every wall-clock punctuation due at `now` (the executor calls this regularly, with or
    /// without records). Does nothing before `init`.
    pub fn punctuate_wall_clock(
        &mut self,
        io: &mut dyn TaskIo,
        meta: &RecordMeta,
        now: i64,
    ) -> Result<(), ProcessError> {
        if !self.initialized {
            return Ok(());
        }
        let mut origin = Origin::Record;
        while let Some(index) = self.clock.due(PunctuationType::WallClock, now) {
            if origin == Origin::Record {
                origin = Origin::Punctuation;
                io.origin(origin);
            }
            self.punctuate_node(index, PunctuationType::WallClock, now, io, meta, now)?;
        }
        Ok(())
    }

    fn punctuate_node(
        &mut self,
        index: usize,
        kind: PunctuationType,
        timestamp: i64,
        io: &mut dyn TaskIo,
        meta: &RecordMeta,
        wall_clock: i64,
    ) -> Result<(), ProcessError> {
        let time = TaskTime {
            stream_time: self.clock.stream_time,
            wall_clock,
        };
        self.batch.clear();
        self.next.clear();
        if let Some(TaskNode::Process(processor, outputs)) = self.nodes.get_mut(index) {
            let mut ctx = ProcessorContext::new(
                &mut *io,
                meta,
                &mut self.next,
                time,
                outputs,
                &mut self.late,
            );
            processor.punctuate(&mut ctx, kind, timestamp)?;
        }
        std::mem::swap(&mut self.batch, &mut self.next);
        let stream_time = self.clock.stream_time;
        self.run_from(index + 1, io, meta, stream_time, wall_clock)
    }

    /// Run `self.batch` through nodes `start..` and then the sinks, showing the nodes
    /// `stream_time`.
    fn run_from(
        &mut self,
        start: usize,
        io: &mut dyn TaskIo,
        meta: &RecordMeta,
        stream_time: i64,
        wall_clock: i64,
    ) -> Result<(), ProcessError> {
        let time = TaskTime {
            stream_time,
            wall_clock,
        };
        for node in self.nodes.iter_mut().skip(start) {
            if self.batch.is_empty() {
                return Ok(());
            }
            for record in self.batch.drain(..) {
                match node {
                    TaskNode::Filter(keep) => {
                        if keep(&record) {
                            self.next.push(record);
                        }
                    }
                    TaskNode::Map(f) => self.next.push(f(record)),
                    TaskNode::Process(processor, outputs) => {
                        let mut ctx = ProcessorContext::new(
                            &mut *io,
                            meta,
                            &mut self.next,
                            time,
                            outputs,
                            &mut self.late,
                        );
                        processor.process(&mut ctx, record)?;
                    }
                }
            }
            std::mem::swap(&mut self.batch, &mut self.next);
        }
        let Some((last, rest)) = self.sinks.split_last() else {
            self.batch.clear();
            return Ok(());
        };
        for record in self.batch.drain(..) {
            for sink in rest {
                io.send(&sink.topic, record.clone())?;
            }
            io.send(&last.topic, record)?;
        }
        Ok(())
    }
}

/// Passes everything to the executor's [`TaskIo`], counting dead letters (a record that was
/// dead-lettered must not move stream time).
struct CountingIo<'a> {
    inner: &'a mut dyn TaskIo,
    dead_letters: u64,
}

impl TaskIo for CountingIo<'_> {
    fn store(&mut self, name: &str) -> Option<&mut dyn paystream_state::store::KeyValueStore> {
        self.inner.store(name)
    }
    fn window_store(
        &mut self,
        name: &str,
    ) -> Option<&mut dyn paystream_state::window::WindowStore> {
        self.inner.window_store(name)
    }
    fn send(&mut self, topic: &str, record: Record) -> Result<(), ProcessError> {
        self.inner.send(topic, record)
    }
    fn dead_letter(
        &mut self,
        record: Record,
        reason: &str,
        detail: &str,
    ) -> Result<(), ProcessError> {
        self.dead_letters += 1;
        self.inner.dead_letter(record, reason, detail)
    }
    fn tally(&mut self, what: crate::processor::Tally<'_>) {
        self.inner.tally(what);
    }
    fn origin(&mut self, origin: Origin) {
        self.inner.origin(origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_and_task_are_shareable() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Topology>();
        send::<TaskProcessors>();
    }

    #[test]
    fn kafka_topic_name_rules() {
        assert!(check_name("store", "orders").is_ok());
        assert!(check_name("store", "a.b_c-D9").is_ok());
        assert_eq!(
            check_name("store", ""),
            Err(TopologyError::EmptyName { what: "store" })
        );
        for bad in [".", "..", "has space", "slash/", "ünicode"] {
            assert!(
                matches!(
                    check_name("store", bad),
                    Err(TopologyError::InvalidName { .. })
                ),
                "{bad}"
            );
        }
        assert!(check_name("store", &"x".repeat(249)).is_ok());
        assert!(check_name("store", &"x".repeat(250)).is_err());
    }
}
