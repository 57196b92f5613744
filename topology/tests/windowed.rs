//! Stream time, punctuation and the two windowed topologies (SMS, missing-completion alerts),
//! through `TestDriver` with controlled time.

use paystream_state::window::WindowStore;
use paystream_topology::approval::{
    AlertStatus, ApprovalAlert, ApprovalTimeoutConfig, APPROVAL_ALERTS_STORE, APPROVAL_STATE_STORE,
};
use paystream_topology::order::{EventType, OrderEvent};
use paystream_topology::sms::{SmsConfig, SmsRequest, SuppressedSms, SMS_RATE_STORE};
use paystream_topology::{
    shipped_topology, ProcessError, Processor, ProcessorContext, PunctuationType, Record,
    ShippedTopologies, StreamsBuilder, TestDriver,
};
use EventType::*;

const HOUR: i64 = 3_600_000;
const MIN: i64 = 60_000;
const T0: i64 = 1_764_000_000_000;

fn ev(order: &str, id: &str, t: EventType, ts: i64, phone: &str) -> OrderEvent {
    OrderEvent {
        order_id: order.into(),
        event_id: id.into(),
        event_type: t,
        amount: Some(12_000),
        currency: Some("KRW".into()),
        member_id: Some("M-42".into()),
        phone: (!phone.is_empty()).then(|| phone.to_owned()),
        ts,
    }
}

fn pipe(d: &mut TestDriver, e: &OrderEvent) {
    let json = serde_json::to_vec(e).unwrap();
    d.pipe(Some(e.order_id.as_bytes()), Some(&json), e.ts)
        .unwrap();
}

fn sms_driver(config: SmsConfig) -> TestDriver {
    let which = ShippedTopologies {
        sms: Some(config),
        approval_timeout: None,
        ..ShippedTopologies::default()
    };
    // One partition: stream time and the per-phone cap are per partition.
    TestDriver::new(shipped_topology("PAYMENT.ORDER", &which).unwrap(), 1)
}

