//! paystream: a Kafka Streams-style stream processor for payment orders.
//!
//! Entry points: [`config::RunArgs`] → [`config::RunSettings`] (validated) → [`runtime::Instance`]
//! runs one processor instance; [`query::app`] is its HTTP query API; [`produce`] generates
//! traffic; [`demo`] runs everything on one machine against an embedded broker.
//!
//! # Layout
//! - [`config`]: `paystream run` settings from flags, `PAYSTREAM_*` environment and a TOML file,
//!   validated once at start-up (errors name the key).
//! - [`coordination`]: the group protocol client and the pure assignor (actives, standbys,
//!   partition → endpoint map).
//! - [`kafka`]: rdkafka plumbing: client configs, topic administration, the changelog and
//!   dead-letter producer, consumer statistics.
//! - [`runtime`]: tasks (one per partition), restore from the changelog, the stream thread that
//!   polls, processes and commits, and the [`runtime::Instance`] that ties them together.
//! - [`query`]: the axum interactive-query layer (`GET /orders/{id}`, `/metadata`, `/health`).
//! - [`produce`]: the seeded traffic generator and its model of every order's final view.
//! - [`demo`]: `paystream demo`, on librdkafka's mock cluster.
//! - [`drill`]: `paystream drill`, failover rehearsals on a cluster of child processes.
//! - [`bench`]: `paystream bench`, the measurements behind BENCHMARKS.md.
//! - [`telemetry`]: logging set-up and typed metric events.
//!
//! The topology (what happens to a record) lives in `paystream-topology`; the stores in
//! `paystream-state`. Dependencies run one way: state ← topology ← this crate.
#![warn(unreachable_pub)]

pub mod bench;
pub mod config;
pub mod coordination;
pub mod demo;
pub mod drill;
pub mod kafka;
pub mod produce;
pub mod query;
pub mod runtime;
pub mod telemetry;

pub use paystream_topology::partitioner::{murmur2, partition_for_key};
