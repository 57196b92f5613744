//! The command line's contracts (no broker needed).

use std::process::Command;

fn paystream(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(args)
        .output()
        .expect("run paystream")
}

#[test]
fn partition_prints_key_tab_partition_with_kafka_murmur2() {
    let out = paystream(&[
        "partition",
        "--partitions",
        "12",
        "21",
        "foobar",
        "O-000123",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // Kafka's vectors: murmur2("21") = -973932308, murmur2("foobar") = -790332482.
    let expect = |h: i32| (h & 0x7fff_ffff) % 12;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("21\t{}", expect(-973_932_308)));
    assert_eq!(lines[1], format!("foobar\t{}", expect(-790_332_482)));
    assert!(lines[2].starts_with("O-000123\t"));
    assert_eq!(lines.len(), 3);
}

#[test]
fn partition_rejects_zero_partitions_clearly() {
    let out = paystream(&["partition", "--partitions", "0", "k"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--partitions"));
}

#[test]
fn run_with_a_bad_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "standby-replicas = 1\nhttp-addr = \"nope\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http-addr"), "{err}");
}

#[test]
fn run_reads_settings_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(["run"])
        .env("PAYSTREAM_COMMIT_INTERVAL_MS", "5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("commit-interval-ms"));
}

/// `--kafka-property` reaches librdkafka: a property it does not know stops the start, named;
/// one paystream owns is refused before any client is made; the file's table is read too.
#[test]
fn kafka_properties_reach_every_client_and_bad_ones_fail_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_paystream"))
            .args([
                "run",
                "--bootstrap-servers",
                "127.0.0.1:1",
                "--http-addr",
                &http,
            ])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--kafka-property", "no.such.property=1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no.such.property"), "{err}");
    let out = run(&["--kafka-property", "isolation.level=read_uncommitted"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("kafka-property") && err.contains("isolation.level"),
        "{err}"
    );
    let cfg = dir.path().join("props.toml");
    std::fs::write(&cfg, "[kafka-properties]\n\"no.such.table.property\" = 5\n").unwrap();
    let out = run(&["--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no.such.table.property"), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `paystream demo --instances 3 --verify`: three `paystream run` children in one group on the
/// embedded broker (librdkafka's mock cluster), every order right on every instance, then one
/// instance SIGKILLed and every order right again on the other two.
#[test]
fn demo_cluster_of_three_runs_and_survives_a_kill_on_the_embedded_broker() {
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args([
            "demo",
            "--instances",
            "3",
            "--orders",
            "500",
            "--rate",
            "0",
            "--verify",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "3 instance(s) in group paystream-demo, 1 standby per partition",
        "verified: all 500 orders match the model on each of the 3 instance(s)",
        "killed instance 0",
        "verified after the kill: all 500 orders match the model on each of the 2 remaining",
        "group rebalanced",
        "/orders/O-000001/location",
        "kill -9 ",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    eprintln!("demo --instances 3 --verify took {:?}", started.elapsed());
}
