//! Tests of the segmented RocksDB window store.
use super::*;
use crate::checkpoint::Checkpoint;
use crate::window::InMemoryWindowStore;
use proptest::prelude::*;
use std::sync::atomic::AtomicBool;

const MIN: i64 = 60_000;

fn times(entries: &[(i64, Vec<u8>)]) -> Vec<i64> {
    entries.iter().map(|e| e.0).collect()
}

fn all(store: &impl WindowStore, from: i64, to: i64) -> Vec<(Vec<u8>, i64, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .fetch_all(from, to, &mut |k, t, v| {
            out.push((k.to_vec(), t, v.to_vec()));
            true
        })
        .unwrap();
    out
}

#[test]
fn segment_interval_is_half_the_retention_and_at_least_a_minute() {
    assert_eq!(RocksDbWindowStore::segment_interval(1_000), MIN);
    assert_eq!(RocksDbWindowStore::segment_interval(10 * MIN), 5 * MIN);
}

#[test]
fn fetch_is_by_key_and_inclusive_time_range_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = RocksDbWindowStore::open(tmp.path(), "w", 10 * MIN).unwrap();
    assert_eq!(
        (s.name(), s.retention_ms(), s.observed_time()),
        ("w", 10 * MIN, i64::MIN)
    );
    // 5-minute segments; times on both sides of segment boundaries.
    let puts = [
        ("a", 10),
        ("a", 5 * MIN),
        ("ab", 15),
        ("b", 5 * MIN),
        ("a", 5 * MIN + 1),
        ("", 20),
    ];
    for (k, t) in puts {
        assert!(s.put(k.as_bytes(), t, t.to_string().as_bytes()).unwrap());
    }
    let got = s.fetch(b"a", 10, 5 * MIN).unwrap();
    assert_eq!(got, [(10, b"10".to_vec()), (5 * MIN, b"300000".to_vec())]);
    assert_eq!(
        times(&s.fetch(b"a", i64::MIN, i64::MAX).unwrap()),
        [10, 5 * MIN, 5 * MIN + 1]
    );
    assert_eq!(
        times(&s.fetch(b"ab", 0, 100).unwrap()),
        [15],
        "no leak between a and ab"
    );
    assert!(s.fetch(b"a", 11, 5 * MIN - 1).unwrap().is_empty());
    assert!(s.fetch(b"a", 5 * MIN, 10).unwrap().is_empty(), "from > to");
    assert!(s.fetch(b"c", i64::MIN, i64::MAX).unwrap().is_empty());
    let in_range = all(&s, 15, 5 * MIN);
    let keys: Vec<(&[u8], i64)> = in_range
        .iter()
        .map(|(k, t, _)| (k.as_slice(), *t))
        .collect();
    assert_eq!(
        keys,
        [
            (&b""[..], 20),
            (b"ab", 15),
            (b"a", 5 * MIN),
            (b"b", 5 * MIN)
        ]
    );
    let mut seen = 0;
    s.fetch_all(i64::MIN, i64::MAX, &mut |_, _, _| {
        seen += 1;
        seen < 2
    })
    .unwrap();
    assert_eq!(seen, 2, "stops when f returns false");
    s.delete(b"a", 10).unwrap();
    s.delete(b"a", 7 * MIN).unwrap(); // no such segment: a no-op
    assert_eq!(times(&s.fetch(b"a", 0, 100).unwrap()), Vec::<i64>::new());
}

#[test]
fn out_of_order_puts_within_retention_are_kept_too_old_ones_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = RocksDbWindowStore::open(tmp.path(), "w", 100).unwrap();
    assert!(s.put(b"k", 0, b"0").unwrap());
    assert!(s.put(b"k", 100, b"100").unwrap());
    assert_eq!(
        s.fetch(b"k", 0, 200).unwrap().len(),
        2,
        "0 is exactly at the edge"
    );
    assert!(s.put(b"k", 101, b"101").unwrap());
    assert_eq!(s.observed_time(), 101);
    assert_eq!(
        times(&s.fetch(b"k", i64::MIN, i64::MAX).unwrap()),
        [100, 101]
    );
    assert!(
        all(&s, 0, 0).is_empty(),
        "window 0 expired for fetch_all too"
    );
    assert!(!s.put(b"k", 0, b"late").unwrap(), "expired window refused");
    assert!(
        s.put(b"k", 50, b"in retention").unwrap(),
        "out of order but retained"
    );
    assert_eq!(times(&s.fetch(b"k", 0, 200).unwrap()), [50, 100, 101]);
    assert_eq!(s.observed_time(), 101);
}

