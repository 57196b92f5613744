//! `paystream bench --delivery`: how fast `paystream deliver` sends SMS, and whether its memory
//! stays flat while the gateway is down.
//!
//! A gateway in this process (axum on loopback) answers 200 after a fixed latency and counts
//! what it accepted. For each latency (1 ms, 50 ms) and permits (1, 8, 64): a fresh topic of
//! SMS requests, one `paystream deliver` child process, the time from its first accepted call to
//! the last; the limit is permits / latency. Then the gateway is stopped (its port refuses
//! connections) while a deliverer reads a large topic at full speed for a minute: its resident
//! memory, sampled every second, must stay flat (records go to the retry topic, lag grows).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use paystream_topology::sms::SmsRequest;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::{step, BenchError, BenchOptions, Figure};
use crate::kafka::admin::{delete_topics, ensure_topics, TopicSpec};
use crate::kafka::client::producer_config;

/// The bench gateway's counters.
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    first_ms: AtomicU64,
    last_ms: AtomicU64,
}

struct BenchGateway {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: CancellationToken,
    latency: Duration,
}

impl BenchGateway {
    async fn start(addr: SocketAddr, latency: Duration) -> Result<BenchGateway, BenchError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(step("bench gateway"))?;
        let addr = listener.local_addr().map_err(step("bench gateway"))?;
        let counts = Arc::new(Counts::default());
        let started = Instant::now();
        let app = {
            let counts = counts.clone();
            Router::new().route(
                "/send",
                post(move || {
                    let counts = counts.clone();
                    async move {
                        tokio::time::sleep(latency).await;
                        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
                        if counts.accepted.fetch_add(1, Ordering::Relaxed) == 0 {
                            counts.first_ms.store(now, Ordering::Relaxed);
                        }
                        counts.last_ms.fetch_max(now, Ordering::Relaxed);
                        "ok"
                    }
                }),
            )
        };
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(BenchGateway {
            addr,
            counts,
            stop,
            latency,
        })
    }

    fn url(&self) -> String {
        format!("http://{}/send", self.addr)
    }
}

/// Writes `n` SMS requests (`n / 5` orders) to a new topic.
async fn produce_sms(bootstrap: &str, topic: &str, n: u64) -> Result<(), BenchError> {
    ensure_topics(
        bootstrap,
        &[TopicSpec {
            name: topic.to_owned(),
            partitions: 12,
            replication_factor: 1,
            configs: Vec::new(),
        }],
    )
    .await
    .map_err(step("create SMS topic"))?;
    let producer: FutureProducer = producer_config(bootstrap)
        .create()
        .map_err(step("producer"))?;
    let orders = (n / 5).max(1);
    let mut acks = Vec::with_capacity(10_000);
    for i in 0..n {
        let order_id = format!("O-{:08}", i % orders);
        let request = SmsRequest {
            order_id: order_id.clone(),
            member_id: None,
            phone: Some(format!("+4670{:07}", i % orders)),
            template: "payment_approved".into(),
            amount: Some(1_000),
            currency: Some("SEK".into()),
            event_ts: 0,
            event_id: format!("{order_id}-{i}"),
        };
        let value = serde_json::to_vec(&request).map_err(step("json"))?;
        let record = FutureRecord::to(topic).key(&order_id).payload(&value);
        let ack = producer
            .send_result(record)
            .map_err(|(e, _)| BenchError::Step(format!("produce: {e}")))?;
        acks.push(ack);
        if acks.len() >= 10_000 {
            for a in acks.drain(..) {
                a.await
                    .map_err(step("produce"))?
                    .map_err(|(e, _)| BenchError::Step(format!("produce: {e}")))?;
            }
        }
    }
    for a in acks {
        a.await
            .map_err(step("produce"))?
            .map_err(|(e, _)| BenchError::Step(format!("produce: {e}")))?;
    }
    Ok(())
}

