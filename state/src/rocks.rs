//! The RocksDB key-value store: the bottom layer of every persistent store.
//!
//! Entry point: [`RocksDbStore::open`]. One RocksDB database per (store, partition) directory, as
//! in Kafka Streams (`<state-dir>/<task>/rocksdb/<store>`): a partition's state can then be
//! wiped ([`RocksDbStore::destroy`]), restored, or handed to another instance without touching
//! the other partitions.
//!
//! Threads: the task thread owns the [`RocksDbStore`] and is its only writer; query threads read
//! through [`RocksDbReader`] handles ([`RocksDbStore::reader`]), which share the open database.
//!
//! Durability: writes skip RocksDB's write-ahead log (see [`RocksDbStore::open`]). What makes the
//! state durable is the changelog topic plus the checkpoint file written after
//! [`KeyValueStore::flush`]; see [`crate::checkpoint`].

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, DBCompressionType, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use crate::rocks_memory::{shared_cache, shared_write_buffers, write_buffer_bytes};
use crate::rocks_registry::{ensure_closed, open_shared, WriterGuard};
use crate::store::{KeyValueStore, StoreError};

/// Options tuned for this workload: write-heavy (every event is a read-modify-write of its order),
/// reads by point lookup only (no range scans except a full `for_each`), on a small machine.
pub(crate) fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    // Two cores: two background threads, one flush and one compaction at a time. More would only
    // take CPU from the task threads that produce the writes.
    opts.increase_parallelism(2);
    opts.set_max_background_jobs(2);
    // Memory: every store's memtables and blocks count against the process's one budget
    // (`--state-memory-mb`, see crate::rocks_memory): memtables through the shared write-buffer
    // manager, which charges them to the shared block cache.
    opts.set_write_buffer_size(write_buffer_bytes());
    opts.set_write_buffer_manager(shared_write_buffers());
    // LZ4 costs little CPU and still shrinks values with repeated field content (ids, currencies,
    // states) several-fold; the stronger codecs are not worth the cores we do not have.
    opts.set_compression_type(DBCompressionType::Lz4);
    // RocksDB writes an info LOG into every database directory; with one database per store and
    // partition these add up, so keep them small.
    opts.set_keep_log_file_num(2);
    opts.set_max_log_file_size(1 << 20);

    let mut table = BlockBasedOptions::default();
    // A full (not block-based) bloom filter at 10 bits per key (~1% false positives): the first
    // event of every order looks up a key that does not exist yet, as does every 404 query; the
    // filter answers those without reading a data block.
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(shared_cache());
    // Count index and filter blocks against the shared cache (bounded memory), but keep L0's
    // pinned so the freshest, most-read files never lose their filters.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&table);
    opts
}

/// A [`KeyValueStore`] on one RocksDB database in its own directory.
pub struct RocksDbStore {
    name: String,
    dir: PathBuf,
    /// Shared with [`RocksDbReader`]s; the database closes when the last handle drops.
    db: Arc<DB>,
    /// WAL disabled; see [`RocksDbStore::open`].
    write_opts: WriteOptions,
    /// This handle is the directory's one writer while it lives.
    _writer: WriterGuard,
}

