//! The RocksDB window store: a [`WindowStore`] on disk, cut into time segments.
//!
//! Entry point: [`RocksDbWindowStore::open`]. Layout: one RocksDB database per store and
//! partition (like [`crate::rocks::RocksDbStore`]), whose keys are
//! `segment id (8 bytes, order-preserving) | encode_window_key(key, window start)`. A segment
//! groups window starts of [`RocksDbWindowStore::segment_interval`] ms (half the retention, at
//! least a minute, as in Kafka Streams). Inside a segment one key's windows are one contiguous,
//! time-ordered range ([`encode_window_key`]: length-prefixed key, then the time).
//!
//! Why segments: entries expire by time, and deleting them one by one would cost a tombstone
//! each. Once observed time has moved past a whole segment, the segment goes with one range
//! deletion (and its SST files with `delete_file_in_range`): no per-entry work. Entries of the
//! partly expired oldest segment stay until the whole segment goes; reads hide them by clamping
//! to [`oldest_retained`].
//!
//! Why one database and not one per segment (Kafka Streams' classic layout): opening and closing
//! a RocksDB costs file creations and fsyncs. At live speed that is one segment per interval, but
//! catching up (a restore, a replay, a backlog) moves through hours of event time in seconds, and
//! a database per segment then spends most of its time creating and deleting databases (measured:
//! a third of the stream thread). Here segments are key prefixes, and one read needs one iterator
//! however many segments it spans (Kafka Streams' newer logical segments work the same way).
//!
//! Threads: the task thread owns the [`RocksDbWindowStore`] and is its only writer; query threads
//! read through [`RocksDbWindowReader`]s ([`RocksDbWindowStore::reader`]). Store and readers share
//! the database, the set of live segments and the observed time, and read through the same
//! functions, so they cannot disagree.
//!
//! Durability: as for [`crate::rocks::RocksDbStore`], writes skip RocksDB's write-ahead log. What
//! makes the state durable is the changelog topic plus the checkpoint file written after
//! [`WindowStore::flush`]; records past the checkpoint are replayed with
//! [`WindowStore::restore_batch`] after a crash. On open, observed time is recovered from the
//! newest segment, so expiry (and the refusal of too-old puts) continues where it was.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rocksdb::{DBRawIterator, IteratorMode, WriteBatch, WriteOptions, DB};

use crate::open::{open_error, OpenFailure};
use crate::rocks::backend;
use crate::rocks_registry::{open_shared, WriterGuard};
use crate::store::StoreError;
use iterator_cache::IteratorCache;

mod iterator_cache;

use crate::window::{
    decode_window_key, encode_time, encode_window_key, oldest_retained, WindowStore, WindowVisitor,
};

/// Smallest segment interval, as in Kafka Streams: short retentions would otherwise make many
/// tiny segments.
const MIN_SEGMENT_INTERVAL_MS: i64 = 60_000;

/// Length of the segment-id prefix of every key.
const PREFIX: usize = 8;

/// What a store and its readers share.
struct Shared {
    name: String,
    retention_ms: i64,
    interval: i64,
    db: DB,
    /// Ids (`window start div_euclid interval`) of the segments that may hold entries.
    segments: RwLock<BTreeSet<i64>>,
    /// Largest window start ever put (`i64::MIN` while empty).
    observed: AtomicI64,
}

impl Shared {
    fn segment_id(&self, window_start: i64) -> i64 {
        window_start.div_euclid(self.interval)
    }

