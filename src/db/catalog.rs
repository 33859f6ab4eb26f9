//! Reading a table's columns and their SQL types from the database catalog (`SQLColumns`).

use odbc_api::Connection;

use super::dialect::Dialect;
use crate::convert::SqlKind;
use crate::error::DbError;

/// One column of a target table, as the catalog reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub name: String,
    pub type_name: String,
    pub kind: SqlKind,
    /// The column has a default (or is generated), so it may be left out of an insert.
    pub has_default: bool,
    /// PostgreSQL: the type an array parameter of this column's values is cast to; `None`
    /// elsewhere, and for columns that are arrays themselves.
    pub array_type: Option<String>,
    /// The digits after the point the column keeps where the database rounds to a declared
    /// scale: a decimal's scale, a timestamp's or time's fractional-second digits; `None`
    /// when unlimited, unknown or neither.
    pub scale: Option<i16>,
}

/// Columns of `table` (`table` or `schema.table`) in ordinal order; empty if it does not
/// exist under that name, in that case.
pub fn table_columns(
    conn: &Connection<'_>,
    dialect: Dialect,
    table: &str,
) -> Result<Vec<CatalogColumn>, DbError> {
    let (schema, name) = match table.split_once('.') {
        Some((s, t)) => (Some(s), t),
        None => (None, table),
    };
    read(conn, dialect, schema, name)
}

