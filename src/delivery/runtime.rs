//! `paystream deliver`: the composition of a delivering instance and its dispatch loop.
//!
//! ```text
//!  poll thread (consumer.rs)            dispatch loop (here)              call tasks (here)
//!  SEND_SMS + .RETRY.k ──▶ Book ──ready──▶ permit ──▶ take_next ──spawn──▶ breaker ─▶ POST
//!  pause when full / not due                                             │ 2xx: done
//!  commit Book::to_commit ◀── finished ◀── retry / DLQ record acked ◀────┘ else: route
//! ```
//! One record: polled (its offset is now held back from commits) → waits for its order and a
//! permit → called (or skipped by an open circuit) → delivered, or written to a retry topic or
//! the DLQ and acknowledged by the broker → finished: the partition's commit position may pass
//! it. A crash anywhere before that reads it again; the gateway sees the same idempotency key.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paystream_topology::sms::SmsRequest;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::book::Pending;
use super::breaker::{Breaker, CircuitState, Decision};
use super::consumer::{poll_loop, DeliverContext, PollSettings, Shared};
use super::gateway::{Gateway, GatewayError};
use super::metrics::{circuit_name, DeliveryMetrics};
use super::permits::{Permit, Permits, PermitsStatus};
use super::policy::{classify, Outcome, Route};
use super::retry_headers::{RetryState, DEAD_LETTER_REASON};
use crate::config::DeliverSettings;
use crate::kafka::admin::{ensure_topics, partition_count, TopicSpec};
use crate::kafka::client::{delivery_consumer_config, producer_config};
use crate::kafka::KafkaError;

/// Why a delivering instance stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("topic {0} (sms-topic) did not appear within a minute: start `paystream run` first, or create it")]
    TopicMissing(String),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("cannot serve HTTP: {0}")]
    Http(#[source] std::io::Error),
    #[error("the poll thread: {0}")]
    Thread(String),
}

/// What `/health` shows.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryStatus {
    pub circuit: &'static str,
    #[serde(flatten)]
    pub permits: PermitsStatus,
    /// Polled SMS held (waiting for a permit, their order, or their retry time).
    pub buffered: usize,
    /// SMS in a call or being written to a retry topic or the DLQ.
    pub calls: usize,
    pub assigned_partitions: usize,
}

/// A running delivering instance, as its HTTP endpoints see it.
pub struct Delivery {
    settings: DeliverSettings,
    shared: Arc<Shared>,
    permits: Permits,
    breaker: Mutex<Breaker>,
    gateway: Gateway,
    producer: FutureProducer,
    metrics: DeliveryMetrics,
    shutdown: CancellationToken,
}

impl Delivery {
    pub fn permits(&self) -> &Permits {
        &self.permits
    }

    /// The admin token, when admin endpoints are on.
    pub fn admin_token(&self) -> Option<&str> {
        self.settings.admin_token.as_deref()
    }

    fn circuit(&self) -> CircuitState {
        self.breaker
            .lock()
            .map_or(CircuitState::Open, |b| b.state())
    }

    pub fn status(&self) -> DeliveryStatus {
        let book = self.shared.book();
        DeliveryStatus {
            circuit: circuit_name(self.circuit()),
            permits: self.permits.status(),
            buffered: book.buffered(),
            calls: book.calls(),
            assigned_partitions: book.assignment().count(),
        }
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        let buffered = self.shared.book().buffered();
        self.metrics
            .encode(self.permits.status(), buffered, self.circuit())
    }
}

