//! The transactional layers against a model: a "working" copy that takes every write and a
//! "committed" copy that only changes on commit. Reads through the layer must equal the working
//! copy; the inner store must equal the committed copy at all times; each commit must send one
//! changelog record per key written since the last commit; and replaying every changelog record
//! into an empty store must give the committed copy (what restore relies on).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::memory::InMemoryStore;
use crate::window::InMemoryWindowStore;

#[derive(Default)]
struct Recorder(Vec<Entry>);

impl ChangelogWriter for Recorder {
    fn send(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        self.0.push((key.to_vec(), value.map(<[u8]>::to_vec)));
        Ok(())
    }
}

struct Refusing;

impl ChangelogWriter for Refusing {
    fn send(&mut self, _: &[u8], _: Option<&[u8]>) -> Result<(), StoreError> {
        Err(StoreError::Changelog {
            store: "s".into(),
            message: "queue full".into(),
        })
    }
}

#[derive(Debug, Clone)]
enum KvOp {
    Put(u8, u8),
    Delete(u8),
    Get(u8),
    Commit,
    Abort,
    /// Prepare (records sent), then the transaction fails.
    PrepareThenAbort,
}

fn kv_op() -> impl Strategy<Value = KvOp> {
    prop_oneof![
        4 => (0u8..6, any::<u8>()).prop_map(|(k, v)| KvOp::Put(k, v)),
        2 => (0u8..6).prop_map(KvOp::Delete),
        3 => (0u8..6).prop_map(KvOp::Get),
        2 => Just(KvOp::Commit),
        1 => Just(KvOp::Abort),
        1 => Just(KvOp::PrepareThenAbort),
    ]
}

fn contents(store: &dyn KeyValueStore) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    store
        .for_each(&mut |k, v| {
            out.insert(k.to_vec(), v.to_vec());
            true
        })
        .unwrap();
    out
}

proptest! {
    #[test]
    fn key_value_layer_matches_the_model(ops in proptest::collection::vec(kv_op(), 1..60)) {
        let mut txn = TxnKeyValueStore::new(InMemoryStore::new("s"));
        let mut working: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut committed = working.clone();
        let mut dirty: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut changelog: Vec<Entry> = Vec::new();
        for op in ops {
            match op {
                KvOp::Put(k, v) => {
                    txn.put(&[k], &[v]).unwrap();
                    working.insert(vec![k], vec![v]);
                    dirty.insert(vec![k]);
                }
                KvOp::Delete(k) => {
                    txn.delete(&[k]).unwrap();
                    working.remove(&vec![k]);
                    dirty.insert(vec![k]);
                }
                KvOp::Get(k) => {
                    prop_assert_eq!(txn.get(&[k]).unwrap(), working.get(&vec![k]).cloned());
                }
                KvOp::Commit => {
                    let mut rec = Recorder::default();
                    let n = txn.prepare(&mut rec).unwrap();
                    prop_assert_eq!(n, rec.0.len());
                    let keys: BTreeSet<Vec<u8>> = rec.0.iter().map(|(k, _)| k.clone()).collect();
                    prop_assert_eq!(keys.len(), rec.0.len(), "one record per dirty key");
                    prop_assert_eq!(&keys, &dirty);
                    for (k, v) in &rec.0 {
                        prop_assert_eq!(v, &working.get(k).cloned());
                    }
                    txn.commit().unwrap();
                    changelog.extend(rec.0);
                    committed = working.clone();
                    dirty.clear();
                    prop_assert!(!txn.is_dirty());
                    prop_assert_eq!(txn.uncommitted_bytes(), 0);
                }
                KvOp::Abort => {
                    txn.abort();
                    working = committed.clone();
                    dirty.clear();
                }
                KvOp::PrepareThenAbort => {
                    txn.prepare(&mut Recorder::default()).unwrap();
                    txn.abort();
                    working = committed.clone();
                    dirty.clear();
                }
            }
            prop_assert_eq!(contents(txn.inner()), committed.clone(), "inner holds committed state only");
            prop_assert_eq!(contents(&txn), working.clone());
            prop_assert_eq!(txn.is_dirty(), !dirty.is_empty());
        }
        let mut restored = InMemoryStore::new("s");
        restored.write_batch(&changelog).unwrap();
        prop_assert_eq!(contents(&restored), committed);
    }
}

#[derive(Debug, Clone)]
enum WinOp {
    Put(u8, i64, u8),
    Delete(u8, i64),
    Fetch(u8, i64, i64),
    FetchAll(i64, i64),
    Commit,
    Abort,
}

fn win_op() -> impl Strategy<Value = WinOp> {
    let t = 0i64..400;
    prop_oneof![
        5 => (0u8..4, t.clone(), any::<u8>()).prop_map(|(k, t, v)| WinOp::Put(k, t, v)),
        1 => (0u8..4, t.clone()).prop_map(|(k, t)| WinOp::Delete(k, t)),
        3 => (0u8..4, t.clone(), t.clone()).prop_map(|(k, a, b)| WinOp::Fetch(k, a, b)),
        1 => (t.clone(), t).prop_map(|(a, b)| WinOp::FetchAll(a, b)),
        2 => Just(WinOp::Commit),
        1 => Just(WinOp::Abort),
    ]
}

