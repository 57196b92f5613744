//! An in-memory key-value store: the bottom layer for tests and the topology test driver.
//!
//! Entry point: [`InMemoryStore::new`]. It keeps entries in key order (a `BTreeMap`), like RocksDB
//! with its default bytewise comparator, so `for_each` visits entries in the same order on both.

use std::collections::BTreeMap;

use crate::store::{KeyValueStore, StoreError};

/// A [`KeyValueStore`] held in a `BTreeMap`. Nothing is persisted; `flush` is a no-op.
///
/// `Clone` copies the contents, which lets a test snapshot a store and compare it later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InMemoryStore {
    name: String,
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl InMemoryStore {
    /// An empty store called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            entries: BTreeMap::new(),
        }
    }

    /// Exact number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Iterate over the entries in key order (infallible, unlike [`KeyValueStore::for_each`]).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

impl KeyValueStore for InMemoryStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries.get(key).cloned())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.entries.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.entries.remove(key);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        for (k, v) in &self.entries {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn approximate_len(&self) -> Result<u64, StoreError> {
        Ok(self.entries.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete() {
        let mut store = InMemoryStore::new("orders");
        assert_eq!(store.name(), "orders");
        assert_eq!(store.get(b"k").unwrap(), None);
        store.put(b"k", b"v1").unwrap();
        store.put(b"k", b"v2").unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(b"v2".to_vec()));
        assert_eq!(store.approximate_len().unwrap(), 1);
        store.delete(b"k").unwrap();
        store.delete(b"absent").unwrap();
        assert_eq!(store.get(b"k").unwrap(), None);
        assert!(store.is_empty());
    }

    #[test]
    fn for_each_is_ordered_and_stops_early() {
        let mut store = InMemoryStore::new("s");
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
    fn clone_is_a_snapshot() {
        let mut store = InMemoryStore::new("s");
        store.put(b"a", b"1").unwrap();
        let snapshot = store.clone();
        store.put(b"b", b"2").unwrap();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(store.len(), 2);
    }
}
