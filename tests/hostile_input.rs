//! Hostile input against a real broker and two instances: 220 bad records among ~50,000 good
//! ones. Every good order must equal the independent model (`common::model`), every bad record
//! must be in the dead-letter topic with the reason the contract gives it, no instance may exit,
//! and the SMS and alerts of the good orders must be exactly those the scenario asks for.
//!
//! Expectations come from how the scenario is built (which orders complete, which records are
//! broken and how), never from paystream's own parser or fold.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::model::{self, ModelView};
use common::{
    assert_views_match, bootstrap, create_topic, free_port, read_topic, unique, wait_all_committed,
    windowed_outputs, Proc,
};
use paystream::partition_for_key;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 12;
const MIN: i64 = 60_000;
const DAY: i64 = 24 * 60 * MIN;
/// Each kind of bad record, this many times.
const PER_KIND: usize = 30;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One record to send: key and value bytes, partition, Kafka timestamp.
#[derive(Clone)]
struct Out {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    partition: i32,
    timestamp: i64,
}

fn event(order: &str, id: &str, kind: &str, ts: i64, phone: Option<&str>) -> String {
    let phone = phone.map_or(String::new(), |p| format!(r#","phone":"{p}""#));
    format!(
        r#"{{"order_id":"{order}","event_id":"{id}","type":"{kind}","amount":1200,"currency":"KRW","member_id":"M-{order}"{phone},"ts":{ts}}}"#
    )
}

/// A valid event, sent where Java's producer would put it.
fn good(order: &str, id: &str, kind: &str, ts: i64, phone: Option<&str>) -> Out {
    Out {
        key: Some(order.as_bytes().to_vec()),
        value: event(order, id, kind, ts, phone).into_bytes(),
        partition: partition_for_key(order.as_bytes(), PARTITIONS),
        timestamp: ts,
    }
}

/// The good traffic: order `i` is requested at `base + i * 200 ms` and completed a second later,
/// except every fourth, which never completes (an alert); every eighth completed one is then
/// cancelled (a second SMS). Each order has its own phone (no per-phone cap).
fn good_orders(base: i64, n: usize) -> (Vec<Out>, BTreeSet<String>) {
    let mut out = Vec::new();
    let mut never = BTreeSet::new();
    for i in 0..n {
        let o = format!("G-{i}");
        let phone = format!("010-{i:08}");
        let t = base + i as i64 * 200;
        out.push(good(
            &o,
            &format!("{o}-r"),
            "APPROVAL_REQUESTED",
            t,
            Some(&phone),
        ));
        if i % 4 == 0 {
            never.insert(o);
            continue;
        }
        out.push(good(
            &o,
            &format!("{o}-c"),
            "APPROVAL_COMPLETED",
            t + 1_000,
            Some(&phone),
        ));
        if i % 8 == 1 {
            out.push(good(
                &o,
                &format!("{o}-x"),
                "CANCELLED",
                t + 2_000,
                Some(&phone),
            ));
        }
    }
    (out, never)
}

/// The bad records, each with the dead-letter reason it must get (`None`: not a dead letter).
fn hostile(now: i64) -> Vec<(Out, Option<&'static str>)> {
    let mut bad = Vec::new();
    for i in 0..PER_KIND {
        // The issue's poison pill: a 600 kB event id.
        let o = format!("BIG-{i}");
        let mut r = good(&o, &"e".repeat(600 * 1024), "APPROVAL_REQUESTED", now, None);
        r.timestamp = now;
        bad.push((r, Some("record_too_large")));
        // Larger than a dead letter may be (1.5 MB; compressible, so the broker takes it): in
        // the DLQ with its headers and a cut value.
        if i < 10 {
            let o = format!("HUGE-{i}");
            let mut r = good(&o, &"h".repeat(1_500_000), "APPROVAL_REQUESTED", now, None);
            r.timestamp = now;
            bad.push((r, Some("record_too_large")));
        }
        // A 1 kB event id: small enough to parse, too long to keep.
        let o = format!("LONG-{i}");
        bad.push((
            good(&o, &"e".repeat(1024), "APPROVAL_REQUESTED", now, None),
            Some("field_too_long"),
        ));
        // Dated 2100 by a buggy clock (the record itself is stamped now: Kafka 4 brokers refuse
        // record timestamps over an hour ahead, `log.message.timestamp.after.max.ms`).
        let o = format!("FUT-{i}");
        let mut r = good(&o, "f", "APPROVAL_COMPLETED", 4_102_444_800_000, None);
        r.timestamp = now;
        bad.push((r, Some("timestamp_in_future")));
        // A producer with another partitioner: one partition off.
        let o = format!("WRONG-{i}");
        let mut r = good(&o, "w", "APPROVAL_REQUESTED", now - MIN, None);
        r.partition = (r.partition + 1 + i as i32 % (PARTITIONS - 1)) % PARTITIONS;
        bad.push((r, Some("wrong_partition")));
        // No key.
        bad.push((
            Out {
                key: None,
                value: event(&format!("NULL-{i}"), "n", "APPROVAL_REQUESTED", now, None)
                    .into_bytes(),
                partition: i as i32 % PARTITIONS,
                timestamp: now,
            },
            Some("missing_key"),
        ));
        // A key that is not UTF-8, on the partition its bytes hash to.
        let key = vec![0xff, 0xfe, b'0' + (i % 10) as u8, i as u8];
        bad.push((
            Out {
                partition: partition_for_key(&key, PARTITIONS),
                key: Some(key),
                value: event("X", "x", "APPROVAL_REQUESTED", now, None).into_bytes(),
                timestamp: now,
            },
            Some("invalid_utf8_key"),
        ));
        // Truncated JSON.
        let o = format!("TRUNC-{i}");
        let mut r = good(&o, "t", "APPROVAL_REQUESTED", now, None);
        r.value.truncate(r.value.len() / 2);
        bad.push((r, Some("invalid_json")));
        // Year-old history replayed with record time now: valid, applied to the view; far
        // beyond every window's grace, so no SMS and no alert (counted late instead).
        let o = format!("OLD-{i}");
        let mut r = good(
            &o,
            "o1",
            "APPROVAL_REQUESTED",
            now - 365 * DAY,
            Some("010-old"),
        );
        r.timestamp = now;
        bad.push((r, None));
        let mut r = good(
            &o,
            "o2",
            "APPROVAL_CALLBACK_COMPLETED",
            now - 365 * DAY + 5,
            None,
        );
        r.timestamp = now;
        bad.push((r, None));
    }
    bad
}

async fn send_all(producer: &FutureProducer, topic: &str, records: &[Out]) {
    let futures = records.iter().map(|r| {
        let mut rec = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&r.value[..])
            .partition(r.partition)
            .timestamp(r.timestamp);
        if let Some(k) = &r.key {
            rec = rec.key(&k[..]);
        }
        producer.send(rec, Timeout::After(Duration::from_secs(60)))
    });
    for result in futures::future::join_all(futures).await {
        if let Err((e, _)) = result {
            panic!("the broker accepts every record, bad ones included: {e}");
        }
    }
}

fn as_sent(records: &[&Out]) -> Vec<(Option<String>, String)> {
    records
        .iter()
        .map(|r| {
            (
                r.key
                    .as_ref()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                String::from_utf8_lossy(&r.value).into_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_records_go_to_the_dlq_with_their_reason_and_good_ones_are_exactly_right() {
    let topic = unique("hostile");
    let app = unique("hostile-app");
    create_topic(&topic, PARTITIONS).await;
    let now = now_ms();
    let (orders, never) = good_orders(now - 2 * 60 * MIN, 27_000);
    let bad = hostile(now);
    // One order per partition at `now`, last: every partition's stream time passes every good
    // request's deadline, so the alerts are final.
    let mut ticks = Vec::new();
    let mut covered = BTreeSet::new();
    for i in 0.. {
        let o = format!("TICK-{i}");
        if covered.insert(partition_for_key(o.as_bytes(), PARTITIONS)) {
            let phone = format!("010-tick-{i}");
            ticks.push(good(&o, "r", "APPROVAL_REQUESTED", now, Some(&phone)));
            ticks.push(good(&o, "c", "APPROVAL_COMPLETED", now, Some(&phone)));
        }
        if covered.len() == PARTITIONS as usize {
            break;
        }
    }

    let work = tempfile::tempdir().expect("tempdir");
    let mut a = Proc::run(&app, &topic, &work.path().join("a"), free_port(), &[]);
    let mut b = Proc::run(&app, &topic, &work.path().join("b"), free_port(), &[]);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5")
        .set("message.max.bytes", "2000000")
        // A 600 kB record and its neighbours in one uncompressed batch would pass the broker's
        // 1 MB batch limit; compressed, the broker takes it as it took the issue's.
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    // Good, then every bad record, then more good traffic (stream time must not have been moved
    // by the bad ones), then the ticks.
    let half = orders.len() / 2;
    let bad_records: Vec<Out> = bad.iter().map(|(r, _)| r.clone()).collect();
    send_all(&producer, &topic, &orders[..half]).await;
    send_all(&producer, &topic, &bad_records).await;
    send_all(&producer, &topic, &orders[half..]).await;
    send_all(&producer, &topic, &ticks).await;
    let total = orders.len() + bad.len() + ticks.len();
    assert!(total > 50_000, "{total} records");

    wait_all_committed(
        &app,
        &topic,
        &mut [&mut a, &mut b],
        Duration::from_secs(300),
    )
    .await;
    a.assert_alive();
    b.assert_alive();

    // Views: the good orders, the ticks and the year-old ones, by the independent model.
    let valid: Vec<&Out> = orders
        .iter()
        .chain(ticks.iter())
        .chain(bad.iter().filter(|(_, why)| why.is_none()).map(|(r, _)| r))
        .collect();
    let model: BTreeMap<String, ModelView> = model::order_views(&as_sent(&valid));
    assert_views_match(
        &a.http,
        &model,
        Duration::from_secs(60),
        "after hostile input",
    )
    .await;
    // Orders only bad records mention are nowhere.
    let client = reqwest::Client::new();
    for id in ["BIG-0", "LONG-1", "FUT-2", "WRONG-3", "TRUNC-4", "NULL-5"] {
        let status = client
            .get(format!("http://{}/orders/{id}", b.http))
            .send()
            .await
            .expect("query")
            .status();
        assert_eq!(status.as_u16(), 404, "{id}");
    }

    // Dead letters: exactly the bad records, each with its reason.
    let dlq = format!("{topic}.DLQ");
    let letters = tokio::task::spawn_blocking(move || read_topic(&dlq, "read_committed"))
        .await
        .expect("join");
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for l in &letters {
        let reason = l
            .headers
            .get("paystream.dlq.reason")
            .cloned()
            .unwrap_or_default();
        if reason == "wrong_partition" {
            let key = l.key.clone().unwrap_or_default();
            assert_eq!(
                l.headers.get("paystream.dlq.expected_partition"),
                Some(&partition_for_key(key.as_bytes(), PARTITIONS).to_string()),
                "{key}"
            );
        }
        assert!(l.headers.contains_key("paystream.source.offset"));
        let huge = l.key.as_deref().is_some_and(|k| k.starts_with("HUGE-"));
        assert_eq!(
            l.headers.contains_key("paystream.dlq.truncated"),
            huge,
            "only the records too large for the DLQ are cut: {:?}",
            l.key
        );
        if huge {
            assert!(
                l.value.len() < 1_000_000 && l.value.len() > 800_000,
                "{}",
                l.value.len()
            );
        }
        *reasons.entry(reason).or_default() += 1;
    }
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for (_, why) in &bad {
        if let Some(why) = why {
            *want.entry((*why).to_owned()).or_default() += 1;
        }
    }
    assert_eq!(reasons, want, "dead letters by reason");

    // SMS: one per completed (payment_approved) and cancelled (payment_cancelled) good order;
    // alerts: exactly the good orders that never completed, once each.
    let (alerted, sent_sms) = windowed_outputs(&app).await;
    let good_and_ticks: Vec<&Out> = orders.iter().chain(ticks.iter()).collect();
    let want_sms = model::expected_sms(&as_sent(&good_and_ticks));
    assert_eq!(
        sent_sms.keys().cloned().collect::<BTreeSet<_>>(),
        want_sms,
        "SMS"
    );
    assert!(sent_sms.values().all(|&n| n == 1), "an SMS was sent twice");
    assert_eq!(
        alerted.keys().cloned().collect::<BTreeSet<_>>(),
        never,
        "alerts"
    );
    assert!(
        alerted.values().all(|&n| n == 1),
        "an order was alerted twice"
    );

    a.assert_alive();
    b.assert_alive();
    a.terminate();
    b.terminate();
}
