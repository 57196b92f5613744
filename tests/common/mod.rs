//! Fixture for integration tests: a real Apache Kafka broker (started by `deploy/kafka.sh`,
//! idempotently), unique topic names per test, paystream instances as child processes (so a
//! test can `kill -9` them), and helpers to compare served views with the generator's model.
#![allow(dead_code)]

pub mod model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The repository root (for `deploy/kafka.sh`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Bootstrap servers of the test broker: `PAYSTREAM_TEST_BOOTSTRAP` if set, else one broker
/// started (or found running) by `deploy/kafka.sh start`.
pub fn bootstrap() -> String {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| {
            if let Ok(b) = std::env::var("PAYSTREAM_TEST_BOOTSTRAP") {
                return b;
            }
            let out = Command::new("bash")
                .arg(repo_root().join("deploy/kafka.sh"))
                .arg("start")
                .stderr(Stdio::inherit())
                .output()
                .expect("run deploy/kafka.sh start");
            assert!(out.status.success(), "deploy/kafka.sh start failed");
            String::from_utf8(out.stdout)
                .expect("utf8")
                .trim()
                .lines()
                .last()
                .expect("bootstrap line")
                .to_owned()
        })
        .clone()
}

/// A test's work dir (instance logs, state). Deleted afterwards, unless `PAYSTREAM_DRILL_KEEP`
/// is set or the test fails (panics): then it stays, to read the instance logs of the run.
pub fn work_dir() -> WorkDir {
    let keep = std::env::var_os("PAYSTREAM_DRILL_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix("paystream-test-")
        .disable_cleanup(keep)
        .tempdir()
        .expect("create a work dir");
    if keep {
        eprintln!("work dir kept: {}", dir.path().display());
    }
    WorkDir(Some(dir))
}

/// See [`work_dir`].
pub struct WorkDir(Option<tempfile::TempDir>);

impl WorkDir {
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("the work dir lives").path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("work dir of the failed test kept: {}", dir.keep().display());
            }
        }
    }
}