fn sent(d: &mut TestDriver) -> Vec<SmsRequest> {
    d.read_output("SEND_SMS")
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

fn suppressed(d: &mut TestDriver) -> Vec<SuppressedSms> {
    d.read_output("SEND_SMS.SUPPRESSED")
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

// ------------------------------------------------------------ stream time and punctuation

/// Records every punctuation it gets and forwards a marker record for it.
struct Ticker {
    fired: Vec<(PunctuationType, i64)>,
}

impl Processor for Ticker {
    fn init(&mut self, ctx: &mut ProcessorContext<'_>) -> Result<(), ProcessError> {
        ctx.schedule(PunctuationType::StreamTime, 10)?;
        ctx.schedule(PunctuationType::WallClock, 1_000)
    }
    fn process(&mut self, ctx: &mut ProcessorContext<'_>, r: Record) -> Result<(), ProcessError> {
        // Schedules are refused outside init.
        assert!(ctx.schedule(PunctuationType::StreamTime, 5).is_err());
        let mut out = r;
        out.value = Some(format!("st={}", ctx.stream_time()).into_bytes());
        ctx.forward(out);
        Ok(())
    }
    fn punctuate(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        kind: PunctuationType,
        ts: i64,
    ) -> Result<(), ProcessError> {
        self.fired.push((kind, ts));
        let tag = match kind {
            PunctuationType::StreamTime => "stream",
            PunctuationType::WallClock => "wall",
        };
        ctx.forward(Record::new("tick", format!("{tag}@{ts}"), ts));
        Ok(())
    }
}

fn values(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect()
}

#[test]
fn stream_time_is_the_max_timestamp_and_drives_punctuation() {
    let mut b = StreamsBuilder::new();
    b.stream("IN")
        .process(&[], || Box::new(Ticker { fired: Vec::new() }))
        .to("OUT");
    let mut d = TestDriver::new(b.build().unwrap(), 1).with_wall_clock(0);
    assert_eq!(d.stream_time(0), i64::MIN);
    for ts in [100, 105, 95, 109] {
        d.pipe(Some(b"k"), Some(b"v"), ts).unwrap();
    }
    // Out-of-order 95 did not move stream time back; nothing was due before 110.
    assert_eq!(d.stream_time(0), 109);
    assert_eq!(
        values(&d.read_output("OUT")),
        ["st=100", "st=105", "st=105", "st=109"]
    );
    d.pipe(Some(b"k"), Some(b"v"), 110).unwrap();
    assert_eq!(values(&d.read_output("OUT")), ["st=110", "stream@110"]);
    // A jump of several intervals fires once, then the schedule continues from there.
    d.pipe(Some(b"k"), Some(b"v"), 200).unwrap();
    d.pipe(Some(b"k"), Some(b"v"), 205).unwrap();
    d.pipe(Some(b"k"), Some(b"v"), 210).unwrap();
    assert_eq!(
        values(&d.read_output("OUT")),
        ["st=200", "stream@200", "st=205", "st=210", "stream@210"]
    );
    // Wall-clock punctuation only moves with the wall clock, not with data.
    d.advance_wall_clock(999).unwrap();
    assert!(d.read_output("OUT").is_empty());
    d.advance_wall_clock(1).unwrap();
    assert_eq!(values(&d.read_output("OUT")), ["wall@1000"]);
    d.advance_wall_clock(2_500).unwrap();
    assert_eq!(values(&d.read_output("OUT")), ["wall@3500"]);
}

// ------------------------------------------------------------ SMS

#[test]
fn completed_and_cancelled_orders_get_one_sms_each_with_their_template() {
    let mut d = sms_driver(SmsConfig::default());
    let phone = "+821012345678";
    pipe(&mut d, &ev("O-1", "e1", ApprovalRequested, T0, phone));
    pipe(&mut d, &ev("O-1", "e2", ApprovalCompleted, T0 + 10, phone));
    pipe(&mut d, &ev("O-1", "e2", ApprovalCompleted, T0 + 10, phone)); // duplicate event
    pipe(&mut d, &ev("O-1", "e9", ApprovalCompleted, T0 + 20, phone)); // same SMS, new event id
    pipe(&mut d, &ev("O-1", "e3", Cancelled, T0 + 30, phone));
    let out = sent(&mut d);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[0],
        SmsRequest {
            order_id: "O-1".into(),
            member_id: Some("M-42".into()),
            phone: Some(phone.into()),
            template: "payment_approved".into(),
            amount: Some(12_000),
            currency: Some("KRW".into()),
            event_ts: T0 + 10,
            event_id: "e2".into(),
        }
    );
    assert_eq!(out[1].template, "payment_cancelled");
    assert!(suppressed(&mut d).is_empty());
}

#[test]
fn dedup_holds_inside_the_window_and_ends_at_its_boundary() {
    let config = SmsConfig {
        dedup_window_ms: 24 * HOUR,
        grace_ms: HOUR,
        ..SmsConfig::default()
    };
    let mut d = sms_driver(config);
    let phone = "+8210";
    pipe(&mut d, &ev("O-1", "a", ApprovalCompleted, T0, phone));
    // Exactly at the window's edge: still the same SMS.
    pipe(
        &mut d,
        &ev("O-1", "b", ApprovalCompleted, T0 + 24 * HOUR, phone),
    );
    assert_eq!(sent(&mut d).len(), 1);
    // One millisecond past it: a new SMS.
    pipe(
        &mut d,
        &ev("O-1", "c", ApprovalCompleted, T0 + 24 * HOUR + 1, phone),
    );
    let out = sent(&mut d);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].event_id, "c");
}

#[test]
fn out_of_order_within_grace_is_handled_late_beyond_grace_is_dropped_and_counted() {
    let config = SmsConfig {
        grace_ms: 10 * MIN,
        ..SmsConfig::default()
    };
    let mut d = sms_driver(config);
    pipe(&mut d, &ev("O-1", "a", ApprovalCompleted, T0 + HOUR, "+1"));
    // 10 minutes behind: within grace, still sent.
    pipe(
        &mut d,
        &ev("O-2", "b", ApprovalCompleted, T0 + 50 * MIN, "+2"),
    );
    assert_eq!(sent(&mut d).len(), 2);
    assert_eq!(d.late_records(0), 0);
    // 10 minutes and 1 ms behind: the dedup store may have forgotten an SMS this duplicates;
    // dropped.
    pipe(
        &mut d,
        &ev("O-3", "c", ApprovalCompleted, T0 + 50 * MIN - 1, "+3"),
    );
    assert!(sent(&mut d).is_empty());
    assert!(suppressed(&mut d).is_empty());
    assert_eq!(d.late_records(0), 1);
}

