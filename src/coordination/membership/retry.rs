//! The one retry policy of the coordinator requests: a request that failed on the way
//! (retriable i/o, timeout, coordinator lookup) drops the coordinator connection and is tried
//! again; when the coordinator answers that it is unavailable or no longer the coordinator, it is
//! rediscovered (when it is still loading, asked again) and the request tried again. [`Retry`]
//! says how often: once at once (heartbeat, leave), or with exponential backoff until a deadline
//! (join, offsets).
//!
//! Every request path is an [`Operation`] run by [`GroupMember::with_retries`]; what its answer
//! means (done, fenced, rejoin at once, wait for a rebalance) it tells with an [`Attempt`].

use std::time::Duration;

use kafka_protocol::protocol::Request;
use tokio::time::Instant;

use super::{GroupMember, MembershipError};
use crate::coordination::error::is_coordinator_error;

/// Exponential backoff between retries, never sleeping past a deadline.
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    pub(super) fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// Sleeps the next backoff step; when the deadline comes first, sleeps until it and
    /// returns false (so callers give up instead of retrying in a tight loop).
    pub(super) async fn sleep(&mut self, deadline: Instant) -> bool {
        let wake = Instant::now() + self.next;
        if wake >= deadline {
            tokio::time::sleep_until(deadline).await;
            return false;
        }
        tokio::time::sleep_until(wake).await;
        self.next = (self.next * 2).min(Self::MAX);
        true
    }
}

/// What one attempt of a request came to, as far as retrying goes. (An `Err` from the attempt
/// instead means the request itself failed: retried if the error is retriable, else final.)
pub(super) enum Attempt<T> {
    /// Finished: the result, or an error not worth retrying.
    Done(Result<T, MembershipError>),
    /// Try again at once, without a backoff step (this member's identity changed, or the
    /// generation it tried to sync is gone).
    Again,
    /// Try again after a backoff step, on the same connection. The error, if any, is what to
    /// report should the deadline come first.
    Later(Option<MembershipError>),
    /// `api` answered a coordinator error code: rediscover the coordinator (unless it is only
    /// loading) and try again.
    CoordinatorMoved(&'static str, i16),
}

impl<T> Attempt<T> {
    /// An error code the calling path has no special handling for: a coordinator error means
    /// rediscover and retry, anything else is final.
    pub(super) fn from_code(api: &'static str, code: i16) -> Self {
        if is_coordinator_error(code) {
            Attempt::CoordinatorMoved(api, code)
        } else {
            Attempt::Done(Err(MembershipError::kafka(api, code, None)))
        }
    }
}

/// How often one call retries, and until when.
pub(super) struct Retry {
    /// The operation, for logs and for the timeout error ("joining group g").
    what: String,
    budget: Duration,
    deadline: Instant,
    /// `None`: retry once, at once, whatever the deadline. `Some`: retry after backoff steps
    /// until the deadline.
    backoff: Option<Backoff>,
    attempts: u32,
    /// Why the last attempt failed: returned when the retries run out.
    last_error: Option<MembershipError>,
}

impl Retry {
    /// One retry, at once, on a fresh connection: for requests the owner repeats soon anyway.
    /// `budget` bounds the requests of both attempts, not the retrying.
    pub(super) fn once(what: String, budget: Duration) -> Self {
        Self::new(what, budget, None)
    }

    /// Retries after exponential backoff steps until `budget` has passed.
    pub(super) fn until_deadline(what: String, budget: Duration) -> Self {
        Self::new(what, budget, Some(Backoff::new()))
    }

    fn new(what: String, budget: Duration, backoff: Option<Backoff>) -> Self {
        Retry {
            what,
            budget,
            deadline: Instant::now() + budget,
            backoff,
            attempts: 0,
            last_error: None,
        }
    }

