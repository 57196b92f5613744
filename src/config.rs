//! `paystream run` configuration: flags, environment, TOML file → validated [`RunSettings`].
//!
//! Every setting can be given three ways; the first that is set wins:
//! 1. a flag, e.g. `--bootstrap-servers 127.0.0.1:9092`;
//! 2. an environment variable `PAYSTREAM_<FLAG_IN_CAPS>`, e.g. `PAYSTREAM_BOOTSTRAP_SERVERS`;
//! 3. a key of the TOML file given with `--config FILE`, spelled like the flag
//!    (`bootstrap-servers = "127.0.0.1:9092"`); unknown keys are an error.
//!
//! [`RunArgs::build`] validates everything at once and fails naming the key, so a bad config
//! stops the instance at start-up rather than at the first record.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use paystream_topology::ShippedTopologies;
use serde::Deserialize;
use thiserror::Error;

mod delivery;
mod kafka;
mod membership;
mod memory;
mod query;
mod telemetry;
mod windowed;

pub use delivery::{DeliverArgs, DeliverSettings, DeliveryArgs, DeliveryPlace};
pub use kafka::{KafkaArgs, KafkaSettings};
pub use membership::MembershipArgs;
use membership::MembershipFile;
pub use memory::{DEFAULT_HEAP_TRIM_INTERVAL_MS, DEFAULT_STATE_MEMORY_MB};
use query::QueryFile;
pub use query::{QueryArgs, QuerySettings};
pub use telemetry::{TelemetryArgs, TelemetrySettings};
use windowed::WindowedFile;
pub use windowed::{TimestampSourceArg, WindowedArgs};

