//! Configuration: defaults, precedence, errors naming their key.

use super::*;

#[test]
fn defaults_are_valid() {
    let s = RunArgs::default().build().unwrap();
    assert_eq!(s.input_topic, "PAYMENT.ORDER");
    assert_eq!(s.dlq_topic, "PAYMENT.ORDER.DLQ");
    assert_eq!(s.standby_replicas, 1);
    assert_eq!(s.advertised_addr, "127.0.0.1:8080");
    assert_eq!(s.changelog_topic("orders"), "paystream-orders-changelog");
    assert_eq!(s.processing_guarantee, ProcessingGuarantee::ExactlyOnceV2);
    assert_eq!(s.commit_interval, Duration::from_millis(100));
}

#[test]
fn guarantee_from_file_picks_its_commit_interval_and_bad_values_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "processing-guarantee = \"at_least_once\"\n").unwrap();
    let s = RunArgs {
        config: Some(path.clone()),
        ..Default::default()
    }
    .build()
    .unwrap();
    assert_eq!(s.processing_guarantee, ProcessingGuarantee::AtLeastOnce);
    assert_eq!(s.commit_interval, Duration::from_millis(1000));
    std::fs::write(&path, "processing-guarantee = \"exactly_once\"\n").unwrap();
    let err = RunArgs {
        config: Some(path),
        ..Default::default()
    }
    .build()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("processing-guarantee") || err.contains("exactly_once_v2"),
        "{err}"
    );
    let err = RunArgs {
        max_uncommitted_bytes: Some(10),
        ..Default::default()
    }
    .build()
    .unwrap_err()
    .to_string();
    assert!(err.contains("max-uncommitted-bytes"), "{err}");
    let err = RunArgs {
        state_memory_mb: Some(8),
        ..Default::default()
    }
    .build()
    .unwrap_err()
    .to_string();
    assert!(err.contains("state-memory-mb"), "{err}");
}

#[test]
fn state_memory_comes_from_the_flag_the_file_or_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "state-memory-mb = 64\n").unwrap();
    let from_file = RunArgs {
        config: Some(path.clone()),
        ..Default::default()
    }
    .build()
    .unwrap();
    assert_eq!(from_file.state_memory_bytes, 64 << 20);
    let from_flag = RunArgs {
        config: Some(path),
        state_memory_mb: Some(512),
        ..Default::default()
    }
    .build()
    .unwrap();
    assert_eq!(from_flag.state_memory_bytes, 512 << 20);
    let default = RunArgs::default().build().unwrap();
    assert_eq!(default.state_memory_bytes, 256 << 20);
}

#[test]
fn heap_trimming_comes_from_the_flag_the_file_or_the_default_and_0_turns_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "heap-trim-interval-ms = 0
",
    )
    .unwrap();
    let with_file = |flag: Option<u64>| RunArgs {
        config: Some(path.clone()),
        heap_trim_interval_ms: flag,
        ..Default::default()
    };
    assert_eq!(with_file(None).build().unwrap().heap_trim_interval, None);
    assert_eq!(
        with_file(Some(1_000)).build().unwrap().heap_trim_interval,
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        RunArgs::default().build().unwrap().heap_trim_interval,
        Some(Duration::from_millis(200))
    );
    let err = with_file(Some(600_000)).build().unwrap_err().to_string();
    assert!(err.contains("heap-trim-interval-ms"), "{err}");
}

#[test]
fn flags_win_over_file_and_file_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "application-id = \"from-file\"\nhttp-addr = \"127.0.0.1:9000\"\n",
    )
    .unwrap();
    let args = RunArgs {
        config: Some(path),
        application_id: Some("from-flag".into()),
        ..Default::default()
    };
    let s = args.build().unwrap();
    assert_eq!(s.application_id, "from-flag");
    assert_eq!(s.http_addr.port(), 9000);
}

#[test]
fn unknown_file_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "bootstrap_servrs = \"x:1\"\n").unwrap();
    let err = RunArgs {
        config: Some(path),
        ..Default::default()
    }
    .build()
    .unwrap_err()
    .to_string();
    assert!(err.contains("bootstrap_servrs"), "{err}");
}

#[test]
fn bad_values_name_their_key() {
    let cases: Vec<(RunArgs, &str)> = vec![
        (
            RunArgs {
                bootstrap_servers: Some("nohost".into()),
                ..Default::default()
            },
            "bootstrap-servers",
        ),
        (
            RunArgs {
                application_id: Some("bad id".into()),
                ..Default::default()
            },
            "application-id",
        ),
        (
            RunArgs {
                http_addr: Some("localhost".into()),
                ..Default::default()
            },
            "http-addr",
        ),
        (
            RunArgs {
                http_addr: Some("0.0.0.0:8080".into()),
                ..Default::default()
            },
            "advertised-addr",
        ),
        (
            RunArgs {
                commit_interval_ms: Some(1),
                ..Default::default()
            },
            "commit-interval-ms",
        ),
        (
            RunArgs {
                dlq_topic: Some("PAYMENT.ORDER".into()),
                ..Default::default()
            },
            "dlq-topic",
        ),
    ];
    for (args, key) in cases {
        let err = args.build().unwrap_err().to_string();
        assert!(err.contains(key), "{err} should name {key}");
    }
}
