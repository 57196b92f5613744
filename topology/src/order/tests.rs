//! Unit tests of the order rules: `parse_event` and `apply` as pure functions. The topology itself
//! is tested through `TestDriver` in `tests/order_view.rs`, with property tests tying both together.

use super::*;
use EventType::*;

fn ev(order: &str, id: &str, t: EventType, ts: i64) -> OrderEvent {
    OrderEvent {
        order_id: order.into(),
        event_id: id.into(),
        event_type: t,
        amount: None,
        currency: None,
        member_id: None,
        phone: None,
        ts,
    }
}

fn json(e: &OrderEvent) -> Vec<u8> {
    serde_json::to_vec(e).unwrap()
}

fn updated(a: Applied) -> StoredOrder {
    match a {
        Applied::Updated(s) => s,
        other => panic!("expected Updated, got {other:?}"),
    }
}

fn fold(events: &[OrderEvent]) -> StoredOrder {
    fold_events(events).unwrap()
}

// ---------------------------------------------------------------- event types and parsing

#[test]
fn event_type_names_round_trip() {
    for t in EventType::ALL {
        assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
        assert_eq!(t.to_string(), t.as_str());
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        assert_eq!(
            serde_json::from_str::<EventType>(&format!("\"{t}\"")).unwrap(),
            t
        );
    }
    assert_eq!(
        "approval_requested".parse::<EventType>(),
        Err(UnknownEventType("approval_requested".into()))
    );
}

#[test]
fn parses_the_contract_example() {
    let value = br#"{"order_id":"O-000123","event_id":"6f1c","type":"APPROVAL_REQUESTED",
        "amount":12000,"currency":"KRW","member_id":"M-42","phone":"+821012345678",
        "ts":1764000000000}"#;
    let e = parse_event(Some(b"O-000123"), Some(value)).unwrap();
    assert_eq!(
        e,
        OrderEvent {
            amount: Some(12000),
            currency: Some("KRW".into()),
            member_id: Some("M-42".into()),
            phone: Some("+821012345678".into()),
            ..ev("O-000123", "6f1c", ApprovalRequested, 1_764_000_000_000)
        }
    );
}

#[test]
fn optional_fields_may_be_absent_or_null_and_unknown_fields_are_ignored() {
    let v = br#"{"order_id":"O","event_id":"e","type":"CANCELLED","ts":5,"amount":null,"new":1}"#;
    assert_eq!(
        parse_event(Some(b"O"), Some(v)).unwrap(),
        ev("O", "e", Cancelled, 5)
    );
    // and serializing skips what is None
    assert_eq!(
        String::from_utf8(json(&ev("O", "e", Cancelled, 5))).unwrap(),
        r#"{"order_id":"O","event_id":"e","type":"CANCELLED","ts":5}"#
    );
}

