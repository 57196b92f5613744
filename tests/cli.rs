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

#[test]
fn demo_runs_end_to_end_on_the_embedded_broker() {
    let out = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args([
            "demo",
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
    assert!(
        stdout.contains("verified: all 500 orders match the model"),
        "{stdout}"
    );
    assert!(stdout.contains("curl -s http://127.0.0.1:"), "{stdout}");
}
