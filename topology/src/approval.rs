//! The missing-completion detector: an approval requested and never completed raises an alert.
//!
//! Entry points: [`ApprovalTimeoutProcessor`], [`ApprovalTimeoutConfig`], and the record it
//! writes, [`ApprovalAlert`], on `PAYMENT.APPROVAL_TIMEOUT` (key = order id).
//!
//! It replaces a periodic batch search over an event index ("requested more than 5 minutes ago
//! and no completion since?") with state kept per partition:
//!
//! ```text
//!  APPROVAL_REQUESTED ──▶ approval-state: order id @ requested time = Pending   (+ due index)
//!  APPROVAL_COMPLETED / APPROVAL_FAILED ──▶ that entry (or one @ completion time) = Settled;
//!                                           alerted before? ──▶ RESOLVED record
//!  every check interval of stream time: due index entries older than timeout + grace
//!                                       ──▶ TIMEOUT record, approval-alerts
//! ```
//!
//! Time is event time: an alert fires when the partition's stream time passes
//! `requested_ts + timeout + grace`, so a replay after a crash raises the same alerts at the same
//! points, and an idle partition raises none until its next record. A `Settled` entry also
//! catches a completion that arrives before its request, and duplicate requests after it.
//!
//! Settling overwrites the entry instead of deleting it: a window store expires entries by
//! itself, and tombstones would slow down every later lookup near them. Finding what is due is a
//! time-ordered in-memory index of the pending requests (rebuilt from the store when the task
//! starts), so a check costs what it finds, not a scan of the store.
//!
//! Exactly one alert per order: [`APPROVAL_ALERTS_STORE`] remembers every alert raised, and is
//! committed in the same Kafka transaction as the alert record itself, so an order with an alert
//! in it is never alerted again, also after a crash or a failover.

use std::collections::BTreeMap;

use paystream_state::codec;
use paystream_state::window::oldest_retained;
use serde::{Deserialize, Serialize};

use crate::order::{parsed_event, EventType, OrderEvent};
use crate::processor::{ProcessError, Processor, ProcessorContext, PunctuationType, Record, Tally};
use crate::topology::StoreSpec;

/// Approvals seen: order id @ requested (or completion) time → [`ApprovalState`].
pub const APPROVAL_STATE_STORE: &str = "approval-state";
/// Alerts raised: order id @ requested time → the latest [`ApprovalAlert`] JSON
/// (a window store, so alerts are forgotten after `alert_retention_ms`, not kept forever).
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
    /// How long (event time) raised alerts are remembered: the exactly-once horizon, and how far
    /// back `GET /alerts` can list.
    pub alert_retention_ms: i64,
}

