//! A steady query load over every instance (a killed or paused one included), each answer
//! judged by the [`Checker`](super::checker::Checker).
//!
//! One query is what a client with a deadline does: ask a random instance; when it cannot
//! answer (connection refused, timeout, 503) ask the next one, until an answer comes or the
//! deadline passes. A third of the queries ask `consistency=active`; when the active cannot
//! answer for half the deadline (no active yet after a failure) they accept an honestly
//! labelled standby answer, as a client preferring fresh data would. A query *fails* when no
//! answer came within its deadline; an answer is *wrong* when the checker says so.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::checker::{Answer, Role, Verdict};
use super::traffic::Facts;
use crate::produce::generator::SplitMix64;

/// What the load saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub queries: u64,
    /// Answered with every acknowledged event (or every committed one, from an active).
    pub fresh: u64,
    /// Answered by a standby, behind.
    pub stale: u64,
    /// The largest number of acknowledged events a stale answer missed.
    pub max_stale_behind: usize,
    /// Answers the checker refused: must be 0.
    pub wrong: u64,
    /// No answer within the deadline: must be 0.
    pub failed: u64,
    /// Attempts that got no answer from the instance asked (refused, timed out, 503): the
    /// query then asked another instance.
    pub retried_attempts: u64,
    /// `consistency=active` queries answered by a standby after the active could not answer.
    pub active_fell_back: u64,
    pub first_wrong: Vec<String>,
    pub first_failed: Vec<String>,
}

/// How the load queries.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub endpoints: Vec<String>,
    pub rate: u64,
    pub deadline: Duration,
    /// At most this long per attempt at one instance.
    pub attempt_timeout: Duration,
}

/// A running load; [`QueryLoad::stop`] ends it and returns its report.
pub struct QueryLoad {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    report: Arc<Mutex<LoadReport>>,
}

enum Attempt {
    Answer(Answer),
    Refused(String),
    Bad(String),
}

struct Query<'a> {
    client: &'a reqwest::Client,
    opts: &'a LoadOptions,
    facts: &'a Facts,
    order: String,
    active_only: bool,
}

impl Query<'_> {
    async fn attempt(&self, ep: &str, active_only: bool, timeout: Duration) -> Attempt {
        // The server learns the attempt's deadline (and leaves itself time for a standby when
        // the active does not answer).
        // (A little less than our own timeout: the answer needs time to travel back.)
        let mut url = format!(
            "http://{ep}/orders/{}?timeout_ms={}",
            self.order,
            timeout
                .saturating_sub(Duration::from_millis(100))
                .as_millis()
                .max(1)
        );
        if active_only {
            url.push_str("&consistency=active");
        }
        let sent_at = self.facts.now();
        let r = match self.client.get(&url).timeout(timeout).send().await {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_timeout() {
                    format!("no answer within {timeout:?}")
                } else if e.is_connect() {
                    "cannot connect".to_owned()
                } else {
                    e.to_string()
                };
                return Attempt::Refused(format!(
                    "{url} at +{:.1} s: {kind}",
                    sent_at as f64 / 1e6
                ));
            }
        };
        let status = r.status();
        let body: Value = match r.json().await {
            Ok(b) => b,
            Err(e) => return Attempt::Refused(format!("{url}: {status}, unreadable body: {e}")),
        };
        let received_at = self.facts.now();
        let role = |b: &Value| b["role"].as_str().and_then(Role::parse);
        let view = match status.as_u16() {
            200 => Some(body["order"].clone()),
            404 if body["error"] == "order_not_found" => None,
            503 | 500 => return Attempt::Refused(format!("{url}: {status} {body}")),
            _ => return Attempt::Bad(format!("{url}: unexpected {status} {body}")),
        };
        match role(&body) {
            Some(role) => Attempt::Answer(Answer {
                order: self.order.clone(),
                sent_at,
                received_at,
                active_only,
                view,
                role,
                served_by: body["served_by"].as_str().unwrap_or("?").to_owned(),
            }),
            None => Attempt::Bad(format!("{url}: {status} without a role: {body}")),
        }
    }

    /// Ask instances in turn from `first` until an answer or the deadline. An instance that
    /// did not answer at all (refused, timed out) is not asked again by this query while
    /// another is left; a `consistency=active` query accepts a standby after a 503 or half its
    /// deadline.
    async fn run(&self, first: usize, report: &Mutex<LoadReport>) {
        let started = Instant::now();
        let eps = &self.opts.endpoints;
        let mut attempts: Vec<String> = Vec::new();
        let mut silent = vec![false; eps.len()];
        let mut active_refused = false;
        let mut n = first;
        let mut retried = 0;
        loop {
            let left = self.opts.deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let i = n % eps.len();
            n += 1;
            if silent[i] && silent.iter().any(|s| !s) {
                continue;
            }
            let active_only =
                self.active_only && !active_refused && started.elapsed() < self.opts.deadline / 2;
            let timeout = left.min(self.opts.attempt_timeout);
            match self.attempt(&eps[i], active_only, timeout).await {
                Attempt::Answer(a) => {
                    let verdict = self.facts.with(|c| c.check(&a));
                    let fell_back = self.active_only && !active_only;
                    return record(report, verdict, retried, fell_back);
                }
                Attempt::Bad(why) => {
                    return record(report, Some(Verdict::Wrong(why)), retried, false);
                }
                Attempt::Refused(why) => {
                    let unavailable = why.contains(" 503 ");
                    active_refused |= unavailable;
                    silent[i] |= !unavailable;
                    attempts.push(why);
                }
            }
            retried += 1;
            if n % eps.len() == first % eps.len() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if let Ok(mut r) = report.lock() {
            r.queries += 1;
            r.failed += 1;
            r.retried_attempts += retried;
            if r.first_failed.len() < 10 {
                r.first_failed.push(format!(
                    "{}: no answer in {:?}: {}",
                    self.order,
                    self.opts.deadline,
                    summarize(&attempts)
                ));
            }
        }
    }
}

