//! The pure traffic generator.
//!
//! Each order walks `APPROVAL_REQUESTED → APPROVAL_CALLBACK_COMPLETED → APPROVAL_COMPLETED` (or
//! `APPROVAL_FAILED`); some completed orders are then cancelled (`CANCEL_REQUESTED → CANCELLED`);
//! a few stop early (no completion: what the missing-completion detector looks for). On top,
//! some events are sent twice (producer retries upstream) and some adjacent events of an order
//! swap places (out of order). Orders interleave the way concurrent payments do.

use std::collections::BTreeMap;

use paystream_topology::order::{fold_events, EventType, OrderEvent, StoredOrder};

/// Knobs of the generator. Rates are probabilities in 0..=1.
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    pub seed: u64,
    pub orders: u64,
    /// Exact number of events to emit; `None` = whatever the orders' walks give. Extra events
    /// beyond the walks are duplicates of earlier events.
    pub events: Option<u64>,
    pub fail_rate: f64,
    pub cancel_rate: f64,
    pub incomplete_rate: f64,
    pub duplicate_rate: f64,
    pub reorder_rate: f64,
    /// Records that are not valid order events (bad JSON, unknown type, missing fields, no key),
    /// mixed into the stream; they must end in the dead-letter topic.
    pub malformed: u64,
    /// Event time of the first order (epoch ms); the default is a day ago.
    pub start_ts: i64,
    /// Orders in flight at once (how widely orders interleave).
    pub concurrency: usize,
    /// Number of the first order (`O-<first_order>`), so several runs can add distinct orders.
    pub first_order: u64,
    /// Event time between one order's start and the next's (ms): order `n` starts at
    /// `start_ts + n * order_spacing_ms` (plus up to a second of jitter).
    pub order_spacing_ms: i64,
}

/// The wall clock in epoch ms, whole seconds. Event times start a day before it by default: a
/// broker deletes records whose timestamps are older than the topic's retention (7 days by
/// default) almost as soon as they arrive, and refuses records more than an hour in the future
/// (`log.message.timestamp.after.max.ms`); orders are 37 ms apart, so a day back leaves room for
/// 2.4 million orders.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64 * 1_000)
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        Self {
            seed: 42,
            orders: 1000,
            events: None,
            fail_rate: 0.1,
            cancel_rate: 0.1,
            incomplete_rate: 0.02,
            duplicate_rate: 0.03,
            reorder_rate: 0.03,
            malformed: 0,
            start_ts: now_ms() - 24 * 3_600_000,
            concurrency: 64,
            first_order: 0,
            order_spacing_ms: 37,
        }
    }
}

/// One record to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficEvent {
    pub key: Option<String>,
    pub value: String,
    pub timestamp: i64,
    /// The parsed event, `None` for a malformed record.
    pub event: Option<OrderEvent>,
}

/// Generated traffic: events in send order.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub events: Vec<TrafficEvent>,
}

/// SplitMix64: tiny, fast, and stable forever (unlike `rand`'s `StdRng`, whose algorithm may
/// change between versions and would silently change "reproducible" traffic).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The order id of the `i`-th order (`O-000123`).
pub fn order_id(i: u64) -> String {
    format!("O-{i:06}")
}

fn walk(rng: &mut SplitMix64, opts: &GeneratorOptions, i: u64) -> Vec<OrderEvent> {
    let id = order_id(opts.first_order + i);
    let member = format!("M-{}", rng.below(100_000));
    let phone = format!("+8210{:08}", rng.below(100_000_000));
    let amount = 1_000 + 100 * rng.below(5_000) as i64;
    let currency = if rng.chance(0.9) { "KRW" } else { "USD" };
    let mut ts = opts.start_ts
        + ((opts.first_order + i) as i64) * opts.order_spacing_ms
        + rng.below(1_000) as i64;
    let mut types = vec![EventType::ApprovalRequested];
    if rng.chance(opts.incomplete_rate) {
        if rng.chance(0.5) {
            types.push(EventType::ApprovalCallbackCompleted);
        }
    } else {
        types.push(EventType::ApprovalCallbackCompleted);
        if rng.chance(opts.fail_rate) {
            types.push(EventType::ApprovalFailed);
        } else {
            types.push(EventType::ApprovalCompleted);
            if rng.chance(opts.cancel_rate) {
                types.push(EventType::CancelRequested);
                types.push(EventType::Cancelled);
            }
        }
    }
    types
        .into_iter()
        .map(|t| {
            ts += 50 + rng.below(3_000) as i64;
            OrderEvent {
                order_id: id.clone(),
                event_id: format!("{:016x}", rng.next_u64()),
                event_type: t,
                amount: Some(amount),
                currency: Some(currency.to_owned()),
                member_id: Some(member.clone()),
                phone: Some(phone.clone()),
                ts,
            }
        })
        .collect()
}