impl Default for ApprovalTimeoutConfig {
    fn default() -> Self {
        Self {
            topic: "PAYMENT.APPROVAL_TIMEOUT".into(),
            timeout_ms: 5 * 60_000,
            grace_ms: 10_000,
            check_interval_ms: 5_000,
            alert_retention_ms: 7 * 24 * 3_600_000,
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

/// What is kept for a pending request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub member_id: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
}

/// An entry of [`APPROVAL_STATE_STORE`] (postcard, through [`codec`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApprovalState {
    /// Requested, no completion yet.
    Pending(Pending),
    /// Completed or failed (by this event type).
    Settled(EventType),
}

/// The two stores of the detector for `config`.
pub fn approval_stores(config: &ApprovalTimeoutConfig) -> Vec<StoreSpec> {
    vec![
        StoreSpec::window(APPROVAL_STATE_STORE, config.retention_ms()),
        StoreSpec::window(APPROVAL_ALERTS_STORE, config.alert_retention_ms),
    ]
}

/// See the module documentation. Forwards every record unchanged.
pub struct ApprovalTimeoutProcessor {
    config: ApprovalTimeoutConfig,
    /// Requests at or before this time have been checked (`i64::MIN`: none yet, e.g. after a
    /// restart, when the first check looks at everything retained).
    checked_up_to: i64,
    /// Pending requests by (requested time, order id): what the checks walk. The flag says the
    /// entry was added by this processor (not rebuilt in `init`), so no alert can exist for it.
    due: BTreeMap<(i64, Vec<u8>), (Pending, bool)>,
}

impl ApprovalTimeoutProcessor {
    pub fn new(config: ApprovalTimeoutConfig) -> Self {
        Self {
            config,
            checked_up_to: i64::MIN,
            due: BTreeMap::new(),
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

    /// The alert raised for `order_id` (its latest state), looking around event time `around`.
    fn alert_of(
        &self,
        ctx: &mut ProcessorContext<'_>,
        order_id: &str,
        around: i64,
    ) -> Result<Option<ApprovalAlert>, ProcessError> {
        let r = self.config.alert_retention_ms;
        let found = ctx.window_store(APPROVAL_ALERTS_STORE)?.fetch(
            order_id.as_bytes(),
            around.saturating_sub(r),
            around.saturating_add(r),
        )?;
        let Some((_, bytes)) = found.last() else {
            return Ok(None);
        };
        serde_json::from_slice(bytes).map(Some).map_err(|e| {
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
        ctx.window_store(APPROVAL_ALERTS_STORE)?.put(
            alert.order_id.as_bytes(),
            alert.requested_ts,
            &bytes,
        )?;
        let status = match alert.status {
            AlertStatus::Timeout => "timeout",
            AlertStatus::Resolved => "resolved",
        };
        ctx.tally(Tally::ApprovalAlert { status });
        Ok(())
    }

    fn entries(
        ctx: &mut ProcessorContext<'_>,
        key: &[u8],
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, ApprovalState)>, ProcessError> {
        let raw = ctx
            .window_store(APPROVAL_STATE_STORE)?
            .fetch(key, from, to)?;
        raw.into_iter()
            .map(|(t, v)| {
                codec::decode(&v)
                    .map(|s| (t, s))
                    .map_err(|e| e.in_store(APPROVAL_STATE_STORE).into())
            })
            .collect()
    }

    fn put_state(
        ctx: &mut ProcessorContext<'_>,
        key: &[u8],
        ts: i64,
        state: &ApprovalState,
    ) -> Result<bool, ProcessError> {
        let value = codec::encode(state).map_err(|e| e.in_store(APPROVAL_STATE_STORE))?;
        Ok(ctx
            .window_store(APPROVAL_STATE_STORE)?
            .put(key, ts, &value)?)
    }

    /// Raise the alert for a pending request (unless the alert store already has one).
    ///
    /// The `approval-state` entry stays `Pending`; the alert store is what stops later checks
    /// (after a restart the due index is rebuilt from the pending entries) from alerting again.
    fn raise(
        &self,
        ctx: &mut ProcessorContext<'_>,
        order_id: String,
        requested_ts: i64,
        pending: Pending,
        stream_time: i64,
    ) -> Result<(), ProcessError> {
        if self.alert_of(ctx, &order_id, requested_ts)?.is_some() {
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
        self.checked_up_to = cutoff;
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > cutoff {
                break;
            }
            let ((requested_ts, key), (pending, _)) = entry.remove_entry();
            let order_id = String::from_utf8_lossy(&key).into_owned();
            self.raise(ctx, order_id, requested_ts, pending, stream_time)?;
        }
        Ok(())
    }

    fn requested(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        event: &OrderEvent,
        ts: i64,
    ) -> Result<(), ProcessError> {
        // A put this far ahead expires entries the last check has not looked at yet (stream
        // time jumped: an idle partition woke up, or a restart): check them first.
        if ts.saturating_sub(self.config.retention_ms()) > self.checked_up_to {
            let st = ctx.stream_time();
            self.check(ctx, st)?;
        }
        if self.alert_of(ctx, &event.order_id, ts)?.is_some() {
            return Ok(());
        }
        // One lookup finds a duplicate request (within the timeout of the first) and a
        // completion (after the request, up to the whole retention when late).
        let key = event.order_id.as_bytes();
        let due = self.due_after();
        let from = ts.saturating_sub(due);
        let to = ts.saturating_add(self.config.retention_ms());
        if !Self::entries(ctx, key, from, to)?.is_empty() {
            return Ok(());
        }
        let pending = Pending {
            member_id: event.member_id.clone(),
            amount: event.amount,
            currency: event.currency.clone(),
        };
        if !Self::put_state(ctx, key, ts, &ApprovalState::Pending(pending.clone()))? {
            ctx.record_late();
            return Ok(());
        }
        if ts <= self.checked_up_to {
            // Arrived after the check that would have covered it: overdue already.
            let st = ctx.stream_time();
            self.raise(ctx, event.order_id.clone(), ts, pending, st)?;
        } else {
            self.due.insert((ts, key.to_vec()), (pending, true));
        }
        Ok(())
    }

    fn settled(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        event: &OrderEvent,
        ts: i64,
    ) -> Result<(), ProcessError> {
        let key = event.order_id.as_bytes();
        let due = self.due_after();
        // A request older than the lookup below and not checked yet is overdue already: this
        // completion moved stream time past its deadline (nothing else came in between, or the
        // task restarted). Check first, so it is alerted now and resolved below, not alerted by
        // the next check, after its completion, and left open.
        if ts.saturating_sub(due) > self.checked_up_to {
            let st = ctx.stream_time();
            self.check(ctx, st)?;
        }
        // Requests older than `due` were checked already (alerted, or stopped by the alert store);
        // up to `due` after the completion too, as services' clocks are not perfectly in step.
        let found = Self::entries(ctx, key, ts.saturating_sub(due), ts.saturating_add(due))?;
        let settled = ApprovalState::Settled(event.event_type);
        let mut marked = false;
        // Completed while still waiting in this processor's index: no alert can exist, so the
        // alert-store lookup (a window read) is skipped for the common case.
        let mut unalerted = false;
        for (t, state) in found {
            match state {
                ApprovalState::Pending(_) => {
                    Self::put_state(ctx, key, t, &settled)?;
                    if let Some((_, fresh)) = self.due.remove(&(t, key.to_vec())) {
                        unalerted |= fresh;
                    }
                    marked = true;
                }
                ApprovalState::Settled(_) => marked = true,
            }
        }
        if !marked {
            let st = ctx.window_store(APPROVAL_STATE_STORE)?;
            if ts >= oldest_retained(st.observed_time(), st.retention_ms()) {
                Self::put_state(ctx, key, ts, &settled)?;
            }
        }
        if unalerted {
            return Ok(());
        }
        if let Some(alert) = self.alert_of(ctx, &event.order_id, ts)? {
            if alert.status == AlertStatus::Timeout {
                let resolved = ApprovalAlert {
                    status: AlertStatus::Resolved,
                    detected_at: ctx.stream_time(),
                    resolved_by: Some(event.event_type),
                    resolved_ts: Some(ts),
                    ..alert
                };
                self.emit(ctx, &resolved, ts)?;
            }
        }
        Ok(())
    }
}

impl Processor for ApprovalTimeoutProcessor {
    fn init(&mut self, ctx: &mut ProcessorContext<'_>) -> Result<(), ProcessError> {
        // Rebuild the due index from the (restored) store.
        let mut raw: Vec<(Vec<u8>, i64, Vec<u8>)> = Vec::new();
        ctx.window_store(APPROVAL_STATE_STORE)?
            .fetch_all(i64::MIN, i64::MAX, &mut |k, t, v| {
                raw.push((k.to_vec(), t, v.to_vec()));
                true
            })?;
        for (key, t, value) in raw {
            let state: ApprovalState =
                codec::decode(&value).map_err(|e| e.in_store(APPROVAL_STATE_STORE))?;
            if let ApprovalState::Pending(p) = state {
                self.due.insert((t, key), (p, false));
            }
        }
        ctx.schedule(PunctuationType::StreamTime, self.config.check_interval_ms)
    }

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: Record,
    ) -> Result<(), ProcessError> {
        if let Ok(event) = parsed_event(&record) {
            match event.event_type {
                // The task's one clock (the event's `ts`, or the Kafka timestamp).
                EventType::ApprovalRequested => self.requested(ctx, &event, record.timestamp)?,
                EventType::ApprovalCompleted | EventType::ApprovalFailed => {
                    self.settled(ctx, &event, record.timestamp)?
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
