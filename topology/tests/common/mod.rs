//! Helpers shared by the topology's integration tests: events and how they are piped in.

#![allow(dead_code)] // each test file uses its own subset

use paystream_topology::order::{EventType, OrderEvent};
use paystream_topology::TestDriver;

pub const HOUR: i64 = 3_600_000;
pub const MIN: i64 = 60_000;
pub const T0: i64 = 1_764_000_000_000;

pub fn ev(order: &str, id: &str, t: EventType, ts: i64, phone: &str) -> OrderEvent {
    OrderEvent {
        order_id: order.into(),
        event_id: id.into(),
        event_type: t,
        amount: Some(12_000),
        currency: Some("KRW".into()),
        member_id: Some("M-42".into()),
        phone: (!phone.is_empty()).then(|| phone.to_owned()),
        ts,
    }
}

pub fn pipe(d: &mut TestDriver, e: &OrderEvent) {
    let json = serde_json::to_vec(e).unwrap();
    d.pipe(Some(e.order_id.as_bytes()), Some(&json), e.ts)
        .unwrap();
}
