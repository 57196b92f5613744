//! The missing-completion detector: an approval requested and never completed raises an alert.
//!
//! Entry points: [`ApprovalTimeoutProcessor`], [`ApprovalTimeoutConfig`], and the record it
//! writes, [`ApprovalAlert`], on `PAYMENT.APPROVAL_TIMEOUT` (key = order id).
//!
//! It replaces a periodic batch search over an event index ("requested more than 5 minutes ago
//! and no completion since?") with state kept per partition:
//!
//! ```text
//!  APPROVAL_REQUESTED ──▶ approval-pending (window store, order id @ requested time)
//!  APPROVAL_COMPLETED / APPROVAL_FAILED ──▶ delete pending, remember in approval-settled;
//!                                           alerted before? ──▶ RESOLVED record
//!  every check interval of stream time: pending requests that became older than
//!  timeout + grace since the last check     ──▶ TIMEOUT record, approval-alerts
//! ```
//!
//! Time is event time: an alert fires when the partition's stream time passes
//! `requested_ts + timeout + grace`, so a replay after a crash raises the same alerts at the same
//! points, and an idle partition raises none until its next record. `approval-settled` handles
//! completions that arrive before their request (out of order within the store's retention).
//!
//! Exactly one alert per order: [`APPROVAL_ALERTS_STORE`] is a ledger of the alert topic (see
//! [`crate::topology::Changelog::Ledger`]), rebuilt from what reached the topic on restore, and
//! an order with an alert in it is never alerted again.

use paystream_state::codec;
use paystream_state::window::oldest_retained;
use serde::{Deserialize, Serialize};

use crate::order::{parse_event, EventType, OrderEvent};
use crate::processor::{ProcessError, Processor, ProcessorContext, PunctuationType, Record};
use crate::topology::StoreSpec;

/// Requests waiting for their completion: order id @ requested time → [`Pending`].
pub const APPROVAL_PENDING_STORE: &str = "approval-pending";
/// Completions seen: order id @ completion time → event type (so a late request is not pending).
pub const APPROVAL_SETTLED_STORE: &str = "approval-settled";
/// Ledger of the alert topic: order id → the latest [`ApprovalAlert`] JSON.
pub const APPROVAL_ALERTS_STORE: &str = "approval-alerts";

/// What the detector does; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalTimeoutConfig {
    /// Where alerts (and their resolutions) go.
    pub topic: String,
    /// An approval not completed or failed within this much event time is alerted.
    pub timeout_ms: i64,
    /// Extra event time to wait for out-of-order completions before alerting.
    pub grace_ms: i64,
    /// How often (in stream time) pending approvals are checked.
    pub check_interval_ms: i64,
}

impl Default for ApprovalTimeoutConfig {
    fn default() -> Self {
        Self {
            topic: "PAYMENT.APPROVAL_TIMEOUT".into(),
            timeout_ms: 5 * 60_000,
            grace_ms: 10_000,
            check_interval_ms: 5_000,
        }
    }
}

impl ApprovalTimeoutConfig {
    /// How long pending requests and settled marks are kept: long enough that a request is
    /// checked after its deadline, and that a duplicate or reordered event finds its partner.
    pub fn retention_ms(&self) -> i64 {
        self.timeout_ms
            .saturating_add(self.grace_ms)
            .saturating_mul(2)
            .saturating_add(self.check_interval_ms)
    }
}

/// `TIMEOUT` (alert open) or `RESOLVED` (a completion arrived after the alert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertStatus {
    Timeout,
    Resolved,
}

/// A record on `PAYMENT.APPROVAL_TIMEOUT` (key = order id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalAlert {
    pub order_id: String,
    pub status: AlertStatus,
    pub member_id: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    /// Event time of the `APPROVAL_REQUESTED`.
    pub requested_ts: i64,
    /// `requested_ts + timeout`: when the completion was due.
    pub deadline_ts: i64,
    /// Stream time of the partition when the alert was raised.
    pub detected_at: i64,
    /// For `RESOLVED`: the completing event's type and time.
    pub resolved_by: Option<EventType>,
    pub resolved_ts: Option<i64>,
}

/// What is kept for a pending request (postcard, through [`codec`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub member_id: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
}

