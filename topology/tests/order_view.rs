//! The order-view topology through `TestDriver` (as a user of the crate would test it), and the
//! property tests that tie the topology to the pure fold: same result, and replays are harmless.

use paystream_state::memory::InMemoryStore;
use paystream_state::store::{KeyValueStore, StoreError};
use paystream_state::transactional::{ChangelogWriter, TxnKeyValueStore};
use paystream_topology::order::{
    apply, decode_order, fold_events, order_view_topology, parse_event, try_order_view_topology,
    Applied, EventType, OrderEvent, StoredOrder, ORDERS_STORE,
};
use paystream_topology::{partition_for_key, ProcessError, Record, RecordMeta, TaskIo, TestDriver};
use proptest::prelude::*;
use EventType::*;

fn ev(order: &str, id: &str, t: EventType, ts: i64) -> OrderEvent {
    OrderEvent {
        order_id: order.into(),
        event_id: id.into(),
        event_type: t,
        amount: None,
        currency: None,
        member_id: None,
        phone: None,
        ts,
    }
}

fn json(e: &OrderEvent) -> Vec<u8> {
    serde_json::to_vec(e).unwrap()
}

// ---------------------------------------------------------------- the topology

fn driver(partitions: i32) -> TestDriver {
    TestDriver::new(order_view_topology("PAYMENT.ORDER"), partitions)
}

fn pipe(d: &mut TestDriver, e: &OrderEvent) {
    d.pipe(Some(e.order_id.as_bytes()), Some(&json(e)), e.ts)
        .unwrap();
}

fn view_in(d: &TestDriver, order: &str) -> Option<StoredOrder> {
    d.get(ORDERS_STORE, order.as_bytes())
        .map(|b| decode_order(&b).unwrap())
}

#[test]
fn topology_shape() {
    let t = order_view_topology("PAYMENT.ORDER");
    assert_eq!(t.source_topic(), "PAYMENT.ORDER");
    assert_eq!(t.stores()[0].name, ORDERS_STORE);
    assert_eq!(t.stores().len(), 1);
    assert!(t.sink_topics().is_empty());
    assert!(t.describe().contains("(stores: [orders])"), "{t}");
    assert!(try_order_view_topology("bad topic").is_err());
}

#[test]
fn driver_folds_each_order_in_its_partition() {
    let mut d = driver(12);
    let history = [
        ev("O-1", "a", ApprovalRequested, 1),
        ev("O-2", "b", ApprovalRequested, 2),
        ev("O-1", "c", ApprovalCompleted, 3),
        ev("O-1", "a", ApprovalRequested, 1), // duplicate
        ev("O-2", "d", ApprovalFailed, 4),
        ev("O-2", "e", CancelRequested, 5), // terminal
        ev("O-1", "f", Cancelled, 6),
    ];
    for e in &history {
        pipe(&mut d, e);
    }
    for order in ["O-1", "O-2"] {
        let events: Vec<&OrderEvent> = history.iter().filter(|e| e.order_id == order).collect();
        assert_eq!(view_in(&d, order), fold_events(events), "{order}");
        let p = partition_for_key(order.as_bytes(), 12);
        assert!(!d.store(ORDERS_STORE, p).unwrap().is_empty());
    }
    assert_eq!(view_in(&d, "O-1").unwrap().view.events, 3);
    assert_eq!(view_in(&d, "O-2").unwrap().view.state, ApprovalFailed);
    assert_eq!(view_in(&d, "O-3"), None);
    assert!(d.dead_letters().is_empty());
}

