//! What a replay did, as its summary line, and its progress on a terminal.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

/// What a replay did.
#[derive(Debug, Default)]
pub struct Summary {
    pub total: u64,
    pub replayed: u64,
    /// Skipped because another live replay held them, and still in the queue at the end.
    pub held: u64,
    /// Failed again, by error kind.
    pub failed: BTreeMap<String, u64>,
    pub interrupted: bool,
    /// The outage that stopped the replay.
    pub outage: Option<String>,
    pub dry_run: bool,
}

impl Summary {
    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Nothing selected is left for this replay to deliver: none failed, none was held by
    /// another replay, and it ran to the end. Entries that left the queue meanwhile (purged,
    /// or delivered by another replay) are counted apart.
    pub fn succeeded(&self) -> bool {
        self.failures() == 0 && self.held == 0 && !self.interrupted && self.outage.is_none()
    }

    /// Selected entries this replay did not find when it came to them: purged, or delivered
    /// by another replay, while it ran. Unknown (counted as not attempted) when it stopped
    /// early.
    pub fn gone(&self) -> u64 {
        if self.interrupted || self.outage.is_some() {
            return 0;
        }
        self.total
            .saturating_sub(self.replayed + self.failures() + self.held)
    }

    pub fn render(&self) -> String {
        let verb = if self.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        let mut out = format!("{verb} {} of {}", self.replayed, self.total);
        let failed = self.failures();
        if failed > 0 {
            let kinds: Vec<String> = self
                .failed
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            let verb = if self.dry_run { "would fail" } else { "failed" };
            out.push_str(&format!(", {verb} {failed} ({})", kinds.join(", ")));
        }
        if self.held > 0 {
            out.push_str(&format!(
                ", {} held by another replay (a dead replay's claims expire after 10 minutes)",
                self.held
            ));
        }
        let gone = self.gone();
        if gone > 0 {
            out.push_str(&format!(
                ", {gone} no longer in the queue (purged or replayed elsewhere meanwhile)"
            ));
        }
        let left = self
            .total
            .saturating_sub(self.replayed + failed + self.held + gone);
        if left > 0 {
            out.push_str(&format!(", {left} not attempted"));
        }
        if self.interrupted {
            out.push_str("; interrupted: what was not attempted is still in the queue");
        }
        if let Some(e) = &self.outage {
            out.push_str(&format!("; stopped by an outage (no attempt counted): {e}"));
        }
        out
    }
}

/// Progress on a terminal: one line, rewritten.
pub(super) struct Progress {
    total: u64,
    on: bool,
}

impl Progress {
    pub(super) fn new(total: u64) -> Progress {
        Progress {
            total,
            on: std::io::stderr().is_terminal() && total > 0,
        }
    }

    pub(super) fn show(&self, done: u64, failed: u64) {
        if self.on {
            let mut err = std::io::stderr();
            let _ = write!(
                err,
                "\rreplaying: {done}/{} done, {failed} failed",
                self.total
            );
            let _ = err.flush();
        }
    }

    pub(super) fn finish(&self) {
        if self.on {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(total: u64, replayed: u64, failed: u64, held: u64) -> Summary {
        let mut s = Summary {
            total,
            replayed,
            held,
            ..Summary::default()
        };
        if failed > 0 {
            s.failed.insert("rejected".into(), failed);
        }
        s
    }

    #[test]
    fn every_selected_entry_is_accounted_for_once() {
        let s = summary(10, 5, 1, 3);
        assert_eq!(s.gone(), 1);
        assert_eq!(
            s.render(),
            "replayed 5 of 10, failed 1 (rejected: 1), 3 held by another replay (a dead \
             replay's claims expire after 10 minutes), 1 no longer in the queue (purged or \
             replayed elsewhere meanwhile)"
        );
        assert!(!s.succeeded());
        // Entries purged meanwhile are not held, and leave nothing to do.
        let purged = summary(10, 7, 0, 0);
        assert!(purged.succeeded());
        assert!(!purged.render().contains("held"), "{}", purged.render());
        // Stopped early: what is left is not attempted, not gone.
        let mut stopped = summary(10, 4, 0, 0);
        stopped.interrupted = true;
        assert_eq!(stopped.gone(), 0);
        assert!(stopped.render().contains("6 not attempted"));
    }
}
