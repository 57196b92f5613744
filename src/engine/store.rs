//! One store of one task, key-value or window: `transactional(rocksdb)` plus its changelog
//! position and checkpoint.
//!
//! ```text
//!              ┌ KeyValue: TxnKeyValueStore<RocksDbStore>     ─┐  processors write the buffer;
//! TaskStore ───┤                                               ├─ commit: prepare → changelog,
//!              └ Window:   TxnWindowStore<RocksDbWindowStore> ─┘  then one RocksDB batch
//! ```
//!
//! RocksDB holds committed state only (see `paystream_state::transactional`), so its content is
//! always a prefix of the changelog: restore and standbys write changelog records straight into
//! it ([`TaskStore::apply_batch`]) and the query layer reads it through [`StoreReader`]s.
//!
//! `changelog_end` is the next changelog offset the local store does not hold yet; a checkpoint
//! file records it after a flush, so a restart restores only what lies past it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use paystream_state::checkpoint::Checkpoint;
use paystream_state::rocks::{RocksDbReader, RocksDbStore};
use paystream_state::rocks_window::{RocksDbWindowReader, RocksDbWindowStore};
use paystream_state::store::{KeyValueStore, StoreError};
use paystream_state::transactional::{TxnKeyValueStore, TxnWindowStore};
use paystream_state::window::WindowStore;
use paystream_topology::{StoreKind, StoreSpec};

use crate::kafka::producer::{KafkaChangelogWriter, OutputProducer};

/// Checkpoint once this many changelog records were applied since the last one (Kafka Streams
/// uses the same threshold): each checkpoint flushes RocksDB memtables, so doing it on every
/// commit would make many tiny files; restore replays at most this much extra.
pub const CHECKPOINT_DELTA: u64 = 10_000;

/// The layered store itself.
pub enum StoreHandle {
    KeyValue(TxnKeyValueStore<RocksDbStore>),
    Window(TxnWindowStore<RocksDbWindowStore>),
}

/// A read handle for query threads (committed state).
#[derive(Clone)]
pub enum StoreReader {
    KeyValue(RocksDbReader),
    Window(RocksDbWindowReader),
}

/// One store of a task with its changelog position.
pub struct TaskStore {
    pub name: String,
    pub dir: PathBuf,
    pub changelog_topic: Arc<str>,
    pub store: StoreHandle,
    pub reader: StoreReader,
    /// Next changelog offset the local (committed) store does not contain yet.
    pub changelog_end: i64,
    /// The checkpoint the store had when opened (`None`: restore from the beginning).
    pub checkpointed: Option<i64>,
    /// Changelog records applied since the last checkpoint.
    pub writes_since_checkpoint: u64,
    /// Records sent by the last `prepare` (waiting for the commit's outcome).
    prepared: usize,
}

impl TaskStore {
    /// Open (or create) the store of `spec` in `dir`.
    ///
    /// Files proven unusable ([`StoreError::is_unusable`]: corruption, a store format this
    /// binary cannot read) are wiped, and the store is restored from its changelog in full.
    /// Any other failure (the lock still held, no file handle left, a full disk) is returned
    /// untouched for the caller to report and retry: deleting data never fixes those.
    pub fn open(spec: &StoreSpec, dir: PathBuf, topic: Arc<str>) -> Result<Self, StoreError> {
        let (store, reader) = match open_kind(spec, &dir) {
            Ok(s) => s,
            Err(e) if e.is_unusable() => {
                tracing::warn!(store = %spec.name, dir = %dir.display(), error = %e, "local store unusable; wiping it to restore from the changelog");
                destroy(spec.kind, &dir)?;
                open_kind(spec, &dir)?
            }
            Err(e) => return Err(e),
        };
        // Read after the open: a wiped directory has no checkpoint any more.
        let checkpoint = Checkpoint::read(&dir)?;
        let mut s = Self {
            name: spec.name.clone(),
            dir,
            changelog_topic: topic,
            store,
            reader,
            changelog_end: 0,
            checkpointed: None,
            writes_since_checkpoint: 0,
            prepared: 0,
        };
        // The checkpoint is meaningless for a store that was wiped.
        if let Some(c) = checkpoint {
            if s.approximate_len()? > 0 || c.changelog_offset == 0 {
                s.changelog_end = c.changelog_offset;
                s.checkpointed = Some(c.changelog_offset);
            }
        }
        Ok(s)
    }

    pub fn approximate_len(&self) -> Result<u64, StoreError> {
        match &self.store {
            StoreHandle::KeyValue(s) => s.approximate_len(),
            StoreHandle::Window(s) => s.approximate_len(),
        }
    }