fn spawn_deliver(
    binary: &Path,
    bootstrap: &str,
    topic: &str,
    url: &str,
    permits: usize,
    log: &Path,
    extra: &[&str],
) -> Result<Child, BenchError> {
    let file = std::fs::File::create(log).map_err(step("deliver log"))?;
    Command::new(binary)
        .args(["deliver", "--bootstrap-servers", bootstrap])
        .args(["--sms-gateway-url", url, "--sms-topic", topic])
        .args(["--group-id", &format!("{topic}-deliver")])
        .args(["--permits", &permits.to_string()])
        .args(["--http-addr", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(step("start paystream deliver"))
}

/// The limit at `permits` calls in flight: `permits` tasks POSTing one request after another
/// (no Kafka), `n` requests in all; requests per second.
async fn raw_rate(url: &str, permits: usize, n: u64) -> Result<f64, BenchError> {
    let client = reqwest::Client::new();
    let body = serde_json::to_vec(&SmsRequest {
        order_id: "O-raw".into(),
        member_id: None,
        phone: Some("+46700000000".into()),
        template: "payment_approved".into(),
        amount: Some(1_000),
        currency: Some("SEK".into()),
        event_ts: 0,
        event_id: "O-raw-0".into(),
    })
    .map_err(step("json"))?;
    let per_task = (n / permits as u64).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..permits {
        let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                client
                    .post(&url)
                    .header("Idempotency-Key", "O-raw-0")
                    .body(body.clone())
                    .send()
                    .await?
                    .bytes()
                    .await?;
            }
            Ok::<(), reqwest::Error>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(step("raw client"))?
            .map_err(step("raw client"))?;
    }
    Ok((per_task * permits as u64) as f64 / started.elapsed().as_secs_f64())
}

fn rss_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs the delivery measurements (`sms`: the most SMS one throughput run sends).
pub fn delivery(opts: &BenchOptions, sms: u64) -> Result<Vec<Figure>, BenchError> {
    let binary = std::env::current_exe().map_err(step("paystream binary"))?;
    std::fs::create_dir_all(&opts.work_dir).map_err(step("work dir"))?;
    let rt = tokio::runtime::Runtime::new().map_err(step("runtime"))?;
    rt.block_on(async {
        let mut figures = Vec::new();
        let mut topics = Vec::new();
        let run = format!("bench-deliver-{}", std::process::id());
        println!(
            "latency  permits      SMS   SMS/s  raw HTTP/s  of raw  permits/latency  of it  peak RSS MiB"
        );
        for latency_ms in [1u64, 50] {
            for permits in [1usize, 8, 64] {
                let limit = permits as f64 * 1000.0 / latency_ms as f64;
                let raw = {
                    let gw = BenchGateway::start(
                        "127.0.0.1:0".parse().map_err(step("addr"))?,
                        Duration::from_millis(latency_ms),
                    )
                    .await?;
                    let r = raw_rate(&gw.url(), permits, ((limit * 3.0) as u64).clamp(100, 20_000)).await?;
                    gw.stop.cancel();
                    r
                };
                // About 10 s at the limit, between 200 and `sms`.
                let n = ((limit * 10.0) as u64).clamp(200, sms.max(200));
                let topic = format!("{run}-{latency_ms}ms-{permits}");
                topics.push(topic.clone());
                produce_sms(&opts.bootstrap_servers, &topic, n).await?;
                let gw = BenchGateway::start(
                    "127.0.0.1:0".parse().map_err(step("addr"))?,
                    Duration::from_millis(latency_ms),
                )
                .await?;
                let log = opts.work_dir.join(format!("{topic}.log"));
                let mut child = spawn_deliver(
                    &binary,
                    &opts.bootstrap_servers,
                    &topic,
                    &gw.url(),
                    permits,
                    &log,
                    &[],
                )?;
                let deadline = Instant::now() + Duration::from_secs(600);
                let mut peak: f64 = 0.0;
                while gw.counts.accepted.load(Ordering::Relaxed) < n {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        return Err(BenchError::Step(format!(
                            "{topic}: {} of {n} SMS delivered in 600 s (log {})",
                            gw.counts.accepted.load(Ordering::Relaxed),
                            log.display()
                        )));
                    }
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(BenchError::Step(format!(
                            "paystream deliver exited ({status}); log {}",
                            log.display()
                        )));
                    }
                    peak = peak.max(rss_mib(child.id(), "VmHWM:").unwrap_or(0.0));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
                gw.stop.cancel();
                let span_ms = gw.counts.last_ms.load(Ordering::Relaxed)
                    - gw.counts.first_ms.load(Ordering::Relaxed);
                // The first call's own latency is not in the span: count n - 1 intervals.
                let rate = (n - 1) as f64 * 1000.0 / (span_ms.max(1) as f64 + gw.latency.as_millis() as f64);
                println!(
                    "{latency_ms:>5} ms  {permits:>7}  {n:>7}  {rate:>6.0}  {raw:>10.0}  {:>5.0}%  {limit:>15.0}  {:>4.0}%  {peak:>12.0}",
                    100.0 * rate / raw,
                    100.0 * rate / limit
                );
                figures.push(Figure {
                    name: "delivered SMS/s",
                    value: rate,
                    unit: "SMS/s",
                });
            }
        }
        figures.extend(memory_while_stopped(opts, &binary, &run, sms, &mut topics).await?);
        if !opts.keep_topics {
            let mut all = Vec::new();
            for t in &topics {
                all.push(t.clone());
                for s in [".RETRY.1", ".RETRY.2", ".RETRY.3", ".DLQ"] {
                    all.push(format!("{t}{s}"));
                }
            }
            if let Err(e) = delete_topics(&opts.bootstrap_servers, &all).await {
                eprintln!("warning: could not delete the bench topics: {e}");
            }
        }
        Ok(figures)
    })
}

