//! Judges every answer the drill gets against what the drill knows it sent.
//!
//! Pure: the edges feed it facts with their times (an event handed to the producer, an event
//! acknowledged at an offset, the group's committed offset of a partition seen at a time) and
//! answers with the times they were asked and received; it returns a [`Verdict`].
//!
//! The rules (`k` is how many of the order's events the answered view reflects: the largest `k`
//! whose model view, [`History::views`], equals the answer):
//! - **Never a state the order never had.** The answer must equal the model's view after some
//!   prefix of the events *sent before the answer arrived*; otherwise it is [`Verdict::Wrong`].
//! - **An active reads its committed writes.** An answer labelled `active` must reflect every
//!   event whose offset the group had committed before the query was sent (the latest committed
//!   offset the drill had seen by then, so the check never asks for more than was committed).
//!   A paused or fenced instance that still calls itself active shows up here.
//! - **`consistency=active` is never served by a standby.**
//! - **Stale is allowed when labelled.** A `standby` answer missing events acknowledged before
//!   the query was sent is [`Verdict::Stale`], with how many events it is behind.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::model::{Event, History};

/// Microseconds since the drill began.
pub type Micros = u64;

/// The role an answer states (`role` in the body of a 200 or a 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Active,
    Standby,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "active" => Some(Role::Active),
            "standby" => Some(Role::Standby),
            _ => None,
        }
    }
}

/// One answer to `GET /orders/{order}`.
#[derive(Debug, Clone)]
pub struct Answer {
    pub order: String,
    pub sent_at: Micros,
    pub received_at: Micros,
    /// Asked with `consistency=active`.
    pub active_only: bool,
    /// The `order` object of a 200; `None` for a 404 (`order_not_found`).
    pub view: Option<Value>,
    pub role: Role,
    /// `served_by` of the answer (`HOST:PORT`), for the report.
    pub served_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Reflects every event acknowledged before the query (or, from an active, at least every
    /// committed one).
    Fresh,
    /// A standby's answer, this many acknowledged events behind.
    Stale { behind: usize },
    /// A state the order never had, or a broken promise; the reason says which.
    Wrong(String),
}

#[derive(Debug, Clone)]
struct Track {
    partition: i32,
    history: History,
    /// Per event (in send order): when it was handed to the producer.
    sent: Vec<Option<Micros>>,
    /// Per event: when it was acknowledged, and its offset.
    acked: Vec<Option<(Micros, i64)>>,
    /// Per event: the SMS template it asks for.
    sms: Vec<Option<&'static str>>,
}

/// What the drill knows; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Checker {
    orders: HashMap<String, Track>,
    /// Per partition: (seen at, committed offset), in time order.
    committed: BTreeMap<i32, Vec<(Micros, i64)>>,
    /// Orders with an event sent, in the order their first was.
    started: Vec<String>,
}

impl Checker {
    /// `orders`: each order's partition and events in send order.
    pub fn new(orders: impl IntoIterator<Item = (String, i32, Vec<Event>)>) -> Checker {
        let orders = orders
            .into_iter()
            .map(|(id, partition, events)| {
                let n = events.len();
                let track = Track {
                    partition,
                    history: History::of(&events),
                    sent: vec![None; n],
                    acked: vec![None; n],
                    sms: events.iter().map(Event::sms_template).collect(),
                };
                (id, track)
            })
            .collect();
        Checker {
            orders,
            committed: BTreeMap::new(),
            started: Vec::new(),
        }
    }

    /// Event `index` of `order` was handed to the producer at `at`.
    pub fn sent(&mut self, order: &str, index: usize, at: Micros) {
        if let Some(slot) = self
            .orders
            .get_mut(order)
            .and_then(|t| t.sent.get_mut(index))
        {
            if slot.is_none() && index == 0 {
                self.started.push(order.to_owned());
            }
            *slot = Some(at);
        }
    }

    /// Event `index` of `order` was acknowledged at `at`, written at `offset`.
    pub fn acked(&mut self, order: &str, index: usize, offset: i64, at: Micros) {
        if let Some(slot) = self
            .orders
            .get_mut(order)
            .and_then(|t| t.acked.get_mut(index))
        {
            *slot = Some((at, offset));
        }
    }

