//! `mqdb check` for a route's table: connect once, verify the catalog, prepare the insert.

use super::DbSpec;
use super::insert::TablePlan;
use super::poll::{PollSpec, describe};
use super::worker::{self, SinkTarget};

/// Verifies that the route's table and columns exist and its insert statement prepares.
pub fn check_table(spec: &DbSpec, target: &SinkTarget) -> Result<TablePlan, String> {
    let conn = worker::open(spec).map_err(|e| format!("cannot connect: {e}"))?;
    let dialect = spec.dialect(&conn);
    let plan = worker::resolve(&conn, dialect, target).map_err(|e| e.to_string())?;
    let all: Vec<usize> = (0..plan.columns.len()).collect();
    let sql = plan.insert_sql(&all, 1);
    conn.prepare(&sql).map_err(|e| {
        format!(
            "the insert statement does not prepare: {}",
            crate::error::DbError::from_odbc(&e)
        )
    })?;
    let _ = conn.rollback();
    Ok(plan)
}

/// Verifies that an outbound query prepares, returns the track columns and the columns the
/// destination template reads, and that `after_publish` prepares.
pub fn check_query(
    spec: &DbSpec,
    poll: &PollSpec,
    template_columns: &[&str],
) -> Result<(), String> {
    let conn = worker::open(spec).map_err(|e| format!("cannot connect: {e}"))?;
    let names = describe(&conn, poll)
        .map_err(|e| format!("the query: {e}"))?
        .names;
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