    fn observed(&self) -> i64 {
        self.observed.load(Ordering::Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeSet<i64>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeSet<i64>> {
        self.segments.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The live segments that may hold window starts in `[from, to]`, oldest first.
    fn segments_between(&self, from: i64, to: i64) -> Vec<i64> {
        self.read()
            .range(self.segment_id(from)..=self.segment_id(to))
            .copied()
            .collect()
    }

    /// `[from, to]` clamped to what is retained, or `None` when nothing can match.
    fn live_range(&self, from: i64, to: i64) -> Option<(i64, i64)> {
        let from = from.max(oldest_retained(self.observed(), self.retention_ms));
        (from <= to).then_some((from, to))
    }

    fn codec_error(&self, raw: &[u8]) -> StoreError {
        StoreError::Codec {
            store: self.name.clone(),
            message: format!("key of {} bytes is not a window key", raw.len()),
        }
    }

    fn iterator(&self) -> DBRawIterator<'_> {
        self.db.raw_iterator()
    }
}

/// The stored key: segment prefix, then the window key.
fn stored_key(segment: i64, key: &[u8], window_start: i64) -> Vec<u8> {
    let window_key = encode_window_key(key, window_start);
    let mut out = Vec::with_capacity(PREFIX + window_key.len());
    out.extend_from_slice(&encode_time(segment));
    out.extend_from_slice(&window_key);
    out
}

/// (segment id, key, window start) of a stored key.
fn split_stored(raw: &[u8]) -> Option<(i64, &[u8], i64)> {
    let prefix: [u8; PREFIX] = raw.get(..PREFIX)?.try_into().ok()?;
    let (key, start) = decode_window_key(&raw[PREFIX..])?;
    Some((crate::window::decode_time(prefix), key, start))
}

/// What a read of `from..=to` visits: the live part of the range and its segments; `None` when
/// nothing can be there.
fn read_plan(shared: &Shared, from: i64, to: i64) -> Option<(i64, i64, Vec<i64>)> {
    let (from, to) = shared.live_range(from, to)?;
    let segments = shared.segments_between(from, to);
    (!segments.is_empty()).then_some((from, to, segments))
}

/// `key`'s entries with `from <= window start <= to`, oldest first, with a fresh iterator.
fn fetch(
    shared: &Shared,
    key: &[u8],
    from: i64,
    to: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    match read_plan(shared, from, to) {
        None => Ok(Vec::new()),
        Some(plan) => scan_key(shared, &mut shared.iterator(), key, plan),
    }
}

/// The entries of `key` in the planned segments and range, read with `it`.
fn scan_key(
    shared: &Shared,
    it: &mut DBRawIterator<'_>,
    key: &[u8],
    (from, to, segments): (i64, i64, Vec<i64>),
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for segment in segments {
        let upper = stored_key(segment, key, to);
        it.seek(stored_key(segment, key, from));
        while it.valid() {
            let (Some(raw), Some(value)) = (it.key(), it.value()) else {
                break;
            };
            if raw > upper.as_slice() {
                break;
            }
            let (_, _, start) = split_stored(raw).ok_or_else(|| shared.codec_error(raw))?;
            out.push((start, value.to_vec()));
            it.next();
        }
        it.status()
            .map_err(|e| backend(&shared.name, "iterate", e))?;
    }
    Ok(out)
}

fn fetch_all(
    shared: &Shared,
    from: i64,
    to: i64,
    f: &mut WindowVisitor<'_>,
) -> Result<(), StoreError> {
    let Some((from, to)) = shared.live_range(from, to) else {
        return Ok(());
    };
    let segments = shared.segments_between(from, to);
    if segments.is_empty() {
        return Ok(());
    }
    let mut it = shared.iterator();
    for segment in segments {
        let prefix = encode_time(segment);
        it.seek(prefix);
        while it.valid() {
            let (Some(raw), Some(value)) = (it.key(), it.value()) else {
                break;
            };
            if !raw.starts_with(&prefix) {
                break;
            }
            let (_, key, start) = split_stored(raw).ok_or_else(|| shared.codec_error(raw))?;
            if (from..=to).contains(&start) && !f(key, start, value) {
                return Ok(());
            }
            it.next();
        }
        it.status()
            .map_err(|e| backend(&shared.name, "iterate", e))?;
    }
    Ok(())
}

/// A [`WindowStore`] on one RocksDB database, cut into time segments by key prefix; see the
/// module documentation.
pub struct RocksDbWindowStore {
    dir: PathBuf,
    shared: Arc<Shared>,
    /// WAL disabled; see the module documentation.
    write_opts: WriteOptions,
    /// This handle is the directory's one writer while it lives.
    _writer: WriterGuard,
    /// The iterator [`WindowStore::fetch`] reads with, dropped on every write.
    reads: IteratorCache,
}

impl fmt::Debug for RocksDbWindowStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksDbWindowStore")
            .field("name", &self.shared.name)
            .field("dir", &self.dir)
            .field("retention_ms", &self.shared.retention_ms)
            .field("observed", &self.shared.observed())
            .finish_non_exhaustive()
    }
}

