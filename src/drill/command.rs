//! Operator commands the drill runs to act on a cluster it does not own (`--kill-cmd`,
//! `--start-cmd`, ...) and on brokers (`--broker-kill-cmd`): `sh -c` with placeholders.
//!
//! A command's output goes to `<work-dir>/commands.log`, never to a pipe: a start command
//! that leaves a process running in the background (`nohup paystream run ... &`) would hold a
//! pipe open and the drill would wait for it forever.

use std::path::Path;
use std::process::Stdio;

use super::{step, DrillError};

/// Run `template` through `sh -c` with each `{name}` of `vars` replaced, its output appended
/// to `log`; fails (with the end of the log) when it exits non-zero.
pub async fn run(template: &str, vars: &[(&str, String)], log: &Path) -> Result<(), DrillError> {
    let cmd = vars.iter().fold(template.to_owned(), |c, (name, value)| {
        c.replace(&format!("{{{name}}}"), value)
    });
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(step("command log directory"))?;
    }
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(step("command log"))
    };
    let (out, err) = (open()?, open()?);
    {
        use std::io::Write as _;
        let mut header = open()?;
        let _ = writeln!(header, "$ {cmd}");
    }
    let status = tokio::process::Command::new("sh")
        .args(["-c", &cmd])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .await
        .map_err(step("run command"))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    Err(DrillError::Step(format!(
        "`{cmd}` failed ({status}); the end of {}:\n  {}",
        log.display(),
        lines[lines.len().saturating_sub(5)..].join("\n  ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn placeholders_are_replaced_and_failures_name_the_command_and_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("commands.log");
        let out = dir.path().join("out");
        let vars = [("index", "2".to_owned()), ("endpoint", "h:9".to_owned())];
        let cmd = format!("echo {{index}} {{endpoint}} > {}", out.display());
        run(&cmd, &vars, &log).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "2 h:9\n");

        let err = run("echo nope >&2; exit 3", &vars, &log)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit 3") && err.contains("nope"), "{err}");
    }

    #[tokio::test]
    async fn a_command_leaving_a_background_process_returns_while_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        let cmd = format!("sleep 60 & echo $! > {}", pid.display());
        run(&cmd, &[], &dir.path().join("commands.log"))
            .await
            .unwrap();
        // Returned, and the background process still runs (a pipe would have kept us waiting).
        let pid = std::fs::read_to_string(&pid).unwrap().trim().to_owned();
        let alive = std::process::Command::new("kill")
            .args(["-0", &pid])
            .status();
        let _ = std::process::Command::new("kill").arg(&pid).status();
        assert!(alive.unwrap().success());
    }
}
