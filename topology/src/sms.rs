//! The SMS notification topology: one SMS request per order event that deserves one, never two.
//!
//! Entry points: [`SmsProcessor`] (added to the shipped topology by [`crate::shipped`]),
//! [`SmsConfig`], and the records it writes: [`SmsRequest`] on `SEND_SMS`, [`SuppressedSms`] on
//! `SEND_SMS.SUPPRESSED`.
//!
//! ```text
//!  APPROVAL_COMPLETED / CANCELLED ─▶ late? ─▶ already sent or suppressed ─▶ phone over its cap? ─▶ SEND_SMS
//!                                     │        (dedup window stores)          │
//!                                     ▼                                        ▼
//!                                  dropped, counted                  SEND_SMS.SUPPRESSED (reason)
//! ```
//!
//! Three window stores, each with its own changelog:
//! - [`SMS_SENT_STORE`] and [`SMS_SUPPRESSED_STORE`]: keyed by (template, order id) at the event
//!   time, kept for the dedup window plus grace: what this application sent (or suppressed).
//! - [`SMS_RATE_STORE`]: SMS sent per phone at each event time, kept for the rate window plus
//!   grace. The cap counts the SMS of this partition's orders: a phone whose orders live in
//!   several partitions is capped per partition (a global cap would need a repartition by phone).
//!
//! Exactly once: the executor commits a record's SMS, the store entries that remember it and the
//! source offset in one Kafka transaction (`exactly_once_v2`), so after a crash or a failover
//! the replayed records find exactly the SMS that were committed. Nothing is ever read back from
//! `SEND_SMS`: other applications may write to it too.
//!
//! Lateness: an event more than `grace_ms` behind the dedup store's observed time could be a
//! duplicate of an SMS the store has already forgotten, so it is dropped and counted
//! ([`ProcessorContext::record_late`]) rather than risk a second SMS.

use paystream_state::window::oldest_retained;
use serde::{Deserialize, Serialize};

use crate::order::{parsed_event, EventType, OrderEvent};
use crate::processor::{ProcessError, Processor, ProcessorContext, Record, Tally};
use crate::topology::StoreSpec;

/// SMS sent: (template, order id) at event time → the request JSON.
pub const SMS_SENT_STORE: &str = "sms-sent";
/// SMS suppressed: (template, order id) at event time → the suppressed JSON.
pub const SMS_SUPPRESSED_STORE: &str = "sms-suppressed";
/// SMS sent per phone: phone at event time → count (u32, big-endian).
pub const SMS_RATE_STORE: &str = "sms-rate";

/// What the SMS topology does; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsConfig {
    /// Where SMS requests go.
    pub topic: String,
    /// Where requests over the per-phone cap (or without a phone) go, with the reason.
    pub suppressed_topic: String,
    /// The same SMS for the same order is never sent twice within this much event time.
    pub dedup_window_ms: i64,
    /// At most this many SMS per phone within `rate_window_ms`.
    pub rate_limit: u32,
    pub rate_window_ms: i64,
    /// How far behind the newest event an event may arrive and still be handled.
    pub grace_ms: i64,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            topic: "SEND_SMS".into(),
            suppressed_topic: "SEND_SMS.SUPPRESSED".into(),
            dedup_window_ms: 24 * 3_600_000,
            rate_limit: 5,
            rate_window_ms: 3_600_000,
            grace_ms: 3_600_000,
        }
    }
}

/// Every template [`template_for`] can return.
pub const TEMPLATES: [&str; 2] = ["payment_approved", "payment_cancelled"];

/// The SMS a given event type asks for, if any.
pub fn template_for(event_type: EventType) -> Option<&'static str> {
    match event_type {
        EventType::ApprovalCompleted => Some(TEMPLATES[0]),
        EventType::Cancelled => Some(TEMPLATES[1]),
        _ => None,
    }
}

/// A request on `SEND_SMS` (key = order id, record timestamp = `event_ts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsRequest {
    pub order_id: String,
    pub member_id: Option<String>,
    pub phone: Option<String>,
    pub template: String,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    /// Event time of the order event that asked for the SMS.
    pub event_ts: i64,
    /// The event that asked for it.
    pub event_id: String,
}

/// A request that was not sent, on `SEND_SMS.SUPPRESSED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressedSms {
    #[serde(flatten)]
    pub request: SmsRequest,
    /// `rate_limited` or `no_phone`.
    pub reason: String,
    pub detail: String,
}

/// Key of an SMS in the dedup stores (before the window encoding): `template/order_id`.
pub fn sms_key(template: &str, order_id: &str) -> Vec<u8> {
    format!("{template}/{order_id}").into_bytes()
}

