//! The drill's own statement of what paystream must answer: every view an order can have and
//! every SMS it must cause, computed from the records the drill sent.
//!
//! Written apart from the topology on purpose: it reads the records as JSON (never through
//! `parse_event`), folds them with its own transition table (never `apply` or `fold_events`),
//! and builds the expected answer as the JSON the HTTP API must return. A rule bug in the
//! processor then shows up as a disagreement instead of being copied into the expectation.
//!
//! The rules, as the brief states them:
//! - the first event of an order creates its view, whatever its type;
//! - an event whose `event_id` was applied before changes nothing;
//! - `APPROVAL_FAILED` and `CANCELLED` are final; `APPROVAL_COMPLETED` is final except for
//!   `CANCEL_REQUESTED` and `CANCELLED`;
//! - otherwise an event applies unless it moves the order back in its lifecycle
//!   (requested < callback completed < completed = failed < cancel requested < cancelled);
//! - applying sets `state`, counts `events`, sets `last_event_id`, widens
//!   `created_ts`/`updated_ts`, and overwrites `amount`, `currency`, `member_id` when the event
//!   carries them.
//! - SMS: every `APPROVAL_COMPLETED` event asks for `payment_approved`, every `CANCELLED` event
//!   for `payment_cancelled`; per order and template exactly one goes to `SEND_SMS` or, when
//!   refused (rate cap, no phone), to the suppressed topic.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::{json, Value};

/// (from, to) pairs that apply to an order already in `from`; anything else is ignored.
const ALLOWED: &[(&str, &str)] = &[
    ("APPROVAL_REQUESTED", "APPROVAL_REQUESTED"),
    ("APPROVAL_REQUESTED", "APPROVAL_CALLBACK_COMPLETED"),
    ("APPROVAL_REQUESTED", "APPROVAL_COMPLETED"),
    ("APPROVAL_REQUESTED", "APPROVAL_FAILED"),
    ("APPROVAL_REQUESTED", "CANCEL_REQUESTED"),
    ("APPROVAL_REQUESTED", "CANCELLED"),
    ("APPROVAL_CALLBACK_COMPLETED", "APPROVAL_CALLBACK_COMPLETED"),
    ("APPROVAL_CALLBACK_COMPLETED", "APPROVAL_COMPLETED"),
    ("APPROVAL_CALLBACK_COMPLETED", "APPROVAL_FAILED"),
    ("APPROVAL_CALLBACK_COMPLETED", "CANCEL_REQUESTED"),
    ("APPROVAL_CALLBACK_COMPLETED", "CANCELLED"),
    ("APPROVAL_COMPLETED", "CANCEL_REQUESTED"),
    ("APPROVAL_COMPLETED", "CANCELLED"),
    ("CANCEL_REQUESTED", "CANCEL_REQUESTED"),
    ("CANCEL_REQUESTED", "CANCELLED"),
];

/// The SMS template an event type asks for.
fn sms_template(event_type: &str) -> Option<&'static str> {
    match event_type {
        "APPROVAL_COMPLETED" => Some("payment_approved"),
        "CANCELLED" => Some("payment_cancelled"),
        _ => None,
    }
}

/// One order's view as the model keeps it.
#[derive(Debug, Clone)]
struct View {
    order_id: String,
    state: String,
    amount: i64,
    currency: String,
    member_id: String,
    created_ts: i64,
    updated_ts: i64,
    events: u64,
    last_event_id: String,
    applied: HashSet<String>,
}

impl View {
    /// The `order` object of `GET /orders/{id}`.
    fn to_json(&self) -> Value {
        json!({
            "order_id": self.order_id,
            "state": self.state,
            "amount": self.amount,
            "currency": self.currency,
            "member_id": self.member_id,
            "created_ts": self.created_ts,
            "updated_ts": self.updated_ts,
            "events": self.events,
            "last_event_id": self.last_event_id,
        })
    }
}

/// A valid order event as the model reads it from the record's JSON.
#[derive(Debug, Clone)]
pub struct Event {
    pub order_id: String,
    event_id: String,
    event_type: String,
    ts: i64,
    amount: Option<i64>,
    currency: Option<String>,
    member_id: Option<String>,
}

