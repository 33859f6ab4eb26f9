//! Writing rows into a route's table over one connection: one transaction per batch, the
//! statement chosen per driver ([`Strategy`]), prepared statements kept for the life of
//! the connection, and the rows a database rejects found by halving the failed statement.

use std::collections::HashMap;

use odbc_api::handles::StatementImpl;
use odbc_api::{Connection, IntoParameter, Prepared};

use super::bulk;
use super::dialect::Dialect;
use super::insert::{Strategy, TablePlan, group_by_presence};
use super::postgres::Arrays;
use crate::convert::Value;
use crate::error::{Class, DbError};
use crate::mapping::Row;

/// Rows the database rejected, by index into the batch, with the reason.
pub type Rejected = Vec<(usize, DbError)>;

/// Writes batches of one table plan over one connection.
pub struct Writer<'c> {
    conn: &'c Connection<'static>,
    plan: &'c TablePlan,
    /// Statements kept for the connection's life, by the columns they bind and (for
    /// multi-row VALUES) the rows they carry.
    kept: HashMap<(Vec<usize>, usize), Kept<'c>>,
    /// Array parameters, reused from batch to batch.
    arrays: Arrays,
    /// Statements executed so far.
    executed: usize,
    /// A commit lost to an outage, which may have happened.
    unsettled: Option<Unsettled>,
}

/// A batch whose commit was sent when the connection failed: it may be in the database.
/// PostgreSQL says which, for its transaction id (`txid_status`), on a new connection.
#[derive(Debug)]
pub struct Unsettled {
    pub txid: i64,
    /// The rows the batch rejected, to dead-letter if it did commit.
    pub rejected: Rejected,
}