#[test]
fn rate_cap_per_phone_suppresses_the_excess_with_a_reason() {
    let mut d = sms_driver(SmsConfig::default()); // 5 per hour
    let phone = "+821099998888";
    for i in 0..7 {
        pipe(
            &mut d,
            &ev(
                &format!("O-{i}"),
                &format!("e{i}"),
                ApprovalCompleted,
                T0 + i * MIN,
                phone,
            ),
        );
    }
    assert_eq!(sent(&mut d).len(), 5);
    let s = suppressed(&mut d);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].reason, "rate_limited");
    assert_eq!(s[0].request.order_id, "O-5");
    assert!(s[0].detail.contains("limit is 5"), "{}", s[0].detail);
    // Another phone is not affected.
    pipe(
        &mut d,
        &ev("O-x", "x", ApprovalCompleted, T0 + 7 * MIN, "+1"),
    );
    assert_eq!(sent(&mut d).len(), 1);
    // A suppressed SMS is not retried by a duplicate event.
    pipe(
        &mut d,
        &ev("O-5", "e5", ApprovalCompleted, T0 + 5 * MIN, phone),
    );
    assert!(suppressed(&mut d).is_empty() && sent(&mut d).is_empty());
    // An hour after the first SMS the window has room again.
    pipe(
        &mut d,
        &ev("O-8", "e8", ApprovalCompleted, T0 + HOUR, phone),
    );
    assert_eq!(sent(&mut d).len(), 1);
    // Without a phone there is nothing to send: suppressed, not lost.
    pipe(&mut d, &ev("O-9", "e9", ApprovalCompleted, T0 + HOUR, ""));
    assert_eq!(suppressed(&mut d)[0].reason, "no_phone");
}

#[test]
fn window_store_entries_expire_with_stream_time() {
    let config = SmsConfig {
        rate_window_ms: HOUR,
        grace_ms: 0,
        ..SmsConfig::default()
    };
    let mut d = sms_driver(config);
    pipe(&mut d, &ev("O-1", "a", ApprovalCompleted, T0, "+1"));
    pipe(&mut d, &ev("O-2", "b", ApprovalCompleted, T0 + 1, "+2"));
    assert_eq!(d.window_store(SMS_RATE_STORE, 0).unwrap().len(), 2);
    pipe(
        &mut d,
        &ev("O-3", "c", ApprovalCompleted, T0 + HOUR + 1, "+3"),
    );
    let rate = d.window_store(SMS_RATE_STORE, 0).unwrap();
    // T0 is older than observed time minus retention; T0 + 1 sits exactly on the edge.
    let all = rate.fetch(b"+1", i64::MIN, i64::MAX).unwrap();
    assert!(all.is_empty(), "{all:?}");
    assert_eq!(rate.len(), 2);
}

#[test]
fn a_crash_between_commits_rolls_back_and_replays_without_sending_twice() {
    let which = ShippedTopologies {
        sms: Some(SmsConfig::default()),
        approval_timeout: None,
        ..ShippedTopologies::default()
    };
    let mut d =
        TestDriver::new(shipped_topology("PAYMENT.ORDER", &which).unwrap(), 1).manual_commits();
    let events: Vec<OrderEvent> = (0..20)
        .map(|i| {
            ev(
                &format!("O-{i}"),
                &format!("e{i}"),
                ApprovalCompleted,
                T0 + i,
                &format!("+{i}"),
            )
        })
        .collect();
    for e in &events[..8] {
        pipe(&mut d, e);
    }
    d.commit().unwrap();
    for e in &events[8..12] {
        pipe(&mut d, e);
    }
    assert_eq!(
        sent(&mut d).len(),
        8,
        "the last four SMS are not committed yet"
    );
    // Crash: the transaction holding SMS 8..12 is aborted; its records are processed again
    // against the committed dedup store, and send their SMS (once) this time.
    assert_eq!(d.crash_partition(0).unwrap(), 4);
    for e in &events[12..] {
        pipe(&mut d, e);
    }
    // And the whole history once more from upstream: all duplicates now.
    for e in &events {
        pipe(&mut d, e);
    }
    d.commit().unwrap();
    let out = sent(&mut d);
    let ids: Vec<&str> = out.iter().map(|s| s.order_id.as_str()).collect();
    let want: Vec<String> = (8..20).map(|i| format!("O-{i}")).collect();
    assert_eq!(ids, want);
}

// ------------------------------------------------------------ missing-completion detector

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