#[test]
fn expired_segments_are_dropped_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Checkpoint::new(7).write(dir).unwrap();
    let mut s = RocksDbWindowStore::open(dir, "w", 2 * MIN).unwrap(); // 1-minute segments
    let reader = s.reader();
    for t in [-1, 0, MIN, 2 * MIN + 10_000] {
        assert!(s.put(b"k", t, b"v").unwrap());
    }
    // Oldest retained is 10s: the segment [-60s, -1] is gone, [0, 59.999s] is partly retained.
    assert_eq!(s.segment_starts(), [0, MIN, 2 * MIN]);
    assert_eq!(
        times(&reader.fetch(b"k", i64::MIN, i64::MAX).unwrap()),
        [MIN, 2 * MIN + 10_000]
    );
    assert!(s.put(b"k", 4 * MIN, b"v").unwrap());
    assert_eq!(s.segment_starts(), [2 * MIN, 4 * MIN]);
    assert_eq!(
        times(&s.fetch(b"k", i64::MIN, i64::MAX).unwrap()),
        [2 * MIN + 10_000, 4 * MIN]
    );
    assert!(!s.put(b"k", MIN, b"late").unwrap());
    assert_eq!(
        s.segment_starts(),
        [2 * MIN, 4 * MIN],
        "a refused put creates no segment"
    );
    assert_eq!(
        Checkpoint::read(dir).unwrap(),
        Some(Checkpoint::new(7)),
        "checkpoint untouched"
    );
}

#[test]
fn reopen_after_flush_keeps_data_and_observed_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w-0");
    {
        let mut s = RocksDbWindowStore::open(&dir, "w", 2 * MIN).unwrap();
        for t in [0, MIN + 5, 2 * MIN, 3 * MIN + 1, 3 * MIN - 7] {
            s.put(b"k", t, t.to_string().as_bytes()).unwrap();
        }
        s.put(b"other", 2 * MIN + 3, b"o").unwrap();
        s.delete(b"k", 2 * MIN).unwrap();
        s.flush().unwrap();
        Checkpoint::new(42).write(&dir).unwrap();
    }
    let mut s = RocksDbWindowStore::open(&dir, "w", 2 * MIN).unwrap();
    assert_eq!(s.observed_time(), 3 * MIN + 1);
    assert_eq!(
        times(&s.fetch(b"k", i64::MIN, i64::MAX).unwrap()),
        [MIN + 5, 3 * MIN - 7, 3 * MIN + 1]
    );
    assert_eq!(
        s.fetch(b"other", 0, i64::MAX).unwrap(),
        [(2 * MIN + 3, b"o".to_vec())]
    );
    assert!(
        !s.put(b"k", MIN, b"late").unwrap(),
        "still too old after reopen"
    );
    assert_eq!(Checkpoint::read(&dir).unwrap(), Some(Checkpoint::new(42)));
    drop(s);
    RocksDbWindowStore::destroy(&dir).unwrap();
    assert!(!dir.exists());
    RocksDbWindowStore::destroy(&dir).unwrap();
}

#[test]
fn segments_of_another_interval_are_refused_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = RocksDbWindowStore::open(tmp.path(), "w", 10 * MIN).unwrap();
        s.put(b"k", 5 * MIN, b"v").unwrap();
    }
    let err = RocksDbWindowStore::open(tmp.path(), "w", 4 * MIN).unwrap_err();
    assert!(err.to_string().contains("segment interval"), "{err}");
    // The same retention still opens it.
    let s = RocksDbWindowStore::open(tmp.path(), "w", 10 * MIN).unwrap();
    assert_eq!(s.observed_time(), 5 * MIN);
}

