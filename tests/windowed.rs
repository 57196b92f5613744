//! The windowed topologies against a real broker: three instances, input with duplicates, one
//! instance killed with SIGKILL mid-stream. Every completed (or cancelled) order must end up with
//! exactly one SMS request in the SMS topic (read back with a consumer and counted), and every
//! order left without completion with exactly one alert; nothing else. Then the query API:
//! `GET /sms/{id}` and `GET /alerts` merged across the surviving instances.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use paystream::produce::{GeneratorOptions, Traffic};
use paystream::query::windowed::{AlertsResponse, SmsResponse};
use paystream_topology::approval::{AlertStatus, ApprovalAlert};
use paystream_topology::order::{EventType, OrderEvent};
use paystream_topology::sms::SmsRequest;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 6;
/// Approval timeout (event time) for this test: the generator completes approvals within ~6 s.
const TIMEOUT_MS: i64 = 20_000;

/// Every committed record of `topic`: (key, value).
fn read_all(topic: &str) -> Vec<(String, Vec<u8>)> {
    read_topic(topic, "read_committed")
        .into_iter()
        .map(|r| (r.key.unwrap_or_default(), r.value))
        .collect()
}

/// One complete order per partition at `ts`, so every partition's stream time passes the last
/// deadlines (an idle partition's stream time stands still, as it should).
fn produce_ticks(topic: &str, ts: i64) -> Vec<OrderEvent> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    let mut events = Vec::new();
    let mut covered = BTreeSet::new();
    for i in 0.. {
        if covered.len() == PARTITIONS as usize {
            break;
        }
        let id = format!("TICK-{i}");
        if !covered.insert(paystream_topology::partition_for_key(
            id.as_bytes(),
            PARTITIONS,
        )) {
            continue;
        }
        for (n, t) in [EventType::ApprovalRequested, EventType::ApprovalCompleted]
            .into_iter()
            .enumerate()
        {
            events.push(OrderEvent {
                order_id: id.clone(),
                event_id: format!("{id}-{n}"),
                event_type: t,
                amount: Some(1_000),
                currency: Some("KRW".into()),
                member_id: Some("M-0".into()),
                phone: Some(format!("+8299{i:06}")),
                ts,
            });
        }
    }
    for e in &events {
        let value = serde_json::to_string(e).expect("json");
        producer
            .send(
                BaseRecord::to(topic)
                    .key(&e.order_id)
                    .payload(&value)
                    .timestamp(e.ts),
            )
            .map_err(|(e, _)| e)
            .expect("send tick");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    events
}

