//! `paystream produce`: realistic, seeded `PAYMENT.ORDER` traffic and its model.
//!
//! [`generator`] is pure (no I/O): the same seed and options give the same events in the same
//! order, and [`generator::Traffic::model`] folds them with the topology's own rules into the
//! final view every order must end up with. [`send`] writes them to Kafka, keyed and partitioned
//! like a Java producer would (murmur2), a chunk of at most a million orders at a time
//! ([`chunks`]), so any number of orders fits in memory.

mod chunks;
pub mod generator;
mod send;

pub use generator::{GeneratorOptions, Traffic, TrafficEvent};
pub use send::{produce, ProduceError, ProduceOptions, ProduceReport};
