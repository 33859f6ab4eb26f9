//! The outbound poller thread of one route: runs the route's query with the stored position
//! bound to its `?`s, reads the rows through block cursors, and runs `after_publish`.

use std::collections::HashMap;

use chrono::{NaiveDate, NaiveDateTime};
use odbc_api::buffers::{BufferDesc, ColumnarDynBuffer};
use odbc_api::parameter::{InputParameter, VarCharBox, WithDataType};
use odbc_api::{Connection, Cursor, DataType, ResultSetMetadata};
use tokio::sync::{mpsc, oneshot};

use super::DbSpec;
use super::dialect::Dialect;
use crate::convert::SqlKind;
use crate::error::{Class, DbError};

/// One value read from the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    /// A decimal, every digit as the database printed it.
    Decimal(String),
    Float(f64),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
    Date(NaiveDate),
    /// UTC (the session time zone is UTC).
    Timestamp(NaiveDateTime),
}

impl Cell {
    /// The value as text: for templates, CSV fields and stored positions.
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Int(i) => Some(i.to_string()),
            Cell::Decimal(d) => Some(d.clone()),
            Cell::Float(f) => Some(f.to_string()),
            Cell::Bool(b) => Some(b.to_string()),
            Cell::Text(t) => Some(t.clone()),
            Cell::Bytes(b) => Some(crate::dlq::base64(b)),
            Cell::Date(d) => Some(d.format("%Y-%m-%d").to_string()),
            Cell::Timestamp(t) => Some(rfc3339(t)),
        }
    }
}

/// RFC 3339 in UTC, with fractional seconds only when there are some.
pub fn rfc3339(t: &NaiveDateTime) -> String {
    if t.and_utc().timestamp_subsec_nanos() == 0 {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }
}

/// What a route asks of its query.
#[derive(Debug, Clone)]
pub struct PollSpec {
    pub route: String,
    pub query: String,
    pub track: Vec<String>,
    pub max_rows: usize,
    pub after_publish: Option<String>,
}

/// The rows of one poll.
#[derive(Debug, Clone, Default)]
pub struct Polled {
    pub columns: Vec<String>,
    pub kinds: Vec<SqlKind>,
    pub rows: Vec<Vec<Cell>>,
    /// Indexes of the track columns in `columns`.
    pub track: Vec<usize>,
}

enum Request {
    Poll {
        position: Vec<String>,
        reply: oneshot::Sender<Result<Polled, DbError>>,
    },
    AfterPublish {
        values: Vec<Cell>,
        reply: oneshot::Sender<Result<Vec<(usize, DbError)>, DbError>>,
    },
}

/// Handle to a route's poller thread.
pub struct Poller {
    requests: mpsc::Sender<Request>,
}

impl Poller {
    pub fn start(spec: DbSpec, poll: PollSpec) -> Result<Poller, DbError> {
        let spec = spec.for_reading(poll.max_rows);
        let (tx, rx) = mpsc::channel(1);
        std::thread::Builder::new()
            .name(format!("odbc-{}", poll.route))
            .spawn(move || serve(spec, poll, rx))
            .map_err(|e| DbError::new(format!("cannot start the database thread: {e}")))?;
        Ok(Poller { requests: tx })
    }

    pub async fn poll(&self, position: Vec<String>) -> Result<Polled, DbError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Poll { position, reply })
            .await
            .map_err(|_| DbError::new("the database thread stopped"))?;
        rx.await
            .map_err(|_| DbError::new("the database thread stopped"))?
    }

    /// Runs `after_publish` once per value, in order, in one transaction; the listed
    /// indexes were rejected by the database.
    pub async fn after_publish(&self, values: Vec<Cell>) -> Result<Vec<(usize, DbError)>, DbError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::AfterPublish { values, reply })
            .await
            .map_err(|_| DbError::new("the database thread stopped"))?;
        rx.await
            .map_err(|_| DbError::new("the database thread stopped"))?
    }
}

fn serve(spec: DbSpec, poll: PollSpec, mut requests: mpsc::Receiver<Request>) {
    let mut conn: Option<(Connection<'static>, Dialect)> = None;
    // Column buffer lengths learnt from truncated values, by column index.
    let mut widths: HashMap<usize, usize> = HashMap::new();
    // Described once per connection: some drivers answer SQLDescribeCol only by running
    // the query.
    let mut shape: Option<Described> = None;
    while let Some(request) = requests.blocking_recv() {
        if conn.is_none() {
            shape = None;
            match super::worker::open_session(&spec) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    match request {
                        Request::Poll { reply, .. } => drop(reply.send(Err(e))),
                        Request::AfterPublish { reply, .. } => drop(reply.send(Err(e))),
                    }
                    continue;
                }
            }
        }
        let (c, _) = conn.as_ref().expect("connected above");
        let outage = match request {
            Request::Poll { position, reply } => {
                let result = run_poll(c, &poll, &position, &mut widths, &mut shape);
                let _ = c.commit();
                let outage = is_outage(&result);
                let _ = reply.send(result);
                outage
            }
            Request::AfterPublish { values, reply } => {
                let result = run_after_publish(c, &poll, &values);
                let outage = is_outage(&result);
                let _ = reply.send(result);
                outage
            }
        };
        if outage && let Some((c, _)) = conn.take() {
            let _ = c.rollback();
        }
    }
}

