//! The alert a payment team pages on, end to end: a real Prometheus (Debian's `prometheus`)
//! scrapes a real 3-instance cluster and evaluates `deploy/prometheus/alerts.yml`; one instance
//! is paused (SIGSTOP) while orders keep coming, and `PartitionLagHigh` fires for exactly the
//! partitions that instance owns (from `/metadata` before the pause), naming it as the owner.
//!
//! The rules are the shipped file with every `for:` shortened to 5 s (a test cannot wait the
//! production 2 minutes); thresholds and expressions are unchanged. The session timeout is
//! long (120 s) so the paused instance stays the owner while the alert is checked, as it would
//! for the first minutes of a real stall with `--session-timeout-ms` set that high.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Start Prometheus scraping `targets` every second with the shipped alert rules (`for:` 5 s).
    fn start(dir: &Path, targets: &[&str]) -> Prometheus {
        let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yml"))
            .expect("deploy/prometheus/alerts.yml");
        let fast: String = rules
            .lines()
            .map(|l| match l.split_once("for:") {
                Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 5s\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        std::fs::write(dir.join("alerts.yml"), fast).expect("write rules");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 900ms\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: paystream\n    static_configs:\n      - targets: [{}]\n",
            dir.join("alerts.yml").display(),
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write config");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("prometheus not found: run deploy/setup.sh (Debian package `prometheus`)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let r = reqwest::get(format!("{}{path}", self.url)).await.ok()?;
        r.json().await.ok()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Partitions whose active `/metadata` names `owner`.
async fn owned_by(http: &str, owner: &str) -> BTreeSet<String> {
    metadata(http).await["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter(|p| p["active"] == owner)
        .map(|p| p["partition"].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_fires_the_lag_alert_naming_its_partitions_and_itself() {
    let work = work_dir();
    let app = unique("alerting");
    let topic = format!("{app}-orders");
    create_topic(&topic, 12).await;
    let long_session = ["--session-timeout-ms", "120000"];
    let mut procs: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            Proc::run(
                &app,
                &topic,
                &work.path().join(n),
                free_port(),
                &long_session,
            )
        })
        .collect();
    {
        let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
        wait_cluster_stable(&mut refs).await;
    }
    let targets: Vec<&str> = procs.iter().map(|p| p.http.as_str()).collect();
    let prom = Prometheus::start(work.path(), &targets);

    // Prometheus sees all three.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = prom
            .api("/api/v1/query?query=sum(up%7Bjob%3D%22paystream%22%7D)")
            .await
            .and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_owned)
            });
        if up.as_deref() == Some("3") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped all three (up = {up:?}); log:\n{}",
            prom.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let paused = procs[0].http.clone();
    let theirs = owned_by(&procs[1].http, &paused).await;
    assert!(!theirs.is_empty(), "the instance to pause owns nothing");
    signal(&procs[0], "-STOP");
    // ~2,000 records per partition: every partition of the paused owner goes past 1000.
    let (_report, _sent) = produce(&topic, 6_000, Some(24_000), 0, None).await;

    // The alert fires for exactly the paused owner's partitions, naming it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let firing = loop {
        let alerts = prom.api("/api/v1/alerts").await;
        let firing: BTreeMap<String, (String, String)> = alerts
            .as_ref()
            .and_then(|a| a["data"]["alerts"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == "PartitionLagHigh" && a["state"] == "firing")
            .map(|a| {
                (
                    a["labels"]["partition"].as_str().unwrap_or("").to_owned(),
                    (
                        a["labels"]["owner"].as_str().unwrap_or("").to_owned(),
                        a["annotations"]["summary"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                    ),
                )
            })
            .collect();
        let partitions: BTreeSet<String> = firing.keys().cloned().collect();
        if partitions == theirs {
            break firing;
        }
        for p in &mut procs[1..] {
            p.assert_alive();
        }
        assert!(
            partitions.is_subset(&theirs),
            "PartitionLagHigh fired for a partition the paused instance does not own: {firing:?}, its: {theirs:?}"
        );
        assert!(
            Instant::now() < deadline,
            "PartitionLagHigh never fired for all of {theirs:?} (firing: {firing:?}); alerts: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (partition, (owner, summary)) in &firing {
        assert_eq!(owner, &paused, "partition {partition}");
        assert!(
            summary.starts_with(&format!("Partition: {partition}, Owner: {paused}, lag: ")),
            "summary: {summary}"
        );
    }
    signal(&procs[0], "-CONT");
}
