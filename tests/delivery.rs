//! `paystream deliver` against a real broker and a test gateway (tests/common/gateway.rs) that
//! records every call. What a user relies on: never more calls in flight than the permits, each
//! order's SMS one at a time and in order, every SMS delivered once or dead-lettered with its
//! reason, an open circuit that really stops calling, and after `kill -9` nothing lost and any
//! duplicate carrying the idempotency key that lets the gateway drop it.
//!
//! The model is the test's own list of the SMS it produced; the witness is the gateway.

mod common;
#[path = "common/gateway.rs"]
mod gateway;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::model::expected_sms;
use common::{bootstrap, create_topic, free_port, read_topic, unique, work_dir, Proc};
use gateway::{fails_once, rejects, Gateway, Mode};
use paystream_topology::sms::SmsRequest;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const TOKEN: &str = "test-admin-token-0123456789";

/// A `paystream deliver` child process.
struct Deliverer {
    child: Child,
    http: String,
    log: std::path::PathBuf,
}

impl Deliverer {
    fn start(dir: &Path, topic: &str, group: &str, gateway: &str, extra: &[&str]) -> Deliverer {
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let log = dir.join(format!("deliver-{port}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_paystream"))
            .args(["deliver", "--bootstrap-servers", &bootstrap()])
            .args(["--sms-gateway-url", gateway, "--sms-topic", topic])
            .args(["--group-id", group, "--http-addr", &http])
            .args(extra)
            .env("RUST_LOG", "info,paystream=debug,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn paystream deliver");
        Deliverer { child, http, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "paystream deliver exited ({status}); log:\n{}",
                self.log_tail()
            );
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn health(&self) -> Option<serde_json::Value> {
        let r = reqwest::get(format!("http://{}/health", self.http))
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Polls `/health` until `ok` holds (deadline).
    async fn wait_health(
        &mut self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive();
            if let Some(h) = self.health().await {
                if ok(&h) {
                    return h;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: not within {timeout:?}; last /health {h}; log:\n{}",
                    self.log_tail()
                );
            } else {
                assert!(Instant::now() < deadline, "{what}: /health never answered");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn put_permits(&self, token: Option<&str>, permits: usize) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new()
            .put(format!("http://{}/admin/permits", self.http))
            .body(format!("{{\"permits\": {permits}}}"));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let r = req.send().await.expect("PUT /admin/permits");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    async fn get_permits(&self, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new().get(format!("http://{}/admin/permits", self.http));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let r = req.send().await.expect("GET /admin/permits");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }
}

impl Drop for Deliverer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One SMS the test produced: (order, event id), in production order.
type Sms = (String, String);

/// Produces `orders` × `per_order` SMS requests to a new `topic` (4 partitions, keyed by order,
/// each order's SMS in sequence); returns them in production order.
async fn produce_sms(topic: &str, orders: usize, per_order: usize) -> Vec<Sms> {
    create_topic(topic, 4).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut sent = Vec::new();
    let mut pending = Vec::new();
    for seq in 0..per_order {
        for o in 0..orders {
            let order_id = format!("order-{o}");
            let event_id = format!("{order_id}-sms-{seq}");
            let request = SmsRequest {
                order_id: order_id.clone(),
                member_id: Some(format!("member-{o}")),
                phone: Some(format!("+4670{o:07}")),
                template: "payment_completed".into(),
                amount: Some(100),
                currency: Some("SEK".into()),
                event_ts: 1_700_000_000_000 + seq as i64,
                event_id: event_id.clone(),
            };
            let value = serde_json::to_vec(&request).expect("json");
            let p = producer.clone();
            let t = topic.to_owned();
            let key = order_id.clone();
            pending.push(tokio::spawn(async move {
                p.send(
                    FutureRecord::to(&t).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
            }));
            sent.push((order_id, event_id));
        }
        // Each round is acknowledged before the next: an order's SMS are in sequence.
        for p in pending.drain(..) {
            p.await.expect("join").expect("produced");
        }
    }
    sent
}

/// Polls until the gateway has accepted `want` distinct SMS (deadline).
async fn wait_delivered(g: &Gateway, d: &mut Deliverer, want: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        d.assert_alive();
        let n = g.delivered().len();
        if n >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {want} SMS delivered within {timeout:?}; log:\n{}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until the group has committed every record of `topic` (deadline).
async fn wait_committed(group: &str, topic: &str, d: &mut Deliverer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        d.assert_alive();
        let (g, t) = (group.to_owned(), topic.to_owned());
        let answer = tokio::task::spawn_blocking(move || common::committed_and_end(&g, &t))
            .await
            .expect("join");
        if matches!(answer, Ok((c, e)) if c == e) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group} has not committed all of {topic}: {answer:?}; log:\n{}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each order's accepted SMS came in production order (counting each SMS at its first
/// acceptance: a replay after a crash may repeat some).
fn assert_in_order(sent: &[Sms], calls: &[gateway::Call]) {
    let mut want: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (o, e) in sent {
        want.entry(o).or_default().push(e);
    }
    let mut got: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for c in calls.iter().filter(|c| c.status == 200) {
        if seen.insert(c.event_id.as_str()) {
            got.entry(&c.order_id).or_default().push(&c.event_id);
        }
    }
    for (order, events) in &want {
        assert_eq!(
            got.get(order),
            Some(events),
            "order {order}: SMS accepted out of production order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permits_bound_the_calls_and_raising_them_with_the_token_raises_concurrency() {
    let dir = work_dir();
    let topic = unique("deliver-permits");
    let group = format!("{topic}-group");
    let g = Gateway::start(Mode::Ok {
        latency: Duration::from_millis(50),
    })
    .await;
    let sent = produce_sms(&topic, 1000, 5).await;
    let mut d = Deliverer::start(
        dir.path(),
        &topic,
        &group,
        &g.url,
        &["--permits", "4", "--admin-token", TOKEN],
    );
    // Phase 1, permits 4: half the SMS.
    wait_delivered(&g, &mut d, 2500, Duration::from_secs(120)).await;
    let phase1_max = g.max_in_flight();
    assert_eq!(
        phase1_max, 4,
        "at --permits 4 the gateway saw at most {phase1_max} calls at once (must be 4: bounded, and used)"
    );
    // Without the token: 401, and nothing changes.
    let (status, body) = d.put_permits(None, 16).await;
    assert_eq!(status, 401, "PUT without a token: {body}");
    assert_eq!(body["error"], "unauthorized", "{body}");
    let (status, _) = d.put_permits(Some("not-the-token-0123456789"), 16).await;
    assert_eq!(status, 401, "PUT with a wrong token");
    let (status, _) = d.get_permits(None).await;
    assert_eq!(status, 401, "GET without a token");
    let (status, body) = d.get_permits(Some(TOKEN)).await;
    assert_eq!((status, body["permits"].as_u64()), (200, Some(4)), "{body}");
    let (status, body) = d.put_permits(Some(TOKEN), 0).await;
    assert_eq!(status, 400, "permits 0 is refused: {body}");
    assert!(g.max_in_flight() <= 4, "nothing changed without the token");
    // With the token: 16.
    let (status, body) = d.put_permits(Some(TOKEN), 16).await;
    assert_eq!(
        (status, body["permits"].as_u64()),
        (200, Some(16)),
        "{body}"
    );
    g.reset_max_in_flight();
    wait_delivered(&g, &mut d, sent.len(), Duration::from_secs(120)).await;
    let phase2_max = g.max_in_flight();
    assert!(
        phase2_max > 4 && phase2_max <= 16,
        "after raising to 16 the gateway saw {phase2_max} calls at once"
    );
    wait_committed(&group, &topic, &mut d).await;
    let calls = g.calls();
    assert_eq!(
        g.overlapping_orders(),
        0,
        "two SMS of one order were in flight at once"
    );
    let delivered = g.delivered();
    let want: BTreeSet<&str> = sent.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(delivered.len(), want.len(), "every SMS delivered");
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(calls.len(), sent.len(), "one call per SMS, no retries");
    assert_in_order(&sent, &calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_gateway_retries_and_dead_letters_and_loses_nothing() {
    let dir = work_dir();
    let topic = unique("deliver-flaky");
    let group = format!("{topic}-group");
    let g = Gateway::start(Mode::Flaky {
        latency: Duration::from_millis(2),
    })
    .await;
    let sent = produce_sms(&topic, 250, 4).await;
    let rejected: BTreeSet<&str> = sent
        .iter()
        .map(|(_, e)| e.as_str())
        .filter(|e| rejects(e))
        .collect();
    let retried: BTreeSet<&str> = sent
        .iter()
        .map(|(_, e)| e.as_str())
        .filter(|e| fails_once(e))
        .collect();
    assert!(
        rejected.len() > 20 && retried.len() > 200,
        "the schedule picks enough: {} {}",
        rejected.len(),
        retried.len()
    );
    // The circuit stays closed here (it is the next test's subject).
    let mut d = Deliverer::start(
        dir.path(),
        &topic,
        &group,
        &g.url,
        &[
            "--permits",
            "8",
            "--retry-delays",
            "1s,2s",
            "--circuit-failures",
            "100000",
            "--circuit-failure-rate",
            "1",
        ],
    );
    let want_delivered = sent.len() - rejected.len();
    wait_delivered(&g, &mut d, want_delivered, Duration::from_secs(120)).await;
    wait_committed(&group, &topic, &mut d).await;
    wait_committed(&group, &format!("{topic}.RETRY.1"), &mut d).await;
    // No admin endpoint without a token.
    let (status, _) = d.get_permits(Some(TOKEN)).await;
    assert_eq!(status, 404, "no admin endpoint without --admin-token");

    let delivered = g.delivered();
    for (_, e) in &sent {
        let n = delivered.get(e).copied().unwrap_or(0);
        if rejected.contains(e.as_str()) {
            assert_eq!(n, 0, "{e} was refused with 400 but counted delivered");
        } else {
            assert_eq!(n, 1, "{e} delivered {n} times");
        }
    }
    let dlq = read_topic(&format!("{topic}.DLQ"), "read_committed");
    let mut dead: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in dlq {
        let req: SmsRequest = serde_json::from_slice(&r.value).expect("DLQ value is the request");
        assert!(
            dead.insert(req.event_id.clone(), r.headers).is_none(),
            "{} dead-lettered twice",
            req.event_id
        );
    }
    assert_eq!(
        dead.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        rejected,
        "the DLQ holds exactly the SMS the gateway refused"
    );
    for (e, h) in &dead {
        assert_eq!(
            h.get("paystream.delivery.dead-letter-reason")
                .map(String::as_str),
            Some("rejected: http 400"),
            "{e}: {h:?}"
        );
        assert_eq!(
            h.get("paystream.delivery.attempts").map(String::as_str),
            Some("1")
        );
    }
    let retry = read_topic(&format!("{topic}.RETRY.1"), "read_committed");
    let mut in_retry = BTreeSet::new();
    for r in retry {
        let req: SmsRequest = serde_json::from_slice(&r.value).expect("retry value");
        assert_eq!(
            r.headers
                .get("paystream.delivery.attempts")
                .map(String::as_str),
            Some("1"),
            "{}: {:?}",
            req.event_id,
            r.headers
        );
        assert_eq!(
            r.headers
                .get("paystream.delivery.first-reason")
                .map(String::as_str),
            Some("http 503")
        );
        assert!(r.headers.contains_key("paystream.delivery.due-ms"));
        assert!(
            in_retry.insert(req.event_id.clone()),
            "{} retried twice",
            req.event_id
        );
    }
    assert_eq!(
        in_retry.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        retried,
        "RETRY.1 holds exactly the SMS whose first call got 503"
    );
    assert!(
        read_topic(&format!("{topic}.RETRY.2"), "read_committed").is_empty(),
        "no SMS needed a second retry"
    );
    // The retried SMS were called again only after their delay.
    let calls = g.calls();
    for e in retried.iter().take(50) {
        let mine: Vec<_> = calls.iter().filter(|c| c.event_id == *e).collect();
        assert_eq!(mine.len(), 2, "{e}: {} calls", mine.len());
        let gap = mine[1].started.duration_since(mine[0].ended);
        assert!(
            gap >= Duration::from_millis(900),
            "{e} retried after {gap:?}, not 1s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_gateway_opens_the_circuit_which_closes_after_it_recovers() {
    let dir = work_dir();
    let topic = unique("deliver-circuit");
    let group = format!("{topic}-group");
    let g = Gateway::start(Mode::Hang).await;
    let sent = produce_sms(&topic, 100, 3).await;
    let cool_down = Duration::from_secs(2);
    let mut d = Deliverer::start(
        dir.path(),
        &topic,
        &group,
        &g.url,
        &[
            "--permits",
            "4",
            "--call-timeout",
            "1s",
            "--circuit-failures",
            "3",
            "--circuit-cool-down",
            "2s",
            "--retry-delays",
            "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s",
        ],
    );
    d.wait_health("the circuit opens", Duration::from_secs(60), |h| {
        h["circuit"] == "open"
    })
    .await;
    let opened = Instant::now();
    // Hang on for three cool-downs: only probes may reach the gateway, one at a time.
    tokio::time::sleep(Duration::from_secs(8)).await;
    g.set_mode(Mode::Ok {
        latency: Duration::from_millis(2),
    });
    let recovered = Instant::now();
    d.wait_health("the circuit closes", Duration::from_secs(30), |h| {
        h["circuit"] == "closed"
    })
    .await;
    wait_delivered(&g, &mut d, sent.len(), Duration::from_secs(120)).await;
    wait_committed(&group, &topic, &mut d).await;

    let calls = g.calls();
    let while_open: Vec<_> = calls
        .iter()
        .filter(|c| c.started > opened && c.started < recovered)
        .collect();
    assert!(
        !while_open.is_empty(),
        "no probe reached the gateway in 8 s of a 2 s cool-down"
    );
    assert!(
        while_open.len() <= 4,
        "{} calls while the circuit was open or half-open (probes only: at most one per 1 s \
         timeout + 2 s cool-down)",
        while_open.len()
    );
    for w in while_open.windows(2) {
        let gap = w[1].started.duration_since(w[0].started);
        assert!(
            gap >= cool_down,
            "two calls {gap:?} apart while the circuit was open: only one probe per cool-down"
        );
    }
    let delivered = g.delivered();
    assert_eq!(
        delivered.len(),
        sent.len(),
        "everything delivered after recovery"
    );
    assert!(
        delivered.values().all(|n| *n == 1),
        "an SMS delivered twice"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", d.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("paystream_delivery_circuit_transitions_total{to=\"open\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("paystream_delivery_circuit_skips_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_stream_loses_nothing_and_duplicates_carry_their_idempotency_key() {
    let dir = work_dir();
    let topic = unique("deliver-kill");
    let group = format!("{topic}-group");
    let g = Gateway::start(Mode::Ok {
        latency: Duration::from_millis(10),
    })
    .await;
    let sent = produce_sms(&topic, 600, 5).await;
    let args = ["--permits", "8"];
    let mut d = Deliverer::start(dir.path(), &topic, &group, &g.url, &args);
    wait_delivered(&g, &mut d, 1000, Duration::from_secs(120)).await;
    d.kill9();
    let at_kill = g.delivered().len();
    assert!(
        at_kill < sent.len(),
        "the kill came after everything was delivered ({at_kill}): not mid-stream"
    );
    g.set_phase(1);
    let mut d = Deliverer::start(dir.path(), &topic, &group, &g.url, &args);
    wait_delivered(&g, &mut d, sent.len(), Duration::from_secs(120)).await;
    wait_committed(&group, &topic, &mut d).await;

    let calls = g.calls();
    for c in &calls {
        assert_eq!(
            c.idempotency_key.as_deref(),
            Some(c.event_id.as_str()),
            "every call carries its SMS's event id as Idempotency-Key"
        );
    }
    let mut per_phase: BTreeMap<(u32, &str), usize> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.status == 200) {
        *per_phase.entry((c.phase, c.event_id.as_str())).or_insert(0) += 1;
    }
    let twice: Vec<_> = per_phase.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "an SMS was delivered twice by one process: {twice:?}"
    );
    let duplicates = g.delivered().values().filter(|n| **n > 1).count();
    assert!(
        duplicates <= at_kill,
        "{duplicates} duplicates, more than were delivered before the kill"
    );
    assert_in_order(&sent, &calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paystream_run_with_a_gateway_url_delivers_each_expected_sms_once() {
    let dir = work_dir();
    let topic = unique("deliver-run");
    let app = unique("deliver-run-app");
    let g = Gateway::start(Mode::Ok {
        latency: Duration::from_millis(2),
    })
    .await;
    create_topic(&topic, 12).await;
    let delivery_port = free_port();
    let delivery_http = format!("127.0.0.1:{delivery_port}");
    let mut p = Proc::run(
        &app,
        &topic,
        &dir.path().join("state"),
        free_port(),
        &[
            "--sms-gateway-url",
            &g.url,
            "--delivery-http-addr",
            &delivery_http,
            "--permits",
            "16",
        ],
    );
    let (_, sent) = common::produce(&topic, 2_000, None, 0, None).await;
    let want = expected_sms(&sent);
    assert!(want.len() > 500, "the traffic completes most orders");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        p.assert_alive();
        let got: BTreeSet<(String, String)> = g
            .calls()
            .into_iter()
            .filter(|c| c.status == 200)
            .map(|c| (c.order_id, c.template))
            .collect();
        if got.len() >= want.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} SMS delivered; log:\n{}",
            got.len(),
            want.len(),
            p.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
    for c in g.calls().into_iter().filter(|c| c.status == 200) {
        *count.entry((c.order_id, c.template)).or_insert(0) += 1;
    }
    let got: BTreeSet<(String, String)> = count.keys().cloned().collect();
    assert_eq!(
        got, want,
        "the gateway got exactly the SMS the rules ask for"
    );
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    let health: serde_json::Value = reqwest::get(format!("http://{delivery_http}/health"))
        .await
        .expect("delivery /health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["circuit"], "closed", "{health}");
    assert_eq!(health["permits"], 16, "{health}");
    let status = p.terminate();
    assert!(
        status.success(),
        "paystream run with delivery stopped with {status}"
    );
}