    /// Counts an attempt about to start; `Some(error)` when no attempt is left.
    fn start_attempt(&mut self) -> Option<MembershipError> {
        let out_of_attempts = match self.backoff {
            Some(_) => Instant::now() >= self.deadline,
            None => self.attempts >= 2,
        };
        self.attempts += 1;
        out_of_attempts.then(|| {
            self.last_error
                .take()
                .unwrap_or_else(|| MembershipError::Timeout {
                    what: self.what.clone(),
                    after: self.budget,
                })
        })
    }

    /// The attempt under way is the last one whatever its outcome (the once-policy's retry).
    fn is_last_attempt(&self) -> bool {
        self.backoff.is_none() && self.attempts >= 2
    }

    /// Remembers why an attempt failed and waits before the next one, if this policy waits.
    async fn pause(&mut self, error: Option<MembershipError>) {
        if error.is_some() {
            self.last_error = error;
        }
        if let Some(backoff) = &mut self.backoff {
            // Past the deadline, the next `start_attempt` gives up.
            backoff.sleep(self.deadline).await;
        }
    }
}

/// One request path as [`GroupMember::with_retries`] drives it: the request's parameters, and
/// one attempt at it.
pub(super) trait Operation {
    type Output;

    /// Sends the request once (bounding every wait by `deadline`) and says what its answer means.
    /// `Err` means the request itself failed: retried if the error is retriable, else final.
    async fn attempt(
        &mut self,
        member: &mut GroupMember,
        deadline: Instant,
    ) -> Result<Attempt<Self::Output>, MembershipError>;
}

/// An [`Operation`] that is one ordinary request, bounded by the request timeout.
pub(super) trait SingleRequest {
    type Request: Request;
    type Output;

    /// The request, for the negotiated `version`.
    fn request(&self, version: i16) -> Self::Request;

    /// What the coordinator's answer means.
    fn answered(
        &self,
        member: &mut GroupMember,
        response: <Self::Request as Request>::Response,
    ) -> Attempt<Self::Output>;
}

impl<S: SingleRequest> Operation for S {
    type Output = S::Output;

    async fn attempt(
        &mut self,
        member: &mut GroupMember,
        deadline: Instant,
    ) -> Result<Attempt<S::Output>, MembershipError> {
        let timeout = member.request_timeout(deadline);
        let response = member.call(|v| self.request(v), timeout, deadline).await?;
        Ok(self.answered(member, response))
    }
}

impl GroupMember {
    /// Runs `operation` until it is done, retrying per `retry`: a retriable failure of the request
    /// drops the coordinator connection, a coordinator error code rediscovers the coordinator
    /// (see [`Attempt`] for the rest). When the retries run out, returns the last failure (or
    /// a timeout if no attempt failed with an error).
    pub(super) async fn with_retries<O: Operation>(
        &mut self,
        mut retry: Retry,
        operation: &mut O,
    ) -> Result<O::Output, MembershipError> {
        loop {
            if let Some(error) = retry.start_attempt() {
                return Err(error);
            }
            match operation.attempt(self, retry.deadline).await {
                Ok(Attempt::Done(result)) => return result,
                Ok(Attempt::Again) => {}
                Ok(Attempt::Later(error)) => retry.pause(error).await,
                Ok(Attempt::CoordinatorMoved(api, code)) => {
                    let error = MembershipError::kafka(api, code, None);
                    if retry.is_last_attempt() {
                        return Err(error);
                    }
                    self.coordinator_moved(api, code);
                    retry.pause(Some(error)).await;
                }
                Err(error) if error.is_retriable() && !retry.is_last_attempt() => {
                    if retry.backoff.is_some() {
                        tracing::warn!(group = %self.config.group_id, %error, "{} failed, retrying", retry.what);
                    } else {
                        tracing::debug!(group = %self.config.group_id, %error, "{} failed, retrying on a fresh connection", retry.what);
                    }
                    self.coordinator = None;
                    retry.pause(Some(error)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}
