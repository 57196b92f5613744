//! The command line of `paystream drill`.

use std::path::PathBuf;

use super::{Commands, DrillOptions, Fault, RunningCluster};
use crate::config::ProcessingGuarantee;

/// Failover rehearsal that checks every answer (exit code non-zero on any wrong answer).
///
/// Starts N instances (or drills a running cluster with --targets), produces known traffic,
/// keeps a query load on every instance (the victim too), injects faults, and reports queries
/// failed, answered stale (and how far behind) and answered WRONG, recovery times per round,
/// lost or twice-applied events and SMS sent twice or never. Exits non-zero on any wrong
/// answer, failed query, lost or duplicated event or SMS.
///
/// Examples:
///   paystream drill --faults kill,pause --rounds 3 --restart
///   paystream drill --faults rolling --static-membership
///   deploy/kafka.sh start --brokers 3 &&
///   paystream drill --bootstrap-servers 127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096 \
///     --faults broker --replication-factor 3
///   paystream drill --targets 10.0.0.1:8080,10.0.0.2:8080,10.0.0.3:8080 \
///     --application-id paystream --input-topic PAYMENT.ORDER \
///     --kill-cmd 'ssh paystream-{index} pkill -9 -f "paystream run"' --faults kill
///
/// On a running cluster (--targets) the drill adds orders of its own (ids O-<unix time>000 and
/// up, event times at the wall clock) to the input topic, so their views, SMS and approval
/// timeouts appear there like any other order's; it audits only its own orders' SMS.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
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
    /// Where the instances keep their state and logs (and the drill its commands.log).
    #[arg(long, default_value = "./paystream-drill")]
    pub work_dir: PathBuf,
    /// Drill a running cluster instead of starting instances: each instance's query endpoint,
    /// as it advertises itself (/metadata served_by). Sets --instances.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub targets: Vec<String>,
    /// With --targets: the cluster's application id (its consumer group).
    #[arg(long)]
    pub application_id: Option<String>,
    /// With --targets: the cluster's input topic (the drill produces its orders there).
    #[arg(long)]
    pub input_topic: Option<String>,
    /// With --targets: the cluster's SMS topic (its suppressed topic is <this>.SUPPRESSED).
    #[arg(long, default_value = "SEND_SMS")]
    pub sms_topic: String,
    /// With --targets, for `kill`: kills instance {index} (0-based in --targets) at
    /// {endpoint} at once, e.g. 'kill -9 $(cat /run/paystream-{index}.pid)'.
    #[arg(long, value_name = "COMMAND")]
    pub kill_cmd: Option<String>,
    /// With --targets, for --restart and `rolling`: starts instance {index} again (may return
    /// before it is ready; the drill waits for /health).
    #[arg(long, value_name = "COMMAND")]
    pub start_cmd: Option<String>,
    /// With --targets, for `rolling`: stops instance {index} gracefully (SIGTERM) and returns
    /// once it exited.
    #[arg(long, value_name = "COMMAND")]
    pub stop_cmd: Option<String>,
    /// With --targets, for `pause`: freezes instance {index} (SIGSTOP).
    #[arg(long, value_name = "COMMAND")]
    pub pause_cmd: Option<String>,
    /// With --targets, for `pause`: thaws instance {index} (SIGCONT).
    #[arg(long, value_name = "COMMAND")]
    pub resume_cmd: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl DrillArgs {
    /// The drill's options; `binary` is the paystream executable to start instances with.
    pub fn options(&self, binary: PathBuf) -> DrillOptions {
        DrillOptions {
            bootstrap_servers: self.bootstrap_servers.clone(),
            instances: if self.targets.is_empty() {
                self.instances
            } else {
                self.targets.len()
            },
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
            running: (!self.targets.is_empty()).then(|| RunningCluster {
                targets: self.targets.clone(),
                application_id: self.application_id.clone().unwrap_or_default(),
                input_topic: self.input_topic.clone().unwrap_or_default(),
                sms_topic: self.sms_topic.clone(),
                commands: Commands {
                    kill: self.kill_cmd.clone(),
                    start: self.start_cmd.clone(),
                    stop: self.stop_cmd.clone(),
                    pause: self.pause_cmd.clone(),
                    resume: self.resume_cmd.clone(),
                },
            }),
            seed: 42,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        drill: DrillArgs,
    }

    fn options(args: &[&str]) -> DrillOptions {
        let cli = Cli::try_parse_from(std::iter::once("drill").chain(args.iter().copied()))
            .expect("arguments parse");
        cli.drill.options(PathBuf::from("paystream"))
    }

    fn refusal(args: &[&str]) -> String {
        options(args).validate().expect_err("refused").to_string()
    }

    const RUNNING: [&str; 6] = [
        "--targets",
        "h1:1,h2:1,h3:1",
        "--application-id",
        "app",
        "--input-topic",
        "IN",
    ];

    #[test]
    fn targets_set_the_instances_and_the_commands() {
        let args = [&RUNNING[..], &["--kill-cmd", "kill -9 {index}"]].concat();
        let o = options(&args);
        o.validate().unwrap();
        assert_eq!(o.instances, 3);
        let r = o.running.unwrap();
        assert_eq!(r.targets, ["h1:1", "h2:1", "h3:1"]);
        assert_eq!(r.sms_topic, "SEND_SMS");
        assert_eq!(r.commands.kill.as_deref(), Some("kill -9 {index}"));
    }

    #[test]
    fn a_fault_without_its_commands_is_refused_naming_the_flag() {
        assert!(refusal(&RUNNING).contains("--kill-cmd"));
        let pause = [&RUNNING[..], &["--faults", "pause", "--pause-cmd", "x"]].concat();
        assert!(refusal(&pause).contains("--resume-cmd"));
        let rolling = [&RUNNING[..], &["--faults", "rolling", "--stop-cmd", "x"]].concat();
        assert!(refusal(&rolling).contains("--start-cmd"));
        let restart = [&RUNNING[..], &["--kill-cmd", "x", "--restart"]].concat();
        assert!(refusal(&restart).contains("--start-cmd"));
        let no_app = [
            "--targets",
            "h1:1,h2:1",
            "--input-topic",
            "IN",
            "--kill-cmd",
            "x",
        ];
        assert!(refusal(&no_app).contains("--application-id"));
    }
}