impl RocksDbWindowStore {
    /// The time span of one segment for this retention: half the retention, at least a minute
    /// (as in Kafka Streams), so that about three segments exist at a time.
    pub fn segment_interval(retention_ms: i64) -> i64 {
        (retention_ms / 2).max(MIN_SEGMENT_INTERVAL_MS)
    }

    /// Open (creating `dir` and its parents if needed) window store `name` in `dir`, keeping
    /// entries for `retention_ms` of observed time.
    ///
    /// Finds the segments already there and recovers the observed time from the newest one.
    /// As for [`crate::rocks::RocksDbStore::open`], a database still open for readers is shared
    /// (see [`crate::rocks_registry`]) and every failure is a [`StoreError::Open`]. Fails if its
    /// segments were cut with another interval (the retention changed since they were written:
    /// [`RocksDbWindowStore::destroy`] the directory and restore from the changelog).
    pub fn open(dir: &Path, name: &str, retention_ms: i64) -> Result<Self, StoreError> {
        let interval = Self::segment_interval(retention_ms);
        let (shared, writer) = open_shared(dir, name, |db| {
            let shared = Shared {
                name: name.to_owned(),
                retention_ms,
                interval,
                db,
                segments: RwLock::new(BTreeSet::new()),
                observed: AtomicI64::new(i64::MIN),
            };
            let (segments, observed) = scan_segments(&shared)?;
            *shared.write() = segments;
            shared.observed.store(observed, Ordering::Release);
            Ok(shared)
        })?;
        if shared.retention_ms != retention_ms {
            // Readers of the old handle read with the old retention: wait for them to finish.
            return Err(open_error(
                name,
                dir,
                OpenFailure::Locked,
                "open",
                format!(
                    "still open for readers with retention {} ms, not {retention_ms} ms",
                    shared.retention_ms
                ),
            ));
        }
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(true);
        tracing::debug!(
            store = name,
            dir = %dir.display(),
            segments = shared.read().len(),
            observed = shared.observed(),
            "opened rocksdb window store"
        );
        let store = Self {
            dir: dir.to_owned(),
            reads: IteratorCache::new(Arc::clone(&shared)),
            shared,
            write_opts,
            _writer: writer,
        };
        store.drop_expired_segments()?;
        Ok(store)
    }

    /// The directory holding this store's database.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Start times of the segments that may hold entries, oldest first.
    pub fn segment_starts(&self) -> Vec<i64> {
        self.shared
            .read()
            .iter()
            .map(|id| segment_start(*id, self.shared.interval))
            .collect()
    }