impl Event {
    /// Read a record; `None` when it is not a valid order event (it must be dead-lettered and
    /// changes no view): no key, a key other than its `order_id`, not JSON, an empty id, a
    /// missing field or an unknown type.
    pub fn from_record(key: Option<&str>, value: &str) -> Option<Event> {
        let v: Value = serde_json::from_str(value).ok()?;
        let order_id = v.get("order_id").and_then(Value::as_str)?;
        if key != Some(order_id) || order_id.is_empty() {
            return None;
        }
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let event_type = text("type")?;
        let known = ALLOWED.iter().any(|(from, _)| *from == event_type)
            || ["APPROVAL_FAILED", "CANCELLED"].contains(&event_type.as_str());
        Some(Event {
            order_id: order_id.to_owned(),
            event_id: text("event_id").filter(|id| !id.is_empty())?,
            ts: v.get("ts")?.as_i64()?,
            amount: v.get("amount").and_then(Value::as_i64),
            currency: text("currency"),
            member_id: text("member_id"),
            event_type: known.then_some(event_type)?,
        })
    }

    pub fn sms_template(&self) -> Option<&'static str> {
        sms_template(&self.event_type)
    }
}

fn fold(view: Option<&View>, e: &Event) -> Option<View> {
    let Some(v) = view else {
        return Some(View {
            order_id: e.order_id.clone(),
            state: e.event_type.clone(),
            amount: e.amount.unwrap_or(0),
            currency: e.currency.clone().unwrap_or_default(),
            member_id: e.member_id.clone().unwrap_or_default(),
            created_ts: e.ts,
            updated_ts: e.ts,
            events: 1,
            last_event_id: e.event_id.clone(),
            applied: HashSet::from([e.event_id.clone()]),
        });
    };
    if v.applied.contains(&e.event_id)
        || !ALLOWED.contains(&(v.state.as_str(), e.event_type.as_str()))
    {
        return None;
    }
    let mut next = v.clone();
    next.state.clone_from(&e.event_type);
    next.events += 1;
    next.last_event_id.clone_from(&e.event_id);
    next.created_ts = next.created_ts.min(e.ts);
    next.updated_ts = next.updated_ts.max(e.ts);
    if let Some(a) = e.amount {
        next.amount = a;
    }
    if let Some(c) = &e.currency {
        next.currency.clone_from(c);
    }
    if let Some(m) = &e.member_id {
        next.member_id.clone_from(m);
    }
    next.applied.insert(e.event_id.clone());
    Some(next)
}

/// Every view one order passes through: `views[k]` is the answer after its first `k` events
/// (`views[0]` = not found).
#[derive(Debug, Clone, Default)]
pub struct History {
    pub views: Vec<Option<Value>>,
}

impl History {
    /// The views after each prefix of `events` (one order's events, in the order sent).
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> History {
        let mut views = vec![None];
        let mut current: Option<View> = None;
        for e in events {
            if let Some(next) = fold(current.as_ref(), e) {
                current = Some(next);
            }
            views.push(current.as_ref().map(View::to_json));
        }
        History { views }
    }

    /// The final view.
    pub fn last(&self) -> Option<&Value> {
        self.views.last().and_then(Option::as_ref)
    }
}

/// Each order's events, in the order `records` (key, value) hold them.
pub fn events_by_order<'a>(
    records: impl IntoIterator<Item = (Option<&'a str>, &'a str)>,
) -> BTreeMap<String, Vec<Event>> {
    let mut per_order: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for (key, value) in records {
        if let Some(e) = Event::from_record(key, value) {
            per_order.entry(e.order_id.clone()).or_default().push(e);
        }
    }
    per_order
}

/// Every order's final answer after `records` (key, value), in send order.
pub fn final_views<'a>(
    records: impl IntoIterator<Item = (Option<&'a str>, &'a str)>,
) -> BTreeMap<String, Option<Value>> {
    events_by_order(records)
        .into_iter()
        .map(|(id, events)| (id, History::of(&events).last().cloned()))
        .collect()
}

/// The SMS (order id, template) pairs `events` must cause, each exactly once.
pub fn expected_sms<'a>(events: impl IntoIterator<Item = &'a Event>) -> BTreeSet<(String, String)> {
    events
        .into_iter()
        .filter_map(|e| e.sms_template().map(|t| (e.order_id.clone(), t.to_owned())))
        .collect()
}