#[test]
fn reader_sees_writes_from_another_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = RocksDbWindowStore::open(tmp.path(), "w", 2 * MIN).unwrap();
    let reader = s.reader();
    assert_eq!(reader.name(), "w");
    let writer = std::thread::spawn(move || {
        s.put(b"k", 5, b"v").unwrap();
        s
    });
    let mut s = writer.join().unwrap();
    let r2 = reader.clone();
    let seen = std::thread::spawn(move || r2.fetch(b"k", 0, 10).unwrap())
        .join()
        .unwrap();
    assert_eq!(seen, [(5, b"v".to_vec())]);
    s.put(b"k", 10 * MIN, b"w").unwrap(); // expires and drops the first segment
    assert_eq!(
        times(&reader.fetch(b"k", i64::MIN, i64::MAX).unwrap()),
        [10 * MIN]
    );
    let mut n = 0;
    reader
        .fetch_all(i64::MIN, i64::MAX, &mut |_, _, _| {
            n += 1;
            true
        })
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn readers_keep_working_while_segments_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = RocksDbWindowStore::open(tmp.path(), "w", MIN).unwrap();
    let reader = s.reader();
    let done = Arc::new(AtomicBool::new(false));
    let scans = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut scans = 0;
            while !done.load(Ordering::Relaxed) {
                // Reads racing with segment drops still succeed and stay in time order.
                let got = times(&reader.fetch(b"k", i64::MIN, i64::MAX).unwrap());
                assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
                reader
                    .fetch_all(i64::MIN, i64::MAX, &mut |_, _, _| true)
                    .unwrap();
                scans += 1;
            }
            scans
        })
    };
    for i in 0..600 {
        s.put(b"k", i * 2_000, b"v").unwrap();
        if i % 10 == 0 {
            s.flush().unwrap(); // as commits do: segments get SST files
        }
    }
    done.store(true, Ordering::Relaxed);
    assert!(scans.join().unwrap() > 0);
    let live = s.segment_starts().len();
    assert!(live <= 3, "{live} segments left");
    assert_eq!(s.fetch(b"k", i64::MIN, i64::MAX).unwrap().len(), 31);
}

#[test]
fn restore_batch_matches_applying_records_one_by_one() {
    let k = encode_window_key;
    // Retention 2 min: 1-minute segments. Both stores start with a@3min.
    let log: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
        (k(b"a", MIN + 1), Some(b"1".to_vec())),
        (k(b"a", 3 * MIN), None), // deletes what was there before the batch
        (k(b"a", 4 * MIN), None), // its segment does not exist yet: a no-op
        (k(b"a", 4 * MIN), Some(b"2".to_vec())), // expires up to 2 min, a@1min with it
        (k(b"b", 2 * MIN), Some(b"3".to_vec())),
        (k(b"b", 2 * MIN), None),
        (k(b"b", 2 * MIN), Some(b"4".to_vec())),
        (k(b"a", 5 * MIN), Some(b"5".to_vec())), // expires up to 3 min, b@2min with it
        (k(b"a", 10), Some(b"late".to_vec())),   // refused
        (k(b"c", 4 * MIN + 1), Some(b"6".to_vec())),
        (k(b"c", 4 * MIN + 2), Some(b"7".to_vec())),
        (k(b"c", 4 * MIN + 2), None),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let mut one = RocksDbWindowStore::open(&tmp.path().join("one"), "w", 2 * MIN).unwrap();
    let mut batch = RocksDbWindowStore::open(&tmp.path().join("batch"), "w", 2 * MIN).unwrap();
    one.put(b"a", 3 * MIN, b"pre").unwrap();
    batch.put(b"a", 3 * MIN, b"pre").unwrap();
    for (raw, value) in &log {
        let (key, t) = decode_window_key(raw).unwrap();
        match value {
            Some(v) => {
                one.put(key, t, v).unwrap();
            }
            None => one.delete(key, t).unwrap(),
        }
    }
    batch.restore_batch(&log).unwrap();
    assert_eq!(batch.observed_time(), 5 * MIN);
    assert_eq!(batch.observed_time(), one.observed_time());
    let expected = all(&one, i64::MIN, i64::MAX);
    assert_eq!(all(&batch, i64::MIN, i64::MAX), expected);
    let keys: Vec<(&[u8], i64, &[u8])> = expected
        .iter()
        .map(|(k, t, v)| (k.as_slice(), *t, v.as_slice()))
        .collect();
    let want: [(&[u8], i64, &[u8]); 3] = [
        (b"a", 4 * MIN, b"2"),
        (b"c", 4 * MIN + 1, b"6"),
        (b"a", 5 * MIN, b"5"),
    ];
    assert_eq!(keys, want);
    // Segments 1 and 2 min expired whole; 3 min is still retained (empty after the delete).
    assert_eq!(batch.segment_starts(), [3 * MIN, 4 * MIN, 5 * MIN]);
    assert_eq!(batch.segment_starts(), one.segment_starts());
    let err = batch
        .restore_batch(&[(vec![0, 0, 0, 9], None)])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Codec { ref store, .. } if store == "w"),
        "{err:?}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, i64, u8),
    Delete(usize, i64),
    /// Delete what the n-th earlier put (mod their number) wrote, if any put came before.
    DeleteEarlier(usize),
}

