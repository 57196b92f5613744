//! The `paystream` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use paystream::config::{ProcessingGuarantee, RunArgs};
use paystream::demo::{self, DemoOptions};
use paystream::instance::Instance;
use paystream::produce::{produce, GeneratorOptions, ProduceOptions};
use paystream::telemetry::traces::TraceExport;
use paystream::{partition_for_key, telemetry};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: the stream thread allocates per record (keys,
/// values, produced records), and glibc's malloc/free were ~15% of its profile (BENCHMARKS).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// paystream: a Kafka Streams-style stream processor for payment orders.
///
/// Consumes PAYMENT.ORDER into per-partition RocksDB views (with changelog topics) and answers
/// GET /orders/{id}. Start with `paystream demo` (no broker needed).
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the partition of each key, as Java's DefaultPartitioner (murmur2) computes it.
    ///
    /// Output: one line per key, `KEY<TAB>PARTITION`.
    Partition {
        /// Number of partitions of the topic.
        #[arg(long, short = 'p', value_parser = clap::value_parser!(i32).range(1..))]
        partitions: i32,
        /// Keys (UTF-8).
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Run one processor instance (settings also from PAYSTREAM_* variables or --config FILE).
    Run(Box<RunArgs>),
    /// Generate realistic, reproducible PAYMENT.ORDER traffic.
    ///
    /// Each order walks APPROVAL_REQUESTED → APPROVAL_CALLBACK_COMPLETED → APPROVAL_COMPLETED or
    /// APPROVAL_FAILED; some are cancelled, some stop early; some events are duplicated or out of
    /// order. Records are keyed by order id and partitioned with murmur2 like a Java producer.
    Produce(ProduceArgs),
    /// Run a paystream cluster on this machine with an embedded broker: no setup needed.
    ///
    /// Starts librdkafka's mock cluster inside this process, N `paystream run` instances as child
    /// processes (one group, standbys when N > 1, at_least_once: the embedded broker cannot do
    /// exactly-once), produces traffic and prints curl commands that show routing and failover.
    Demo(DemoArgs),
    /// Measure produce, ingest, restore, raw consume and raw RocksDB rates against a broker.
    Bench(BenchArgs),
    // Its help (with examples) is DrillArgs' own doc comment.
    Drill(Box<paystream::drill::args::DrillArgs>),
    /// Deliver SEND_SMS requests to an SMS gateway, with back-pressure and retries.
    ///
    /// POSTs each request to --sms-gateway-url (JSON body, `Idempotency-Key: <event id>`) with at
    /// most --permits calls in flight; a slow gateway makes lag grow, not memory (partitions are
    /// paused). Failures go through `<topic>.RETRY.<n>` topics (--retry-delays) and finally to
    /// `<topic>.DLQ` with the reason in a header; 4xx answers go to the DLQ at once. After
    /// --circuit-failures failures in a row the circuit opens: SMS go to the first retry topic
    /// uncalled until a probe call succeeds. Offsets are committed only past SMS that were
    /// delivered or written on, so none is lost; after a crash the gateway may see an SMS
    /// again, with the same idempotency key.
    ///
    /// Example: paystream deliver --bootstrap-servers 127.0.0.1:19092 --sms-gateway-url
    /// http://127.0.0.1:8000/send --permits 16 --admin-token-file token.txt, then
    /// curl -X PUT -H "Authorization: Bearer $(cat token.txt)" 127.0.0.1:8090/admin/permits
    /// -d '{"permits": 32}'
    Deliver(Box<paystream::config::DeliverArgs>),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Kafka brokers (a real broker: `deploy/kafka.sh start` gives 127.0.0.1:19092).
    #[arg(
        long,
        env = "PAYSTREAM_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    bootstrap_servers: String,
    /// Events to produce and process.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Orders the events belong to.
    #[arg(long, default_value_t = 200_000)]
    orders: u64,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Directory for the instance's state during the run.
    #[arg(long, default_value = "./paystream-bench")]
    work_dir: PathBuf,
    /// Processing guarantee of the measured instances.
    #[arg(long, value_enum, default_value_t = ProcessingGuarantee::ExactlyOnceV2)]
    processing_guarantee: ProcessingGuarantee,
    /// Keep the run's topics (input, changelogs, outputs) afterwards. By default the
    /// single-instance run deletes them, also when it fails part-way, so repeated runs do not
    /// fill the broker's disk.
    #[arg(long)]
    keep_topics: bool,
    /// Instead: measure query latency (local vs forwarded) on a 2-instance cluster, this many
    /// queries of each kind at --query-rate per second.
    #[arg(long, value_name = "QUERIES")]
    latency: Option<u64>,
    /// Instead: measure ingest with this many instances in one group (started together on the
    /// produced events; until the group's committed offsets reach the end).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=16))]
    instances: Option<u64>,
    /// Instead: delivered SMS/s of `paystream deliver` against a gateway in this process with 1
    /// and 50 ms latency at permits 1, 8 and 64 (at most this many SMS a run), then its memory
    /// while the gateway is stopped for a minute under full input.
    #[arg(long, value_name = "SMS")]
    delivery: Option<u64>,
    /// Requests per second for --latency.
    #[arg(long, default_value_t = 200)]
    query_rate: u64,
}

#[derive(clap::Args)]
struct ProduceArgs {
    /// Kafka brokers, comma-separated HOST:PORT.
    #[arg(
        long,
        env = "PAYSTREAM_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_servers: String,
    /// Topic to write to.
    #[arg(long, default_value = "PAYMENT.ORDER")]
    topic: String,
    /// Number of orders. Generated and sent a million at a time, so any number fits in memory;
    /// beyond about two million, orders start closer together in event time (all within 20 hours:
    /// the generator starts a day back and a broker refuses timestamps an hour ahead).
    #[arg(long, default_value_t = 1000)]
    orders: u64,
    /// Exact number of events (the surplus over the orders' walks is duplicates).
    #[arg(long)]
    events: Option<u64>,
    /// Events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seed: the same seed gives the same traffic.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Malformed records to mix in (they must end in the dead-letter topic).
    #[arg(long, default_value_t = 0)]
    malformed: u64,
    /// Create the topic if it does not exist.
    #[arg(long)]
    create_topic: bool,
    /// Partitions for --create-topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Replication factor for --create-topic.
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// Write the expected final view of every order (JSON lines) to this file.
    #[arg(long, value_name = "FILE")]
    model_out: Option<PathBuf>,
    #[command(flatten)]
    kafka: paystream::config::KafkaArgs,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Query address of the first instance; instance i listens on port + i (port 0: free ports).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: String,
    /// Instances in the group (child processes). With more than one, each partition has one
    /// standby and `--verify` also SIGKILLs an instance and checks that every order still answers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    instances: u16,
    /// Orders to generate.
    #[arg(long, default_value_t = 10_000)]
    orders: u64,
    /// Events per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Partitions of the demo topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Keep the instances' state and logs here instead of a temporary directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Check every order over HTTP on every instance against the generator's model; with more
    /// than one instance, SIGKILL one and check every order again on the others; then exit
    /// (0 = all checks passed).
    #[arg(long)]
    verify: bool,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        telemetry::init_logging(None);
    }
    match cli.command {
        Command::Partition { partitions, keys } => {
            for k in keys {
                println!("{k}\t{}", partition_for_key(k.as_bytes(), partitions));
            }
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(*args),
        Command::Produce(a) => {
            match a.kafka.build(None) {
                Ok(k) => paystream::kafka::client::set_user_properties(&k.properties),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
            let opts = ProduceOptions {
                bootstrap_servers: a.bootstrap_servers,
                topic: a.topic,
                rate: Some(a.rate).filter(|r| *r > 0),
                create_topic: a.create_topic,
                partitions: a.partitions,
                replication_factor: a.replication_factor,
                model_out: a.model_out,
                generator: GeneratorOptions {
                    seed: a.seed,
                    orders: a.orders,
                    events: a.events,
                    malformed: a.malformed,
                    ..Default::default()
                },
            };
            match produce(&opts) {
                Ok(r) => {
                    println!(
                        "produced {} events ({} orders, {} malformed) to {} in {:.2} s ({:.0} events/s)",
                        r.events,
                        r.orders,
                        r.malformed,
                        opts.topic,
                        r.elapsed.as_secs_f64(),
                        r.events as f64 / r.elapsed.as_secs_f64().max(1e-9)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Drill(a) => drill(*a),
        Command::Deliver(a) => deliver(*a),
        Command::Bench(a) => {
            let opts = paystream::bench::BenchOptions {
                bootstrap_servers: a.bootstrap_servers,
                events: a.events,
                orders: a.orders,
                partitions: a.partitions,
                work_dir: a.work_dir,
                processing_guarantee: a.processing_guarantee,
                keep_topics: a.keep_topics,
            };
            let result = match (a.delivery, a.latency, a.instances) {
                (Some(sms), _, _) => paystream::bench::delivery::delivery(&opts, sms),
                (None, Some(n), _) => paystream::bench::latency(&opts, a.query_rate, n),
                (None, None, Some(n)) => paystream::bench::cluster_ingest(&opts, n as usize),
                (None, None, None) => paystream::bench::run(&opts),
            };
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(a) => {
            let opts = DemoOptions {
                http_addr: a.http_addr,
                instances: usize::from(a.instances),
                orders: a.orders,
                rate: a.rate,
                partitions: a.partitions,
                state_dir: a.state_dir,
                verify: a.verify,
                seed: a.seed,
            };
            match demo::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let settings = match args.build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Before the runtime: the exporter's HTTP client is a blocking one.
    let traces = match &settings.telemetry.otlp_traces_url {
        Some(url) => {
            match TraceExport::start(url, &settings.advertised_addr, &settings.application_id) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    telemetry::init_logging(traces.as_ref());
    if let Some(url) = &settings.telemetry.otlp_traces_url {
        tracing::info!(%url, "exporting spans of traced records and queries over OTLP");
    }
    let code = run_instance(settings);
    if let Some(t) = traces {
        t.shutdown();
    }
    code
}

fn run_instance(settings: paystream::config::RunSettings) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .map_err(|e| format!("cannot listen on {} (http-addr): {e}", settings.http_addr))?;
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_termination().await;
            tracing::info!("shutting down: committing and checkpointing");
            signals.cancel();
        });
        let delivering = match settings.delivery.clone() {
            Some(d) => {
                let l = tokio::net::TcpListener::bind(d.http_addr)
                    .await
                    .map_err(|e| {
                        format!("cannot listen on {} (delivery-http-addr): {e}", d.http_addr)
                    })?;
                let stop = shutdown.clone();
                Some(tokio::spawn(paystream::delivery::runtime::run(d, l, stop)))
            }
            None => None,
        };
        let instance = Instance::run(settings, listener, shutdown.clone());
        let Some(mut delivering) = delivering else {
            return instance.await.map_err(|e| e.to_string());
        };
        // Either one stopping (a signal, or an error) stops the other; both errors are told.
        tokio::pin!(instance);
        let (ran, delivered) = tokio::select! {
            r = &mut instance => {
                shutdown.cancel();
                (r, delivering.await)
            }
            d = &mut delivering => {
                shutdown.cancel();
                (instance.await, d)
            }
        };
        let delivered = match delivered {
            Ok(r) => r.map_err(|e| format!("SMS delivery: {e}")),
            Err(e) => Err(format!("SMS delivery: {e}")),
        };
        ran.map_err(|e| e.to_string())?;
        delivered
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn deliver(args: paystream::config::DeliverArgs) -> ExitCode {
    let settings = match args.build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    paystream::kafka::client::set_user_properties(&settings.kafka.properties);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .map_err(|e| format!("cannot listen on {} (http-addr): {e}", settings.http_addr))?;
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_termination().await;
            tracing::info!("shutting down: finishing calls and committing");
            signals.cancel();
        });
        paystream::delivery::runtime::run(settings, listener, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn wait_for_termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn drill(a: paystream::drill::args::DrillArgs) -> ExitCode {
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot find the paystream binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = a.options(binary);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(paystream::drill::run(&opts)) {
        Ok(r) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", r.summary());
            }
            if r.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
