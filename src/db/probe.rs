//! `mqdb check` for a route's table: connect once, verify the catalog, prepare the insert.

use odbc_api::Connection;

use super::DbSpec;
use super::describe::{PollSpec, check_position, describe};
use super::dialect::Dialect;
use super::insert::TablePlan;
use super::worker::{self, SinkTarget};

/// Verifies that the route's table and columns exist and its insert statement prepares.
pub fn check_table(spec: &DbSpec, target: &SinkTarget) -> Result<TablePlan, String> {
    let conn = worker::open(spec).map_err(|e| format!("cannot connect: {e}"))?;
    let dialect = spec.dialect(&conn);
    let plan = worker::resolve(&conn, dialect, target).map_err(|e| conn.explain(e).to_string())?;
    check_conflict_key(&conn, dialect, target, &plan)?;
    let all: Vec<usize> = (0..plan.columns.len()).collect();
    let sql = plan.insert_sql(&all, 1);
    conn.prepare(&sql).map_err(|e| {
        format!(
            "the insert statement does not prepare: {}",
            conn.explain(crate::error::DbError::from_odbc(&e))
        )
    })?;
    let _ = conn.rollback();
    Ok(plan)
}

/// `on_conflict: ignore | update` needs a primary key or unique constraint on exactly the
/// `key` columns: PostgreSQL and SQLite refuse every insert without one, and MariaDB
/// inserts duplicates.
fn check_conflict_key(
    conn: &Connection<'_>,
    dialect: Dialect,
    target: &SinkTarget,
    plan: &TablePlan,
) -> Result<(), String> {
    if plan.on_conflict == crate::config::OnConflict::Error {
        return Ok(());
    }
    let Some(keys) = super::keys::unique_keys(conn, dialect, &target.table)
        .map_err(|e| format!("cannot read the unique keys of {}: {e}", target.table))?
    else {
        return Ok(());
    };
    let key: Vec<String> = plan
        .key
        .iter()
        .map(|&i| plan.columns[i].name.clone())
        .collect();
    if super::keys::matches_a_key(&key, &keys) {
        return Ok(());
    }
    Err(format!(
        "on_conflict {} needs a primary key or unique constraint on exactly `key:` ({}), \
         but the unique keys of {} are: {}",
        format!("{:?}", plan.on_conflict).to_lowercase(),
        key.join(", "),
        target.table,
        super::keys::describe_keys(&keys)
    ))
}

/// Verifies that an outbound query prepares, returns the track columns and the columns the
/// destination template reads, and that `after_publish` prepares.
pub fn check_query(
    spec: &DbSpec,
    poll: &PollSpec,
    template_columns: &[&str],
    start: &[String],
) -> Result<(), String> {
    let conn = worker::open(spec).map_err(|e| format!("cannot connect: {e}"))?;
    if poll.snapshot {
        if spec.dialect(&conn) != Dialect::Postgres {
            return Err(
                "visibility: snapshot needs PostgreSQL, and this database is not; remove it (or use delay:)"
                    .into(),
            );
        }
        super::running::running(&conn).map_err(|e| {
            format!(
                "visibility: snapshot cannot read the running transactions: {}",
                conn.explain(e)
            )
        })?;
    }
    let described = describe(&conn, poll).map_err(|e| format!("the query: {}", conn.explain(e)))?;
    check_position(&described, start).map_err(|e| format!("start: {e}"))?;
    let names = described.names;
    for column in template_columns {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(column)) {
            return Err(format!(
                "the destination uses {{{column}}}, which is not a column of the query's result ({})",
                names.join(", ")
            ));
        }
    }
    if let Some(sql) = &poll.after_publish {
        // Some drivers (psqlODBC) only reach the server on execution: run it with NULLs,
        // which match no row, and roll back.
        let fail = |e: odbc_api::Error| {
            format!(
                "after_publish does not prepare: {}",
                crate::error::DbError::from_odbc(&e)
            )
        };
        let mut prepared = conn.prepare(sql).map_err(fail)?;
        let count = prepared.num_params().map_err(fail)?;
        let nulls: Vec<odbc_api::parameter::VarCharBox> = (0..count)
            .map(|_| odbc_api::parameter::VarCharBox::null())
            .collect();
        let result = prepared.execute(nulls.as_slice()).map(|_| ()).map_err(fail);
        let _ = conn.rollback();
        result?;
    }
    let _ = conn.rollback();
    Ok(())
}
