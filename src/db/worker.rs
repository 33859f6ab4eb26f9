//! The ODBC sink thread of one route: connects (and reconnects), reads the catalog once,
//! and writes batches — one transaction each, rejected rows isolated, outages retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use odbc_api::Connection;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::catalog::{self, CatalogColumn};
use super::dialect::Dialect;
use super::insert::TablePlan;
use super::postgres::Arrays;
use super::write::{Unsettled, Writer, query_text, value_bytes};
use super::{DbConn, DbSpec};
use crate::backoff::Backoff;
use crate::config::OnConflict;
use crate::convert::SqlKind;
use crate::error::{Class, DbError};
use crate::mapping::Row;
use crate::metrics::RouteMetrics;

/// What the route asks of its table.
#[derive(Debug, Clone)]
pub struct SinkTarget {
    pub route: String,
    pub table: String,
    /// Mapped column names; `None` maps every column of the table.
    pub columns: Option<Vec<String>>,
    pub on_conflict: OnConflict,
    pub key: Vec<String>,
    pub max_rows: usize,
}

/// A batch of rows to write; the reply comes once it is committed or abandoned.
pub struct InsertRequest {
    pub rows: Vec<Row>,
    /// PostgreSQL array parameters the route built for all of `rows`, if it could.
    pub arrays: Option<Arrays>,
    pub reply: oneshot::Sender<InsertOutcome>,
}

#[derive(Debug)]
pub enum InsertOutcome {
    /// Committed; the listed rows (by index) were rejected by the database. The array
    /// buffers go back to the route for its next batch.
    Committed {
        rejected: Vec<(usize, DbError)>,
        arrays: Option<Arrays>,
    },
    /// Shutdown came while the database was unreachable: nothing was written.
    Abandoned,
}

/// A started sink: the resolved plan, and where to send batches.
pub struct Sink {
    pub plan: TablePlan,
    pub requests: mpsc::Sender<InsertRequest>,
}

/// The value bytes of a committed PostgreSQL batch from which its connection is renewed.
const REFRESH_BYTES: usize = 16 << 20;

/// Starts the sink thread and waits until it has connected and resolved the table.
/// Unreachable databases are retried until `stop`; a missing table or column is an error.
pub async fn start(
    spec: DbSpec,
    target: SinkTarget,
    stop: Arc<AtomicBool>,
    metrics: Arc<RouteMetrics>,
) -> Result<Sink, DbError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name(format!("odbc-{}", target.route))
        .spawn(move || run(spec, target, stop, metrics, ready_tx, rx))
        .map_err(|e| DbError::new(format!("cannot start the database thread: {e}")))?;
    match ready_rx.await {
        Ok(Ok(plan)) => Ok(Sink { plan, requests: tx }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DbError::new("stopped before the database was reached")),
    }
}

