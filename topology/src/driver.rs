//! `TestDriver`: run a [`Topology`] in memory, without Kafka or RocksDB (paystream's
//! `TopologyTestDriver`).
//!
//! Entry point: [`TestDriver::new`], then [`TestDriver::pipe`] records in and look at what came
//! out: [`TestDriver::read_output`] (sink topics), [`TestDriver::dead_letters`], and the stores
//! ([`TestDriver::get`], [`TestDriver::store`]).
//!
//! The driver behaves like a set of tasks, one per partition of the source topic: a keyed record
//! goes to `partition_for_key(key, partitions)` exactly as a Java producer would send it, each
//! partition has its own offsets, its own processors (initialized before its first record) and its
//! own in-memory stores under the same transactional layer the runtime uses. So a test sees the
//! same per-partition state as an instance would, and `get` must route by key just like an
//! interactive query.
//!
//! Commits follow the runtime's exactly-once model. By default every piped record is committed
//! at once. With [`TestDriver::manual_commits`], a partition's store writes, outputs and dead
//! letters stay uncommitted (outputs are not readable yet) until [`TestDriver::commit`];
//! [`TestDriver::crash_partition`] then does what a crash and a failover do: uncommitted writes,
//! outputs and dead letters are gone, the processors start over from the committed stores, and
//! the records since the last commit are processed again.
//!
//! Processing is synchronous: when `pipe` returns, the record has gone through the whole chain.
//! Time is controlled: stream time follows the piped timestamps, wall-clock time moves only with
//! [`TestDriver::advance_wall_clock`].
//!
//! Trace context: like the runtime, the driver carries a piped record's `traceparent` and `b3`
//! headers onto the records it makes (sink records and dead letters), and none onto what a
//! punctuation makes.

use std::collections::BTreeMap;

use paystream_state::memory::InMemoryStore;
use paystream_state::store::KeyValueStore;
use paystream_state::transactional::{ChangelogWriter, TxnKeyValueStore, TxnWindowStore};
use paystream_state::window::{InMemoryWindowStore, WindowStore};
use paystream_state::StoreError;

use crate::partitioner::partition_for_key;
use crate::processor::{Origin, ProcessError, Record, RecordMeta, TaskIo};
use crate::topology::{StoreKind, TaskProcessors, Topology};

/// A record a processor sent to the dead-letter queue, with why and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub record: Record,
    /// A short stable code such as `invalid_json`.
    pub reason: String,
    /// Human-readable explanation.
    pub detail: String,
    /// Source topic, partition and offset of the record.
    pub meta: RecordMeta,
}

/// What a partition produced since its last commit.
#[derive(Default)]
struct Uncommitted {
    /// Source records since the last commit (replayed after a crash).
    input: Vec<Record>,
    outputs: Vec<(String, Record)>,
    dead_letters: Vec<DeadLetter>,
}

/// One partition's task: its processors, stores and offsets (created on its first record).
struct Task {
    processors: TaskProcessors,
    stores: BTreeMap<String, TxnKeyValueStore<InMemoryStore>>,
    windows: BTreeMap<String, TxnWindowStore<InMemoryWindowStore>>,
    next_offset: i64,
    committed_offset: i64,
    uncommitted: Uncommitted,
}

impl Task {
    fn new(topology: &Topology) -> Self {
        let mut stores = BTreeMap::new();
        let mut windows = BTreeMap::new();
        for s in topology.stores() {
            match s.kind {
                StoreKind::KeyValue => {
                    let inner = InMemoryStore::new(s.name.clone());
                    stores.insert(s.name.clone(), TxnKeyValueStore::new(inner));
                }
                StoreKind::Window { retention_ms } => {
                    let inner = InMemoryWindowStore::new(s.name.clone(), retention_ms);
                    windows.insert(s.name.clone(), TxnWindowStore::new(inner));
                }
            }
        }
        Self {
            processors: topology.instantiate(),
            stores,
            windows,
            next_offset: 0,
            committed_offset: 0,
            uncommitted: Uncommitted::default(),
        }
    }

    /// Commit the stores (their changelog records go nowhere: the in-memory inner store is the
    /// durable copy here) and hand back what was produced since the last commit.
    fn commit(&mut self) -> Result<Uncommitted, ProcessError> {
        struct Discard;
        impl ChangelogWriter for Discard {
            fn send(&mut self, _: &[u8], _: Option<&[u8]>) -> Result<(), StoreError> {
                Ok(())
            }
        }
        for s in self.stores.values_mut() {
            s.prepare(&mut Discard)?;
            s.commit()?;
        }
        for s in self.windows.values_mut() {
            s.prepare(&mut Discard)?;
            s.commit()?;
        }
        self.committed_offset = self.next_offset;
        Ok(std::mem::take(&mut self.uncommitted))
    }
}

