//! The demo's instances: `paystream run` child processes of the demo's own binary, one group,
//! each with its own state directory, HTTP port and log file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DemoError;

/// What every instance is started with.
#[derive(Debug, Clone)]
pub(crate) struct InstanceSpec {
    pub(crate) binary: PathBuf,
    pub(crate) bootstrap: String,
    pub(crate) application_id: String,
    pub(crate) input_topic: String,
    pub(crate) standby_replicas: u32,
    pub(crate) work_dir: PathBuf,
}

/// One child process (or what is left of it after [`Instances::kill9`]).
struct Instance {
    addr: SocketAddr,
    child: Option<Child>,
    pid: u32,
}

/// The running instances, by index. Dropping this SIGKILLs whatever still runs.
pub(crate) struct Instances {
    spec: InstanceSpec,
    procs: Vec<Instance>,
}

impl Instances {
    /// Starts one instance per address.
    pub(crate) fn start(spec: InstanceSpec, addrs: &[SocketAddr]) -> Result<Self, DemoError> {
        let mut me = Self {
            spec,
            procs: Vec::new(),
        };
        for (i, addr) in addrs.iter().enumerate() {
            let child = me.spawn(i, *addr)?;
            me.procs.push(Instance {
                addr: *addr,
                pid: child.id(),
                child: Some(child),
            });
        }
        Ok(me)
    }

    fn spawn(&self, i: usize, addr: SocketAddr) -> Result<Child, DemoError> {
        let dir = self.state_dir(i);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(self.log_path(i))?;
        let s = &self.spec;
        let child = Command::new(&s.binary)
            .arg("run")
            .args(["--bootstrap-servers", &s.bootstrap])
            .args(["--application-id", &s.application_id])
            .args(["--input-topic", &s.input_topic])
            .arg("--state-dir")
            .arg(&dir)
            .args(["--http-addr", &addr.to_string()])
            .args(["--standby-replicas", &s.standby_replicas.to_string()])
            // The mock broker cannot do exactly-once (see the module doc of `demo`).
            .args(["--processing-guarantee", "at_least_once"])
            .args(["--replication-factor", "1"])
            // The mock waits a session timeout (less 1 s) for members to rejoin in every
            // rebalance, and notices a killed instance only after it: keep both short.
            .args(["--session-timeout-ms", "6000"])
            .env(
                "RUST_LOG",
                std::env::var("PAYSTREAM_DEMO_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        tracing::debug!(instance = i, pid = child.id(), %addr, "started demo instance");
        Ok(child)
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.spec.work_dir.join(format!("instance-{i}"))
    }

    pub(crate) fn log_path(&self, i: usize) -> PathBuf {
        self.spec.work_dir.join(format!("instance-{i}.log"))
    }

    pub(crate) fn len(&self) -> usize {
        self.procs.len()
    }

    pub(crate) fn addr(&self, i: usize) -> SocketAddr {
        self.procs[i].addr
    }

    pub(crate) fn pid(&self, i: usize) -> u32 {
        self.procs[i].pid
    }

    /// Indices of the instances not killed.
    pub(crate) fn alive(&self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|i| self.procs[*i].child.is_some())
            .collect()
    }

    /// An instance that exited on its own, as an error naming its log.
    pub(crate) fn check_exited(&mut self) -> Result<(), DemoError> {
        for i in self.alive() {
            let exited = self.procs[i].child.as_mut().map(|c| c.try_wait());
            if let Some(Ok(Some(status))) = exited {
                self.procs[i].child = None;
                return Err(DemoError::Instance(format!(
                    "instance {i} exited ({status}); its log: {}{}",
                    self.log_path(i).display(),
                    log_tail(&self.log_path(i), 15)
                )));
            }
        }
        Ok(())
    }

    /// SIGKILL instance `i`: no flush, no commit, no LeaveGroup.
    pub(crate) async fn kill9(&mut self, i: usize) -> Result<(), DemoError> {
        if let Some(mut c) = self.procs[i].child.take() {
            c.kill()?;
            reap(&mut c, Duration::from_secs(10)).await;
        }
        Ok(())
    }

    /// SIGTERM every live instance and wait (bounded) for it to leave the group and exit.
    pub(crate) async fn stop_all(&mut self) {
        for p in self.procs.iter_mut() {
            let Some(mut c) = p.child.take() else {
                continue;
            };
            let term = tokio::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .await;
            if term.is_err() || !reap(&mut c, Duration::from_secs(20)).await {
                let _ = c.kill();
                reap(&mut c, Duration::from_secs(10)).await;
            }
        }
    }
}

/// Waits (polling, without blocking the runtime) until `c` exited; false if it did not in time.
async fn reap(c: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

impl Drop for Instances {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The last `n` lines of a log file, indented, for error messages.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    tail.iter().map(|l| format!("\n  {l}")).collect()
}

/// The instances' query addresses: `base`, then the following ports; with port 0, free ports
/// (held open until all are picked, so no two are the same).
pub(crate) fn addresses(base: SocketAddr, n: usize) -> Result<Vec<SocketAddr>, DemoError> {
    if base.port() == 0 {
        let listeners = (0..n)
            .map(|_| std::net::TcpListener::bind(base))
            .collect::<Result<Vec<_>, _>>()?;
        return listeners
            .iter()
            .map(|l| l.local_addr().map_err(DemoError::from))
            .collect();
    }
    (0..n)
        .map(|i| {
            let port = u16::try_from(usize::from(base.port()) + i).map_err(|_| {
                DemoError::Options(format!("no port {} + {i} for instance {i}", base.port()))
            })?;
            Ok(SocketAddr::new(base.ip(), port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_base_port_or_are_distinct_free_ports() {
        let base: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let ports: Vec<u16> = addresses(base, 3)
            .unwrap()
            .iter()
            .map(|a| a.port())
            .collect();
        assert_eq!(ports, [8080, 8081, 8082]);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut free: Vec<u16> = addresses(any, 3)
            .unwrap()
            .iter()
            .map(|a| a.port())
            .collect();
        free.sort_unstable();
        free.dedup();
        assert_eq!(free.len(), 3);
        assert!(free.iter().all(|p| *p != 0));
        let top: SocketAddr = "127.0.0.1:65535".parse().unwrap();
        assert!(addresses(top, 2).is_err());
    }
}
