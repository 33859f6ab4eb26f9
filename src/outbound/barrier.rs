//! `visibility: snapshot`: how far a PostgreSQL route may publish without ever skipping a row
//! that commits out of order.
//!
//! # The barrier rule
//!
//! Poll k runs the query from the position (snapshot S_k, rows R_k). Right after it, later
//! than S_k, the poller reads A_k, the transactions running in the database other than its
//! own. The route keeps a barrier B = (limit: the track values of the last row of R_k,
//! transactions: A_k). At a later poll j, if none of B's transactions is still running
//! before the query takes S_j, every row up to B.limit is *cleared*: the route publishes the
//! rows of R_j up to B.limit (the position moves at most there) and sets a new barrier from
//! poll j. While B is unmet it publishes nothing beyond what was cleared before and keeps B:
//! replacing it by a newer one would starve under steady load.
//!
//! # Why it is sound
//!
//! Take track values that grow with the time they are taken (a sequence with `CACHE 1`,
//! the default, or an identity column; `now()`/`clock_timestamp()` defaults) and that are
//! taken inside the writing transaction. A row with value v < B.limit that S_k did not see
//! was written by a transaction T that took v before the transaction of the limit row took
//! its value. That transaction committed before S_k (S_k saw its row), so T had begun
//! before S_k, hence before A_k was read. When A_k was read, T was either still running,
//! and then T is in A_k (a transaction holds the lock on its virtual id from its first
//! statement, with or without a transaction id), or already over. Once every member of A_k
//! has ended, T is over, so a snapshot taken after that (S_j) sees T's rows if it
//! committed. Nothing below B.limit can appear after the position passed it.
//!
//! A transaction's rows are visible to new snapshots before it releases the lock on its
//! virtual id (PostgreSQL ends it in the proc array first, then releases its locks; `CREATE
//! INDEX CONCURRENTLY` waits for writers the same way).
//!
//! It does not hold when a session caches sequence values (`CACHE` > 1), when the
//! application takes values before its transaction begins (and inserts them later), when
//! values come from more than one clock, or for two-phase commit: a prepared transaction
//! gives up its virtual id before it commits (`max_prepared_transactions` is 0 by
//! default).
//!
//! # Cost
//!
//! A row is published one poll interval after it is first read, plus the longest
//! transaction that was running then; a session idle in a transaction in the same database
//! holds the route back until it ends. After a restart the barrier is empty: the first
//! poll only sets one.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::cell::Cell;
use crate::db::poll::Running;

/// What the route may publish, and what it waits for.
#[derive(Debug, Default)]
pub struct Gate {
    /// Track values up to which every row the query will ever return is visible now.
    cleared: Option<Vec<Cell>>,
    pending: Option<Barrier>,
    /// When a long wait was last logged.
    warned: Option<Instant>,
}

/// A wait this long is logged, at most once per [`WARN_EVERY`].
pub const WARN_AFTER: Duration = Duration::from_secs(10);
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Rows up to `limit` are cleared once none of `transactions` is running.
#[derive(Debug)]
struct Barrier {
    limit: Vec<Cell>,
    transactions: BTreeSet<String>,
    since: Instant,
}

/// A barrier still waited for: since when, and the sessions whose transactions hold it.
#[derive(Debug, PartialEq, Eq)]
pub struct Waiting {
    pub since: Instant,
    pub pids: Vec<i64>,
}

impl Gate {
    /// How many leading `rows` (in track order, track columns at `track`) may be published
    /// after a poll that saw `running`, read at `now`.
    pub fn admit(
        &mut self,
        rows: &[Vec<Cell>],
        track: &[usize],
        running: &Running,
        now: Instant,
    ) -> usize {
        if let Some(b) = &self.pending
            && !running
                .before
                .iter()
                .any(|t| b.transactions.contains(&t.vxid))
        {
            self.cleared = self.pending.take().map(|b| b.limit);
        }
        let values =
            |row: &Vec<Cell>| -> Vec<Cell> { track.iter().map(|&c| row[c].clone()).collect() };
        let admitted = match &self.cleared {
            Some(limit) => rows
                .iter()
                .take_while(|row| compare_at(row, track, limit) != Ordering::Greater)
                .count(),
            None => 0,
        };
        if self.pending.is_none()
            && let Some(last) = rows[admitted..].last()
        {
            self.pending = Some(Barrier {
                limit: values(last),
                transactions: running.after.iter().map(|t| t.vxid.clone()).collect(),
                since: now,
            });
        }
        admitted
    }

