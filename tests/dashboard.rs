//! The live dashboard in a real browser: headless Chromium (Debian's `chromium`) loads `/` from
//! one instance of a 3-instance cluster, the page's script fetches `/cluster` and draws; the
//! rendered DOM's partition table must name, for every partition, the active and the standbys
//! that `/metadata` names, and show a card for each instance. A screenshot is kept as a test
//! artifact (`<target>/tmp/dashboard.png`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::*;

/// Run headless Chromium on `url` with `extra` (e.g. `--dump-dom`); its stdout.
fn chromium(profile: &Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Timers run in virtual time, network waits are real: 5 s of the page's polling.
            "--virtual-time-budget=5000",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium not found: run deploy/setup.sh (Debian package `chromium`)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of attribute `name` in the tag that starts `tag` (the DOM Chromium serialized).
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_owned())
}

/// Per `<tr data-partition=…>` row: (active, standbys) from its cells' attributes.
fn rendered_rows(dom: &str) -> BTreeMap<i64, (String, BTreeSet<String>)> {
    let mut rows = BTreeMap::new();
    for row in dom.split("<tr ").skip(1) {
        let Some(p) = attr(row, "data-partition").and_then(|p| p.parse().ok()) else {
            continue;
        };
        let row = &row[..row.find("</tr>").unwrap_or(row.len())];
        let active = attr(row, "data-active").unwrap_or_default();
        let standbys = attr(row, "data-standbys")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        rows.insert(p, (active, standbys));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_the_partition_map_that_metadata_gives() {
    let work = work_dir();
    let app = unique("dashboard");
    let topic = format!("{app}-orders");
    create_topic(&topic, 12).await;
    let mut procs: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|n| Proc::run(&app, &topic, &work.path().join(n), free_port(), &[]))
        .collect();
    let generation = {
        let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
        wait_cluster_stable(&mut refs).await
    };
    produce(&topic, 200, None, 0, None).await;

    let url = format!("http://{}/", procs[0].http);
    let profile = work.path().join("chromium-profile");
    let dom = {
        let (p, u) = (profile.clone(), url.clone());
        tokio::task::spawn_blocking(move || chromium(&p, &u, &["--dump-dom"]))
            .await
            .expect("join")
    };
    let md = metadata(&procs[1].http).await;
    assert_eq!(
        md["generation"].as_i64(),
        Some(generation),
        "a rebalance happened mid-test"
    );
    let want: BTreeMap<i64, (String, BTreeSet<String>)> = md["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            let standbys = p["standbys"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|e| e.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (
                p["partition"].as_i64().expect("partition"),
                (p["active"].as_str().unwrap_or("").to_owned(), standbys),
            )
        })
        .collect();
    let got = rendered_rows(&dom);
    assert_eq!(
        got, want,
        "the rendered partition table differs from /metadata; DOM:\n{dom}"
    );
    assert!(
        dom.contains(&format!("data-generation=\"{generation}\"")),
        "generation {generation} not shown"
    );
    for p in &procs {
        assert!(
            dom.contains(&format!("data-instance=\"{}\"", p.http)),
            "no card for {}",
            p.http
        );
    }
    assert!(
        !dom.contains("<div class=\"down\">"),
        "an instance shown unreachable:\n{dom}"
    );

    // The artifact: what an operator sees.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    {
        let (p, u, s) = (profile.clone(), url.clone(), shot.clone());
        tokio::task::spawn_blocking(move || {
            chromium(&p, &u, &[&format!("--screenshot={}", s.display())])
        })
        .await
        .expect("join");
    }
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot {} bytes",
        png.len()
    );
}