/// Runs a topology over in-memory partitions; see the module documentation.
pub struct TestDriver {
    topology: Topology,
    partitions: i32,
    tasks: BTreeMap<i32, Task>,
    /// Committed records per sink topic, not yet read by the test.
    outputs: BTreeMap<String, Vec<Record>>,
    dead_letters: Vec<DeadLetter>,
    wall_clock: i64,
    auto_commit: bool,
}

impl TestDriver {
    /// A driver for `topology` whose source topic has `partitions` partitions; every piped
    /// record is committed at once.
    ///
    /// # Panics
    /// If `partitions <= 0` (a topic has at least one partition).
    pub fn new(topology: Topology, partitions: i32) -> Self {
        assert!(
            partitions > 0,
            "partition count must be positive, got {partitions}"
        );
        Self {
            topology,
            partitions,
            tasks: BTreeMap::new(),
            outputs: BTreeMap::new(),
            dead_letters: Vec::new(),
            // As Kafka Streams' TopologyTestDriver: the wall clock starts at the system time, so
            // events of today are not "in the future" (see `crate::time`).
            wall_clock: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            auto_commit: true,
        }
    }

    /// Start the wall clock at `ms` (epoch ms) instead of the system time.
    pub fn with_wall_clock(mut self, ms: i64) -> Self {
        self.wall_clock = ms;
        self
    }

    /// Commit only when the test calls [`TestDriver::commit`] (see the module documentation).
    pub fn manual_commits(mut self) -> Self {
        self.auto_commit = false;
        self
    }

    /// The topology under test.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Number of partitions of the source topic.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The partition a record with this key goes to: murmur2 for keyed records, 0 without a key.
    pub fn partition_of(&self, key: Option<&[u8]>) -> i32 {
        key.map_or(0, |k| partition_for_key(k, self.partitions))
    }

    /// Send one record to the source topic and process it to completion. Keyed records go to
    /// their murmur2 partition, records without a key to partition 0.
    ///
    /// An `Err` is what would stop a real task (a store failure, a missing store): nothing is
    /// committed then. Bad input is not an error but a [`DeadLetter`].
    pub fn pipe(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
    ) -> Result<(), ProcessError> {
        self.pipe_record(Record {
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            timestamp,
            headers: Vec::new(),
            decoded: Default::default(),
        })
    }

    /// [`TestDriver::pipe`] for a whole [`Record`] (e.g. with headers).
    pub fn pipe_record(&mut self, record: Record) -> Result<(), ProcessError> {
        let partition = self.partition_of(record.key.as_deref());
        let topology = &self.topology;
        let task = self
            .tasks
            .entry(partition)
            .or_insert_with(|| Task::new(topology));
        task.uncommitted.input.push(record.clone());
        process(topology, task, partition, record, self.wall_clock)?;
        if self.auto_commit {
            self.commit_partition(partition)?;
        }
        Ok(())
    }

    /// Commit every partition: its store writes, outputs and dead letters since the last commit
    /// become visible (outputs to [`TestDriver::read_output`]).
    pub fn commit(&mut self) -> Result<(), ProcessError> {
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        for p in partitions {
            self.commit_partition(p)?;
        }
        Ok(())
    }

    fn commit_partition(&mut self, partition: i32) -> Result<(), ProcessError> {
        let Some(task) = self.tasks.get_mut(&partition) else {
            return Ok(());
        };
        let done = task.commit()?;
        for (topic, record) in done.outputs {
            self.outputs.entry(topic).or_default().push(record);
        }
        self.dead_letters.extend(done.dead_letters);
        Ok(())
    }

    /// Move the wall clock forward by `ms` and fire every wall-clock punctuation that became due,
    /// partition by partition.
    pub fn advance_wall_clock(&mut self, ms: i64) -> Result<(), ProcessError> {
        self.wall_clock += ms;
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        for partition in partitions {
            let Some(task) = self.tasks.get_mut(&partition) else {
                continue;
            };
            let meta = RecordMeta {
                topic: self.topology.source_topic().to_owned(),
                partition,
                offset: -1,
            };
            let (processors, mut io) = DriverIo::of(task, &meta);
            processors.punctuate_wall_clock(&mut io, &meta, self.wall_clock)?;
            if self.auto_commit {
                self.commit_partition(partition)?;
            }
        }
        Ok(())
    }