fn is_outage<T>(result: &Result<T, DbError>) -> bool {
    matches!(result, Err(e) if e.class() == Class::Outage)
}

fn odbc<'a>(conn: &'a Connection<'_>) -> impl Fn(odbc_api::Error) -> DbError + 'a {
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
    for i in 1..=count as u16 {
        names.push(prepared.col_name(i).map_err(odbc(conn))?);
        let data_type = prepared.col_data_type(i).map_err(odbc(conn))?;
        kinds.push(kind_of(&data_type));
        types.push(data_type);
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

/// Values of one column stay within this many bytes of buffer per block.
const BLOCK_BYTES: usize = 16 << 20;
/// A single value may grow the buffer up to this size; larger values fail the poll.
const MAX_VALUE: usize = 64 << 20;

fn run_poll(
    conn: &Connection<'_>,
    poll: &PollSpec,
    position: &[String],
    widths: &mut HashMap<usize, usize>,
    shape: &mut Option<Described>,
) -> Result<Polled, DbError> {
    if shape.is_none() {
        *shape = Some(describe(conn, poll)?);
    }
    let shape = shape.as_ref().expect("described above");
    loop {
        match read(conn, poll, position, widths, shape)? {
            Some(polled) => return Ok(polled),
            // A value did not fit: its column's buffer has grown; read the poll again.
            None => continue,
        }
    }
}

fn read(
    conn: &Connection<'_>,
    poll: &PollSpec,
    position: &[String],
    widths: &mut HashMap<usize, usize>,
    shape: &Described,
) -> Result<Option<Polled>, DbError> {
    let Described {
        names: columns,
        kinds,
        types,
        track,
        params: param_count,
    } = shape.clone();
    let params: Vec<Box<dyn InputParameter>> = (0..param_count as usize)
        .map(|i| {
            let t = i % track.len().max(1);
            let value = position.get(t).cloned().unwrap_or_default();
            let kind = track.get(t).map(|&c| kinds[c]).unwrap_or(SqlKind::Text);
            bind_position(&value, kind)
        })
        .collect::<Result<_, _>>()?;
    let Some(cursor) = conn
        .execute(&poll.query, params.as_slice(), None)
        .map_err(odbc(conn))?
    else {
        return Err(DbError::new("the query returned no result set"));
    };
    let descs: Vec<BufferDesc> = kinds
        .iter()
        .zip(&types)
        .enumerate()
        .map(|(i, (kind, t))| buffer_desc(*kind, t, widths.get(&i).copied()))
        .collect();
    let widest = descs.iter().map(desc_bytes).max().unwrap_or(1).max(1);
    let block_rows = (BLOCK_BYTES / widest).clamp(1, poll.max_rows.clamp(1, 1000));
    let buffer = ColumnarDynBuffer::from_descs(block_rows, descs);
    let mut block = cursor.bind_buffer(buffer).map_err(odbc(conn))?;
    let mut rows = Vec::new();
    while rows.len() < poll.max_rows {
        let batch = match block.fetch_with_truncation_check(true) {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(odbc_api::Error::TooLargeValueForBuffer {
                indicator,
                buffer_index,
            }) => {
                let current = widths.get(&buffer_index).copied().unwrap_or(4096);
                let wanted = indicator.unwrap_or(current * 4).max(current * 2);
                if wanted > MAX_VALUE {
                    return Err(DbError::new(format!(
                        "column {} holds a value larger than {MAX_VALUE} bytes",
                        columns[buffer_index]
                    )));
                }
                widths.insert(buffer_index, wanted);
                return Ok(None);
            }
            Err(e) => return Err(odbc(conn)(e)),
        };
        for r in 0..batch.num_rows() {
            if rows.len() >= poll.max_rows {
                break;
            }
            let row: Vec<Cell> = kinds
                .iter()
                .enumerate()
                .map(|(c, kind)| cell(batch.column(c), r, *kind))
                .collect();
            rows.push(row);
        }
    }
    Ok(Some(Polled {
        columns,
        kinds,
        rows,
        track,
    }))
}

fn buffer_desc(kind: SqlKind, data_type: &DataType, learnt: Option<usize>) -> BufferDesc {
    let declared = data_type.utf8_len().map(|n| n.get()).unwrap_or(0);
    let width = learnt.unwrap_or(declared.clamp(64, 4096));
    match kind {
        SqlKind::Integer => BufferDesc::I64 { nullable: true },
        SqlKind::Float => BufferDesc::F64 { nullable: true },
        SqlKind::Bool => BufferDesc::Bit { nullable: true },
        SqlKind::Date => BufferDesc::Date { nullable: true },
        SqlKind::Timestamp => BufferDesc::Timestamp { nullable: true },
        SqlKind::Binary => BufferDesc::Binary {
            max_bytes: learnt.unwrap_or(4096),
        },
        SqlKind::Decimal | SqlKind::Text | SqlKind::Time => BufferDesc::Text { max_str_len: width },
    }
}

fn desc_bytes(desc: &BufferDesc) -> usize {
    match desc {
        BufferDesc::Text { max_str_len } => *max_str_len + 1,
        BufferDesc::Binary { max_bytes } => *max_bytes,
        _ => 16,
    }
}

fn cell(column: odbc_api::buffers::AnyColumnBufferSlice<'_>, row: usize, kind: SqlKind) -> Cell {
    use odbc_api::Bit;
    use odbc_api::sys::{Date, Timestamp};
    let or_null = |c: Option<Cell>| c.unwrap_or(Cell::Null);
    match kind {
        SqlKind::Integer => or_null(
            column
                .as_nullable_slice::<i64>()
                .and_then(|s| s.get(row).map(|v| Cell::Int(*v))),
        ),
        SqlKind::Float => or_null(
            column
                .as_nullable_slice::<f64>()
                .and_then(|s| s.get(row).map(|v| Cell::Float(*v))),
        ),
        SqlKind::Bool => or_null(
            column
                .as_nullable_slice::<Bit>()
                .and_then(|s| s.get(row).map(|v| Cell::Bool(v.as_bool()))),
        ),
        SqlKind::Date => or_null(column.as_nullable_slice::<Date>().and_then(|s| {
            s.get(row).and_then(|d| {
                NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
                    .map(Cell::Date)
            })
        })),
        SqlKind::Timestamp => or_null(column.as_nullable_slice::<Timestamp>().and_then(|s| {
            s.get(row).and_then(|t| {
                NaiveDate::from_ymd_opt(i32::from(t.year), u32::from(t.month), u32::from(t.day))
                    .and_then(|d| {
                        d.and_hms_nano_opt(
                            u32::from(t.hour),
                            u32::from(t.minute),
                            u32::from(t.second),
                            t.fraction,
                        )
                    })
                    .map(Cell::Timestamp)
            })
        })),
        SqlKind::Binary => or_null(
            column
                .as_binary()
                .and_then(|s| s.get(row).map(|b| Cell::Bytes(b.to_vec()))),
        ),
        SqlKind::Decimal => or_null(column.as_text().and_then(|s| {
            s.get(row)
                .map(|b| Cell::Decimal(String::from_utf8_lossy(b).trim().to_string()))
        })),
        SqlKind::Text | SqlKind::Time => or_null(column.as_text().and_then(|s| {
            s.get(row)
                .map(|b| Cell::Text(String::from_utf8_lossy(b).into_owned()))
        })),
    }
}

/// A stored position bound with the type of its track column.
fn bind_position(value: &str, kind: SqlKind) -> Result<Box<dyn InputParameter>, DbError> {
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

pub fn run_after_publish(
    conn: &Connection<'_>,
    poll: &PollSpec,
    values: &[Cell],
) -> Result<Vec<(usize, DbError)>, DbError> {
    let Some(sql) = &poll.after_publish else {
        return Ok(Vec::new());
    };
    let mut rejected = Vec::new();
    let mut prepared = conn.prepare(sql).map_err(odbc(conn))?;
    let params = prepared.num_params().map_err(odbc(conn))?;
    for (i, value) in values.iter().enumerate() {
        let text = value.text().unwrap_or_default();
        let kind = match value {
            Cell::Int(_) => SqlKind::Integer,
            Cell::Float(_) => SqlKind::Float,
            Cell::Timestamp(_) => SqlKind::Timestamp,
            Cell::Date(_) => SqlKind::Date,
            _ => SqlKind::Text,
        };
        let bound: Vec<Box<dyn InputParameter>> = (0..params)
            .map(|_| bind_position(&text, kind))
            .collect::<Result<_, _>>()?;
        match prepared.execute(bound.as_slice()) {
            Ok(_) => {}
            Err(e) => {
                let e = odbc(conn)(e);
                if e.class() == Class::Outage {
                    return Err(e);
                }
                rejected.push((i, e));
            }
        }
    }
    conn.commit().map_err(odbc(conn))?;
    Ok(rejected)
}
