//! paystream-topology: what happens to a record, with no Kafka and no RocksDB in sight.
//!
//! Entry point: use [`StreamsBuilder`] to build a [`Topology`]; test it with [`TestDriver`]. The
//! runtime (root crate) executes the same `Topology` against Kafka partitions and RocksDB stores
//! by implementing [`TaskIo`].
//!
//! # Layout
//! - [`processor`]: the processor API: [`Record`], [`Processor`], [`ProcessorContext`], and
//!   [`TaskIo`], the boundary an executor implements (stores, sinks, dead letters).
//! - [`dsl`]: [`StreamsBuilder`] and [`KStream`], describing a topology as a chain of
//!   `filter` / `map` / `process` / `to`.
//! - [`topology`]: the validated, shareable [`Topology`] and [`TaskProcessors`], the per-task
//!   chain that runs one record through every node (stream time and schedules in `clock`).
//! - [`time`]: [`TimePolicy`]: the one clock of a task (event or record time, the future
//!   bound) and the [`time::TimestampExtractor`] trait.
//! - [`store_spec`]: [`StoreSpec`]: the stores a processor declares (key-value or window).
//! - [`driver`]: [`TestDriver`], runs a topology over in-memory partitions and stores.
//! - [`partitioner`]: Kafka's murmur2 and the Java default partitioner rule, in one place.
//! - [`order`]: the payment-order domain (parse, fold rules, stored view) and the shipped
//!   order-view topology.
//! - [`sms`]: the SMS notification processor (dedup window stores, per-phone cap).
//! - [`approval`]: the missing-completion detector (stream-time punctuation, alert store).
//! - [`shipped`]: the chain `paystream run` executes: order view, then SMS and the detector
//!   when switched on.
#![warn(unreachable_pub)]

pub mod approval;
mod clock;
pub mod driver;
pub mod dsl;
pub mod order;
pub mod partitioner;
pub mod processor;
pub mod shipped;
pub mod sms;
pub mod store_spec;
pub mod time;
pub mod topology;

pub use driver::{DeadLetter, TestDriver};
pub use dsl::{KStream, StreamsBuilder};
pub use partitioner::{murmur2, partition_for_key};
pub use processor::{
    ProcessError, Processor, ProcessorContext, PunctuationType, Record, RecordMeta, TaskIo,
};
pub use shipped::{shipped_topology, ShippedTopologies};
pub use time::{Rejected, TimePolicy, TimestampExtractor};
pub use topology::{StoreKind, StoreSpec, TaskProcessors, Topology, TopologyError};