/// What `SEND_SMS` and its suppressed topic held against what the model expects.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SmsAudit {
    pub expected: usize,
    /// Pairs sent (or suppressed) more than once: the extra copies.
    pub duplicates: usize,
    /// Pairs expected and found in neither topic.
    pub missing: usize,
    /// Pairs found that no event asked for.
    pub unexpected: usize,
    pub examples: Vec<String>,
}

impl SmsAudit {
    /// Compare `found` (pair → copies across both topics) with `expected`.
    pub fn compare(
        expected: &BTreeSet<(String, String)>,
        found: &BTreeMap<(String, String), usize>,
    ) -> SmsAudit {
        let mut audit = SmsAudit {
            expected: expected.len(),
            ..Default::default()
        };
        let note = |audit: &mut SmsAudit, s: String| {
            if audit.examples.len() < 10 {
                audit.examples.push(s);
            }
        };
        for pair in expected {
            if !found.contains_key(pair) {
                audit.missing += 1;
                note(&mut audit, format!("never sent: {} {}", pair.0, pair.1));
            }
        }
        for (pair, n) in found {
            if !expected.contains(pair) {
                audit.unexpected += 1;
                note(&mut audit, format!("not asked for: {} {}", pair.0, pair.1));
            } else if *n > 1 {
                audit.duplicates += n - 1;
                note(&mut audit, format!("sent {n} times: {} {}", pair.0, pair.1));
            }
        }
        audit
    }

    pub fn passed(&self) -> bool {
        self.duplicates == 0 && self.missing == 0 && self.unexpected == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, t: &str, ts: i64) -> Event {
        Event::from_record(
            Some("O-1"),
            &json!({"order_id": "O-1", "event_id": id, "type": t, "ts": ts, "amount": 500})
                .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn a_history_lists_the_view_after_every_prefix() {
        let es = [
            ev("e1", "APPROVAL_REQUESTED", 10),
            ev("e1", "APPROVAL_REQUESTED", 10),
            ev("e3", "APPROVAL_COMPLETED", 30),
            ev("e2", "APPROVAL_CALLBACK_COMPLETED", 20),
            ev("e4", "CANCELLED", 40),
            ev("e5", "CANCEL_REQUESTED", 50),
        ];
        let h = History::of(&es);
        assert_eq!(h.views.len(), 7);
        assert!(h.views[0].is_none());
        assert_eq!(h.views[1], h.views[2], "a duplicate changes nothing");
        let v3 = h.views[3].as_ref().unwrap();
        assert_eq!(v3["state"], "APPROVAL_COMPLETED");
        assert_eq!(v3["events"], 2);
        assert_eq!(h.views[4], h.views[3], "a late callback is stale");
        let v5 = h.views[5].as_ref().unwrap();
        assert_eq!(v5["state"], "CANCELLED");
        assert_eq!(v5["created_ts"], 10);
        assert_eq!(v5["updated_ts"], 40);
        assert_eq!(h.views[6], h.views[5], "cancelled is final");
    }

    #[test]
    fn invalid_records_are_not_events() {
        let ok = r#"{"order_id":"O","event_id":"e","type":"CANCELLED","ts":1}"#;
        assert!(Event::from_record(Some("O"), ok).is_some());
        assert!(Event::from_record(None, ok).is_none());
        assert!(Event::from_record(Some("P"), ok).is_none());
        assert!(Event::from_record(Some("O"), "{").is_none());
        let bad_type = r#"{"order_id":"O","event_id":"e","type":"NOPE","ts":1}"#;
        assert!(Event::from_record(Some("O"), bad_type).is_none());
        let no_ts = r#"{"order_id":"O","event_id":"e","type":"CANCELLED"}"#;
        assert!(Event::from_record(Some("O"), no_ts).is_none());
    }

    #[test]
    fn the_sms_audit_counts_duplicates_missing_and_unexpected() {
        let pair = |o: &str, t: &str| (o.to_owned(), t.to_owned());
        let expected =
            BTreeSet::from([pair("A", "payment_approved"), pair("B", "payment_approved")]);
        let found = BTreeMap::from([
            (pair("A", "payment_approved"), 2),
            (pair("C", "payment_cancelled"), 1),
        ]);
        let a = SmsAudit::compare(&expected, &found);
        assert_eq!((a.duplicates, a.missing, a.unexpected), (1, 1, 1));
        assert!(!a.passed());
    }
}
