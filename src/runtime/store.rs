//! One store of one task, whatever its kind: key-value or window, logged to an internal
//! changelog or a ledger of an output topic.
//!
//! ```text
//!              ┌ KeyValue: LoggingStore<RocksDbStore>          ─┐
//! TaskStore ───┤                                                ├── writer: changelog producer,
//!              └ Window:   LoggingWindowStore<RocksDbWindowStore>┘   or none for ledgers
//! ```
//!
//! Restore and standbys feed [`TaskStore::map_record`]ped changelog records to
//! [`TaskStore::apply_batch`]; the processors write through the logging layer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use paystream_state::checkpoint::Checkpoint;
use paystream_state::logging::{ChangelogWriter, LoggingStore};
use paystream_state::rocks::{RocksDbReader, RocksDbStore};
use paystream_state::rocks_window::{RocksDbWindowReader, RocksDbWindowStore};
use paystream_state::store::{KeyValueStore, StoreError};
use paystream_state::window::{decode_window_key, LoggingWindowStore, WindowStore};
use paystream_topology::topology::LedgerFn;
use paystream_topology::{Changelog, StoreKind, StoreSpec};

use crate::kafka::producer::KafkaChangelogWriter;

/// The changelog writer of a store; `None` for ledgers, whose log is written by the processor.
pub struct StoreWriter(pub Option<KafkaChangelogWriter>);

impl ChangelogWriter for StoreWriter {
    fn send(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        match &mut self.0 {
            Some(w) => w.send(key, value),
            None => Ok(()),
        }
    }
}

/// The layered store itself.
pub enum StoreHandle {
    KeyValue(LoggingStore<RocksDbStore, StoreWriter>),
    Window(LoggingWindowStore<RocksDbWindowStore, StoreWriter>),
}

/// A read handle for query threads.
#[derive(Clone)]
pub enum StoreReader {
    KeyValue(RocksDbReader),
    Window(RocksDbWindowReader),
}

/// One store of a task with its changelog position.
pub struct TaskStore {
    pub name: String,
    pub dir: PathBuf,
    /// Internal changelog or ledger topic.
    pub changelog_topic: Arc<str>,
    pub store: StoreHandle,
    pub reader: StoreReader,
    /// For ledger stores: how a ledger topic record maps to a store key.
    pub ledger: Option<LedgerFn>,
    /// For window ledgers: how far back (ms of record time before now) the rebuild starts;
    /// older records would expire at once. `None`: from the topic's beginning.
    pub ledger_horizon_ms: Option<i64>,
    /// Next changelog offset the local store does not contain yet (restore starts here).
    pub changelog_end: i64,
    /// Whether the store had a usable checkpoint when opened.
    pub checkpointed: Option<i64>,
    pub writes_since_checkpoint: u64,
}

