//! The process-wide registry of open RocksDB databases, keyed by directory.
//!
//! Entry point: [`open_shared`], used by `RocksDbStore::open` and `RocksDbWindowStore::open`.
//!
//! # Why a registry: readers never keep a reassignment out
//!
//! Query threads read a store through reader handles that share the open database (an `Arc`).
//! A long-poll (`GET /orders/{id}?wait_for=...&timeout_ms=60000`) holds its reader for up to a
//! minute. If its partition is revoked and assigned back meanwhile, the task is closed and the
//! same directory opened again while the reader still holds the database, and with it RocksDB's
//! `LOCK`: a plain `DB::open` fails ("lock hold by current process").
//!
//! Kafka Streams users expect a query never to block a rebalance, and a store handle to keep
//! working when its partition comes back (their `ReadOnlyKeyValueStore` resolves the current
//! store on every call). So here the reopen does not wait for readers and does not fail: it
//! *shares the database the readers still hold*. The registry maps each directory to a weak
//! reference of its open database; an open finds it alive and reuses it, so the new task writes
//! into the very database the long-poll reads, and the long-poll sees the partition's new
//! writes. The database closes (and releases its lock) when the last handle of any kind drops.
//!
//! Writers stay exclusive: one store handle per directory at a time (readers do not count), as
//! RocksDB's own lock guaranteed before. A second writer gets [`OpenFailure::Locked`], which the
//! caller retries; it never deletes anything.

use std::any::Any;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use rocksdb::DB;

use crate::open::{classify_io, classify_message, open_error, OpenFailure, StoreFormat};
use crate::rocks::db_options;
use crate::store::StoreError;

/// One directory's open database, as some store type `T` wraps it.
struct Entry {
    live: Weak<dyn Any + Send + Sync>,
    /// A store handle (the only writer) is open on it.
    writer: bool,
}

fn registry() -> MutexGuard<'static, HashMap<PathBuf, Entry>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Entry>>> = OnceLock::new();
    REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Marks a directory's database as open for writing while alive; held by the store handle.
pub(crate) struct WriterGuard {
    key: PathBuf,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let mut reg = registry();
        if let Some(e) = reg.get_mut(&self.key) {
            e.writer = false;
        }
        reg.retain(|_, e| e.writer || e.live.strong_count() > 0);
    }
}

/// Classify a RocksDB error met while opening: `Corruption` is the one kind that proves the
/// files unusable; lock, handle and disk errors (and everything else) are retried.
pub(crate) fn classify_rocksdb(e: &rocksdb::Error) -> OpenFailure {
    match e.kind() {
        rocksdb::ErrorKind::Corruption => OpenFailure::Corrupt,
        _ => classify_message(e.as_ref()),
    }
}

/// Open the database in `dir` for writing as a `T` (built by `wrap` from a freshly opened
/// database), or share the one still alive there (readers outliving a closed store).
///
/// Creates `dir` if needed and checks its [`StoreFormat`] before RocksDB sees it. Every failure
/// is a [`StoreError::Open`] whose [`OpenFailure`] says whether the files are to blame.
pub(crate) fn open_shared<T: Any + Send + Sync>(
    dir: &Path,
    name: &str,
    wrap: impl FnOnce(DB) -> Result<T, StoreError>,
) -> Result<(Arc<T>, WriterGuard), StoreError> {
    let io = |what: &str, e: std::io::Error| open_error(name, dir, classify_io(&e), what, e);
    fs::create_dir_all(dir).map_err(|e| io("create store directory", e))?;
    let key = fs::canonicalize(dir).map_err(|e| io("resolve store directory", e))?;
    // Held across the open, so two opens of one directory cannot race.
    let mut reg = registry();
    if let Some(entry) = reg.get(&key) {
        if entry.writer {
            return Err(open_error(
                name,
                dir,
                OpenFailure::Locked,
                "open",
                "already open for writing in this process",
            ));
        }
        if let Some(live) = entry.live.upgrade() {
            let shared = live.downcast::<T>().map_err(|_| {
                open_error(
                    name,
                    dir,
                    OpenFailure::Locked,
                    "open",
                    "open as another kind",
                )
            })?;
            reg.insert(
                key.clone(),
                Entry {
                    live: Arc::downgrade(&shared) as Weak<dyn Any + Send + Sync>,
                    writer: true,
                },
            );
            tracing::info!(store = name, dir = %dir.display(), "reopened a store still open for readers; sharing it");
            return Ok((shared, WriterGuard { key }));
        }
    }
    StoreFormat::check(dir, name)?;
    let db = DB::open(&db_options(), dir)
        .map_err(|e| open_error(name, dir, classify_rocksdb(&e), "open", e))?;
    StoreFormat::ensure(dir, name)?;
    let shared = Arc::new(wrap(db)?);
    reg.insert(
        key.clone(),
        Entry {
            live: Arc::downgrade(&shared) as Weak<dyn Any + Send + Sync>,
            writer: true,
        },
    );
    Ok((shared, WriterGuard { key }))
}