/// A statement kept for the life of the connection.
enum Kept<'c> {
    /// `unnest` (PostgreSQL), or multi-row VALUES for a whole chunk.
    Prepared(Prepared<StatementImpl<'c>>),
    /// Parameter arrays with their buffers bound (MariaDB).
    Arrays(bulk::Inserter<'c>),
}

/// What one statement's parameter arrays may hold, all columns together, and the value
/// length they always take.
pub const ARRAY_BUFFER_BYTES: usize = 16 << 20;
pub const MIN_ARRAY_VALUE: usize = 4 << 10;

/// Whether a row's values are too long to share a statement's arrays with `per_statement`
/// rows.
pub fn goes_alone(row: &Row, per_statement: usize) -> bool {
    value_bytes(row) > (ARRAY_BUFFER_BYTES / per_statement.max(1)).max(MIN_ARRAY_VALUE)
}

/// The bytes of the row's text and binary values.
pub fn value_bytes(row: &Row) -> usize {
    row.iter()
        .map(|v| match v {
            Some(Value::Text(s)) => s.len(),
            Some(Value::Bytes(b)) => b.len(),
            _ => 0,
        })
        .sum()
}

/// One statement's worth of a batch: the columns it binds and its rows (indexes).
struct Statement {
    present: Vec<usize>,
    rows: Vec<usize>,
}

impl<'c> Writer<'c> {
    pub fn new(conn: &'c Connection<'static>, plan: &'c TablePlan) -> Self {
        Writer {
            conn,
            plan,
            kept: HashMap::new(),
            arrays: Arrays::default(),
            executed: 0,
            unsettled: None,
        }
    }

    /// The last batch's commit, if an outage left it unknown.
    pub fn take_unsettled(&mut self) -> Option<Unsettled> {
        self.unsettled.take()
    }

    /// Statements executed so far (each batch is one per group of rows that bind the same
    /// columns, plus a few per rejected row).
    pub fn statements(&self) -> usize {
        self.executed
    }

    /// Writes and commits one batch. Data errors are isolated to their rows, which are
    /// reported back; an outage returns `Err` with nothing committed. `arrays`, when the
    /// route built them for all of `rows`, are sent as they are.
    pub fn write_batch(
        &mut self,
        rows: &[Row],
        arrays: Option<&mut Arrays>,
    ) -> Result<Rejected, DbError> {
        let whole = arrays.filter(|a| {
            a.rows == rows.len() && self.plan.rows_per_statement(&a.present) >= rows.len()
        });
        let Some(arrays) = whole else {
            return self.write_rows(rows, true);
        };
        match self.execute_unnest(arrays) {
            Ok(()) => self.finish_batch(true, rows, None),
            Err(e) if e.class() == Class::Outage => Err(e),
            Err(_) => {
                let _ = self.conn.rollback();
                let statements = self.plan_statements(rows);
                self.isolate_all(rows, &statements, true)
            }
        }
    }

    /// Like [`Writer::write_batch`]; with `keep` false everything is rolled back at the end
    /// (a dry run that still meets every constraint).
    pub fn write_rows(&mut self, rows: &[Row], keep: bool) -> Result<Rejected, DbError> {
        let statements = self.plan_statements(rows);
        match self.execute_all(rows, &statements) {
            Ok(()) => self.finish_batch(keep, rows, Some(&statements)),
            Err(e) if e.class() == Class::Outage => Err(e),
            Err(_) => {
                let _ = self.conn.rollback();
                self.isolate_all(rows, &statements, keep)
            }
        }
    }

    /// Commits (or, without `keep`, rolls back) a batch whose statements all ran. A
    /// constraint the database checks only at commit fails the whole batch: its rows are
    /// then isolated like any other failure (`statements`, planned again if `None`).
    fn finish_batch(
        &mut self,
        keep: bool,
        rows: &[Row],
        statements: Option<&[Statement]>,
    ) -> Result<Rejected, DbError> {
        match self.settle(keep, Vec::new()) {
            Ok(rejected) => Ok(rejected),
            Err(e) if e.class() == Class::Outage => Err(e),
            Err(_) => {
                let _ = self.conn.rollback();
                let planned;
                let statements = match statements {
                    Some(s) => s,
                    None => {
                        planned = self.plan_statements(rows);
                        &planned
                    }
                };
                self.isolate_all(rows, statements, keep)
            }
        }
    }

    /// The commit itself. On PostgreSQL the transaction's id is read first, so that a
    /// commit lost to an outage can be asked about later instead of written twice.
    fn settle(&mut self, keep: bool, rejected: Rejected) -> Result<Rejected, DbError> {
        if !keep {
            self.finish(false)?;
            return Ok(rejected);
        }
        let txid = match self.plan.dialect {
            Dialect::Postgres => match self.txid() {
                Ok(txid) => Some(txid),
                Err(e) if e.class() == Class::Outage => return Err(e),
                Err(_) => None,
            },
            _ => None,
        };
        match self.finish(true) {
            Ok(()) => Ok(rejected),
            Err(e) => {
                if let (Some(txid), Class::Outage) = (txid, e.class()) {
                    self.unsettled = Some(Unsettled { txid, rejected });
                }
                Err(e)
            }
        }
    }

    fn txid(&self) -> Result<i64, DbError> {
        let conn = self.conn;
        let text = query_text(conn, "SELECT txid_current()", ())?;
        text.and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| DbError::new("txid_current() returned no number"))
    }

    /// After a failed batch was rolled back: each statement again, halving the failed ones
    /// until every rejected row stands alone. Each failed statement rolls back alone inside
    /// the transaction (psqlODBC's statement-level rollback, MariaDB, SQLite).
    fn isolate_all(
        &mut self,
        rows: &[Row],
        statements: &[Statement],
        keep: bool,
    ) -> Result<Rejected, DbError> {
        let mut rejected = Vec::new();
        for statement in statements {
            self.isolate(rows, &statement.present, &statement.rows, &mut rejected)?;
        }
        rejected.sort_by_key(|(i, _)| *i);
        self.settle(keep, rejected)
    }

    /// Writes all of `rows` in one transaction, or none: the inner `Err` is the first data
    /// error (everything rolled back); the outer one an outage.
    pub fn write_all(&mut self, rows: &[Row], keep: bool) -> Result<Result<(), DbError>, DbError> {
        let statements = self.plan_statements(rows);
        match self
            .execute_all(rows, &statements)
            .and_then(|()| self.finish(keep))
        {
            Ok(()) => Ok(Ok(())),
            Err(e) if e.class() == Class::Outage => Err(e),
            Err(e) => {
                let _ = self.conn.rollback();
                Ok(Err(e))
            }
        }
    }

    /// The batch cut into statements: rows grouped by the columns they bind, each group in
    /// chunks the statement can carry.
    fn plan_statements(&self, rows: &[Row]) -> Vec<Statement> {
        let mut out = Vec::new();
        for (present, mut members) in group_by_presence(rows) {
            let per_statement = self.plan.rows_per_statement(&present);
            let mut alone = Vec::new();
            if self.plan.strategy(&present) != Strategy::MultiRowValues {
                // Parameter arrays reserve the longest value for every row and keep their
                // buffers, and PostgreSQL's arrays copy every value into one text: rows with
                // long values go alone, bound from their own memory.
                members.retain(|&i| {
                    let long = goes_alone(&rows[i], per_statement);
                    if long {
                        alone.push(i);
                    }
                    !long
                });
            }
            for chunk in members.chunks(per_statement) {
                out.push(Statement {
                    present: present.clone(),
                    rows: chunk.to_vec(),
                });
            }
            out.extend(alone.into_iter().map(|i| Statement {
                present: present.clone(),
                rows: vec![i],
            }));
        }
        out
    }

    fn execute_all(&mut self, rows: &[Row], statements: &[Statement]) -> Result<(), DbError> {
        for s in statements {
            self.execute(rows, &s.present, &s.rows)?;
        }
        Ok(())
    }

    /// Splits a failed statement in halves until every rejected row stands alone.
    fn isolate(
        &mut self,
        rows: &[Row],
        present: &[usize],
        indexes: &[usize],
        rejected: &mut Rejected,
    ) -> Result<(), DbError> {
        match self.execute(rows, present, indexes) {
            Ok(()) => Ok(()),
            Err(e) if e.class() == Class::Outage => Err(e),
            Err(e) if indexes.len() == 1 => {
                rejected.push((indexes[0], e));
                Ok(())
            }
            Err(_) => {
                let (left, right) = indexes.split_at(indexes.len() / 2);
                self.isolate(rows, present, left, rejected)?;
                self.isolate(rows, present, right, rejected)
            }
        }
    }

    /// Exactly one statement: its rows are written or, on error, none of them.
    fn execute(
        &mut self,
        rows: &[Row],
        present: &[usize],
        indexes: &[usize],
    ) -> Result<(), DbError> {
        let selected: Vec<&Row> = indexes.iter().map(|&i| &rows[i]).collect();
        let (conn, plan) = (self.conn, self.plan);
        // A single row goes as a plain INSERT, whose errors read best in a dead letter.
        let strategy = match plan.strategy(present) {
            _ if selected.len() == 1 || present.is_empty() => Strategy::MultiRowValues,
            s => s,
        };
        if strategy == Strategy::Unnest {
            let mut arrays = std::mem::take(&mut self.arrays);
            arrays.reset(present);
            selected.iter().for_each(|row| arrays.push(row));
            let done = self.execute_unnest(&mut arrays);
            self.arrays = arrays;
            return done;
        }
        self.executed += 1;
        let result = match strategy {
            Strategy::ParameterArrays => {
                let key = (present.to_vec(), 0);
                let fits = matches!(self.kept.get(&key), Some(Kept::Arrays(i)) if i.capacity() >= selected.len());
                if !fits {
                    let inserter = bulk::Inserter::new(conn, plan, &selected, present)
                        .map_err(|e| with_liveness(conn, &e))?;
                    self.kept.insert(key.clone(), Kept::Arrays(inserter));
                }
                match self.kept.get_mut(&key) {
                    Some(Kept::Arrays(inserter)) => inserter.insert(plan, &selected, present),
                    _ => unreachable!("inserted above"),
                }
            }
            _ => {
                let params = plan.parameters(&selected, present);
                // A whole chunk has the same shape batch after batch: prepare it once.
                if selected.len() > 1 && selected.len() == plan.rows_per_statement(present) {
                    let statement = self
                        .kept_prepared((present.to_vec(), selected.len()), || {
                            plan.insert_sql(present, selected.len())
                        })?;
                    statement.execute(params.as_slice()).map(|_| ())
                } else {
                    let sql = plan.insert_sql(present, selected.len());
                    conn.execute(&sql, params.as_slice(), None).map(|_| ())
                }
            }
        };
        result.map_err(|e| with_liveness(conn, &e))
    }

    /// The prepared statement kept under `key`, prepared from `sql` on first use.
    fn kept_prepared(
        &mut self,
        key: (Vec<usize>, usize),
        sql: impl FnOnce() -> String,
    ) -> Result<&mut Prepared<StatementImpl<'c>>, DbError> {
        let conn = self.conn;
        if !self.kept.contains_key(&key) {
            let prepared = conn.prepare(&sql()).map_err(|e| with_liveness(conn, &e))?;
            self.kept.insert(key.clone(), Kept::Prepared(prepared));
        }
        match self.kept.get_mut(&key) {
            Some(Kept::Prepared(p)) => Ok(p),
            _ => unreachable!("prepared above"),
        }
    }

    /// One prepared `unnest` statement over `arrays`.
    fn execute_unnest(&mut self, arrays: &mut Arrays) -> Result<(), DbError> {
        self.executed += 1;
        let (conn, plan) = (self.conn, self.plan);
        let present = arrays.present.clone();
        let statement = self.kept_prepared((present, 0), || {
            plan.unnest_sql(&arrays.present)
                .expect("arrays only for columns with array types")
        })?;
        let params: Vec<_> = arrays
            .finish()
            .iter()
            .map(|a| a.as_str().into_parameter())
            .collect();
        statement
            .execute(params.as_slice())
            .map(|_| ())
            .map_err(|e| with_liveness(conn, &e))
    }

    fn finish(&self, keep: bool) -> Result<(), DbError> {
        let done = if keep {
            self.conn.commit()
        } else {
            self.conn.rollback()
        };
        done.map_err(|e| with_liveness(self.conn, &e))
    }
}

/// The first column of the first row of `sql`, as text.
pub fn query_text(
    conn: &Connection<'_>,
    sql: &str,
    params: impl odbc_api::ParameterCollectionRef,
) -> Result<Option<String>, DbError> {
    use odbc_api::Cursor;
    let failed = |e: odbc_api::Error| with_liveness(conn, &e);
    let Some(mut cursor) = conn.execute(sql, params, None).map_err(failed)? else {
        return Ok(None);
    };
    let Some(mut row) = cursor.next_row().map_err(failed)? else {
        return Ok(None);
    };
    let mut text = Vec::new();
    let found = row.get_text(1, &mut text).map_err(failed)?;
    Ok(found.then(|| String::from_utf8_lossy(&text).into_owned()))
}

fn with_liveness(conn: &Connection<'_>, error: &odbc_api::Error) -> DbError {
    let mut e = DbError::from_odbc(error);
    e.connection_dead = conn.is_dead().unwrap_or(false);
    e
}
