//! Acknowledgement order shared by the sources: messages are registered in receive order,
//! routes report them done in any order, and a message's acknowledgement is released only
//! once it and every earlier message are done (MQTT 3.1.1 §4.6; AMQP `multiple` acks).

use std::collections::{HashMap, VecDeque};

struct Entry<T> {
    seq: u64,
    /// Routes still working on the message.
    routes: usize,
    token: T,
}

/// Messages waiting for their routes, in receive order, each with what acknowledges it.
pub struct Sequencer<T> {
    pending: VecDeque<Entry<T>>,
    /// Done reports that arrived before their registration.
    early: HashMap<u64, usize>,
    /// The sequence number the next registration will have.
    next: u64,
}

impl<T> Default for Sequencer<T> {
    fn default() -> Self {
        Sequencer {
            pending: VecDeque::new(),
            early: HashMap::new(),
            next: 0,
        }
    }
}

impl<T> Sequencer<T> {
    /// Registers the next message; `seq` numbers are contiguous and increasing.
    pub fn register(&mut self, seq: u64, routes: usize, token: T) {
        let routes = match self.early.remove(&seq) {
            Some(done) => routes.saturating_sub(done),
            None => routes,
        };
        self.next = seq + 1;
        self.pending.push_back(Entry { seq, routes, token });
    }

    /// One route is done with message `seq`.
    pub fn done(&mut self, seq: u64) {
        // Sequence numbers are contiguous, so the entry sits at a known offset.
        let entry = self
            .pending
            .front()
            .and_then(|f| usize::try_from(seq.wrapping_sub(f.seq)).ok())
            .and_then(|i| self.pending.get_mut(i))
            .filter(|e| e.seq == seq);
        match entry {
            Some(e) => e.routes = e.routes.saturating_sub(1),
            // A number already registered was released or discarded.
            None if seq >= self.next => *self.early.entry(seq).or_default() += 1,
            None => {}
        }
    }

    /// The next acknowledgement that may be sent, in receive order.
    pub fn pop_ready(&mut self) -> Option<T> {
        if self.pending.front().is_some_and(|e| e.routes == 0) {
            self.pending.pop_front().map(|e| e.token)
        } else {
            None
        }
    }

    /// Forgets every pending message (their connection is gone; the broker redelivers).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.early.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn releases_in_order_only() {
        let mut s = Sequencer::default();
        s.register(1, 1, "a");
        s.register(2, 2, "b");
        s.register(3, 1, "c");
        s.done(3);
        s.done(2);
        assert_eq!(s.pop_ready(), None);
        s.done(1);
        assert_eq!(s.pop_ready(), Some("a"));
        assert_eq!(s.pop_ready(), None, "b waits for its second route");
        s.done(2);
        assert_eq!(s.pop_ready(), Some("b"));
        assert_eq!(s.pop_ready(), Some("c"));
        assert!(s.is_empty());
    }

    #[test]
    fn done_before_register_counts() {
        let mut s = Sequencer::default();
        s.done(5);
        s.register(5, 1, ());
        assert_eq!(s.pop_ready(), Some(()));
    }

    #[test]
    fn reports_for_cleared_messages_are_ignored() {
        let mut s = Sequencer::default();
        s.register(1, 1, 1);
        s.clear();
        s.register(2, 1, 2);
        s.done(1);
        assert_eq!(s.pop_ready(), None);
        s.done(2);
        assert_eq!(s.pop_ready(), Some(2));
    }

    proptest! {
        /// Whatever order the routes finish in, every message is released exactly once,
        /// in receive order, and never before all its routes are done.
        #[test]
        fn any_completion_order(routes in proptest::collection::vec(1usize..4, 1..40), seed in any::<u64>()) {
            let mut s = Sequencer::default();
            let mut reports: Vec<u64> = Vec::new();
            for (i, r) in routes.iter().enumerate() {
                s.register(i as u64, *r, i as u64);
                reports.extend(std::iter::repeat_n(i as u64, *r));
            }
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..reports.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                reports.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut remaining = routes.clone();
            let mut released = Vec::new();
            for seq in reports {
                s.done(seq);
                remaining[seq as usize] -= 1;
                while let Some(t) = s.pop_ready() {
                    prop_assert_eq!(remaining[t as usize], 0);
                    released.push(t);
                }
            }
            prop_assert_eq!(released, (0..routes.len() as u64).collect::<Vec<_>>());
        }
    }
}
