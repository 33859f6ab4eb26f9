//! `mqdb check` for a route's table: connect once, verify the catalog, prepare the insert.

use super::DbSpec;
use super::dialect::Dialect;
use super::insert::TablePlan;
use super::worker::{self, SinkTarget};

/// Verifies that the route's table and columns exist and its insert statement prepares.
pub fn check_table(spec: &DbSpec, target: &SinkTarget) -> Result<TablePlan, String> {
    let conn = worker::open(spec).map_err(|e| format!("cannot connect: {e}"))?;
    let dialect = conn
        .database_management_system_name()
        .map(|n| Dialect::from_dbms_name(&n))
        .unwrap_or(Dialect::Generic);
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
