//! The payment-order domain and the shipped order-view topology.
//!
//! Entry points: [`order_view_topology`] (what `paystream run` executes on `PAYMENT.ORDER`),
//! [`parse_event`] (bytes → [`OrderEvent`] or a dead-letter reason) and [`apply`] (the fold of one
//! event into an order's [`StoredOrder`]). [`fold_events`] folds a whole history, which is how the
//! traffic generator predicts every order's final view: the runtime, the tests and the
//! generator's model share this one function, so they cannot disagree about the rules.
//!
//! Everything here is plain data and pure functions except the processor, which only glues
//! `parse_event` and `apply` to the `orders` store.

use std::fmt;
use std::str::FromStr;

use paystream_state::codec::{self, CodecError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::dsl::StreamsBuilder;
use crate::processor::{Decoded, ProcessError, Processor, ProcessorContext, Record};
use crate::topology::{Topology, TopologyError};

mod fast_json;
mod parse;
#[cfg(test)]
mod tests;

pub use parse::{
    parse_event, parsed_event, EventTime, InvalidEvent, MAX_EVENT_BYTES, MAX_ID_BYTES,
    MAX_TEXT_BYTES,
};

/// The store holding one [`StoredOrder`] per order id (key = order id as UTF-8).
pub const ORDERS_STORE: &str = "orders";

/// How many applied event ids a [`StoredOrder`] remembers for deduplication.
///
/// Duplicates come from producer retries and from replaying the uncommitted tail of a partition
/// after a crash; both repeat *recent* events of an order. A payment order has a handful of
/// events in its whole life (one of each type, plus the odd retried callback), so 64 covers the
/// entire history of any real order, while the bound keeps a misbehaving hot key from growing its
/// stored value (and its changelog records) without limit.
pub const SEEN_CAPACITY: usize = 64;

/// The `type` of an order event, serialized as its SCREAMING_SNAKE name (`APPROVAL_REQUESTED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    ApprovalRequested,
    ApprovalCallbackCompleted,
    ApprovalCompleted,
    ApprovalFailed,
    CancelRequested,
    Cancelled,
}

impl EventType {
    /// Every type, in lifecycle order.
    pub const ALL: [EventType; 6] = [
        EventType::ApprovalRequested,
        EventType::ApprovalCallbackCompleted,
        EventType::ApprovalCompleted,
        EventType::ApprovalFailed,
        EventType::CancelRequested,
        EventType::Cancelled,
    ];

    /// The wire name, as in the `type` field of the input JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ApprovalRequested => "APPROVAL_REQUESTED",
            EventType::ApprovalCallbackCompleted => "APPROVAL_CALLBACK_COMPLETED",
            EventType::ApprovalCompleted => "APPROVAL_COMPLETED",
            EventType::ApprovalFailed => "APPROVAL_FAILED",
            EventType::CancelRequested => "CANCEL_REQUESTED",
            EventType::Cancelled => "CANCELLED",
        }
    }

    /// Position in the lifecycle; an order never moves to a lower rank (see [`apply`]).
    pub fn rank(self) -> u8 {
        match self {
            EventType::ApprovalRequested => 0,
            EventType::ApprovalCallbackCompleted => 1,
            EventType::ApprovalCompleted | EventType::ApprovalFailed => 2,
            EventType::CancelRequested => 3,
            EventType::Cancelled => 4,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event `type` string that is not one of the six [`EventType`]s.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// Serialized as the type string in every format, including the stored postcard bytes: a variant
/// index would silently change meaning if the enum were ever reordered, a name cannot.
impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EventType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an order event type such as \"APPROVAL_REQUESTED\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<EventType, E> {
                s.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// One event of a payment order: the value of a `PAYMENT.ORDER` record (JSON).
///
/// Unknown JSON fields are accepted and dropped: the producers are other teams' services, and a
/// field they add must not send every event to the dead-letter topic.
///
/// JSON only: the optional fields are skipped when `None`, which a non-self-describing format such
/// as postcard cannot read back, so events are never stored with [`codec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub order_id: String,
    /// Unique per event; repeats of an event id are duplicates (producer retries, replays).
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Amount in minor units of `currency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// The materialized view of one order: what `GET /orders/{id}` returns under `"order"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: String,
    /// The type of the last event applied.
    pub state: EventType,
    /// Minor units; 0 until an event carries an amount.
    pub amount: i64,
    /// Empty until an event carries one.
    pub currency: String,
    /// Empty until an event carries one.
    pub member_id: String,
    /// Smallest `ts` of the applied events.
    pub created_ts: i64,
    /// Largest `ts` of the applied events.
    pub updated_ts: i64,
    /// Number of distinct events applied (duplicates and ignored events do not count).
    pub events: u32,
    pub last_event_id: String,
}

/// The value kept in the [`ORDERS_STORE`]: the view plus what deduplication needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOrder {
    pub view: OrderView,
    /// Ids of the applied events, oldest first, at most [`SEEN_CAPACITY`] (the oldest are dropped).
    pub seen: Vec<String>,
}

