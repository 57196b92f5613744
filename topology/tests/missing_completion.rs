//! The missing-completion detector through `TestDriver` with controlled time: examples, and a
//! property over random approval traffic checked against what an operator relies on (every
//! order left open is alerted once; a completed order never ends with an open alert).

mod common;

use common::{ev, pipe, HOUR, MIN, T0};
use paystream_state::window::WindowStore;
use paystream_topology::approval::{
    AlertStatus, ApprovalAlert, ApprovalTimeoutConfig, APPROVAL_ALERTS_STORE, APPROVAL_STATE_STORE,
};
use paystream_topology::order::EventType;
use paystream_topology::{shipped_topology, ShippedTopologies, TestDriver};
use proptest::prelude::*;
use EventType::*;

fn approval_driver(partitions: i32) -> TestDriver {
    let which = ShippedTopologies {
        sms: None,
        approval_timeout: Some(ApprovalTimeoutConfig {
            timeout_ms: 5 * MIN,
            grace_ms: 10_000,
            check_interval_ms: 1_000,
            ..ApprovalTimeoutConfig::default()
        }),
        ..ShippedTopologies::default()
    };
    TestDriver::new(
        shipped_topology("PAYMENT.ORDER", &which).unwrap(),
        partitions,
    )
}

fn alerts(d: &mut TestDriver) -> Vec<ApprovalAlert> {
    d.read_output("PAYMENT.APPROVAL_TIMEOUT")
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

/// Advance the partition's stream time with an unrelated, complete order.
fn tick(d: &mut TestDriver, n: u32, ts: i64) {
    pipe(
        d,
        &ev(
            &format!("TICK-{n}"),
            &format!("t{n}"),
            ApprovalRequested,
            ts,
            "",
        ),
    );
    pipe(
        d,
        &ev(
            &format!("TICK-{n}"),
            &format!("u{n}"),
            ApprovalCompleted,
            ts,
            "",
        ),
    );
}

#[test]
fn missing_completion_alerts_once_then_resolves() {
    let mut d = approval_driver(1);
    pipe(&mut d, &ev("O-1", "r", ApprovalRequested, T0, ""));
    tick(&mut d, 1, T0 + 5 * MIN + 9_999);
    assert!(alerts(&mut d).is_empty(), "not before timeout + grace");
    // Checks run every second of stream time; the first one after timeout + grace raises it.
    tick(&mut d, 2, T0 + 5 * MIN + 11_000);
    let a = alerts(&mut d);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].order_id, "O-1");
    assert_eq!(a[0].status, AlertStatus::Timeout);
    assert_eq!(a[0].requested_ts, T0);
    assert_eq!(a[0].deadline_ts, T0 + 5 * MIN);
    // Stream time goes on: no second alert; a duplicate request does not re-arm it.
    pipe(&mut d, &ev("O-1", "r", ApprovalRequested, T0, ""));
    tick(&mut d, 3, T0 + 20 * MIN);
    assert!(alerts(&mut d).is_empty());
    // The request's entry stayed after the alert (changing it could lose the alert in a crash)
    // and is gone only now, expired with stream time.
    let state = d.window_store(APPROVAL_STATE_STORE, 0).unwrap();
    assert!(state.fetch(b"O-1", i64::MIN, i64::MAX).unwrap().is_empty());
    // The completion arrives after all: resolved, once.
    pipe(
        &mut d,
        &ev("O-1", "c", ApprovalCompleted, T0 + 21 * MIN, ""),
    );
    pipe(
        &mut d,
        &ev("O-1", "c", ApprovalCompleted, T0 + 21 * MIN, ""),
    );
    let r = alerts(&mut d);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, AlertStatus::Resolved);
    assert_eq!(r[0].resolved_by, Some(ApprovalCompleted));
    assert_eq!(r[0].resolved_ts, Some(T0 + 21 * MIN));
}

