//! One clock (`--timestamp-source`, `--max-future-ms`) through the shipped topology and
//! `TestDriver`: a replay of old history behaves like the original run, a far-future event is
//! dead-lettered and switches nothing off, and a dead-lettered record never moves stream time.
//!
//! The expected alerts and SMS come from the scenario itself (which orders complete, which do
//! not), never from the processors' code.

mod common;

use std::collections::BTreeSet;

use paystream_topology::approval::{AlertStatus, ApprovalAlert, ApprovalTimeoutConfig};
use paystream_topology::order::{EventType, OrderEvent};
use paystream_topology::shipped::TimestampSource;
use paystream_topology::sms::{SmsConfig, SmsRequest};
use paystream_topology::{shipped_topology, ShippedTopologies, TestDriver};
use EventType::*;

const MIN: i64 = 60_000;
const DAY: i64 = 24 * 60 * MIN;
/// Wall clock of every driver here.
const NOW: i64 = 1_790_000_000_000;
/// A year before `NOW`: the history being replayed.
const THEN: i64 = NOW - 365 * DAY;

/// An event of `order` whose phone number belongs to that order alone.
fn ev(order: &str, id: &str, t: EventType, ts: i64) -> OrderEvent {
    common::ev(order, id, t, ts, &format!("010-{order}"))
}

fn driver(source: TimestampSource) -> TestDriver {
    let which = ShippedTopologies {
        sms: Some(SmsConfig::default()),
        approval_timeout: Some(ApprovalTimeoutConfig::default()),
        timestamp_source: source,
        ..ShippedTopologies::default()
    };
    TestDriver::new(shipped_topology("PAYMENT.ORDER", &which).unwrap(), 1).with_wall_clock(NOW)
}

/// A day of history: order `i` is requested at `THEN + i min`; every third order never completes,
/// the others complete 30 s later (the timeout is 5 min). The last order is far later, so every
/// deadline has passed by the end. Returns the events and the orders that never completed.
fn history() -> (Vec<OrderEvent>, BTreeSet<String>) {
    let mut events = Vec::new();
    let mut never = BTreeSet::new();
    for i in 0..60 {
        let order = format!("O-{i}");
        let t = THEN + i * MIN;
        events.push(ev(&order, &format!("{order}-r"), ApprovalRequested, t));
        if i % 3 == 0 {
            never.insert(order);
        } else {
            events.push(ev(
                &order,
                &format!("{order}-c"),
                ApprovalCompleted,
                t + 30_000,
            ));
        }
    }
    events.push(ev("LAST", "LAST-r", ApprovalRequested, THEN + DAY));
    events.push(ev("LAST", "LAST-c", ApprovalCompleted, THEN + DAY + 1_000));
    (events, never)
}

fn pipe_all(d: &mut TestDriver, events: &[OrderEvent], record_time: impl Fn(&OrderEvent) -> i64) {
    for e in events {
        let json = serde_json::to_vec(e).unwrap();
        d.pipe(Some(e.order_id.as_bytes()), Some(&json), record_time(e))
            .unwrap();
    }
}

fn alerted(d: &mut TestDriver) -> BTreeSet<String> {
    d.read_output("PAYMENT.APPROVAL_TIMEOUT")
        .iter()
        .map(|r| serde_json::from_slice::<ApprovalAlert>(r.value.as_deref().unwrap()).unwrap())
        .filter(|a| a.status == AlertStatus::Timeout)
        .map(|a| a.order_id)
        .collect()
}

fn sms_orders(d: &mut TestDriver) -> BTreeSet<String> {
    d.read_output("SEND_SMS")
        .iter()
        .map(|r| serde_json::from_slice::<SmsRequest>(r.value.as_deref().unwrap()).unwrap())
        .map(|s| s.order_id)
        .collect()
}

#[test]
fn a_replay_of_old_history_raises_exactly_the_alerts_of_the_original_run() {
    let (events, never) = history();
    let completed: BTreeSet<String> = events
        .iter()
        .filter(|e| e.event_type == ApprovalCompleted)
        .map(|e| e.order_id.clone())
        .collect();

    // The original run: record time = event time.
    let mut original = driver(TimestampSource::Event);
    pipe_all(&mut original, &events, |e| e.ts);
    // The replay a year later: a console producer stamps every record with the time it sends
    // it (all within one second).
    let mut replay = driver(TimestampSource::Event);
    pipe_all(&mut replay, &events, |_| NOW);

    for d in [&mut original, &mut replay] {
        assert_eq!(
            alerted(d),
            never,
            "alerts are the orders that never completed"
        );
        assert_eq!(sms_orders(d), completed, "one SMS per completed order");
        assert!(d.dead_letters().is_empty());
    }
}

