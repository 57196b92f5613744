//! `paystream bench`: the numbers in BENCHMARKS.md, measured on this machine.
//!
//! Against a real broker: produce N events into a fresh 12-partition topic (librdkafka produce
//! rate), run one instance over them (ingest rate into the view, peak RSS), wipe its state and
//! start again (restore rate from the changelog), then read the same topic and the changelogs with
//! a bare librdkafka consumer (the consume limits: the ingest and the restore as a share of them)
//! and write the same number of values into a bare RocksDB (the store limit). Benchmarks, not
//! tests: nothing here asserts a timing.

pub mod delivery;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use paystream_state::rocks::RocksDbStore;
use paystream_state::store::KeyValueStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use thiserror::Error;

use crate::config::ProcessingGuarantee;
use crate::kafka::admin::{delete_topics, ensure_topics, TopicSpec};
use crate::kafka::client::{restore_consumer_config, source_consumer_config};
use crate::produce::{produce, GeneratorOptions, ProduceOptions};

/// Options of `paystream bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub bootstrap_servers: String,
    pub events: u64,
    pub orders: u64,
    pub partitions: i32,
    pub work_dir: PathBuf,
    /// What the measured instances run with.
    pub processing_guarantee: ProcessingGuarantee,
    /// Keep the run's topics afterwards ([`run`] deletes them otherwise).
    pub keep_topics: bool,
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("{0}")]
    Step(String),
}

impl From<crate::drill::DrillError> for BenchError {
    fn from(e: crate::drill::DrillError) -> Self {
        BenchError::Step(e.to_string())
    }
}

fn step<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> BenchError {
    move |e| BenchError::Step(format!("{what}: {e}"))
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
}