    /// The driver's wall clock (starts at 0).
    pub fn wall_clock(&self) -> i64 {
        self.wall_clock
    }

    /// Simulate a crash of `partition`'s task and its recovery under exactly-once: the store
    /// writes, outputs and dead letters since the last commit are dropped (an aborted
    /// transaction), the processors start over (stream time and schedules too) from the
    /// committed stores, and the records since the last commit are processed again. Returns how
    /// many records were replayed.
    pub fn crash_partition(&mut self, partition: i32) -> Result<usize, ProcessError> {
        let Some(task) = self.tasks.get_mut(&partition) else {
            return Ok(0);
        };
        for s in task.stores.values_mut() {
            s.abort();
        }
        for s in task.windows.values_mut() {
            s.abort();
        }
        task.processors = self.topology.instantiate();
        task.next_offset = task.committed_offset;
        let replay = std::mem::take(&mut task.uncommitted).input;
        let n = replay.len();
        for record in replay {
            self.pipe_record(record)?;
        }
        Ok(n)
    }

    /// Take every committed record the sinks sent to `topic` so far (in send order); a second
    /// call returns only what arrived since.
    pub fn read_output(&mut self, topic: &str) -> Vec<Record> {
        self.outputs.remove(topic).unwrap_or_default()
    }

    /// Every committed record sent to the dead-letter queue so far, oldest first.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// The committed content of store `name` of `partition`, or `None` if the topology declares
    /// no such store or the partition has not received a record yet.
    pub fn store(&self, name: &str, partition: i32) -> Option<&InMemoryStore> {
        Some(self.tasks.get(&partition)?.stores.get(name)?.inner())
    }

    /// The committed content of window store `name` of `partition` (see [`TestDriver::store`]).
    pub fn window_store(&self, name: &str, partition: i32) -> Option<&InMemoryWindowStore> {
        Some(self.tasks.get(&partition)?.windows.get(name)?.inner())
    }

    /// Stream time of `partition` (`i64::MIN` before its first record).
    pub fn stream_time(&self, partition: i32) -> i64 {
        self.tasks
            .get(&partition)
            .map_or(i64::MIN, |t| t.processors.stream_time())
    }

    /// Records `partition`'s processors dropped as late.
    pub fn late_records(&self, partition: i32) -> u64 {
        self.tasks
            .get(&partition)
            .map_or(0, |t| t.processors.late_records())
    }

    /// Partitions that have a task (received at least one record).
    pub fn active_partitions(&self) -> Vec<i32> {
        self.tasks.keys().copied().collect()
    }

    /// Look `key` up in store `store` of the partition that owns it (murmur2), the way an
    /// interactive query is routed (committed state only).
    pub fn get(&self, store: &str, key: &[u8]) -> Option<Vec<u8>> {
        let partition = partition_for_key(key, self.partitions);
        // In-memory reads cannot fail; an error would only mean "nothing to show".
        self.store(store, partition)?.get(key).ok().flatten()
    }

    /// The offset the next record of `partition` will get (= records piped to it so far).
    pub fn next_offset(&self, partition: i32) -> i64 {
        self.tasks.get(&partition).map_or(0, |t| t.next_offset)
    }
}

/// Run one record through `task`'s chain.
fn process(
    topology: &Topology,
    task: &mut Task,
    partition: i32,
    record: Record,
    wall_clock: i64,
) -> Result<(), ProcessError> {
    let meta = RecordMeta {
        topic: topology.source_topic().to_owned(),
        partition,
        offset: task.next_offset,
    };
    task.next_offset += 1;
    let (processors, mut io) = DriverIo::of(task, &meta);
    io.trace_headers = record
        .headers
        .iter()
        .filter(|(name, _)| TRACE_HEADERS.contains(&name.as_str()))
        .cloned()
        .collect();
    // `process` runs the processors' `init` before the partition's first record.
    processors.process(&mut io, &meta, record, wall_clock)
}

/// The trace-context headers the runtime carries from a record onto what it makes.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "b3"];

