//! PostgreSQL: the transactions running in the route's database other than the poller's own,
//! read from the lock table. `visibility: snapshot` waits for them (see
//! `outbound::barrier`).

use odbc_api::buffers::TextRowSet;
use odbc_api::{Connection, Cursor};

use super::describe::odbc;
use crate::error::DbError;

/// Every transaction holds the lock on its own virtual transaction id from its first
/// statement to its end, whether or not it has written anything yet, so these rows are the
/// transactions running right now. `pg_locks`, and the `datid` and `usesysid` that
/// `pg_stat_get_activity` (what `pg_stat_activity` shows) reports for any session, are
/// readable by every role. Asking it for each lock's `pid` reads one session's entry per
/// transaction instead of every session's: half the time of a join with the view (about
/// 0.5 ms instead of 1 ms with 20 transactions open). Sessions without a user (autovacuum
/// and other background workers) write no application rows, and a long vacuum must not
/// hold routes back.
const RUNNING: &str = "SELECT l.virtualxid, l.pid FROM pg_locks l \
     CROSS JOIN LATERAL pg_stat_get_activity(l.pid) a \
     WHERE l.locktype = 'virtualxid' AND l.mode = 'ExclusiveLock' \
     AND l.pid <> pg_backend_pid() \
     AND a.datid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND a.usesysid IS NOT NULL";

/// One running transaction: its virtual id and the session (`pid`) running it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Transaction {
    pub vxid: String,
    pub pid: i64,
}

/// The transactions running now, then the end of the poller's own transaction, so that the
/// next statement takes a snapshot later than this reading.
pub fn running(conn: &Connection<'_>) -> Result<Vec<Transaction>, DbError> {
    let mut found = Vec::new();
    if let Some(cursor) = conn.execute(RUNNING, (), None).map_err(odbc(conn))? {
        let buffer = TextRowSet::from_max_str_lens(256, [64usize, 24]).map_err(odbc(conn))?;
        let mut block = cursor.bind_buffer(buffer).map_err(odbc(conn))?;
        while let Some(batch) = block.fetch().map_err(odbc(conn))? {
            for r in 0..batch.num_rows() {
                let text = |c| {
                    batch
                        .at_as_str(c, r)
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                        .to_string()
                };
                found.push(Transaction {
                    vxid: text(0),
                    pid: text(1).parse().unwrap_or_default(),
                });
            }
        }
    }
    conn.commit().map_err(odbc(conn))?;
    Ok(found)
}
