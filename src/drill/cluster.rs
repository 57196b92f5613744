//! The drilled cluster: `paystream run` child processes on loopback that the drill starts, or
//! a running cluster (`--targets`) it acts on through operator commands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use paystream_topology::partition_for_key;

use super::{command, step, DrillError, DrillOptions};

/// The instances, by index. `live` lists the endpoints that answer queries (killed or not yet
/// ready instances are left out, as a load balancer would).
pub struct Cluster {
    opts: DrillOptions,
    app: String,
    topic: String,
    /// Children the drill started (empty slots on a running cluster).
    procs: Vec<Option<Child>>,
    /// A running cluster: which instances the drill has not killed or stopped.
    up: Vec<bool>,
    pub ports: Vec<u16>,
    pub live: Arc<RwLock<Vec<String>>>,
    client: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Cluster {
    pub fn new(opts: &DrillOptions, app: &str, topic: &str) -> Self {
        Self {
            opts: opts.clone(),
            app: app.to_owned(),
            topic: topic.to_owned(),
            procs: (0..opts.instances).map(|_| None).collect(),
            up: vec![true; opts.instances],
            ports: (0..opts.instances).map(|_| free_port()).collect(),
            live: Arc::new(RwLock::new(Vec::new())),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn endpoint(&self, i: usize) -> String {
        match &self.opts.running {
            Some(r) => r.targets[i].clone(),
            None => format!("127.0.0.1:{}", self.ports[i]),
        }
    }

    /// After a kill or pause command: instance `i` must stop answering `/health` (refused or
    /// no answer within a second) within 30 s, or the command did not do what it says and the
    /// round would measure nothing.
    async fn wait_silent(&self, i: usize, flag: &str) -> Result<(), DrillError> {
        let url = format!("http://{}/health", self.endpoint(i));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let asked = self.client.get(&url).timeout(Duration::from_secs(1)).send();
            if asked.await.is_err() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(DrillError::Step(format!(
            "{flag} ran for instance {i} but {} still answers after 30 s",
            self.endpoint(i)
        )))
    }

    /// Run a running cluster's operator command on instance `i`.
    async fn operate(
        &self,
        what: &str,
        template: &Option<String>,
        i: usize,
    ) -> Result<(), DrillError> {
        let template = template
            .as_deref()
            .ok_or_else(|| DrillError::Step(format!("no command to {what} an instance")))?;
        let vars = [("index", i.to_string()), ("endpoint", self.endpoint(i))];
        command::run(template, &vars, &self.opts.work_dir.join("commands.log")).await
    }

    /// The partition count of a running cluster's input topic, after checking that every target
    /// answers `/metadata` under the endpoint it advertises (the partition map names instances
    /// by that endpoint; a load balancer's address in `--targets` would never match it).
    /// Each target has `timeout` to answer (it may still be starting).
    pub async fn check_targets(&self, timeout: Duration) -> Result<i32, DrillError> {
        let deadline = Instant::now() + timeout;
        let mut partitions = None;
        for i in 0..self.opts.instances {
            let ep = self.endpoint(i);
            let md = loop {
                if let Some(md) = self.json(&ep, "/metadata").await {
                    break md;
                }
                if Instant::now() > deadline {
                    return Err(DrillError::Step(format!(
                        "target {ep}: no answer to GET /metadata within {timeout:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let served_by = md["served_by"].as_str().unwrap_or_default();
            if served_by != ep {
                return Err(DrillError::Options(format!(
                    "--targets: {ep} advertises itself as {served_by:?}; give each instance's advertised endpoint"
                )));
            }
            partitions = partitions.or(md["partition_count"].as_i64());
        }
        partitions
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| DrillError::Step("the targets report no partition count".into()))
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.opts
            .work_dir
            .join(&self.app)
            .join(format!("instance-{i}"))
    }

    /// Start (or restart, with the same state directory and port) instance `i`. It joins the
    /// live set once `/health` says it is ready (see [`Cluster::wait_stable`]).
    pub async fn start(&mut self, i: usize) -> Result<(), DrillError> {
        if let Some(r) = &self.opts.running {
            self.operate("start", &r.commands.start, i).await?;
            self.up[i] = true;
            return Ok(());
        }
        let dir = self.state_dir(i);
        std::fs::create_dir_all(&dir).map_err(step("state dir"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .map_err(step("log file"))?;
        let child = Command::new(&self.opts.binary)
            .arg("run")
            .args(["--bootstrap-servers", &self.opts.bootstrap_servers])
            .args(["--application-id", &self.app, "--input-topic", &self.topic])
            .arg("--state-dir")
            .arg(&dir)
            .args(["--http-addr", &self.endpoint(i)])
            .args([
                "--processing-guarantee",
                self.opts.processing_guarantee.as_str(),
            ])
            // Each drill's outputs are its own, so its SMS can be counted.
            .args(["--sms-topic", &format!("{}.SEND_SMS", self.app)])
            .args([
                "--approval-timeout-topic",
                &format!("{}.APPROVAL_TIMEOUT", self.app),
            ])
            .args([
                "--standby-replicas",
                &self.opts.standby_replicas.to_string(),
            ])
            .args([
                "--session-timeout-ms",
                &self.opts.session_timeout_ms.to_string(),
            ])
            .args(["--probing-rebalance-interval-ms", "2000"])
            .args([
                "--replication-factor",
                &self.opts.replication_factor.to_string(),
            ])
            .args(
                self.opts
                    .static_membership
                    .then(|| {
                        [
                            "--group-instance-id".to_owned(),
                            format!("{}-{i}", self.app),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .env(
                "RUST_LOG",
                std::env::var("PAYSTREAM_DRILL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(step("start instance"))?;
        self.procs[i] = Some(child);
        Ok(())
    }

    /// SIGKILL `i` (no flush, no commit, no leave) and take it out of the live set.
    pub async fn kill9(&mut self, i: usize) -> Result<(), DrillError> {
        self.set_live(i, false);
        if let Some(r) = &self.opts.running {
            self.operate("kill", &r.commands.kill, i).await?;
            self.up[i] = false;
            return self.wait_silent(i, "--kill-cmd").await;
        }
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// The process id of instance `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs.get(i)?.as_ref().map(Child::id)
    }

    fn signal(&self, i: usize, sig: &str) -> Result<(), DrillError> {
        let pid = self
            .pid(i)
            .ok_or_else(|| DrillError::Step(format!("instance {i} is not running")))?;
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map_err(step("kill"))?
            .success();
        if ok {
            Ok(())
        } else {
            Err(DrillError::Step(format!("kill {sig} {pid} failed")))
        }
    }

    fn set_live(&self, i: usize, live: bool) {
        let ep = self.endpoint(i);
        if let Ok(mut l) = self.live.write() {
            l.retain(|e| *e != ep);
            if live {
                l.push(ep);
            }
        }
    }

    /// SIGSTOP instance `i` (a long GC pause, a frozen VM): it stops answering and
    /// heartbeating but holds its sockets.
    pub async fn pause(&mut self, i: usize) -> Result<(), DrillError> {
        self.set_live(i, false);
        match &self.opts.running {
            Some(r) => {
                self.operate("pause", &r.commands.pause, i).await?;
                self.wait_silent(i, "--pause-cmd").await
            }
            None => self.signal(i, "-STOP"),
        }
    }

    /// SIGCONT a paused instance; it rejoins the live set at the next [`Cluster::wait_stable`].
    pub async fn resume(&mut self, i: usize) -> Result<(), DrillError> {
        match &self.opts.running {
            Some(r) => self.operate("resume", &r.commands.resume, i).await,
            None => self.signal(i, "-CONT"),
        }
    }

    /// SIGTERM instance `i` and wait (up to 60 s, then SIGKILL) until it exited.
    pub async fn terminate(&mut self, i: usize) -> Result<(), DrillError> {
        self.set_live(i, false);
        if let Some(r) = &self.opts.running {
            self.operate("stop", &r.commands.stop, i).await?;
            self.up[i] = false;
            return Ok(());
        }
        self.signal(i, "-TERM")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        if let Some(c) = self.procs[i].as_mut() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// Every partition's active as the live instances' `/metadata` shows it (the first live
    /// instance that answers).
    pub async fn assignment(&self) -> BTreeMap<i64, String> {
        let eps = self.live.read().map(|l| l.clone()).unwrap_or_default();
        for ep in eps {
            if let Some(md) = self.json(&ep, "/metadata").await {
                return md["partitions"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter_map(|p| {
                                Some((p["partition"].as_i64()?, p["active"].as_str()?.to_owned()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            }
        }
        BTreeMap::new()
    }

    pub fn stop_all(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(mut c) = p.take() {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    async fn json(&self, ep: &str, path: &str) -> Option<serde_json::Value> {
        let r = self
            .client
            .get(format!("http://{ep}{path}"))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    fn running(&self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|i| match self.opts.running {
                Some(_) => self.up[*i],
                None => self.procs[*i].is_some(),
            })
            .collect()
    }

    /// Wait until every running instance is ready, all report the same generation, and every
    /// partition's active is a running instance; then they are all live.
    pub async fn wait_stable(&mut self, timeout: Duration) -> Result<(), DrillError> {
        let deadline = Instant::now() + timeout;
        loop {
            for i in 0..self.procs.len() {
                if let Some(Ok(Some(status))) = self.procs[i].as_mut().map(|c| c.try_wait()) {
                    let path = self.state_dir(i).with_extension("log");
                    let log = std::fs::read_to_string(&path).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    return Err(DrillError::Step(format!(
                        "instance {i} exited ({status}); the end of {}:\n  {}",
                        path.display(),
                        lines[lines.len().saturating_sub(10)..].join("\n  ")
                    )));
                }
            }
            let eps: Vec<String> = self
                .running()
                .into_iter()
                .map(|i| self.endpoint(i))
                .collect();
            let mut gens = Vec::new();
            let mut ok = true;
            for ep in &eps {
                let ready = self
                    .json(ep, "/health")
                    .await
                    .is_some_and(|h| h["ready"] == true);
                let md = self.json(ep, "/metadata").await;
                match (ready, md) {
                    (true, Some(md)) => {
                        gens.push(md["generation"].as_i64().unwrap_or(-1));
                        let all_active = md["partitions"].as_array().is_some_and(|ps| {
                            ps.iter().all(|p| {
                                p["active"]
                                    .as_str()
                                    .is_some_and(|a| eps.iter().any(|e| e == a))
                            })
                        });
                        ok &= all_active;
                    }
                    _ => ok = false,
                }
            }
            gens.dedup();
            if ok && gens.len() == 1 {
                if let Ok(mut l) = self.live.write() {
                    *l = eps;
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DrillError::Step(format!(
                    "cluster did not become stable in time (generations {gens:?}){}",
                    self.diagnose().await
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each running instance's `/health` and the end of its log, for an error message.
    async fn diagnose(&self) -> String {
        let mut out = String::new();
        for i in self.running() {
            let health = self
                .json(&self.endpoint(i), "/health")
                .await
                .map_or_else(|| "no answer".to_owned(), |h| h.to_string());
            let log = std::fs::read_to_string(self.state_dir(i).with_extension("log"))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
            out.push_str(&format!(
                "\ninstance {i} ({}): health {health}\n  {tail}",
                self.endpoint(i)
            ));
        }
        out
    }

    /// Highest generation any live instance reports.
    pub async fn generation(&self) -> i64 {
        let eps = self.live.read().map(|l| l.clone()).unwrap_or_default();
        let mut g = -1;
        for ep in eps {
            if let Some(md) = self.json(&ep, "/metadata").await {
                g = g.max(md["generation"].as_i64().unwrap_or(-1));
            }
        }
        g
    }

    /// Sweep one known key per partition over the live instances until all answer 200.
    pub async fn wait_all_partitions_answer(
        &self,
        known: &[String],
        partitions: i32,
        timeout: Duration,
    ) -> Result<Instant, DrillError> {
        let mut per_partition: BTreeMap<i32, &String> = BTreeMap::new();
        for k in known {
            per_partition
                .entry(partition_for_key(k.as_bytes(), partitions))
                .or_insert(k);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let eps = self.live.read().map(|l| l.clone()).unwrap_or_default();
            // One sweep: every partition at once, each on another live instance.
            let asks =
                per_partition.values().enumerate().map(|(n, k)| {
                    let url = format!("http://{}/orders/{k}", eps[n % eps.len().max(1)]);
                    let client = self.client.clone();
                    async move {
                        matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
                    }
                });
            let all = !eps.is_empty()
                && futures::future::join_all(asks)
                    .await
                    .into_iter()
                    .all(|ok| ok);
            if all {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(DrillError::Step(
                    "partitions did not answer again in time".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until a live instance reports a newer generation in which every partition's active
    /// is live.
    pub async fn wait_all_active(
        &self,
        after_generation: Option<i64>,
        timeout: Duration,
    ) -> Result<Instant, DrillError> {
        let after_generation = after_generation.unwrap_or(i64::MIN);
        let deadline = Instant::now() + timeout;
        loop {
            let eps = self.live.read().map(|l| l.clone()).unwrap_or_default();
            for ep in &eps {
                if let Some(md) = self.json(ep, "/metadata").await {
                    let newer = md["generation"].as_i64().unwrap_or(-1) > after_generation;
                    let all = md["partitions"].as_array().is_some_and(|ps| {
                        ps.iter().all(|p| {
                            p["active"]
                                .as_str()
                                .is_some_and(|a| eps.iter().any(|e| e == a))
                        })
                    });
                    if newer && all {
                        return Ok(Instant::now());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(DrillError::Step(
                    "no new generation with every partition active in time".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Query every order of `model` on the live instances (`consistency=active`) until each
    /// answer equals the model (`None`: not found) or the time is up; returns the ids still
    /// differing.
    pub async fn wait_views(
        &self,
        model: &BTreeMap<String, Option<serde_json::Value>>,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<&String> = model.keys().collect();
        loop {
            let eps = self.live.read().map(|l| l.clone()).unwrap_or_default();
            let mut still = Vec::new();
            for chunk in pending.chunks(64) {
                let futs = chunk.iter().enumerate().map(|(n, id)| {
                    let url = format!(
                        "http://{}/orders/{id}?consistency=active",
                        eps[n % eps.len().max(1)]
                    );
                    let client = self.client.clone();
                    async move {
                        let r = client.get(url).send().await.ok()?;
                        let status = r.status().as_u16();
                        let body: serde_json::Value = r.json().await.ok()?;
                        match status {
                            200 => Some(Some(body["order"].clone())),
                            404 if body["error"] == "order_not_found" => Some(None),
                            _ => None,
                        }
                    }
                });
                for (id, a) in chunk.iter().zip(futures::future::join_all(futs).await) {
                    if a.as_ref() != model.get(*id) {
                        still.push(*id);
                    }
                }
            }
            pending = still;
            if pending.is_empty() || Instant::now() > deadline {
                return pending.into_iter().cloned().collect();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(mut c) = p.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
