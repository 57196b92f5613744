//! Declared stores: what a processor says it needs, which the executor creates per task.

/// A store a topology uses. The executor creates one instance per partition, buffers its writes
/// until the task commits, and makes them durable in the store's changelog topic
/// (`<application-id>-<name>-changelog`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub name: String,
    pub kind: StoreKind,
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

impl StoreSpec {
    /// A key-value store.
    pub fn key_value(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: StoreKind::KeyValue,
        }
    }
    /// A window store keeping entries for `retention_ms`.
    pub fn window(name: &str, retention_ms: i64) -> Self {
        Self {
            name: name.to_owned(),
            kind: StoreKind::Window { retention_ms },
        }
    }
    /// The topic holding this store's durable copy: `<application-id>-<name>-changelog`, as
    /// Kafka Streams names it. Only the executor's commits write it.
    pub fn changelog_topic(&self, application_id: &str) -> String {
        format!("{application_id}-{}-changelog", self.name)
    }
}
