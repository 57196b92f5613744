//! Traces across Kafka hops, seen in a real Jaeger (built by `deploy/jaeger.sh`): the test is
//! the upstream order service. It exports its own producer spans to Jaeger over OTLP/JSON (not
//! through paystream's code), writes order events carrying `traceparent` (W3C) or `b3` (Brave),
//! and then finds, through Jaeger's query API, traces that run from its producer span through
//! paystream's processing span to the send span whose context the SMS (or suppressed SMS, or dead
//! letter) record carries on Kafka. A query with a `traceparent`, asked of the instance that does
//! not own the order, shows a server span on each instance, the owner's under the forwarder's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    bootstrap, create_topic, free_port, read_topic, repo_root, unique, wait_cluster_stable, Proc,
};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

const PARTITIONS: i32 = 6;

/// A Jaeger all-in-one (in-memory) on free loopback ports, killed on drop.
struct Jaeger {
    child: Child,
    otlp: u16,
    api: u16,
}

impl Jaeger {
    fn start(dir: &Path) -> Jaeger {
        let script = repo_root().join("deploy/jaeger.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("path")
            .stderr(Stdio::inherit())
            .output()
            .expect("run deploy/jaeger.sh path");
        assert!(out.status.success(), "deploy/jaeger.sh path failed");
        let bin = PathBuf::from(
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .lines()
                .last()
                .unwrap(),
        );
        let (otlp, api) = (free_port(), free_port());
        let config = Command::new("bash")
            .arg(&script)
            .args(["config", &otlp.to_string(), &api.to_string()])
            .output()
            .expect("jaeger config");
        assert!(config.status.success());
        let cfg = dir.join("jaeger.yaml");
        std::fs::write(&cfg, config.stdout).unwrap();
        let log = std::fs::File::create(dir.join("jaeger.log")).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(format!("file:{}", cfg.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start jaeger");
        Jaeger { child, otlp, api }
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let url = format!("http://127.0.0.1:{}/api/services", self.api);
            if let Ok(r) = client.get(url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "jaeger exited at start"
            );
            assert!(Instant::now() < deadline, "jaeger did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The spans of trace `id` (hex) Jaeger holds.
    async fn spans(&self, client: &reqwest::Client, id: &str) -> Vec<Span> {
        let url = format!("http://127.0.0.1:{}/api/traces/{id}", self.api);
        let Ok(r) = client.get(url).send().await else {
            return Vec::new();
        };
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let Some(trace) = body["data"].get(0) else {
            return Vec::new();
        };
        let service = |pid: &Value| {
            trace["processes"][pid.as_str().unwrap_or_default()]["serviceName"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        trace["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| Span {
                id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                name: s["operationName"].as_str().unwrap_or_default().to_owned(),
                service: service(&s["processID"]),
                parent: s["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_owned),
                instance: s["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(
                        trace["processes"][s["processID"].as_str().unwrap_or_default()]["tags"]
                            .as_array()
                            .into_iter()
                            .flatten(),
                    )
                    .find(|t| t["key"] == "service.instance.id")
                    .and_then(|t| t["value"].as_str())
                    .map(str::to_owned),
            })
            .collect()
    }

    /// Poll trace `id` until `done` holds for its spans.
    async fn wait_trace(
        &self,
        client: &reqwest::Client,
        id: &str,
        what: &str,
        done: impl Fn(&[Span]) -> bool,
    ) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let spans = self.spans(client, id).await;
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {id}: {what} never seen; spans: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
struct Span {
    id: String,
    name: String,
    service: String,
    parent: Option<String>,
    instance: Option<String>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A fresh random hex id of `bytes` bytes (never all zero).
fn hex_id(bytes: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    while out.len() < bytes * 2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now_ms() as u64);
        out.push_str(&format!("{:016x}", h.finish() | 1));
    }
    out.truncate(bytes * 2);
    out
}

/// Export the order service's producer span to Jaeger (OTLP/HTTP JSON, straight from the test).
async fn export_producer_span(client: &reqwest::Client, jaeger: &Jaeger, trace: &str, span: &str) {
    let start = now_ms() as u128 * 1_000_000;
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "order-service"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace, "spanId": span, "name": "send PAYMENT.ORDER", "kind": 4,
            "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": (start + 1_000_000).to_string()}]}]}]});
    let r = client
        .post(format!("http://127.0.0.1:{}/v1/traces", jaeger.otlp))
        .json(&body)
        .send()
        .await
        .expect("export the producer span");
    assert!(r.status().is_success(), "{}", r.status());
}

async fn send(topic: &str, key: &str, value: &str, header: (&str, &str)) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: header.0,
        value: Some(header.1),
    });
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .expect("delivery");
}

fn event(order: &str, kind: &str, phone: Option<&str>) -> String {
    json!({"order_id": order, "event_id": format!("{order}-{kind}"), "type": kind,
        "amount": 12000, "currency": "KRW", "member_id": "M-1", "phone": phone, "ts": now_ms()})
    .to_string()
}

