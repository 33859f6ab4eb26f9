//! How each result column of an outbound query is read, decided once per connection from
//! what the driver and the database say about the column: its ODBC type, its type name and,
//! on PostgreSQL, the server's own type.

use odbc_api::handles::{AsStatementRef, Statement};
use odbc_api::parameter::InputParameter;
use odbc_api::sys::{Desc, Pointer, SQLColAttribute, SqlReturn};
use odbc_api::{Connection, Cursor, DataType};

use super::dialect::Dialect;
use crate::cell::Affinity;

/// How the values of one column are read and published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Int,
    /// Digits as printed: decimals, and unsigned 64-bit integers (beyond `i64`).
    Digits,
    Float,
    /// Single precision, published with the shortest digits that read back as it.
    Real,
    Bool,
    /// MariaDB/MySQL `BOOLEAN` (`tinyint(1)`): 0 and 1 are `false` and `true`; the type
    /// holds -128…127, and any other value is not a boolean.
    IntBool,
    Date,
    /// A date read as text: psqlODBC reports the date infinities as today's date in a
    /// date struct, but as `0000-00-00` in text.
    DateText,
    /// `utc`: a moment (published with `Z`); otherwise a timestamp without time zone.
    /// `sentinels`: psqlODBC reports `infinity` as 9999-12-31 23:59:59.
    Timestamp {
        utc: bool,
        sentinels: bool,
    },
    Time,
    Text,
    Json,
    Uuid,
    Binary,
    /// SQLite: the stored text, each value kept as what it is.
    Loose(Affinity),
}

impl Read {
    /// Read through a buffer of variable length.
    pub fn is_long(self) -> bool {
        matches!(
            self,
            Read::Digits
                | Read::DateText
                | Read::Time
                | Read::Text
                | Read::Json
                | Read::Uuid
                | Read::Binary
                | Read::Loose(_)
        )
    }
}

/// What is known about one result column.
pub struct Column<'a> {
    pub data_type: &'a DataType,
    /// `SQL_DESC_TYPE_NAME`, lower case.
    pub type_name: String,
    /// The server's own type name (PostgreSQL), lower case.
    pub server_type: Option<String>,
    pub unsigned: bool,
}

/// How to read a column on `dialect`.
pub fn read_of(column: &Column<'_>, dialect: Dialect) -> Read {
    if dialect == Dialect::Sqlite {
        return sqlite_read(column);
    }
    let name = column.server_type.as_deref().unwrap_or(&column.type_name);
    match name {
        "json" | "jsonb" => return Read::Json,
        "uuid" => return Read::Uuid,
        "boolean" | "bool" => return Read::Bool,
        "tinyint(1)" if dialect == Dialect::MySql => return Read::IntBool,
        _ => {}
    }
    match column.data_type {
        DataType::BigInt if column.unsigned => Read::Digits,
        DataType::TinyInt | DataType::SmallInt | DataType::Integer | DataType::BigInt => Read::Int,
        DataType::Decimal { .. } | DataType::Numeric { .. } => Read::Digits,
        DataType::Real => Read::Real,
        DataType::Float { precision } if *precision > 0 && *precision <= 24 => Read::Real,
        DataType::Float { .. } | DataType::Double => Read::Float,
        DataType::Bit => Read::Bool,
        DataType::Date if dialect == Dialect::Postgres => Read::DateText,
        DataType::Date => Read::Date,
        DataType::Time { .. } => Read::Time,
        DataType::Timestamp { .. } => Read::Timestamp {
            utc: is_moment(name, dialect),
            sentinels: dialect == Dialect::Postgres,
        },
        DataType::Binary { .. } | DataType::Varbinary { .. } | DataType::LongVarbinary { .. } => {
            Read::Binary
        }
        DataType::Other { data_type, .. } if data_type.0 == -11 => Read::Uuid,
        _ => Read::Text,
    }
}

/// A timestamp type that names a moment rather than a wall-clock reading: PostgreSQL's
/// `timestamptz` and MariaDB/MySQL's `TIMESTAMP` (stored in UTC, shown in the session's
/// zone, which is UTC). Other drivers' timestamps are taken as moments in UTC, as before.
fn is_moment(type_name: &str, dialect: Dialect) -> bool {
    match dialect {
        Dialect::Postgres => type_name.contains("with time zone") || type_name == "timestamptz",
        Dialect::MySql => type_name == "timestamp",
        Dialect::Sqlite | Dialect::Generic => true,
    }
}

/// SQLite keeps a type per value, not per column: read the stored text (and BLOB columns as
/// bytes) and decide per value.
fn sqlite_read(column: &Column<'_>) -> Read {
    let name = column.type_name.as_str();
    if name.contains("blob")
        || matches!(
            column.data_type,
            DataType::Binary { .. } | DataType::Varbinary { .. } | DataType::LongVarbinary { .. }
        )
    {
        return Read::Binary;
    }
    let affinity = match column.data_type {
        _ if name.contains("json") => Affinity::Json,
        DataType::Bit => Affinity::Bool,
        DataType::Date => Affinity::Date,
        DataType::Timestamp { .. } => Affinity::Timestamp,
        DataType::TinyInt
        | DataType::SmallInt
        | DataType::Integer
        | DataType::BigInt
        | DataType::Decimal { .. }
        | DataType::Numeric { .. }
        | DataType::Float { .. }
        | DataType::Real
        | DataType::Double => Affinity::Number,
        DataType::Other { data_type, .. } if matches!(data_type.0, -25 | -5) => Affinity::Number,
        _ => Affinity::Text,
    };
    Read::Loose(affinity)
}

/// `SQL_DESC_TYPE_NAME` of a result column, lower case; empty when the driver has none.
pub fn type_name(statement: &mut impl AsStatementRef, column: u16) -> String {
    attribute(statement, column, Desc::TypeName).to_ascii_lowercase()
}