/// What one partition's processors see while a record is processed.
struct DriverIo<'a> {
    stores: &'a mut BTreeMap<String, TxnKeyValueStore<InMemoryStore>>,
    windows: &'a mut BTreeMap<String, TxnWindowStore<InMemoryWindowStore>>,
    uncommitted: &'a mut Uncommitted,
    meta: &'a RecordMeta,
    /// The processed record's trace headers, carried (as the runtime does) onto what the
    /// record makes, and not onto what a punctuation makes.
    trace_headers: Vec<(String, Vec<u8>)>,
    origin: Origin,
}

impl<'a> DriverIo<'a> {
    /// The task's processors, and what they see.
    fn of(task: &'a mut Task, meta: &'a RecordMeta) -> (&'a mut TaskProcessors, Self) {
        let Task {
            processors,
            stores,
            windows,
            uncommitted,
            ..
        } = task;
        let io = Self {
            stores,
            windows,
            uncommitted,
            meta,
            trace_headers: Vec::new(),
            origin: Origin::Record,
        };
        (processors, io)
    }
}

impl TaskIo for DriverIo<'_> {
    fn store(&mut self, name: &str) -> Option<&mut dyn KeyValueStore> {
        self.stores
            .get_mut(name)
            .map(|s| s as &mut dyn KeyValueStore)
    }

    fn window_store(&mut self, name: &str) -> Option<&mut dyn WindowStore> {
        self.windows
            .get_mut(name)
            .map(|s| s as &mut dyn WindowStore)
    }

    fn send(&mut self, topic: &str, mut record: Record) -> Result<(), ProcessError> {
        self.carry_trace(&mut record);
        self.uncommitted.outputs.push((topic.to_owned(), record));
        Ok(())
    }

    fn dead_letter(
        &mut self,
        record: Record,
        reason: &str,
        detail: &str,
    ) -> Result<(), ProcessError> {
        let mut record = record;
        self.carry_trace(&mut record);
        self.uncommitted.dead_letters.push(DeadLetter {
            record,
            reason: reason.to_owned(),
            detail: detail.to_owned(),
            meta: self.meta.clone(),
        });
        Ok(())
    }

    /// The driver keeps no metrics: tests read the outputs themselves.
    fn tally(&mut self, _what: crate::processor::Tally<'_>) {}

    fn origin(&mut self, origin: Origin) {
        self.origin = origin;
    }
}