/// The one record of `topic` keyed `key`, once it is there.
async fn record_of(topic: &str, key: &str) -> common::ReadRecord {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = topic.to_owned();
        let all = tokio::task::spawn_blocking(move || read_topic(&t, "read_committed"))
            .await
            .unwrap();
        if let Some(r) = all.into_iter().find(|r| r.key.as_deref() == Some(key)) {
            return r;
        }
        assert!(Instant::now() < deadline, "no record for {key} on {topic}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// (trace id, parent span id) of a record's `traceparent`.
fn traceparent(r: &common::ReadRecord) -> (String, String) {
    let tp = r
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("no traceparent on {r:?}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The path from the producer span through processing to the send span the record names.
fn assert_chain(spans: &[Span], producer: &str, send_span: &str, input: &str, output: &str) {
    let by_id = |id: &str| spans.iter().find(|s| s.id == id);
    let send = by_id(send_span).unwrap_or_else(|| panic!("no span {send_span}: {spans:#?}"));
    assert_eq!(send.name, format!("send {output}"), "{spans:#?}");
    assert_eq!(send.service, "paystream");
    let process = by_id(send.parent.as_deref().unwrap_or_default())
        .unwrap_or_else(|| panic!("send span without its parent: {spans:#?}"));
    assert_eq!(process.name, format!("process {input}"), "{spans:#?}");
    assert_eq!(process.parent.as_deref(), Some(producer), "{spans:#?}");
    let up = by_id(producer).unwrap_or_else(|| panic!("no producer span: {spans:#?}"));
    assert_eq!(up.service, "order-service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_producer_through_processing_to_the_sms_record() {
    let work = common::work_dir();
    let client = reqwest::Client::new();
    let mut jaeger = Jaeger::start(work.path());
    jaeger.wait_ready(&client).await;
    let topic = unique("traced");
    let app = unique("traced");
    create_topic(&topic, PARTITIONS).await;
    let endpoint = format!("http://127.0.0.1:{}", jaeger.otlp);
    let extra = ["--otlp-endpoint", endpoint.as_str()];
    let mut a = Proc::run(&app, &topic, &work.path().join("a"), free_port(), &extra);
    let mut b = Proc::run(&app, &topic, &work.path().join("b"), free_port(), &extra);
    wait_cluster_stable(&mut [&mut a, &mut b]).await;

    // W3C traceparent: the order's completion asks for an SMS.
    let (t1, p1) = (hex_id(16), hex_id(8));
    export_producer_span(&client, &jaeger, &t1, &p1).await;
    let sms_order = unique("O-sms");
    let tp = format!("00-{t1}-{p1}-01");
    let completed = event(&sms_order, "APPROVAL_COMPLETED", Some("+821012345678"));
    send(&topic, &sms_order, &completed, ("traceparent", &tp)).await;
    // Brave's b3: a completion without a phone is suppressed.
    let (t2, p2) = (hex_id(16), hex_id(8));
    export_producer_span(&client, &jaeger, &t2, &p2).await;
    let quiet_order = unique("O-quiet");
    let b3 = format!("{t2}-{p2}-1");
    send(
        &topic,
        &quiet_order,
        &event(&quiet_order, "APPROVAL_COMPLETED", None),
        ("b3", &b3),
    )
    .await;
    // A record that cannot be parsed: its dead letter stays in the trace.
    let (t3, p3) = (hex_id(16), hex_id(8));
    export_producer_span(&client, &jaeger, &t3, &p3).await;
    let bad_order = unique("O-bad");
    let tp3 = format!("00-{t3}-{p3}-01");
    send(&topic, &bad_order, "{not json", ("traceparent", &tp3)).await;

    // Each output record names, by its traceparent, a send span of the input's trace.
    let cases = [
        (&t1, &p1, format!("{app}.SEND_SMS"), &sms_order),
        (&t2, &p2, format!("{app}.SEND_SMS.SUPPRESSED"), &quiet_order),
        (&t3, &p3, format!("{topic}.DLQ"), &bad_order),
    ];
    for (trace, producer, output, key) in &cases {
        let record = record_of(output, key).await;
        let (trace_id, send_span) = traceparent(&record);
        assert_eq!(&trace_id, *trace, "{output}: {record:?}");
        assert!(record.headers.contains_key("b3"), "{record:?}");
        let spans = jaeger
            .wait_trace(&client, trace, "producer → process → send", |spans| {
                spans.iter().any(|s| s.id == send_span)
                    && spans.iter().any(|s| s.name.starts_with("process "))
                    && spans.iter().any(|s| s.id == **producer)
            })
            .await;
        assert_chain(&spans, producer, &send_span, &topic, output);
    }

    // A traced query asked of the instance that does not own the order (active copy only, so
    // it is forwarded): a server span on each, the owner's under the forwarder's.
    let location: Value = client
        .get(format!("http://{}/orders/{sms_order}/location", a.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let owner = location["active"]
        .as_str()
        .unwrap_or_else(|| panic!("no active copy: {location}"))
        .to_owned();
    let asked = if owner == a.http { &b.http } else { &a.http };
    let (t4, p4) = (hex_id(16), hex_id(8));
    export_producer_span(&client, &jaeger, &t4, &p4).await;
    let r = client
        .get(format!(
            "http://{asked}/orders/{sms_order}?consistency=active"
        ))
        .header("traceparent", format!("00-{t4}-{p4}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["served_by"], owner.as_str(), "{body}");
    let spans = jaeger
        .wait_trace(&client, &t4, "two server spans", |spans| {
            spans.iter().filter(|s| s.name.starts_with("GET ")).count() == 2
        })
        .await;
    let first = spans
        .iter()
        .find(|s| s.parent.as_deref() == Some(p4.as_str()))
        .unwrap_or_else(|| panic!("no span under the caller's: {spans:#?}"));
    assert_eq!(first.name, "GET /orders/{id}");
    assert_eq!(
        first.instance.as_deref(),
        Some(asked.as_str()),
        "{spans:#?}"
    );
    let second = spans
        .iter()
        .find(|s| s.parent.as_deref() == Some(first.id.as_str()))
        .unwrap_or_else(|| panic!("the owner's span is not under the forwarder's: {spans:#?}"));
    assert_eq!(
        second.instance.as_deref(),
        Some(owner.as_str()),
        "{spans:#?}"
    );
    a.assert_alive();
    b.assert_alive();
}
