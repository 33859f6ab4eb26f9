//! Writing rows into a route's table over one connection: one transaction per batch, the
//! statement chosen per driver ([`Strategy`]), prepared statements kept for the life of
//! the connection, and the rows a database rejects found by halving the failed statement.

use std::collections::HashMap;

use odbc_api::handles::StatementImpl;
use odbc_api::{Connection, IntoParameter, Prepared};

use super::bulk;
use super::insert::{Strategy, TablePlan, group_by_presence};
use super::postgres;
use crate::error::{Class, DbError};
use crate::mapping::Row;

/// Rows the database rejected, by index into the batch, with the reason.
pub type Rejected = Vec<(usize, DbError)>;

/// Writes batches of one table plan over one connection.
pub struct Writer<'c> {
    conn: &'c Connection<'static>,
    plan: &'c TablePlan,
    /// Prepared `unnest` statements, by the columns they bind.
    prepared: HashMap<Vec<usize>, Prepared<StatementImpl<'c>>>,
    /// Array parameters, reused from batch to batch.
    arrays: Vec<String>,
    /// Statements executed so far.
    executed: usize,
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
            prepared: HashMap::new(),
            arrays: Vec::new(),
            executed: 0,
        }
    }

    /// Statements executed so far (each batch is one per group of rows that bind the same
    /// columns, plus a few per rejected row).
    pub fn statements(&self) -> usize {
        self.executed
    }

    /// Writes and commits one batch. Data errors are isolated to their rows, which are
    /// reported back; an outage returns `Err` with nothing committed.
    pub fn write_batch(&mut self, rows: &[Row]) -> Result<Rejected, DbError> {
        self.write_rows(rows, true)
    }

    /// Like [`Writer::write_batch`]; with `keep` false everything is rolled back at the end
    /// (a dry run that still meets every constraint).
    pub fn write_rows(&mut self, rows: &[Row], keep: bool) -> Result<Rejected, DbError> {
        let statements = self.plan_statements(rows);
        match self
            .execute_all(rows, &statements)
            .and_then(|()| self.finish(keep))
        {
            Ok(()) => return Ok(Vec::new()),
            Err(e) if e.class() == Class::Outage => return Err(e),
            Err(_) => {
                let _ = self.conn.rollback();
            }
        }
        // Each failed statement rolls back alone inside the transaction (psqlODBC's
        // statement-level rollback, MariaDB, SQLite), so a failed half can be split again.
        let mut rejected = Vec::new();
        for statement in &statements {
            self.isolate(rows, &statement.present, &statement.rows, &mut rejected)?;
        }
        self.finish(keep)?;
        rejected.sort_by_key(|(i, _)| *i);
        Ok(rejected)
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
        for (present, members) in group_by_presence(rows) {
            let per_statement = self.plan.rows_per_statement(&present);
            for chunk in members.chunks(per_statement) {
                out.push(Statement {
                    present: present.clone(),
                    rows: chunk.to_vec(),
                });
            }
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
        self.executed += 1;
        let conn = self.conn;
        let plan = self.plan;
        // A single row goes as a plain INSERT, whose errors read best in a dead letter.
        let strategy = match plan.strategy(present) {
            _ if selected.len() == 1 || present.is_empty() => Strategy::MultiRowValues,
            s => s,
        };
        let result = match strategy {
            Strategy::Unnest => {
                postgres::encode_arrays(&selected, present, &mut self.arrays);
                let statement = match self.prepared.get_mut(present) {
                    Some(s) => s,
                    None => {
                        let sql = plan.unnest_sql(present).expect("unnest strategy");
                        let prepared = conn.prepare(&sql).map_err(|e| with_liveness(conn, &e))?;
                        self.prepared.entry(present.to_vec()).or_insert(prepared)
                    }
                };
                let params: Vec<_> = self
                    .arrays
                    .iter()
                    .map(|a| a.as_str().into_parameter())
                    .collect();
                statement.execute(params.as_slice()).map(|_| ())
            }
            Strategy::ParameterArrays => bulk::insert(conn, plan, &selected, present),
            Strategy::MultiRowValues => {
                let sql = plan.insert_sql(present, selected.len());
                let params = plan.parameters(&selected, present);
                conn.execute(&sql, params.as_slice(), None).map(|_| ())
            }
        };
        result.map_err(|e| with_liveness(conn, &e))
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

fn with_liveness(conn: &Connection<'_>, error: &odbc_api::Error) -> DbError {
    let mut e = DbError::from_odbc(error);
    e.connection_dead = conn.is_dead().unwrap_or(false);
    e
}