    /// Bytes written by processors since the last commit (kept in memory until then).
    pub fn uncommitted_bytes(&self) -> usize {
        match &self.store {
            StoreHandle::KeyValue(s) => s.uncommitted_bytes(),
            StoreHandle::Window(s) => s.uncommitted_bytes(),
        }
    }

    /// Commit, phase one: one changelog record per key written since the last commit, sent
    /// through `producer` (into its open transaction under exactly-once).
    pub fn prepare(
        &mut self,
        producer: &OutputProducer,
        partition: i32,
    ) -> Result<usize, StoreError> {
        let mut writer = KafkaChangelogWriter {
            producer,
            topic: &self.changelog_topic,
            partition,
        };
        self.prepared = match &mut self.store {
            StoreHandle::KeyValue(s) => s.prepare(&mut writer)?,
            StoreHandle::Window(s) => s.prepare(&mut writer)?,
        };
        Ok(self.prepared)
    }

    /// Commit, phase two (the transaction committed, or under at-least-once every record was
    /// acknowledged): write the prepared entries to RocksDB and advance the changelog position.
    pub fn commit(&mut self, producer: &OutputProducer, partition: i32) -> Result<(), StoreError> {
        match &mut self.store {
            StoreHandle::KeyValue(s) => s.commit()?,
            StoreHandle::Window(s) => s.commit()?,
        }
        if self.prepared > 0 {
            let acked = producer.acked_offset(&self.changelog_topic, partition);
            self.changelog_end = self.changelog_end.max(acked + 1);
            self.writes_since_checkpoint += self.prepared as u64;
            self.prepared = 0;
        }
        Ok(())
    }

    /// The commit failed: forget every write since the last one.
    pub fn abort(&mut self) {
        self.prepared = 0;
        match &mut self.store {
            StoreHandle::KeyValue(s) => s.abort(),
            StoreHandle::Window(s) => s.abort(),
        }
    }

    /// Apply changelog records (restore, standbys) straight to RocksDB; `last_offset` is the
    /// offset of the last of them.
    pub fn apply_batch(
        &mut self,
        entries: &[(Vec<u8>, Option<Vec<u8>>)],
        last_offset: i64,
    ) -> Result<(), StoreError> {
        if !entries.is_empty() {
            match &mut self.store {
                StoreHandle::KeyValue(s) => s.inner_mut().put_batch(entries)?,
                StoreHandle::Window(s) => {
                    s.inner_mut().restore_batch(entries)?;
                    s.resync();
                }
            }
        }
        self.changelog_end = self.changelog_end.max(last_offset + 1);
        self.writes_since_checkpoint += entries.len() as u64;
        Ok(())
    }

    /// Delete every entry (the files stay open), for a restore from scratch.
    pub fn wipe(&mut self) -> Result<(), StoreError> {
        self.checkpointed = None;
        self.changelog_end = 0;
        Checkpoint::remove(&self.dir)?;
        match &mut self.store {
            StoreHandle::KeyValue(s) => {
                s.abort();
                let store = s.inner_mut();
                let mut keys = Vec::new();
                store.for_each(&mut |k, _| {
                    keys.push((k.to_vec(), None));
                    true
                })?;
                for chunk in keys.chunks(2_000) {
                    store.put_batch(chunk)?;
                }
            }
            StoreHandle::Window(s) => {
                s.abort();
                let store = s.inner_mut();
                let mut entries = Vec::new();
                store.fetch_all(i64::MIN, i64::MAX, &mut |k, t, _| {
                    entries.push((k.to_vec(), t));
                    true
                })?;
                for (k, t) in entries {
                    store.delete(&k, t)?;
                }
            }
        }
        Ok(())
    }

    /// Checkpoint if enough changed since the last one (or `force`, when a task stops or
    /// changes hands).
    pub fn maybe_checkpoint(&mut self, force: bool) -> Result<(), StoreError> {
        let due = self.writes_since_checkpoint >= CHECKPOINT_DELTA
            || (force && self.checkpointed != Some(self.changelog_end));
        if due {
            self.checkpoint_now()?;
        }
        Ok(())
    }

    /// Flush the store, then record its changelog position as durable. The order matters: a
    /// checkpoint must never claim more than the local files hold.
    pub fn checkpoint_now(&mut self) -> Result<(), StoreError> {
        match &mut self.store {
            StoreHandle::KeyValue(s) => s.flush()?,
            StoreHandle::Window(s) => s.flush()?,
        }
        Checkpoint {
            changelog_offset: self.changelog_end,
        }
        .write(&self.dir)?;
        self.checkpointed = Some(self.changelog_end);
        self.writes_since_checkpoint = 0;
        Ok(())
    }
}

