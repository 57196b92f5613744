//! The gateway-call permits of one instance (`--permits N`), changeable while calls run
//! (`PUT /admin/permits`): raising adds permits at once; lowering takes permits out as calls
//! give them back, so in-flight calls drain below the new limit and none is cancelled.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest permit count accepted.
pub const MAX_PERMITS: usize = 4096;

/// A permit count outside 1..=MAX_PERMITS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permits must be in 1..={MAX_PERMITS}, got {0}")]
pub struct PermitsError(pub usize);

/// What `GET /admin/permits` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PermitsStatus {
    /// The limit asked for.
    pub permits: usize,
    /// Calls holding a permit now (above `permits` for a while after a lowering).
    pub in_flight: usize,
    /// Acquisitions that had to wait for a permit, and those that gave up waiting.
    pub waits: u64,
    pub wait_timeouts: u64,
}

/// Adjustable permits.
#[derive(Debug, Clone)]
pub struct Permits {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    semaphore: Arc<Semaphore>,
    target: AtomicUsize,
    in_flight: AtomicUsize,
    waits: AtomicU64,
    wait_timeouts: AtomicU64,
    /// Serializes changes of the limit.
    change: tokio::sync::Mutex<usize>,
}

/// A held permit; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Permits {
    pub fn new(permits: usize) -> Result<Self, PermitsError> {
        check(permits)?;
        Ok(Permits {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(permits)),
                target: AtomicUsize::new(permits),
                in_flight: AtomicUsize::new(0),
                waits: AtomicU64::new(0),
                wait_timeouts: AtomicU64::new(0),
                change: tokio::sync::Mutex::new(permits),
            }),
        })
    }

    /// A permit without waiting, if one is free (the caller pauses its partitions otherwise).
    pub fn try_acquire(&self) -> Option<Permit> {
        let permit = self.inner.semaphore.clone().try_acquire_owned().ok()?;
        Some(self.held(permit))
    }

    /// A permit, waiting at most `limit` (a timed-out wait is counted: the talk's "failed
    /// acquiring semaphore").
    pub async fn acquire_within(&self, limit: Duration) -> Option<Permit> {
        if let Some(p) = self.try_acquire() {
            return Some(p);
        }
        self.inner.waits.fetch_add(1, Ordering::Relaxed);
        let sem = self.inner.semaphore.clone();
        match tokio::time::timeout(limit, sem.acquire_owned()).await {
            Ok(Ok(permit)) => Some(self.held(permit)),
            _ => {
                self.inner.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn held(&self, permit: OwnedSemaphorePermit) -> Permit {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        Permit {
            _permit: permit,
            inner: self.inner.clone(),
        }
    }

    /// Changes the limit. Raising takes effect at once; lowering returns once enough calls have
    /// given their permits back (no call is cancelled, no new call starts above the new limit
    /// once this returns).
    pub async fn set(&self, permits: usize) -> Result<(), PermitsError> {
        check(permits)?;
        let mut current = self.inner.change.lock().await;
        self.inner.target.store(permits, Ordering::Relaxed);
        if permits > *current {
            self.inner.semaphore.add_permits(permits - *current);
        } else if permits < *current {
            let fewer = u32::try_from(*current - permits).map_err(|_| PermitsError(permits))?;
            // The semaphore is never closed, so acquiring only waits.
            if let Ok(taken) = self.inner.semaphore.acquire_many(fewer).await {
                taken.forget();
            }
        }
        *current = permits;
        Ok(())
    }

    pub fn status(&self) -> PermitsStatus {
        PermitsStatus {
            permits: self.inner.target.load(Ordering::Relaxed),
            in_flight: self.inner.in_flight.load(Ordering::Relaxed),
            waits: self.inner.waits.load(Ordering::Relaxed),
            wait_timeouts: self.inner.wait_timeouts.load(Ordering::Relaxed),
        }
    }
}

fn check(permits: usize) -> Result<(), PermitsError> {
    if (1..=MAX_PERMITS).contains(&permits) {
        Ok(())
    } else {
        Err(PermitsError(permits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn raising_adds_permits_at_once() {
        let p = Permits::new(1).unwrap();
        let _a = p.try_acquire().unwrap();
        assert!(p.try_acquire().is_none());
        p.set(3).await.unwrap();
        let _b = p.try_acquire().unwrap();
        let _c = p.try_acquire().unwrap();
        assert!(p.try_acquire().is_none());
        assert_eq!(p.status().in_flight, 3);
    }

    #[tokio::test]
    async fn lowering_waits_for_calls_to_drain_below_the_new_limit() {
        let p = Permits::new(3).unwrap();
        let held: Vec<Permit> = (0..3).map(|_| p.try_acquire().unwrap()).collect();
        let lowering = tokio::spawn({
            let p = p.clone();
            async move { p.set(1).await }
        });
        // The lowering cannot finish while 3 calls hold permits.
        tokio::task::yield_now().await;
        assert!(!lowering.is_finished());
        assert_eq!(p.status().permits, 1);
        let mut held = held;
        held.pop();
        held.pop();
        lowering.await.unwrap().unwrap();
        // One call still runs: no new permit until it ends.
        assert!(p.try_acquire().is_none());
        drop(held);
        let _only = p.try_acquire().unwrap();
        assert!(p.try_acquire().is_none());
    }

    #[tokio::test]
    async fn a_wait_that_times_out_is_counted() {
        let p = Permits::new(1).unwrap();
        let _a = p.try_acquire().unwrap();
        assert!(p.acquire_within(Duration::from_millis(50)).await.is_none());
        let s = p.status();
        assert_eq!((s.waits, s.wait_timeouts), (1, 1));
        assert!(Permits::new(0).is_err());
        assert_eq!(
            p.set(MAX_PERMITS + 1).await,
            Err(PermitsError(MAX_PERMITS + 1))
        );
    }
}