    /// A read handle for other threads (e.g. HTTP queries) that sees every write of this store.
    pub fn reader(&self) -> RocksDbWindowReader {
        RocksDbWindowReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Delete the store's directory and everything in it (database, checkpoint). A missing
    /// directory is fine. The store (and its readers) must be closed first.
    pub fn destroy(dir: &Path) -> Result<(), StoreError> {
        // One directory per store, as for the key-value store: the same removal.
        crate::rocks::RocksDbStore::destroy(dir)
    }

    /// Delete every segment entirely older than the oldest retained window start: one range
    /// deletion, plus dropping the SST files that lie wholly inside it.
    fn drop_expired_segments(&self) -> Result<(), StoreError> {
        let oldest = oldest_retained(self.shared.observed(), self.shared.retention_ms);
        let cutoff = self.shared.segment_id(oldest);
        let Some(first) = self.shared.read().first().copied() else {
            return Ok(());
        };
        if first >= cutoff {
            return Ok(());
        }
        let (from, to) = (encode_time(first), encode_time(cutoff));
        let err = |what: &str| {
            let name = self.shared.name.clone();
            let what = what.to_owned();
            move |e| backend(&name, &what, e)
        };
        self.shared
            .db
            .delete_file_in_range(from, to)
            .map_err(err("drop expired segment files"))?;
        let mut batch = WriteBatch::default();
        batch.delete_range(from, to);
        self.shared
            .db
            .write_opt(batch, &self.write_opts)
            .map_err(err("drop expired segments"))?;
        let mut segments = self.shared.write();
        let kept = segments.split_off(&cutoff);
        *segments = kept;
        tracing::debug!(store = %self.shared.name, below = segment_start(cutoff, self.shared.interval), "dropped expired window segments");
        Ok(())
    }

    /// Remember that segment `id` may hold entries now.
    fn note_segment(&self, id: i64) {
        if !self.shared.read().contains(&id) {
            self.shared.write().insert(id);
        }
    }
}

/// The live segments and the observed time of a freshly opened database: one seek per segment,
/// plus a scan of the newest one (keys sort by key before time, so its largest time can be
/// anywhere in it).
fn scan_segments(shared: &Shared) -> Result<(BTreeSet<i64>, i64), StoreError> {
    let mut segments = BTreeSet::new();
    let mut it = shared.iterator();
    it.seek_to_first();
    while it.valid() {
        let Some(raw) = it.key() else { break };
        let (id, _, start) = split_stored(raw).ok_or_else(|| shared.codec_error(raw))?;
        if shared.segment_id(start) != id {
            return Err(StoreError::Backend {
                store: shared.name.clone(),
                message: format!(
                    "stored segments do not match the {} ms segment interval (retention \
                     changed?); destroy the store to rebuild it from the changelog",
                    shared.interval
                ),
            });
        }
        segments.insert(id);
        match id.checked_add(1) {
            Some(next) => it.seek(encode_time(next)),
            None => break,
        }
    }
    it.status()
        .map_err(|e| backend(&shared.name, "iterate", e))?;
    let mut observed = i64::MIN;
    if let Some(newest) = segments.last() {
        let prefix = encode_time(*newest);
        for item in shared
            .db
            .iterator(IteratorMode::From(&prefix, rocksdb::Direction::Forward))
        {
            let (raw, _) = item.map_err(|e| backend(&shared.name, "iterate", e))?;
            if !raw.starts_with(&prefix) {
                break;
            }
            let (_, _, start) = split_stored(&raw).ok_or_else(|| shared.codec_error(&raw))?;
            observed = observed.max(start);
        }
    }
    Ok((segments, observed))
}

fn segment_start(id: i64, interval: i64) -> i64 {
    id.saturating_mul(interval)
}

impl WindowStore for RocksDbWindowStore {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn retention_ms(&self) -> i64 {
        self.shared.retention_ms
    }

    fn observed_time(&self) -> i64 {
        self.shared.observed()
    }

    fn put(&mut self, key: &[u8], window_start: i64, value: &[u8]) -> Result<bool, StoreError> {
        self.reads.invalidate();
        let observed = self.shared.observed();
        if window_start < oldest_retained(observed, self.shared.retention_ms) {
            return Ok(false);
        }
        let id = self.shared.segment_id(window_start);
        self.note_segment(id);
        self.shared
            .db
            .put_opt(stored_key(id, key, window_start), value, &self.write_opts)
            .map_err(|e| backend(&self.shared.name, "put", e))?;
        if window_start > observed {
            self.shared.observed.store(window_start, Ordering::Release);
            self.drop_expired_segments()?;
        }
        Ok(true)
    }

    fn delete(&mut self, key: &[u8], window_start: i64) -> Result<(), StoreError> {
        self.reads.invalidate();
        let id = self.shared.segment_id(window_start);
        if self.shared.read().contains(&id) {
            self.shared
                .db
                .delete_opt(stored_key(id, key, window_start), &self.write_opts)
                .map_err(|e| backend(&self.shared.name, "delete", e))?;
        }
        if window_start > self.shared.observed() {
            self.shared.observed.store(window_start, Ordering::Release);
            self.drop_expired_segments()?;
        }
        Ok(())
    }

    /// Reads with the kept iterator ([`iterator_cache`]).
    fn fetch(&self, key: &[u8], from: i64, to: i64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        match read_plan(&self.shared, from, to) {
            None => Ok(Vec::new()),
            Some(plan) => self
                .reads
                .with(|shared, it| scan_key(shared, it, key, plan)),
        }
    }