/// Run every measurement and return the figures (also printed as they come). The run's topics
/// (input, changelogs, outputs) and state are deleted afterwards unless `keep_topics`, whether
/// the measurements succeeded or not: a failed run at 10M orders would otherwise leave ~20 GB
/// on the broker.
pub fn run(opts: &BenchOptions) -> Result<Vec<Figure>, BenchError> {
    let rt = tokio::runtime::Runtime::new().map_err(step("runtime"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    // The run's application is named like its input topic, so its topics share the prefix.
    let app_id = format!("bench-{nanos}");
    let state_dir = opts.work_dir.join(format!("state-{nanos}"));
    let measured = measure(opts, &rt, &app_id, &state_dir);
    let _ = std::fs::remove_dir_all(&state_dir);
    let cleaned = if opts.keep_topics {
        Ok(())
    } else {
        run_topics(&opts.bootstrap_servers, &app_id).and_then(|topics| {
            rt.block_on(delete_topics(&opts.bootstrap_servers, &topics))
                .map_err(step("delete topics"))
        })
    };
    match (measured, cleaned) {
        (Ok(figures), cleaned) => cleaned.map(|()| figures),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(cleanup)) => {
            tracing::warn!(error = %cleanup, app_id, "could not delete the failed run's topics");
            Err(e)
        }
    }
}

/// The measurements of [`run`], on the topic and application `app_id`.
fn measure(
    opts: &BenchOptions,
    rt: &tokio::runtime::Runtime,
    app_id: &str,
    state_dir: &std::path::Path,
) -> Result<Vec<Figure>, BenchError> {
    let topic = app_id.to_owned();
    let mut figures = Vec::new();
    let mut push = |f: Figure| {
        println!("{:<44} {:>14.0} {}", f.name, f.value, f.unit);
        figures.push(f);
    };

    // 1. Produce.
    rt.block_on(ensure_topics(
        &opts.bootstrap_servers,
        &[TopicSpec {
            name: topic.clone(),
            partitions: opts.partitions,
            replication_factor: 1,
            configs: vec![],
        }],
    ))
    .map_err(step("create topic"))?;
    // `produce` generates and sends a chunk of orders at a time; its time is the sending only.
    let report = produce(&ProduceOptions::to_existing(
        &opts.bootstrap_servers,
        &topic,
        GeneratorOptions {
            orders: opts.orders,
            events: Some(opts.events),
            ..Default::default()
        },
        None,
    ))
    .map_err(step("produce"))?;
    let (produced, producing) = (report.events, report.elapsed);
    push(Figure {
        name: "produce (librdkafka, acks=all, idempotent)",
        value: produced as f64 / producing.as_secs_f64(),
        unit: "events/s",
    });

    // 2. Ingest into the view.
    let Measured {
        elapsed: ingest,
        rss,
        ..
    } = rt.block_on(run_instance(opts, &topic, app_id, state_dir, Phase::Ingest))?;
    push(Figure {
        name: "ingest into the view (1 instance)",
        value: opts.events as f64 / ingest.as_secs_f64(),
        unit: "events/s",
    });
    if let Some(rss) = rss {
        push(Figure {
            name: "peak RSS of the instance during ingest",
            value: rss,
            unit: "MiB",
        });
    }

    // 3. Restore from the changelog.
    std::fs::remove_dir_all(state_dir).map_err(step("wipe state"))?;
    let restore = rt.block_on(run_instance(
        opts,
        &topic,
        app_id,
        state_dir,
        Phase::Restore,
    ))?;
    push(Figure {
        name: "restore from the changelog",
        value: restore.count as f64 / restore.elapsed.as_secs_f64(),
        unit: "records/s",
    });
    push(Figure {
        name: "  of which records restored",
        value: restore.count as f64,
        unit: "records",
    });
    if let Some(rss) = restore.rss {
        push(Figure {
            name: "peak RSS of the instance during restore",
            value: rss,
            unit: "MiB",
        });
    }
    if let Some(d) = restore.from_first {
        push(Figure {
            name: "restore, first restored record -> ready",
            value: restore.count as f64 / d.as_secs_f64(),
            unit: "records/s",
        });
    }

    // 4. The limits: bare librdkafka consume (of the input, and of the changelogs the restore
    // read), bare RocksDB writes.
    let input = [(topic.clone(), opts.partitions)];
    let source = source_consumer_config(&opts.bootstrap_servers, "bench-raw");
    let consumed = raw_consume(source, &input, opts.events)?;
    let raw_input = opts.events as f64 / consumed.as_secs_f64();
    push(Figure {
        name: "raw librdkafka consume (the limit)",
        value: raw_input,
        unit: "events/s",
    });
    push(Figure {
        name: "  ingest / raw consume",
        value: 100.0 * opts.events as f64 / ingest.as_secs_f64() / raw_input,
        unit: "%",
    });
    let changelogs = changelog_topics(&opts.bootstrap_servers, app_id)?;
    // The restore read every committed record of them; so does this consumer.
    let restore_config = restore_consumer_config(&opts.bootstrap_servers, "bench-raw");
    let consumed = raw_consume(restore_config, &changelogs, restore.count)?;
    let raw_changelogs = restore.count as f64 / consumed.as_secs_f64();
    push(Figure {
        name: "raw librdkafka consume of the changelogs",
        value: raw_changelogs,
        unit: "records/s",
    });
    if let Some(d) = restore.from_first {
        push(Figure {
            name: "  restore (first record -> ready) / raw",
            value: 100.0 * restore.count as f64 / d.as_secs_f64() / raw_changelogs,
            unit: "%",
        });
    }
    let written = raw_rocksdb(&opts.work_dir.join(format!("rocks-{app_id}")), opts.events)?;
    push(Figure {
        name: "raw RocksDB put, WAL off (the limit)",
        value: opts.events as f64 / written.as_secs_f64(),
        unit: "puts/s",
    });
    Ok(figures)
}

#[derive(PartialEq)]
enum Phase {
    Ingest,
    Restore,
}

/// What one instance run measured.
struct Measured {
    /// Ingest: from the first processed record until all are processed. Restore: from the start
    /// of the process until it is ready (start-up included).
    elapsed: Duration,
    /// Records processed (ingest) or restored (restore).
    count: u64,
    /// Peak RSS in MiB.
    rss: Option<f64>,
    /// Restore: from the first restored record seen until ready (start-up excluded).
    from_first: Option<Duration>,
}

/// Start an instance as its own process (so its memory is its own) and measure one phase.
async fn run_instance(
    opts: &BenchOptions,
    topic: &str,
    app_id: &str,
    state_dir: &std::path::Path,
    phase: Phase,
) -> Result<Measured, BenchError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(step("port"))?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let exe = std::env::current_exe().map_err(step("binary"))?;
    let mut child = std::process::Command::new(exe)
        .arg("run")
        .args([
            "--bootstrap-servers",
            &opts.bootstrap_servers,
            "--application-id",
            app_id,
        ])
        .args(["--input-topic", topic, "--http-addr", &addr, "--standalone"])
        .args(["--processing-guarantee", opts.processing_guarantee.as_str()])
        .args(["--sms-topic", &format!("{app_id}.SEND_SMS")])
        .args([
            "--approval-timeout-topic",
            &format!("{app_id}.APPROVAL_TIMEOUT"),
        ])
        .arg("--state-dir")
        .arg(state_dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(step("start instance"))?;
    let pid = child.id();
    let started = Instant::now();
    let client = reqwest::Client::new();
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let result = loop {
        if Instant::now() > deadline {
            break Err(BenchError::Step(
                "instance did not finish within 30 minutes".into(),
            ));
        }
        if let Ok(Some(s)) = child.try_wait() {
            break Err(BenchError::Step(format!("instance exited early: {s}")));
        }
        let h: Option<serde_json::Value> =
            match client.get(format!("http://{addr}/health")).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
        if let Some(h) = h {
            let processed = h["records_processed"].as_u64().unwrap_or(0);
            match phase {
                Phase::Ingest => {
                    if processed > 0 && first.is_none() {
                        first = Some(Instant::now());
                    }
                    if processed >= opts.events {
                        break Ok((
                            first.map_or(started.elapsed(), |f| f.elapsed()),
                            processed,
                            None,
                        ));
                    }
                }
                Phase::Restore => {
                    let restored = h["records_restored"].as_u64().unwrap_or(0);
                    if restored > 0 && first.is_none() {
                        first = Some(Instant::now());
                    }
                    if h["ready"] == true {
                        break Ok((started.elapsed(), restored, first.map(|f| f.elapsed())));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rss = peak_rss_of(pid);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let stop_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < stop_deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    result.map(|(elapsed, count, from_first)| Measured {
        elapsed,
        count,
        rss,
        from_first,
    })
}

/// Peak resident set size of process `pid` in MiB (Linux).
fn peak_rss_of(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Read `records` records of `topics` (name, partition count) from their beginning with a bare
/// librdkafka consumer with `config` (the source consumer's settings for the input, the
/// restore's for the changelogs, so that each limit is measured with the settings of what it
/// limits): the time from its first record to the last (start-up excluded, as the ingest and
/// restore figures exclude theirs).
fn raw_consume(
    config: ClientConfig,
    topics: &[(String, i32)],
    records: u64,
) -> Result<Duration, BenchError> {
    let consumer: BaseConsumer = config.create().map_err(step("consumer"))?;
    let mut tpl = TopicPartitionList::new();
    for (topic, partitions) in topics {
        for p in 0..*partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(step("assign"))?;
        }
    }
    consumer.assign(&tpl).map_err(step("assign"))?;
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < records {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::Step(format!(
                "raw consume read only {n} of {records} records in 600 s"
            )));
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            // Touch the payload, as a real consumer would.
            bytes += m.payload().map_or(0, <[u8]>::len);
            n += 1;
            first.get_or_insert_with(Instant::now);
        }
    }
    std::hint::black_box(bytes);
    Ok(first.map_or(started.elapsed(), |f| f.elapsed()))
}

/// The changelog topics of application `app_id` (name, partition count).
fn changelog_topics(bootstrap: &str, app_id: &str) -> Result<Vec<(String, i32)>, BenchError> {
    let prefix = format!("{app_id}-");
    let topics: Vec<(String, i32)> = topics_where(bootstrap, |name| {
        name.starts_with(&prefix) && name.ends_with("-changelog")
    })?;
    if topics.is_empty() {
        return Err(BenchError::Step(format!("no changelog topic of {app_id}")));
    }
    Ok(topics)
}

/// Every topic of the run named `app_id`: its input topic (same name), its changelogs
/// (`app_id-...`) and its outputs (`app_id....`).
fn run_topics(bootstrap: &str, app_id: &str) -> Result<Vec<String>, BenchError> {
    let (dash, dot) = (format!("{app_id}-"), format!("{app_id}."));
    Ok(topics_where(bootstrap, |name| {
        name == app_id || name.starts_with(&dash) || name.starts_with(&dot)
    })?
    .into_iter()
    .map(|(name, _)| name)
    .collect())
}

/// The broker's topics whose name passes `keep` (name, partition count).
fn topics_where(
    bootstrap: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, i32)>, BenchError> {
    let consumer: BaseConsumer = restore_consumer_config(bootstrap, "bench-raw")
        .create()
        .map_err(step("consumer"))?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(step("metadata"))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| keep(t.name()))
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect())
}

fn raw_rocksdb(dir: &std::path::Path, events: u64) -> Result<Duration, BenchError> {
    let mut store = RocksDbStore::open(dir, "bench").map_err(step("rocksdb"))?;
    let value = vec![7u8; 160]; // about the size of an encoded order view
    let started = Instant::now();
    for i in 0..events {
        let key = format!("O-{:08}", i % (events / 5).max(1));
        store.put(key.as_bytes(), &value).map_err(step("put"))?;
    }
    store.flush().map_err(step("flush"))?;
    let elapsed = started.elapsed();
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
    Ok(elapsed)
}

/// A new topic `<prefix>-<millis>` with the benchmark's partition count; returns the millis too
/// (they name the run's application and state).
async fn fresh_topic(opts: &BenchOptions, prefix: &str) -> Result<(u128, String), BenchError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let topic = format!("{prefix}-{nanos}");
    ensure_topics(
        &opts.bootstrap_servers,
        &[TopicSpec {
            name: topic.clone(),
            partitions: opts.partitions,
            replication_factor: 1,
            configs: vec![],
        }],
    )
    .await
    .map_err(step("create topic"))?;
    Ok((nanos, topic))
}

/// Ingest with `instances` instances in one group (one standby each, the default), started
/// together on a topic already holding the events: time from the first processed record to the
/// moment the group's committed offsets reach the end of the topic (so rebalances as members
/// join, and work redone after them, are included).
pub fn cluster_ingest(opts: &BenchOptions, instances: usize) -> Result<Vec<Figure>, BenchError> {
    use crate::drill::cluster::Cluster;
    use crate::drill::DrillOptions;

    let rt = tokio::runtime::Runtime::new().map_err(step("runtime"))?;
    rt.block_on(async {
        let (nanos, topic) = fresh_topic(opts, "bench-group").await?;
        let generator = GeneratorOptions {
            orders: opts.orders,
            events: Some(opts.events),
            ..Default::default()
        };
        let p = ProduceOptions::to_existing(&opts.bootstrap_servers, &topic, generator, None);
        tokio::task::spawn_blocking(move || produce(&p))
            .await
            .map_err(step("produce"))?
            .map_err(step("produce"))?;
        let mut drill = DrillOptions::new(
            &opts.bootstrap_servers,
            opts.work_dir.clone(),
            std::env::current_exe().map_err(step("binary"))?,
        );
        drill.instances = instances;
        drill.standby_replicas = 1;
        drill.session_timeout_ms = 10_000;
        drill.processing_guarantee = opts.processing_guarantee;
        let app = format!("bench-group-{nanos}");
        let mut cluster = Cluster::new(&drill, &app, &topic);
        for i in 0..instances {
            cluster.start(i).await?;
        }
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(1800);
        let mut first: Option<Instant> = None;
        let mut last_check = Instant::now();
        let result = loop {
            if Instant::now() > deadline {
                break Err(BenchError::Step(
                    "group did not finish within 30 minutes".into(),
                ));
            }
            if first.is_none() {
                for i in 0..instances {
                    let url = format!("http://{}/health", cluster.endpoint(i));
                    let h: Option<serde_json::Value> = match client.get(url).send().await {
                        Ok(r) => r.json().await.ok(),
                        Err(_) => None,
                    };
                    if h.is_some_and(|h| h["records_processed"].as_u64().unwrap_or(0) > 0) {
                        first = Some(Instant::now());
                    }
                }
            } else if last_check.elapsed() >= Duration::from_millis(200) {
                last_check = Instant::now();
                let (b, a, t, n) = (
                    opts.bootstrap_servers.clone(),
                    app.clone(),
                    topic.clone(),
                    opts.partitions,
                );
                let done = tokio::task::spawn_blocking(move || committed_to_end(&b, &a, &t, n))
                    .await
                    .map_err(step("committed offsets"))??;
                if done {
                    break Ok(first.map_or(Duration::ZERO, |f| f.elapsed()));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        cluster.stop_all();
        let elapsed = result?;
        let figure = Figure {
            name: "ingest, instances in one group",
            value: opts.events as f64 / elapsed.as_secs_f64(),
            unit: "events/s",
        };
        println!(
            "{:<44} {:>14.0} {} ({instances} instances)",
            figure.name, figure.value, figure.unit
        );
        Ok(vec![figure])
    })
}

/// Whether group `group` has committed every partition of `topic` up to its end.
fn committed_to_end(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<bool, BenchError> {
    let consumer: BaseConsumer = restore_consumer_config(bootstrap, group)
        .create()
        .map_err(step("consumer"))?;
    let mut tpl = TopicPartitionList::new();
    let mut end = 0;
    for p in 0..partitions {
        tpl.add_partition(topic, p);
        end += consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(step("watermarks"))?
            .1;
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(step("committed offsets"))?;
    let sum: i64 = committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
        .sum();
    Ok(sum >= end)
}

/// IQ latency at a fixed request rate on a 2-instance cluster: every key is asked of the instance
/// that holds its active (local read) and of the other one (one forwarded hop).
pub fn latency(opts: &BenchOptions, rate: u64, queries: u64) -> Result<Vec<Figure>, BenchError> {
    use crate::drill::cluster::Cluster;
    use crate::drill::DrillOptions;

    let rt = tokio::runtime::Runtime::new().map_err(step("runtime"))?;
    rt.block_on(async {
        let (nanos, topic) = fresh_topic(opts, "latency").await?;
        let generator = GeneratorOptions {
            orders: 10_000,
            ..Default::default()
        };
        let traffic = crate::produce::Traffic::generate(&generator).map_err(BenchError::Step)?;
        let model = crate::drill::model::final_views(
            traffic
                .events
                .iter()
                .map(|e| (e.key.as_deref(), e.value.as_str())),
        );
        let p = ProduceOptions::to_existing(&opts.bootstrap_servers, &topic, generator, None);
        tokio::task::spawn_blocking(move || produce(&p))
            .await
            .map_err(step("produce"))?
            .map_err(step("produce"))?;
        let mut drill = DrillOptions::new(
            &opts.bootstrap_servers,
            opts.work_dir.clone(),
            std::env::current_exe().map_err(step("binary"))?,
        );
        drill.instances = 2;
        drill.standby_replicas = 0;
        drill.session_timeout_ms = 10_000;
        drill.processing_guarantee = opts.processing_guarantee;
        let mut cluster = Cluster::new(&drill, &format!("latency-{nanos}"), &topic);
        cluster.start(0).await?;
        cluster.start(1).await?;
        cluster
            .wait_stable(Duration::from_secs(120))
            .await
            .map_err(step("cluster"))?;
        if !cluster
            .wait_views(&model, Duration::from_secs(120))
            .await
            .is_empty()
        {
            return Err(BenchError::Step("views never matched the model".into()));
        }
        // Which instance holds each partition's active.
        let eps = [cluster.endpoint(0), cluster.endpoint(1)];
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .build()
            .map_err(step("client"))?;
        let md: serde_json::Value = client
            .get(format!("http://{}/metadata", eps[0]))
            .send()
            .await
            .map_err(step("metadata"))?
            .json()
            .await
            .map_err(step("metadata"))?;
        let owner = |p: i32| {
            md["partitions"][p as usize]["active"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        };
        let keys: Vec<&String> = model.keys().collect();
        let (mut local, mut forwarded) = (Vec::new(), Vec::new());
        let pause = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let mut next = Instant::now();
        for i in 0..queries {
            let key = keys[(i as usize * 7919) % keys.len()];
            let active = owner(crate::partition_for_key(key.as_bytes(), opts.partitions));
            let other = if active == eps[0] { &eps[1] } else { &eps[0] };
            for (ep, into) in [(&active, &mut local), (other, &mut forwarded)] {
                next += pause / 2;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                let t = Instant::now();
                let r = client
                    .get(format!("http://{ep}/orders/{key}"))
                    .send()
                    .await
                    .map_err(step("query"))?;
                let ok = r.status().is_success();
                let _ = r.bytes().await;
                if !ok {
                    return Err(BenchError::Step(format!("query for {key} on {ep} failed")));
                }
                into.push(t.elapsed());
            }
        }
        cluster.stop_all();
        let pct = |v: &mut Vec<Duration>, q: f64| {
            v.sort_unstable();
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        let mut out = Vec::new();
        for (name, v) in [("local", &mut local), ("forwarded", &mut forwarded)] {
            for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
                let f = Figure {
                    name: match (name, label) {
                        ("local", "p50") => "IQ latency, local read, p50",
                        ("local", _) => "IQ latency, local read, p99",
                        (_, "p50") => "IQ latency, forwarded one hop, p50",
                        _ => "IQ latency, forwarded one hop, p99",
                    },
                    value: pct(v, q),
                    unit: "µs",
                };
                println!("{:<44} {:>14.0} {}", f.name, f.value, f.unit);
                out.push(f);
            }
        }
        Ok(out)
    })
}
