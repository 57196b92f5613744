//! State stores for paystream: the local, per-partition materialized state of a topology.
//!
//! Entry point: the [`KeyValueStore`] trait. A task opens a `RocksDbStore` per store and
//! partition (or an [`InMemoryStore`] in tests), wraps it in a [`LoggingStore`] so every write also
//! reaches the changelog topic, and writes a [`Checkpoint`] after each flush so that a restart
//! restores only the changelog tail. Typed values become bytes through [`codec`].
//!
//! This crate knows nothing about Kafka: the changelog is reached through the [`ChangelogWriter`]
//! trait, which the root crate implements with a producer.
//!
//! # Layout
//! - [`store`]: the [`KeyValueStore`] contract every layer implements, and [`StoreError`].
//! - [`logging`]: [`LoggingStore`], the layer that sends every write to a [`ChangelogWriter`].
//! - [`codec`]: versioned binary values (a format-version byte, then postcard).
//! - [`memory`]: [`InMemoryStore`], a `BTreeMap` store for tests and the topology test driver.
//! - [`window`]: the [`WindowStore`] contract (values per key and window start, expired by
//!   retention), its key encoding, [`InMemoryWindowStore`] and [`LoggingWindowStore`].
//! - [`checkpoint`]: [`Checkpoint`] files recording the changelog offset the local state is
//!   durable up to.
//! - `rocks` (feature `rocksdb`, on by default): `RocksDbStore`, one RocksDB database per store
//!   and partition directory, and `RocksDbReader`, its read handle for query threads.
//! - `rocks_window` (feature `rocksdb`): `RocksDbWindowStore`, a window store on one RocksDB
//!   database whose keys start with a time-segment id (expired segments are range-deleted
//!   whole), and `RocksDbWindowReader`.
//!
//! Stores are stacked like Kafka Streams' `logging(rocksdb)`:
//!
//! ```text
//! task thread ──put──▶ LoggingStore ──▶ RocksDbStore ──▶ <state-dir>/.../<store>/ (+ .checkpoint)
//!                           │                 ▲
//!                           ▼                 │ RocksDbReader::get
//!                  ChangelogWriter      HTTP query threads
//!              (<app>-<store>-changelog)
//! ```
#![warn(unreachable_pub)]

pub mod checkpoint;
pub mod codec;
pub mod logging;
pub mod memory;
#[cfg(feature = "rocksdb")]
pub mod rocks;
#[cfg(feature = "rocksdb")]
pub mod rocks_window;
pub mod store;
pub mod window;

pub use checkpoint::Checkpoint;
pub use codec::CodecError;
pub use logging::{ChangelogWriter, LoggingStore};
pub use memory::InMemoryStore;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksDbReader, RocksDbStore};
#[cfg(feature = "rocksdb")]
pub use rocks_window::{RocksDbWindowReader, RocksDbWindowStore};
pub use store::{KeyValueStore, StoreError};
pub use window::{InMemoryWindowStore, LoggingWindowStore, WindowStore};
