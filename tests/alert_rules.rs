//! The Prometheus alerting rules shipped in `deploy/prometheus/alerts.yml` are valid (`promtool
//! check rules`) and do what their unit tests in `deploy/prometheus/alerts_test.yml` say
//! (`promtool test rules`): every alert fires on the series it is meant for, with the exact labels
//! and annotations a human reads, and stays quiet below its threshold or before its `for`.
//! No broker needed. `promtool` comes with Debian's `prometheus` package, which
//! `deploy/setup.sh` installs; without it these tests fail (they never skip).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `deploy/prometheus/<file>` in this repository.
fn prometheus_file(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join("prometheus")
        .join(file)
}

/// Runs `promtool <subcommand...> <file>` and fails the test, with promtool's stdout and stderr,
/// unless it succeeded.
fn promtool(subcommand: &[&str], file: &Path) {
    let shown = format!("promtool {} {}", subcommand.join(" "), file.display());
    let output = match Command::new("promtool").args(subcommand).arg(file).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "promtool is not on PATH: run deploy/setup.sh (it installs Debian's `prometheus` \
             package, which provides promtool), then run this test again"
        ),
        Err(e) => panic!("could not run `{shown}`: {e}"),
    };
    let status = output.status;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "`{shown}` failed ({status})\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
    );
}

#[test]
fn alert_rules_pass_promtool_check() {
    promtool(&["check", "rules"], &prometheus_file("alerts.yml"));
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    // The test file names `alerts.yml` relative to itself: no working directory needed.
    promtool(&["test", "rules"], &prometheus_file("alerts_test.yml"));
}
