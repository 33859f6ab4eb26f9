//! Reading values back from the databases under test, and SQL probes the tests poll.

use chrono::NaiveDateTime;

/// A timestamp read back as text (`YYYY-MM-DD HH:MM:SS[.ffffff]`, or with `T`).
pub fn parse_ts(text: &str) -> NaiveDateTime {
    let t = text.trim().replace('T', " ");
    NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("{text:?} is not a timestamp: {e}"))
}

/// An expected timestamp written in a test (`YYYY-MM-DD HH:MM:SS[.ffffff]`).
pub fn ts(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").expect("expected timestamp")
}

/// PostgreSQL: how many other sessions wait on a lock in a statement that names `table`.
pub fn pg_lock_waiters(table: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE '%{table}%' AND pid <> pg_backend_pid()"
    )
}