#[test]
fn completed_failed_or_reordered_approvals_raise_no_alert() {
    let mut d = approval_driver(1);
    pipe(&mut d, &ev("O-1", "r", ApprovalRequested, T0, ""));
    pipe(&mut d, &ev("O-1", "c", ApprovalCompleted, T0 + 4 * MIN, ""));
    pipe(&mut d, &ev("O-2", "r", ApprovalRequested, T0, ""));
    pipe(&mut d, &ev("O-2", "f", ApprovalFailed, T0 + MIN, ""));
    // Completion before its request (out of order), then a duplicate request later.
    pipe(&mut d, &ev("O-3", "c", ApprovalCompleted, T0 + 2_000, ""));
    pipe(&mut d, &ev("O-3", "r", ApprovalRequested, T0 + 1_000, ""));
    pipe(&mut d, &ev("O-3", "r", ApprovalRequested, T0 + 1_000, ""));
    // A completion just inside the grace period, arriving after the deadline passed.
    pipe(&mut d, &ev("O-4", "r", ApprovalRequested, T0, ""));
    tick(&mut d, 1, T0 + 5 * MIN + 5_000);
    pipe(
        &mut d,
        &ev("O-4", "c", ApprovalCompleted, T0 + 5 * MIN + 1, ""),
    );
    tick(&mut d, 2, T0 + 30 * MIN);
    assert!(alerts(&mut d).is_empty());
    // A request arriving after the check that would have covered it is alerted at once.
    pipe(
        &mut d,
        &ev("O-late", "r", ApprovalRequested, T0 + 20 * MIN, ""),
    );
    let late = alerts(&mut d);
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].order_id, "O-late");
}

#[test]
fn alerts_are_per_partition_and_survive_a_crash_without_repeating() {
    let mut d = approval_driver(4);
    let orders: Vec<String> = (0..40).map(|i| format!("O-{i}")).collect();
    for (i, o) in orders.iter().enumerate() {
        pipe(&mut d, &ev(o, "r", ApprovalRequested, T0 + i as i64, ""));
        if i % 4 != 0 {
            pipe(
                &mut d,
                &ev(o, "c", ApprovalCompleted, T0 + i as i64 + 100, ""),
            );
        }
    }
    // Every partition needs its own stream time to pass the deadline.
    let mut n = 0;
    for p in d.active_partitions() {
        while d.stream_time(p) < T0 + 6 * MIN {
            n += 1;
            let key = format!("TICK-{n}");
            if d.partition_of(Some(key.as_bytes())) == p {
                tick(&mut d, n, T0 + 6 * MIN);
            }
        }
    }
    let mut alerted: Vec<String> = alerts(&mut d).into_iter().map(|a| a.order_id).collect();
    alerted.sort();
    let mut expected: Vec<String> = orders.iter().step_by(4).cloned().collect();
    expected.sort();
    assert_eq!(alerted, expected);
    // Crash every partition, then the whole history arrives again (a replay upstream): the
    // alert store knows what was raised.
    for p in d.active_partitions() {
        d.crash_partition(p).unwrap();
    }
    for (i, o) in orders.iter().enumerate() {
        pipe(&mut d, &ev(o, "r", ApprovalRequested, T0 + i as i64, ""));
    }
    tick(&mut d, 1_000_000, T0 + 60 * MIN);
    for p in d.active_partitions() {
        let key = (0..)
            .map(|i| format!("LATE-{i}"))
            .find(|k| d.partition_of(Some(k.as_bytes())) == p)
            .unwrap();
        pipe(&mut d, &ev(&key, "r", ApprovalRequested, T0 + 60 * MIN, ""));
        pipe(&mut d, &ev(&key, "c", ApprovalCompleted, T0 + 60 * MIN, ""));
    }
    assert!(alerts(&mut d).is_empty());
}

#[test]
fn a_jump_in_stream_time_alerts_before_it_expires_the_pending_requests() {
    let mut d = approval_driver(1);
    pipe(&mut d, &ev("O-1", "r", ApprovalRequested, T0, ""));
    pipe(&mut d, &ev("O-2", "r", ApprovalRequested, T0 + 1_000, ""));
    // The partition goes quiet, then wakes up a day later: far beyond the pending store's
    // retention, so this one record both expires the old requests and must alert them.
    pipe(
        &mut d,
        &ev("O-3", "r", ApprovalRequested, T0 + 24 * HOUR, ""),
    );
    let mut ids: Vec<String> = alerts(&mut d).into_iter().map(|a| a.order_id).collect();
    ids.sort();
    assert_eq!(ids, ["O-1", "O-2"]);
}

