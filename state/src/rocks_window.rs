//! The RocksDB window store: a [`WindowStore`] on disk, cut into time segments.
//!
//! Entry point: [`RocksDbWindowStore::open`]. Layout, as in Kafka Streams' segmented stores:
//! window starts are grouped into segments of [`RocksDbWindowStore::segment_interval`] ms, and
//! each segment is its own RocksDB database in `<dir>/<store>.<segment start ms>` (other files in
//! `<dir>`, such as the `.checkpoint`, are left alone). Inside a segment the keys are
//! [`encode_window_key`] (length-prefixed key, then the window start in order-preserving bytes),
//! so one key's windows are one contiguous, time-ordered range; values are the raw value bytes.
//!
//! Why segments: entries expire by time, and deleting them one by one would cost a tombstone
//! each plus the compaction work to get rid of them. Here, once observed time has moved past a
//! whole segment, the segment's database is closed and its directory removed: expiry is one
//! `remove_dir_all` and no compaction. Entries of the partly expired oldest segment stay on disk
//! until the whole segment goes, and reads hide them by clamping to [`oldest_retained`].
//!
//! Threads: the task thread owns the [`RocksDbWindowStore`] and is its only writer; query threads
//! read through [`RocksDbWindowReader`]s ([`RocksDbWindowStore::reader`]). Store and readers share
//! the segment map and the observed time, and read through the same functions, so they cannot
//! disagree. A reader in the middle of a read keeps the segments it reads open (an `Arc`), even
//! if the store drops them meanwhile.
//!
//! Durability: as for [`crate::rocks::RocksDbStore`], writes skip RocksDB's write-ahead log. What
//! makes the state durable is the changelog topic plus the checkpoint file written after
//! [`WindowStore::flush`]; records past the checkpoint are replayed with
//! [`WindowStore::restore_batch`] after a crash. On open, observed time is recovered from the
//! newest segment on disk, so expiry (and the refusal of too-old puts) continues where it was.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::rocks::{backend, db_options};
use crate::store::StoreError;
use crate::window::{
    decode_window_key, encode_window_key, oldest_retained, WindowStore, WindowVisitor,
};

/// Smallest segment interval, as in Kafka Streams: short retentions would otherwise make many
/// tiny databases.
const MIN_SEGMENT_INTERVAL_MS: i64 = 60_000;

/// One segment's open database. Fields drop in declaration order: the database closes before
/// `dir` removes the directory of an expired segment.
struct Segment {
    db: DB,
    dir: SegmentDir,
}

impl Segment {
    fn open(store: &str, path: PathBuf) -> Result<Self, StoreError> {
        let db = DB::open(&db_options(), &path)
            .map_err(|e| backend(store, &format!("open {}", path.display()), e))?;
        let dir = SegmentDir {
            path,
            store: store.to_owned(),
            expired: AtomicBool::new(false),
        };
        Ok(Self { db, dir })
    }
}

/// A segment's directory, removed when the segment is dropped after it expired.
///
/// Removal waits for the database to close: a RocksDB still open (a reader in the middle of a
/// read when the store dropped the segment) may write files into its directory, which would
/// make a concurrent `remove_dir_all` fail.
struct SegmentDir {
    path: PathBuf,
    store: String,
    expired: AtomicBool,
}

impl SegmentDir {
    fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            result => result,
        }
    }
}

impl Drop for SegmentDir {
    /// Runs in whichever thread lets go of an expired segment last, when that is not the store's
    /// own [`RocksDbWindowStore::drop_expired_segments`] (which reports failures itself).
    fn drop(&mut self) {
        if *self.expired.get_mut() {
            if let Err(error) = self.remove() {
                // Left over; the next open drops it again.
                tracing::warn!(store = %self.store, dir = %self.path.display(), %error,
                    "cannot remove expired window segment");
            }
        }
    }
}