impl fmt::Debug for RocksDbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksDbStore")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl RocksDbStore {
    /// Open (creating if needed) the database of store `name` in `dir`, creating `dir` and its
    /// parents.
    ///
    /// Writes go without RocksDB's write-ahead log, as in Kafka Streams. The WAL would make every
    /// write durable on its own, at the cost of writing every byte twice; here durability comes
    /// from elsewhere: every write is also in the changelog topic, and the checkpoint file records
    /// the changelog offset up to which the local files are complete. The owner calls
    /// [`KeyValueStore::flush`] (memtables to SST files) before writing a checkpoint, so the
    /// checkpoint is true; after a crash, the records past it are replayed from the changelog.
    /// Without a WAL, what survives a crash is the last flushed state, which is always a prefix
    /// of the writes in order, so replaying from the checkpoint gives the right result. (On a
    /// clean close RocksDB flushes the memtables itself.)
    ///
    /// A database still open for [`RocksDbReader`]s that outlived their store (a long-poll across
    /// a reassignment) is shared, not opened again: see [`crate::rocks_registry`]. Fails with a
    /// [`StoreError::Open`] if another store handle of this process has the directory open, or
    /// another process does ([`OpenFailure::Locked`](crate::open::OpenFailure::Locked)), or the
    /// files cannot be read; only corruption and an unknown store format are
    /// [`StoreError::is_unusable`].
    pub fn open(dir: &Path, name: &str) -> Result<Self, StoreError> {
        let (db, writer) = open_shared(dir, name, Ok)?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(true);
        tracing::debug!(store = name, dir = %dir.display(), "opened rocksdb store");
        Ok(Self {
            name: name.to_owned(),
            dir: dir.to_owned(),
            db,
            write_opts,
            _writer: writer,
        })
    }

    /// A RocksDB integer property of this database (e.g. `rocksdb.block-cache-capacity`,
    /// `rocksdb.cur-size-all-mem-tables`); `None` if RocksDB does not know it.
    pub fn property_u64(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.db
            .property_int_value(name)
            .map_err(|e| backend(&self.name, name, e))
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A read handle for other threads (e.g. HTTP queries) that sees every write of this store.
    pub fn reader(&self) -> RocksDbReader {
        RocksDbReader {
            name: Arc::from(self.name.as_str()),
            db: Arc::clone(&self.db),
        }
    }

    /// Apply many changes in one atomic write, as the restore path does with a batch of
    /// changelog records. `None` deletes the key. Later entries win over earlier ones for the
    /// same key, as if applied one by one.
    pub fn put_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (key, value) in entries {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(|e| backend(&self.name, "write batch", e))
    }

    /// Remove the store directory and everything in it (database and checkpoint), for a fresh
    /// restore. A missing directory is fine. The store must be closed: drop the
    /// [`RocksDbStore`] and all its [`RocksDbReader`]s first.
    ///
    /// Refuses ([`OpenFailure::Locked`](crate::open::OpenFailure::Locked)) while any handle on
    /// the database is alive in this process: files are never deleted under an open database.
    pub fn destroy(dir: &Path) -> Result<(), StoreError> {
        ensure_closed(dir)?;
        match fs::remove_dir_all(dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "destroyed rocksdb store directory");
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
}

impl KeyValueStore for RocksDbStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(|e| backend(&self.name, "get", e))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_opt(key, value, &self.write_opts)
            .map_err(|e| backend(&self.name, "put", e))
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.db
            .delete_opt(key, &self.write_opts)
            .map_err(|e| backend(&self.name, "delete", e))
    }

    /// Flush the memtables to SST files and wait for it: with the WAL off, this is what makes the
    /// writes so far survive a crash.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| backend(&self.name, "flush", e))
    }

    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, value) = item.map_err(|e| backend(&self.name, "iterate", e))?;
            if !f(&key, &value) {
                break;
            }
        }
        Ok(())
    }

    fn approximate_len(&self) -> Result<u64, StoreError> {
        estimate_num_keys(&self.db, &self.name)
    }

    fn write_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        self.put_batch(entries)
    }
}

/// A cheap, cloneable read handle on a [`RocksDbStore`], for threads other than the writer.
///
/// It keeps the database open: the store's directory cannot be reopened or destroyed while any
/// reader is alive, so the query layer must drop its readers when a task closes.
#[derive(Clone)]
pub struct RocksDbReader {
    name: Arc<str>,
    db: Arc<DB>,
}

impl fmt::Debug for RocksDbReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksDbReader")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RocksDbReader {
    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value under `key`, as last written by the store (including unflushed writes).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(|e| backend(&self.name, "get", e))
    }

    /// Estimated number of entries (RocksDB's `rocksdb.estimate-num-keys`).
    pub fn approximate_len(&self) -> Result<u64, StoreError> {
        estimate_num_keys(&self.db, &self.name)
    }

    /// Visit every entry in key order until `f` returns `false` (a consistent snapshot).
    pub fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, value) = item.map_err(|e| backend(&self.name, "iterate", e))?;
            if !f(&key, &value) {
                break;
            }
        }
        Ok(())
    }
}

fn estimate_num_keys(db: &DB, name: &str) -> Result<u64, StoreError> {
    db.property_int_value("rocksdb.estimate-num-keys")
        .map(Option::unwrap_or_default)
        .map_err(|e| backend(name, "read rocksdb.estimate-num-keys", e))
}

