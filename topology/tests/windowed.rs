//! Stream time, punctuation and the SMS topology, through `TestDriver` with controlled time.
//! (The missing-completion detector's tests are in `missing_completion.rs`.)

mod common;

use common::{ev, pipe, HOUR, MIN, T0};
use paystream_state::window::WindowStore;
use paystream_topology::order::{EventType, OrderEvent};
use paystream_topology::sms::{SmsConfig, SmsRequest, SuppressedSms, SMS_RATE_STORE};
use paystream_topology::{
    shipped_topology, ProcessError, Processor, ProcessorContext, PunctuationType, Record,
    ShippedTopologies, StreamsBuilder, TestDriver,
};
use EventType::*;

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
