//! `paystream demo`: the whole pipeline on one machine with nothing installed.
//!
//! Starts librdkafka's mock cluster (an embedded broker: fine for a demo, never used by the
//! tests of coordination, failover or delivery), creates the topics, runs one instance and the
//! traffic generator, and prints `curl` commands that work. With `--verify` it checks every
//! order against the generator's model over HTTP and exits (used by the test suite).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::{RunArgs, RunSettings};
use crate::instance::Instance;
use crate::produce::{produce, GeneratorOptions, ProduceOptions, Traffic};
use crate::query::OrderResponse;
use paystream_topology::shipped_topology;

/// Options of `paystream demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub http_addr: String,
    pub orders: u64,
    pub rate: u64,
    pub partitions: i32,
    pub state_dir: Option<PathBuf>,
    /// Check every order over HTTP against the model, then exit.
    pub verify: bool,
    pub seed: u64,
}

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("embedded broker: {0}")]
    Broker(String),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("instance: {0}")]
    Instance(#[from] crate::instance::RunError),
    #[error("producer: {0}")]
    Produce(#[from] crate::produce::ProduceError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Run the demo until Ctrl-C (or, with `verify`, until every order checked out).
pub fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let app_id = "paystream-demo";
    let input = "PAYMENT.ORDER";
    let mock = MockCluster::new(1).map_err(|e| DemoError::Broker(e.to_string()))?;
    let bootstrap = mock.bootstrap_servers();
    let tmp;
    let state_dir = match &opts.state_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempdir_for_demo()?;
            tmp.clone()
        }
    };
    let settings = RunArgs {
        bootstrap_servers: Some(bootstrap.clone()),
        application_id: Some(app_id.into()),
        input_topic: Some(input.into()),
        state_dir: Some(state_dir.clone()),
        http_addr: Some(opts.http_addr.clone()),
        standby_replicas: Some(0),
        // The mock cluster cannot host paystream's own group protocol.
        standalone: true,
        ..Default::default()
    }
    .build()?;
    // The mock has no CreateTopics API: create every topic the instance would.
    let topology =
        shipped_topology(input, &settings.shipped).map_err(|e| DemoError::Broker(e.to_string()))?;
    let mut topics = vec![input.to_owned(), settings.dlq_topic.clone()];
    topics.extend(topology.stores().iter().map(|s| s.changelog_topic(app_id)));
    topics.extend(topology.sink_topics());
    topics.sort();
    topics.dedup();
    for topic in topics {
        mock.create_topic(&topic, opts.partitions, 1)
            .map_err(|e| DemoError::Broker(format!("create {topic}: {e}")))?;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(drive(settings, opts.clone(), bootstrap, input));
    drop(mock);
    if opts.state_dir.is_none() {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    result
}

fn tempdir_for_demo() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("paystream-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn drive(
    settings: RunSettings,
    opts: DemoOptions,
    bootstrap: String,
    input: &str,
) -> Result<(), DemoError> {
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .map_err(|source| DemoError::Listen {
            addr: settings.http_addr.to_string(),
            source,
        })?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let instance = tokio::spawn(Instance::run(settings, listener, shutdown.clone()));

    let generator = GeneratorOptions {
        seed: opts.seed,
        orders: opts.orders,
        malformed: opts.orders / 100,
        ..Default::default()
    };
    let produce_opts = ProduceOptions {
        bootstrap_servers: bootstrap,
        topic: input.to_owned(),
        rate: Some(opts.rate).filter(|r| *r > 0),
        create_topic: false,
        partitions: opts.partitions,
        replication_factor: 1,
        model_out: None,
        generator: generator.clone(),
    };
    println!(
        "paystream demo: embedded broker, topic {input} ({} partitions)",
        opts.partitions
    );
    println!(
        "producing {} orders ({} malformed records go to {input}.DLQ) ...",
        opts.orders, generator.malformed
    );
    println!();
    println!("try:");
    println!("  curl -s http://{addr}/orders/O-000001");
    println!("  curl -s http://{addr}/orders/O-000001/location");
    println!("  curl -s http://{addr}/orders/NO-SUCH-ORDER      # 404 with a JSON error");
    println!("  curl -s http://{addr}/sms/O-000001               # SMS sent or suppressed for it");
    println!(
        "  curl -s 'http://{addr}/alerts?status=open'       # approvals never completed (5 min)"
    );
    println!("  curl -s http://{addr}/metadata");
    println!("  curl -s http://{addr}/health");
    println!("  curl -s http://{addr}/metrics");
    println!();
    let report = tokio::task::spawn_blocking(move || produce(&produce_opts))
        .await
        .map_err(|e| DemoError::Verify(e.to_string()))??;
    println!(
        "produced {} events for {} orders in {:.1} s",
        report.events,
        report.orders,
        report.elapsed.as_secs_f64()
    );

    let outcome = if opts.verify {
        let model = Traffic::generate(&generator)
            .map_err(DemoError::Verify)?
            .model();
        let r = verify(addr, &model).await;
        shutdown.cancel();
        r
    } else {
        println!("serving on http://{addr}; Ctrl-C to stop");
        wait_for_signal(&shutdown).await;
        Ok(())
    };
    shutdown.cancel();
    match instance.await {
        Ok(r) => r?,
        Err(e) => return Err(DemoError::Verify(format!("instance task: {e}"))),
    }
    outcome
}

async fn wait_for_signal(shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = shutdown.cancelled() => {},
    }
}

/// Poll until every order's view over HTTP equals the model (deadline 120 s).
async fn verify(
    addr: std::net::SocketAddr,
    model: &BTreeMap<String, paystream_topology::order::StoredOrder>,
) -> Result<(), DemoError> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<&String> = model.keys().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let ok = match client
                .get(format!("http://{addr}/orders/{id}"))
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    match resp.json::<OrderResponse>().await {
                        Ok(body) => model.get(id).is_some_and(|m| m.view == body.order),
                        Err(_) => false,
                    }
                }
                _ => false,
            };
            if !ok {
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(DemoError::Verify(format!(
                "{} orders still differ from the model after 120 s, e.g. {}",
                pending.len(),
                pending[0]
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("verified: all {} orders match the model", model.len());
    Ok(())
}