#[test]
fn the_work_dir_of_a_failed_test_is_kept_and_of_a_passed_one_deleted() {
    let failed = work_dir();
    let kept = failed.path().to_owned();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _dir = failed;
        panic!("a failing test (on purpose)");
    }));
    let passed = work_dir();
    let gone = passed.path().to_owned();
    drop(passed);
    let keep_all = std::env::var_os("PAYSTREAM_DRILL_KEEP").is_some();
    assert!(kept.is_dir(), "the failed test's work dir is kept");
    assert_eq!(
        gone.is_dir(),
        keep_all,
        "the passed test's work dir is deleted"
    );
    for d in [kept, gone] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000)
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Create a topic and wait until metadata shows it.
pub async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics");
    for r in res {
        r.expect("topic created");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (b, n) = (bootstrap(), name.to_owned());
        let count =
            tokio::task::spawn_blocking(move || paystream::kafka::admin::partition_count(&b, &n))
                .await
                .expect("join")
                .expect("metadata");
        if count == Some(partitions) {
            return;
        }
        assert!(Instant::now() < deadline, "topic {name} did not appear");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free loopback port (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `paystream run` child process.
pub struct Proc {
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

impl Proc {
    /// Start `paystream run` with the given settings; its log goes to `<state_dir>/../<port>.log`.
    /// Output topics are per application (`<app>.SEND_SMS`, ...) unless `extra` names them.
    pub fn run(app_id: &str, topic: &str, state_dir: &Path, port: u16, extra: &[&str]) -> Proc {
        Proc::run_with_env(app_id, topic, state_dir, port, extra, &[])
    }

    /// [`Proc::run`] with extra environment variables (e.g. a failpoint).
    pub fn run_with_env(
        app_id: &str,
        topic: &str,
        state_dir: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        Proc::run_at(&bootstrap(), app_id, topic, state_dir, port, extra, env)
    }

    /// [`Proc::run_with_env`] against another cluster than the suite's broker.
    pub fn run_at(
        bootstrap: &str,
        app_id: &str,
        topic: &str,
        state_dir: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let http = format!("127.0.0.1:{port}");
        let log = state_dir.with_extension(format!("{port}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut outputs: Vec<String> = Vec::new();
        // Output topics of the windowed topologies are per application here, so tests running
        // side by side (with different partition counts) never share them.
        if !extra.contains(&"--sms-topic") {
            outputs.extend(["--sms-topic".into(), format!("{app_id}.SEND_SMS")]);
        }
        if !extra.contains(&"--approval-timeout-topic") {
            outputs.extend([
                "--approval-timeout-topic".into(),
                format!("{app_id}.APPROVAL_TIMEOUT"),
            ]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_paystream"))
            .args([
                "run",
                "--bootstrap-servers",
                bootstrap,
                "--application-id",
                app_id,
                "--input-topic",
                topic,
            ])
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--http-addr", &http])
            .args(&outputs)
            .args(extra)
            .env("RUST_LOG", "info,paystream=debug,rdkafka=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn paystream");
        Proc { child, http, log }
    }

    /// SIGKILL: no flush, no commit, no checkpoint.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!(
                    "paystream did not stop within 60 s of SIGTERM; log: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The log's warnings and errors (the last 40).
    pub fn log_warnings(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Fail the test if the process exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(s)) = self.child.try_wait() {
            panic!("paystream exited with {s}; log:\n{}", self.log_tail());
        }
    }

    /// A counter of `GET /health` (0 while not answering).
    pub async fn health_count(&self, field: &str) -> u64 {
        self.health()
            .await
            .and_then(|h| h[field].as_u64())
            .unwrap_or(0)
    }

    /// `GET /health` as JSON (None while not answering).
    pub async fn health(&self) -> Option<serde_json::Value> {
        let resp = reqwest::get(format!("http://{}/health", self.http))
            .await
            .ok()?;
        resp.json().await.ok()
    }

    /// Poll `/health` until `cond` holds (deadline), failing with the log if the process dies.
    pub async fn wait_health(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive();
            if let Some(h) = self.health().await {
                if cond(&h) {
                    return h;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produce generated traffic (12 partitions, in-process); returns the report and what was sent
/// (for the independent model, `model::order_views`).
pub async fn produce(
    topic: &str,
    orders: u64,
    events: Option<u64>,
    malformed: u64,
    rate: Option<u64>,
) -> (
    paystream::produce::ProduceReport,
    Vec<(Option<String>, String)>,
) {
    let g = paystream::produce::GeneratorOptions {
        orders,
        events,
        malformed,
        ..Default::default()
    };
    let started = Instant::now();
    let traffic = produce_traffic(topic, 12, g.clone(), rate).await;
    let report = paystream::produce::ProduceReport {
        events: traffic.events.len() as u64,
        orders: g.orders,
        malformed: g.malformed,
        elapsed: started.elapsed(),
    };
    (report, sent(&traffic))
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Every record of `topic` up to its current end, read as `isolation` (`read_committed` or
/// `read_uncommitted`). The end of a partition is its end-of-partition event (under
/// transactions the last offsets hold commit markers, which are never delivered).
///
/// `read_committed` reads stop at the last stable offset, behind any transaction still open:
/// one left open by a killed instance holds back every record committed after it on that
/// partition until the broker aborts it (`transaction.timeout.ms`). So a `read_committed` read
/// first waits (bounded) until no partition has an open transaction, and then reads everything
/// committed up to the log end, as a reader that waits would see it.
pub fn read_topic(topic: &str, isolation: &str) -> Vec<ReadRecord> {
    if isolation == "read_committed" {
        wait_no_open_transaction(topic, Duration::from_secs(120));
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    while done.len() < partitions.len() {
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to its end"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        let v = hd.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        headers.insert(hd.key.to_owned(), v.unwrap_or_default());
                    }
                }
                out.push(ReadRecord {
                    partition: m.partition(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
    }
    out
}

/// Wait until every partition's last stable offset (what `read_committed` readers may read up
/// to) is its log end: no transaction is open on `topic`. Panics at the deadline.
fn wait_no_open_transaction(topic: &str, timeout: Duration) {
    let client = |isolation: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", unique("ends"))
            .set("isolation.level", isolation)
            .create()
            .expect("consumer")
    };
    let (stable, log_end) = (client("read_committed"), client("read_uncommitted"));
    let partitions: Vec<i32> = log_end
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata")
        .topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let started = Instant::now();
    let deadline = started + timeout;
    let mut told = false;
    let high = |c: &BaseConsumer, p: i32| {
        c.fetch_watermarks(topic, p, Duration::from_secs(10))
            .map(|(_, h)| h)
    };
    loop {
        let open: Vec<(i32, i64, i64)> = partitions
            .iter()
            .filter_map(|&p| match (high(&stable, p), high(&log_end, p)) {
                (Ok(s), Ok(e)) if s >= e => None,
                (Ok(s), Ok(e)) => Some((p, s, e)),
                _ => Some((p, -1, -1)),
            })
            .collect();
        if open.is_empty() {
            if told {
                eprintln!("{topic}: no transaction open after {:?}", started.elapsed());
            }
            return;
        }
        if !told {
            told = true;
            eprintln!("{topic}: waiting for open transactions (partition, stable offset, log end): {open:?}");
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: transactions still open after {timeout:?} (partition, stable offset, log end): {open:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sum of the group's committed offsets of `topic` and sum of its end offsets, or why the broker
/// did not answer within 10 s (a commit still in an open transaction holds `read_committed`
/// offset fetches back until that transaction ends).
pub fn committed_and_end(group: &str, topic: &str) -> Result<(i64, i64), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    let mut end = 0;
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
        end += consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .map_err(|e| format!("watermarks: {e}"))?
            .1;
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|e| format!("committed offsets: {e}"))?;
    let sum = committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
        .sum();
    Ok((sum, end))
}

/// Poll until the group `app` has committed every record of `topic` (deadline), failing early
/// if any of `procs` that should be alive died.
pub async fn wait_all_committed(
    app: &str,
    topic: &str,
    procs: &mut [&mut Proc],
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        for p in procs.iter_mut() {
            p.assert_alive();
        }
        let (a, t) = (app.to_owned(), topic.to_owned());
        let answer = tokio::task::spawn_blocking(move || committed_and_end(&a, &t))
            .await
            .expect("join");
        if let Ok((committed, end)) = answer {
            if committed == end {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "group {app} has not committed every record: {answer:?} (committed, end); log:\n{}",
            procs.first().map(|p| p.log_tail()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The records a traffic generator run sent, in send order, as the model reads them.
pub fn sent(traffic: &paystream::produce::Traffic) -> Vec<(Option<String>, String)> {
    traffic
        .events
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

/// Ask `http` for every order of the model (with `query`, e.g. `consistency=active`) until all
/// answers equal the model or `timeout` passes; returns the ids still differing.
pub async fn wait_views_match_model(
    http: &str,
    model: &BTreeMap<String, model::ModelView>,
    query: &str,
    timeout: Duration,
) -> Vec<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .expect("client");
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<String> = model.keys().cloned().collect();
    loop {
        let mut still = Vec::new();
        for chunk in pending.chunks(64) {
            let futs = chunk.iter().map(|id| {
                let client = client.clone();
                let url = format!("http://{http}/orders/{id}?{query}");
                async move {
                    let r = client.get(url).send().await.ok()?;
                    if !r.status().is_success() {
                        return None;
                    }
                    r.json::<serde_json::Value>().await.ok()
                }
            });
            let answers = futures::future::join_all(futs).await;
            for (id, a) in chunk.iter().zip(answers) {
                let ok = a.is_some_and(|a| model::view_matches(&a["order"], &model[id]));
                if !ok {
                    still.push(id.clone());
                }
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() > deadline {
            return pending;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Like [`wait_views_match_model`], failing the test (saying `what`) if some order still
/// differs at the deadline.
pub async fn assert_views_match(
    http: &str,
    model: &BTreeMap<String, model::ModelView>,
    timeout: Duration,
    what: &str,
) {
    let differing = wait_views_match_model(http, model, "", timeout).await;
    assert!(
        differing.is_empty(),
        "{what}: {} of {} orders differ from the model, e.g. {:?}",
        differing.len(),
        model.len(),
        &differing[..differing.len().min(5)]
    );
}

/// Send the traffic `g` generates to `topic` (`partitions` partitions) at `rate` events/s (as
/// fast as possible without); returns it (its records, in send order, feed the model).
pub async fn produce_traffic(
    topic: &str,
    partitions: i32,
    g: paystream::produce::GeneratorOptions,
    rate: Option<u64>,
) -> paystream::produce::Traffic {
    let traffic = paystream::produce::Traffic::generate(&g).expect("traffic");
    let opts = paystream::produce::ProduceOptions {
        bootstrap_servers: bootstrap(),
        topic: topic.to_owned(),
        rate,
        create_topic: false,
        partitions,
        replication_factor: 1,
        model_out: None,
        generator: g,
    };
    tokio::task::spawn_blocking(move || paystream::produce::produce(&opts))
        .await
        .expect("join")
        .expect("produce");
    traffic
}

/// `kill -STOP` / `kill -CONT` a child process.
pub fn signal(p: &Proc, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} failed");
    if sig == "-STOP" {
        wait_stopped(p.child.id());
    }
}

/// `kill` returns before every thread of a process has stopped (each stops on its way back to
/// user space): waits until all are, so what a test does next meets a paused instance.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_threads_stopped(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid}: not every thread stopped 5 s after SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        // `pid (comm) S ...`: the state follows the last ')'.
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('T'))
            })
            .unwrap_or(false)
    })
}

/// What application `app` wrote (its output topics `<app>.APPROVAL_TIMEOUT` and `<app>.SEND_SMS`,
/// as `Proc::run` names them), read committed: order ids with a TIMEOUT alert (how many each)
/// and (order, template) of every SMS (how many each).
pub async fn windowed_outputs(
    app: &str,
) -> (BTreeMap<String, usize>, BTreeMap<(String, String), usize>) {
    let (alerts, sms) = (format!("{app}.APPROVAL_TIMEOUT"), format!("{app}.SEND_SMS"));
    let (alerts, sms) = tokio::task::spawn_blocking(move || {
        (
            read_topic(&alerts, "read_committed"),
            read_topic(&sms, "read_committed"),
        )
    })
    .await
    .expect("join");
    let mut alerted = BTreeMap::new();
    for r in alerts {
        let v: serde_json::Value = serde_json::from_slice(&r.value).expect("alert json");
        if v["status"] == "TIMEOUT" {
            *alerted
                .entry(v["order_id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    let mut sent = BTreeMap::new();
    for r in sms {
        let v: serde_json::Value = serde_json::from_slice(&r.value).expect("SMS json");
        let key = (
            v["order_id"].as_str().unwrap_or_default().to_owned(),
            v["template"].as_str().unwrap_or_default().to_owned(),
        );
        *sent.entry(key).or_default() += 1;
    }
    (alerted, sent)
}

/// `GET /metadata` of `http` as JSON.
pub async fn metadata(http: &str) -> serde_json::Value {
    try_metadata(http).await.expect("GET /metadata")
}

/// `GET /metadata` of `http` as JSON, `None` while it does not answer.
pub async fn try_metadata(http: &str) -> Option<serde_json::Value> {
    reqwest::get(format!("http://{http}/metadata"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Poll until every instance is ready, every partition has an active and all show the same
/// generation for 3 s in a row (deadline 120 s); returns that generation.
pub async fn wait_cluster_stable(procs: &mut [&mut Proc]) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen: Option<(i64, Instant)> = None;
    loop {
        let mut generations = Vec::new();
        let mut ready = true;
        let mut owned = true;
        for p in procs.iter_mut() {
            p.assert_alive();
            ready &= p.health().await.is_some_and(|h| h["ready"] == true);
            let md = try_metadata(&p.http).await.unwrap_or_default();
            owned &= md["partitions"].as_array().is_some_and(|ps| {
                ps.iter()
                    .all(|p| p["active"].as_str().is_some_and(|s| !s.is_empty()))
            });
            generations.push(md["generation"].as_i64().unwrap_or(-1));
        }
        let generation = generations[0];
        if ready && owned && generations.iter().all(|g| *g == generation) {
            match seen {
                Some((g, since)) if g == generation => {
                    if since.elapsed() > Duration::from_secs(3) {
                        return generation;
                    }
                }
                _ => seen = Some((generation, Instant::now())),
            }
        } else {
            seen = None;
        }
        assert!(
            Instant::now() < deadline,
            "cluster not stable within 120 s (generations {generations:?}); log:\n{}",
            procs[0].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes one `kind` event for each order id to `topic` at `bootstrap` (keyed by the id and
/// partitioned like Java's producer), all with the current time.
pub async fn send_order_events<'a>(
    bootstrap: &str,
    topic: &str,
    ids: impl IntoIterator<Item = &'a String>,
    kind: &str,
) {
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for id in ids {
        let value = serde_json::json!({
            "order_id": id, "event_id": format!("{id}-{kind}"), "type": kind,
            "amount": 12000, "currency": "KRW", "member_id": "M-1",
            "phone": "+821012345678", "ts": ts,
        })
        .to_string();
        producer
            .send(
                rdkafka::producer::FutureRecord::to(topic)
                    .key(id.as_str())
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .expect("delivery");
    }
}