#[test]
fn raised_alerts_are_remembered_for_the_alert_retention_only() {
    let which = ShippedTopologies {
        sms: None,
        approval_timeout: Some(ApprovalTimeoutConfig {
            alert_retention_ms: HOUR,
            ..ApprovalTimeoutConfig::default()
        }),
        ..ShippedTopologies::default()
    };
    let mut d = TestDriver::new(shipped_topology("PAYMENT.ORDER", &which).unwrap(), 1);
    pipe(&mut d, &ev("O-1", "r", ApprovalRequested, T0, ""));
    tick(&mut d, 1, T0 + 10 * MIN);
    assert_eq!(alerts(&mut d).len(), 1);
    let raised = d.window_store(APPROVAL_ALERTS_STORE, 0).unwrap();
    assert_eq!(raised.fetch(b"O-1", i64::MIN, i64::MAX).unwrap().len(), 1);
    // Another alert two hours later moves the store's time on: the first one is forgotten, so
    // the store does not grow with every alert ever raised.
    pipe(
        &mut d,
        &ev("O-2", "r", ApprovalRequested, T0 + 2 * HOUR, ""),
    );
    tick(&mut d, 2, T0 + 2 * HOUR + 10 * MIN);
    assert_eq!(alerts(&mut d).len(), 1);
    let raised = d.window_store(APPROVAL_ALERTS_STORE, 0).unwrap();
    assert!(raised.fetch(b"O-1", i64::MIN, i64::MAX).unwrap().is_empty());
    assert_eq!(raised.len(), 1);
}

#[test]
fn a_completion_after_a_restart_still_resolves_the_alert() {
    let mut d = approval_driver(1);
    pipe(&mut d, &ev("O-1", "r", ApprovalRequested, T0, ""));
    tick(&mut d, 1, T0 + 5 * MIN + 10_000);
    assert_eq!(alerts(&mut d).len(), 1);
    // The task restarts: its due index is rebuilt from the store and still lists O-1 (alerted,
    // but the store cannot say so). The completion arrives first thing, close enough to the
    // request to find its entry.
    d.crash_partition(0).unwrap();
    let done = ev("O-1", "c", ApprovalCompleted, T0 + 5 * MIN + 11_000, "");
    pipe(&mut d, &done);
    let r = alerts(&mut d);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, AlertStatus::Resolved);
}

#[test]
fn a_completion_that_itself_carries_stream_time_past_the_deadline_resolves_its_alert() {
    let mut d = approval_driver(1);
    pipe(&mut d, &ev("O-1", "r", ApprovalRequested, T0, ""));
    // Nothing else happens on the partition: the completion, six minutes after its request, is
    // the record that moves stream time past timeout + grace. The request was overdue when the
    // completion came, so it is alerted and resolved by it, not alerted after it and left open.
    pipe(&mut d, &ev("O-1", "c", ApprovalCompleted, T0 + 6 * MIN, ""));
    tick(&mut d, 1, T0 + 2 * HOUR);
    let a = alerts(&mut d);
    let statuses: Vec<AlertStatus> = a.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [AlertStatus::Timeout, AlertStatus::Resolved],
        "{a:?}"
    );
    assert_eq!(a[1].resolved_ts, Some(T0 + 6 * MIN));
}

// ------------------------------------------------------------ property over random traffic

/// One order of a generated run: requested `at` after T0, then completed or failed `after` the
/// request, or never.
#[derive(Debug, Clone)]
struct Approval {
    at: i64,
    outcome: Option<(EventType, i64)>,
}

/// What an operator may see on the alert topic for one order, from its request and outcome
/// alone (the detector's settings of [`approval_driver`]: timeout 5 min, grace 10 s, checks
/// every second of stream time).
fn allowed(a: &Approval) -> Vec<Vec<AlertStatus>> {
    use AlertStatus::{Resolved, Timeout};
    let overdue = 5 * MIN + 10_000;
    match a.outcome {
        // Never completed: alerted once, when stream time passes its deadline + grace.
        None => vec![vec![Timeout]],
        // Completed before the deadline + grace: never alerted.
        Some((_, after)) if after < overdue => vec![vec![]],
        // Completed more than one check after it was overdue: alerted, then resolved.
        Some((_, after)) if after > overdue + 1_000 => vec![vec![Timeout, Resolved]],
        // Within one check of being overdue: either, but never an alert left open.
        Some(_) => vec![vec![], vec![Timeout, Resolved]],
    }
}

fn approval() -> impl Strategy<Value = Approval> {
    let kind = prop_oneof![Just(ApprovalCompleted), Just(ApprovalFailed)];
    // Half the outcomes land around the deadline + grace, where the rules are subtle.
    let after = prop_oneof![0..20 * MIN, (5 * MIN)..(5 * MIN + 12_000)];
    (0..30 * MIN, proptest::option::weighted(0.8, (kind, after)))
        .prop_map(|(at, outcome)| Approval { at, outcome })
}