/// Runs a delivering instance until `shutdown`: HTTP on `listener`, calls drained and offsets
/// committed before it returns.
pub async fn run(
    settings: DeliverSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DeliverError> {
    let partitions = sms_partitions(&settings, &shutdown).await?;
    let mut topics: Vec<String> = (1..=settings.retry.levels())
        .map(|l| settings.retry_topic(l))
        .collect();
    topics.push(settings.dead_letter_topic());
    let specs: Vec<TopicSpec> = topics
        .iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions,
            replication_factor: settings.replication_factor,
            configs: Vec::new(),
        })
        .collect();
    ensure_topics(&settings.bootstrap_servers, &specs).await?;
    let producer: FutureProducer = producer_config(&settings.bootstrap_servers)
        .create()
        .map_err(KafkaError::client("delivery producer"))?;
    let shared = Arc::new(Shared::default());
    let context = DeliverContext {
        shared: shared.clone(),
        revoke_wait: settings.call_timeout + Duration::from_secs(10),
    };
    let consumer: BaseConsumer<DeliverContext> =
        delivery_consumer_config(&settings.bootstrap_servers, &settings.group_id)
            .create_with_context(context)
            .map_err(KafkaError::client("SMS consumer"))?;
    let mut subscribed = vec![settings.sms_topic.clone()];
    subscribed.extend(topics[..settings.retry.levels()].iter().cloned());
    let names: Vec<&str> = subscribed.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(KafkaError::client("SMS consumer"))?;
    let poll = PollSettings {
        max_buffered: settings.max_buffered,
        commit_interval: Duration::from_secs(1),
        retry_levels: (1..=settings.retry.levels())
            .map(|l| (settings.retry_topic(l), l))
            .collect(),
    };
    let poller = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("sms-poll".into())
            .spawn(move || poll_loop(consumer, shared, poll))
            .map_err(|e| DeliverError::Thread(e.to_string()))?
    };
    let delivery = Arc::new(Delivery {
        permits: Permits::new(settings.permits).map_err(|e| DeliverError::Thread(e.to_string()))?,
        breaker: Mutex::new(Breaker::new(settings.breaker.clone())),
        gateway: Gateway::new(&settings.gateway_url, settings.call_timeout)?,
        producer,
        metrics: DeliveryMetrics::default(),
        shared: shared.clone(),
        shutdown: shutdown.clone(),
        settings,
    });
    tracing::info!(
        gateway = %delivery.settings.gateway_url,
        topics = ?subscribed,
        permits = delivery.settings.permits,
        admin = delivery.settings.admin_token.is_some(),
        "delivering SMS"
    );
    let http = {
        let app = super::admin::app(delivery.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    dispatch(&delivery).await;
    drain(&delivery).await;
    shared.stop.store(true, Ordering::Release);
    tokio::task::spawn_blocking(move || poller.join())
        .await
        .map_err(|e| DeliverError::Thread(e.to_string()))?
        .map_err(|_| DeliverError::Thread("panicked".into()))?;
    match http.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DeliverError::Http(e)),
        Err(e) => Err(DeliverError::Thread(e.to_string())),
    }
}

/// The SMS topic's partition count, waiting up to a minute for the topic to appear (inside
/// `paystream run`, the instance creates it while this starts).
async fn sms_partitions(
    settings: &DeliverSettings,
    shutdown: &CancellationToken,
) -> Result<i32, DeliverError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut told = false;
    loop {
        let (b, t) = (
            settings.bootstrap_servers.clone(),
            settings.sms_topic.clone(),
        );
        let count = tokio::task::spawn_blocking(move || partition_count(&b, &t))
            .await
            .map_err(|e| DeliverError::Thread(e.to_string()))??;
        if let Some(n) = count {
            return Ok(n);
        }
        if Instant::now() > deadline || shutdown.is_cancelled() {
            return Err(DeliverError::TopicMissing(settings.sms_topic.clone()));
        }
        if !told {
            tracing::info!(topic = %settings.sms_topic, "waiting for the SMS topic to exist");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Hands ready records to calls, one permit each, until shutdown.
async fn dispatch(d: &Arc<Delivery>) {
    loop {
        if !d.shared.book().has_ready() {
            tokio::select! {
                _ = d.shared.wake.notified() => continue,
                _ = d.shutdown.cancelled() => return,
            }
        }
        let permit = tokio::select! {
            p = d.permits.acquire_within(d.settings.permit_wait) => p,
            _ = d.shutdown.cancelled() => return,
        };
        let Some(permit) = permit else { continue };
        let Some(p) = d.shared.book().take_next() else {
            continue;
        };
        let d = d.clone();
        tokio::spawn(async move {
            let placed = handle(&d, &p, permit).await;
            d.shared.finished(&p, placed);
        });
    }
}

/// Waits (bounded) for running calls and their retry/DLQ writes, so their offsets commit.
async fn drain(d: &Delivery) {
    let deadline = Instant::now() + d.settings.call_timeout + Duration::from_secs(15);
    while d.shared.book().calls() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = d.shared.book().calls();
    if left > 0 {
        tracing::warn!(
            left,
            "stopping with calls unfinished: their SMS are read again at the next start"
        );
    }
}

/// What became of one attempt.
struct Attempted {
    route: Route,
    /// Calls so far, this one included.
    attempts: u32,
    reason: String,
}

/// Calls the gateway for `p` (unless the circuit is open) and writes where it goes next;
/// whether it is finished (false: not written, it must be read again).
async fn handle(d: &Delivery, p: &Pending, permit: Permit) -> bool {
    let event_id;
    let a = match parse(p) {
        Err(reason) => {
            drop(permit);
            event_id = String::new();
            Attempted {
                route: Route::DeadLetter {
                    reason: reason.clone(),
                },
                attempts: p.retry.as_ref().map_or(0, |r| r.attempts),
                reason,
            }
        }
        Ok(request) => {
            event_id = request.event_id.clone();
            attempt(d, p, &request, permit).await
        }
    };
    match &a.route {
        Route::Done => {
            d.metrics.delivered();
            true
        }
        Route::Retry { level, delay } => {
            let now = now_ms();
            let state = RetryState {
                attempts: a.attempts,
                first_failure_ms: p.retry.as_ref().map_or(now, |r| r.first_failure_ms),
                first_reason: p
                    .retry
                    .as_ref()
                    .map_or_else(|| a.reason.clone(), |r| r.first_reason.clone()),
                due_ms: now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            };
            let headers: Vec<(String, Vec<u8>)> = state
                .to_headers()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            let ok = write(d, &d.settings.retry_topic(*level), p, headers).await;
            if ok {
                d.metrics.retried(*level, &a.reason, &event_id);
            }
            ok
        }
        Route::DeadLetter { reason } => {
            let mut headers = vec![(DEAD_LETTER_REASON.to_owned(), reason.clone().into_bytes())];
            if let Some(r) = &p.retry {
                headers.extend(
                    RetryState {
                        attempts: a.attempts,
                        ..r.clone()
                    }
                    .to_headers()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v)),
                );
            } else {
                headers.push((
                    super::retry_headers::ATTEMPTS.to_owned(),
                    a.attempts.to_string().into_bytes(),
                ));
            }
            let ok = write(d, &d.settings.dead_letter_topic(), p, headers).await;
            if ok {
                d.metrics.dead_lettered(reason, &event_id);
            }
            ok
        }
    }
}