#[test]
fn malformed_records_are_dead_lettered_while_good_ones_apply() {
    let mut d = driver(4);
    let good1 = ev("O-1", "a", ApprovalRequested, 1);
    let good2 = ev("O-1", "b", ApprovalCompleted, 2);
    pipe(&mut d, &good1);
    d.pipe(None, Some(&json(&good2)), 0).unwrap();
    d.pipe(Some(b"O-1"), None, 0).unwrap();
    d.pipe(Some(b"\xc3\x28"), Some(b"{}"), 0).unwrap();
    d.pipe(Some(b"O-1"), Some(b"garbage"), 0).unwrap();
    d.pipe(
        Some(b"O-1"),
        Some(br#"{"order_id":"O-1","event_id":"x","type":"NOPE","ts":1}"#),
        0,
    )
    .unwrap();
    d.pipe(
        Some(b"O-1"),
        Some(br#"{"order_id":"O-1","type":"CANCELLED","ts":1}"#),
        0,
    )
    .unwrap();
    d.pipe(Some(b"O-2"), Some(&json(&good2)), 0).unwrap();
    d.pipe(
        Some(b""),
        Some(br#"{"order_id":"","event_id":"x","type":"CANCELLED","ts":1}"#),
        0,
    )
    .unwrap();
    pipe(&mut d, &good2);

    let reasons: Vec<&str> = d
        .dead_letters()
        .iter()
        .map(|dl| dl.reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "missing_key",
            "missing_value",
            "invalid_utf8_key",
            "invalid_json",
            "unknown_type",
            "missing_field",
            "key_mismatch",
            "empty_id"
        ]
    );
    let first = &d.dead_letters()[0];
    assert_eq!(first.record.value.as_deref(), Some(json(&good2).as_slice()));
    assert_eq!(first.meta.topic, "PAYMENT.ORDER");
    let s = view_in(&d, "O-1").unwrap();
    assert_eq!((s.view.state, s.view.events), (ApprovalCompleted, 2));
    assert_eq!(
        view_in(&d, "O-2"),
        None,
        "a mismatched record must not create O-2"
    );
}

/// A changelog writer that remembers what it was sent.
#[derive(Default)]
struct Recorder(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl ChangelogWriter for Recorder {
    fn send(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        self.0.push((key.to_vec(), value.map(<[u8]>::to_vec)));
        Ok(())
    }
}

/// One task with the runtime's transactional store layer, to see what each commit logs.
struct TxnTask(TxnKeyValueStore<InMemoryStore>);

impl TaskIo for TxnTask {
    fn store(&mut self, name: &str) -> Option<&mut dyn KeyValueStore> {
        (name == ORDERS_STORE).then_some(&mut self.0 as &mut dyn KeyValueStore)
    }
    fn send(&mut self, topic: &str, _: Record) -> Result<(), ProcessError> {
        Err(ProcessError::Other(format!("unexpected send to {topic}")))
    }
    fn dead_letter(&mut self, _: Record, reason: &str, _: &str) -> Result<(), ProcessError> {
        Err(ProcessError::Other(format!(
            "unexpected dead letter {reason}"
        )))
    }
    fn tally(&mut self, _: paystream_topology::processor::Tally<'_>) {}
    fn origin(&mut self, _: paystream_topology::processor::Origin) {}
}

impl TxnTask {
    /// Commit, returning the changelog records of the commit.
    fn commit(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut rec = Recorder::default();
        self.0.prepare(&mut rec).unwrap();
        self.0.commit().unwrap();
        rec.0
    }
}

#[test]
fn events_of_one_commit_log_one_record_and_repeats_log_nothing() {
    let mut io = TxnTask(TxnKeyValueStore::new(InMemoryStore::new(ORDERS_STORE)));
    let mut task = order_view_topology("PAYMENT.ORDER").instantiate();
    let meta = RecordMeta {
        topic: "PAYMENT.ORDER".into(),
        partition: 0,
        offset: 0,
    };
    let mut run = |io: &mut TxnTask, e: &OrderEvent| {
        let record = Record::new(e.order_id.clone(), json(e), e.ts);
        task.process(io, &meta, record, 0).unwrap();
    };
    run(&mut io, &ev("O", "a", ApprovalRequested, 1));
    run(&mut io, &ev("O", "b", ApprovalCompleted, 2));
    let log = io.commit();
    assert_eq!(
        log.len(),
        1,
        "two events of one order within a commit: one record"
    );
    let view = decode_order(log[0].1.as_deref().unwrap()).unwrap().view;
    assert_eq!((view.state, view.events), (ApprovalCompleted, 2));
    run(&mut io, &ev("O", "b", ApprovalCompleted, 2)); // duplicate
    run(&mut io, &ev("O", "c", ApprovalRequested, 0)); // ignored (terminal)
    assert!(io.commit().is_empty(), "nothing changed, nothing logged");
}

#[test]
fn undecodable_stored_value_stops_the_task() {
    let mut io = TxnTask(TxnKeyValueStore::new(InMemoryStore::new(ORDERS_STORE)));
    io.0.inner_mut().put(b"O", &[99, 1, 2]).unwrap();
    let mut task = order_view_topology("PAYMENT.ORDER").instantiate();
    let meta = RecordMeta {
        topic: "PAYMENT.ORDER".into(),
        partition: 0,
        offset: 0,
    };
    let e = ev("O", "a", ApprovalRequested, 1);
    let err = task
        .process(&mut io, &meta, Record::new("O", json(&e), 1), 0)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("store orders: cannot decode value"),
        "{err}"
    );
    assert_eq!(
        io.0.inner().get(b"O").unwrap(),
        Some(vec![99, 1, 2]),
        "not overwritten"
    );
}

// ---------------------------------------------------------------- properties

/// 1..8 distinct events of one order (distinct ids, any types, ts, optional attributes), then a
/// sequence of indices into them: a permutation with duplicates and omissions.
fn history() -> impl Strategy<Value = Vec<OrderEvent>> {
    let event = (
        proptest::sample::select(EventType::ALL.to_vec()),
        0..1_000i64,
        proptest::option::of(0..100_000i64),
        proptest::option::of("[A-Z]{3}"),
        proptest::option::of("M-[0-9]{1,3}"),
    );
    proptest::collection::vec(event, 1..8)
        .prop_map(|events| {
            events
                .into_iter()
                .enumerate()
                .map(|(i, (t, ts, amount, currency, member_id))| OrderEvent {
                    amount,
                    currency,
                    member_id,
                    ..ev("O-7", &format!("e{i}"), t, ts)
                })
                .collect::<Vec<_>>()
        })
        .prop_flat_map(|distinct| {
            let n = distinct.len();
            proptest::collection::vec(0..n, 1..24)
                .prop_map(move |order| order.into_iter().map(|i| distinct[i].clone()).collect())
        })
}

proptest! {
    /// The topology over an (encoded, partitioned) store computes exactly the pure fold.
    #[test]
    fn topology_equals_the_pure_fold(events in history(), partitions in 1..16i32) {
        let mut d = driver(partitions);
        for e in &events {
            pipe(&mut d, e);
        }
        prop_assert_eq!(view_in(&d, "O-7"), fold_events(&events));
        prop_assert_eq!(fold_events(&events), fold_events(&events));
    }

    /// Replay after a crash: the store already holds the fold of `events[..k]` and the partition
    /// is re-read from an older committed offset `j <= k`. The result is the same as once.
    #[test]
    fn replaying_a_prefix_changes_nothing(events in history(), a in 0..24usize, b in 0..24usize) {
        let k = a.min(events.len());
        let j = b.min(k);
        let mut d = driver(3);
        for e in events[..k].iter().chain(&events[j..]) {
            pipe(&mut d, e);
        }
        prop_assert_eq!(view_in(&d, "O-7"), fold_events(&events));
    }

    /// What the view says about itself is consistent with the history.
    #[test]
    fn fold_invariants(events in history()) {
        let mut current: Option<StoredOrder> = None;
        let mut applied: Vec<String> = Vec::new();
        for e in &events {
            let before = current.clone();
            match apply(current.as_ref(), e) {
                Applied::Updated(next) => {
                    prop_assert!(!applied.contains(&e.event_id));
                    if let Some(prev) = &before {
                        prop_assert!(next.view.state.rank() >= prev.view.state.rank());
                    }
                    applied.push(e.event_id.clone());
                    current = Some(next);
                }
                Applied::Duplicate => prop_assert!(applied.contains(&e.event_id)),
                Applied::Ignored(_) => prop_assert!(!applied.contains(&e.event_id)),
            }
        }
        let s = current.unwrap();
        prop_assert_eq!(s.view.events as usize, applied.len());
        prop_assert_eq!(&s.seen, &applied);
        prop_assert_eq!(s.view.last_event_id.as_str(), applied.last().unwrap().as_str());
        prop_assert!(s.view.created_ts <= s.view.updated_ts);
    }

    /// Whatever we serialize, we parse back (the generator writes events with serde_json).
    #[test]
    fn events_round_trip_through_json(events in history()) {
        for e in &events {
            prop_assert_eq!(&parse_event(Some(e.order_id.as_bytes()), Some(&json(e))).unwrap(), e);
        }
    }
}