type WinSet = BTreeSet<(Vec<u8>, i64, Vec<u8>)>;

fn all_windows(store: &dyn WindowStore) -> WinSet {
    let mut out = BTreeSet::new();
    store
        .fetch_all(i64::MIN, i64::MAX, &mut |k, t, v| {
            out.insert((k.to_vec(), t, v.to_vec()));
            true
        })
        .unwrap();
    out
}

proptest! {
    #[test]
    fn window_layer_matches_the_model(ops in proptest::collection::vec(win_op(), 1..60)) {
        const RETENTION: i64 = 100;
        let mut txn = TxnWindowStore::new(InMemoryWindowStore::new("w", RETENTION));
        let mut working = InMemoryWindowStore::new("w", RETENTION);
        let mut committed = working.clone();
        let mut changelog: Vec<Entry> = Vec::new();
        for op in ops {
            match op {
                WinOp::Put(k, t, v) => {
                    prop_assert_eq!(txn.put(&[k], t, &[v]).unwrap(), working.put(&[k], t, &[v]).unwrap());
                }
                WinOp::Delete(k, t) => {
                    txn.delete(&[k], t).unwrap();
                    working.delete(&[k], t).unwrap();
                }
                WinOp::Fetch(k, a, b) => {
                    prop_assert_eq!(txn.fetch(&[k], a, b).unwrap(), working.fetch(&[k], a, b).unwrap());
                }
                WinOp::FetchAll(a, b) => {
                    let mut got = BTreeSet::new();
                    txn.fetch_all(a, b, &mut |k, t, v| { got.insert((k.to_vec(), t, v.to_vec())); true }).unwrap();
                    let mut want = BTreeSet::new();
                    working.fetch_all(a, b, &mut |k, t, v| { want.insert((k.to_vec(), t, v.to_vec())); true }).unwrap();
                    prop_assert_eq!(got, want);
                }
                WinOp::Commit => {
                    let mut rec = Recorder::default();
                    txn.prepare(&mut rec).unwrap();
                    let keys: BTreeSet<&Vec<u8>> = rec.0.iter().map(|(k, _)| k).collect();
                    prop_assert_eq!(keys.len(), rec.0.len(), "one record per dirty window");
                    txn.commit().unwrap();
                    changelog.extend(rec.0);
                    committed = working.clone();
                }
                WinOp::Abort => {
                    txn.abort();
                    working = committed.clone();
                }
            }
            prop_assert_eq!(txn.observed_time(), working.observed_time());
            prop_assert_eq!(all_windows(txn.inner()), all_windows(&committed), "inner holds committed state only");
            prop_assert_eq!(txn.inner().observed_time(), committed.observed_time());
            prop_assert_eq!(all_windows(&txn), all_windows(&working));
        }
        let mut restored = InMemoryWindowStore::new("w", RETENTION);
        restored.restore_batch(&changelog).unwrap();
        prop_assert_eq!(all_windows(&restored), all_windows(&committed));
        prop_assert_eq!(restored.observed_time(), committed.observed_time());
    }
}

#[test]
fn writes_to_one_key_coalesce_into_one_record_and_bytes_are_counted() {
    let mut txn = TxnKeyValueStore::new(InMemoryStore::new("orders"));
    for v in 0..10u8 {
        txn.put(b"O-1", &[v; 100]).unwrap();
    }
    let bytes = txn.uncommitted_bytes();
    assert!(
        (100..200).contains(&bytes),
        "one entry's worth, not ten: {bytes}"
    );
    txn.put(b"O-2", &[1; 100]).unwrap();
    assert!(txn.uncommitted_bytes() > bytes);
    let mut rec = Recorder::default();
    assert_eq!(txn.prepare(&mut rec).unwrap(), 2);
    let o1 = rec.0.iter().find(|(k, _)| k == b"O-1").unwrap();
    assert_eq!(
        o1.1.as_deref(),
        Some(&[9u8; 100][..]),
        "the last write wins"
    );
}

#[test]
fn a_refused_changelog_send_fails_the_prepare_and_abort_restores_committed_reads() {
    let mut inner = InMemoryStore::new("orders");
    inner.put(b"k", b"committed").unwrap();
    let mut txn = TxnKeyValueStore::new(inner);
    txn.put(b"k", b"uncommitted").unwrap();
    let err = txn.prepare(&mut Refusing).unwrap_err();
    assert!(matches!(err, StoreError::Changelog { .. }), "{err}");
    txn.abort();
    assert_eq!(txn.get(b"k").unwrap(), Some(b"committed".to_vec()));
    assert!(!txn.is_dirty());
}

#[test]
fn expired_windows_are_not_sent_to_the_changelog() {
    let mut txn = TxnWindowStore::new(InMemoryWindowStore::new("w", 10));
    assert!(txn.put(b"a", 1, b"old").unwrap());
    assert!(txn.put(b"b", 100, b"new").unwrap());
    assert!(
        !txn.put(b"c", 5, b"expired").unwrap(),
        "refused like the inner store would"
    );
    let mut rec = Recorder::default();
    txn.prepare(&mut rec).unwrap();
    assert_eq!(
        rec.0,
        vec![(encode_window_key(b"b", 100), Some(b"new".to_vec()))]
    );
    txn.commit().unwrap();
    assert_eq!(txn.inner().observed_time(), 100);
}