/// The three stores of the SMS topology for `config`.
pub fn sms_stores(config: &SmsConfig) -> Vec<StoreSpec> {
    let dedup_retention = config.dedup_window_ms.saturating_add(config.grace_ms);
    vec![
        StoreSpec::window(SMS_SENT_STORE, dedup_retention),
        StoreSpec::window(SMS_SUPPRESSED_STORE, dedup_retention),
        StoreSpec::window(
            SMS_RATE_STORE,
            config.rate_window_ms.saturating_add(config.grace_ms),
        ),
    ]
}

/// Decides, per order event, whether an SMS goes out; see the module documentation. Forwards
/// every record unchanged, so later nodes see the same stream.
pub struct SmsProcessor {
    config: SmsConfig,
}

impl SmsProcessor {
    pub fn new(config: SmsConfig) -> Self {
        Self { config }
    }

    fn handle(
        &self,
        ctx: &mut ProcessorContext<'_>,
        event: &OrderEvent,
        template: &str,
        ts: i64,
    ) -> Result<(), ProcessError> {
        let c = &self.config;
        let key = sms_key(template, &event.order_id);
        let (lo, hi) = (
            ts.saturating_sub(c.dedup_window_ms),
            ts.saturating_add(c.dedup_window_ms),
        );
        for store in [SMS_SENT_STORE, SMS_SUPPRESSED_STORE] {
            let seen = ctx.window_store(store)?;
            let oldest = oldest_retained(seen.observed_time(), seen.retention_ms());
            if lo < oldest {
                tracing::debug!(order_id = %event.order_id, ts, oldest, "SMS event beyond grace; dropped");
                ctx.record_late();
                return Ok(());
            }
            if !seen.fetch(&key, lo, hi)?.is_empty() {
                return Ok(());
            }
        }
        let request = SmsRequest {
            order_id: event.order_id.clone(),
            member_id: event.member_id.clone(),
            phone: event.phone.clone(),
            template: template.to_owned(),
            amount: event.amount,
            currency: event.currency.clone(),
            event_ts: ts,
            event_id: event.event_id.clone(),
        };
        let Some(phone) = event.phone.as_deref().filter(|p| !p.is_empty()) else {
            return self.suppress(
                ctx,
                request,
                key,
                "no_phone",
                "the event has no phone number".into(),
            );
        };
        let rate = ctx.window_store(SMS_RATE_STORE)?;
        let window_start = ts.saturating_sub(c.rate_window_ms - 1);
        let mut sent: u64 = 0;
        let mut at_ts: u32 = 0;
        for (t, v) in rate.fetch(phone.as_bytes(), window_start, ts)? {
            let n = decode_count(&v);
            sent += u64::from(n);
            if t == ts {
                at_ts = n;
            }
        }
        if sent >= u64::from(c.rate_limit) {
            let detail = format!(
                "{sent} SMS to this phone in the last {} ms; the limit is {}",
                c.rate_window_ms, c.rate_limit
            );
            return self.suppress(ctx, request, key, "rate_limited", detail);
        }
        let bytes = to_json(&request)?;
        ctx.send(
            &c.topic,
            Record::new(event.order_id.as_bytes(), bytes.clone(), ts),
        )?;
        ctx.window_store(SMS_SENT_STORE)?.put(&key, ts, &bytes)?;
        ctx.window_store(SMS_RATE_STORE)?
            .put(phone.as_bytes(), ts, &(at_ts + 1).to_be_bytes())?;
        ctx.tally(Tally::SmsSent);
        Ok(())
    }

    fn suppress(
        &self,
        ctx: &mut ProcessorContext<'_>,
        request: SmsRequest,
        key: Vec<u8>,
        reason: &str,
        detail: String,
    ) -> Result<(), ProcessError> {
        let ts = request.event_ts;
        let order_id = request.order_id.clone();
        let bytes = to_json(&SuppressedSms {
            request,
            reason: reason.to_owned(),
            detail,
        })?;
        ctx.send(
            &self.config.suppressed_topic,
            Record::new(order_id.into_bytes(), bytes.clone(), ts),
        )?;
        ctx.window_store(SMS_SUPPRESSED_STORE)?
            .put(&key, ts, &bytes)?;
        ctx.tally(Tally::SmsSuppressed { reason });
        Ok(())
    }
}

fn decode_count(v: &[u8]) -> u32 {
    v.try_into().map(u32::from_be_bytes).unwrap_or(0)
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ProcessError> {
    serde_json::to_vec(value).map_err(|e| ProcessError::Other(format!("encode SMS record: {e}")))
}

impl Processor for SmsProcessor {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: Record,
    ) -> Result<(), ProcessError> {
        // Invalid records were dead-lettered upstream and never reach this node; a parse failure
        // here would only mean a node before us changed the record, so it is passed on.
        if let Ok(event) = parsed_event(&record) {
            if let Some(template) = template_for(event.event_type) {
                // The task's one clock (the event's `ts`, or the Kafka timestamp).
                self.handle(ctx, &event, template, record.timestamp)?;
            }
        }
        ctx.forward(record);
        Ok(())
    }
}
