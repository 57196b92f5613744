//! paystream: a Kafka Streams-style stream processor for payment orders.
//!
//! Entry points: [`config::RunArgs`] → [`config::RunSettings`] (validated) →
//! [`instance::Instance`] runs one processor instance; [`query::app`] is its HTTP query API;
//! [`produce`] generates traffic; [`demo`] runs everything on one machine against an embedded
//! broker.
//!
//! # Layout
//! - [`config`]: `paystream run` settings from flags, `PAYSTREAM_*` environment and a TOML file,
//!   validated once at start-up (errors name the key).
//! - [`instance`]: the composition root: topics, producer, engine, cluster, HTTP server.
//! - [`engine`]: tasks (one per partition), the task manager, the state updater (restore and
//!   standbys on a thread of their own), the commit protocol (one Kafka transaction per commit
//!   under exactly-once) and the stream thread that polls, processes and commits.
//! - [`cluster`]: the group loop (or standalone mode) that drives the engine, the routing table,
//!   the instance's identity.
//! - [`coordination`]: the group protocol client and the pure assignor (actives, standbys,
//!   partition → endpoint map).
//! - [`kafka`]: rdkafka plumbing: client configs, topic administration, the output producer
//!   (transactional under exactly-once), offsets in transactions with our own group generation.
//! - [`query`]: the axum interactive-query layer (`GET /orders/{id}`, `/metadata`, `/health`);
//!   it reads the engine and the cluster state, and nothing imports it but `instance`.
//! - [`produce`]: the seeded traffic generator and its model of every order's final view.
//! - [`demo`]: `paystream demo`, on librdkafka's mock cluster.
//! - [`drill`]: `paystream drill`, failover rehearsals on a cluster of child processes.
//! - [`bench`]: `paystream bench`, the measurements behind BENCHMARKS.md.
//! - [`delivery`]: `paystream deliver`: SEND_SMS to an HTTP gateway with adjustable permits,
//!   pause-based back-pressure, retry topics, a DLQ and a circuit breaker.
//! - [`telemetry`]: logging set-up and typed metric events.
//! - [`heap_trim`]: gives the C heap's (librdkafka's, RocksDB's) freed pages back to the system.
//!
//! The topology (what happens to a record) lives in `paystream-topology`; the stores in
//! `paystream-state`. Dependencies run one way: state ← topology ← this crate.
#![warn(unreachable_pub)]

pub mod bench;
pub mod cluster;
pub mod config;
pub mod coordination;
pub mod delivery;
pub mod demo;
pub mod drill;
pub mod engine;
pub mod heap_trim;
pub mod instance;
pub mod kafka;
pub mod produce;
pub mod query;
pub mod telemetry;

pub use paystream_topology::partitioner::{murmur2, partition_for_key};
