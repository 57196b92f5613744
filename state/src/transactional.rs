//! Transactional stores: a task's writes since its last commit live in an in-memory write buffer
//! that reads see first, and reach the changelog and the inner store only when the task commits.
//!
//! Entry points: [`TxnKeyValueStore`] and [`TxnWindowStore`], the layer every persistent store of
//! a task sits under (`transactional(rocksdb)`), and [`ChangelogWriter`], through which the owner
//! hands the buffered writes to the changelog (the root crate implements it with a Kafka
//! producer; this crate knows nothing about Kafka).
//!
//! A commit has two phases, as in Kafka Streams (`prepareCommit` / `postCommit`):
//!
//! ```text
//!   put / delete ──▶ buffer (one entry per key: later writes to a key replace earlier ones)
//!        │                reads: buffer first, then the inner store
//!   prepare(writer) ──▶ one changelog record per dirty key; the entries move to `staged`
//!        │
//!        ├── the transaction committed ──▶ commit(): staged entries → inner store, one batch
//!        └── it failed / was fenced ─────▶ abort(): buffer and staged entries dropped
//! ```
//!
//! So the inner store (RocksDB) only ever holds committed state: a crash loses nothing but the
//! transaction in flight, local files never need wiping, and readers of the inner store (the
//! query API) only see committed state. Writes to one key within a commit interval coalesce into
//! one changelog record, as Kafka Streams' record cache does.
//!
//! The owner bounds the buffer: [`TxnKeyValueStore::uncommitted_bytes`] grows with every write,
//! and the owner commits early when the sum over its stores is too large.

use std::collections::{BTreeMap, HashMap};

use crate::store::{check_entry_size, KeyValueStore, StoreError};
use crate::window::{encode_window_key, oldest_retained, WindowStore, WindowVisitor};

/// Where a transactional store sends its dirty entries at commit time. `send` only enqueues:
/// delivery (and the transaction's outcome) is the owner's business.
pub trait ChangelogWriter {
    /// Enqueue one changelog record; `None` is a tombstone (delete).
    fn send(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError>;
}

/// An entry of a commit: a key (for window stores, [`encode_window_key`]) and its new value
/// (`None`: deleted).
pub type Entry = (Vec<u8>, Option<Vec<u8>>);

/// Bookkeeping shared by both transactional layers.
#[derive(Debug, Default)]
struct Pending {
    /// Entries taken out of the buffer by `prepare`, waiting for the transaction's outcome.
    staged: Vec<Entry>,
    /// Approximate bytes (keys and values) of the buffered entries.
    bytes: usize,
}

impl Pending {
    /// Send every staged entry to `writer`; the buffer they came from is empty now.
    fn stage_sent(&mut self, writer: &mut dyn ChangelogWriter) -> Result<usize, StoreError> {
        self.bytes = 0;
        for (key, value) in &self.staged {
            writer.send(key, value.as_deref())?;
        }
        Ok(self.staged.len())
    }
}

fn entry_len(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + 16
}

/// `transactional(inner)` for key-value stores; see the module documentation.
pub struct TxnKeyValueStore<S> {
    inner: S,
    buffer: HashMap<Vec<u8>, Option<Vec<u8>>>,
    pending: Pending,
}

impl<S: KeyValueStore> TxnKeyValueStore<S> {
    /// Wrap `inner`, which holds committed state only from now on.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buffer: HashMap::new(),
            pending: Pending::default(),
        }
    }

    /// The committed store (restore and standbys write to it directly; queries read it).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Mutable access to the committed store, bypassing the buffer (restore, standbys).
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Approximate bytes written since the last commit or abort.
    pub fn uncommitted_bytes(&self) -> usize {
        self.pending.bytes
    }

    /// Whether anything was written since the last commit or abort.
    pub fn is_dirty(&self) -> bool {
        !self.buffer.is_empty() || !self.pending.staged.is_empty()
    }

    /// Phase one of a commit: send one changelog record per dirty key to `writer` and stage the
    /// entries for [`Self::commit`]. Returns the number of records sent.
    pub fn prepare(&mut self, writer: &mut dyn ChangelogWriter) -> Result<usize, StoreError> {
        self.pending.staged.extend(self.buffer.drain());
        self.pending.stage_sent(writer)
    }

    /// Phase two: the transaction holding the prepared records committed; write them to the
    /// inner store in one batch.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let staged = std::mem::take(&mut self.pending.staged);
        if staged.is_empty() {
            return Ok(());
        }
        self.inner.write_batch(&staged)
    }

    /// The transaction failed: forget every write since the last commit (staged or buffered).
    pub fn abort(&mut self) {
        self.buffer.clear();
        self.pending = Pending::default();
    }

    fn buffer_write(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.pending.bytes += entry_len(key, value);
        if let Some(old) = self.buffer.insert(key.to_vec(), value.map(<[u8]>::to_vec)) {
            self.pending.bytes = self
                .pending
                .bytes
                .saturating_sub(entry_len(key, old.as_deref()));
        }
    }
}

