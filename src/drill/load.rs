//! A steady query load on known keys, spread over the live instances.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::produce::generator::SplitMix64;
use crate::query::OrderResponse;

/// What the load saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub queries: u64,
    /// Non-200 answers or transport errors from live instances.
    pub failed: u64,
    /// Answers served by a standby copy.
    pub stale: u64,
    pub max_stale_lag: i64,
    /// The first few failures, for the report.
    pub first_failures: Vec<String>,
}

/// A running load; [`QueryLoad::stop`] ends it and returns its report.
pub struct QueryLoad {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    report: Arc<Mutex<LoadReport>>,
}

impl QueryLoad {
    /// Query random keys of `known` on random `live` instances at about `rate` per second.
    pub fn start(live: Arc<RwLock<Vec<String>>>, known: Vec<String>, rate: u64) -> Self {
        let stop = CancellationToken::new();
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(16)
            .build()
            .unwrap_or_default();
        let task = {
            let (stop, report) = (stop.clone(), report.clone());
            tokio::spawn(async move {
                let mut rng = SplitMix64::new(7);
                let batch = 8u64;
                let pause = Duration::from_secs_f64(batch as f64 / rate.max(1) as f64);
                while !stop.is_cancelled() && !known.is_empty() {
                    let eps = live.read().map(|l| l.clone()).unwrap_or_default();
                    if eps.is_empty() {
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    let futs = (0..batch).map(|_| {
                        let key = known[rng.below(known.len() as u64) as usize].clone();
                        let ep = eps[rng.below(eps.len() as u64) as usize].clone();
                        let client = client.clone();
                        async move {
                            let url = format!("http://{ep}/orders/{key}");
                            match client.get(&url).send().await {
                                Ok(r) if r.status().is_success() => {
                                    match r.json::<OrderResponse>().await {
                                        Ok(body) => Ok(body),
                                        Err(e) => Err(format!("{url}: bad body: {e}")),
                                    }
                                }
                                Ok(r) => {
                                    let status = r.status();
                                    let body = r.text().await.unwrap_or_default();
                                    Err(format!("{url}: {status} {body}"))
                                }
                                Err(e) => Err(format!("{url}: {e}")),
                            }
                        }
                    });
                    let results = futures::future::join_all(futs).await;
                    if let Ok(mut rep) = report.lock() {
                        for r in results {
                            rep.queries += 1;
                            match r {
                                Ok(body) if body.role == "standby" => {
                                    rep.stale += 1;
                                    rep.max_stale_lag = rep.max_stale_lag.max(body.lag);
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    rep.failed += 1;
                                    if rep.first_failures.len() < 10 {
                                        rep.first_failures.push(e);
                                    }
                                }
                            }
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            })
        };
        Self { stop, task, report }
    }

    /// Stop the load and return what it saw.
    pub async fn stop(self) -> LoadReport {
        self.stop.cancel();
        let _ = self.task.await;
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }
}