/// Errors in the configuration; each names the offending key.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Flags of `paystream run`. Each is optional here because the value may come from the
/// environment or the config file; [`RunArgs::build`] applies defaults and validates.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML file with any of the settings below (keys spelled like the flags).
    #[arg(long, env = "PAYSTREAM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Kafka brokers to bootstrap from, comma-separated HOST:PORT. [default: 127.0.0.1:9092]
    #[arg(
        long,
        env = "PAYSTREAM_BOOTSTRAP_SERVERS",
        value_name = "HOST:PORT,..."
    )]
    pub bootstrap_servers: Option<String>,

    /// Application id: the consumer group id and the prefix of changelog topics
    /// (`<application-id>-orders-changelog`). Instances with the same id share the work.
    /// [default: paystream]
    #[arg(long, env = "PAYSTREAM_APPLICATION_ID", value_name = "ID")]
    pub application_id: Option<String>,

    /// Topic of payment order events. [default: PAYMENT.ORDER]
    #[arg(long, env = "PAYSTREAM_INPUT_TOPIC", value_name = "TOPIC")]
    pub input_topic: Option<String>,

    /// Directory for local state (RocksDB stores, checkpoints). Reusing it after a restart avoids
    /// restoring from the changelog. [default: ./paystream-state]
    #[arg(long, env = "PAYSTREAM_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Address the query API listens on; other instances forward queries here.
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "PAYSTREAM_HTTP_ADDR", value_name = "HOST:PORT")]
    pub http_addr: Option<String>,

    /// Address other instances should use to reach this one, when it differs from --http-addr
    /// (e.g. listening on 0.0.0.0). [default: --http-addr]
    #[arg(long, env = "PAYSTREAM_ADVERTISED_ADDR", value_name = "HOST:PORT")]
    pub advertised_addr: Option<String>,

    /// Warm standby copies of each partition's store kept on other instances. [default: 1]
    #[arg(long, env = "PAYSTREAM_STANDBY_REPLICAS", value_name = "N")]
    pub standby_replicas: Option<u32>,

    /// How work is committed. `exactly_once_v2`: each commit is one Kafka transaction holding
    /// the changelog, output (SMS, alerts) and dead-letter records and the source offsets, fenced
    /// by the group generation; readers of paystream's topics see committed records only.
    /// `at_least_once`: no transactions; after a crash some records are processed again, and
    /// their SMS and alerts may be sent twice. [default: exactly_once_v2]
    #[arg(long, env = "PAYSTREAM_PROCESSING_GUARANTEE", value_name = "GUARANTEE")]
    pub processing_guarantee: Option<ProcessingGuarantee>,

    /// How often the work is committed (a transaction under exactly-once). Lower means fresher
    /// committed state (what queries and downstream readers see) and less reprocessing after a
    /// crash; higher means fewer, larger transactions. [default: 100 under exactly_once_v2,
    /// 1000 under at_least_once]
    #[arg(long, env = "PAYSTREAM_COMMIT_INTERVAL_MS", value_name = "MS")]
    pub commit_interval_ms: Option<u64>,

    /// Store writes wait in memory until their commit; when they reach this many bytes the
    /// instance commits early. Bounds memory and transaction size. [default: 16777216 (16 MiB)]
    #[arg(long, env = "PAYSTREAM_MAX_UNCOMMITTED_BYTES", value_name = "BYTES")]
    pub max_uncommitted_bytes: Option<usize>,

    /// Memory for all RocksDB state of this instance, in MiB: one block cache and one memtable
    /// budget shared by every store and partition (actives, standbys, warm-ups), however many
    /// the instance hosts. The engine's uncommitted writes (--max-uncommitted-bytes) come on top.
    /// At least 16. [default: 256]
    #[arg(long, env = "PAYSTREAM_STATE_MEMORY_MB", value_name = "MIB")]
    pub state_memory_mb: Option<u64>,

    /// How often, in ms, the C heap (librdkafka's and RocksDB's allocations) gives its free
    /// pages back to the system; 0: never. Without it the RSS stays near its high-water mark
    /// after a burst (a restore, large fetches). At most 60000. [default: 200]
    #[arg(long, env = "PAYSTREAM_HEAP_TRIM_INTERVAL_MS", value_name = "MS")]
    pub heap_trim_interval_ms: Option<u64>,

    /// Topic for records that cannot be processed (reason in headers). [default: <input-topic>.DLQ]
    #[arg(long, env = "PAYSTREAM_DLQ_TOPIC", value_name = "TOPIC")]
    pub dlq_topic: Option<String>,

    /// Replication factor for topics paystream creates (changelog, DLQ). [default: 1]
    #[arg(long, env = "PAYSTREAM_REPLICATION_FACTOR", value_name = "N")]
    pub replication_factor: Option<i32>,

    /// How long the group waits for a silent instance before giving its partitions away. Lower
    /// means faster failover after a crash; queries keep being answered from standbys meanwhile.
    /// [default: 10000]
    #[arg(long, env = "PAYSTREAM_SESSION_TIMEOUT_MS", value_name = "MS")]
    pub session_timeout_ms: Option<u64>,

    /// Static group membership: a stable id per instance (e.g. its host name) so a restart within
    /// the session timeout gets its partitions back without a rebalance. [default: none]
    #[arg(long, env = "PAYSTREAM_GROUP_INSTANCE_ID", value_name = "ID")]
    pub group_instance_id: Option<String>,

    /// After warm-up copies were placed, rebalance again this much later to move actives onto
    /// them once caught up. [default: 5000]
    #[arg(
        long,
        env = "PAYSTREAM_PROBING_REBALANCE_INTERVAL_MS",
        value_name = "MS"
    )]
    pub probing_rebalance_interval_ms: Option<u64>,

    /// Run without group coordination: this instance owns every partition (no standbys, no
    /// scale-out). For a single instance that needs no group.
    #[arg(long, env = "PAYSTREAM_STANDALONE")]
    pub standalone: bool,

    /// Changelog records a copy may be behind and still take over a partition without a warm-up
    /// round. [default: 10000]
    #[arg(long, env = "PAYSTREAM_ACCEPTABLE_RECOVERY_LAG", value_name = "N")]
    pub acceptable_recovery_lag: Option<i64>,

    #[command(flatten)]
    pub membership: MembershipArgs,

    #[command(flatten)]
    pub windowed: WindowedArgs,

    #[command(flatten)]
    pub query: QueryArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// SMS delivery inside this instance (with --sms-gateway-url; flags and environment only):
    /// the same as `paystream deliver` on this application's SMS topic, in consumer group
    /// `<application-id>-deliver`, its /health, /metrics and /admin/permits on
    /// --delivery-http-addr. [default: 127.0.0.1:8090]
    #[arg(long, env = "PAYSTREAM_DELIVERY_HTTP_ADDR", value_name = "HOST:PORT")]
    pub delivery_http_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

