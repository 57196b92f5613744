//! The poll thread of a delivering instance: the only thread that touches the consumer. It
//! polls (never blocked by the gateway), hands records to the [`Book`], pauses partitions while
//! too much is held or while retry records wait for their time, commits what the book says is
//! done, and serves rebalances: a revoked partition starts no new call, its running calls are
//! waited for (bounded), and its position is committed before it goes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;

use super::book::{Book, Pending, Tp};
use super::retry_headers::{self, RetryState};

/// What the poll thread and the call tasks share.
#[derive(Debug, Default)]
pub struct Shared {
    book: Mutex<Book>,
    /// Signalled when a call finishes (a revoke waits for its partitions' calls).
    finished: Condvar,
    /// Wakes the dispatching task: records arrived or a call finished.
    pub wake: Notify,
    /// Set once every call has finished: the poll thread commits and leaves.
    pub stop: AtomicBool,
}

impl Shared {
    /// The book, also after a panic elsewhere (its counts stay consistent under the lock).
    pub fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call task is done with `p`: `placed` when it was delivered or its retry or DLQ record
    /// acknowledged (only then may commits pass it).
    pub fn finished(&self, p: &Pending, placed: bool) {
        if !placed {
            self.book().abandoned(p);
        } else if let Err(e) = self.book().finished(p) {
            tracing::error!(error = %e, "delivery bookkeeping");
        }
        self.finished.notify_all();
        self.wake.notify_one();
    }
}

/// The consumer's context: rebalances go through the book.
pub struct DeliverContext {
    pub shared: Arc<Shared>,
    /// How long a revoke waits for its partitions' running calls.
    pub revoke_wait: Duration,
}

impl ClientContext for DeliverContext {}

impl ConsumerContext for DeliverContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let tps = to_tps(tpl);
                let positions = {
                    let mut book = self.shared.book();
                    let running = book.revoke_begin(&tps);
                    if running > 0 {
                        tracing::info!(running, "partitions revoked: waiting for their calls");
                    }
                    let deadline = Instant::now() + self.revoke_wait;
                    while book.calling(&tps) > 0 && Instant::now() < deadline {
                        let left = deadline.saturating_duration_since(Instant::now());
                        book = match self.shared.finished.wait_timeout(book, left) {
                            Ok((b, _)) => b,
                            Err(p) => p.into_inner().0,
                        };
                    }
                    book.revoke_end(&tps)
                };
                commit(consumer, &positions, CommitMode::Sync);
                tracing::info!(partitions = tps.len(), "partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let tps = to_tps(tpl);
            let mut book = self.shared.book();
            for tp in &tps {
                book.assigned(tp.clone());
            }
            tracing::info!(partitions = tps.len(), "partitions assigned");
        }
    }
}

fn to_tps(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

fn tpl_of<'a>(tps: impl IntoIterator<Item = &'a Tp>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in tps {
        tpl.add_partition(t, *p);
    }
    tpl
}

fn commit(consumer: &BaseConsumer<DeliverContext>, positions: &[(Tp, i64)], mode: CommitMode) {
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), pos) in positions {
        if let Err(e) = tpl.add_partition_offset(t, *p, Offset::Offset(*pos)) {
            tracing::warn!(error = %e, topic = %t, partition = p, "bad commit offset");
        }
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!(error = %e, "committing delivered SMS offsets failed; retried at the next commit");
    }
}

/// How the poll loop behaves.
pub struct PollSettings {
    /// Pause every partition when this many records are held or in a call; resume at half.
    pub max_buffered: usize,
    pub commit_interval: Duration,
    /// Retry topic name → level (1-based).
    pub retry_levels: Vec<(String, usize)>,
}