    /// The group's committed offset of `partition` was `offset` when looked at, at `at`.
    pub fn committed(&mut self, partition: i32, offset: i64, at: Micros) {
        let seen = self.committed.entry(partition).or_default();
        if seen.last().is_none_or(|(_, o)| *o != offset) {
            seen.push((at, offset));
        }
    }

    /// The committed offset of `partition` the drill had seen by `at`.
    fn committed_by(&self, partition: i32, at: Micros) -> i64 {
        self.committed
            .get(&partition)
            .and_then(|seen| seen.iter().rev().find(|(t, _)| *t <= at))
            .map_or(0, |(_, o)| *o)
    }

    /// The `n`-th order (modulo their number) with at least one event sent: what is worth
    /// asking for.
    pub fn started(&self, n: u64) -> Option<String> {
        let len = self.started.len() as u64;
        (len > 0).then(|| self.started[(n % len) as usize].clone())
    }

    /// The model's view of every order after the events sent so far (all of them, once the
    /// producer finished).
    pub fn final_views(&self) -> BTreeMap<String, Option<Value>> {
        self.orders
            .iter()
            .map(|(id, t)| {
                let sent = t.sent.iter().take_while(|s| s.is_some()).count();
                (id.clone(), t.history.views[sent].clone())
            })
            .collect()
    }

    /// The SMS (order, template) the events sent so far ask for, each exactly once.
    pub fn expected_sms(&self) -> std::collections::BTreeSet<(String, String)> {
        self.orders
            .iter()
            .flat_map(|(id, t)| {
                t.sent.iter().zip(&t.sms).filter_map(move |(s, sms)| {
                    Some((id.clone(), (*sms)?.to_owned())).filter(|_| s.is_some())
                })
            })
            .collect()
    }

    /// When the group had committed a new offset of every partition in `partitions` after
    /// `since` (the last of those first commits), if it has.
    pub fn resumed_at(&self, partitions: i32, since: Micros) -> Option<Micros> {
        (0..partitions)
            .map(|p| {
                let before = self.committed_by(p, since);
                self.committed
                    .get(&p)?
                    .iter()
                    .find(|(t, o)| *t > since && *o > before)
                    .map(|(t, _)| *t)
            })
            .try_fold(0, |acc, t| t.map(|t| acc.max(t)))
    }

    /// Events sent but never acknowledged (nothing may be checked against them afterwards).
    pub fn unacknowledged(&self) -> usize {
        self.orders
            .values()
            .map(|t| t.acked.iter().filter(|a| a.is_none()).count())
            .sum()
    }