/// What the test does after piping one record: nothing, commit, or crash (roll back to the
/// last commit and replay, as a task restarted under exactly-once does).
#[derive(Debug, Clone, Copy)]
enum Step {
    Go,
    Commit,
    Crash,
}

proptest! {
    /// Over random approval traffic (in event-time order, one partition) with commits and
    /// crashes at random points: every order gets exactly the alerts its request and outcome
    /// call for, whatever records came between them.
    #[test]
    fn every_order_gets_the_alerts_its_request_and_outcome_call_for(
        orders in proptest::collection::vec(approval(), 1..12),
        steps in proptest::collection::vec(
            prop_oneof![6 => Just(Step::Go), 2 => Just(Step::Commit), 1 => Just(Step::Crash)],
            24,
        ),
    ) {
        let mut events = Vec::new();
        for (i, a) in orders.iter().enumerate() {
            let id = format!("O-{i}");
            events.push(ev(&id, "r", ApprovalRequested, T0 + a.at, ""));
            if let Some((kind, after)) = a.outcome {
                events.push(ev(&id, "c", kind, T0 + a.at + after, ""));
            }
        }
        events.sort_by_key(|e| e.ts); // stable: a request stays before its outcome at equal ts
        let end = events.iter().map(|e| e.ts).max().unwrap_or(T0);
        let mut d = approval_driver(1).manual_commits();
        for (e, step) in events.iter().zip(steps.iter().cycle()) {
            pipe(&mut d, e);
            match step {
                Step::Go => {}
                Step::Commit => d.commit().unwrap(),
                Step::Crash => {
                    d.crash_partition(0).unwrap();
                }
            }
        }
        tick(&mut d, 1, end + HOUR);
        d.commit().unwrap();
        let mut seen: std::collections::BTreeMap<String, Vec<AlertStatus>> = Default::default();
        for a in alerts(&mut d) {
            seen.entry(a.order_id).or_default().push(a.status);
        }
        for (i, a) in orders.iter().enumerate() {
            let got = seen.remove(&format!("O-{i}")).unwrap_or_default();
            prop_assert!(allowed(a).contains(&got), "O-{i} {a:?}: alerts {got:?}");
        }
        prop_assert!(seen.is_empty(), "alerts for orders never requested: {seen:?}");
    }
}

/// Pipe `e` with a `traceparent` header naming span `span` of trace `trace`.
fn pipe_traced(d: &mut TestDriver, e: &paystream_topology::order::OrderEvent, tp: &str) {
    let json = serde_json::to_vec(e).unwrap();
    let mut record = paystream_topology::processor::Record::new(e.order_id.as_bytes(), json, e.ts);
    record
        .headers
        .push(("traceparent".into(), tp.as_bytes().to_vec()));
    d.pipe_record(record).unwrap();
}

fn traceparent_of(r: &paystream_topology::processor::Record) -> Option<String> {
    r.headers
        .iter()
        .find(|(n, _)| n == "traceparent")
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
}

#[test]
fn a_timeout_alert_carries_no_trace_of_the_record_that_moved_time_and_a_resolution_its_own() {
    let mut d = approval_driver(1);
    let request = "00-11111111111111111111111111111111-1111111111111111-01";
    let mover = "00-22222222222222222222222222222222-2222222222222222-01";
    let completion = "00-33333333333333333333333333333333-3333333333333333-01";
    pipe_traced(&mut d, &ev("O-1", "r", ApprovalRequested, T0, ""), request);
    // Another order's record moves stream time past O-1's deadline: the alert is raised by the
    // punctuation it triggers, and is not part of that record's trace.
    pipe_traced(
        &mut d,
        &ev("O-2", "m", ApprovalRequested, T0 + 5 * MIN + 11_000, ""),
        mover,
    );
    let raised = d.read_output("PAYMENT.APPROVAL_TIMEOUT");
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(traceparent_of(&raised[0]), None, "{raised:?}");
    // The completion resolves it while being processed: the resolution is in its trace.
    pipe_traced(
        &mut d,
        &ev("O-1", "c", ApprovalCompleted, T0 + 5 * MIN + 12_000, ""),
        completion,
    );
    let resolved = d.read_output("PAYMENT.APPROVAL_TIMEOUT");
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(traceparent_of(&resolved[0]).as_deref(), Some(completion));
}