/// Stored bytes of an order: format-version byte + postcard (see `paystream_state::codec`).
pub fn encode_order(order: &StoredOrder) -> Result<Vec<u8>, CodecError> {
    codec::encode(order)
}

/// Inverse of [`encode_order`].
pub fn decode_order(bytes: &[u8]) -> Result<StoredOrder, CodecError> {
    codec::decode(bytes)
}

/// What [`apply`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The event was applied; this is the order's new stored value.
    Updated(StoredOrder),
    /// The event id was already applied; nothing changes.
    Duplicate,
    /// The event would move the order back (`"stale"`) or change a finished order
    /// (`"terminal"`); nothing changes.
    Ignored(&'static str),
}

/// Fold one event into an order (`current = None` for an order not seen yet). Pure.
///
/// # The rules (shared by the runtime, the tests and the traffic generator's model)
/// 1. **Unknown order**: the first event creates the view, whatever its type (events of one order
///    can arrive out of order, e.g. a callback before the request).
/// 2. **Duplicate**: an event whose `event_id` is in `seen` changes nothing.
/// 3. **Terminal**: `APPROVAL_FAILED` and `CANCELLED` are final: nothing changes them, not even
///    another event of the same type. `APPROVAL_COMPLETED` is final too, except that
///    `CANCEL_REQUESTED` and `CANCELLED` may follow it (a completed payment can be cancelled).
///    → `Ignored("terminal")`.
/// 4. **Stale**: otherwise an event applies only if it does not move the order back:
///    `rank(event) >= rank(state)` with ranks `APPROVAL_REQUESTED` 0,
///    `APPROVAL_CALLBACK_COMPLETED` 1, `APPROVAL_COMPLETED` 2, `APPROVAL_FAILED` 2,
///    `CANCEL_REQUESTED` 3, `CANCELLED` 4. An event of the same type as the state (equal rank)
///    with a new `event_id` applies and counts. → else `Ignored("stale")`.
///
/// Applying: `state` = event type, `events` += 1, `last_event_id` = event id,
/// `created_ts` = min of the applied `ts`, `updated_ts` = max; `amount`, `currency`, `member_id`
/// are set by the first event and overwritten later only by events that carry them; the event id
/// is appended to `seen` (capped at [`SEEN_CAPACITY`]).
///
/// Why replays are harmless: the state's rank never decreases and terminal states never change,
/// so an event ignored once is ignored again on any later state, and an applied one is a
/// duplicate afterwards. Re-applying any already-applied suffix therefore changes nothing.
pub fn apply(current: Option<&StoredOrder>, event: &OrderEvent) -> Applied {
    let Some(current) = current else {
        return Applied::Updated(first_event(event));
    };
    match refusal(current, event) {
        Some(outcome) => outcome,
        None => Applied::Updated(advance(current.clone(), event)),
    }
}

/// [`apply`] to an order the caller owns (the processor's decoded copy): the same rules, without
/// cloning the order to build the next one.
pub fn apply_owned(current: Option<StoredOrder>, event: &OrderEvent) -> Applied {
    let Some(current) = current else {
        return Applied::Updated(first_event(event));
    };
    match refusal(&current, event) {
        Some(outcome) => outcome,
        None => Applied::Updated(advance(current, event)),
    }
}

/// Rules 2–4 of [`apply`]: why `event` changes nothing, or `None` if it applies.
fn refusal(current: &StoredOrder, event: &OrderEvent) -> Option<Applied> {
    debug_assert_eq!(
        current.view.order_id, event.order_id,
        "events of another order"
    );
    if current.seen.contains(&event.event_id) {
        return Some(Applied::Duplicate);
    }
    may_follow(current.view.state, event.event_type)
        .err()
        .map(Applied::Ignored)
}

/// Apply `event` to `next` (an order the rules let it change); see [`apply`].
fn advance(mut next: StoredOrder, event: &OrderEvent) -> StoredOrder {
    let view = &mut next.view;
    view.state = event.event_type;
    view.events = view.events.saturating_add(1);
    view.last_event_id.clone_from(&event.event_id);
    view.created_ts = view.created_ts.min(event.ts);
    view.updated_ts = view.updated_ts.max(event.ts);
    if let Some(amount) = event.amount {
        view.amount = amount;
    }
    if let Some(currency) = &event.currency {
        view.currency.clone_from(currency);
    }
    if let Some(member_id) = &event.member_id {
        view.member_id.clone_from(member_id);
    }
    next.seen.push(event.event_id.clone());
    if next.seen.len() > SEEN_CAPACITY {
        let excess = next.seen.len() - SEEN_CAPACITY;
        next.seen.drain(..excess);
    }
    next
}