fn open_kind(spec: &StoreSpec, dir: &Path) -> Result<(StoreHandle, StoreReader), StoreError> {
    Ok(match spec.kind {
        StoreKind::KeyValue => {
            let s = RocksDbStore::open(dir, &spec.name)?;
            let r = StoreReader::KeyValue(s.reader());
            (StoreHandle::KeyValue(TxnKeyValueStore::new(s)), r)
        }
        StoreKind::Window { retention_ms } => {
            let s = RocksDbWindowStore::open(dir, &spec.name, retention_ms)?;
            let r = StoreReader::Window(s.reader());
            (StoreHandle::Window(TxnWindowStore::new(s)), r)
        }
    })
}

fn destroy(kind: StoreKind, dir: &Path) -> Result<(), StoreError> {
    match kind {
        StoreKind::KeyValue => RocksDbStore::destroy(dir),
        StoreKind::Window { .. } => RocksDbWindowStore::destroy(dir),
    }
}

#[cfg(test)]
mod tests {
    use paystream_state::open::{OpenFailure, StoreFormat};
    use paystream_state::KeyValueStore;

    use super::*;

    fn spec() -> StoreSpec {
        StoreSpec {
            name: "orders".into(),
            kind: StoreKind::KeyValue,
        }
    }

    /// A store directory holding `k` and a checkpoint at 7, closed.
    fn filled(dir: &Path) {
        let mut s = RocksDbStore::open(dir, "orders").unwrap();
        s.put(b"k", b"v").unwrap();
        s.flush().unwrap();
        Checkpoint::new(7).write(dir).unwrap();
    }

    fn open(dir: &Path) -> Result<TaskStore, StoreError> {
        TaskStore::open(&spec(), dir.to_owned(), Arc::from("t"))
    }

    fn get(s: &TaskStore) -> Option<Vec<u8>> {
        match &s.reader {
            StoreReader::KeyValue(r) => r.get(b"k").unwrap(),
            StoreReader::Window(_) => panic!("not a key-value store"),
        }
    }

    #[test]
    fn a_locked_store_is_an_error_to_retry_and_keeps_its_data_and_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders");
        filled(&dir);
        let holder = open(&dir).unwrap();
        let err = open(&dir).err().expect("a second open must fail");
        assert_eq!(err.open_failure(), Some(OpenFailure::Locked), "{err}");
        assert_eq!(get(&holder), Some(b"v".to_vec()));
        drop(holder);
        let s = open(&dir).unwrap();
        assert_eq!(get(&s), Some(b"v".to_vec()));
        assert_eq!(s.checkpointed, Some(7));
    }

    #[test]
    fn an_io_error_at_open_is_an_error_to_retry_and_keeps_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders");
        filled(&dir);
        // Reading the format marker fails (EISDIR): nothing says the files are bad.
        let marker = dir.join(paystream_state::open::FORMAT_FILE);
        std::fs::remove_file(&marker).unwrap();
        std::fs::create_dir(&marker).unwrap();
        let err = open(&dir).err().expect("the open must fail");
        assert_eq!(err.open_failure(), Some(OpenFailure::Io), "{err}");
        std::fs::remove_dir(&marker).unwrap();
        let s = open(&dir).unwrap();
        assert_eq!(get(&s), Some(b"v".to_vec()));
        assert_eq!(s.checkpointed, Some(7));
    }

    #[test]
    fn a_store_held_by_an_outliving_reader_reopens_with_its_data() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders");
        filled(&dir);
        let first = open(&dir).unwrap();
        let long_poll = first.reader.clone();
        drop(first);
        let s = open(&dir).unwrap();
        assert_eq!(get(&s), Some(b"v".to_vec()));
        assert_eq!(s.checkpointed, Some(7));
        drop(long_poll);
    }

    #[test]
    fn corrupt_files_are_wiped_and_restored_from_the_beginning() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders");
        filled(&dir);
        std::fs::write(dir.join("CURRENT"), b"garbage").unwrap();
        let s = open(&dir).unwrap();
        assert_eq!(get(&s), None);
        assert_eq!(
            s.checkpointed, None,
            "must restore from the changelog's start"
        );
    }

    #[test]
    fn an_unknown_store_format_is_wiped_and_restored_from_the_beginning() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("orders");
        filled(&dir);
        StoreFormat::write_version(&dir, 2).unwrap();
        let s = open(&dir).unwrap();
        assert_eq!(get(&s), None);
        assert_eq!(s.checkpointed, None);
        StoreFormat::check(&dir, "orders").unwrap();
    }
}
