//! A replay of year-old history by a console-producer-style tool (every record stamped with the
//! time it is sent) raises exactly the alerts and SMS of the same events produced with their
//! original record times. Real broker, two applications side by side.
//!
//! Expectations come from the scenario (which orders never complete), not from paystream.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::model;
use common::{
    bootstrap, create_topic, free_port, unique, wait_all_committed, windowed_outputs, Proc,
};
use paystream::partition_for_key;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 4;
const DAY: i64 = 24 * 3_600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// (order id, JSON) in send order, and the orders that never complete. Order `i` is requested
/// at `then + i * 20 s`; every fifth never completes, the others complete 2 s later. One order per
/// partition a day later moves every partition's stream time past every deadline.
fn history(then: i64) -> (Vec<(String, String, i64)>, BTreeSet<String>) {
    let ev = |o: &str, id: &str, kind: &str, ts: i64| {
        let json = format!(
            r#"{{"order_id":"{o}","event_id":"{id}","type":"{kind}","phone":"010-{o}","ts":{ts}}}"#
        );
        (o.to_owned(), json, ts)
    };
    let mut out = Vec::new();
    let mut never = BTreeSet::new();
    for i in 0..2_000 {
        let o = format!("R-{i}");
        let t = then + i * 20_000;
        out.push(ev(&o, "r", "APPROVAL_REQUESTED", t));
        if i % 5 == 0 {
            never.insert(o);
        } else {
            out.push(ev(&o, "c", "APPROVAL_COMPLETED", t + 2_000));
        }
    }
    let mut covered = BTreeSet::new();
    for i in 0.. {
        let o = format!("END-{i}");
        if covered.insert(partition_for_key(o.as_bytes(), PARTITIONS)) {
            out.push(ev(&o, "r", "APPROVAL_REQUESTED", then + DAY));
            out.push(ev(&o, "c", "APPROVAL_COMPLETED", then + DAY));
        }
        if covered.len() == PARTITIONS as usize {
            break;
        }
    }
    (out, never)
}

async fn send(topic: &str, events: &[(String, String, i64)], record_time: Option<i64>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let futures = events.iter().map(|(key, json, ts)| {
        let rec = FutureRecord::<str, str>::to(topic)
            .key(key)
            .payload(json)
            .partition(partition_for_key(key.as_bytes(), PARTITIONS))
            .timestamp(record_time.unwrap_or(*ts));
        producer.send(rec, Timeout::After(Duration::from_secs(60)))
    });
    for r in futures::future::join_all(futures).await {
        if let Err((e, _)) = r {
            panic!("produce: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_with_record_time_now_raises_the_alerts_and_sms_of_the_original() {
    let now = now_ms();
    let (events, never) = history(now - 365 * DAY);
    let (original, replay) = (unique("replay-orig"), unique("replay-now"));
    create_topic(&original, PARTITIONS).await;
    create_topic(&replay, PARTITIONS).await;
    send(&original, &events, None).await;
    send(&replay, &events, Some(now)).await;

    let (app_o, app_r) = (unique("replay-orig-app"), unique("replay-now-app"));
    let work = tempfile::tempdir().expect("tempdir");
    let mut o = Proc::run(&app_o, &original, &work.path().join("o"), free_port(), &[]);
    let mut r = Proc::run(&app_r, &replay, &work.path().join("r"), free_port(), &[]);
    wait_all_committed(&app_o, &original, &mut [&mut o], Duration::from_secs(180)).await;
    wait_all_committed(&app_r, &replay, &mut [&mut r], Duration::from_secs(180)).await;

    let sent: Vec<(Option<String>, String)> = events
        .iter()
        .map(|(k, v, _)| (Some(k.clone()), v.clone()))
        .collect();
    let want_sms = model::expected_sms(&sent);
    for (app, what) in [
        (&app_o, "original record times"),
        (&app_r, "record time now"),
    ] {
        let (alerted, sms) = windowed_outputs(app).await;
        assert_eq!(
            alerted.keys().cloned().collect::<BTreeSet<_>>(),
            never,
            "{what}: alerts are the orders that never completed"
        );
        assert!(alerted.values().all(|&n| n == 1), "{what}: alerted twice");
        assert_eq!(
            sms.keys().cloned().collect::<BTreeSet<_>>(),
            want_sms,
            "{what}: SMS"
        );
        assert!(sms.values().all(|&n| n == 1), "{what}: an SMS sent twice");
    }
    o.assert_alive();
    r.assert_alive();
    o.terminate();
    r.terminate();
}
