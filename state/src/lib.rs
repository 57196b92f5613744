//! State stores for paystream: the local, per-partition materialized state of a topology.
//!
//! Entry point: the [`KeyValueStore`] trait. A task opens a `RocksDbStore` per store and
//! partition (or an [`InMemoryStore`] in tests), wraps it in a [`TxnKeyValueStore`] so that its
//! writes wait in memory until the task commits (then they go to the changelog topic and, once
//! the transaction committed, to RocksDB in one batch), and writes a [`Checkpoint`] after a flush
//! so that a restart restores only the changelog tail. Typed values become bytes through
//! [`codec`].
//!
//! This crate knows nothing about Kafka: the changelog is reached through the [`ChangelogWriter`]
//! trait, which the root crate implements with a producer.
//!
//! # Layout
//! - [`store`]: the [`KeyValueStore`] contract every layer implements, and [`StoreError`].
//! - [`transactional`]: [`TxnKeyValueStore`] and [`TxnWindowStore`], the layer that keeps a
//!   commit's writes in memory (reads see them first) and hands them to a [`ChangelogWriter`] at
//!   commit time, so the inner store only ever holds committed state.
//! - [`codec`]: versioned binary values (a format-version byte, then postcard).
//! - [`open`]: [`OpenFailure`], why a store could not be opened, and the rule that only proven
//!   unusable files (corruption, an unknown store format) are wiped; everything else is retried.
//! - [`memory`]: [`InMemoryStore`], a `BTreeMap` store for tests and the topology test driver.
//! - [`window`]: the [`WindowStore`] contract (values per key and window start, expired by
//!   retention), its key encoding and [`InMemoryWindowStore`].
//! - [`checkpoint`]: [`Checkpoint`] files recording the changelog offset the local state is
//!   durable up to.
//! - `rocks` (feature `rocksdb`, on by default): `RocksDbStore`, one RocksDB database per store
//!   and partition directory, and `RocksDbReader`, its read handle for query threads.
//! - `rocks_window` (feature `rocksdb`): `RocksDbWindowStore`, a window store on one RocksDB
//!   database whose keys start with a time-segment id (expired segments are range-deleted
//!   whole), and `RocksDbWindowReader`.
//! - `rocks_memory` (feature `rocksdb`): the one memory budget (block cache and write-buffer
//!   manager) shared by every RocksDB database of the process (`--state-memory-mb`).
//! - `rocks_registry` (feature `rocksdb`): the process-wide registry of open databases by
//!   directory, so that a reader outliving its task never keeps the reopen of its partition out.
//!
//! Stores are stacked layers, `transactional(rocksdb)`:
//!
//! ```text
//! task thread ──put──▶ TxnKeyValueStore (buffer) ──commit──▶ RocksDbStore ──▶ <state-dir>/.../<store>/
//!                           │ prepare                            ▲              (+ .checkpoint)
//!                           ▼                                    │ RocksDbReader::get
//!                  ChangelogWriter                         HTTP query threads (committed state)
//!              (<app>-<store>-changelog)
//! ```
#![warn(unreachable_pub)]

pub mod checkpoint;
pub mod codec;
pub mod memory;
pub mod open;
#[cfg(feature = "rocksdb")]
pub mod rocks;
#[cfg(feature = "rocksdb")]
pub mod rocks_memory;
#[cfg(feature = "rocksdb")]
mod rocks_registry;
#[cfg(feature = "rocksdb")]
pub mod rocks_window;
pub mod store;
pub mod transactional;
pub mod window;

pub use checkpoint::Checkpoint;
pub use codec::CodecError;
pub use memory::InMemoryStore;
pub use open::OpenFailure;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksDbReader, RocksDbStore};
#[cfg(feature = "rocksdb")]
pub use rocks_window::{RocksDbWindowReader, RocksDbWindowStore};
pub use store::{KeyValueStore, StoreError};
pub use transactional::{ChangelogWriter, TxnKeyValueStore, TxnWindowStore};
pub use window::{InMemoryWindowStore, WindowStore};