/// Rules 3 and 4 of [`apply`]: may an order in `state` take an event of type `next`?
fn may_follow(state: EventType, next: EventType) -> Result<(), &'static str> {
    use EventType::*;
    match (state, next) {
        (ApprovalFailed | Cancelled, _) => Err("terminal"),
        (ApprovalCompleted, CancelRequested | Cancelled) => Ok(()),
        (ApprovalCompleted, _) => Err("terminal"),
        _ if next.rank() >= state.rank() => Ok(()),
        _ => Err("stale"),
    }
}

fn first_event(event: &OrderEvent) -> StoredOrder {
    StoredOrder {
        view: OrderView {
            order_id: event.order_id.clone(),
            state: event.event_type,
            amount: event.amount.unwrap_or(0),
            currency: event.currency.clone().unwrap_or_default(),
            member_id: event.member_id.clone().unwrap_or_default(),
            created_ts: event.ts,
            updated_ts: event.ts,
            events: 1,
            last_event_id: event.event_id.clone(),
        },
        seen: vec![event.event_id.clone()],
    }
}

/// Fold the events of *one* order, in order, from nothing; `None` if there were no events.
/// What an order's view is after a partition has processed exactly these events.
pub fn fold_events<'a>(events: impl IntoIterator<Item = &'a OrderEvent>) -> Option<StoredOrder> {
    let mut current: Option<StoredOrder> = None;
    for event in events {
        if let Applied::Updated(next) = apply(current.as_ref(), event) {
            current = Some(next);
        }
    }
    current
}

/// The order-view topology: `input_topic` → parse → fold into [`ORDERS_STORE`]. Invalid records go
/// to the dead-letter queue with [`parse_event`]'s reason; nothing is forwarded and there is no
/// sink (the store, queried by key, is the output).
///
/// # Panics
/// If `input_topic` is not a legal Kafka topic name; use [`try_order_view_topology`] when the name
/// comes from user input.
pub fn order_view_topology(input_topic: &str) -> Topology {
    match try_order_view_topology(input_topic) {
        Ok(topology) => topology,
        Err(e) => panic!("invalid order-view topology: {e}"),
    }
}

/// [`order_view_topology`] that reports a bad topic name instead of panicking (only the topic
/// name varies, so that is the only possible error).
pub fn try_order_view_topology(input_topic: &str) -> Result<Topology, TopologyError> {
    let mut builder = StreamsBuilder::new();
    builder
        .stream(input_topic)
        .process(&[ORDERS_STORE], || Box::new(OrderViewProcessor));
    builder.build()
}

/// Parses, folds and stores; see [`order_view_topology`]. Valid records are forwarded unchanged
/// (to the windowed topologies in [`crate::shipped`]); invalid ones go to the dead-letter queue
/// and stop here.
pub struct OrderViewProcessor;

impl Processor for OrderViewProcessor {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        mut record: Record,
    ) -> Result<(), ProcessError> {
        let event = match parsed_event(&record) {
            Ok(event) => event,
            Err(invalid) => return ctx.dead_letter(record, invalid.reason, &invalid.detail),
        };
        let store = ctx.store(ORDERS_STORE)?;
        let key = event.order_id.as_bytes();
        let stored = store.get(key)?;
        // Undecodable bytes stop the task rather than being overwritten: they are another binary's
        // format (e.g. a newer version during a rollback) or corruption, and overwriting would
        // silently throw away the order's history.
        let current = match stored.as_deref().map(decode_order).transpose() {
            Ok(current) => current,
            Err(e) => return Err(e.in_store(ORDERS_STORE).into()),
        };
        match apply_owned(current, &event) {
            Applied::Updated(next) => {
                let bytes = encode_order(&next).map_err(|e| e.in_store(ORDERS_STORE))?;
                store.put(key, &bytes)?;
            }
            outcome @ (Applied::Duplicate | Applied::Ignored(_)) => {
                // Nothing to write: the store only ever holds committed state, which its
                // changelog holds too, so a repeat (a replay after a crash, a producer retry)
                // has nothing to re-log.
                tracing::debug!(
                    order_id = %event.order_id,
                    event_id = %event.event_id,
                    event_type = %event.event_type,
                    ?outcome,
                    "order event not applied"
                );
            }
        }
        record.decoded = Decoded::of(event);
        ctx.forward(record);
        Ok(())
    }
}
