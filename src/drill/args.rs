//! The command line of `paystream drill`.

use std::path::PathBuf;

use super::{DrillOptions, Fault};
use crate::config::ProcessingGuarantee;

/// Failover rehearsal that checks every answer: start N instances, produce known traffic, keep
/// a query load on every instance (the victim too), inject faults, and report queries failed,
/// answered stale (and how far behind) and answered WRONG, recovery times per round, lost or
/// twice-applied events and SMS sent twice or never. Exits non-zero on any wrong answer, failed
/// query, lost or duplicated event or SMS.
///
/// Examples:
///   paystream drill --faults kill,pause --rounds 3 --restart
///   paystream drill --faults rolling --static-membership
///   deploy/kafka.sh start --brokers 3 &&
///   paystream drill --bootstrap-servers 127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096 \
///     --faults broker --replication-factor 3
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Kafka brokers (a real broker: `deploy/kafka.sh start` gives 127.0.0.1:19092).
    #[arg(
        long,
        env = "PAYSTREAM_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    pub bootstrap_servers: String,
    /// Instances to start (at least 2).
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    /// Faults to inject, in order, each for --rounds rounds: kill (SIGKILL), pause (SIGSTOP past
    /// the session timeout, then SIGCONT), rolling (SIGTERM + restart each instance in turn),
    /// broker (SIGKILL the broker leading most partitions, restart it later).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kill")]
    pub faults: Vec<Fault>,
    /// Rounds per fault.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Restart each killed instance after its round.
    #[arg(long)]
    pub restart: bool,
    /// Kill or pause this instance (0-based) every round instead of rotating.
    #[arg(long)]
    pub victim: Option<usize>,
    /// Orders produced before the faults begin.
    #[arg(long, default_value_t = 5_000)]
    pub orders_before: u64,
    /// At most this many orders produced while the faults run (traffic stops when the last
    /// round ends).
    #[arg(long, default_value_t = 100_000)]
    pub orders_during: u64,
    /// Events per second while the faults run.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Queries per second of the steady load.
    #[arg(long, default_value_t = 400)]
    pub query_rate: u64,
    /// A query with no answer (from any instance) within this long failed.
    #[arg(long, default_value_t = 5_000)]
    pub query_deadline_ms: u64,
    /// Standby replicas per partition.
    #[arg(long, default_value_t = 1)]
    pub standby_replicas: u32,
    /// Session timeout of the instances (failure detection).
    #[arg(long, default_value_t = 6_000)]
    pub session_timeout_ms: u64,
    /// How long a pause lasts (default: the session timeout + 3 s).
    #[arg(long)]
    pub pause_ms: Option<u64>,
    /// Run the instances with --group-instance-id (static membership; needed by `rolling`).
    #[arg(long)]
    pub static_membership: bool,
    /// Replication factor of the drill's topics (3 for the broker fault, with min ISR 2).
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Broker fault: the command that kills broker {id} (its node id).
    #[arg(long, default_value = "bash deploy/kafka.sh kill-broker {id}")]
    pub broker_kill_cmd: String,
    /// Broker fault: the command that starts broker {id} again.
    #[arg(long, default_value = "bash deploy/kafka.sh start-broker {id}")]
    pub broker_start_cmd: String,
    /// Broker fault: how long the broker stays down.
    #[arg(long, default_value_t = 10_000)]
    pub broker_down_ms: u64,
    /// Processing guarantee of the instances.
    #[arg(long, value_enum, default_value_t = ProcessingGuarantee::ExactlyOnceV2)]
    pub processing_guarantee: ProcessingGuarantee,
    /// Where the instances keep their state and logs.
    #[arg(long, default_value = "./paystream-drill")]
    pub work_dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl DrillArgs {
    /// The drill's options; `binary` is the paystream executable to start instances with.
    pub fn options(&self, binary: PathBuf) -> DrillOptions {
        DrillOptions {
            bootstrap_servers: self.bootstrap_servers.clone(),
            instances: self.instances,
            faults: self.faults.clone(),
            rounds: self.rounds,
            restart: self.restart,
            victim: self.victim,
            orders_before: self.orders_before,
            orders_during: self.orders_during,
            rate: self.rate,
            query_rate: self.query_rate,
            query_deadline_ms: self.query_deadline_ms,
            standby_replicas: self.standby_replicas,
            session_timeout_ms: self.session_timeout_ms,
            pause_ms: self.pause_ms,
            static_membership: self.static_membership,
            replication_factor: self.replication_factor,
            broker_kill_cmd: self.broker_kill_cmd.clone(),
            broker_start_cmd: self.broker_start_cmd.clone(),
            broker_down_ms: self.broker_down_ms,
            processing_guarantee: self.processing_guarantee,
            work_dir: self.work_dir.clone(),
            binary,
            seed: 42,
        }
    }
}