impl TaskStore {
    /// Open (or create) the store of `spec` in `dir`. A store that cannot be opened is wiped and
    /// restored in full. A ledger store is always rebuilt from its topic: without a write-ahead
    /// log, RocksDB may have flushed entries whose records never reached the topic before a
    /// crash, and a ledger must never claim an SMS or alert that is not in the topic.
    pub fn open(
        spec: &StoreSpec,
        dir: PathBuf,
        topic: Arc<str>,
        writer: KafkaChangelogWriter,
    ) -> Result<Self, StoreError> {
        let ledger = match &spec.changelog {
            Changelog::Internal => None,
            Changelog::Ledger { key_of, .. } => Some(key_of.clone()),
        };
        if ledger.is_some() {
            destroy(spec.kind, &dir)?;
        }
        let checkpoint = Checkpoint::read(&dir)?;
        let writer = StoreWriter(ledger.is_none().then_some(writer));
        let (store, reader) = match open_kind(spec, &dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(store = %spec.name, error = %e, "local store unusable; wiping it to restore from the changelog");
                destroy(spec.kind, &dir)?;
                open_kind(spec, &dir)?
            }
        };
        let store = match store {
            Opened::KeyValue(s) => StoreHandle::KeyValue(LoggingStore::new(s, writer)),
            Opened::Window(s) => StoreHandle::Window(LoggingWindowStore::new(s, Some(writer))),
        };
        let ledger_horizon_ms = match (&ledger, spec.kind) {
            // An hour more than the retention: records are appended after their event, and a
            // producer's clock may run a little behind.
            (Some(_), StoreKind::Window { retention_ms }) => {
                Some(retention_ms.saturating_add(3_600_000))
            }
            _ => None,
        };
        let mut s = Self {
            name: spec.name.clone(),
            dir,
            changelog_topic: topic,
            store,
            reader,
            ledger,
            ledger_horizon_ms,
            changelog_end: 0,
            checkpointed: None,
            writes_since_checkpoint: 0,
        };
        // The checkpoint is meaningless for a store we just wiped.
        if let Some(c) = checkpoint {
            if s.approximate_len()? > 0 || c.changelog_offset == 0 {
                s.changelog_end = c.changelog_offset;
                s.checkpointed = Some(c.changelog_offset);
            }
        }
        Ok(s)
    }

    pub fn is_ledger(&self) -> bool {
        self.ledger.is_some()
    }

    pub fn approximate_len(&self) -> Result<u64, StoreError> {
        match &self.store {
            StoreHandle::KeyValue(s) => s.approximate_len(),
            StoreHandle::Window(s) => s.approximate_len(),
        }
    }

    /// A changelog (or ledger topic) record as the store entry it stands for; `None` to skip it.
    pub fn map_record(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
    ) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let key = key?;
        match &self.ledger {
            None => Some((key.to_vec(), value.map(<[u8]>::to_vec))),
            Some(key_of) => {
                let value = value?;
                Some((key_of(key, value, timestamp)?, Some(value.to_vec())))
            }
        }
    }

    /// Apply mapped changelog entries without logging them again.
    pub fn apply_batch(
        &mut self,
        entries: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        match &mut self.store {
            StoreHandle::KeyValue(s) => s.inner_mut().put_batch(entries),
            StoreHandle::Window(s) => s.inner_mut().restore_batch(entries),
        }
    }

    /// Apply one mapped changelog entry without logging it (a standby following the changelog:
    /// no batch to build for a single record).
    pub fn apply_one(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        match &mut self.store {
            StoreHandle::KeyValue(s) => match value {
                Some(v) => s.inner_mut().put(key, v),
                None => s.inner_mut().delete(key),
            },
            StoreHandle::Window(s) => match (decode_window_key(key), value) {
                (Some((k, t)), Some(v)) => s.inner_mut().put(k, t, v).map(|_| ()),
                (Some((k, t)), None) => s.inner_mut().delete(k, t),
                (None, _) => s
                    .inner_mut()
                    .restore_batch(&[(key.to_vec(), value.map(<[u8]>::to_vec))]),
            },
        }
    }

    /// Delete every entry (the files stay open), for a restore from scratch.
    pub fn wipe(&mut self) -> Result<(), StoreError> {
        self.checkpointed = None;
        self.changelog_end = 0;
        match &mut self.store {
            StoreHandle::KeyValue(s) => {
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

    /// Flush the store, then record its changelog position as durable. The order matters: a
    /// checkpoint must never claim more than the local files hold. Ledger stores are rebuilt on
    /// every open, so they get no checkpoint.
    pub fn checkpoint_now(&mut self) -> Result<(), StoreError> {
        match &mut self.store {
            StoreHandle::KeyValue(s) => s.flush()?,
            StoreHandle::Window(s) => s.flush()?,
        }
        if !self.is_ledger() {
            Checkpoint {
                changelog_offset: self.changelog_end,
            }
            .write(&self.dir)?;
            self.checkpointed = Some(self.changelog_end);
        }
        self.writes_since_checkpoint = 0;
        Ok(())
    }
}

enum Opened {
    KeyValue(RocksDbStore),
    Window(RocksDbWindowStore),
}

fn open_kind(spec: &StoreSpec, dir: &Path) -> Result<(Opened, StoreReader), StoreError> {
    Ok(match spec.kind {
        StoreKind::KeyValue => {
            let s = RocksDbStore::open(dir, &spec.name)?;
            let r = StoreReader::KeyValue(s.reader());
            (Opened::KeyValue(s), r)
        }
        StoreKind::Window { retention_ms } => {
            let s = RocksDbWindowStore::open(dir, &spec.name, retention_ms)?;
            let r = StoreReader::Window(s.reader());
            (Opened::Window(s), r)
        }
    })
}

fn destroy(kind: StoreKind, dir: &Path) -> Result<(), StoreError> {
    match kind {
        StoreKind::KeyValue => RocksDbStore::destroy(dir),
        StoreKind::Window { .. } => RocksDbWindowStore::destroy(dir),
    }
}