#[test]
fn each_malformed_input_has_its_reason() {
    let ok = br#"{"order_id":"O","event_id":"e","type":"CANCELLED","ts":5}"#.as_slice();
    // (key, value, expected reason, text the detail must contain)
    type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, &'a str, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (None, Some(ok), "missing_key", "no key"),
        (Some(b"O"), None, "missing_value", "no value"),
        (Some(b"\xff"), Some(ok), "invalid_utf8_key", "utf-8"),
        (Some(b"O"), Some(b"{not json"), "invalid_json", "line 1"),
        (Some(b"O"), Some(b"[1,2]"), "invalid_json", "an array"),
        (
            Some(b"O"),
            Some(br#"{"order_id":"O","event_id":"e","type":"CANCELLED","ts":"5"}"#),
            "invalid_json",
            "invalid type",
        ),
        (
            Some(b"O"),
            Some(br#"{"order_id":"O","event_id":"e","type":"CANCELLED","ts":5,"amount":1.5}"#),
            "invalid_json",
            "",
        ),
        (
            Some(b"O"),
            Some(br#"{"order_id":"O","event_id":"e","type":7,"ts":5}"#),
            "invalid_json",
            "",
        ),
        (
            Some(b"O"),
            Some(br#"{"order_id":"O","event_id":"e","type":"REFUNDED","ts":5}"#),
            "unknown_type",
            "\"REFUNDED\"",
        ),
        (
            Some(b"O"),
            Some(br#"{"order_id":"O","event_id":"e","type":"CANCELLED"}"#),
            "missing_field",
            "\"ts\"",
        ),
        (
            Some(b"O"),
            Some(br#"{"order_id":"O","event_id":null,"type":"CANCELLED","ts":5}"#),
            "missing_field",
            "\"event_id\"",
        ),
        (
            Some(b"O"),
            Some(br#"{"event_id":"e","type":"CANCELLED","ts":5}"#),
            "missing_field",
            "\"order_id\"",
        ),
        (
            Some(b"O"),
            Some(br#"{"order_id":"O","event_id":"e","ts":5}"#),
            "missing_field",
            "\"type\"",
        ),
        (Some(b"P"), Some(ok), "key_mismatch", "\"P\""),
        (
            Some(b""),
            Some(br#"{"order_id":"","event_id":"e","type":"CANCELLED","ts":5}"#),
            "empty_id",
            "order_id",
        ),
        (
            Some(b"O"),
            Some(br#"{"order_id":"O","event_id":"","type":"CANCELLED","ts":5}"#),
            "empty_id",
            "event_id",
        ),
    ];
    for (key, value, reason, detail) in cases {
        let err = parse_event(key, value).unwrap_err();
        assert_eq!(
            err.reason,
            reason,
            "{:?} -> {err}",
            value.map(String::from_utf8_lossy)
        );
        assert!(err.detail.contains(detail), "{err}");
        assert!(InvalidEvent::REASONS.contains(&err.reason));
    }
}

#[test]
fn oversized_records_and_fields_are_refused_before_anything_is_stored() {
    let long = |n: usize| "x".repeat(n);
    let event = |order: &str, id: &str, extra: &str| {
        format!(r#"{{"order_id":"{order}","event_id":"{id}","type":"CANCELLED","ts":5{extra}}}"#)
    };
    // At the bounds: accepted.
    let at_bound = long(MAX_ID_BYTES);
    let ok = event(
        &at_bound,
        &at_bound,
        &format!(r#","phone":"{}""#, long(MAX_TEXT_BYTES)),
    );
    assert!(parse_event(Some(at_bound.as_bytes()), Some(ok.as_bytes())).is_ok());
    // One byte over, field by field.
    let over = long(MAX_ID_BYTES + 1);
    let text_over = long(MAX_TEXT_BYTES + 1);
    let cases = [
        (over.clone(), event(&over, "e", ""), "order_id"),
        ("O".to_owned(), event("O", &over, ""), "event_id"),
        (
            "O".to_owned(),
            event("O", "e", &format!(r#","currency":"{text_over}""#)),
            "currency",
        ),
        (
            "O".to_owned(),
            event("O", "e", &format!(r#","member_id":"{text_over}""#)),
            "member_id",
        ),
        (
            "O".to_owned(),
            event("O", "e", &format!(r#","phone":"{text_over}""#)),
            "phone",
        ),
    ];
    for (key, value, field) in cases {
        let err = parse_event(Some(key.as_bytes()), Some(value.as_bytes())).unwrap_err();
        assert_eq!(err.reason, "field_too_long", "{field}: {err}");
        assert!(err.detail.contains(field), "{err}");
    }
    // The issue's 600 kB event id: the whole record is refused unparsed.
    let huge = event("O", &long(600 * 1024), "");
    let err = parse_event(Some(b"O"), Some(huge.as_bytes())).unwrap_err();
    assert_eq!(err.reason, "record_too_large");
    for reason in ["field_too_long", "record_too_large"] {
        assert!(InvalidEvent::REASONS.contains(&reason));
    }
}

#[test]
fn event_time_is_the_json_ts_and_a_record_without_one_gets_the_parse_reason() {
    use crate::time::TimestampExtractor;
    let record = |key: &[u8], value: &[u8]| Record::new(key.to_vec(), value.to_vec(), 99);
    let good = json(&ev("O", "e", EventType::Cancelled, 1_234));
    assert_eq!(EventTime.extract(&record(b"O", &good)), Ok(1_234));
    for (value, reason) in [
        (&b"not json"[..], "invalid_json"),
        (
            br#"{"order_id":"O","event_id":"e","type":"CANCELLED"}"#,
            "missing_field",
        ),
        (
            br#"{"order_id":"O","event_id":"e","type":"CANCELLED","ts":"soon"}"#,
            "invalid_json",
        ),
    ] {
        let refused = EventTime.extract(&record(b"O", value)).unwrap_err();
        assert_eq!(refused.reason, reason, "{}", String::from_utf8_lossy(value));
    }
    let huge = vec![b' '; MAX_EVENT_BYTES + 1];
    assert_eq!(
        EventTime.extract(&record(b"O", &huge)).unwrap_err().reason,
        "record_too_large"
    );
}

// ---------------------------------------------------------------- the fold rules

#[test]
fn first_event_creates_the_view_whatever_its_type() {
    for t in EventType::ALL {
        let e = OrderEvent {
            amount: Some(100),
            currency: Some("KRW".into()),
            ..ev("O", "e1", t, 7)
        };
        let s = updated(apply(None, &e));
        assert_eq!(
            s.view,
            OrderView {
                order_id: "O".into(),
                state: t,
                amount: 100,
                currency: "KRW".into(),
                member_id: String::new(),
                created_ts: 7,
                updated_ts: 7,
                events: 1,
                last_event_id: "e1".into(),
            }
        );
        assert_eq!(s.seen, ["e1"]);
    }
}

#[test]
fn duplicates_change_nothing_and_do_not_count() {
    let s = fold(&[
        ev("O", "e1", ApprovalRequested, 1),
        ev("O", "e2", ApprovalCompleted, 2),
    ]);
    assert_eq!(
        apply(Some(&s), &ev("O", "e1", ApprovalRequested, 1)),
        Applied::Duplicate
    );
    // an id is a duplicate even if the rest differs (the id is the identity)
    assert_eq!(
        apply(Some(&s), &ev("O", "e2", Cancelled, 9)),
        Applied::Duplicate
    );
    let again = fold(&[
        ev("O", "e1", ApprovalRequested, 1),
        ev("O", "e1", ApprovalRequested, 1),
        ev("O", "e2", ApprovalCompleted, 2),
        ev("O", "e2", ApprovalCompleted, 2),
    ]);
    assert_eq!(again, s);
    assert_eq!(s.view.events, 2);
}

#[test]
fn same_type_with_a_new_id_applies_and_counts() {
    let s = fold(&[
        ev("O", "e1", ApprovalRequested, 1),
        ev("O", "e2", ApprovalCallbackCompleted, 2),
        ev("O", "e3", ApprovalCallbackCompleted, 3),
        ev("O", "e4", CancelRequested, 4),
        ev("O", "e5", CancelRequested, 5),
    ]);
    assert_eq!(s.view.state, CancelRequested);
    assert_eq!(s.view.events, 5);
    assert_eq!(s.view.last_event_id, "e5");
}

#[test]
fn an_order_never_moves_back() {
    let s = fold(&[ev("O", "e1", CancelRequested, 1)]);
    for t in [
        ApprovalRequested,
        ApprovalCallbackCompleted,
        ApprovalCompleted,
        ApprovalFailed,
    ] {
        assert_eq!(
            apply(Some(&s), &ev("O", "new", t, 2)),
            Applied::Ignored("stale")
        );
    }
    let s = fold(&[ev("O", "e1", ApprovalCallbackCompleted, 1)]);
    assert_eq!(
        apply(Some(&s), &ev("O", "new", ApprovalRequested, 2)),
        Applied::Ignored("stale")
    );
    for t in [
        ApprovalCompleted,
        ApprovalFailed,
        CancelRequested,
        Cancelled,
    ] {
        assert_eq!(
            updated(apply(Some(&s), &ev("O", "new", t, 2))).view.state,
            t
        );
    }
}

#[test]
fn failed_and_cancelled_are_final() {
    for terminal in [ApprovalFailed, Cancelled] {
        let s = fold(&[ev("O", "e1", terminal, 1)]);
        for t in EventType::ALL {
            assert_eq!(
                apply(Some(&s), &ev("O", "new", t, 2)),
                Applied::Ignored("terminal"),
                "{terminal} then {t}"
            );
        }
    }
}

#[test]
fn completed_is_final_except_for_the_cancel_path() {
    let done = fold(&[
        ev("O", "e1", ApprovalRequested, 1),
        ev("O", "e2", ApprovalCompleted, 2),
    ]);
    for t in [
        ApprovalRequested,
        ApprovalCallbackCompleted,
        ApprovalCompleted,
        ApprovalFailed,
    ] {
        assert_eq!(
            apply(Some(&done), &ev("O", "new", t, 3)),
            Applied::Ignored("terminal"),
            "{t}"
        );
    }
    let cancel_requested = updated(apply(Some(&done), &ev("O", "e3", CancelRequested, 3)));
    let cancelled = updated(apply(Some(&cancel_requested), &ev("O", "e4", Cancelled, 4)));
    assert_eq!(cancelled.view.state, Cancelled);
    assert_eq!(cancelled.view.events, 4);
    // straight to CANCELLED works too
    assert_eq!(
        updated(apply(Some(&done), &ev("O", "e5", Cancelled, 5)))
            .view
            .state,
        Cancelled
    );
}

#[test]
fn out_of_order_events_fold_by_arrival() {
    // the callback overtook the request: the request is then stale but the view exists
    let s = fold(&[
        OrderEvent {
            amount: Some(500),
            ..ev("O", "e2", ApprovalCallbackCompleted, 20)
        },
        ev("O", "e1", ApprovalRequested, 10),
        ev("O", "e3", ApprovalCompleted, 30),
    ]);
    assert_eq!(s.view.state, ApprovalCompleted);
    assert_eq!(s.view.events, 2);
    assert_eq!(s.seen, ["e2", "e3"]);
    assert_eq!((s.view.created_ts, s.view.updated_ts), (20, 30));
    // a late event with an older ts that does apply moves created_ts back, not updated_ts
    let s = fold(&[
        ev("O", "e1", ApprovalRequested, 50),
        ev("O", "e2", ApprovalCompleted, 40),
    ]);
    assert_eq!((s.view.created_ts, s.view.updated_ts), (40, 50));
}

#[test]
fn attributes_are_overwritten_only_when_present() {
    let s = fold(&[
        OrderEvent {
            amount: Some(100),
            currency: Some("KRW".into()),
            member_id: Some("M-1".into()),
            ..ev("O", "e1", ApprovalRequested, 1)
        },
        ev("O", "e2", ApprovalCallbackCompleted, 2),
        OrderEvent {
            amount: Some(90),
            ..ev("O", "e3", ApprovalCompleted, 3)
        },
        OrderEvent {
            member_id: Some("M-2".into()),
            ..ev("O", "e4", ApprovalFailed, 4) // ignored: COMPLETED is final
        },
    ]);
    assert_eq!(
        (
            s.view.amount,
            s.view.currency.as_str(),
            s.view.member_id.as_str()
        ),
        (90, "KRW", "M-1")
    );
}

#[test]
fn seen_keeps_the_newest_ids() {
    let events: Vec<OrderEvent> = (0..SEEN_CAPACITY + 10)
        .map(|i| ev("O", &format!("e{i}"), CancelRequested, i as i64))
        .collect();
    let s = fold(&events);
    assert_eq!(s.view.events as usize, SEEN_CAPACITY + 10);
    assert_eq!(s.seen.len(), SEEN_CAPACITY);
    assert_eq!(s.seen[0], "e10");
    assert_eq!(s.seen.last().map(String::as_str), Some("e73"));
}

#[test]
fn stored_order_round_trips_and_is_versioned() {
    let s = fold(&[
        OrderEvent {
            amount: Some(-5),
            currency: Some("KRW".into()),
            ..ev("O-1", "e1", ApprovalRequested, 1)
        },
        ev("O-1", "e2", Cancelled, 2),
    ]);
    let bytes = encode_order(&s).unwrap();
    assert_eq!(bytes[0], paystream_state::codec::FORMAT_VERSION);
    assert_eq!(decode_order(&bytes).unwrap(), s);
    assert!(decode_order(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn view_json_has_the_query_api_fields() {
    let s = fold(&[ev("O-1", "e1", ApprovalCompleted, 1)]);
    let v = serde_json::to_value(&s.view).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "amount",
            "created_ts",
            "currency",
            "events",
            "last_event_id",
            "member_id",
            "order_id",
            "state",
            "updated_ts"
        ]
    );
    assert_eq!(v["state"], "APPROVAL_COMPLETED");
}

#[test]
fn apply_owned_follows_the_same_rules_as_apply() {
    // Every sequence of three events over the six types and two event ids (so duplicates,
    // stale and terminal events all occur), folded both ways.
    let choices: Vec<(EventType, &str)> = EventType::ALL
        .into_iter()
        .flat_map(|t| [(t, "a"), (t, "b")])
        .collect();
    for x in &choices {
        for y in &choices {
            for z in &choices {
                let events: Vec<OrderEvent> = [x, y, z]
                    .iter()
                    .enumerate()
                    .map(|(i, (t, id))| ev("O", id, *t, i as i64))
                    .collect();
                let (mut borrowed, mut owned): (Option<StoredOrder>, Option<StoredOrder>) =
                    (None, None);
                for e in &events {
                    let a = apply(borrowed.as_ref(), e);
                    let b = apply_owned(owned.clone(), e);
                    assert_eq!(a, b, "{events:?}");
                    if let Applied::Updated(next) = a {
                        borrowed = Some(next.clone());
                        owned = Some(next);
                    }
                }
            }
        }
    }
}
