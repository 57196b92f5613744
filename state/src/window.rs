//! Window stores: values kept per (key, window start), expired by time.
//!
//! Entry points: the [`WindowStore`] trait; [`InMemoryWindowStore`] (tests, the topology test
//! driver); `RocksDbWindowStore` (feature `rocksdb`, in `rocks_window`), and
//! [`crate::transactional::TxnWindowStore`], which buffers a commit's writes for the changelog.
//!
//! A window store answers "what did I store for this key between these two times?" and forgets on
//! its own: each store has a *retention*, and an entry whose window start is older than the
//! store's observed time minus the retention is gone (a put that old is refused). The observed
//! time is the largest window start ever written, deletes included: the store's own stream time,
//! as in Kafka Streams' segmented stores (where a delete is a put of null), so replaying a
//! changelog, whose tombstones carry their window start, expires exactly what live processing
//! expired. A RocksDB store reopened from its files recomputes it from the entries it holds, so a
//! newest window that was deleted is not counted there (no processor deletes windows).
//!
//! Keys in the changelog (and in RocksDB) are [`encode_window_key`]: the key's length, the key,
//! then the window start as 8 big-endian bytes with the sign bit flipped, so that byte order is
//! (key, time) order and one key's windows are one contiguous range. The length prefix makes the
//! range exact: without it, key `ab` at some time and key `ab\x01...` could interleave.

use std::collections::BTreeMap;

use crate::store::StoreError;

/// The visitor of [`WindowStore::fetch_all`]: (key, window start, value) → keep going?
pub type WindowVisitor<'a> = dyn FnMut(&[u8], i64, &[u8]) -> bool + 'a;

/// A window store owned by one task (one store of one partition). Times are epoch milliseconds.
pub trait WindowStore: Send {
    /// The store's name (as used in the topology and the changelog topic name).
    fn name(&self) -> &str;
    /// How long (in ms of observed time) an entry is kept after its window start.
    fn retention_ms(&self) -> i64;
    /// The largest window start ever put or deleted (`i64::MIN` while empty): the store's
    /// stream time.
    fn observed_time(&self) -> i64;
    /// Store `value` for (`key`, `window_start`), overwriting. Returns `false`, storing nothing,
    /// when the window is already expired (`window_start < observed_time - retention`).
    fn put(&mut self, key: &[u8], window_start: i64, value: &[u8]) -> Result<bool, StoreError>;
    /// Remove the entry for (`key`, `window_start`) (a no-op when absent). Advances the observed
    /// time like a put, so a changelog tombstone restores the same stream time.
    fn delete(&mut self, key: &[u8], window_start: i64) -> Result<(), StoreError>;
    /// The entries of `key` with `time_from <= window start <= time_to`, oldest first.
    fn fetch(
        &self,
        key: &[u8],
        time_from: i64,
        time_to: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError>;
    /// Visit every entry (any key) with `time_from <= window start <= time_to` until `f` returns
    /// `false`. Order: by time segment, then key, then time (not globally by time).
    fn fetch_all(
        &self,
        time_from: i64,
        time_to: i64,
        f: &mut WindowVisitor<'_>,
    ) -> Result<(), StoreError>;
    /// Make every write so far durable locally (before a checkpoint is written).
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Number of entries (may be an estimate for on-disk stores).
    fn approximate_len(&self) -> Result<u64, StoreError>;

    /// Apply changelog records (key = [`encode_window_key`], `None` = tombstone), as restore and
    /// standbys do. Expired entries are skipped, as live processing would have dropped them.
    fn restore_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        for (raw, value) in entries {
            let Some((key, start)) = decode_window_key(raw) else {
                return Err(StoreError::Codec {
                    store: self.name().to_owned(),
                    message: format!("changelog key of {} bytes is not a window key", raw.len()),
                });
            };
            match value {
                Some(v) => {
                    self.put(key, start, v)?;
                }
                None => self.delete(key, start)?,
            }
        }
        Ok(())
    }
}

