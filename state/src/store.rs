//! The key-value store contract every store layer implements.
//!
//! Stores are stacked layers, as in Kafka Streams (`caching(logging(rocksdb))`): the bottom layer
//! keeps bytes (`rocks::RocksDbStore` on disk, [`crate::memory::InMemoryStore`] in tests),
//! [`crate::transactional::TxnKeyValueStore`] buffers a commit's writes and hands them to the
//! changelog at commit time. Keys and values are bytes here; typed values go through
//! [`crate::codec`].

use std::path::PathBuf;

use thiserror::Error;

use crate::open::OpenFailure;

/// What can go wrong in a store. Every variant names the store so a log line is enough to act on.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The underlying database failed (I/O, corruption, ...).
    #[error("store {store}: database error: {message}")]
    Backend { store: String, message: String },
    /// Stored bytes could not be decoded (wrong format version, truncated, ...).
    #[error("store {store}: cannot decode value: {message}")]
    Codec { store: String, message: String },
    /// A write could not be handed to the changelog.
    #[error("store {store}: changelog: {message}")]
    Changelog { store: String, message: String },
    /// An entry too large for one changelog record (see [`MAX_ENTRY_BYTES`]); refused before
    /// anything is written, so the record that produced it can be dead-lettered.
    #[error("store {store}: an entry of {bytes} bytes is larger than the {limit} a changelog record holds")]
    TooLarge {
        store: String,
        bytes: usize,
        limit: usize,
    },
    /// The store could not be opened; `failure` says whether its files are to blame (see
    /// [`crate::open`]).
    #[error("store {store}: cannot open {}: {failure}: {message}", dir.display())]
    Open {
        store: String,
        dir: PathBuf,
        failure: OpenFailure,
        message: String,
    },
    /// Filesystem trouble around the store (directories, checkpoint files).
    #[error("store {store}: {context}: {source}")]
    Io {
        store: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Why opening failed, for an [`StoreError::Open`].
    pub fn open_failure(&self) -> Option<OpenFailure> {
        match self {
            StoreError::Open { failure, .. } => Some(*failure),
            _ => None,
        }
    }

    /// The store's files are proven unusable: wipe and restore (see [`crate::open`]). `false`
    /// for every other error, which must never cost the local data.
    pub fn is_unusable(&self) -> bool {
        self.open_failure().is_some_and(OpenFailure::is_unusable)
    }
}

/// Largest key + value a changelogged store accepts in one entry: librdkafka refuses records
/// over its `message.max.bytes` (1,000,000 by default), and headers and the record batch need
/// some of that.
pub const MAX_ENTRY_BYTES: usize = 900_000;

/// [`StoreError::TooLarge`] unless an entry of `bytes` (changelog key + value) fits in one
/// changelog record.
pub fn check_entry_size(store: &str, bytes: usize) -> Result<(), StoreError> {
    if bytes > MAX_ENTRY_BYTES {
        return Err(StoreError::TooLarge {
            store: store.to_owned(),
            bytes,
            limit: MAX_ENTRY_BYTES,
        });
    }
    Ok(())
}

/// A mutable byte-oriented key-value store owned by one task (one store of one partition).
///
/// Implementations are used from one thread at a time (the task's); concurrent readers use a
/// separate read handle where the implementation offers one (see `RocksDbStore::reader`).
pub trait KeyValueStore: Send {
    /// The store's name (as used in the topology and the changelog topic name).
    fn name(&self) -> &str;
    /// The value under `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Insert or overwrite `key`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Remove `key` (a no-op when absent).
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError>;
    /// Make every write so far durable locally. Called before a checkpoint is written, so that a
    /// checkpoint never claims more than the local files hold.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Visit every entry in key order until `f` returns `false`.
    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError>;
    /// Number of entries (may be an estimate for on-disk stores).
    fn approximate_len(&self) -> Result<u64, StoreError>;
    /// Apply many changes (`None` deletes), later entries winning over earlier ones for the same
    /// key. On-disk stores make it one atomic write.
    fn write_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        for (key, value) in entries {
            match value {
                Some(v) => self.put(key, v)?,
                None => self.delete(key)?,
            }
        }
        Ok(())
    }
}

impl<S: KeyValueStore + ?Sized> KeyValueStore for Box<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        (**self).put(key, value)
    }
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        (**self).delete(key)
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        (**self).flush()
    }
    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        (**self).for_each(f)
    }
    fn approximate_len(&self) -> Result<u64, StoreError> {
        (**self).approximate_len()
    }
    fn write_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        (**self).write_batch(entries)
    }
}
