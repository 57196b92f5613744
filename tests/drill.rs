//! `paystream drill` against real brokers, one drill per fault kind, each three rounds under
//! traffic and a query load on every instance: no wrong answer, no failed query, nothing lost
//! or applied twice, every SMS exactly once (exactly-once). The broker drill runs on a
//! 3-broker cluster (replication 3, min ISR 2) that this file starts beside the suite's broker.
//!
//! The drill's model of the answers is cross-checked here against the test suite's own model
//! (`tests/common/model.rs`), written separately: two independent statements of the rules must
//! agree before either is trusted to judge paystream.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::model::{expected_sms, order_views, view_matches};
use common::*;
use paystream::config::ProcessingGuarantee;
use paystream::drill::model::{events_by_order, final_views};
use paystream::drill::{run, Commands, DrillOptions, DrillReport, Fault, RunningCluster};
use paystream::produce::{GeneratorOptions, Traffic};

/// One cluster at a time (see tests/cluster.rs).
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options(work: &std::path::Path, fault: Fault) -> DrillOptions {
    let mut o = DrillOptions::new(
        &bootstrap(),
        work.to_owned(),
        PathBuf::from(env!("CARGO_BIN_EXE_paystream")),
    );
    o.faults = vec![fault];
    o.rounds = 3;
    o.restart = true;
    o.orders_before = 1_500;
    o.orders_during = 50_000;
    o.rate = 400;
    o
}

fn assert_passed(r: &DrillReport) {
    let summary = r.summary();
    assert!(r.load.queries > 300, "the load ran:\n{summary}");
    assert_eq!(r.load.wrong, 0, "wrong answers:\n{summary}");
    assert_eq!(r.load.failed, 0, "failed queries:\n{summary}");
    assert_eq!(
        r.views_differing, 0,
        "lost or twice-applied events:\n{summary}"
    );
    assert!(r.sms.expected > 100, "SMS were asked for:\n{summary}");
    assert!(r.sms.passed(), "SMS sent twice or never:\n{summary}");
    assert!(r.passed(), "{summary}");
    for round in &r.rounds {
        assert!(
            round.answers_again_ms.is_some() && round.all_active_ms.is_some(),
            "{round:?}"
        );
    }
    eprintln!("{summary}");
}