/// The TOML file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    bootstrap_servers: Option<String>,
    application_id: Option<String>,
    input_topic: Option<String>,
    state_dir: Option<PathBuf>,
    http_addr: Option<String>,
    advertised_addr: Option<String>,
    standby_replicas: Option<u32>,
    processing_guarantee: Option<ProcessingGuarantee>,
    commit_interval_ms: Option<u64>,
    max_uncommitted_bytes: Option<usize>,
    state_memory_mb: Option<u64>,
    heap_trim_interval_ms: Option<u64>,
    dlq_topic: Option<String>,
    replication_factor: Option<i32>,
    session_timeout_ms: Option<u64>,
    group_instance_id: Option<String>,
    probing_rebalance_interval_ms: Option<u64>,
    acceptable_recovery_lag: Option<i64>,
    standalone: Option<bool>,
    evict_dead_members: Option<bool>,
    member_probe_interval_ms: Option<u64>,
    member_probe_refusals: Option<u32>,
    sms_enabled: Option<bool>,
    sms_topic: Option<String>,
    sms_suppressed_topic: Option<String>,
    sms_dedup_window_ms: Option<i64>,
    sms_rate_limit: Option<u32>,
    sms_rate_window_ms: Option<i64>,
    sms_grace_ms: Option<i64>,
    approval_timeout_enabled: Option<bool>,
    approval_timeout_topic: Option<String>,
    approval_timeout_ms: Option<i64>,
    approval_timeout_grace_ms: Option<i64>,
    approval_timeout_check_interval_ms: Option<i64>,
    approval_timeout_alert_retention_ms: Option<i64>,
    timestamp_source: Option<windowed::TimestampSourceArg>,
    max_future_ms: Option<i64>,
    query_timeout_ms: Option<u64>,
    peer_timeout_ms: Option<u64>,
    peer_connect_timeout_ms: Option<u64>,
    max_concurrent_queries: Option<usize>,
    otlp_endpoint: Option<String>,
    kafka_properties: Option<std::collections::BTreeMap<String, toml::Value>>,
}

/// Validated settings of one instance.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub bootstrap_servers: String,
    pub application_id: String,
    pub input_topic: String,
    pub state_dir: PathBuf,
    pub http_addr: SocketAddr,
    /// `HOST:PORT` others reach this instance at (also the `served_by` of its answers).
    pub advertised_addr: String,
    pub standby_replicas: u32,
    pub processing_guarantee: ProcessingGuarantee,
    pub commit_interval: Duration,
    /// Commit early when the store buffers of the running tasks hold this many bytes.
    pub max_uncommitted_bytes: usize,
    /// The bound of all RocksDB memory (see `paystream_state::rocks_memory`).
    pub state_memory_bytes: usize,
    /// How often the C heap is trimmed (see [`crate::heap_trim`]); `None`: never.
    pub heap_trim_interval: Option<Duration>,
    pub dlq_topic: String,
    pub replication_factor: i32,
    pub session_timeout: Duration,
    pub group_instance_id: Option<String>,
    pub probing_rebalance_interval: Duration,
    pub acceptable_recovery_lag: i64,
    pub standalone: bool,
    /// The leader's probes of the other members and the removal of dead ones.
    pub member_probes: crate::cluster::probe::ProbeSettings,
    /// Which windowed topologies run besides the order view.
    pub shipped: ShippedTopologies,
    /// Deadlines, peer timeouts and the concurrency limit of the query API.
    pub query: QuerySettings,
    /// Where traces go (off by default).
    pub telemetry: TelemetrySettings,
    /// librdkafka properties added to every Kafka client (`--kafka-property`), and the TLS and
    /// SASL they ask of paystream's own broker connections.
    pub kafka: KafkaSettings,
    /// SMS delivery run alongside (`--sms-gateway-url`), off by default.
    pub delivery: Option<DeliverSettings>,
}