fn read(
    conn: &Connection<'_>,
    dialect: Dialect,
    schema: Option<&str>,
    table: &str,
) -> Result<Vec<CatalogColumn>, DbError> {
    let (catalog_arg, schema_arg) = match (dialect, schema) {
        // MySQL's "schema" is a database, which ODBC calls a catalog.
        (Dialect::MySql, Some(s)) => (s, ""),
        (_, Some(s)) => ("", s),
        (_, None) => ("", ""),
    };
    let pattern = escape_pattern(table);
    let mut found: Vec<(String, i32, CatalogColumn)> = Vec::new();
    let rows = conn
        .columns(catalog_arg, schema_arg, &pattern, "")
        .map_err(|e| DbError::from_odbc(&e))?;
    for row in rows {
        let row = row.map_err(|e| DbError::from_odbc(&e))?;
        let text = |v: &odbc_api::parameter::VarCharArray<255>| {
            v.as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let table_name = text(&row.table);
        // Catalog patterns treat `_` as a wildcard even when escaped by some drivers, and
        // psqlODBC matches them without regard to case; PostgreSQL and MariaDB then refuse
        // the quoted name in the other case.
        let same = match dialect {
            Dialect::Postgres | Dialect::MySql => table_name == table,
            _ => table_name.eq_ignore_ascii_case(table),
        };
        if !same {
            continue;
        }
        let schema_name = row
            .schema
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let type_name = row
            .type_name
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let default = row
            .column_default
            .as_bytes()
            .map(|b| !b.is_empty())
            .unwrap_or(false);
        let name = text(&row.column_name);
        let kind = kind_of(row.data_type, &type_name);
        found.push((
            schema_name,
            row.ordinal_position,
            CatalogColumn {
                name,
                has_default: default || type_name.to_ascii_lowercase().contains("serial"),
                type_name,
                kind,
                array_type: None,
                scale: declared_scale(dialect, kind, row.decimal_digits.into_opt()),
            },
        ));
    }
    // Without a schema, several schemas may hold the table: prefer `public`, then the first.
    if schema.is_none() {
        let schemas: Vec<&String> = found.iter().map(|(s, _, _)| s).collect();
        if let Some(chosen) = schemas
            .iter()
            .find(|s| s.as_str() == "public")
            .or(schemas.first())
            .map(|s| s.to_string())
        {
            found.retain(|(s, _, _)| *s == chosen);
        }
    }
    found.sort_by_key(|(_, ordinal, _)| *ordinal);
    Ok(found.into_iter().map(|(_, _, c)| c).collect())
}

/// The digits after the point a column keeps, from SQLColumns' DECIMAL_DIGITS where the
/// driver reports it truly. psqlODBC reports 6 for an unconstrained numeric and MariaDB
/// nothing for DATETIME: their own catalogs tell instead (`postgres_scales`,
/// `mysql_time_precisions`). SQLite rounds to no declared scale. Other databases are
/// taken at their driver's word, which can only refuse a value, never change one.
fn declared_scale(dialect: Dialect, kind: SqlKind, decimal_digits: Option<i16>) -> Option<i16> {
    match (dialect, kind) {
        (Dialect::MySql, SqlKind::Decimal) => decimal_digits,
        (Dialect::Generic, SqlKind::Decimal | SqlKind::Timestamp | SqlKind::Time) => decimal_digits,
        _ => None,
    }
}

/// PostgreSQL: each column's type as SQL can name it (`format_type`), for the columns that
/// are not arrays themselves; empty if the table is not found under `quoted_table`.
pub fn postgres_types(
    conn: &Connection<'_>,
    quoted_table: &str,
) -> Result<Vec<(String, String)>, DbError> {
    use odbc_api::{Cursor, IntoParameter};
    let sql = "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a \
               JOIN pg_type t ON t.oid = a.atttypid \
               WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attndims = 0 AND t.typcategory <> 'A'";
    let odbc = |e: odbc_api::Error| DbError::from_odbc(&e);
    let mut out = Vec::new();
    let param = quoted_table.into_parameter();
    if let Some(mut cursor) = conn.execute(sql, &param, None).map_err(odbc)? {
        let (mut name, mut type_name) = (Vec::new(), Vec::new());
        while let Some(mut row) = cursor.next_row().map_err(odbc)? {
            if row.get_text(1, &mut name).map_err(odbc)?
                && row.get_text(2, &mut type_name).map_err(odbc)?
            {
                out.push((
                    String::from_utf8_lossy(&name).into_owned(),
                    String::from_utf8_lossy(&type_name).into_owned(),
                ));
            }
        }
    }
    Ok(out)
}

/// PostgreSQL: the scale of each `numeric(p,s)` column, and the fractional-second digits
/// of each `timestamp(p)` and `time(p)` column (unconstrained ones keep every digit, or
/// microseconds, and are left out).
pub fn postgres_scales(
    conn: &Connection<'_>,
    quoted_table: &str,
) -> Result<Vec<(String, i16)>, DbError> {
    use odbc_api::{Cursor, IntoParameter};
    let sql = "SELECT a.attname, CAST(CASE WHEN a.atttypid = 'numeric'::regtype \
               THEN (a.atttypmod - 4) & 65535 ELSE a.atttypmod END AS integer) \
               FROM pg_attribute a \
               WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 AND NOT a.attisdropped \
               AND ((a.atttypid = 'numeric'::regtype AND a.atttypmod >= 4) \
               OR (a.atttypid IN ('timestamp'::regtype, 'timestamptz'::regtype, \
               'time'::regtype, 'timetz'::regtype) AND a.atttypmod >= 0))";
    let odbc = |e: odbc_api::Error| DbError::from_odbc(&e);
    let mut out = Vec::new();
    let param = quoted_table.into_parameter();
    if let Some(mut cursor) = conn.execute(sql, &param, None).map_err(odbc)? {
        let mut name = Vec::new();
        while let Some(mut row) = cursor.next_row().map_err(odbc)? {
            let mut scale = odbc_api::Nullable::<i32>::null();
            if row.get_text(1, &mut name).map_err(odbc)? {
                row.get_data(2, &mut scale).map_err(odbc)?;
                if let Some(scale) = scale.into_opt().and_then(|s| i16::try_from(s).ok()) {
                    out.push((String::from_utf8_lossy(&name).into_owned(), scale));
                }
            }
        }
    }
    Ok(out)
}

/// MariaDB/MySQL: the fractional-second digits of each DATETIME, TIMESTAMP and TIME column
/// of `table` (`table` or `database.table`), which SQLColumns does not report.
pub fn mysql_time_precisions(
    conn: &Connection<'_>,
    table: &str,
) -> Result<Vec<(String, i16)>, DbError> {
    mysql_column_numbers(
        conn,
        table,
        "CAST(DATETIME_PRECISION AS SIGNED)",
        "DATETIME_PRECISION IS NOT NULL",
    )
}

/// MariaDB/MySQL: the `BOOLEAN` (`tinyint(1)`) columns of `table`, which SQLColumns reports
/// as plain `TINYINT`.
pub fn mysql_boolean_columns(conn: &Connection<'_>, table: &str) -> Result<Vec<String>, DbError> {
    let found = mysql_column_numbers(conn, table, "1", "LOWER(COLUMN_TYPE) = 'tinyint(1)'")?;
    Ok(found.into_iter().map(|(name, _)| name).collect())
}

/// `(COLUMN_NAME, number)` from `information_schema.COLUMNS` for the columns of `table`
/// (`table` or `database.table`) that meet `condition`.
fn mysql_column_numbers(
    conn: &Connection<'_>,
    table: &str,
    number: &str,
    condition: &str,
) -> Result<Vec<(String, i16)>, DbError> {
    use odbc_api::{Cursor, IntoParameter};
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table),
    };
    let sql = format!(
        "SELECT COLUMN_NAME, {number} FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = {} AND TABLE_NAME = ? AND {condition}",
        if schema.is_some() { "?" } else { "DATABASE()" }
    );
    let odbc = |e: odbc_api::Error| DbError::from_odbc(&e);
    let mut out = Vec::new();
    let name_param = name.into_parameter();
    let cursor = match schema {
        Some(schema) => conn.execute(&sql, (&schema.into_parameter(), &name_param), None),
        None => conn.execute(&sql, &name_param, None),
    };
    if let Some(mut cursor) = cursor.map_err(odbc)? {
        let mut column = Vec::new();
        while let Some(mut row) = cursor.next_row().map_err(odbc)? {
            let mut value = odbc_api::Nullable::<i32>::null();
            if row.get_text(1, &mut column).map_err(odbc)? {
                row.get_data(2, &mut value).map_err(odbc)?;
                if let Some(value) = value.into_opt().and_then(|d| i16::try_from(d).ok()) {
                    out.push((String::from_utf8_lossy(&column).into_owned(), value));
                }
            }
        }
    }
    Ok(out)
}