/// A minute with the gateway stopped while a deliverer reads `4 * sms` SMS at full speed.
async fn memory_while_stopped(
    opts: &BenchOptions,
    binary: &Path,
    run: &str,
    sms: u64,
    topics: &mut Vec<String>,
) -> Result<Vec<Figure>, BenchError> {
    let n = sms.saturating_mul(4).max(100_000);
    let topic = format!("{run}-stopped");
    topics.push(topic.clone());
    produce_sms(&opts.bootstrap_servers, &topic, n).await?;
    // A port that refuses connections: bound, then released.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(step("free port"))?;
    let log = opts.work_dir.join(format!("{topic}.log"));
    let url = format!("http://{addr}/send");
    let mut child = spawn_deliver(
        binary,
        &opts.bootstrap_servers,
        &topic,
        &url,
        64,
        &log,
        &["--retry-delays", "5s,10s,20s"],
    )?;
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::Step(format!(
                "paystream deliver exited ({status}); log {}",
                log.display()
            )));
        }
        samples.push(rss_mib(child.id(), "VmRSS:").unwrap_or(0.0));
    }
    // Then the gateway comes back: everything must get through (the retry topic's delay is 10 s).
    let gw = BenchGateway::start(addr, Duration::from_millis(1)).await?;
    let back = Instant::now();
    let deadline = back + Duration::from_secs(600);
    while gw.counts.accepted.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = gw.counts.accepted.load(Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    gw.stop.cancel();
    let first10 = samples.iter().take(10).cloned().fold(0.0f64, f64::max);
    let max = samples.iter().cloned().fold(0.0f64, f64::max);
    let last = samples.last().copied().unwrap_or(0.0);
    println!(
        "gateway stopped 60 s under {n} SMS: RSS max of the first 10 s {first10:.0} MiB, max {max:.0} MiB, at 60 s {last:.0} MiB"
    );
    println!(
        "gateway back: {delivered} of {n} delivered in {:.1} s",
        back.elapsed().as_secs_f64()
    );
    println!(
        "RSS samples (MiB, 1 s apart): {}",
        samples
            .iter()
            .map(|s| format!("{s:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(vec![
        Figure {
            name: "RSS while the gateway is stopped (max)",
            value: max,
            unit: "MiB",
        },
        Figure {
            name: "SMS delivered after the gateway came back",
            value: delivered as f64,
            unit: "SMS",
        },
    ])
}