/// Default Kafka bootstrap address (a local broker).
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";
/// Default application id.
pub const DEFAULT_APPLICATION_ID: &str = "paystream";
/// Default input topic, as in the payments platform this comes from.
pub const DEFAULT_INPUT_TOPIC: &str = "PAYMENT.ORDER";
/// Default query address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// One standby: enough to survive the loss of any one instance without a full restore.
pub const DEFAULT_STANDBY_REPLICAS: u32 = 1;
/// Under exactly-once, as Kafka Streams: committed state (queries, downstream readers) is at
/// most about 100 ms old.
pub const DEFAULT_EOS_COMMIT_INTERVAL_MS: u64 = 100;
/// Under at-least-once: at most about a second of input is reprocessed after a crash.
pub const DEFAULT_ALOS_COMMIT_INTERVAL_MS: u64 = 1000;
/// 16 MiB of buffered store writes per instance before an early commit. Exactly-once commits
/// every 100 ms buffer less than that at full speed; at-least-once's one-second commits reach it,
/// and at 64 MiB held ~60 MiB more at their peak (BENCHMARKS.md, "Per-record CPU").
pub const DEFAULT_MAX_UNCOMMITTED_BYTES: usize = 16 << 20;

/// The processing guarantee (`--processing-guarantee`), named as in Kafka Streams.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    /// One Kafka transaction per commit (KIP-447: offsets fenced by the group generation).
    #[default]
    #[value(name = "exactly_once_v2")]
    ExactlyOnceV2,
    /// Idempotent producer, offsets committed after the records are acknowledged.
    #[value(name = "at_least_once")]
    AtLeastOnce,
}

impl ProcessingGuarantee {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingGuarantee::ExactlyOnceV2 => "exactly_once_v2",
            ProcessingGuarantee::AtLeastOnce => "at_least_once",
        }
    }
}