/// Runs until [`Shared::stop`]; then commits the final positions and leaves the group.
pub fn poll_loop(consumer: BaseConsumer<DeliverContext>, shared: Arc<Shared>, s: PollSettings) {
    let mut paused: HashSet<Tp> = HashSet::new();
    let mut full = false;
    let mut last_commit = Instant::now();
    let mut assignment = 0;
    while !shared.stop.load(Ordering::Acquire) {
        let wait = if paused.is_empty() { 100 } else { 5 };
        let mut got = 0;
        let mut next = consumer.poll(Duration::from_millis(wait));
        while let Some(polled) = next {
            match polled {
                Ok(m) => {
                    let p = pending(&m, &s.retry_levels);
                    if let Err(e) = shared.book().polled(p, now_ms()) {
                        tracing::error!(error = %e, "delivery bookkeeping");
                    }
                    got += 1;
                }
                Err(e) => tracing::warn!(error = %e, "SMS consumer error"),
            }
            if got >= 500 {
                break;
            }
            next = consumer.poll(Duration::ZERO);
        }
        let (want, to_commit) = {
            let mut book = shared.book();
            book.release_due(now_ms());
            // Records in a call or a retry write count too: a stopped gateway makes every record
            // a retry write, and those are not bounded by the permits.
            let held = book.buffered() + book.calls();
            if held >= s.max_buffered {
                full = true;
            } else if held <= s.max_buffered / 2 {
                full = false;
            }
            let want: HashSet<Tp> = if full {
                book.assignment().cloned().collect()
            } else {
                book.waiting().cloned().collect()
            };
            if book.assignment_changes() != assignment {
                // A reassigned partition starts unpaused, the others keep their pause: resume
                // every one still assigned and apply the pauses wanted again from scratch.
                assignment = book.assignment_changes();
                let kept: Vec<&Tp> = paused
                    .iter()
                    .filter(|tp| book.assignment().any(|a| a == *tp))
                    .collect();
                if !kept.is_empty() {
                    if let Err(e) = consumer.resume(&tpl_of(kept)) {
                        tracing::warn!(error = %e, "resuming partitions");
                    }
                }
                paused.clear();
            }
            let to_commit = if last_commit.elapsed() >= s.commit_interval {
                last_commit = Instant::now();
                book.to_commit()
            } else {
                Vec::new()
            };
            (want, to_commit)
        };
        shared.wake.notify_one();
        let pause: Vec<&Tp> = want.difference(&paused).collect();
        if !pause.is_empty() {
            if let Err(e) = consumer.pause(&tpl_of(pause.iter().copied())) {
                tracing::warn!(error = %e, "pausing partitions");
            }
        }
        let resume: Vec<&Tp> = paused.difference(&want).collect();
        if !resume.is_empty() {
            if let Err(e) = consumer.resume(&tpl_of(resume.iter().copied())) {
                tracing::warn!(error = %e, "resuming partitions");
            }
        }
        paused = want;
        commit(&consumer, &to_commit, CommitMode::Async);
    }
    let last = shared.book().to_commit();
    commit(&consumer, &last, CommitMode::Sync);
    consumer.unsubscribe();
    tracing::info!("SMS consumer closed");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A polled record as the book keeps it: retry state from its headers on a retry topic.
fn pending(m: &BorrowedMessage<'_>, retry_levels: &[(String, usize)]) -> Pending {
    let mut headers = Vec::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            headers.push((header.key.to_owned(), header.value.unwrap_or(&[]).to_vec()));
        }
    }
    let from_retry = retry_levels.iter().any(|(t, _)| t == m.topic());
    let (retry, invalid) = if from_retry {
        match RetryState::from_headers(|name| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
        }) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(format!("invalid: {e}"))),
        }
    } else {
        (None, None)
    };
    headers.retain(|(k, _)| !retry_headers::is_retry_header(k));
    Pending {
        tp: (Arc::from(m.topic()), m.partition()),
        offset: m.offset(),
        epoch: 0,
        key: m.key().unwrap_or(&[]).to_vec(),
        value: m.payload().unwrap_or(&[]).to_vec(),
        headers,
        retry,
        invalid,
    }
}
