//! The one retry delay for every reconnect and retry loop: 0.2 s, doubling to a 5 s cap.
//!
//! The cap is low on purpose: after a long outage the delay sits at the cap, so it is also
//! how long mqdb may stay idle once the database, broker or state store is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Capped exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(200);
    pub const CAP: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The delay to wait now; the one after it is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(Self::CAP);
        delay
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps the next delay on a blocking thread, waking early for shutdown; false if
    /// `stop` was set meanwhile.
    pub fn sleep(&mut self, stop: &AtomicBool) -> bool {
        let deadline = std::time::Instant::now() + self.next_delay();
        while std::time::Instant::now() < deadline {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !stop.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_from_the_first_delay_to_the_cap() {
        let mut backoff = Backoff::new();
        let delays: Vec<u128> = (0..8).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Backoff::FIRST);
    }

    proptest! {
        #[test]
        fn never_exceeds_the_cap_nor_shrinks(failures in 1usize..200) {
            let mut backoff = Backoff::new();
            let mut last = Duration::ZERO;
            for _ in 0..failures {
                let delay = backoff.next_delay();
                prop_assert!(delay <= Backoff::CAP && delay >= last);
                last = delay;
            }
        }
    }

    #[test]
    fn a_stop_cuts_the_sleep_short() {
        let mut backoff = Backoff::new();
        assert!(!backoff.sleep(&AtomicBool::new(true)));
        assert!(backoff.sleep(&AtomicBool::new(false)));
    }
}