/// A failed query's attempts, readable: the first three, how many more, and the last.
fn summarize(attempts: &[String]) -> String {
    match attempts {
        [first @ .., last] if attempts.len() > 4 => format!(
            "{}; then {} more attempts; last: {last}",
            first[..3].join("; then "),
            attempts.len() - 4
        ),
        _ => attempts.join("; then "),
    }
}

fn record(report: &Mutex<LoadReport>, verdict: Option<Verdict>, retried: u64, fell_back: bool) {
    let Ok(mut r) = report.lock() else { return };
    r.queries += 1;
    r.retried_attempts += retried;
    r.active_fell_back += u64::from(fell_back);
    match verdict {
        Some(Verdict::Fresh) => r.fresh += 1,
        Some(Verdict::Stale { behind }) => {
            r.stale += 1;
            r.max_stale_behind = r.max_stale_behind.max(behind);
        }
        Some(Verdict::Wrong(why)) => {
            r.wrong += 1;
            if r.first_wrong.len() < 10 {
                r.first_wrong.push(why);
            }
        }
        None => {
            r.wrong += 1;
            r.first_wrong.push("the checker is poisoned".into());
        }
    }
}

impl QueryLoad {
    /// Query random started orders on random instances at about `opts.rate` per second.
    pub fn start(opts: LoadOptions, facts: Facts) -> Self {
        let stop = CancellationToken::new();
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_max_idle_per_host(32)
            .build()
            .unwrap_or_default();
        let task = {
            let (stop, report) = (stop.clone(), report.clone());
            tokio::spawn(async move {
                let opts = Arc::new(opts);
                let in_flight = Arc::new(Semaphore::new(512));
                let mut rng = SplitMix64::new(7);
                let pause = Duration::from_secs_f64(1.0 / opts.rate.max(1) as f64);
                let mut tick = tokio::time::interval(pause);
                let mut tasks = tokio::task::JoinSet::new();
                while !stop.is_cancelled() && !opts.endpoints.is_empty() {
                    tick.tick().await;
                    let Some(order) = facts.with(|c| c.started(rng.next_u64())).flatten() else {
                        continue;
                    };
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        break;
                    };
                    let first = rng.below(opts.endpoints.len() as u64) as usize;
                    let active_only = rng.below(3) == 0;
                    let (client, opts, facts, report) =
                        (client.clone(), opts.clone(), facts.clone(), report.clone());
                    tasks.spawn(async move {
                        let q = Query {
                            client: &client,
                            opts: &opts,
                            facts: &facts,
                            order,
                            active_only,
                        };
                        q.run(first, &report).await;
                        drop(permit);
                    });
                    while tasks.try_join_next().is_some() {}
                }
                while tasks.join_next().await.is_some() {}
            })
        };
        Self { stop, task, report }
    }

    /// What the load saw so far.
    pub fn snapshot(&self) -> LoadReport {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Stop the load (queries in flight finish) and return what it saw.
    pub async fn stop(self) -> LoadReport {
        self.stop.cancel();
        let _ = self.task.await;
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::summarize;

    #[test]
    fn a_long_chain_of_attempts_is_cut_to_the_first_three_and_the_last() {
        let few: Vec<String> = (1..=4).map(|i| format!("a{i}")).collect();
        assert_eq!(summarize(&few), "a1; then a2; then a3; then a4");
        let many: Vec<String> = (1..=60).map(|i| format!("a{i}")).collect();
        assert_eq!(
            summarize(&many),
            "a1; then a2; then a3; then 56 more attempts; last: a60"
        );
        assert_eq!(summarize(&[]), "");
    }
}
