//! Which copy answers a keyed query (`/orders/{id}`, `/sms/{id}`), within the request's deadline.
//!
//! ```text
//! honest local active ─▶ serve
//! forwarded request   ─▶ serve a local copy if allowed (standby: within max_lag), else 503
//! the active, one hop ─▶ its answer                       (skipped once unreachable, and
//!                                                          for 5 s after it failed any
//!                                                          request: `suspects`)
//! consistency=active  ─▶ 503
//! local standby       ─▶ serve if within max_lag
//! other copies, one hop each, allowing standbys ─▶ first answer (unreachable ones skipped)
//! nothing             ─▶ 503 lag_exceeded (a copy was too far behind) or partition_unavailable
//! ```
//!
//! A copy is *active* only while the engine runs it, the instance is neither fenced nor out of
//! touch with the group, and the group's latest partition map names this instance the active:
//! the moment a partition is revoked or a commit fenced, its copy answers as a standby, with
//! its lag unknown (`-1`) until the changelog says again.

use crate::telemetry::trace_context::TraceContext;
use std::collections::HashSet;
use std::future::Future;

use axum::response::Response;

use super::deadline::Deadline;
use super::forward::{forward, Forwarded, Hop};
use super::metrics::{answered_by_peer, answered_locally};
use super::{QueryError, QueryState};
use crate::engine::{LocalPartition, Role, Status};

/// How a local copy serves this request: its honest role and lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub role: Role,
    /// Records behind; `None` when unknown.
    pub lag: Option<i64>,
}

impl Served {
    /// `lag` as the answers show it: an active's lag or 0; a standby's lag or -1 (unknown).
    pub fn shown_lag(self) -> i64 {
        match (self.role, self.lag) {
            (_, Some(l)) => l,
            (Role::Active, None) => 0,
            (Role::Standby, None) => -1,
        }
    }
}

/// A commit takes tens of milliseconds; one running longer than this is in doubt.
pub const COMMIT_IN_DOUBT_MS: i64 = 1_000;

/// Before a local active copy answers. Under exactly-once a commit's batch reaches the local
/// stores only after its transaction committed, so while a commit runs the group may already
/// show offsets the stores do not hold yet (for the few milliseconds of the local write; seen
/// once in the rolling drill). Wait for the commit in flight to end: at most until it is in
/// doubt (then [`served_as`] calls the copy a standby) and within the request's deadline.
/// Returns whether the commit in flight when the query arrived (if any) has ended.
pub async fn settle_commit(st: &QueryState, deadline: Deadline) -> bool {
    let Some(commit) = st.status.commit_in_flight() else {
        return true;
    };
    let in_doubt_at = commit.started_ms + COMMIT_IN_DOUBT_MS + 1;
    let ms = u64::try_from(in_doubt_at - crate::engine::now_ms()).unwrap_or(0);
    let limit = std::time::Duration::from_millis(ms).min(deadline.remaining());
    st.status.wait_commit_end(commit, limit).await
}

/// The honest role and lag of `local`, a copy of `partition` on this instance.
pub fn served_as(st: &QueryState, partition: i32, local: &LocalPartition) -> Served {
    let raw = local.metrics.lag.load(std::sync::atomic::Ordering::Relaxed);
    let lag = (raw >= 0).then_some(raw);
    if local.role != Role::Active {
        return Served {
            role: Role::Standby,
            lag,
        };
    }
    let in_group =
        matches!(st.status.get(), Status::Running | Status::Restoring) && !st.liveness.is_stale();
    // A commit running this long may already be visible in Kafka (its answer lost with a
    // broker) while the local stores do not hold it: not "active" until it is settled.
    let commit_in_doubt = st
        .status
        .commit_running_for(crate::engine::now_ms())
        .is_some_and(|ms| ms > COMMIT_IN_DOUBT_MS);
    let named_active = st
        .routing
        .owners(partition)
        .is_none_or(|o| o.active == st.self_addr);
    if in_group && named_active && !commit_in_doubt {
        Served {
            role: Role::Active,
            lag,
        }
    } else {
        // It stopped processing (or is about to): how far behind the new active it is, nobody
        // here knows.
        Served {
            role: Role::Standby,
            lag: None,
        }
    }
}

/// What a keyed request asks of the routing.
pub struct Ask<'a> {
    pub st: &'a QueryState,
    pub partition: i32,
    /// Path and query string to forward.
    pub path: String,
    pub deadline: Deadline,
    /// `consistency=active`.
    pub active_only: bool,
    pub max_lag: Option<i64>,
    pub long_poll: bool,
    /// The request came from a peer (answer from here or not at all).
    pub forwarded: bool,
    /// The forwarding peer accepts a standby answer.
    pub allow_standby: bool,
    /// The request's trace context, passed on to peers.
    pub trace: Option<TraceContext>,
}

/// One request's routing; kept across its retries so a peer that did not answer is not asked
/// again within the same deadline.
pub struct Route<'a> {
    ask: Ask<'a>,
    unreachable: HashSet<String>,
    /// The smallest lag a copy refused with (`Some(None)`: refused with an unknown lag).
    too_far: Option<Option<i64>>,
}

impl<'a> Route<'a> {
    pub fn new(ask: Ask<'a>) -> Self {
        Route {
            ask,
            unreachable: HashSet::new(),
            too_far: None,
        }
    }

