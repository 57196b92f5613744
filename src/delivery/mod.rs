//! SMS delivery to a gateway (`paystream deliver`): back-pressure, adjustable permits, retry
//! topics, a dead-letter topic and a circuit breaker.
//!
//! Decision logic, pure and property-tested:
//! - [`dispatch`]: which polled SMS may be called next (one call per order at a time, in
//!   offset order; others pass a busy order).
//! - [`permits`]: the call permits, raised at once or lowered as calls drain.
//! - [`progress`]: the commit position of a partition whose records finish out of order.
//! - [`breaker`]: the circuit breaker (closed, open, half-open with one probe).
//! - [`policy`]: an answer's class (delivered, retryable, rejected), the retry schedule
//!   (`--retry-delays`) and the route that follows (retry topic level, or the DLQ with a reason).
//! - [`retry_headers`]: attempts, first failure and due time carried by a retry record.
//! - [`book`]: the ledger of polled records per partition (held, calling, due, committable).
//!
//! I/O at the edges:
//! - [`consumer`]: the poll thread (pauses, commits, rebalances).
//! - [`gateway`]: the HTTP call.
//! - [`runtime`]: the composition and the dispatch loop; the data flow of one SMS is drawn there.
//! - [`admin`]: `/health`, `/metrics`, `/admin/permits`.
//! - [`metrics`]: the metrics, logged where counted.

pub mod admin;
pub mod book;
pub mod breaker;
pub mod consumer;
pub mod dispatch;
pub mod gateway;
pub mod metrics;
pub mod permits;
pub mod policy;
pub mod progress;
pub mod retry_headers;
pub mod runtime;
