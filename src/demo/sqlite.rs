//! The demo's own reads and writes on its SQLite database, through the same ODBC driver.

use odbc_api::buffers::TextRowSet;
use odbc_api::{Connection, Cursor};

use crate::db;
use crate::error::DbError;

pub async fn count(connection_string: &str, sql: &'static str) -> Result<i64, String> {
    let cs = connection_string.to_string();
    let rows = blocking(move || query(&connect(&cs)?, sql))
        .await
        .map_err(|e| e.to_string())?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| "no count".to_string())
}

pub fn connect(connection_string: &str) -> Result<Connection<'static>, DbError> {
    db::DbSpec::from_connection_string("demo", connection_string)
        .connect()
        .map(db::DbConn::into_connection)
}

/// Every row of `sql` as text.
pub fn query(conn: &Connection<'_>, sql: &str) -> Result<Vec<Vec<Option<String>>>, DbError> {
    let odbc = |e: odbc_api::Error| DbError::from_odbc(&e);
    let mut out = Vec::new();
    let Some(mut cursor) = conn.execute(sql, (), None).map_err(odbc)? else {
        return Ok(out);
    };
    let mut buffer = TextRowSet::for_cursor(64, &mut cursor, Some(256)).map_err(odbc)?;
    let mut rows = cursor.bind_buffer(&mut buffer).map_err(odbc)?;
    while let Some(batch) = rows.fetch().map_err(odbc)? {
        for r in 0..batch.num_rows() {
            out.push(
                (0..batch.num_cols())
                    .map(|c| batch.at_as_str(c, r).ok().flatten().map(str::to_string))
                    .collect(),
            );
        }
    }
    Ok(out)
}

pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DbError> + Send + 'static,
) -> Result<T, DbError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DbError::new(format!("database task failed: {e}")))?
}

/// A missing driver is the likely first failure on a new machine.
pub fn driver_hint(e: DbError) -> String {
    if e.sqlstate.as_deref() == Some("IM002") || e.message.contains("SQLite3") {
        format!("{e}; the SQLite ODBC driver `SQLite3` is missing: run scripts/setup.sh")
    } else {
        e.to_string()
    }
}
