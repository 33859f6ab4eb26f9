//! The shape of an outbound query: its result columns, where its track columns are, and how
//! a stored position binds to its `?`s: what `check` verifies and every poll relies on.

use chrono::NaiveDate;
use odbc_api::parameter::{InputParameter, VarCharBox, WithDataType};
use odbc_api::{Connection, DataType, ResultSetMetadata};

use super::shape::{Origin, origin, type_name};
use crate::convert::SqlKind;
use crate::error::DbError;

/// What a route asks of its query.
#[derive(Debug, Clone)]
pub struct PollSpec {
    pub route: String,
    pub query: String,
    pub track: Vec<String>,
    pub max_rows: usize,
    pub after_publish: Option<String>,
    /// `visibility: snapshot`: each poll also reports the transactions running around it.
    pub snapshot: bool,
}

pub(super) fn odbc<'a>(conn: &'a Connection<'_>) -> impl Fn(odbc_api::Error) -> DbError + 'a {
    move |e| {
        let mut err = DbError::from_odbc(&e);
        err.connection_dead = conn.is_dead().unwrap_or(false);
        err
    }
}

/// The shape of a query's result.
#[derive(Debug, Clone)]
pub struct Described {
    pub names: Vec<String>,
    pub kinds: Vec<SqlKind>,
    pub types: Vec<DataType>,
    /// `SQL_DESC_TYPE_NAME` of each column, lower case.
    pub type_names: Vec<String>,
    /// Whether each column is an unsigned number.
    pub unsigned: Vec<bool>,
    /// The table column each `TINYINT` result column is read from, when the driver says.
    pub origins: Vec<Option<Origin>>,
    /// Indexes of the track columns.
    pub track: Vec<usize>,
    /// How many `?` the query has.
    pub params: u16,
}

/// The result columns of the query and the positions of the track columns: what `check`
/// verifies and every poll relies on.
pub fn describe(conn: &Connection<'_>, poll: &PollSpec) -> Result<Described, DbError> {
    let mut prepared = conn.prepare(&poll.query).map_err(odbc(conn))?;
    let count = prepared.num_result_cols().map_err(odbc(conn))?;
    if count <= 0 {
        return Err(DbError::new(
            "the query returns no columns (outbound queries must be SELECTs)",
        ));
    }
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    let mut types = Vec::new();
    let mut type_names = Vec::new();
    let mut unsigned = Vec::new();
    let mut origins = Vec::new();
    for i in 1..=count as u16 {
        names.push(prepared.col_name(i).map_err(odbc(conn))?);
        let data_type = prepared.col_data_type(i).map_err(odbc(conn))?;
        kinds.push(kind_of(&data_type));
        types.push(data_type);
        type_names.push(type_name(&mut prepared, i));
        unsigned.push(prepared.column_is_unsigned(i).unwrap_or(false));
        // Only a TINYINT may be a BOOLEAN whose table the catalog is asked about.
        let tinyint = types.last() == Some(&DataType::TinyInt);
        origins.push(tinyint.then(|| origin(&mut prepared, i)).flatten());
    }
    let track = poll
        .track
        .iter()
        .map(|t| {
            names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(t))
                .ok_or_else(|| {
                    DbError::new(format!(
                        "the track column `{t}` is not in the query's result ({})",
                        names.join(", ")
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let params = prepared.num_params().map_err(odbc(conn))?;
    Ok(Described {
        names,
        kinds,
        types,
        type_names,
        unsigned,
        origins,
        track,
        params,
    })
}

fn kind_of(data_type: &DataType) -> SqlKind {
    match data_type {
        DataType::TinyInt | DataType::SmallInt | DataType::Integer | DataType::BigInt => {
            SqlKind::Integer
        }
        DataType::Decimal { .. } | DataType::Numeric { .. } => SqlKind::Decimal,
        DataType::Float { .. } | DataType::Real | DataType::Double => SqlKind::Float,
        DataType::Bit => SqlKind::Bool,
        DataType::Date => SqlKind::Date,
        DataType::Timestamp { .. } => SqlKind::Timestamp,
        DataType::Binary { .. } | DataType::Varbinary { .. } | DataType::LongVarbinary { .. } => {
            SqlKind::Binary
        }
        // sqliteodbc reports BIGINT columns with the C type code of a signed 64-bit integer.
        DataType::Other { data_type, .. } if matches!(data_type.0, -25 | -5) => SqlKind::Integer,
        _ => SqlKind::Text,
    }
}

/// Whether each value of `position` converts to its track column's type, as every poll
/// binds it.
pub fn check_position(described: &Described, position: &[String]) -> Result<(), DbError> {
    for (t, &column) in described.track.iter().enumerate() {
        if let Some(value) = position.get(t) {
            bind_position(value, described.kinds[column]).map_err(|e| misfit(e, described, t))?;
        }
    }
    Ok(())
}

/// A position value its track column cannot take: retrying will not change it.
pub(super) fn misfit(mut error: DbError, described: &Described, t: usize) -> DbError {
    if let Some(&column) = described.track.get(t) {
        error.message = format!(
            "{}, as the track column `{}` needs",
            error.message, described.names[column]
        );
    }
    error.misconfigured = true;
    error
}

/// A stored position bound with the type of its track column.
pub(super) fn bind_position(
    value: &str,
    kind: SqlKind,
) -> Result<Box<dyn InputParameter>, DbError> {
    let bad = |what: &str| DbError::new(format!("the position `{value}` is not {what}"));
    Ok(match kind {
        SqlKind::Integer => Box::new(value.trim().parse::<i64>().map_err(|_| bad("an integer"))?),
        SqlKind::Float => Box::new(value.trim().parse::<f64>().map_err(|_| bad("a number"))?),
        SqlKind::Timestamp => {
            let t = crate::convert::timestamp(value.trim()).map_err(|_| bad("a timestamp"))?;
            Box::new(WithDataType {
                value: super::insert::timestamp(&t.naive_utc()),
                data_type: DataType::Timestamp { precision: 6 },
            })
        }
        SqlKind::Date => {
            let d =
                NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d").map_err(|_| bad("a date"))?;
            Box::new(super::insert::date(&d))
        }
        _ => Box::new(VarCharBox::from_string(value.to_string())),
    })
}