/// The three stores of the detector for `config`.
pub fn approval_stores(config: &ApprovalTimeoutConfig) -> Vec<StoreSpec> {
    vec![
        StoreSpec::window(APPROVAL_PENDING_STORE, config.retention_ms()),
        StoreSpec::window(APPROVAL_SETTLED_STORE, config.retention_ms()),
        StoreSpec::key_value(APPROVAL_ALERTS_STORE)
            .ledger_of(&config.topic, |key, _value, _ts| Some(key.to_vec())),
    ]
}

/// See the module documentation. Forwards every record unchanged.
pub struct ApprovalTimeoutProcessor {
    config: ApprovalTimeoutConfig,
    /// Requests at or before this time have been checked (`i64::MIN`: none yet, e.g. after a
    /// restart, when the first check looks at everything retained).
    checked_up_to: i64,
}

impl ApprovalTimeoutProcessor {
    pub fn new(config: ApprovalTimeoutConfig) -> Self {
        Self {
            config,
            checked_up_to: i64::MIN,
        }
    }

    /// How long after its request a pending entry can still be unchecked: timeout + grace + one
    /// check interval.
    fn due_after(&self) -> i64 {
        let c = &self.config;
        c.timeout_ms
            .saturating_add(c.grace_ms)
            .saturating_add(c.check_interval_ms)
    }

    /// Raise the alert for a pending request (unless the ledger already has one).
    ///
    /// The pending entry is *not* deleted here: deleting it is a changelog write that could
    /// reach Kafka while the alert itself does not (a crash between the two), and the alert would
    /// then be lost for good. Kept, it is skipped by later checks (the ledger knows the alert)
    /// and expires with its segment.
    fn raise(
        &self,
        ctx: &mut ProcessorContext<'_>,
        order_id: String,
        requested_ts: i64,
        pending: Pending,
        stream_time: i64,
    ) -> Result<(), ProcessError> {
        if Self::alert_of(ctx, &order_id)?.is_some() {
            return Ok(());
        }
        let deadline_ts = requested_ts.saturating_add(self.config.timeout_ms);
        let alert = ApprovalAlert {
            order_id,
            status: AlertStatus::Timeout,
            member_id: pending.member_id,
            amount: pending.amount,
            currency: pending.currency,
            requested_ts,
            deadline_ts,
            detected_at: stream_time,
            resolved_by: None,
            resolved_ts: None,
        };
        self.emit(ctx, &alert, deadline_ts)
    }