/// The table column a result column is read from, as `(database, table, column)`, when
/// the driver says (`SQL_DESC_CATALOG_NAME`, `SQL_DESC_BASE_TABLE_NAME`,
/// `SQL_DESC_BASE_COLUMN_NAME`); `None` for computed columns.
pub fn origin(statement: &mut impl AsStatementRef, column: u16) -> Option<Origin> {
    let table = attribute(statement, column, Desc::BaseTableName);
    let name = attribute(statement, column, Desc::BaseColumnName);
    if table.is_empty() || name.is_empty() {
        return None;
    }
    Some(Origin {
        database: attribute(statement, column, Desc::CatalogName),
        table,
        column: name,
    })
}

/// Where a result column comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Empty when the driver does not say: the connection's current database.
    pub database: String,
    pub table: String,
    pub column: String,
}

/// A text attribute of a result column; empty when the driver has none.
fn attribute(statement: &mut impl AsStatementRef, column: u16, field: Desc) -> String {
    let stmt = statement.as_stmt_ref();
    let mut buffer = vec![0u8; 256];
    let mut length: i16 = 0;
    // SAFETY: the buffer outlives the call and its length is passed; odbc-api 29 has no safe
    // accessor for these attributes.
    let result = unsafe {
        SQLColAttribute(
            stmt.as_sys(),
            column,
            field,
            buffer.as_mut_ptr() as Pointer,
            buffer.len() as i16,
            &mut length,
            std::ptr::null_mut(),
        )
    };
    if !matches!(result, SqlReturn::SUCCESS | SqlReturn::SUCCESS_WITH_INFO) {
        return String::new();
    }
    let end = usize::try_from(length).unwrap_or(0).min(buffer.len() - 1);
    String::from_utf8_lossy(&buffer[..end])
        .trim_end_matches('\0')
        .to_string()
}

/// MariaDB/MySQL: `tinyint(1)` for each result column read straight from a `BOOLEAN`
/// column, which the result set cannot tell from `TINYINT`; the catalog says, as it does
/// for inbound routes ([`super::catalog::mysql_boolean_columns`]). Other columns get `None`.
pub fn mysql_tinyint_types(
    conn: &Connection<'_>,
    origins: &[Option<Origin>],
) -> Vec<Option<String>> {
    let mut booleans: std::collections::HashMap<String, Vec<String>> = Default::default();
    origins
        .iter()
        .map(|origin| {
            let origin = origin.as_ref()?;
            let table = match origin.database.as_str() {
                "" => origin.table.clone(),
                database => format!("{database}.{}", origin.table),
            };
            let columns = match booleans.entry(table) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let found =
                        super::catalog::mysql_boolean_columns(conn, e.key()).unwrap_or_default();
                    e.insert(found)
                }
            };
            columns
                .contains(&origin.column)
                .then(|| "tinyint(1)".to_string())
        })
        .collect()
}

/// PostgreSQL's own type of each result column (`json`, `uuid`, `timestamp with time
/// zone`…): psqlODBC names some of them `unknown`. The query runs with `LIMIT 0` under an
/// outer row, so nothing is read; `None` when it cannot be asked this way.
pub fn postgres_types(
    conn: &Connection<'_>,
    query: &str,
    columns: &[String],
    params: &[Box<dyn InputParameter>],
) -> Option<Vec<String>> {
    let types: Vec<String> = columns
        .iter()
        .map(|c| format!("pg_typeof(q.\"{}\")::text", c.replace('"', "\"\"")))
        .collect();
    let sql = format!(
        "SELECT {} FROM (SELECT 1) AS mqdb_one LEFT JOIN (SELECT * FROM ({}) AS mqdb_q LIMIT 0) AS q ON true",
        types.join(", "),
        query.trim().trim_end_matches(';')
    );
    let mut cursor = conn.execute(&sql, params, None).ok()??;
    let mut row = cursor.next_row().ok()??;
    let mut names = Vec::with_capacity(columns.len());
    for i in 1..=columns.len() {
        let mut text = Vec::new();
        row.get_text(u16::try_from(i).ok()?, &mut text).ok()?;
        names.push(String::from_utf8_lossy(&text).to_ascii_lowercase());
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(data_type: &DataType, type_name: &str, server: Option<&str>) -> Read {
        let c = Column {
            data_type,
            type_name: type_name.into(),
            server_type: server.map(String::from),
            unsigned: false,
        };
        let dialect = if server.is_some() {
            Dialect::Postgres
        } else {
            Dialect::MySql
        };
        read_of(&c, dialect)
    }

    #[test]
    fn types_that_read_back_differently_are_told_apart() {
        let ts = DataType::Timestamp { precision: 6 };
        let varchar = DataType::Varchar { length: None };
        assert_eq!(column(&varchar, "unknown", Some("jsonb")), Read::Json);
        assert_eq!(column(&varchar, "bool", Some("boolean")), Read::Bool);
        assert_eq!(
            column(&ts, "timestamptz", Some("timestamp with time zone")),
            Read::Timestamp {
                utc: true,
                sentinels: true
            }
        );
        assert_eq!(
            column(
                &ts,
                "timestamp without time zone",
                Some("timestamp without time zone")
            ),
            Read::Timestamp {
                utc: false,
                sentinels: true
            }
        );
        assert_eq!(
            column(&ts, "datetime", None),
            Read::Timestamp {
                utc: false,
                sentinels: false
            }
        );
        assert_eq!(
            column(&ts, "timestamp", None),
            Read::Timestamp {
                utc: true,
                sentinels: false
            }
        );
        assert_eq!(column(&DataType::Real, "float", None), Read::Real);
    }
}