    /// Judge one answer; see the module documentation.
    pub fn check(&self, a: &Answer) -> Verdict {
        let Some(t) = self.orders.get(&a.order) else {
            return match a.view {
                None => Verdict::Fresh,
                Some(_) => Verdict::Wrong(format!("{}: an order the drill never sent", a.order)),
            };
        };
        let sent_by_answer = t
            .sent
            .iter()
            .take_while(|s| s.is_some_and(|s| s <= a.received_at))
            .count();
        let Some(k) = (0..=sent_by_answer)
            .rev()
            .find(|k| t.history.views[*k] == a.view)
        else {
            return Verdict::Wrong(format!(
                "{}: {} is no state the order had after any of its first {sent_by_answer} events",
                a.order,
                a.view
                    .as_ref()
                    .map_or_else(|| "not found".to_owned(), Value::to_string)
            ));
        };
        let acked_before = t
            .acked
            .iter()
            .rposition(|x| x.is_some_and(|(at, _)| at <= a.sent_at))
            .map_or(0, |i| i + 1);
        let committed = self.committed_by(t.partition, a.sent_at);
        let must_have = t
            .acked
            .iter()
            .rposition(|x| x.is_some_and(|(_, offset)| offset < committed))
            .map_or(0, |i| i + 1);
        match a.role {
            Role::Active if k < must_have => Verdict::Wrong(format!(
                "{}: an active answer reflects {k} events, but {must_have} were committed \
                 (partition {} committed to offset {committed}) before the query was sent \
                 (served by {}, asked at +{:.3} s, answered at +{:.3} s)",
                a.order,
                t.partition,
                a.served_by,
                a.sent_at as f64 / 1e6,
                a.received_at as f64 / 1e6
            )),
            Role::Standby if a.active_only => Verdict::Wrong(format!(
                "{}: a standby answered a consistency=active query",
                a.order
            )),
            Role::Standby if k < acked_before => Verdict::Stale {
                behind: acked_before - k,
            },
            _ => Verdict::Fresh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(id: &str, t: &str, ts: i64) -> Event {
        let v = json!({"order_id": "O-1", "event_id": id, "type": t, "ts": ts, "amount": 700});
        Event::from_record(Some("O-1"), &v.to_string()).unwrap()
    }

    /// O-1 on partition 3: requested (offset 10), completed (offset 20), both sent and acked by
    /// t=100; the group committed offset 11 (the first event) at t=150.
    fn checker() -> (Checker, Vec<Option<Value>>) {
        let events = vec![
            ev("e1", "APPROVAL_REQUESTED", 1),
            ev("e2", "APPROVAL_COMPLETED", 2),
        ];
        let views = History::of(&events).views;
        let mut c = Checker::new([("O-1".to_owned(), 3, events)]);
        c.sent("O-1", 0, 10);
        c.acked("O-1", 0, 10, 50);
        c.sent("O-1", 1, 60);
        c.acked("O-1", 1, 20, 100);
        c.committed(3, 11, 150);
        (c, views)
    }

    fn answer(view: Option<Value>, role: Role, sent_at: Micros) -> Answer {
        Answer {
            order: "O-1".into(),
            sent_at,
            received_at: sent_at + 5,
            active_only: false,
            view,
            role,
            served_by: "127.0.0.1:1".to_owned(),
        }
    }

    #[test]
    fn the_current_view_is_fresh_and_an_older_one_from_a_standby_is_stale() {
        let (c, views) = checker();
        let current = answer(views[2].clone(), Role::Active, 200);
        assert_eq!(c.check(&current), Verdict::Fresh);
        let older = answer(views[1].clone(), Role::Standby, 200);
        assert_eq!(c.check(&older), Verdict::Stale { behind: 1 });
        // The active may not have committed the second event yet: allowed.
        assert_eq!(
            c.check(&answer(views[1].clone(), Role::Active, 200)),
            Verdict::Fresh
        );
    }

    #[test]
    fn a_corrupted_answer_is_wrong() {
        let (c, views) = checker();
        let mut corrupted = views[2].clone().unwrap();
        corrupted["amount"] = json!(701);
        let v = c.check(&answer(Some(corrupted), Role::Active, 200));
        assert!(matches!(v, Verdict::Wrong(_)), "{v:?}");
    }

    #[test]
    fn a_state_the_order_never_had_is_wrong_even_from_a_standby() {
        let (c, views) = checker();
        let mut never = views[2].clone().unwrap();
        never["state"] = json!("CANCELLED");
        let v = c.check(&answer(Some(never), Role::Standby, 200));
        assert!(
            matches!(v, Verdict::Wrong(ref why) if why.contains("no state")),
            "{v:?}"
        );
    }

    #[test]
    fn a_state_from_events_not_yet_sent_is_wrong() {
        let (c, views) = checker();
        // Asked and answered before the second event was handed to the producer (t=60).
        let early = Answer {
            received_at: 30,
            ..answer(views[2].clone(), Role::Active, 20)
        };
        assert!(matches!(c.check(&early), Verdict::Wrong(_)));
    }

    #[test]
    fn an_active_missing_committed_events_is_wrong_a_standby_only_stale() {
        let (c, _) = checker();
        // Not found, after offset 10 was committed (seen at t=150).
        let v = c.check(&answer(None, Role::Active, 200));
        assert!(
            matches!(v, Verdict::Wrong(ref why) if why.contains("committed")),
            "{v:?}"
        );
        assert_eq!(
            c.check(&answer(None, Role::Standby, 200)),
            Verdict::Stale { behind: 2 }
        );
        // Before the drill saw the commit, not found from an active is only behind.
        assert_eq!(c.check(&answer(None, Role::Active, 120)), Verdict::Fresh);
    }

    #[test]
    fn a_standby_answering_consistency_active_is_wrong() {
        let (c, views) = checker();
        let a = Answer {
            active_only: true,
            ..answer(views[2].clone(), Role::Standby, 200)
        };
        assert!(matches!(c.check(&a), Verdict::Wrong(_)));
    }
}