async fn produce_range(topic: &str, first: u64, orders: u64, rate: u64) -> Traffic {
    let g = GeneratorOptions {
        orders,
        first_order: first,
        seed: 7 + first,
        duplicate_rate: 0.1,
        ..Default::default()
    };
    produce_traffic(topic, PARTITIONS, g, Some(rate)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_sms_per_completed_order_and_one_alert_per_stuck_approval_despite_kill_9() {
    let work = tempfile::tempdir().unwrap();
    let topic = unique("windowed");
    let app = unique("win");
    create_topic(&topic, PARTITIONS).await;
    let extra = [
        "--session-timeout-ms",
        "6000",
        "--approval-timeout-ms",
        "20000",
        "--approval-timeout-grace-ms",
        "1000",
    ];
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| {
            let dir = work.path().join(format!("i{i}"));
            Proc::run(&app, &topic, &dir, free_port(), &extra)
        })
        .collect();
    for p in &mut procs {
        p.wait_health("instance running", Duration::from_secs(120), |h| {
            h["ready"] == true
        })
        .await;
    }

    // First half, then kill one instance while the second half streams in.
    let mut events: Vec<OrderEvent> = Vec::new();
    let first = produce_range(&topic, 0, 1_500, 3_000).await;
    events.extend(first.events.iter().filter_map(|e| e.event.clone()));
    let second = {
        let topic = topic.clone();
        tokio::spawn(async move { produce_range(&topic, 1_500, 1_500, 1_000).await })
    };
    // Kill instance 1 while it is active and has processed part of the stream (so it has SMS
    // and alerts in flight or just written, and uncommitted input to be replayed elsewhere).
    procs[1]
        .wait_health(
            "instance 1 active and processing",
            Duration::from_secs(60),
            |h| {
                h["records_processed"].as_u64().unwrap_or(0) > 1_000
                    && !h["active_partitions"]
                        .as_array()
                        .is_none_or(|a| a.is_empty())
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    procs[1].kill9();
    let second = second.await.expect("join");
    events.extend(second.events.iter().filter_map(|e| e.event.clone()));
    let max_ts = events.iter().map(|e| e.ts).max().unwrap();
    events.extend(produce_ticks(&topic, max_ts + 10 * TIMEOUT_MS));

    // What the model says must come out.
    let mut sms_expected: BTreeSet<(String, &str)> = BTreeSet::new();
    let mut requested: BTreeSet<String> = BTreeSet::new();
    let mut settled: BTreeSet<String> = BTreeSet::new();
    for e in &events {
        match e.event_type {
            EventType::ApprovalCompleted => {
                sms_expected.insert((e.order_id.clone(), "payment_approved"));
                settled.insert(e.order_id.clone());
            }
            EventType::Cancelled => {
                sms_expected.insert((e.order_id.clone(), "payment_cancelled"));
            }
            EventType::ApprovalFailed => {
                settled.insert(e.order_id.clone());
            }
            EventType::ApprovalRequested => {
                requested.insert(e.order_id.clone());
            }
            _ => {}
        }
    }
    let stuck: BTreeSet<String> = requested.difference(&settled).cloned().collect();
    assert!(stuck.len() > 20, "the generator leaves some approvals open");

    // Wait until the survivors processed and committed everything.
    {
        let (a, rest) = procs.split_at_mut(1);
        let mut survivors = [&mut a[0], &mut rest[1]];
        wait_all_committed(&app, &topic, &mut survivors, Duration::from_secs(180)).await;
    }

    // SEND_SMS: exactly the expected (order, template) pairs, each once.
    let sms_topic = format!("{app}.SEND_SMS");
    let records = tokio::task::spawn_blocking(move || read_all(&sms_topic))
        .await
        .unwrap();
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (key, value) in &records {
        let r: SmsRequest = serde_json::from_slice(value).expect("SMS JSON");
        assert_eq!(key, &r.order_id, "keyed by order id");
        *counts.entry((r.order_id, r.template)).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "SMS sent more than once: {twice:?}");
    let got: BTreeSet<(String, String)> = counts.keys().cloned().collect();
    let want: BTreeSet<(String, String)> = sms_expected
        .iter()
        .map(|(o, t)| (o.clone(), (*t).to_owned()))
        .collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra_sms: Vec<_> = got.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra_sms.is_empty(),
        "{} SMS expected, {} sent; missing e.g. {missing:?}, unexpected e.g. {extra_sms:?}",
        want.len(),
        got.len()
    );
    let suppressed_topic = format!("{app}.SEND_SMS.SUPPRESSED");
    let suppressed = tokio::task::spawn_blocking(move || read_all(&suppressed_topic))
        .await
        .unwrap();
    assert!(
        suppressed.is_empty(),
        "every phone is distinct: nothing to suppress"
    );

    // Alerts: exactly one TIMEOUT per stuck approval, none for the others.
    let alert_topic = format!("{app}.APPROVAL_TIMEOUT");
    let alerts = tokio::task::spawn_blocking(move || read_all(&alert_topic))
        .await
        .unwrap();
    let mut alerted: BTreeMap<String, usize> = BTreeMap::new();
    for (_, value) in &alerts {
        let a: ApprovalAlert = serde_json::from_slice(value).expect("alert JSON");
        assert_eq!(
            a.status,
            AlertStatus::Timeout,
            "nothing completes late here: {a:?}"
        );
        assert_eq!(a.deadline_ts, a.requested_ts + TIMEOUT_MS);
        *alerted.entry(a.order_id).or_default() += 1;
    }
    let twice: Vec<_> = alerted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "alerted more than once: {twice:?}");
    let got: BTreeSet<String> = alerted.into_keys().collect();
    assert_eq!(got, stuck, "alerts must be exactly the approvals left open");

    // The query API, on a survivor, for keys of every partition.
    let http = procs[0].http.clone();
    let client = reqwest::Client::new();
    let (order, template) = sms_expected.iter().next().unwrap();
    let r: SmsResponse = client
        .get(format!("http://{http}/sms/{order}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r.sent.len(), 1, "{r:?}");
    assert_eq!(r.sent[0].template, *template);
    let none: SmsResponse = client
        .get(format!(
            "http://{http}/sms/{}",
            stuck.iter().next().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(none.sent.is_empty() && none.suppressed.is_empty());
    let bad = client
        .get(format!("http://{http}/alerts?since=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Merged across instances: poll until the partition map settled after the kill.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let merged: AlertsResponse = client
            .get(format!("http://{http}/alerts"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: BTreeSet<String> = merged.alerts.iter().map(|a| a.order_id.clone()).collect();
        if merged.complete && ids == stuck {
            assert_eq!(merged.alerts.len(), stuck.len(), "each alert once");
            let since = merged.alerts[merged.alerts.len() / 2].deadline_ts;
            let later: AlertsResponse = client
                .get(format!("http://{http}/alerts?since={since}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(later.alerts.iter().all(|a| a.deadline_ts >= since));
            assert!(later.alerts.len() < merged.alerts.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "merged alerts: complete={} missing={:?}, {} of {} alerts",
            merged.complete,
            merged.partitions_missing,
            ids.len(),
            stuck.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for p in &mut procs {
        if p.child.try_wait().ok().flatten().is_none() {
            p.terminate();
        }
    }
}
