//! The faults a drill injects, one round at a time, and the timeline each round records.
//!
//! | fault | what happens | what must hold |
//! | --- | --- | --- |
//! | `kill` | SIGKILL an instance (restarted after the round with `--restart`) | its partitions get an active on a live instance |
//! | `pause` | SIGSTOP an instance longer than the session timeout, then SIGCONT | it is fenced and rejoins; nothing it does after waking is visible |
//! | `rolling` | SIGTERM and restart every instance in turn, each ready before the next | with static membership, no partition moves |
//! | `broker` | SIGKILL the broker leading most input partitions, restart it later | processing goes on (replication 3, min ISR 2) |

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use super::cluster::Cluster;
use super::traffic::Facts;
use super::{command, step, DrillError, DrillOptions};
use crate::kafka::client::restore_consumer_config;

/// A fault kind (`--faults kill,pause,rolling,broker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    Kill,
    Pause,
    Rolling,
    Broker,
}

/// One round: its fault, its target and its timeline (ms since the fault began).
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub fault: Fault,
    /// `instance 1`, `every instance`, `broker 2`.
    pub target: String,
    /// Until a sweep of one order per partition over the live instances all got an answer.
    pub answers_again_ms: Option<u64>,
    /// Until every partition had an active on a live instance again (in a newer generation after
    /// a kill or a pause).
    pub all_active_ms: Option<u64>,
    /// Until the group committed new offsets on every partition (traffic still flowing).
    pub processing_resumed_ms: Option<u64>,
    /// No resumption was seen because the drill's traffic had ended first (the round came after
    /// the last order): nothing to process, not a stall.
    pub traffic_ended_first: bool,
    /// Rolling: partitions whose active is another instance afterwards.
    pub partitions_moved: Option<usize>,
    pub generation_before: i64,
    pub generation_after: i64,
    pub timeline: Vec<String>,
}

struct Round {
    started: Instant,
    report: RoundReport,
}

impl Round {
    fn new(fault: Fault, target: String, generation: i64) -> Round {
        Round {
            started: Instant::now(),
            report: RoundReport {
                fault,
                target,
                answers_again_ms: None,
                all_active_ms: None,
                processing_resumed_ms: None,
                traffic_ended_first: false,
                partitions_moved: None,
                generation_before: generation,
                generation_after: generation,
                timeline: Vec::new(),
            },
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    fn note(&mut self, what: impl Into<String>) {
        let line = format!("+{} ms: {}", self.ms(Instant::now()), what.into());
        tracing::info!(round = %self.report.target, "{line}");
        self.report.timeline.push(line);
    }
}

/// What a round works with.
pub struct Ctx<'a> {
    pub opts: &'a DrillOptions,
    pub cluster: &'a mut Cluster,
    pub facts: &'a Facts,
    pub topic: &'a str,
    /// One started order per partition, for the answer sweep.
    pub sweep: &'a [String],
    /// Partitions of the input topic.
    pub partitions: i32,
    pub timeout: Duration,
    /// Cancelled once the producer sent its last event.
    pub traffic_done: tokio_util::sync::CancellationToken,
}

impl Ctx<'_> {
    /// Answers, active and processing after a fault began.
    async fn measure(
        &mut self,
        r: &mut Round,
        after_generation: Option<i64>,
    ) -> Result<(), DrillError> {
        let answered = self
            .cluster
            .wait_all_partitions_answer(self.sweep, self.partitions, self.timeout)
            .await?;
        r.report.answers_again_ms = Some(r.ms(answered));
        r.note("every partition answers");
        let active = self
            .cluster
            .wait_all_active(after_generation, self.timeout)
            .await?;
        r.report.all_active_ms = Some(r.ms(active));
        r.note("every partition has an active on a live instance");
        Ok(())
    }