impl<S: WindowStore + ?Sized> WindowStore for Box<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn retention_ms(&self) -> i64 {
        (**self).retention_ms()
    }
    fn observed_time(&self) -> i64 {
        (**self).observed_time()
    }
    fn put(&mut self, key: &[u8], window_start: i64, value: &[u8]) -> Result<bool, StoreError> {
        (**self).put(key, window_start, value)
    }
    fn delete(&mut self, key: &[u8], window_start: i64) -> Result<(), StoreError> {
        (**self).delete(key, window_start)
    }
    fn fetch(&self, key: &[u8], from: i64, to: i64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        (**self).fetch(key, from, to)
    }
    fn fetch_all(&self, from: i64, to: i64, f: &mut WindowVisitor<'_>) -> Result<(), StoreError> {
        (**self).fetch_all(from, to, f)
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        (**self).flush()
    }
    fn approximate_len(&self) -> Result<u64, StoreError> {
        (**self).approximate_len()
    }
    fn restore_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        (**self).restore_batch(entries)
    }
}

/// Window start as 8 bytes whose unsigned order is the signed order of the times.
pub fn encode_time(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`encode_time`].
pub fn decode_time(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// `u32 len (big-endian) | key | encode_time(window_start)`: see the module documentation.
pub fn encode_window_key(key: &[u8], window_start: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len() + 8);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&encode_time(window_start));
    out
}

/// Split an [`encode_window_key`] back into (key, window start); `None` if malformed.
pub fn decode_window_key(raw: &[u8]) -> Option<(&[u8], i64)> {
    let len = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let key = raw.get(4..4 + len)?;
    let time: [u8; 8] = raw.get(4 + len..)?.try_into().ok()?;
    Some((key, decode_time(time)))
}

/// The oldest window start a store with this observed time and retention still keeps.
pub fn oldest_retained(observed: i64, retention_ms: i64) -> i64 {
    if observed == i64::MIN {
        i64::MIN
    } else {
        observed.saturating_sub(retention_ms)
    }
}

/// A `BTreeMap` window store for tests and the topology test driver. Clones are snapshots.
#[derive(Debug, Clone)]
pub struct InMemoryWindowStore {
    name: String,
    retention_ms: i64,
    observed: i64,
    entries: BTreeMap<(Vec<u8>, i64), Vec<u8>>,
}

impl InMemoryWindowStore {
    /// An empty store keeping entries for `retention_ms` of observed time.
    pub fn new(name: impl Into<String>, retention_ms: i64) -> Self {
        Self {
            name: name.into(),
            retention_ms,
            observed: i64::MIN,
            entries: BTreeMap::new(),
        }
    }

    /// Number of entries currently kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store keeps no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self) {
        let oldest = oldest_retained(self.observed, self.retention_ms);
        self.entries.retain(|(_, t), _| *t >= oldest);
    }
}