    fn alert_of(
        ctx: &mut ProcessorContext<'_>,
        order_id: &str,
    ) -> Result<Option<ApprovalAlert>, ProcessError> {
        let Some(bytes) = ctx.store(APPROVAL_ALERTS_STORE)?.get(order_id.as_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ProcessError::Other(format!(
                "store {APPROVAL_ALERTS_STORE}: bad alert for {order_id}: {e}"
            ))
        })
    }

    fn emit(
        &self,
        ctx: &mut ProcessorContext<'_>,
        alert: &ApprovalAlert,
        ts: i64,
    ) -> Result<(), ProcessError> {
        let bytes = serde_json::to_vec(alert)
            .map_err(|e| ProcessError::Other(format!("encode alert: {e}")))?;
        ctx.send(
            &self.config.topic,
            Record::new(alert.order_id.as_bytes(), bytes.clone(), ts),
        )?;
        ctx.store(APPROVAL_ALERTS_STORE)?
            .put(alert.order_id.as_bytes(), &bytes)?;
        Ok(())
    }

    /// Alert every pending request that became due (older than timeout + grace at
    /// `stream_time`) since the last check.
    fn check(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        stream_time: i64,
    ) -> Result<(), ProcessError> {
        let c = &self.config;
        let cutoff = stream_time
            .saturating_sub(c.timeout_ms)
            .saturating_sub(c.grace_ms);
        if cutoff <= self.checked_up_to {
            return Ok(());
        }
        // Only what became due since the last check; after a restart, everything retained.
        let from = self.checked_up_to.saturating_add(1);
        let mut due: Vec<(Vec<u8>, i64, Vec<u8>)> = Vec::new();
        ctx.window_store(APPROVAL_PENDING_STORE)?
            .fetch_all(from, cutoff, &mut |k, t, v| {
                due.push((k.to_vec(), t, v.to_vec()));
                true
            })?;
        self.checked_up_to = cutoff;
        for (key, requested_ts, value) in due {
            let order_id = String::from_utf8_lossy(&key).into_owned();
            let pending: Pending =
                codec::decode(&value).map_err(|e| e.in_store(APPROVAL_PENDING_STORE))?;
            self.raise(ctx, order_id, requested_ts, pending, stream_time)?;
        }
        Ok(())
    }

    fn requested(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        event: &OrderEvent,
    ) -> Result<(), ProcessError> {
        // A put this far ahead expires entries the last check has not looked at yet (stream
        // time jumped: an idle partition woke up, or a restart): check them first, or their
        // alerts would be lost with their segment.
        if event.ts.saturating_sub(self.config.retention_ms()) > self.checked_up_to {
            let st = ctx.stream_time();
            self.check(ctx, st)?;
        }
        if Self::alert_of(ctx, &event.order_id)?.is_some() {
            return Ok(());
        }
        // Ranges as narrow as the rules allow: every segment a fetch touches costs an iterator.
        // A completion comes after its request (up to the whole retention, when late); a
        // duplicate request sits within the timeout of the first.
        let (r, due) = (self.config.retention_ms(), self.due_after());
        let key = event.order_id.as_bytes();
        if !ctx
            .window_store(APPROVAL_SETTLED_STORE)?
            .fetch(
                key,
                event.ts.saturating_sub(due),
                event.ts.saturating_add(r),
            )?
            .is_empty()
        {
            return Ok(());
        }
        let pending = ctx.window_store(APPROVAL_PENDING_STORE)?;
        if !pending
            .fetch(
                key,
                event.ts.saturating_sub(due),
                event.ts.saturating_add(due),
            )?
            .is_empty()
        {
            return Ok(());
        }
        let pending_value = Pending {
            member_id: event.member_id.clone(),
            amount: event.amount,
            currency: event.currency.clone(),
        };
        let value =
            codec::encode(&pending_value).map_err(|e| e.in_store(APPROVAL_PENDING_STORE))?;
        if !pending.put(key, event.ts, &value)? {
            ctx.record_late();
            return Ok(());
        }
        // Arrived after the check that would have covered it: overdue already.
        if event.ts <= self.checked_up_to {
            let st = ctx.stream_time();
            self.raise(ctx, event.order_id.clone(), event.ts, pending_value, st)?;
        }
        Ok(())
    }

    fn settled(
        &self,
        ctx: &mut ProcessorContext<'_>,
        event: &OrderEvent,
    ) -> Result<(), ProcessError> {
        // Requests older than this were alerted already (or are at the next check, which the
        // ledger then stops): their entries may stay until they expire.
        let key = event.order_id.as_bytes();
        let pending = ctx.window_store(APPROVAL_PENDING_STORE)?;
        let from = event.ts.saturating_sub(self.due_after());
        // (Up to `due` after the completion too: services' clocks are not perfectly in step.)
        for (t, _) in pending.fetch(key, from, event.ts.saturating_add(self.due_after()))? {
            pending.delete(key, t)?;
        }
        let settled = ctx.window_store(APPROVAL_SETTLED_STORE)?;
        let oldest = oldest_retained(settled.observed_time(), settled.retention_ms());
        if event.ts >= oldest {
            settled.put(key, event.ts, event.event_type.as_str().as_bytes())?;
        }
        if let Some(alert) = Self::alert_of(ctx, &event.order_id)? {
            if alert.status == AlertStatus::Timeout {
                let resolved = ApprovalAlert {
                    status: AlertStatus::Resolved,
                    detected_at: ctx.stream_time(),
                    resolved_by: Some(event.event_type),
                    resolved_ts: Some(event.ts),
                    ..alert
                };
                self.emit(ctx, &resolved, event.ts)?;
            }
        }
        Ok(())
    }
}

impl Processor for ApprovalTimeoutProcessor {
    fn init(&mut self, ctx: &mut ProcessorContext<'_>) -> Result<(), ProcessError> {
        ctx.schedule(PunctuationType::StreamTime, self.config.check_interval_ms)
    }

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: Record,
    ) -> Result<(), ProcessError> {
        if let Ok(event) = parse_event(record.key.as_deref(), record.value.as_deref()) {
            match event.event_type {
                EventType::ApprovalRequested => self.requested(ctx, &event)?,
                EventType::ApprovalCompleted | EventType::ApprovalFailed => {
                    self.settled(ctx, &event)?
                }
                _ => {}
            }
        }
        ctx.forward(record);
        Ok(())
    }

    fn punctuate(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        _kind: PunctuationType,
        stream_time: i64,
    ) -> Result<(), ProcessError> {
        self.check(ctx, stream_time)
    }
}