impl DriverIo<'_> {
    fn carry_trace(&self, record: &mut Record) {
        if self.origin != Origin::Record {
            return;
        }
        for (name, value) in &self.trace_headers {
            if !record.headers.iter().any(|(n, _)| n == name) {
                record.headers.push((name.clone(), value.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsl::StreamsBuilder;
    use crate::processor::{Processor, ProcessorContext};

    /// Counts records per key in store "counts", forwards "key=count", dead-letters empty values.
    struct Counter {
        inits: u32,
    }

    impl Processor for Counter {
        fn init(&mut self, _: &mut ProcessorContext<'_>) -> Result<(), ProcessError> {
            self.inits += 1;
            Ok(())
        }

        fn process(
            &mut self,
            ctx: &mut ProcessorContext<'_>,
            record: Record,
        ) -> Result<(), ProcessError> {
            assert_eq!(
                self.inits, 1,
                "init runs exactly once, before the first record"
            );
            let Some(key) = record.key.clone() else {
                return ctx.dead_letter(record, "missing_key", "no key");
            };
            if record.value.as_deref() == Some(b"") {
                return ctx.dead_letter(record, "empty", "empty value");
            }
            let store = ctx.store("counts")?;
            let n = store.get(&key)?.map_or(0, |v| v[0]) + 1;
            store.put(&key, &[n])?;
            let mut out = key.clone();
            out.extend_from_slice(format!("={n}").as_bytes());
            ctx.forward(Record::new(key, out, record.timestamp));
            Ok(())
        }
    }

    fn counting(partitions: i32) -> TestDriver {
        let mut b = StreamsBuilder::new();
        b.stream("IN")
            .filter(|r| r.value.as_deref() != Some(b"skip"))
            .process(&["counts"], || Box::new(Counter { inits: 0 }))
            .map(|mut r| {
                r.timestamp += 1;
                r
            })
            .to("OUT")
            .to("AUDIT");
        TestDriver::new(b.build().unwrap(), partitions)
    }

    #[test]
    fn records_flow_through_the_chain_to_every_sink() {
        let mut d = counting(4);
        d.pipe(Some(b"a"), Some(b"x"), 10).unwrap();
        d.pipe(Some(b"a"), Some(b"skip"), 11).unwrap();
        d.pipe(Some(b"a"), Some(b"y"), 12).unwrap();
        let out = d.read_output("OUT");
        let values: Vec<&[u8]> = out.iter().filter_map(|r| r.value.as_deref()).collect();
        assert_eq!(values, [b"a=1".as_slice(), b"a=2"]);
        assert_eq!(out[0].timestamp, 11, "map ran after the processor");
        assert_eq!(d.read_output("AUDIT"), out);
        assert!(d.read_output("OUT").is_empty(), "read_output drains");
    }

    #[test]
    fn stores_live_in_the_murmur2_partition_and_get_routes_there() {
        let mut d = counting(12);
        for key in ["O-1", "O-2", "O-3", "O-4", "O-5"] {
            d.pipe(Some(key.as_bytes()), Some(b"x"), 0).unwrap();
        }
        for key in ["O-1", "O-2", "O-3", "O-4", "O-5"] {
            let p = partition_for_key(key.as_bytes(), 12);
            assert_eq!(d.partition_of(Some(key.as_bytes())), p);
            let store = d.store("counts", p).unwrap();
            assert_eq!(store.get(key.as_bytes()).unwrap(), Some(vec![1]));
            assert_eq!(d.get("counts", key.as_bytes()), Some(vec![1]));
            for other in (0..12).filter(|&q| q != p) {
                let value = d
                    .store("counts", other)
                    .and_then(|s| s.get(key.as_bytes()).unwrap());
                assert_eq!(value, None, "{key} also found in partition {other}");
            }
        }
        assert_eq!(d.get("counts", b"never"), None);
        assert_eq!(d.get("nope", b"O-1"), None);
    }

    #[test]
    fn offsets_are_per_partition_and_dead_letters_carry_them() {
        let mut d = counting(3);
        let key = b"k";
        let p = partition_for_key(key, 3);
        d.pipe(Some(key), Some(b"x"), 0).unwrap();
        d.pipe(Some(key), Some(b""), 0).unwrap();
        d.pipe(None, Some(b"x"), 0).unwrap();
        assert_eq!(d.next_offset(p), if p == 0 { 3 } else { 2 });
        let dl = d.dead_letters();
        assert_eq!(dl.len(), 2);
        assert_eq!(dl[0].reason, "empty");
        assert_eq!(
            dl[0].meta,
            RecordMeta {
                topic: "IN".into(),
                partition: p,
                offset: 1
            }
        );
        assert_eq!(dl[1].reason, "missing_key");
        assert_eq!(dl[1].meta.partition, 0, "unkeyed records go to partition 0");
        assert_eq!(dl[1].record.value.as_deref(), Some(b"x".as_slice()));
    }

    #[test]
    fn stores_appear_with_the_partitions_first_record() {
        let mut d = counting(2);
        assert!(d.store("counts", 0).is_none());
        d.pipe(None, Some(b"x"), 0).unwrap();
        assert!(d.store("counts", 0).is_some());
        assert!(d.store("other", 0).is_none());
    }

    #[test]
    fn undeclared_store_stops_the_task() {
        struct Sneaky;
        impl Processor for Sneaky {
            fn process(
                &mut self,
                ctx: &mut ProcessorContext<'_>,
                _: Record,
            ) -> Result<(), ProcessError> {
                ctx.store("undeclared")?;
                Ok(())
            }
        }
        let mut b = StreamsBuilder::new();
        b.stream("IN").process(&[], || Box::new(Sneaky));
        let mut d = TestDriver::new(b.build().unwrap(), 1);
        let err = d.pipe(Some(b"k"), None, 0).unwrap_err();
        assert!(matches!(err, ProcessError::MissingStore(ref s) if s == "undeclared"));
        assert_eq!(
            err.to_string(),
            "topology uses store \"undeclared\" but the task has no such store"
        );
    }

    #[test]
    fn a_processor_may_fan_out() {
        struct Twice;
        impl Processor for Twice {
            fn process(
                &mut self,
                ctx: &mut ProcessorContext<'_>,
                r: Record,
            ) -> Result<(), ProcessError> {
                ctx.forward(r.clone());
                ctx.forward(r);
                Ok(())
            }
        }
        let mut b = StreamsBuilder::new();
        b.stream("IN")
            .process(&[], || Box::new(Twice))
            .process(&[], || Box::new(Twice))
            .to("OUT");
        let mut d = TestDriver::new(b.build().unwrap(), 1);
        d.pipe(Some(b"k"), Some(b"v"), 0).unwrap();
        assert_eq!(d.read_output("OUT").len(), 4);
    }
}