#[test]
fn the_drill_model_agrees_with_the_test_suite_model() {
    let t = Traffic::generate(&GeneratorOptions {
        orders: 3_000,
        malformed: 50,
        ..Default::default()
    })
    .unwrap();
    let sent: Vec<(Option<String>, String)> = t
        .events
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let drill = final_views(sent.iter().map(|(k, v)| (k.as_deref(), v.as_str())));
    let suite = order_views(&sent);
    assert_eq!(drill.len(), suite.len());
    for (id, want) in &suite {
        let got = drill[id].as_ref().unwrap();
        assert!(
            view_matches(got, want),
            "{id}: drill {got} vs suite {want:?}"
        );
    }
    let events = events_by_order(sent.iter().map(|(k, v)| (k.as_deref(), v.as_str())));
    assert_eq!(
        paystream::drill::model::expected_sms(events.values().flatten()),
        expected_sms(&sent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drill_three_rounds_answers_right_and_loses_nothing() {
    let _one = ONE_CLUSTER.lock().await;
    let work = work_dir();
    let r = run(&options(work.path(), Fault::Kill)).await.unwrap();
    assert_passed(&r);
    assert_eq!(r.rounds.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drill_at_least_once_answers_right_and_loses_nothing() {
    let _one = ONE_CLUSTER.lock().await;
    let work = work_dir();
    let mut o = options(work.path(), Fault::Kill);
    o.processing_guarantee = ProcessingGuarantee::AtLeastOnce;
    o.rounds = 2;
    let r = run(&o).await.unwrap();
    // At-least-once may send an SMS twice after a crash; everything else holds.
    assert_eq!(r.load.wrong, 0, "{}", r.summary());
    assert_eq!(r.load.failed, 0, "{}", r.summary());
    assert_eq!(r.views_differing, 0, "{}", r.summary());
    assert_eq!(r.sms.missing, 0, "{}", r.summary());
    assert!(r.passed(), "{}", r.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_drill_three_rounds_fences_the_paused_instance_and_answers_right() {
    let _one = ONE_CLUSTER.lock().await;
    let work = work_dir();
    let r = run(&options(work.path(), Fault::Pause)).await.unwrap();
    assert_passed(&r);
    for round in &r.rounds {
        assert!(
            round.generation_after > round.generation_before,
            "the paused instance was fenced by a new generation: {round:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_drill_three_rounds_moves_no_partition() {
    let _one = ONE_CLUSTER.lock().await;
    let work = work_dir();
    let mut o = options(work.path(), Fault::Rolling);
    o.static_membership = true;
    o.session_timeout_ms = 20_000;
    let r = run(&o).await.unwrap();
    assert_passed(&r);
    for round in &r.rounds {
        assert_eq!(round.partitions_moved, Some(0), "{}", r.summary());
    }
}

/// A 3-broker cluster of its own (ports 29092..29097), started once for this binary.
fn three_brokers() -> (String, Vec<(&'static str, String)>) {
    let run_dir =
        std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()) + "/.cache/paystream/kafka-run-3";
    let env = vec![
        ("PAYSTREAM_KAFKA_RUN", run_dir),
        ("PAYSTREAM_KAFKA_PORT", "29092".to_owned()),
    ];
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/kafka.sh"))
        .args(["start", "--brokers", "3"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::inherit())
        .output()
        .expect("run deploy/kafka.sh start --brokers 3");
    assert!(
        out.status.success(),
        "deploy/kafka.sh start --brokers 3 failed"
    );
    let bootstrap = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    (bootstrap, env)
}

// The broker fault on 3 brokers, replication 3, min ISR 2 (it starts its own brokers). What its
// earlier runs found (2026-12-05):
// - views and SMS of thousands of orders lost: a commit whose `EndTxn` answer was lost with its
//   broker had committed while the engine rewound as if it had aborted. The engine now catches
//   its actives up from their changelogs after such a commit (tests/commit_faults.rs shows it on
//   cue).
// - processing of some partitions stopped for good (14,638 views missing in one run): partitions
//   assigned at "the stored offset" while the group coordinator's broker was down never fetched,
//   because librdkafka drops a committed-offset fetch that fails on the network once the
//   assignment changed meanwhile. The engine now fetches committed offsets itself and retries
//   (src/engine/source.rs).
// The session timeout (20 s) outlasts a group coordinator's move to another broker (KRaft fences
// a dead broker after 9 s); the query load is lighter than the other drills' so that the killed
// broker's JVM restarts in time on 2 cores. `PAYSTREAM_DRILL_KEEP=1` keeps the instance logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_drill_three_rounds_on_three_brokers_answers_right_and_loses_nothing() {
    let _one = ONE_CLUSTER.lock().await;
    let (bootstrap, env) = three_brokers();
    let work = work_dir();
    let mut o = options(work.path(), Fault::Broker);
    o.bootstrap_servers = bootstrap;
    o.replication_factor = 3;
    o.broker_down_ms = 8_000;
    o.query_rate = 200;
    // Longer than a coordinator's move to another broker (KRaft fences a dead broker after 9 s).
    o.session_timeout_ms = 20_000;
    let prefix = env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let script = repo_root().join("deploy/kafka.sh");
    o.broker_kill_cmd = format!("{prefix} bash {} kill-broker {{id}}", script.display());
    o.broker_start_cmd = format!("{prefix} bash {} start-broker {{id}}", script.display());
    let r = run(&o).await;
    let stop = Command::new("bash")
        .arg(&script)
        .arg("stop")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status();
    let r = r.unwrap();
    assert!(stop.is_ok_and(|s| s.success()));
    assert_passed(&r);
    let targets: std::collections::BTreeSet<&str> =
        r.rounds.iter().map(|x| x.target.as_str()).collect();
    assert!(!targets.is_empty(), "{}", r.summary());
}

/// A cluster the drill did not start: three `paystream run` processes started by a script, as
/// an operator's tooling would, each with its pid in `<dir>/<index>.pid`.
struct ScriptedCluster {
    dir: PathBuf,
    start: String,
}

impl ScriptedCluster {
    fn new(dir: &std::path::Path, app: &str, topic: &str) -> ScriptedCluster {
        let ports: Vec<String> = (0..3)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port().to_string()
            })
            .collect();
        std::fs::write(dir.join("ports"), ports.join("\n") + "\n").unwrap();
        let script = format!(
            r#"i="$1"
port=$(sed -n "$((i + 1))p" {dir}/ports)
nohup {bin} run --bootstrap-servers {bootstrap} --application-id {app} --input-topic {topic} \
  --state-dir {dir}/state-$i --http-addr 127.0.0.1:$port --standby-replicas 1 \
  --session-timeout-ms 6000 --probing-rebalance-interval-ms 2000 \
  --sms-topic {app}.SEND_SMS --approval-timeout-topic {app}.APPROVAL_TIMEOUT \
  >> {dir}/instance-$i.log 2>&1 &
echo $! > {dir}/$i.pid
"#,
            dir = dir.display(),
            bin = env!("CARGO_BIN_EXE_paystream"),
            bootstrap = bootstrap(),
        );
        std::fs::write(dir.join("start.sh"), script).unwrap();
        let start = format!("sh {}/start.sh {{index}}", dir.display());
        for i in 0..3 {
            let cmd = start.replace("{index}", &i.to_string());
            assert!(Command::new("sh")
                .args(["-c", &cmd])
                .status()
                .unwrap()
                .success());
        }
        ScriptedCluster {
            dir: dir.to_owned(),
            start,
        }
    }

    fn targets(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("ports"))
            .unwrap()
            .lines()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// `kill -<signal>` of instance `{index}` as a drill command.
    fn signal(&self, signal: &str) -> String {
        format!("kill -{signal} $(cat {}/{{index}}.pid)", self.dir.display())
    }
}

impl Drop for ScriptedCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            let pid = self.dir.join(format!("{i}.pid"));
            let cmd = format!("kill -CONT $(cat {0}); kill -9 $(cat {0})", pid.display());
            let _ = Command::new("sh")
                .args(["-c", &cmd])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `--targets`: the drill acts on a running cluster only through the operator's commands
/// (kill, start, pause, resume) and checks every answer as it does on its own instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_on_a_running_cluster_through_operator_commands() {
    let _one = ONE_CLUSTER.lock().await;
    let work = work_dir();
    let (app, topic) = (unique("running"), unique("running-input"));
    create_topic(&topic, 12).await;
    let cluster = ScriptedCluster::new(work.path(), &app, &topic);
    let mut o = options(&work.path().join("drill"), Fault::Kill);
    o.faults = vec![Fault::Kill, Fault::Pause];
    o.rounds = 1;
    o.running = Some(RunningCluster {
        targets: cluster.targets(),
        application_id: app.clone(),
        input_topic: topic,
        sms_topic: format!("{app}.SEND_SMS"),
        commands: Commands {
            kill: Some(cluster.signal("9")),
            start: Some(cluster.start.clone()),
            pause: Some(cluster.signal("STOP")),
            resume: Some(cluster.signal("CONT")),
            stop: None,
        },
    });
    let r = run(&o).await.unwrap();
    assert_passed(&r);
    assert_eq!(r.rounds.len(), 2);
    for round in &r.rounds {
        assert!(
            round.generation_after > round.generation_before,
            "the victim left the group: {round:?}"
        );
    }
}