fn run(
    spec: DbSpec,
    target: SinkTarget,
    stop: Arc<AtomicBool>,
    metrics: Arc<RouteMetrics>,
    ready: oneshot::Sender<Result<TablePlan, DbError>>,
    mut requests: mpsc::Receiver<InsertRequest>,
) {
    let mut ready = Some(ready);
    let mut plan: Option<TablePlan> = None;
    let mut pending: Option<InsertRequest> = None;
    // The pending batch's commit, if the outage came while it was being sent.
    let mut unsettled: Option<Unsettled> = None;
    let mut backoff = Backoff::new();
    let mut refreshing = false;
    let down = |metrics: &RouteMetrics| {
        metrics.set_database_up(false);
        RouteMetrics::add(&metrics.retries, 1);
    };
    loop {
        if stop.load(Ordering::Relaxed) && plan.is_none() {
            return;
        }
        let conn = match open(&spec) {
            Ok(conn) => conn,
            Err(e) => {
                warn!(route = %target.route, database = %spec.name, error = %e, "database unreachable; retrying");
                down(&metrics);
                if !backoff.sleep(&stop) {
                    abandon(pending.take());
                    return;
                }
                continue;
            }
        };
        let dialect = spec.dialect(&conn);
        if let Err(e) = setup_session(&conn, dialect) {
            let e = conn.explain(e);
            warn!(route = %target.route, database = %spec.name, error = %e, "session set-up failed; reconnecting");
            down(&metrics);
            if !backoff.sleep(&stop) {
                abandon(pending.take());
                return;
            }
            continue;
        }
        if plan.is_none() {
            match resolve(&conn, dialect, &target) {
                Ok(resolved) => {
                    info!(route = %target.route, database = %spec.name, ?dialect, "database connected");
                    plan = Some(resolved.clone());
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(resolved));
                    }
                }
                Err(e) if e.class() == Class::Outage => {
                    let e = conn.explain(e);
                    warn!(route = %target.route, database = %spec.name, error = %e, "catalog read failed; retrying");
                    down(&metrics);
                    if !backoff.sleep(&stop) {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e));
                    }
                    return;
                }
            }
        } else if !std::mem::take(&mut refreshing) {
            info!(route = %target.route, database = %spec.name, "database reconnected");
        }
        if let Some(lost) = unsettled.take() {
            let status = settled(&conn, lost.txid);
            match &status {
                Ok(Some(true)) => {
                    info!(route = %target.route, txid = lost.txid, "the batch committed before the outage; not writing it again");
                    if let Some(request) = pending.take() {
                        let _ = request.reply.send(InsertOutcome::Committed {
                            rejected: lost.rejected,
                            arrays: request.arrays,
                        });
                    }
                }
                // Aborted, or a server that cannot tell (before PostgreSQL 10): written
                // again.
                Ok(Some(false)) => {}
                Err(e) if e.class() == Class::Data => {}
                // Still open on the server (it has not yet seen the old connection die), or
                // the question itself met an outage: ask again after a pause.
                Ok(None) | Err(_) => {
                    if let Err(e) = &status {
                        let e = conn.explain(e.clone());
                        warn!(route = %target.route, database = %spec.name, error = %e, "cannot learn whether the lost commit happened; retrying");
                    }
                    unsettled = Some(lost);
                    down(&metrics);
                    drop(conn);
                    if !backoff.sleep(&stop) {
                        abandon(pending.take());
                        return;
                    }
                    continue;
                }
            }
        }
        metrics.set_database_up(true);
        let plan_ref = plan.as_ref().expect("resolved above");
        match serve(
            &conn,
            plan_ref,
            &mut requests,
            &mut pending,
            &mut backoff,
            &target.route,
        ) {
            Served::Closed => return,
            Served::Refresh => {
                debug!(route = %target.route, "reconnecting to give back the driver's buffers");
                drop(conn);
                refreshing = true;
            }
            Served::Outage(e, lost) => {
                unsettled = lost;
                let e = conn.explain(e);
                warn!(route = %target.route, database = %spec.name, error = %e, "database outage; the batch will be retried");
                down(&metrics);
                let _ = conn.rollback();
                drop(conn);
                if !backoff.sleep(&stop) {
                    abandon(pending.take());
                    return;
                }
            }
        }
    }
}

/// Whether PostgreSQL transaction `txid` committed: `Some(true)` committed, `Some(false)`
/// aborted or unknown to the server (so never committed), `None` still in progress.
fn settled(conn: &Connection<'_>, txid: i64) -> Result<Option<bool>, DbError> {
    let status = query_text(conn, "SELECT txid_status(?)", &txid)?;
    let _ = conn.commit();
    Ok(match status.as_deref() {
        Some("committed") => Some(true),
        Some("in progress") => None,
        _ => Some(false),
    })
}

fn abandon(request: Option<InsertRequest>) {
    if let Some(r) = request {
        let _ = r.reply.send(InsertOutcome::Abandoned);
    }
}

/// Opens a connection with autocommit off, so each batch is one transaction.
pub fn open(spec: &DbSpec) -> Result<DbConn, DbError> {
    let conn = spec.connect()?;
    conn.set_autocommit(false)
        .map_err(|e| DbError::from_odbc(&e))?;
    Ok(conn)
}

pub fn setup_session(conn: &Connection<'_>, dialect: Dialect) -> Result<(), DbError> {
    for sql in dialect.session_setup() {
        if let Err(e) = conn.execute(sql, (), None) {
            let e = DbError::from_odbc(&e);
            // A database known only as generic may not speak the standard time zone
            // statement; it then keeps its own session zone.
            if dialect != Dialect::Generic || e.class() == Class::Outage {
                return Err(e);
            }
            debug!(error = %e, "the database does not take the standard time zone statement");
            conn.rollback().map_err(|e| DbError::from_odbc(&e))?;
        }
    }
    conn.commit().map_err(|e| DbError::from_odbc(&e))
}