impl WindowStore for InMemoryWindowStore {
    fn name(&self) -> &str {
        &self.name
    }
    fn retention_ms(&self) -> i64 {
        self.retention_ms
    }
    fn observed_time(&self) -> i64 {
        self.observed
    }
    fn put(&mut self, key: &[u8], window_start: i64, value: &[u8]) -> Result<bool, StoreError> {
        if window_start < oldest_retained(self.observed, self.retention_ms) {
            return Ok(false);
        }
        self.entries
            .insert((key.to_vec(), window_start), value.to_vec());
        if window_start > self.observed {
            self.observed = window_start;
            self.expire();
        }
        Ok(true)
    }
    fn delete(&mut self, key: &[u8], window_start: i64) -> Result<(), StoreError> {
        self.entries.remove(&(key.to_vec(), window_start));
        if window_start > self.observed {
            self.observed = window_start;
            self.expire();
        }
        Ok(())
    }
    fn fetch(&self, key: &[u8], from: i64, to: i64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let from = from.max(oldest_retained(self.observed, self.retention_ms));
        if from > to {
            return Ok(Vec::new());
        }
        Ok(self
            .entries
            .range((key.to_vec(), from)..=(key.to_vec(), to))
            .map(|((_, t), v)| (*t, v.clone()))
            .collect())
    }
    fn fetch_all(&self, from: i64, to: i64, f: &mut WindowVisitor<'_>) -> Result<(), StoreError> {
        let from = from.max(oldest_retained(self.observed, self.retention_ms));
        for ((k, t), v) in &self.entries {
            if *t >= from && *t <= to && !f(k, *t, v) {
                break;
            }
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn approximate_len(&self) -> Result<u64, StoreError> {
        Ok(self.entries.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn window_keys_round_trip_and_sort_by_key_then_time(
            a in proptest::collection::vec(any::<u8>(), 0..12), ta in any::<i64>(),
            b in proptest::collection::vec(any::<u8>(), 0..12), tb in any::<i64>(),
        ) {
            let ka = encode_window_key(&a, ta);
            prop_assert_eq!(decode_window_key(&ka), Some((a.as_slice(), ta)));
            if a == b {
                prop_assert_eq!(ka.cmp(&encode_window_key(&b, tb)), ta.cmp(&tb));
            }
        }
    }

    #[test]
    fn malformed_window_keys_are_rejected() {
        assert_eq!(decode_window_key(b""), None);
        assert_eq!(decode_window_key(&[0, 0, 0, 9, 1, 2]), None);
        let mut k = encode_window_key(b"k", 5);
        k.push(0);
        assert_eq!(decode_window_key(&k), None);
    }

    #[test]
    fn fetch_is_by_key_and_inclusive_time_range() {
        let mut s = InMemoryWindowStore::new("w", 1_000);
        for (k, t) in [("a", 10), ("a", 20), ("ab", 15), ("b", 20), ("a", 30)] {
            assert!(s.put(k.as_bytes(), t, t.to_string().as_bytes()).unwrap());
        }
        let got: Vec<i64> = s.fetch(b"a", 10, 20).unwrap().iter().map(|e| e.0).collect();
        assert_eq!(got, [10, 20]);
        assert!(s.fetch(b"a", 21, 29).unwrap().is_empty());
        assert!(s.fetch(b"a", 30, 10).unwrap().is_empty());
        let mut all = Vec::new();
        s.fetch_all(15, 20, &mut |k, t, _| {
            all.push((k.to_vec(), t));
            true
        })
        .unwrap();
        assert_eq!(
            all,
            [
                (b"a".to_vec(), 20),
                (b"ab".to_vec(), 15),
                (b"b".to_vec(), 20)
            ]
        );
    }

    #[test]
    fn entries_expire_with_observed_time_and_late_puts_are_refused() {
        let mut s = InMemoryWindowStore::new("w", 100);
        assert!(s.put(b"k", 0, b"0").unwrap());
        assert!(s.put(b"k", 100, b"100").unwrap());
        assert_eq!(
            s.fetch(b"k", 0, 200).unwrap().len(),
            2,
            "0 is exactly at the edge"
        );
        assert!(s.put(b"k", 101, b"101").unwrap());
        assert_eq!(s.observed_time(), 101);
        let times: Vec<i64> = s
            .fetch(b"k", i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(times, [100, 101], "window 0 expired");
        assert!(!s.put(b"k", 0, b"late").unwrap(), "expired window refused");
        assert!(
            s.put(b"k", 50, b"in retention").unwrap(),
            "out of order but retained"
        );
    }

    #[test]
    fn restore_rejects_keys_that_are_not_window_keys() {
        let mut s = InMemoryWindowStore::new("w", 10);
        let err = s.restore_batch(&[(b"xx".to_vec(), None)]).unwrap_err();
        assert!(err.to_string().contains("store w"), "{err}");
    }
}
