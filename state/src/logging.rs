//! The changelog-logging layer: every write to the wrapped store is also sent to a changelog.
//!
//! The state crate knows nothing about Kafka; the root crate implements [`ChangelogWriter`] with a
//! producer that writes to `<application-id>-<store>-changelog`, partition = the task's partition.

use crate::store::{KeyValueStore, StoreError};

/// Where a [`LoggingStore`] sends its changes. `send` only enqueues: delivery failures surface
/// when the owner flushes the writer before committing (at-least-once: a source offset is only
/// committed after its changelog writes are acknowledged).
pub trait ChangelogWriter: Send {
    /// Enqueue one change; `None` is a tombstone (delete).
    fn send(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String>;
}

/// `logging(inner)`: writes go to `inner` first, then to the changelog.
pub struct LoggingStore<S, W> {
    inner: S,
    writer: W,
}

impl<S: KeyValueStore, W: ChangelogWriter> LoggingStore<S, W> {
    /// Wrap `inner` so that every put and delete is also sent through `writer`.
    pub fn new(inner: S, writer: W) -> Self {
        Self { inner, writer }
    }
    /// The wrapped store (reads and restores bypass logging through it).
    pub fn inner(&self) -> &S {
        &self.inner
    }
    /// Mutable access to the wrapped store, e.g. to restore it without re-logging.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// The changelog writer (the owner flushes it before committing).
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }
    /// Take the layers apart again.
    pub fn into_parts(self) -> (S, W) {
        (self.inner, self.writer)
    }
}

impl<S: KeyValueStore, W: ChangelogWriter> KeyValueStore for LoggingStore<S, W> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(key, value)?;
        self.writer
            .send(key, Some(value))
            .map_err(|message| StoreError::Changelog {
                store: self.inner.name().to_owned(),
                message,
            })
    }
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.inner.delete(key)?;
        self.writer
            .send(key, None)
            .map_err(|message| StoreError::Changelog {
                store: self.inner.name().to_owned(),
                message,
            })
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        self.inner.for_each(f)
    }
    fn approximate_len(&self) -> Result<u64, StoreError> {
        self.inner.approximate_len()
    }
}