/// Fail with [`OpenFailure::Locked`] if any handle on `dir`'s database is alive in this process:
/// its files must not be deleted under it.
pub(crate) fn ensure_closed(dir: &Path) -> Result<(), StoreError> {
    let Ok(key) = fs::canonicalize(dir) else {
        return Ok(());
    };
    match registry().get(&key) {
        Some(e) if e.writer || e.live.strong_count() > 0 => Err(open_error(
            &dir.display().to_string(),
            dir,
            OpenFailure::Locked,
            "destroy",
            "the database is still open in this process",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use rocksdb::{Options, DB};

    use crate::checkpoint::Checkpoint;
    use crate::open::{OpenFailure, StoreFormat};
    use crate::rocks::RocksDbStore;
    use crate::rocks_window::RocksDbWindowStore;
    use crate::store::{KeyValueStore, StoreError};
    use crate::window::WindowStore;

    fn filled(dir: &Path) -> RocksDbStore {
        let mut s = RocksDbStore::open(dir, "orders").unwrap();
        s.put(b"k", b"v").unwrap();
        s.flush().unwrap();
        Checkpoint::new(7).write(dir).unwrap();
        s
    }

    fn failure(e: &StoreError) -> OpenFailure {
        e.open_failure()
            .unwrap_or_else(|| panic!("not an open error: {e:?}"))
    }

    fn assert_intact(dir: &Path) {
        let s = RocksDbStore::open(dir, "orders").unwrap();
        assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(Checkpoint::read(dir).unwrap(), Some(Checkpoint::new(7)));
    }

    #[test]
    fn a_second_writer_is_locked_and_retryable_and_the_data_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders-0");
        let first = filled(&dir);
        let err = RocksDbStore::open(&dir, "orders").unwrap_err();
        assert_eq!(failure(&err), OpenFailure::Locked, "{err}");
        assert!(!err.is_unusable());
        assert_eq!(first.get(b"k").unwrap(), Some(b"v".to_vec()));
        drop(first);
        assert_intact(&dir);
    }

    #[test]
    fn rocksdb_lock_held_outside_the_registry_is_locked_not_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders-0");
        drop(filled(&dir));
        // Held as another process (or a stray handle) would: RocksDB's own LOCK.
        let raw = DB::open(&Options::default(), &dir).unwrap();
        let err = RocksDbStore::open(&dir, "orders").unwrap_err();
        assert_eq!(failure(&err), OpenFailure::Locked, "{err}");
        assert!(!err.is_unusable());
        let err = RocksDbWindowStore::open(&dir, "orders", 60_000).unwrap_err();
        assert_eq!(failure(&err), OpenFailure::Locked, "{err}");
        drop(raw);
        assert_intact(&dir);
    }

    #[test]
    fn a_reader_outliving_its_store_is_shared_by_the_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders-0");
        let store = filled(&dir);
        let reader = store.reader();
        drop(store);
        // A task reopening the partition while a long-poll still reads it.
        let mut reopened = RocksDbStore::open(&dir, "orders").unwrap();
        reopened.put(b"k", b"v2").unwrap();
        assert_eq!(reader.get(b"k").unwrap(), Some(b"v2".to_vec()));
        // Files are never deleted under a live handle.
        drop(reopened);
        let err = RocksDbStore::destroy(&dir).unwrap_err();
        assert_eq!(failure(&err), OpenFailure::Locked, "{err}");
        assert_eq!(reader.get(b"k").unwrap(), Some(b"v2".to_vec()));
        drop(reader);
        RocksDbStore::destroy(&dir).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn a_window_reader_outliving_its_store_is_shared_by_the_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("alerts-0");
        let mut store = RocksDbWindowStore::open(&dir, "alerts", 600_000).unwrap();
        store.put(b"k", 1_000, b"a").unwrap();
        let reader = store.reader();
        drop(store);
        let mut reopened = RocksDbWindowStore::open(&dir, "alerts", 600_000).unwrap();
        reopened.put(b"k", 2_000, b"b").unwrap();
        assert_eq!(reader.fetch(b"k", 0, 10_000).unwrap().len(), 2);
        drop(reopened);
        // Another retention while the old readers live: wait, never wipe.
        let err = RocksDbWindowStore::open(&dir, "alerts", 60_000).unwrap_err();
        assert_eq!(failure(&err), OpenFailure::Locked, "{err}");
        drop(reader);
        let store = RocksDbWindowStore::open(&dir, "alerts", 600_000).unwrap();
        assert_eq!(store.fetch(b"k", 0, 10_000).unwrap().len(), 2);
    }

    #[test]
    fn corrupt_files_are_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders-0");
        drop(filled(&dir));
        fs::write(dir.join("CURRENT"), b"garbage without a newline").unwrap();
        let err = RocksDbStore::open(&dir, "orders").unwrap_err();
        assert_eq!(failure(&err), OpenFailure::Corrupt, "{err}");
        assert!(err.is_unusable());
        // Classifying is all the store does: deleting is the owner's decision.
        assert!(dir.join("CURRENT").exists());
    }

    #[test]
    fn an_unknown_store_format_is_unusable_and_rocksdb_never_sees_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders-0");
        drop(filled(&dir));
        StoreFormat::write_version(&dir, 99).unwrap();
        let err = RocksDbStore::open(&dir, "orders").unwrap_err();
        assert_eq!(failure(&err), OpenFailure::UnsupportedFormat, "{err}");
        assert!(err.is_unusable());
        let err = RocksDbWindowStore::open(&dir, "orders", 60_000).unwrap_err();
        assert!(err.is_unusable(), "{err}");
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_retryable() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = RocksDbStore::open(&file.join("orders-0"), "orders").unwrap_err();
        assert!(!err.is_unusable(), "{err}");
        assert_eq!(fs::read(&file).unwrap(), b"x");
    }
}