/// What a store and its readers share.
struct Shared {
    name: String,
    retention_ms: i64,
    interval: i64,
    /// Segment id (`window start div_euclid interval`) to its database.
    segments: RwLock<BTreeMap<i64, Arc<Segment>>>,
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

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<i64, Arc<Segment>>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<i64, Arc<Segment>>> {
        self.segments.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The databases of the segments that may hold window starts in `[from, to]`, oldest first.
    /// The lock is released before any I/O happens.
    fn segments_between(&self, from: i64, to: i64) -> Vec<Arc<Segment>> {
        let range = self.segment_id(from)..=self.segment_id(to);
        self.read()
            .range(range)
            .map(|(_, s)| Arc::clone(s))
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
}

fn fetch(
    shared: &Shared,
    key: &[u8],
    from: i64,
    to: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let Some((from, to)) = shared.live_range(from, to) else {
        return Ok(Vec::new());
    };
    let lower = encode_window_key(key, from);
    // The immediate successor of the inclusive upper key: an exclusive bound.
    let mut upper = encode_window_key(key, to);
    upper.push(0);
    let mut out = Vec::new();
    for segment in shared.segments_between(from, to) {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(upper.clone());
        for item in segment
            .db
            .iterator_opt(IteratorMode::From(&lower, Direction::Forward), opts)
        {
            let (raw, value) = item.map_err(|e| backend(&shared.name, "iterate", e))?;
            let (_, start) = decode_window_key(&raw).ok_or_else(|| shared.codec_error(&raw))?;
            out.push((start, value.into_vec()));
        }
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
    for segment in shared.segments_between(from, to) {
        for item in segment.db.iterator(IteratorMode::Start) {
            let (raw, value) = item.map_err(|e| backend(&shared.name, "iterate", e))?;
            let (key, start) = decode_window_key(&raw).ok_or_else(|| shared.codec_error(&raw))?;
            if (from..=to).contains(&start) && !f(key, start, &value) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A [`WindowStore`] on one RocksDB database per time segment; see the module documentation.
pub struct RocksDbWindowStore {
    dir: PathBuf,
    shared: Arc<Shared>,
    /// WAL disabled; see the module documentation.
    write_opts: WriteOptions,
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
    /// Opens every segment directory already there and recovers the observed time from the
    /// newest one. Fails if a segment is already open (in this process or another), or if a
    /// segment directory does not start on a segment boundary of this retention (the retention
    /// changed since it was written: [`RocksDbWindowStore::destroy`] the directory and restore
    /// from the changelog).
    pub fn open(dir: &Path, name: &str, retention_ms: i64) -> Result<Self, StoreError> {
        let io_err = |context: String| {
            move |source| StoreError::Io {
                store: name.to_owned(),
                context,
                source,
            }
        };
        fs::create_dir_all(dir)
            .map_err(io_err(format!("create store directory {}", dir.display())))?;
        let interval = Self::segment_interval(retention_ms);
        let prefix = format!("{name}.");
        let mut segments = BTreeMap::new();
        let listing =
            fs::read_dir(dir).map_err(io_err(format!("list store directory {}", dir.display())))?;
        for entry in listing {
            let entry = entry.map_err(io_err(format!("list store directory {}", dir.display())))?;
            let file_name = entry.file_name();
            let Some(start) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|s| s.parse::<i64>().ok())
            else {
                continue;
            };
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let id = start.div_euclid(interval);
            if segment_start(id, interval) != start {
                return Err(StoreError::Backend {
                    store: name.to_owned(),
                    message: format!(
                        "segment directory {} is not on a boundary of the {interval} ms segment \
                         interval (retention changed?); destroy the store to rebuild it",
                        path.display()
                    ),
                });
            }
            segments.insert(id, Arc::new(Segment::open(name, path)?));
        }
        let shared = Shared {
            name: name.to_owned(),
            retention_ms,
            interval,
            segments: RwLock::new(segments),
            observed: AtomicI64::new(i64::MIN),
        };
        // The newest segment holding anything holds the largest window start ever put (unless
        // it was deleted since: then expiry restarts from a slightly older time, which is safe).
        for segment in shared.read().values().rev() {
            let mut observed = i64::MIN;
            for item in segment.db.iterator(IteratorMode::Start) {
                let (raw, _) = item.map_err(|e| backend(name, "iterate", e))?;
                let (_, start) = decode_window_key(&raw).ok_or_else(|| shared.codec_error(&raw))?;
                observed = observed.max(start);
            }
            if observed != i64::MIN {
                shared.observed.store(observed, Ordering::Release);
                break;
            }
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
            shared: Arc::new(shared),
            write_opts,
        };
        store.drop_expired_segments()?;
        Ok(store)
    }

    /// The directory holding this store's segment directories.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A read handle for other threads (e.g. HTTP queries) that sees every write of this store.
    pub fn reader(&self) -> RocksDbWindowReader {
        RocksDbWindowReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Delete the store's directory and everything in it (segments, checkpoint). A missing
    /// directory is fine. The store (and its readers) must be closed first.
    pub fn destroy(dir: &Path) -> Result<(), StoreError> {
        match fs::remove_dir_all(dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "destroyed rocksdb window store directory");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                store: dir.display().to_string(),
                context: format!("remove store directory {}", dir.display()),
                source,
            }),
        }
    }

    /// The segment for window starts with this id, opened (created) if needed.
    fn segment_for_write(&self, id: i64) -> Result<Arc<Segment>, StoreError> {
        if let Some(segment) = self.shared.read().get(&id) {
            return Ok(Arc::clone(segment));
        }
        // Only this (the writer's) thread adds segments, so nobody can race us to it.
        let start = segment_start(id, self.shared.interval);
        let path = self.dir.join(format!("{}.{start}", self.shared.name));
        tracing::debug!(store = %self.shared.name, dir = %path.display(), "creating window segment");
        let segment = Arc::new(Segment::open(&self.shared.name, path)?);
        self.shared.write().insert(id, Arc::clone(&segment));
        Ok(segment)
    }

    /// Close and delete every segment entirely older than the oldest retained window start.
    fn drop_expired_segments(&self) -> Result<(), StoreError> {
        let oldest = oldest_retained(self.shared.observed(), self.shared.retention_ms);
        let cutoff = self.shared.segment_id(oldest);
        let first = self.shared.read().keys().next().copied();
        if first.is_none_or(|id| id >= cutoff) {
            return Ok(());
        }
        let expired = {
            let mut segments = self.shared.write();
            let kept = segments.split_off(&cutoff);
            std::mem::replace(&mut *segments, kept)
        };
        for segment in expired.values() {
            segment.dir.expired.store(true, Ordering::Release);
        }
        for (_, segment) in expired {
            // Usually the store holds the only handle: close and remove here, reporting failure.
            // Otherwise a read is using it, and the last handle to go removes it.
            let Ok(Segment { db, mut dir }) = Arc::try_unwrap(segment) else {
                continue;
            };
            drop(db);
            *dir.expired.get_mut() = false;
            dir.remove().map_err(|source| StoreError::Io {
                store: self.shared.name.clone(),
                context: format!("remove expired segment {}", dir.path.display()),
                source,
            })?;
            tracing::debug!(store = %self.shared.name, dir = %dir.path.display(), "dropped expired window segment");
        }
        Ok(())
    }
}

fn segment_start(id: i64, interval: i64) -> i64 {
    // Saturates only for the lowest segment id, whose start is then i64::MIN: still unique, and
    // `div_euclid` maps it back to the same id.
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
        let observed = self.shared.observed();
        if window_start < oldest_retained(observed, self.shared.retention_ms) {
            return Ok(false);
        }
        let segment = self.segment_for_write(self.shared.segment_id(window_start))?;
        segment
            .db
            .put_opt(
                encode_window_key(key, window_start),
                value,
                &self.write_opts,
            )
            .map_err(|e| backend(&self.shared.name, "put", e))?;
        if window_start > observed {
            self.shared.observed.store(window_start, Ordering::Release);
            self.drop_expired_segments()?;
        }
        Ok(true)
    }

    fn delete(&mut self, key: &[u8], window_start: i64) -> Result<(), StoreError> {
        let id = self.shared.segment_id(window_start);
        let Some(segment) = self.shared.read().get(&id).map(Arc::clone) else {
            return Ok(());
        };
        segment
            .db
            .delete_opt(encode_window_key(key, window_start), &self.write_opts)
            .map_err(|e| backend(&self.shared.name, "delete", e))
    }

    fn fetch(&self, key: &[u8], from: i64, to: i64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        fetch(&self.shared, key, from, to)
    }

    fn fetch_all(&self, from: i64, to: i64, f: &mut WindowVisitor<'_>) -> Result<(), StoreError> {
        fetch_all(&self.shared, from, to, f)
    }

    /// Flush every segment's memtables to SST files and wait for it: with the WAL off, this is
    /// what makes the writes so far survive a crash.
    fn flush(&mut self) -> Result<(), StoreError> {
        for segment in self.shared.segments_between(i64::MIN, i64::MAX) {
            segment
                .db
                .flush()
                .map_err(|e| backend(&self.shared.name, "flush", e))?;
        }
        Ok(())
    }

    /// Sum of the segments' `rocksdb.estimate-num-keys` (includes not yet dropped expired ones).
    fn approximate_len(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for segment in self.shared.segments_between(i64::MIN, i64::MAX) {
            let n = segment
                .db
                .property_int_value("rocksdb.estimate-num-keys")
                .map_err(|e| backend(&self.shared.name, "read rocksdb.estimate-num-keys", e))?;
            total = total.saturating_add(n.unwrap_or_default());
        }
        Ok(total)
    }

    /// Same result as applying the records one by one with `put`/`delete`, but with one
    /// `WriteBatch` per segment.
    fn restore_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let retention = self.shared.retention_ms;
        let mut observed = self.shared.observed();
        let mut batches: BTreeMap<i64, WriteBatch> = BTreeMap::new();
        for (raw, value) in entries {
            let Some((_, start)) = decode_window_key(raw) else {
                return Err(StoreError::Codec {
                    store: self.shared.name.clone(),
                    message: format!("changelog key of {} bytes is not a window key", raw.len()),
                });
            };
            // `decode_window_key` accepts exact encodings only, so `raw` is the segment key.
            let id = self.shared.segment_id(start);
            match value {
                Some(v) => {
                    if start < oldest_retained(observed, retention) {
                        continue;
                    }
                    batches.entry(id).or_default().put(raw, v);
                    observed = observed.max(start);
                }
                None => {
                    // `delete` is a no-op on a segment that does not exist (yet).
                    if batches.contains_key(&id) || self.shared.read().contains_key(&id) {
                        batches.entry(id).or_default().delete(raw);
                    }
                }
            }
        }
        // Segments the batch expired entirely would have been dropped, with what was put in
        // them, as soon as observed time passed them: do not write them at all.
        let cutoff = self.shared.segment_id(oldest_retained(observed, retention));
        for (id, batch) in batches.split_off(&cutoff) {
            self.segment_for_write(id)?
                .db
                .write_opt(batch, &self.write_opts)
                .map_err(|e| backend(&self.shared.name, "write batch", e))?;
        }
        self.shared.observed.store(observed, Ordering::Release);
        self.drop_expired_segments()
    }
}

/// A cheap, cloneable read handle on a [`RocksDbWindowStore`], for threads other than the
/// writer. It sees the store's writes as they happen, including segment expiry.
///
/// It keeps the segments it knows open: the store's directory cannot be reopened while any
/// reader is alive, so the query layer must drop its readers when a task closes.
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
