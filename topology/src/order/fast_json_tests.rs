//! The fast path against serde_json, the independent model: whatever `parse_plain` accepts,
//! serde_json must read as the same event; and the plain shape must take the fast path.

use proptest::prelude::*;
use proptest::strategy::ValueTree;

use super::parse_plain;
use crate::order::{EventType, OrderEvent};

fn serde(bytes: &[u8]) -> Option<OrderEvent> {
    serde_json::from_slice(bytes).ok()
}

/// What every well-behaved producer writes: text without escapes.
fn plain_event() -> impl Strategy<Value = OrderEvent> {
    let text = "[ -!#-\\[\\]-~éü한]{0,12}"; // printable text without '"' and '\\'
    (
        (text, text, 0..6usize),
        (
            proptest::option::of(any::<i64>()),
            proptest::option::of(text),
            proptest::option::of(text),
            proptest::option::of(text),
        ),
        any::<i64>(),
    )
        .prop_map(
            |((order_id, event_id, t), (amount, currency, member_id, phone), ts)| OrderEvent {
                order_id,
                event_id,
                event_type: EventType::ALL[t],
                amount,
                currency,
                member_id,
                phone,
                ts,
            },
        )
}

/// A JSON value in many spellings, in and out of the plain subset.
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\"[ -~]{0,8}\"",                   // strings, some with escapes or bad escapes
        "\"(\\\\u00e9|\\\\n|é|ü|x){0,3}\"", // escapes and non-ASCII
        "\"(APPROVAL_REQUESTED|CANCELLED|CANCEL_REQUESTED|approval_failed)\"",
        "-?[0-9]{1,21}", // integers, leading zeros, -0, over i64
        "-?[0-9]{1,3}(\\.[0-9]{1,2})?([eE][+-]?[0-9])?", // fractions and exponents
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("{}".to_owned()),
        Just("[1,2]".to_owned()),
        Just("nul".to_owned()),
    ]
}

fn ws() -> impl Strategy<Value = String> {
    // JSON's four whitespace bytes, and two that are not JSON whitespace.
    prop_oneof![30 => "[ \t\r\n]{0,2}", 1 => Just("\u{a0}".to_owned()), 1 => Just("\u{b}".to_owned())]
}

/// A plain value for `field` (what a well-behaved producer writes there).
fn plain_value(field: &'static str) -> BoxedStrategy<String> {
    match field {
        "ts" | "amount" => any::<i64>().prop_map(|n| n.to_string()).boxed(),
        "type" => prop::sample::select(EventType::ALL.to_vec())
            .prop_map(|t| format!("\"{t}\""))
            .boxed(),
        _ => "\"[a-zA-Z0-9+-]{0,6}\"".boxed(),
    }
}

const FIELDS: [&str; 8] = [
    "order_id",
    "event_id",
    "type",
    "ts",
    "amount",
    "currency",
    "member_id",
    "phone",
];

/// One `"name": value` entry: mostly a known field with a plain value, sometimes a wild value or
/// an unknown name.
fn entry() -> impl Strategy<Value = (String, String)> {
    let known = prop::sample::select(FIELDS.to_vec());
    prop_oneof![
        6 => known.clone().prop_flat_map(|f| (Just(f.to_owned()), plain_value(f))),
        3 => (known.prop_map(str::to_owned), value_text()),
        1 => ("[a-z_]{1,9}", value_text()),
    ]
}

/// An object of the event's fields in any order and spelling, with whitespace, some fields
/// dropped, others repeated, unknown ones added, and sometimes bytes after it.
fn object_text() -> impl Strategy<Value = String> {
    let required: Vec<_> = FIELDS[..4].iter().map(|f| plain_value(f)).collect();
    (
        required,
        prop::collection::vec(entry(), 0..3),
        prop::collection::vec(any::<prop::sample::Index>(), 4),
        prop::collection::vec(ws(), 4),
        prop_oneof![6 => Just(4usize), 1 => 0..4usize],
        prop_oneof![16 => Just(String::new()), 1 => Just(",".to_owned()), 1 => Just("}".to_owned()), 1 => Just("x".to_owned())],
    )
        .prop_map(|(values, extra, drops, w, drop_one, tail)| {
            let mut entries: Vec<(String, String)> = FIELDS[..4]
                .iter()
                .zip(values)
                .enumerate()
                .filter(|(i, _)| *i != drop_one) // drop_one == 4 drops none
                .map(|(_, (f, v))| ((*f).to_owned(), v))
                .collect();
            for (e, at) in extra.into_iter().zip(drops.iter().cycle()) {
                let i = at.index(entries.len() + 1);
                entries.insert(i, e);
            }
            let body: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}\"{k}\"{}:{}{v}{}", w[0], w[1], w[2], w[3]))
                .collect();
            format!("{}{{{}}}{}{tail}", w[0], body.join(","), w[1])
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The plain shape, compact or pretty, takes the fast path and reads back as written.
    #[test]
    fn plain_events_take_the_fast_path(event in plain_event()) {
        prop_assert_eq!(parse_plain(&serde_json::to_vec(&event).unwrap()), Some(event.clone()));
        prop_assert_eq!(parse_plain(&serde_json::to_vec_pretty(&event).unwrap()), Some(event));
    }

    /// A plain event with bytes deleted, inserted or replaced (JSON's own punctuation among
    /// them): whatever the fast path still accepts, serde_json reads the same way.
    #[test]
    fn mutated_events_agree_with_serde(
        event in plain_event(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(
            b"\"{}:,\\ 0123456789-.eEnul\x01\xc3".to_vec())), 1..4),
    ) {
        let mut bytes = serde_json::to_vec(&event).unwrap();
        for (at, op, b) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 if i < bytes.len() => { bytes.remove(i); }
                1 => bytes.insert(i, b),
                _ if i < bytes.len() => bytes[i] = b,
                _ => {}
            }
        }
        if let Some(fast) = parse_plain(&bytes) {
            prop_assert_eq!(serde(&bytes), Some(fast), "{}", String::from_utf8_lossy(&bytes));
        }
    }
}

