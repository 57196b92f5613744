//! Declared stores: what a processor says it needs, which the executor creates per task.

use std::fmt;
use std::sync::Arc;

/// A store a topology uses. The executor creates one instance per partition, and makes it
/// durable through its [`Changelog`].
#[derive(Clone)]
pub struct StoreSpec {
    pub name: String,
    pub kind: StoreKind,
    pub changelog: Changelog,
}

/// Key-value (one value per key) or window (values per key and window start, expiring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    KeyValue,
    Window {
        /// How long an entry is kept after its window start, in ms of the store's observed time.
        retention_ms: i64,
    },
}

/// Maps a record of a ledger topic to the store key it stands for (`None`: not an entry).
/// For window stores the key is `paystream_state::window::encode_window_key(key, start)`.
pub type LedgerFn = Arc<dyn Fn(&[u8], &[u8], i64) -> Option<Vec<u8>> + Send + Sync>;

/// Where a store's durable copy lives.
#[derive(Clone)]
pub enum Changelog {
    /// `<application-id>-<name>-changelog`, written by the logging layer on every write.
    Internal,
    /// The store is an index over records the processor itself sends to `topic` (one of its
    /// outputs): writes are not logged, and restore and standbys rebuild the store by reading
    /// `topic`'s partition and mapping each record with `key_of`. The store then says exactly
    /// what is in the topic: what was acknowledged there is known after a crash, what never got
    /// there is not. That is what makes "sent exactly once" hold without transactions.
    Ledger { topic: String, key_of: LedgerFn },
}

impl fmt::Debug for Changelog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Changelog::Internal => f.write_str("Internal"),
            Changelog::Ledger { topic, .. } => write!(f, "Ledger({topic})"),
        }
    }
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("changelog", &self.changelog)
            .finish()
    }
}

impl StoreSpec {
    /// A key-value store with an internal changelog.
    pub fn key_value(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: StoreKind::KeyValue,
            changelog: Changelog::Internal,
        }
    }
    /// A window store keeping entries for `retention_ms`, with an internal changelog.
    pub fn window(name: &str, retention_ms: i64) -> Self {
        Self {
            name: name.to_owned(),
            kind: StoreKind::Window { retention_ms },
            changelog: Changelog::Internal,
        }
    }
    /// Make this store a ledger of `topic` (see [`Changelog::Ledger`]).
    pub fn ledger_of<F>(mut self, topic: &str, key_of: F) -> Self
    where
        F: Fn(&[u8], &[u8], i64) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        self.changelog = Changelog::Ledger {
            topic: topic.to_owned(),
            key_of: Arc::new(key_of),
        };
        self
    }
    /// The topic holding this store's durable copy.
    pub fn changelog_topic(&self, application_id: &str) -> String {
        match &self.changelog {
            Changelog::Internal => format!("{application_id}-{}-changelog", self.name),
            Changelog::Ledger { topic, .. } => topic.clone(),
        }
    }
}