    fn hop(&self, fallback: bool) -> Hop<'a> {
        Hop {
            fallback,
            client: &self.ask.st.client,
            self_addr: &self.ask.st.self_addr,
            deadline: self.ask.deadline,
            peer_timeout: self.ask.st.limits.peer_timeout,
            long_poll: self.ask.long_poll,
            trace: self.ask.trace,
        }
    }

    /// A standby copy may answer only within `max_lag`.
    fn lag_ok(&mut self, served: Served) -> bool {
        let (Some(max), Role::Standby) = (self.ask.max_lag, served.role) else {
            return true;
        };
        if served.lag.is_some_and(|l| l <= max) {
            return true;
        }
        self.note_too_far(served.lag);
        false
    }

    fn note_too_far(&mut self, lag: Option<i64>) {
        self.too_far = Some(match (self.too_far.flatten(), lag) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        });
    }

    /// Ask `endpoint`; `None` when it gave no answer worth passing on. With `fallback`, another
    /// copy may answer instead, so this one gets at most half of the time left.
    async fn ask_peer(
        &mut self,
        endpoint: &str,
        allow_standby: bool,
        fallback: bool,
    ) -> Option<Response> {
        if endpoint.is_empty() || endpoint == self.ask.st.self_addr {
            return None;
        }
        if self.unreachable.contains(endpoint) {
            return None;
        }
        match forward(&self.hop(fallback), endpoint, &self.ask.path, allow_standby).await {
            Forwarded::Answer(r) => {
                self.ask.st.suspects.clear(endpoint);
                Some(answered_by_peer(r))
            }
            Forwarded::Refused { code, lag } => {
                if code.as_deref() == Some("lag_exceeded") {
                    self.note_too_far(lag);
                }
                tracing::debug!(
                    partition = self.ask.partition,
                    endpoint,
                    ?code,
                    "copy refused"
                );
                None
            }
            Forwarded::Unreachable(why) => {
                tracing::debug!(partition = self.ask.partition, why, "peer unreachable");
                self.ask.st.suspects.mark(endpoint);
                self.unreachable.insert(endpoint.to_owned());
                None
            }
        }
    }

    /// Route once (see the module diagram); `serve` reads a local copy.
    pub async fn run<F, Fut>(&mut self, serve: F) -> Result<Response, QueryError>
    where
        F: Fn(LocalPartition, Served) -> Fut,
        Fut: Future<Output = Result<Response, QueryError>>,
    {
        let (st, partition) = (self.ask.st, self.ask.partition);
        let unavailable = QueryError::PartitionUnavailable { partition };
        let copy = || {
            st.local
                .get(partition)
                .map(|l| (served_as(st, partition, &l), l))
        };
        let mut local = copy();
        if local.as_ref().is_some_and(|(s, _)| s.role == Role::Active) {
            let settled = settle_commit(st, self.ask.deadline).await;
            // Looked at again: the commit may have ended in a fence or a suspension.
            local = copy();
            if let Some((served, _)) = local.as_mut().filter(|_| !settled) {
                // Its commit did not end within the wait: the stores may lag the group.
                *served = Served {
                    role: Role::Standby,
                    lag: None,
                };
            }
        }
        if let Some((served, l)) = &local {
            let allowed = self.ask.forwarded && self.ask.allow_standby && !self.ask.active_only;
            if served.role == Role::Active || (allowed && self.lag_ok(*served)) {
                let role = served.role;
                return serve(l.clone(), *served)
                    .await
                    .map(|r| answered_locally(r, role));
            }
        }
        if self.ask.forwarded {
            return Err(self.refusal().unwrap_or(unavailable));
        }
        let owners = st.routing.owners(partition);
        // An active that just failed to answer is asked last; `consistency=active` does not wait
        // on it again (the request is retried until its deadline: a new active may appear).
        let active_suspect = owners
            .as_ref()
            .is_some_and(|o| st.suspects.is_suspect(&o.active));
        if let Some(o) = owners.as_ref().filter(|_| !active_suspect) {
            let fallback = !self.ask.active_only && (local.is_some() || !o.standbys.is_empty());
            if let Some(r) = self.ask_peer(&o.active, false, fallback).await {
                return Ok(r);
            }
        }
        if self.ask.active_only {
            return Err(unavailable);
        }
        if let Some((served, l)) = local {
            if self.lag_ok(served) {
                return serve(l, served)
                    .await
                    .map(|r| answered_locally(r, served.role));
            }
        }
        // The active goes first again (unless it did not answer at all): while it is being
        // promoted it still holds the partition as a (nearly caught-up) standby copy.
        // Suspects last.
        let mut fallbacks: Vec<String> = owners
            .map(|o| std::iter::once(o.active).chain(o.standbys).collect())
            .unwrap_or_default();
        fallbacks.sort_by_key(|e| st.suspects.is_suspect(e));
        for (n, endpoint) in fallbacks.iter().enumerate() {
            if let Some(r) = self.ask_peer(endpoint, true, n + 1 < fallbacks.len()).await {
                return Ok(r);
            }
        }
        Err(self.refusal().unwrap_or(unavailable))
    }

    /// Why nothing answered, when a copy was refused for its lag.
    fn refusal(&self) -> Option<QueryError> {
        let (lag, max_lag) = (self.too_far?, self.ask.max_lag?);
        Some(QueryError::LagExceeded {
            partition: self.ask.partition,
            lag,
            max_lag,
        })
    }
}
