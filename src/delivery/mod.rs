//! SMS delivery to a gateway (issue 14): the decision logic, pure and property-tested, that the
//! delivering consumer will drive. Not wired into a command yet.
//!
//! - [`dispatch`]: which polled SMS may be called next (one call per order at a time, in
//!   offset order; others pass a busy order).
//! - [`permits`]: the call permits, raised at once or lowered as calls drain.
//! - [`progress`]: the commit position of a partition whose records finish out of order.
//! - [`breaker`]: the circuit breaker (closed, open, half-open with one probe).
//! - [`policy`]: an answer's class (delivered, retryable, rejected), the retry schedule
//!   (`--retry-delays`) and the route that follows (retry topic level, or the DLQ with a reason).
//! - [`retry_headers`]: attempts, first failure and due time carried by a retry record.

pub mod breaker;
pub mod dispatch;
pub mod permits;
pub mod policy;
pub mod progress;
pub mod retry_headers;