fn escape_pattern(name: &str) -> String {
    name.replace('\\', "\\\\")
        .replace('_', "\\_")
        .replace('%', "\\%")
}

/// Maps an ODBC `DATA_TYPE` (and the driver's type name, for what ODBC types loosely) to
/// the conversion family.
pub fn kind_of(data_type: i16, type_name: &str) -> SqlKind {
    let lower = type_name.to_ascii_lowercase();
    // SQLite reports the declared type with its arguments: `DECIMAL(38,10)`.
    let name = lower.split('(').next().unwrap_or("").trim();
    match name {
        "bool" | "boolean" => return SqlKind::Bool,
        "numeric" | "decimal" => return SqlKind::Decimal,
        "timestamptz" | "timestamp with time zone" | "datetime" | "timestamp" => {
            return SqlKind::Timestamp;
        }
        "date" => return SqlKind::Date,
        "bytea" | "blob" | "longblob" | "mediumblob" | "tinyblob" => return SqlKind::Binary,
        // MariaDB reports UUID as binary, but it reads and prints the text form.
        "uuid" => return SqlKind::Text,
        _ => {}
    }
    match data_type {
        -7 => SqlKind::Bool,
        -6 | -5 | 4 | 5 => SqlKind::Integer,
        2 | 3 => SqlKind::Decimal,
        6..=8 => SqlKind::Float,
        9 | 91 => SqlKind::Date,
        10 | 92 => SqlKind::Time,
        11 | 93 => SqlKind::Timestamp,
        -4..=-2 => SqlKind::Binary,
        _ => SqlKind::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odbc_types_map_to_kinds() {
        assert_eq!(kind_of(4, "int4"), SqlKind::Integer);
        assert_eq!(kind_of(-5, "bigint"), SqlKind::Integer);
        assert_eq!(kind_of(12, "bool"), SqlKind::Bool);
        assert_eq!(kind_of(2, "numeric"), SqlKind::Decimal);
        assert_eq!(kind_of(8, "float8"), SqlKind::Float);
        assert_eq!(kind_of(93, "timestamptz"), SqlKind::Timestamp);
        assert_eq!(kind_of(-3, "bytea"), SqlKind::Binary);
        assert_eq!(kind_of(-9, "varchar"), SqlKind::Text);
        assert_eq!(kind_of(12, "TEXT"), SqlKind::Text);
        assert_eq!(kind_of(12, "DECIMAL(38,10)"), SqlKind::Decimal);
        assert_eq!(kind_of(-2, "uuid"), SqlKind::Text);
    }

    #[test]
    fn patterns_are_escaped() {
        assert_eq!(escape_pattern("my_table%"), "my\\_table\\%");
    }
}
