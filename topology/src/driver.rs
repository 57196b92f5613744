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
//! own [`InMemoryStore`] per declared store. So a test sees the same per-partition state as an
//! instance would, and `get` must route by key just like an interactive query.
//!
//! Processing is synchronous: when `pipe` returns, the record has gone through the whole chain.
//! Time is controlled: stream time follows the piped timestamps, wall-clock time moves only with
//! [`TestDriver::advance_wall_clock`]. [`TestDriver::restart_partition`] simulates a crash and
//! restore: the partition's processors start over, internal-changelog stores keep their content
//! (as a full restore would give), and ledger stores are rebuilt from what the partition sent to
//! their topics.

use std::collections::BTreeMap;

use paystream_state::memory::InMemoryStore;
use paystream_state::store::KeyValueStore;
use paystream_state::window::{InMemoryWindowStore, WindowStore};

use crate::partitioner::partition_for_key;
use crate::processor::{ProcessError, Record, RecordMeta, TaskIo};
use crate::topology::{Changelog, StoreKind, StoreSpec, TaskProcessors, Topology};

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

/// One partition's task: its processors, stores and next offset (created on its first record).
struct Task {
    processors: TaskProcessors,
    stores: BTreeMap<String, InMemoryStore>,
    windows: BTreeMap<String, InMemoryWindowStore>,
    next_offset: i64,
}

impl Task {
    fn new(topology: &Topology) -> Self {
        let mut stores = BTreeMap::new();
        let mut windows = BTreeMap::new();
        for s in topology.stores() {
            match s.kind {
                StoreKind::KeyValue => {
                    stores.insert(s.name.clone(), InMemoryStore::new(s.name.clone()));
                }
                StoreKind::Window { retention_ms } => {
                    windows.insert(
                        s.name.clone(),
                        InMemoryWindowStore::new(s.name.clone(), retention_ms),
                    );
                }
            }
        }
        Self {
            processors: topology.instantiate(),
            stores,
            windows,
            next_offset: 0,
        }
    }
}

/// Runs a topology over in-memory partitions; see the module documentation.
pub struct TestDriver {
    topology: Topology,
    partitions: i32,
    tasks: BTreeMap<i32, Task>,
    outputs: BTreeMap<String, Vec<Record>>,
    /// Everything ever sent, per topic, with the sending partition (ledger restores read it).
    sent: BTreeMap<String, Vec<(i32, Record)>>,
    dead_letters: Vec<DeadLetter>,
    wall_clock: i64,
}