impl<S: KeyValueStore> KeyValueStore for TxnKeyValueStore<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.buffer.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.inner.get(key),
        }
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_entry_size(self.inner.name(), key.len() + value.len())?;
        self.buffer_write(key, Some(value));
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.buffer_write(key, None);
        Ok(())
    }
    /// Flushes the committed state (what a checkpoint may claim); the buffer is not durable.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return self.inner.for_each(f);
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        self.inner.for_each(&mut |k, v| {
            merged.insert(k.to_vec(), v.to_vec());
            true
        })?;
        for (k, v) in &self.buffer {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        for (k, v) in &merged {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }
    fn approximate_len(&self) -> Result<u64, StoreError> {
        self.inner.approximate_len()
    }
    fn write_batch(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        for (k, v) in entries {
            self.buffer_write(k, v.as_deref());
        }
        Ok(())
    }
}

/// `transactional(inner)` for window stores; see the module documentation. The store's observed
/// time includes buffered puts, so expiry and the refusal of expired puts behave as if every
/// write had gone to the inner store at once; entries that expire before they are committed are
/// never sent to the changelog.
pub struct TxnWindowStore<S> {
    inner: S,
    /// (key, window start) → value, `None` for a delete.
    buffer: BTreeMap<(Vec<u8>, i64), Option<Vec<u8>>>,
    /// Largest window start put or deleted, committed or not.
    observed: i64,
    pending: Pending,
}

impl<S: WindowStore> TxnWindowStore<S> {
    /// Wrap `inner`, which holds committed state only from now on.
    pub fn new(inner: S) -> Self {
        let observed = inner.observed_time();
        Self {
            inner,
            buffer: BTreeMap::new(),
            observed,
            pending: Pending::default(),
        }
    }

    /// The committed store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Mutable access to the committed store, bypassing the buffer (restore, standbys). Call
    /// [`Self::resync`] afterwards so the layer sees the new observed time.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Take the inner store's observed time again after writing to it directly.
    pub fn resync(&mut self) {
        self.observed = self.observed.max(self.inner.observed_time());
    }

    /// Approximate bytes written since the last commit or abort.
    pub fn uncommitted_bytes(&self) -> usize {
        self.pending.bytes
    }

    /// Whether anything was written since the last commit or abort.
    pub fn is_dirty(&self) -> bool {
        !self.buffer.is_empty() || !self.pending.staged.is_empty()
    }

    /// Phase one of a commit: one changelog record (key = [`encode_window_key`]) per dirty
    /// window that is still retained, staged for [`Self::commit`]. Returns the records sent.
    pub fn prepare(&mut self, writer: &mut dyn ChangelogWriter) -> Result<usize, StoreError> {
        let oldest = oldest_retained(self.observed, self.inner.retention_ms());
        let buffer = std::mem::take(&mut self.buffer);
        self.pending.staged.extend(
            buffer
                .into_iter()
                .filter(|((_, t), _)| *t >= oldest)
                .map(|((k, t), v)| (encode_window_key(&k, t), v)),
        );
        self.pending.stage_sent(writer)
    }