fn malformed(rng: &mut SplitMix64, n: u64, ts: i64) -> TrafficEvent {
    let key = Some(format!("BAD-{n:06}"));
    let (key, value) = match rng.below(5) {
        0 => (key, "{\"order_id\": \"BAD".to_owned()),
        1 => (
            key.clone(),
            format!(
                "{{\"order_id\":\"{}\",\"event_id\":\"x{n}\",\"type\":\"REFUND_MAYBE\",\"ts\":{ts}}}",
                key.as_deref().unwrap_or_default()
            ),
        ),
        2 => (
            key.clone(),
            format!(
                "{{\"order_id\":\"{}\",\"type\":\"APPROVAL_REQUESTED\",\"ts\":{ts}}}",
                key.as_deref().unwrap_or_default()
            ),
        ),
        3 => (
            None,
            format!("{{\"order_id\":\"BAD-{n:06}\",\"event_id\":\"x{n}\",\"type\":\"APPROVAL_REQUESTED\",\"ts\":{ts}}}"),
        ),
        _ => (key, "not json at all".to_owned()),
    };
    TrafficEvent {
        key,
        value,
        timestamp: ts,
        event: None,
    }
}

impl Traffic {
    /// Generate traffic. Fails only when `events` is fewer than the orders' walks need.
    pub fn generate(opts: &GeneratorOptions) -> Result<Traffic, String> {
        let mut rng = SplitMix64::new(opts.seed);
        let mut walks: Vec<Vec<OrderEvent>> =
            (0..opts.orders).map(|i| walk(&mut rng, opts, i)).collect();
        let base: u64 = walks.iter().map(|w| w.len() as u64).sum();
        // Duplicates: each event with probability duplicate_rate, or exactly enough to reach
        // the requested total.
        let wanted_dups = match opts.events {
            Some(total) if total < base => {
                return Err(format!(
                    "{} orders need at least {base} events; asked for {total}",
                    opts.orders
                ))
            }
            Some(total) => Some(total - base),
            None => None,
        };
        match wanted_dups {
            None => {
                for w in &mut walks {
                    let mut out = Vec::with_capacity(w.len() + 1);
                    for e in w.drain(..) {
                        let dup = rng.chance(opts.duplicate_rate);
                        out.push(e.clone());
                        if dup {
                            out.push(e);
                        }
                    }
                    *w = out;
                }
            }
            Some(mut n) => {
                let len = walks.len() as u64;
                while n > 0 && len > 0 {
                    let w = &mut walks[rng.below(len) as usize];
                    let at = rng.below(w.len() as u64) as usize;
                    let e = w[at].clone();
                    w.insert(at + 1, e);
                    n -= 1;
                }
            }
        }
        for w in &mut walks {
            if w.len() >= 2 && rng.chance(opts.reorder_rate) {
                let at = rng.below(w.len() as u64 - 1) as usize;
                w.swap(at, at + 1);
            }
        }
        // Interleave: keep `concurrency` orders in flight, emit the next event of a random one.
        let mut events = Vec::with_capacity(base as usize + opts.malformed as usize);
        let mut queue: std::collections::VecDeque<std::vec::IntoIter<OrderEvent>> =
            walks.into_iter().map(Vec::into_iter).collect();
        let mut active: Vec<std::vec::IntoIter<OrderEvent>> = Vec::new();
        let mut malformed_left = opts.malformed;
        let total_good = queue.iter().map(|w| w.len() as u64).sum::<u64>().max(1);
        let mut emitted_good = 0u64;
        loop {
            while active.len() < opts.concurrency.max(1) {
                match queue.pop_front() {
                    Some(w) => active.push(w),
                    None => break,
                }
            }
            if active.is_empty() {
                break;
            }
            let i = rng.below(active.len() as u64) as usize;
            match active[i].next() {
                Some(e) => {
                    events.push(TrafficEvent {
                        key: Some(e.order_id.clone()),
                        value: serde_json::to_string(&e).map_err(|e| e.to_string())?,
                        timestamp: e.ts,
                        event: Some(e),
                    });
                    emitted_good += 1;
                    // Spread malformed records evenly through the stream.
                    let due = opts.malformed * emitted_good / total_good;
                    while opts.malformed - malformed_left < due {
                        let n = opts.malformed - malformed_left;
                        let ts = events.last().map_or(opts.start_ts, |e| e.timestamp);
                        events.push(malformed(&mut rng, n, ts));
                        malformed_left -= 1;
                    }
                }
                None => {
                    active.swap_remove(i);
                }
            }
        }
        while malformed_left > 0 {
            let n = opts.malformed - malformed_left;
            events.push(malformed(&mut rng, n, opts.start_ts));
            malformed_left -= 1;
        }
        Ok(Traffic { events })
    }