impl RunArgs {
    /// Merge flags/env with the config file, apply defaults and validate.
    pub fn build(&self) -> Result<RunSettings, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let (processing_guarantee, commit_interval, max_uncommitted_bytes) =
            self.commit_settings(&file)?;
        let state_memory_bytes = self.state_memory(&file)?;
        let heap_trim_interval = self.heap_trim_interval(&file)?;
        let query = self.query.build(&QueryFile {
            query_timeout_ms: file.query_timeout_ms,
            peer_timeout_ms: file.peer_timeout_ms,
            peer_connect_timeout_ms: file.peer_connect_timeout_ms,
            max_concurrent_queries: file.max_concurrent_queries,
        })?;
        let windowed_file = WindowedFile {
            sms_enabled: file.sms_enabled,
            sms_topic: file.sms_topic,
            sms_suppressed_topic: file.sms_suppressed_topic,
            sms_dedup_window_ms: file.sms_dedup_window_ms,
            sms_rate_limit: file.sms_rate_limit,
            sms_rate_window_ms: file.sms_rate_window_ms,
            sms_grace_ms: file.sms_grace_ms,
            approval_timeout_enabled: file.approval_timeout_enabled,
            approval_timeout_topic: file.approval_timeout_topic,
            approval_timeout_ms: file.approval_timeout_ms,
            approval_timeout_grace_ms: file.approval_timeout_grace_ms,
            approval_timeout_check_interval_ms: file.approval_timeout_check_interval_ms,
            approval_timeout_alert_retention_ms: file.approval_timeout_alert_retention_ms,
            timestamp_source: file.timestamp_source,
            max_future_ms: file.max_future_ms,
        };
        let bootstrap_servers = self
            .bootstrap_servers
            .clone()
            .or(file.bootstrap_servers)
            .unwrap_or_else(|| DEFAULT_BOOTSTRAP.to_owned());
        validate_bootstrap(&bootstrap_servers)?;
        let application_id = self
            .application_id
            .clone()
            .or(file.application_id)
            .unwrap_or_else(|| DEFAULT_APPLICATION_ID.to_owned());
        validate_topic_like("application-id", &application_id)?;
        let input_topic = self
            .input_topic
            .clone()
            .or(file.input_topic)
            .unwrap_or_else(|| DEFAULT_INPUT_TOPIC.to_owned());
        validate_topic_like("input-topic", &input_topic)?;
        let state_dir = self
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from("./paystream-state"));
        if state_dir.as_os_str().is_empty() {
            return Err(invalid("state-dir", "must not be empty"));
        }
        let http_raw = self
            .http_addr
            .clone()
            .or(file.http_addr)
            .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned());
        let http_addr: SocketAddr = http_raw.parse().map_err(|e| {
            invalid(
                "http-addr",
                format!("{http_raw:?} is not HOST:PORT with an IP host ({e})"),
            )
        })?;
        let advertised_addr = match self.advertised_addr.clone().or(file.advertised_addr) {
            Some(a) => {
                validate_host_port("advertised-addr", &a)?;
                a
            }
            None if http_addr.ip().is_unspecified() => {
                return Err(invalid(
                    "advertised-addr",
                    format!("--http-addr {http_addr} listens on every interface; set --advertised-addr to the address other instances should use"),
                ))
            }
            None => http_addr.to_string(),
        };
        let standby_replicas = self
            .standby_replicas
            .or(file.standby_replicas)
            .unwrap_or(DEFAULT_STANDBY_REPLICAS);
        if standby_replicas > 16 {
            return Err(invalid(
                "standby-replicas",
                format!("{standby_replicas} is more than 16"),
            ));
        }
        let dlq_topic = self
            .dlq_topic
            .clone()
            .or(file.dlq_topic)
            .unwrap_or_else(|| format!("{input_topic}.DLQ"));
        validate_topic_like("dlq-topic", &dlq_topic)?;
        if dlq_topic == input_topic {
            return Err(invalid("dlq-topic", "must differ from input-topic"));
        }
        let replication_factor = self
            .replication_factor
            .or(file.replication_factor)
            .unwrap_or(1);
        if !(1..=16).contains(&replication_factor) {
            return Err(invalid(
                "replication-factor",
                format!("{replication_factor} is outside 1..=16"),
            ));
        }
        let session_ms = self
            .session_timeout_ms
            .or(file.session_timeout_ms)
            .unwrap_or(10_000);
        if !(1_000..=300_000).contains(&session_ms) {
            return Err(invalid(
                "session-timeout-ms",
                format!("{session_ms} is outside 1000..=300000"),
            ));
        }
        let group_instance_id = self.group_instance_id.clone().or(file.group_instance_id);
        if let Some(id) = &group_instance_id {
            validate_topic_like("group-instance-id", id)?;
        }
        let probing_ms = self
            .probing_rebalance_interval_ms
            .or(file.probing_rebalance_interval_ms)
            .unwrap_or(5_000);
        if !(100..=3_600_000).contains(&probing_ms) {
            return Err(invalid(
                "probing-rebalance-interval-ms",
                format!("{probing_ms} is outside 100..=3600000"),
            ));
        }
        let member_probes = self.membership.build(
            &MembershipFile {
                evict_dead_members: file.evict_dead_members,
                member_probe_interval_ms: file.member_probe_interval_ms,
                member_probe_refusals: file.member_probe_refusals,
            },
            Duration::from_millis(session_ms),
        )?;
        let acceptable_recovery_lag = self
            .acceptable_recovery_lag
            .or(file.acceptable_recovery_lag)
            .unwrap_or(10_000);
        if acceptable_recovery_lag < 0 {
            return Err(invalid("acceptable-recovery-lag", "must not be negative"));
        }
        let shipped = self
            .windowed
            .build(&windowed_file, &input_topic, &dlq_topic)?;
        let kafka = self.kafka.build(file.kafka_properties.clone())?;
        let delivery = match (&self.delivery.sms_gateway_url, &shipped.sms) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "sms-gateway-url",
                    "the SMS topology is off on this instance: nothing to deliver",
                ))
            }
            (Some(_), Some(sms)) => self.delivery.build(DeliveryPlace {
                bootstrap_servers: bootstrap_servers.clone(),
                sms_topic: sms.topic.clone(),
                group_id: format!("{application_id}-deliver"),
                http_addr: self
                    .delivery_http_addr
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8090))),
                replication_factor,
                kafka: kafka.clone(),
            })?,
        };
        if delivery.as_ref().is_some_and(|d| d.http_addr == http_addr) {
            return Err(invalid(
                "delivery-http-addr",
                "must differ from --http-addr (the query API)",
            ));
        }
        Ok(RunSettings {
            bootstrap_servers,
            application_id,
            input_topic,
            state_dir,
            http_addr,
            advertised_addr,
            standby_replicas,
            processing_guarantee,
            commit_interval,
            max_uncommitted_bytes,
            state_memory_bytes,
            heap_trim_interval,
            dlq_topic,
            replication_factor,
            session_timeout: Duration::from_millis(session_ms),
            group_instance_id,
            probing_rebalance_interval: Duration::from_millis(probing_ms),
            acceptable_recovery_lag,
            standalone: self.standalone || file.standalone.unwrap_or(false),
            member_probes,
            shipped,
            query,
            telemetry: self.telemetry.build(file.otlp_endpoint.clone())?,
            kafka,
            delivery,
        })
    }
}