impl TestDriver {
    /// A driver for `topology` whose source topic has `partitions` partitions.
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
            sent: BTreeMap::new(),
            dead_letters: Vec::new(),
            wall_clock: 0,
        }
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
    /// An `Err` is what would stop a real task (a store failure, a missing store); bad input is
    /// not an error but a [`DeadLetter`]. The offset is consumed either way.
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
        let meta = RecordMeta {
            topic: topology.source_topic().to_owned(),
            partition,
            offset: task.next_offset,
        };
        task.next_offset += 1;
        let mut io = DriverIo {
            stores: &mut task.stores,
            windows: &mut task.windows,
            outputs: &mut self.outputs,
            sent: &mut self.sent,
            dead_letters: &mut self.dead_letters,
            meta: &meta,
        };
        // `process` runs the processors' `init` before the partition's first record.
        task.processors
            .process(&mut io, &meta, record, self.wall_clock)
    }

    /// Move the wall clock forward by `ms` and fire every wall-clock punctuation that became due,
    /// partition by partition.
    pub fn advance_wall_clock(&mut self, ms: i64) -> Result<(), ProcessError> {
        self.wall_clock += ms;
        for (&partition, task) in self.tasks.iter_mut() {
            let meta = RecordMeta {
                topic: self.topology.source_topic().to_owned(),
                partition,
                offset: -1,
            };
            let mut io = DriverIo {
                stores: &mut task.stores,
                windows: &mut task.windows,
                outputs: &mut self.outputs,
                sent: &mut self.sent,
                dead_letters: &mut self.dead_letters,
                meta: &meta,
            };
            task.processors
                .punctuate_wall_clock(&mut io, &meta, self.wall_clock)?;
        }
        Ok(())
    }

    /// The driver's wall clock (starts at 0).
    pub fn wall_clock(&self) -> i64 {
        self.wall_clock
    }

    /// Simulate a crash of `partition`'s task and its restore elsewhere: fresh processors (stream
    /// time and schedules start over), internal-changelog stores as a full restore gives them,
    /// ledger stores rebuilt from every record this partition sent to their topics.
    pub fn restart_partition(&mut self, partition: i32) -> Result<(), ProcessError> {
        let Some(old) = self.tasks.remove(&partition) else {
            return Ok(());
        };
        let mut task = Task::new(&self.topology);
        task.next_offset = old.next_offset;
        for spec in self.topology.stores() {
            match &spec.changelog {
                Changelog::Internal => match spec.kind {
                    StoreKind::KeyValue => {
                        if let Some(s) = old.stores.get(&spec.name) {
                            task.stores.insert(spec.name.clone(), s.clone());
                        }
                    }
                    StoreKind::Window { .. } => {
                        if let Some(s) = old.windows.get(&spec.name) {
                            task.windows.insert(spec.name.clone(), s.clone());
                        }
                    }
                },
                Changelog::Ledger { topic, key_of } => {
                    let records = self.sent.get(topic).map(Vec::as_slice).unwrap_or_default();
                    let entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = records
                        .iter()
                        .filter(|(p, _)| *p == partition)
                        .filter_map(|(_, r)| {
                            let (k, v) = (r.key.as_deref()?, r.value.as_deref()?);
                            Some((key_of(k, v, r.timestamp)?, Some(v.to_vec())))
                        })
                        .collect();
                    restore_ledger(&mut task, spec, &entries)?;
                }
            }
        }
        self.tasks.insert(partition, task);
        Ok(())
    }

    /// Take every record the sinks sent to `topic` so far (in send order); a second call returns
    /// only what arrived since.
    pub fn read_output(&mut self, topic: &str) -> Vec<Record> {
        self.outputs.remove(topic).unwrap_or_default()
    }

    /// Every record sent to the dead-letter queue so far, oldest first.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// The store `name` of `partition`, or `None` if the topology declares no such store or the
    /// partition has not received a record yet (stores are created with the partition's task).
    pub fn store(&self, name: &str, partition: i32) -> Option<&InMemoryStore> {
        self.tasks.get(&partition)?.stores.get(name)
    }

    /// The window store `name` of `partition` (see [`TestDriver::store`]).
    pub fn window_store(&self, name: &str, partition: i32) -> Option<&InMemoryWindowStore> {
        self.tasks.get(&partition)?.windows.get(name)
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
    /// interactive query is routed.
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

fn restore_ledger(
    task: &mut Task,
    spec: &StoreSpec,
    entries: &[(Vec<u8>, Option<Vec<u8>>)],
) -> Result<(), ProcessError> {
    match spec.kind {
        StoreKind::KeyValue => {
            if let Some(store) = task.stores.get_mut(&spec.name) {
                for (k, v) in entries {
                    if let Some(v) = v {
                        store.put(k, v)?;
                    }
                }
            }
        }
        StoreKind::Window { .. } => {
            if let Some(store) = task.windows.get_mut(&spec.name) {
                store.restore_batch(entries)?;
            }
        }
    }
    Ok(())
}

/// What one partition's processors see while a record is processed.
struct DriverIo<'a> {
    stores: &'a mut BTreeMap<String, InMemoryStore>,
    windows: &'a mut BTreeMap<String, InMemoryWindowStore>,
    outputs: &'a mut BTreeMap<String, Vec<Record>>,
    sent: &'a mut BTreeMap<String, Vec<(i32, Record)>>,
    dead_letters: &'a mut Vec<DeadLetter>,
    meta: &'a RecordMeta,
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

    fn send(&mut self, topic: &str, record: Record) -> Result<(), ProcessError> {
        self.sent
            .entry(topic.to_owned())
            .or_default()
            .push((self.meta.partition, record.clone()));
        self.outputs
            .entry(topic.to_owned())
            .or_default()
            .push(record);
        Ok(())
    }

    fn dead_letter(
        &mut self,
        record: Record,
        reason: &str,
        detail: &str,
    ) -> Result<(), ProcessError> {
        self.dead_letters.push(DeadLetter {
            record,
            reason: reason.to_owned(),
            detail: detail.to_owned(),
            meta: self.meta.clone(),
        });
        Ok(())
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
