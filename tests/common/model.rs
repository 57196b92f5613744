//! An independent model of what paystream must answer, written from the contracts in README.md
//! and the brief, NOT with the topology's own fold (`paystream_topology::order::apply`): if a
//! rule were implemented wrong there, comparing against it would hide the bug.
//!
//! Input is what was sent to `PAYMENT.ORDER` (key and JSON value, in send order: every event of
//! an order goes to one partition, so Kafka keeps their order); events are read with
//! `serde_json::Value`, not the topology's parser.
//!
//! The order rules, as a table of which event type may follow which state:
//!
//! | state \ next               | REQ | CB  | DONE | FAIL | CREQ | CNL |
//! |----------------------------|-----|-----|------|------|------|-----|
//! | APPROVAL_REQUESTED         | yes | yes | yes  | yes  | yes  | yes |
//! | APPROVAL_CALLBACK_COMPLETED| no  | yes | yes  | yes  | yes  | yes |
//! | APPROVAL_COMPLETED (final but for the cancel path) | no | no | no | no | yes | yes |
//! | APPROVAL_FAILED (final)    | no  | no  | no   | no   | no   | no  |
//! | CANCEL_REQUESTED           | no  | no  | no   | no   | yes  | yes |
//! | CANCELLED (final)          | no  | no  | no   | no   | no   | no  |
//!
//! An event whose `event_id` the order already applied changes nothing; the first event of an
//! order creates it whatever its type.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The view `GET /orders/{id}` must return (the `"order"` object), as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelView {
    pub state: String,
    pub amount: i64,
    pub currency: String,
    pub member_id: String,
    pub created_ts: i64,
    pub updated_ts: i64,
    pub events: u64,
    pub last_event_id: String,
    seen: BTreeSet<String>,
}

const TYPES: [&str; 6] = [
    "APPROVAL_REQUESTED",
    "APPROVAL_CALLBACK_COMPLETED",
    "APPROVAL_COMPLETED",
    "APPROVAL_FAILED",
    "CANCEL_REQUESTED",
    "CANCELLED",
];

/// The table above: may an order in `state` take an event of type `next`?
fn may_follow(state: &str, next: &str) -> bool {
    let row: [bool; 6] = match state {
        "APPROVAL_REQUESTED" => [true, true, true, true, true, true],
        "APPROVAL_CALLBACK_COMPLETED" => [false, true, true, true, true, true],
        "APPROVAL_COMPLETED" => [false, false, false, false, true, true],
        "CANCEL_REQUESTED" => [false, false, false, false, true, true],
        _ => [false; 6], // APPROVAL_FAILED, CANCELLED: final
    };
    TYPES
        .iter()
        .position(|t| *t == next)
        .is_some_and(|i| row[i])
}

/// A valid event as the contract defines it, or `None` (it belongs in the dead-letter topic).
fn event(key: Option<&str>, value: &str) -> Option<(String, String, String, Value)> {
    let v: Value = serde_json::from_str(value).ok()?;
    let order_id = v.get("order_id")?.as_str()?.to_owned();
    let event_id = v.get("event_id")?.as_str()?.to_owned();
    let kind = v.get("type")?.as_str()?.to_owned();
    v.get("ts")?.as_i64()?;
    if key? != order_id
        || order_id.is_empty()
        || event_id.is_empty()
        || !TYPES.contains(&kind.as_str())
    {
        return None;
    }
    Some((order_id, event_id, kind, v))
}

/// Every order's expected view after all `sent` records (key, JSON value) were processed.
pub fn order_views(sent: &[(Option<String>, String)]) -> BTreeMap<String, ModelView> {
    let mut views: BTreeMap<String, ModelView> = BTreeMap::new();
    for (key, value) in sent {
        let Some((order_id, event_id, kind, v)) = event(key.as_deref(), value) else {
            continue;
        };
        let ts = v["ts"].as_i64().unwrap_or_default();
        let text = |f: &str| v.get(f).and_then(Value::as_str).map(str::to_owned);
        let amount = v.get("amount").and_then(Value::as_i64);
        match views.get_mut(&order_id) {
            None => {
                views.insert(
                    order_id,
                    ModelView {
                        state: kind,
                        amount: amount.unwrap_or(0),
                        currency: text("currency").unwrap_or_default(),
                        member_id: text("member_id").unwrap_or_default(),
                        created_ts: ts,
                        updated_ts: ts,
                        events: 1,
                        last_event_id: event_id.clone(),
                        seen: BTreeSet::from([event_id]),
                    },
                );
            }
            Some(o) => {
                if o.seen.contains(&event_id) || !may_follow(&o.state, &kind) {
                    continue;
                }
                o.state = kind;
                o.events += 1;
                o.created_ts = o.created_ts.min(ts);
                o.updated_ts = o.updated_ts.max(ts);
                o.last_event_id = event_id.clone();
                o.seen.insert(event_id);
                if let Some(a) = amount {
                    o.amount = a;
                }
                if let Some(c) = text("currency") {
                    o.currency = c;
                }
                if let Some(m) = text("member_id") {
                    o.member_id = m;
                }
            }
        }
    }
    views
}

/// Whether the `"order"` object of a `GET /orders/{id}` answer equals the model's view.
pub fn view_matches(answer: &Value, want: &ModelView) -> bool {
    answer["state"] == want.state.as_str()
        && answer["amount"].as_i64() == Some(want.amount)
        && answer["currency"] == want.currency.as_str()
        && answer["member_id"] == want.member_id.as_str()
        && answer["created_ts"].as_i64() == Some(want.created_ts)
        && answer["updated_ts"].as_i64() == Some(want.updated_ts)
        && answer["events"].as_u64() == Some(want.events)
        && answer["last_event_id"] == want.last_event_id.as_str()
}

/// The SMS the contract asks for: (order id, template) for every order that had a valid
/// `APPROVAL_COMPLETED` (`payment_approved`) or `CANCELLED` (`payment_cancelled`) event.
pub fn expected_sms(sent: &[(Option<String>, String)]) -> BTreeSet<(String, String)> {
    sent.iter()
        .filter_map(|(k, v)| event(k.as_deref(), v))
        .filter_map(|(order, _, kind, _)| match kind.as_str() {
            "APPROVAL_COMPLETED" => Some((order, "payment_approved".to_owned())),
            "CANCELLED" => Some((order, "payment_cancelled".to_owned())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(order: &str, id: &str, kind: &str, ts: i64) -> (Option<String>, String) {
        (
            Some(order.to_owned()),
            format!(
                r#"{{"order_id":"{order}","event_id":"{id}","type":"{kind}","amount":5,"ts":{ts}}}"#
            ),
        )
    }

    #[test]
    fn the_table_rules_hold() {
        let sent = vec![
            ev("A", "1", "APPROVAL_CALLBACK_COMPLETED", 5),
            ev("A", "2", "APPROVAL_REQUESTED", 1), // moves back: ignored
            ev("A", "3", "APPROVAL_COMPLETED", 9),
            ev("A", "3", "APPROVAL_COMPLETED", 9), // duplicate
            ev("A", "4", "CANCELLED", 12),
            ev("A", "5", "CANCEL_REQUESTED", 13), // final: ignored
            (Some("B".into()), "not json".into()),
        ];
        let v = order_views(&sent);
        let a = &v["A"];
        assert_eq!((a.state.as_str(), a.events), ("CANCELLED", 3));
        assert_eq!((a.created_ts, a.updated_ts), (5, 12));
        assert!(!v.contains_key("B"));
        assert_eq!(expected_sms(&sent).len(), 2);
    }
}