    /// The final view of every order, folded with the topology's own rules in send order (Kafka
    /// keeps per-key order because every event of an order goes to the same partition).
    pub fn model(&self) -> BTreeMap<String, StoredOrder> {
        let mut per_order: BTreeMap<String, Vec<&OrderEvent>> = BTreeMap::new();
        for e in self.events.iter().filter_map(|e| e.event.as_ref()) {
            per_order.entry(e.order_id.clone()).or_default().push(e);
        }
        per_order
            .into_iter()
            .filter_map(|(id, evs)| fold_events(evs).map(|v| (id, v)))
            .collect()
    }

    /// Number of valid order events.
    pub fn good_events(&self) -> usize {
        self.events.iter().filter(|e| e.event.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_traffic_other_seed_other_traffic() {
        let o = GeneratorOptions {
            orders: 200,
            ..Default::default()
        };
        let a = Traffic::generate(&o).unwrap();
        let b = Traffic::generate(&o).unwrap();
        assert_eq!(a.events, b.events);
        let c = Traffic::generate(&GeneratorOptions { seed: 7, ..o }).unwrap();
        assert_ne!(a.events, c.events);
    }

    #[test]
    fn exact_event_count_and_every_order_modelled() {
        let o = GeneratorOptions {
            orders: 10_000,
            events: Some(50_000),
            ..Default::default()
        };
        let t = Traffic::generate(&o).unwrap();
        assert_eq!(t.events.len(), 50_000);
        let model = t.model();
        assert_eq!(model.len(), 10_000);
        // The walks produce duplicates: some views must have fewer events than were sent.
        let sent: usize = t.good_events();
        let applied: u64 = model.values().map(|v| u64::from(v.view.events)).sum();
        assert!(
            applied < sent as u64,
            "duplicates must not count: {applied} vs {sent}"
        );
    }

    #[test]
    fn too_few_events_is_an_error() {
        let o = GeneratorOptions {
            orders: 100,
            events: Some(10),
            ..Default::default()
        };
        assert!(Traffic::generate(&o).is_err());
    }

    #[test]
    fn malformed_records_are_mixed_in_and_unparseable() {
        let o = GeneratorOptions {
            orders: 500,
            malformed: 100,
            ..Default::default()
        };
        let t = Traffic::generate(&o).unwrap();
        let bad: Vec<_> = t.events.iter().filter(|e| e.event.is_none()).collect();
        assert_eq!(bad.len(), 100);
        for b in bad {
            let parsed = paystream_topology::order::parse_event(
                b.key.as_deref().map(str::as_bytes),
                Some(b.value.as_bytes()),
            );
            assert!(parsed.is_err(), "{b:?} should be rejected");
        }
        // Not all at the end: the first malformed record comes before the last good one.
        let first_bad = t.events.iter().position(|e| e.event.is_none()).unwrap();
        let last_good = t.events.iter().rposition(|e| e.event.is_some()).unwrap();
        assert!(first_bad < last_good);
    }

    #[test]
    fn outcomes_cover_every_terminal_state_and_some_incomplete() {
        let t = Traffic::generate(&GeneratorOptions {
            orders: 5_000,
            ..Default::default()
        })
        .unwrap();
        let model = t.model();
        for state in [
            EventType::ApprovalCompleted,
            EventType::ApprovalFailed,
            EventType::Cancelled,
        ] {
            assert!(
                model.values().any(|v| v.view.state == state),
                "no order ended {state:?}"
            );
        }
        assert!(model.values().any(|v| matches!(
            v.view.state,
            EventType::ApprovalRequested | EventType::ApprovalCallbackCompleted
        )));
    }
}