    /// The barrier still waited for after the last poll, with the sessions (as that poll
    /// saw them before its query) that hold it.
    pub fn waiting(&self, running: &Running) -> Option<Waiting> {
        let b = self.pending.as_ref()?;
        let mut pids: Vec<i64> = running
            .before
            .iter()
            .filter(|t| b.transactions.contains(&t.vxid))
            .map(|t| t.pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        Some(Waiting {
            since: b.since,
            pids,
        })
    }

    /// Whether a wait since `since` is long enough to log at `now`, and not logged within
    /// the last minute.
    pub fn warn(&mut self, since: Instant, now: Instant) -> bool {
        let long = now.saturating_duration_since(since) >= WARN_AFTER;
        let quiet = self
            .warned
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY);
        if long && quiet {
            self.warned = Some(now);
        }
        long && quiet
    }
}

/// Track tuples in the order the query returns them: column by column.
/// `row`'s track values (at `track`) against `limit`, without copying them: this runs for
/// every row of every poll.
fn compare_at(row: &[Cell], track: &[usize], limit: &[Cell]) -> Ordering {
    track
        .iter()
        .zip(limit)
        .map(|(&c, y)| compare_cell(&row[c], y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

fn compare_cell(a: &Cell, b: &Cell) -> Ordering {
    use Cell::*;
    match (a, b) {
        (Int(x), Int(y)) => x.cmp(y),
        (Float(x), Float(y)) => x.total_cmp(y),
        (Int(x), Float(y)) => (*x as f64).total_cmp(y),
        (Float(x), Int(y)) => x.total_cmp(&(*y as f64)),
        (Decimal(x), Decimal(y)) => compare_decimal(x, y),
        (Int(x), Decimal(y)) => compare_decimal(&x.to_string(), y),
        (Decimal(x), Int(y)) => compare_decimal(x, &y.to_string()),
        (Timestamp(x) | LocalTimestamp(x), Timestamp(y) | LocalTimestamp(y)) => x.cmp(y),
        (Date(x), Date(y)) => x.cmp(y),
        (Bool(x), Bool(y)) => x.cmp(y),
        _ => a.text().cmp(&b.text()),
    }
}

/// Decimal numbers as the database prints them (`-12.50`), compared exactly.
fn compare_decimal(a: &str, b: &str) -> Ordering {
    let (neg_a, a) = magnitude(a);
    let (neg_b, b) = magnitude(b);
    let zero = |m: &(String, String)| m.0.is_empty() && m.1.is_empty();
    let (neg_a, neg_b) = (neg_a && !zero(&a), neg_b && !zero(&b));
    match (neg_a, neg_b) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        _ => {
            let by_magnitude =
                a.0.len()
                    .cmp(&b.0.len())
                    .then_with(|| a.0.cmp(&b.0))
                    .then_with(|| a.1.cmp(&b.1));
            if neg_a {
                by_magnitude.reverse()
            } else {
                by_magnitude
            }
        }
    }
}

/// The sign, and the integer and fraction digits without leading or trailing zeros.
fn magnitude(text: &str) -> (bool, (String, String)) {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    (
        negative,
        (
            int.trim_start_matches('0').to_string(),
            frac.trim_end_matches('0').to_string(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::poll::Transaction;

    fn ids(ids: &[i64]) -> Vec<Vec<Cell>> {
        ids.iter().map(|&i| vec![Cell::Int(i)]).collect()
    }

    fn tx(vxids: &[&str]) -> Vec<Transaction> {
        vxids
            .iter()
            .enumerate()
            .map(|(i, v)| Transaction {
                vxid: (*v).to_string(),
                pid: 100 + i as i64,
            })
            .collect()
    }

    fn seen(before: &[&str], after: &[&str]) -> Running {
        Running {
            before: tx(before),
            after: tx(after),
        }
    }

    #[test]
    fn the_first_poll_only_sets_a_barrier() {
        let mut gate = Gate::default();
        let now = Instant::now();
        assert_eq!(gate.admit(&ids(&[1, 2, 3]), &[0], &seen(&[], &[]), now), 0);
        // Nobody was running: the next poll publishes up to the limit, not past it
        assert_eq!(
            gate.admit(&ids(&[1, 2, 3, 4]), &[0], &seen(&[], &[]), now),
            3
        );
    }

    #[test]
    fn an_unmet_barrier_publishes_nothing_and_is_kept() {
        let mut gate = Gate::default();
        let t0 = Instant::now();
        assert_eq!(gate.admit(&ids(&[1, 2]), &[0], &seen(&[], &["3/7"]), t0), 0);
        // 3/7 is still running at the next polls, while newer rows keep coming
        let later = t0 + std::time::Duration::from_secs(5);
        let busy = seen(&["3/7", "4/1"], &["3/7", "4/1", "5/2"]);
        assert_eq!(gate.admit(&ids(&[1, 2, 3]), &[0], &busy, later), 0);
        assert_eq!(gate.admit(&ids(&[1, 2, 3, 4]), &[0], &busy, later), 0);
        assert_eq!(
            gate.waiting(&busy),
            Some(Waiting {
                since: t0,
                pids: vec![100]
            }),
            "the first barrier is kept, held by the session running 3/7"
        );
        // 3/7 ended (4/1 still runs, but it was not in the barrier): up to 2 only
        let ended = seen(&["4/1"], &["4/1"]);
        assert_eq!(gate.admit(&ids(&[1, 2, 3, 4]), &[0], &ended, later), 2);
    }

    #[test]
    fn a_row_committed_late_below_the_limit_is_published() {
        let mut gate = Gate::default();
        let now = Instant::now();
        // Poll 1 sees 2 but not 1 (its transaction, 9/1, still runs)
        gate.admit(&ids(&[2]), &[0], &seen(&["9/1"], &["9/1"]), now);
        // Poll 2: 9/1 still runs; nothing goes
        assert_eq!(
            gate.admit(&ids(&[2]), &[0], &seen(&["9/1"], &["9/1"]), now),
            0
        );
        // Poll 3: 9/1 committed row 1 before this poll's query: 1 and 2 go, in order
        assert_eq!(gate.admit(&ids(&[1, 2, 5]), &[0], &seen(&[], &[]), now), 2);
    }

    #[test]
    fn rows_below_an_earlier_limit_go_while_a_later_barrier_waits() {
        let mut gate = Gate::default();
        let now = Instant::now();
        gate.admit(&ids(&[1, 2, 3, 4]), &[0], &seen(&[], &[]), now);
        // Cleared to 4, but max_rows cut this poll at 2: both go, no new barrier needed
        assert_eq!(
            gate.admit(&ids(&[1, 2]), &[0], &seen(&[], &["1/1"]), now),
            2
        );
        assert_eq!(
            gate.admit(&ids(&[3, 4, 5]), &[0], &seen(&["1/1"], &["1/1"]), now),
            2
        );
        assert_eq!(
            gate.waiting(&seen(&["1/1"], &[])).map(|w| w.pids),
            Some(vec![100])
        );
        assert_eq!(gate.admit(&ids(&[5, 6]), &[0], &seen(&[], &[]), now), 1);
    }

    #[test]
    fn no_rows_set_no_barrier() {
        let mut gate = Gate::default();
        let now = Instant::now();
        assert_eq!(gate.admit(&[], &[0], &seen(&[], &["1/1"]), now), 0);
        assert_eq!(gate.waiting(&seen(&["1/1"], &[])), None);
    }

    #[test]
    fn two_column_tracks_compare_column_by_column() {
        let ts = |s: &str| {
            Cell::Timestamp(chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap())
        };
        let rows = vec![
            vec![ts("2024-01-01 00:00:00"), Cell::Int(9)],
            vec![ts("2024-01-01 00:00:01"), Cell::Int(1)],
            vec![ts("2024-01-01 00:00:01"), Cell::Int(2)],
        ];
        let mut gate = Gate::default();
        let now = Instant::now();
        gate.admit(&rows[..2], &[0, 1], &seen(&[], &[]), now);
        assert_eq!(gate.admit(&rows, &[0, 1], &seen(&[], &[]), now), 2);
    }

    #[test]
    fn a_long_wait_is_logged_once_a_minute() {
        let mut gate = Gate::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!gate.warn(t0, at(5)), "a short wait is normal");
        assert!(gate.warn(t0, at(10)));
        assert!(!gate.warn(t0, at(30)));
        assert!(gate.warn(t0, at(70)));
    }

    #[test]
    fn decimals_compare_exactly() {
        let d = |a: &str, b: &str| compare_decimal(a, b);
        assert_eq!(d("10", "9"), Ordering::Greater);
        assert_eq!(d("9.50", "9.5"), Ordering::Equal);
        assert_eq!(d("-2", "-10"), Ordering::Greater);
        assert_eq!(d("-0.0", "0"), Ordering::Equal);
        assert_eq!(
            d(
                "123456789012345678901234567890",
                "123456789012345678901234567891"
            ),
            Ordering::Less
        );
        assert_eq!(d("0.001", "0.01"), Ordering::Less);
        assert_eq!(
            compare_cell(&Cell::Int(10), &Cell::Decimal("9.9".into())),
            Ordering::Greater
        );
    }
}