/// Generated objects: whatever the fast path accepts, serde_json reads the same way; and enough
/// of them are accepted (and refused) for that to mean something.
#[test]
fn accepted_objects_agree_with_serde() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut accepted, cases) = (0, 20_000);
    for _ in 0..cases {
        let text = object_text().new_tree(&mut runner).unwrap().current();
        if let Some(fast) = parse_plain(text.as_bytes()) {
            assert_eq!(serde(text.as_bytes()), Some(fast), "{text}");
            accepted += 1;
        }
    }
    assert!(
        (cases / 10..cases * 9 / 10).contains(&accepted),
        "{accepted} of {cases} accepted: the generator no longer tests the boundary"
    );
}

#[test]
fn the_edges_of_the_subset_are_left_to_serde() {
    let base = |extra: &str| {
        format!(r#"{{"order_id":"O","event_id":"E","type":"CANCELLED","ts":1{extra}}}"#)
    };
    assert!(parse_plain(base("").as_bytes()).is_some());
    for outside in [
        r#","ts":2"#,                        // repeated field: serde refuses
        r#","amount":1.0"#,                  // fraction: serde refuses for an integer
        r#","amount":-0"#,                   // -0: left to serde
        r#","amount":1e3"#,                  // exponent
        r#","amount":0123"#,                 // leading zero: invalid JSON
        r#","note":{"a":1}"#,                // unknown field holding an object
        r#","note":[1]"#,                    // ... an array
        r#","note":1.5"#,                    // ... a fraction
        r#","note":"\n""#,                   // ... an escape
        r#","phone":"\u0041""#,              // escape
        r#","amount":9223372036854775808"#,  // over i64::MAX
        r#","amount":-9223372036854775809"#, // under i64::MIN
    ] {
        assert_eq!(parse_plain(base(outside).as_bytes()), None, "{outside}");
    }
    // Missing required field, null in a required field, trailing bytes, empty object.
    assert_eq!(
        parse_plain(br#"{"order_id":"O","event_id":"E","type":"CANCELLED"}"#),
        None
    );
    assert_eq!(
        parse_plain(br#"{"order_id":null,"event_id":"E","type":"CANCELLED","ts":1}"#),
        None
    );
    assert_eq!(parse_plain(format!("{} x", base("")).as_bytes()), None);
    assert_eq!(parse_plain(b"{}"), None);
    // Not UTF-8: left to serde (which refuses it).
    let mut bad = base(r#","phone":"x""#).into_bytes();
    let x = bad.iter().rposition(|&b| b == b'x').unwrap();
    bad[x] = 0xff;
    assert_eq!(parse_plain(&bad), None);
    // Text beyond ASCII is inside.
    let e = parse_plain(base(r#","phone":"é한""#).as_bytes()).unwrap();
    assert_eq!(e.phone.as_deref(), Some("é한"));
    // Unknown fields with plain values are skipped, as serde skips them (repeats too).
    let e = parse_plain(base(r#","note":"x","n":-3,"b":true,"z":null,"note":false"#).as_bytes());
    assert_eq!(e.map(|e| e.ts), Some(1));
    // The ends of i64 are inside.
    for ts in [i64::MIN, i64::MAX] {
        let text = format!(r#"{{"order_id":"O","event_id":"E","type":"CANCELLED","ts":{ts}}}"#);
        assert_eq!(parse_plain(text.as_bytes()).map(|e| e.ts), Some(ts));
    }
    // Optional fields may be null or absent.
    let e = parse_plain(base(r#","amount":null,"phone":"+82""#).as_bytes()).unwrap();
    assert_eq!(
        (e.amount, e.phone.as_deref(), e.currency),
        (None, Some("+82"), None)
    );
}