fn parse(p: &Pending) -> Result<SmsRequest, String> {
    if let Some(reason) = &p.invalid {
        return Err(reason.clone());
    }
    serde_json::from_slice(&p.value).map_err(|e| format!("invalid: not an SMS request: {e}"))
}

async fn attempt(d: &Delivery, p: &Pending, request: &SmsRequest, permit: Permit) -> Attempted {
    let prior = p.retry.as_ref().map_or(0, |r| r.attempts);
    let (decision, transition) = match d.breaker.lock() {
        Ok(mut b) => b.decide(Instant::now()),
        Err(_) => (Decision::Call, None),
    };
    if let Some(t) = transition {
        d.metrics.transition(t);
    }
    if decision == Decision::Skip {
        drop(permit);
        d.metrics.skipped();
        let reason = "circuit open".to_owned();
        let skipped = Outcome::Retryable {
            reason: reason.clone(),
            at_least: None,
        };
        return Attempted {
            route: d.settings.retry.route(1, &skipped),
            attempts: prior,
            reason,
        };
    }
    let started = Instant::now();
    let result = d.gateway.call(&request.event_id, p.value.clone()).await;
    let took = started.elapsed();
    drop(permit);
    let outcome = classify(&result);
    let (name, failed, reason) = match &outcome {
        Outcome::Delivered => ("delivered", false, String::new()),
        Outcome::Retryable { reason, .. } => ("retryable", true, reason.clone()),
        Outcome::Rejected { reason } => ("rejected", false, reason.clone()),
    };
    d.metrics.call(name, took);
    let transition = match d.breaker.lock() {
        Ok(mut b) => b.record(Instant::now(), decision, failed),
        Err(_) => None,
    };
    if let Some(t) = transition {
        d.metrics.transition(t);
    }
    let attempts = prior.saturating_add(1);
    Attempted {
        route: d
            .settings
            .retry
            .route(usize::try_from(attempts).unwrap_or(usize::MAX), &outcome),
        attempts,
        reason,
    }
}

/// Writes `p` to `topic` with its own headers and `extra`, until the broker acknowledges it
/// (or shutdown: then it is not finished and is read again at the next start).
async fn write(d: &Delivery, topic: &str, p: &Pending, extra: Vec<(String, Vec<u8>)>) -> bool {
    let mut headers = OwnedHeaders::new();
    for (k, v) in p.headers.iter().chain(extra.iter()) {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let record = FutureRecord::to(topic)
            .key(&p.key)
            .payload(&p.value)
            .headers(headers.clone());
        match d.producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => return true,
            Err((e, _)) => {
                tracing::warn!(error = %e, topic, "writing an SMS failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = d.shutdown.cancelled() => return false,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
}