impl RunArgs {
    /// The processing guarantee and how work is committed under it: (guarantee, commit interval,
    /// bytes buffered before an early commit).
    fn commit_settings(
        &self,
        file: &FileConfig,
    ) -> Result<(ProcessingGuarantee, Duration, usize), ConfigError> {
        let guarantee = self
            .processing_guarantee
            .or(file.processing_guarantee)
            .unwrap_or_default();
        let commit_ms = self
            .commit_interval_ms
            .or(file.commit_interval_ms)
            .unwrap_or(match guarantee {
                ProcessingGuarantee::ExactlyOnceV2 => DEFAULT_EOS_COMMIT_INTERVAL_MS,
                ProcessingGuarantee::AtLeastOnce => DEFAULT_ALOS_COMMIT_INTERVAL_MS,
            });
        if !(10..=600_000).contains(&commit_ms) {
            return Err(invalid(
                "commit-interval-ms",
                format!("{commit_ms} is outside 10..=600000"),
            ));
        }
        let max_uncommitted_bytes = self
            .max_uncommitted_bytes
            .or(file.max_uncommitted_bytes)
            .unwrap_or(DEFAULT_MAX_UNCOMMITTED_BYTES);
        if !((1 << 20)..=(16 << 30)).contains(&max_uncommitted_bytes) {
            return Err(invalid(
                "max-uncommitted-bytes",
                format!("{max_uncommitted_bytes} is outside 1 MiB..=16 GiB"),
            ));
        }
        Ok((
            guarantee,
            Duration::from_millis(commit_ms),
            max_uncommitted_bytes,
        ))
    }
}

impl RunSettings {
    /// `<application-id>-<store>-changelog`, as Kafka Streams names it.
    pub fn changelog_topic(&self, store: &str) -> String {
        format!("{}-{}-changelog", self.application_id, store)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        message: e.to_string().trim().to_owned(),
    })
}

fn validate_bootstrap(value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(invalid("bootstrap-servers", "must not be empty"));
    }
    for server in value.split(',') {
        validate_host_port("bootstrap-servers", server.trim())?;
    }
    Ok(())
}

fn validate_host_port(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| invalid(key, format!("{value:?} is not HOST:PORT")))?;
    if host.is_empty() {
        return Err(invalid(key, format!("{value:?} has no host")));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(key, format!("{value:?} has no valid port")))?;
    Ok(())
}

/// Kafka topic names (and ids used in them): 1..=249 of `[a-zA-Z0-9._-]`.
fn validate_topic_like(key: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > 200 {
        return Err(invalid(key, "must be 1 to 200 characters"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            key,
            format!("{value:?} contains {c:?}; use letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