    /// When every partition's committed offset had moved past where it was when the round
    /// began (waits, bounded, while traffic flows); unset when traffic stopped first (then
    /// `traffic_ended_first`) or the deadline passed.
    async fn processing_resumed(&self, r: &mut Round, since: u64) {
        let deadline = Instant::now() + self.timeout;
        loop {
            let traffic_over = self.traffic_done.is_cancelled();
            if let Some(at) = self
                .facts
                .with(|c| c.resumed_at(self.partitions, since))
                .flatten()
            {
                r.report.processing_resumed_ms = Some(at.saturating_sub(since) / 1_000);
                return;
            }
            if traffic_over || Instant::now() >= deadline {
                r.report.traffic_ended_first = traffic_over;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn kill(&mut self, victim: usize) -> Result<RoundReport, DrillError> {
        let generation = self.cluster.generation().await;
        let mut r = Round::new(Fault::Kill, format!("instance {victim}"), generation);
        let since = self.facts.now();
        self.cluster.kill9(victim).await?;
        r.note(format!("SIGKILL instance {victim}"));
        self.measure(&mut r, Some(generation)).await?;
        self.processing_resumed(&mut r, since).await;
        r.report.generation_after = self.cluster.generation().await;
        if self.opts.restart {
            self.cluster.start(victim).await?;
            self.cluster.wait_stable(self.timeout).await?;
            r.note(format!("instance {victim} restarted and ready"));
        }
        Ok(r.report)
    }

    pub async fn pause(&mut self, victim: usize) -> Result<RoundReport, DrillError> {
        let generation = self.cluster.generation().await;
        let mut r = Round::new(Fault::Pause, format!("instance {victim}"), generation);
        let since = self.facts.now();
        self.cluster.pause(victim).await?;
        r.note(format!("SIGSTOP instance {victim}"));
        self.measure(&mut r, Some(generation)).await?;
        self.processing_resumed(&mut r, since).await;
        let pause = Duration::from_millis(self.opts.pause_ms());
        if let Some(left) = pause.checked_sub(r.started.elapsed()) {
            tokio::time::sleep(left).await;
        }
        self.cluster.resume(victim).await?;
        r.note(format!("SIGCONT instance {victim}"));
        self.cluster.wait_stable(self.timeout).await?;
        r.note(format!("instance {victim} rejoined and ready"));
        r.report.generation_after = self.cluster.generation().await;
        Ok(r.report)
    }

    pub async fn rolling(&mut self) -> Result<RoundReport, DrillError> {
        let generation = self.cluster.generation().await;
        let mut r = Round::new(Fault::Rolling, "every instance".into(), generation);
        let before = self.cluster.assignment().await;
        for i in 0..self.opts.instances {
            self.cluster.terminate(i).await?;
            r.note(format!("SIGTERM instance {i}: exited"));
            self.cluster.start(i).await?;
            self.cluster.wait_stable(self.timeout).await?;
            r.note(format!("instance {i} restarted and ready"));
        }
        let after = self.cluster.assignment().await;
        let moved = before
            .iter()
            .filter(|(p, a)| after.get(p) != Some(a))
            .count();
        r.report.partitions_moved = Some(moved);
        r.report.answers_again_ms = Some(r.ms(Instant::now()));
        r.report.all_active_ms = r.report.answers_again_ms;
        r.report.generation_after = self.cluster.generation().await;
        r.note(format!("{moved} partitions moved"));
        Ok(r.report)
    }

    /// Run a broker command with `{id}` = the broker's node id.
    async fn broker_command(&self, template: &str, id: i32) -> Result<(), DrillError> {
        let log = self.opts.work_dir.join("commands.log");
        command::run(template, &[("id", id.to_string())], &log).await
    }

    pub async fn broker(&mut self) -> Result<RoundReport, DrillError> {
        let generation = self.cluster.generation().await;
        let leader = leader_of_most(&self.opts.bootstrap_servers, self.topic, self.timeout).await?;
        let mut r = Round::new(Fault::Broker, format!("broker {leader}"), generation);
        let since = self.facts.now();
        self.broker_command(&self.opts.broker_kill_cmd, leader)
            .await?;
        r.note(format!(
            "killed broker {leader} (leader of the most partitions)"
        ));
        self.measure(&mut r, None).await?;
        self.processing_resumed(&mut r, since).await;
        r.note("every partition processes again");
        let down = Duration::from_millis(self.opts.broker_down_ms);
        if let Some(left) = down.checked_sub(r.started.elapsed()) {
            tokio::time::sleep(left).await;
        }
        self.broker_command(&self.opts.broker_start_cmd, leader)
            .await?;
        r.note(format!("broker {leader} started again"));
        self.cluster.wait_stable(self.timeout).await?;
        r.report.generation_after = self.cluster.generation().await;
        Ok(r.report)
    }
}

/// The broker id leading the most partitions of `topic`, asking again (every 500 ms, for up to
/// `timeout`) while the brokers cannot answer or no partition has a leader: right after the
/// previous round restarted a broker, a loaded cluster can take seconds to answer metadata
/// requests and to elect leaders (seen in CI: "metadata: … timed out", "no partition leaders").
async fn leader_of_most(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<i32, DrillError> {
    let deadline = Instant::now() + timeout;
    loop {
        match leader_of_most_once(bootstrap, topic).await {
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "no partition leader yet; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return r,
        }
    }
}

async fn leader_of_most_once(bootstrap: &str, topic: &str) -> Result<i32, DrillError> {
    let (b, t) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = restore_consumer_config(&b, "paystream-drill-metadata")
            .create()
            .map_err(step("metadata client"))?;
        let md = c
            .fetch_metadata(Some(&t), Duration::from_secs(10))
            .map_err(step("metadata"))?;
        let mut counts = std::collections::BTreeMap::<i32, usize>::new();
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            *counts.entry(p.leader()).or_default() += 1;
        }
        counts
            .into_iter()
            .filter(|(l, _)| *l >= 0)
            .max_by_key(|(_, n)| *n)
            .map(|(l, _)| l)
            .ok_or_else(|| DrillError::Step(format!("{t} has no partition leaders")))
    })
    .await
    .map_err(step("metadata task"))?
}
