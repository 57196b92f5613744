//! Which polled SMS may be handed to a gateway call next, keeping each order's SMS in order.
//!
//! Two SMS of one order (key) are never in flight at once: a record whose key is busy waits
//! behind it, in arrival (= offset) order; records of other keys pass it. The caller takes
//! [`Dispatcher::take_next`] whenever a permit is free and pauses a partition while
//! [`Dispatcher::buffered`] is high (so memory is bounded by the pause threshold, not by the
//! gateway's speed). Pure and generic over the record.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// Records waiting for a permit or for their key, and the keys in flight.
#[derive(Debug)]
pub struct Dispatcher<K, R> {
    ready: VecDeque<(K, R)>,
    /// Keys of `ready` (a key is there at most once: later records of it are blocked).
    ready_keys: HashSet<K>,
    /// Per busy key: its records that arrived while it was in flight, oldest first.
    blocked: HashMap<K, VecDeque<R>>,
    in_flight: HashSet<K>,
    buffered: usize,
}

impl<K: Eq + Hash + Clone, R> Default for Dispatcher<K, R> {
    fn default() -> Self {
        Dispatcher {
            ready: VecDeque::new(),
            ready_keys: HashSet::new(),
            blocked: HashMap::new(),
            in_flight: HashSet::new(),
            buffered: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, R> Dispatcher<K, R> {
    /// A polled record (records of a partition arrive in offset order).
    pub fn offer(&mut self, key: K, record: R) {
        self.buffered += 1;
        let busy = self.in_flight.contains(&key)
            || self.blocked.contains_key(&key)
            || self.ready_keys.contains(&key);
        if busy {
            self.blocked.entry(key).or_default().push_back(record);
        } else {
            self.ready_keys.insert(key.clone());
            self.ready.push_back((key, record));
        }
    }

    /// The next record to call the gateway with (its key is now in flight), if any may go.
    pub fn take_next(&mut self) -> Option<(K, R)> {
        let (key, record) = self.ready.pop_front()?;
        self.ready_keys.remove(&key);
        self.in_flight.insert(key.clone());
        self.buffered -= 1;
        Some((key, record))
    }

    /// The call for `key` finished: its next record (if one waits) becomes ready.
    pub fn finished(&mut self, key: &K) {
        if !self.in_flight.remove(key) {
            return;
        }
        if let Some(queue) = self.blocked.get_mut(key) {
            if let Some(record) = queue.pop_front() {
                self.ready_keys.insert(key.clone());
                self.ready.push_back((key.clone(), record));
            }
            if queue.is_empty() {
                self.blocked.remove(key);
            }
        }
    }

    /// Records held (ready or blocked behind their key), not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Records that may be taken now.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Keys with a call in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_busy_key_holds_its_next_record_and_others_pass() {
        let mut d = Dispatcher::default();
        d.offer("a", 1);
        d.offer("a", 2);
        d.offer("b", 3);
        assert_eq!(d.take_next(), Some(("a", 1)));
        assert_eq!(d.take_next(), Some(("b", 3)));
        assert_eq!(d.take_next(), None, "a's second SMS waits for its first");
        d.finished(&"a");
        assert_eq!(d.take_next(), Some(("a", 2)));
        assert_eq!(d.buffered(), 0);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Offer(u8),
        Take,
        Finish(prop::sample::Index),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..5).prop_map(Step::Offer),
            Just(Step::Take),
            any::<prop::sample::Index>().prop_map(Step::Finish),
        ]
    }

    proptest! {
        /// Against the model "each key's records in arrival order, one at a time": never two
        /// calls of one key at once, each key's records handed out in order, nothing lost.
        #[test]
        fn one_call_per_key_in_order_and_nothing_lost(steps in proptest::collection::vec(step(), 1..300)) {
            let mut d: Dispatcher<u8, u64> = Dispatcher::default();
            let mut seq = 0u64;
            let mut offered: HashMap<u8, Vec<u64>> = HashMap::new();
            let mut handed: HashMap<u8, Vec<u64>> = HashMap::new();
            let mut out: Vec<u8> = Vec::new();
            let mut run = |d: &mut Dispatcher<u8, u64>, s: &Step, out: &mut Vec<u8>| -> Result<(), TestCaseError> {
                match s {
                    Step::Offer(k) => {
                        seq += 1;
                        offered.entry(*k).or_default().push(seq);
                        d.offer(*k, seq);
                    }
                    Step::Take => {
                        if let Some((k, r)) = d.take_next() {
                            prop_assert!(!out.contains(&k), "key {} twice in flight", k);
                            out.push(k);
                            handed.entry(k).or_default().push(r);
                        }
                    }
                    Step::Finish(i) => {
                        if !out.is_empty() {
                            let k = out.remove(i.index(out.len()));
                            d.finished(&k);
                        }
                    }
                }
                Ok(())
            };
            for s in &steps {
                run(&mut d, s, &mut out)?;
            }
            // Drain: finish everything, take everything.
            loop {
                while let Some(k) = out.pop() { d.finished(&k); }
                match d.take_next() {
                    Some((k, r)) => { out.push(k); handed.entry(k).or_default().push(r); }
                    None => break,
                }
            }
            prop_assert_eq!(d.buffered(), 0);
            prop_assert_eq!(handed, offered);
        }
    }
}