    /// Reads with a fresh iterator (rare: punctuation), so that `f` may read this store too.
    fn fetch_all(&self, from: i64, to: i64, f: &mut WindowVisitor<'_>) -> Result<(), StoreError> {
        fetch_all(&self.shared, from, to, f)
    }

    /// Flush the memtables to SST files and wait for it: with the WAL off, this is what makes
    /// the writes so far survive a crash.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.shared
            .db
            .flush()
            .map_err(|e| backend(&self.shared.name, "flush", e))
    }

    /// RocksDB's `rocksdb.estimate-num-keys` (may count entries of dropped segments until
    /// compaction removes them).
    fn approximate_len(&self) -> Result<u64, StoreError> {
        self.shared
            .db
            .property_int_value("rocksdb.estimate-num-keys")
            .map(Option::unwrap_or_default)
            .map_err(|e| backend(&self.shared.name, "read rocksdb.estimate-num-keys", e))
    }

    /// Same result as applying the records one by one with `put`/`delete`, in one `WriteBatch`.
    fn restore_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        self.reads.invalidate();
        let retention = self.shared.retention_ms;
        let mut observed = self.shared.observed();
        let mut touched = BTreeSet::new();
        // (segment id, stored key, value or tombstone)
        type Write<'a> = (i64, Vec<u8>, Option<&'a Vec<u8>>);
        let mut writes: Vec<Write<'_>> = Vec::with_capacity(entries.len());
        for (raw, value) in entries {
            let Some((key, start)) = decode_window_key(raw) else {
                return Err(StoreError::Codec {
                    store: self.shared.name.clone(),
                    message: format!("changelog key of {} bytes is not a window key", raw.len()),
                });
            };
            let id = self.shared.segment_id(start);
            match value {
                Some(v) => {
                    if start < oldest_retained(observed, retention) {
                        continue;
                    }
                    touched.insert(id);
                    observed = observed.max(start);
                    writes.push((id, stored_key(id, key, start), Some(v)));
                }
                None => {
                    observed = observed.max(start);
                    writes.push((id, stored_key(id, key, start), None));
                }
            }
        }
        // Segments the batch expired entirely would have been dropped, with what was put in
        // them, as soon as observed time passed them: do not write them at all.
        let cutoff = self.shared.segment_id(oldest_retained(observed, retention));
        let mut batch = WriteBatch::default();
        for (id, stored, value) in writes {
            if id < cutoff {
                continue;
            }
            match value {
                Some(v) => batch.put(stored, v),
                None => batch.delete(stored),
            }
        }
        for id in touched.range(cutoff..) {
            self.note_segment(*id);
        }
        self.shared
            .db
            .write_opt(batch, &self.write_opts)
            .map_err(|e| backend(&self.shared.name, "write batch", e))?;
        self.shared.observed.store(observed, Ordering::Release);
        self.drop_expired_segments()
    }
}

/// A cheap, cloneable read handle on a [`RocksDbWindowStore`], for threads other than the
/// writer. It sees the store's writes as they happen, including segment expiry.
///
/// It keeps the database open: the store's directory cannot be reopened while any reader is
/// alive, so the query layer must drop its readers when a task closes.
#[derive(Clone)]
pub struct RocksDbWindowReader {
    shared: Arc<Shared>,
}

impl fmt::Debug for RocksDbWindowReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksDbWindowReader")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl RocksDbWindowReader {
    /// The store's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// As [`WindowStore::fetch`]: `key`'s entries with `from <= window start <= to`, oldest first.
    pub fn fetch(&self, key: &[u8], from: i64, to: i64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        fetch(&self.shared, key, from, to)
    }

    /// As [`WindowStore::fetch_all`]: every entry with `from <= window start <= to`, by segment,
    /// then key, then time, until `f` returns `false`.
    pub fn fetch_all(
        &self,
        from: i64,
        to: i64,
        f: &mut WindowVisitor<'_>,
    ) -> Result<(), StoreError> {
        fetch_all(&self.shared, from, to, f)
    }
}

#[cfg(test)]
mod tests;