    /// Phase two: the transaction committed; apply the staged entries to the inner store in one
    /// batch (which also expires what the new observed time leaves behind).
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let staged = std::mem::take(&mut self.pending.staged);
        if staged.is_empty() {
            return Ok(());
        }
        self.inner.restore_batch(&staged)?;
        self.resync();
        Ok(())
    }

    /// The transaction failed: forget every write since the last commit, observed time included.
    pub fn abort(&mut self) {
        self.buffer.clear();
        self.pending = Pending::default();
        self.observed = self.inner.observed_time();
    }

    fn live(&self, from: i64, to: i64) -> Option<(i64, i64)> {
        let from = from.max(oldest_retained(self.observed, self.inner.retention_ms()));
        (from <= to).then_some((from, to))
    }
}

impl<S: WindowStore> WindowStore for TxnWindowStore<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn retention_ms(&self) -> i64 {
        self.inner.retention_ms()
    }
    fn observed_time(&self) -> i64 {
        self.observed
    }
    fn put(&mut self, key: &[u8], window_start: i64, value: &[u8]) -> Result<bool, StoreError> {
        if window_start < oldest_retained(self.observed, self.inner.retention_ms()) {
            return Ok(false);
        }
        // The changelog key is the key plus its length and the window start (12 bytes).
        check_entry_size(self.inner.name(), key.len() + 12 + value.len())?;
        self.pending.bytes += entry_len(key, Some(value));
        self.buffer
            .insert((key.to_vec(), window_start), Some(value.to_vec()));
        self.observed = self.observed.max(window_start);
        Ok(true)
    }
    fn delete(&mut self, key: &[u8], window_start: i64) -> Result<(), StoreError> {
        self.pending.bytes += entry_len(key, None);
        self.buffer.insert((key.to_vec(), window_start), None);
        self.observed = self.observed.max(window_start);
        Ok(())
    }
    fn fetch(&self, key: &[u8], from: i64, to: i64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let Some((from, to)) = self.live(from, to) else {
            return Ok(Vec::new());
        };
        let committed = self.inner.fetch(key, from, to)?;
        let mut overlay = self
            .buffer
            .range((key.to_vec(), from)..=(key.to_vec(), to))
            .peekable();
        if overlay.peek().is_none() {
            return Ok(committed);
        }
        let mut merged: BTreeMap<i64, Vec<u8>> = committed.into_iter().collect();
        for ((_, t), v) in overlay {
            match v {
                Some(v) => merged.insert(*t, v.clone()),
                None => merged.remove(t),
            };
        }
        Ok(merged.into_iter().collect())
    }
    fn fetch_all(&self, from: i64, to: i64, f: &mut WindowVisitor<'_>) -> Result<(), StoreError> {
        let Some((from, to)) = self.live(from, to) else {
            return Ok(());
        };
        if self.buffer.is_empty() {
            return self.inner.fetch_all(from, to, f);
        }
        let mut merged: BTreeMap<(Vec<u8>, i64), Vec<u8>> = BTreeMap::new();
        self.inner.fetch_all(from, to, &mut |k, t, v| {
            merged.insert((k.to_vec(), t), v.to_vec());
            true
        })?;
        for ((k, t), v) in self
            .buffer
            .iter()
            .filter(|((_, t), _)| (from..=to).contains(t))
        {
            match v {
                Some(v) => merged.insert((k.clone(), *t), v.clone()),
                None => merged.remove(&(k.clone(), *t)),
            };
        }
        for ((k, t), v) in &merged {
            if !f(k, *t, v) {
                break;
            }
        }
        Ok(())
    }
    /// Flushes the committed state (what a checkpoint may claim); the buffer is not durable.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn approximate_len(&self) -> Result<u64, StoreError> {
        self.inner.approximate_len()
    }
}

#[cfg(test)]
#[path = "transactional_tests.rs"]
mod tests;
