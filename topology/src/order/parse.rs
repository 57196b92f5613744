//! Reading a `PAYMENT.ORDER` record: [`parse_event`] (bytes → [`OrderEvent`] or the
//! dead-letter reason), [`parsed_event`] (the event a node before already parsed) and the
//! event-time extractor [`EventTime`]. The plain event shape goes through `fast_json`, anything
//! else through serde_json.

use std::sync::Arc;

use serde::Deserialize;
use thiserror::Error;

use super::{fast_json, EventType, OrderEvent};
use crate::processor::{Decoded, Record};
use crate::time::{Rejected, TimestampExtractor};

/// Why a record is not a valid order event. `reason` is a stable code (a metric label and the
/// dead-letter header), `detail` is for humans.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{reason}: {detail}")]
pub struct InvalidEvent {
    pub reason: &'static str,
    pub detail: String,
}

impl InvalidEvent {
    /// Every `reason` [`parse_event`] can return.
    pub const REASONS: [&'static str; 10] = [
        "missing_key",
        "missing_value",
        "record_too_large",
        "invalid_utf8_key",
        "invalid_json",
        "unknown_type",
        "missing_field",
        "key_mismatch",
        "empty_id",
        "field_too_long",
    ];

    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// The fields an event cannot do without (`null` counts as missing).
const REQUIRED_FIELDS: [&str; 4] = ["order_id", "event_id", "type", "ts"];

/// Longest `order_id` and `event_id` accepted, in bytes (the same bound the query API puts on
/// order ids). A stored order keeps up to [`SEEN_CAPACITY`](super::SEEN_CAPACITY) event ids, so this bound is what
/// keeps a stored value, and its changelog record, far below Kafka's 1 MB record limit.
pub const MAX_ID_BYTES: usize = 256;
/// Longest `currency`, `member_id` and `phone` accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;
/// Largest record value accepted, in bytes: an order event is a few hundred bytes; anything this
/// large is a buggy producer, refused before it is even parsed.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Decode and check one `PAYMENT.ORDER` record (key = order id as UTF-8, value = JSON).
///
/// Checks run in this order, and the first failure is the reason: `missing_key`,
/// `missing_value`, `record_too_large` (value over [`MAX_EVENT_BYTES`]), `invalid_utf8_key`,
/// `invalid_json` (not JSON, not an object, or a field of the wrong JSON type; detail = the serde
/// error), `missing_field` (detail = the field), `unknown_type` (detail names the type),
/// `empty_id` (empty `order_id` or `event_id`), `field_too_long` (an id over [`MAX_ID_BYTES`] or
/// a text field over [`MAX_TEXT_BYTES`]; detail names the field), `key_mismatch` (key differs
/// from `order_id`: the record would sit in the wrong partition).
pub fn parse_event(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<OrderEvent, InvalidEvent> {
    let key = key.ok_or_else(|| InvalidEvent::new("missing_key", "record has no key"))?;
    let value = value
        .ok_or_else(|| InvalidEvent::new("missing_value", "record has no value (a tombstone)"))?;
    if value.len() > MAX_EVENT_BYTES {
        return Err(InvalidEvent::new(
            "record_too_large",
            format!(
                "value is {} bytes; at most {MAX_EVENT_BYTES} are accepted",
                value.len()
            ),
        ));
    }
    let key = std::str::from_utf8(key)
        .map_err(|e| InvalidEvent::new("invalid_utf8_key", format!("key is not utf-8: {e}")))?;

    // Fastest path: the plain shape producers write (see `fast_json`); anything else goes
    // straight into the struct through serde_json (one pass, no intermediate tree). Only a record
    // that fails that goes through `Value`, so that a missing field or an unknown type gets its
    // own reason instead of serde's generic message.
    let event: OrderEvent = match fast_json::parse_plain(value) {
        Some(e) => e,
        None => match serde_json::from_slice(value) {
            Ok(e) => e,
            Err(direct) => return Err(classify_invalid(value, direct)),
        },
    };
    if event.order_id.is_empty() {
        return Err(InvalidEvent::new("empty_id", "order_id is empty"));
    }
    if event.event_id.is_empty() {
        return Err(InvalidEvent::new("empty_id", "event_id is empty"));
    }
    check_lengths(&event)?;
    if key != event.order_id {
        return Err(InvalidEvent::new(
            "key_mismatch",
            format!(
                "record key {key:?} differs from order_id {:?}",
                event.order_id
            ),
        ));
    }
    Ok(event)
}

/// [`parse_event`] of a record, or the event a node before already parsed from it (the order
/// view attaches it for the windowed nodes after it: one parse per record, not one per node).
pub fn parsed_event(record: &Record) -> Result<Arc<OrderEvent>, InvalidEvent> {
    if let Some(event) = record.decoded.get::<OrderEvent>() {
        return Ok(event);
    }
    parse_event(record.key.as_deref(), record.value.as_deref()).map(Arc::new)
}

/// `field_too_long` for the first field over its bound.
fn check_lengths(event: &OrderEvent) -> Result<(), InvalidEvent> {
    let fields = [
        ("order_id", Some(&event.order_id), MAX_ID_BYTES),
        ("event_id", Some(&event.event_id), MAX_ID_BYTES),
        ("currency", event.currency.as_ref(), MAX_TEXT_BYTES),
        ("member_id", event.member_id.as_ref(), MAX_TEXT_BYTES),
        ("phone", event.phone.as_ref(), MAX_TEXT_BYTES),
    ];
    for (name, value, max) in fields {
        let len = value.map_or(0, String::len);
        if len > max {
            return Err(InvalidEvent::new(
                "field_too_long",
                format!("{name} is {len} bytes; at most {max} are accepted"),
            ));
        }
    }
    Ok(())
}

/// The time of an order event: its JSON `ts` (`--timestamp-source event`).
///
/// Reads `ts` alone (the other fields are skipped unparsed). A record without a readable `ts` is
/// refused with the reason [`parse_event`] gives it, so the dead-letter topic says the same
/// thing whichever check saw the record first.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventTime;

impl TimestampExtractor for EventTime {
    fn extract(&self, record: &Record) -> Result<i64, Rejected> {
        #[derive(Deserialize)]
        struct Ts {
            ts: i64,
        }
        if let Some(Ok(t)) = record
            .value
            .as_deref()
            .filter(|v| v.len() <= MAX_EVENT_BYTES)
            .map(serde_json::from_slice::<Ts>)
        {
            return Ok(t.ts);
        }
        match parse_event(record.key.as_deref(), record.value.as_deref()) {
            Err(invalid) => Err(Rejected::new(invalid.reason, invalid.detail)),
            Ok(event) => Ok(event.ts),
        }
    }

    /// Parses the whole event (one parse per record: the order view reuses it). A record that is
    /// not a valid event but has a readable `ts` still gets that time, as with `extract`, and the
    /// order view dead-letters it with its own reason.
    fn extract_and_decode(&self, record: &mut Record) -> Result<i64, Rejected> {
        match parse_event(record.key.as_deref(), record.value.as_deref()) {
            Ok(event) => {
                let ts = event.ts;
                record.decoded = Decoded::of(Arc::new(event));
                Ok(ts)
            }
            Err(_) => self.extract(record),
        }
    }
}

/// Why `value` is not a valid event (called only after the direct parse failed).
fn classify_invalid(value: &[u8], direct: serde_json::Error) -> InvalidEvent {
    let json: serde_json::Value = match serde_json::from_slice(value) {
        Ok(j) => j,
        Err(e) => return InvalidEvent::new("invalid_json", e.to_string()),
    };
    let Some(object) = json.as_object() else {
        return InvalidEvent::new(
            "invalid_json",
            format!("expected a json object, got {}", json_kind(&json)),
        );
    };
    for field in REQUIRED_FIELDS {
        if object.get(field).is_none_or(serde_json::Value::is_null) {
            return InvalidEvent::new(
                "missing_field",
                format!("required field {field:?} is missing"),
            );
        }
    }
    if let Some(serde_json::Value::String(t)) = object.get("type") {
        if let Err(e) = t.parse::<EventType>() {
            return InvalidEvent::new("unknown_type", e.to_string());
        }
    }
    InvalidEvent::new("invalid_json", direct.to_string())
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