#[test]
fn record_time_is_the_clock_when_asked_for() {
    // Event times all the same, record times a day apart: with the record timestamp as the
    // clock, the requests are overdue by the last record; with event time nothing is.
    let events = [
        ev("A", "A-r", ApprovalRequested, THEN),
        ev("B", "B-r", ApprovalRequested, THEN),
    ];
    let mut by_record = driver(TimestampSource::Record);
    let mut by_event = driver(TimestampSource::Event);
    for d in [&mut by_record, &mut by_event] {
        pipe_all(d, &events[..1], |_| NOW - DAY);
        pipe_all(d, &events[1..], |_| NOW);
    }
    assert_eq!(alerted(&mut by_record), BTreeSet::from(["A".to_owned()]));
    assert!(alerted(&mut by_event).is_empty());
}

#[test]
fn a_far_future_event_is_dead_lettered_and_switches_nothing_off() {
    let mut d = driver(TimestampSource::Event);
    let t = NOW - 10 * MIN;
    let bad = ev("FUTURE", "F-c", ApprovalCompleted, NOW + 100 * 365 * DAY);
    pipe_all(&mut d, &[bad], |_| NOW);
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "timestamp_in_future");
    assert_eq!(
        d.stream_time(0),
        i64::MIN,
        "a dead letter does not move stream time"
    );
    assert!(
        d.store("orders", 0).is_none_or(|s| s.is_empty()),
        "nothing was applied"
    );

    // Later real events are handled as if the bad one had never come.
    let events: Vec<OrderEvent> = (0..5)
        .flat_map(|i| {
            let o = format!("O-{i}");
            [
                ev(&o, &format!("{o}-r"), ApprovalRequested, t + i * 1_000),
                ev(
                    &o,
                    &format!("{o}-c"),
                    ApprovalCompleted,
                    t + i * 1_000 + 500,
                ),
            ]
        })
        .collect();
    pipe_all(&mut d, &events, |e| e.ts);
    assert_eq!(
        sms_orders(&mut d),
        (0..5).map(|i| format!("O-{i}")).collect::<BTreeSet<_>>()
    );
    assert_eq!(d.late_records(0), 0);
    assert_eq!(d.stream_time(0), t + 4_500);

    // Up to the bound is accepted: one hour ahead of the wall clock, not a millisecond more.
    let edge = ev("EDGE", "E-r", ApprovalRequested, NOW + 60 * MIN);
    let over = ev("OVER", "O-r", ApprovalRequested, NOW + 60 * MIN + 1);
    pipe_all(&mut d, &[edge, over], |e| e.ts);
    let reasons: Vec<&str> = d.dead_letters().iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(reasons, ["timestamp_in_future", "timestamp_in_future"]);
    assert_eq!(d.stream_time(0), NOW + 60 * MIN);
}

#[test]
fn a_record_any_node_dead_letters_does_not_move_stream_time() {
    let mut d = driver(TimestampSource::Event);
    let good = ev("O-1", "r", ApprovalRequested, NOW - DAY);
    pipe_all(&mut d, &[good], |e| e.ts);
    assert_eq!(d.stream_time(0), NOW - DAY);
    // Valid time, but the key is not the order id: the order view dead-letters it.
    let mismatched = ev("O-2", "r", ApprovalRequested, NOW - 10);
    let json = serde_json::to_vec(&mismatched).unwrap();
    d.pipe(Some(b"another-key"), Some(&json), NOW - 10).unwrap();
    // No readable time at all.
    d.pipe(Some(b"O-3"), Some(b"{\"order_id\":\"O-3\"}"), NOW)
        .unwrap();
    let reasons: Vec<&str> = d.dead_letters().iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(reasons, ["key_mismatch", "missing_field"]);
    assert_eq!(d.stream_time(0), NOW - DAY);
}