const KEYS: [&[u8]; 4] = [b"a", b"ab", b"b", b""];

fn op() -> impl Strategy<Value = Op> {
    // Times on a 5 s grid from -200 s to 600 s: collisions, negative times, several segments.
    let time = (-40i64..120).prop_map(|x| x * 5_000);
    prop_oneof![
        3 => (0..KEYS.len(), time.clone(), any::<u8>()).prop_map(|(k, t, v)| Op::Put(k, t, v)),
        1 => (0..KEYS.len(), time).prop_map(|(k, t)| Op::Delete(k, t)),
        1 => any::<usize>().prop_map(Op::DeleteEarlier),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn behaves_like_the_in_memory_store(
        retention in prop_oneof![Just(1_000i64), Just(2 * MIN), Just(5 * MIN)],
        ops in proptest::collection::vec(op(), 0..40),
        (from, to) in (-250_000i64..650_000, -250_000i64..650_000),
        split in 0usize..40,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut rocks = RocksDbWindowStore::open(&tmp.path().join("r"), "w", retention).unwrap();
        let mut restored = RocksDbWindowStore::open(&tmp.path().join("b"), "w", retention).unwrap();
        let mut mem = InMemoryWindowStore::new("w", retention);
        let mut log = Vec::new();
        let mut puts = Vec::new();
        for op in &ops {
            let (k, t, value) = match *op {
                Op::Put(k, t, v) => (k, t, Some(v)),
                Op::Delete(k, t) => (k, t, None),
                Op::DeleteEarlier(_) if puts.is_empty() => continue,
                Op::DeleteEarlier(n) => {
                    let (k, t) = puts[n % puts.len()];
                    (k, t, None)
                }
            };
            if let Some(v) = value {
                prop_assert_eq!(rocks.put(KEYS[k], t, &[v]).unwrap(), mem.put(KEYS[k], t, &[v]).unwrap());
                puts.push((k, t));
            } else {
                rocks.delete(KEYS[k], t).unwrap();
                mem.delete(KEYS[k], t).unwrap();
            }
            log.push((encode_window_key(KEYS[k], t), value.map(|v| vec![v])));
            // Reads between writes: a read after a write sees it (the store keeps its
            // iterator between reads and must renew it on every write).
            prop_assert_eq!(rocks.fetch(KEYS[k], i64::MIN, i64::MAX).unwrap(), mem.fetch(KEYS[k], i64::MIN, i64::MAX).unwrap());
        }
        // Two batches, so that the second one also meets segments that already exist, with
        // reads in between.
        let (first, second) = log.split_at(split.min(log.len()));
        restored.restore_batch(first).unwrap();
        for key in KEYS {
            restored.fetch(key, i64::MIN, i64::MAX).unwrap();
        }
        restored.restore_batch(second).unwrap();
        for store in [&rocks, &restored] {
            prop_assert_eq!(store.observed_time(), mem.observed_time());
            for key in KEYS {
                prop_assert_eq!(store.fetch(key, i64::MIN, i64::MAX).unwrap(), mem.fetch(key, i64::MIN, i64::MAX).unwrap());
                prop_assert_eq!(store.fetch(key, from, to).unwrap(), mem.fetch(key, from, to).unwrap());
            }
            for (lo, hi) in [(i64::MIN, i64::MAX), (from, to)] {
                let mut got = all(store, lo, hi);
                got.sort();
                prop_assert_eq!(got, all(&mem, lo, hi));
            }
        }
    }
}