pub(crate) fn backend(store: &str, what: &str, e: rocksdb::Error) -> StoreError {
    StoreError::Backend {
        store: store.to_owned(),
        message: format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    fn open(dir: &Path) -> RocksDbStore {
        RocksDbStore::open(dir, "orders").unwrap()
    }

    #[test]
    fn put_get_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(&tmp.path().join("orders-0"));
        assert_eq!(store.name(), "orders");
        assert_eq!(store.get(b"k").unwrap(), None);
        store.put(b"k", b"v1").unwrap();
        store.put(b"k", b"v2").unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(b"v2".to_vec()));
        store.delete(b"k").unwrap();
        store.delete(b"absent").unwrap();
        assert_eq!(store.get(b"k").unwrap(), None);
    }

    #[test]
    fn reopen_after_flush_keeps_data_next_to_a_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders-3");
        {
            let mut store = open(&dir);
            for i in 0..100u32 {
                store
                    .put(&i.to_be_bytes(), format!("v{i}").as_bytes())
                    .unwrap();
            }
            store.delete(&7u32.to_be_bytes()).unwrap();
            store.flush().unwrap();
            Checkpoint::new(101).write(&dir).unwrap();
        }
        let store = open(&dir);
        assert_eq!(
            store.get(&5u32.to_be_bytes()).unwrap(),
            Some(b"v5".to_vec())
        );
        assert_eq!(store.get(&7u32.to_be_bytes()).unwrap(), None);
        assert_eq!(Checkpoint::read(&dir).unwrap(), Some(Checkpoint::new(101)));
        let mut count = 0;
        store
            .for_each(&mut |_, _| {
                count += 1;
                true
            })
            .unwrap();
        assert_eq!(count, 99);
        let estimate = store.approximate_len().unwrap();
        assert!((50..=150).contains(&estimate), "estimate {estimate}");
    }

    #[test]
    fn reader_sees_writes_from_another_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        let reader = store.reader();
        assert_eq!(reader.name(), "orders");
        let writer = std::thread::spawn(move || {
            store.put(b"k", b"v").unwrap();
            store
        });
        let store = writer.join().unwrap();
        let r2 = reader.clone();
        let seen = std::thread::spawn(move || r2.get(b"k").unwrap())
            .join()
            .unwrap();
        assert_eq!(seen, Some(b"v".to_vec()));
        drop(store);
        // The reader keeps the database open after the store is gone.
        assert_eq!(reader.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn for_each_is_ordered_and_stops_early() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        for k in [b"c", b"a", b"b"] {
            store.put(k, k).unwrap();
        }
        let mut seen = Vec::new();
        store
            .for_each(&mut |k, _| {
                seen.push(k.to_vec());
                seen.len() < 2
            })
            .unwrap();
        assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn put_batch_applies_puts_and_deletes_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = open(tmp.path());
        store.put(b"gone", b"x").unwrap();
        store
            .put_batch(&[
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"gone".to_vec(), None),
                (b"a".to_vec(), Some(b"2".to_vec())),
                (b"b".to_vec(), Some(b"3".to_vec())),
                (b"b".to_vec(), None),
            ])
            .unwrap();
        assert_eq!(store.get(b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(store.get(b"b").unwrap(), None);
        assert_eq!(store.get(b"gone").unwrap(), None);
        store.put_batch(&[]).unwrap();
    }

    #[test]
    fn second_open_of_same_dir_fails_while_open() {
        let tmp = tempfile::tempdir().unwrap();
        let _store = open(tmp.path());
        let err = RocksDbStore::open(tmp.path(), "orders").unwrap_err();
        assert_eq!(
            err.open_failure(),
            Some(crate::open::OpenFailure::Locked),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("store orders: cannot open"),
            "{err}"
        );
    }

    #[test]
    fn destroy_wipes_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders-1");
        {
            let mut store = open(&dir);
            store.put(b"k", b"v").unwrap();
            store.flush().unwrap();
            Checkpoint::new(1).write(&dir).unwrap();
        }
        RocksDbStore::destroy(&dir).unwrap();
        assert!(!dir.exists());
        RocksDbStore::destroy(&dir).unwrap();
        let store = open(&dir);
        assert_eq!(store.get(b"k").unwrap(), None);
        assert_eq!(Checkpoint::read(&dir).unwrap(), None);
    }
}