/// Checks the table and the mapped columns against the catalog and builds the plan.
pub fn resolve(
    conn: &Connection<'_>,
    dialect: Dialect,
    target: &SinkTarget,
) -> Result<TablePlan, DbError> {
    let mut found = catalog::table_columns(conn, dialect, &target.table)?;
    let _ = conn.commit();
    if found.is_empty() {
        let other = super::keys::table_in_other_case(conn, dialect, &target.table)?;
        match other {
            // SQLite matches table names without regard to case, so the name works as written.
            Some(name) if dialect == Dialect::Sqlite => {
                found = catalog::table_columns(conn, dialect, &name)?;
                let _ = conn.commit();
            }
            Some(name) => {
                return Err(DbError::new(format!(
                    "table {} does not exist, but {name} does: names are matched with their \
                     case, so write `table: {name}`",
                    target.table
                )));
            }
            None => {}
        }
    }
    if found.is_empty() {
        return Err(DbError::new(format!(
            "table {} does not exist (or has no columns visible to this user)",
            target.table
        )));
    }
    let pick = |name: &str| -> Result<CatalogColumn, DbError> {
        found
            .iter()
            .find(|c| c.name == name)
            .or_else(|| found.iter().find(|c| c.name.eq_ignore_ascii_case(name)))
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = found.iter().map(|c| c.name.as_str()).collect();
                DbError::new(format!(
                    "table {} has no column `{name}` (it has: {})",
                    target.table,
                    names.join(", ")
                ))
            })
    };
    let mut columns: Vec<CatalogColumn> = match &target.columns {
        Some(names) => names.iter().map(|n| pick(n)).collect::<Result<_, _>>()?,
        None => found.clone(),
    };
    let table = dialect.quote_table(&target.table);
    if dialect == Dialect::Postgres {
        let types = catalog::postgres_types(conn, &table)?;
        let scales = catalog::postgres_scales(conn, &table)?;
        let _ = conn.commit();
        for column in &mut columns {
            column.array_type = types
                .iter()
                .find(|(name, _)| *name == column.name)
                .map(|(_, t)| t.clone());
            column.scale = scales
                .iter()
                .find(|(name, _)| *name == column.name)
                .map(|(_, s)| *s);
        }
    }
    if dialect == Dialect::MySql {
        let precisions = catalog::mysql_time_precisions(conn, &target.table)?;
        let _ = conn.commit();
        let booleans = catalog::mysql_boolean_columns(conn, &target.table)?;
        let _ = conn.commit();
        for column in &mut columns {
            if let Some((_, digits)) = precisions.iter().find(|(name, _)| *name == column.name) {
                column.scale = Some(*digits);
            }
            if booleans.contains(&column.name) {
                column.kind = SqlKind::Bool;
            }
        }
    }
    let key = target
        .key
        .iter()
        .map(|k| {
            columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(k))
                .ok_or_else(|| {
                    DbError::new(format!(
                        "key column `{k}` is not a mapped column of {}",
                        target.table
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TablePlan {
        dialect,
        table,
        columns,
        on_conflict: target.on_conflict,
        key,
        max_rows: target.max_rows,
    })
}

enum Served {
    Closed,
    /// A batch of large values was committed on PostgreSQL: libpq keeps a send buffer as
    /// large as the largest statement for the life of the connection, so a new connection
    /// gives that memory back.
    Refresh,
    /// The batch stays pending; its commit may have happened.
    Outage(DbError, Option<Unsettled>),
}

fn serve(
    conn: &DbConn,
    plan: &TablePlan,
    requests: &mut mpsc::Receiver<InsertRequest>,
    pending: &mut Option<InsertRequest>,
    backoff: &mut Backoff,
    route: &str,
) -> Served {
    let mut writer = Writer::new(conn, plan);
    loop {
        let request = match pending.take() {
            Some(r) => r,
            None => match conn.idle(|| requests.blocking_recv()) {
                Some(r) => r,
                None => return Served::Closed,
            },
        };
        let before = writer.statements();
        let mut request = request;
        match writer.write_batch(&request.rows, request.arrays.as_mut()) {
            Ok(rejected) => {
                debug!(
                    route,
                    rows = request.rows.len(),
                    rejected = rejected.len(),
                    statements = writer.statements() - before,
                    "batch committed"
                );
                backoff.reset();
                let large = plan.dialect == Dialect::Postgres
                    && request.rows.iter().map(value_bytes).sum::<usize>() >= REFRESH_BYTES;
                // The rows are freed after the reply, here and not on the route's thread.
                let _ = request.reply.send(InsertOutcome::Committed {
                    rejected,
                    arrays: request.arrays,
                });
                if large {
                    return Served::Refresh;
                }
            }
            Err(e) => {
                *pending = Some(request);
                return Served::Outage(e, writer.take_unsettled());
            }
        }
    }
}

/// Connects, sets the session up and resolves the route's table, as a sink does once.
pub fn connect(spec: &DbSpec, target: &SinkTarget) -> Result<(DbConn, TablePlan), DbError> {
    let (conn, dialect) = open_session(spec)?;
    let plan = resolve(&conn, dialect, target).map_err(|e| conn.explain(e))?;
    Ok((conn, plan))
}

/// Opens a connection and sets its session up for the database it turns out to be.
pub fn open_session(spec: &DbSpec) -> Result<(DbConn, Dialect), DbError> {
    let conn = open(spec)?;
    let dialect = spec.dialect(&conn);
    setup_session(&conn, dialect).map_err(|e| conn.explain(e))?;
    Ok((conn, dialect))
}
