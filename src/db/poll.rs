//! The outbound poller thread of one route: runs the route's query with the stored position
//! bound to its `?`s, reads the rows through block cursors, and runs `after_publish`.

use std::collections::HashMap;

use chrono::{NaiveDate, NaiveDateTime};
use odbc_api::buffers::{AnyColumnBufferSlice, BufferDesc, ColumnarDynBuffer, Indicator};
use odbc_api::parameter::{InputParameter, VarCharBox, WithDataType};
use odbc_api::{Connection, Cursor, DataType, ResultSetMetadata};
use tokio::sync::{mpsc, oneshot};

use super::DbSpec;
pub use super::cell::{Cell, rfc3339};
use super::cell::{sqlite_value, trim_time_fraction, widen_real};
use super::dialect::Dialect;
use super::shape::{Column, Read, postgres_types, read_of, type_name};
use crate::convert::SqlKind;
use crate::error::{Class, DbError};

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
    // Column buffer lengths learnt from long values, by column index.
    let mut widths: HashMap<usize, usize> = HashMap::new();
    // Described once per connection: some drivers answer SQLDescribeCol only by running
    // the query.
    let mut shape: Option<Shape> = None;
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
        let (c, dialect) = conn.as_ref().expect("connected above");
        let outage = match request {
            Request::Poll { position, reply } => {
                let session = Session {
                    conn: c,
                    dialect: *dialect,
                    poll: &poll,
                };
                let result = session.run_poll(&position, &mut widths, &mut shape);
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
    /// `SQL_DESC_TYPE_NAME` of each column, lower case.
    pub type_names: Vec<String>,
    /// Whether each column is an unsigned number.
    pub unsigned: Vec<bool>,
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
    for i in 1..=count as u16 {
        names.push(prepared.col_name(i).map_err(odbc(conn))?);
        let data_type = prepared.col_data_type(i).map_err(odbc(conn))?;
        kinds.push(kind_of(&data_type));
        types.push(data_type);
        type_names.push(type_name(&mut prepared, i));
        unsigned.push(prepared.column_is_unsigned(i).unwrap_or(false));
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
/// The largest value a poll reads; a larger one makes its row a dead letter.
pub const MAX_VALUE: usize = 64 << 20;
/// The widest buffer: one byte more than the largest value, so a value that fills it is
/// known to be too large.
const WIDEST: usize = MAX_VALUE + 1;
/// The first buffer of a long column, before its values have been seen.
const FIRST_WIDTH: usize = 4096;

/// The described query and how each of its columns is read.
struct Shape {
    described: Described,
    reads: Vec<Read>,
}

/// What one poll needs of its connection.
struct Session<'a> {
    conn: &'a Connection<'a>,
    dialect: Dialect,
    poll: &'a PollSpec,
}

impl Session<'_> {
    fn run_poll(
        &self,
        position: &[String],
        widths: &mut HashMap<usize, usize>,
        shape: &mut Option<Shape>,
    ) -> Result<Polled, DbError> {
        if shape.is_none() {
            let described = describe(self.conn, self.poll)?;
            let reads = self.reads(&described, position)?;
            *shape = Some(Shape { described, reads });
        }
        let shape = shape.as_ref().expect("described above");
        loop {
            match self.read(position, widths, shape)? {
                Some(polled) => return Ok(polled),
                // A value did not fit: its column's buffer has grown; read the poll again.
                None => continue,
            }
        }
    }

    fn reads(&self, described: &Described, position: &[String]) -> Result<Vec<Read>, DbError> {
        let server_types = if self.dialect == Dialect::Postgres {
            let params = self.params(described, position)?;
            postgres_types(self.conn, &self.poll.query, &described.names, &params)
        } else {
            None
        };
        Ok((0..described.names.len())
            .map(|i| {
                let column = Column {
                    data_type: &described.types[i],
                    type_name: described.type_names[i].clone(),
                    server_type: server_types.as_ref().and_then(|t| t.get(i).cloned()),
                    unsigned: described.unsigned[i],
                };
                read_of(&column, self.dialect)
            })
            .collect())
    }

    /// The stored position, bound to every `?` of the query.
    fn params(
        &self,
        described: &Described,
        position: &[String],
    ) -> Result<Vec<Box<dyn InputParameter>>, DbError> {
        let track = &described.track;
        (0..described.params as usize)
            .map(|i| {
                let t = i % track.len().max(1);
                let value = position.get(t).cloned().unwrap_or_default();
                let kind = track
                    .get(t)
                    .map(|&c| described.kinds[c])
                    .unwrap_or(SqlKind::Text);
                bind_position(&value, kind)
            })
            .collect()
    }

    fn read(
        &self,
        position: &[String],
        widths: &mut HashMap<usize, usize>,
        shape: &Shape,
    ) -> Result<Option<Polled>, DbError> {
        let conn = self.conn;
        let described = &shape.described;
        let params = self.params(described, position)?;
        let Some(cursor) = conn
            .execute(&self.poll.query, params.as_slice(), None)
            .map_err(odbc(conn))?
        else {
            return Err(DbError::new("the query returned no result set"));
        };
        let descs: Vec<BufferDesc> = shape
            .reads
            .iter()
            .enumerate()
            .map(|(i, read)| buffer_desc(*read, widths.get(&i).copied()))
            .collect();
        let widest = descs.iter().map(desc_bytes).max().unwrap_or(1).max(1);
        let max_rows = self.poll.max_rows;
        let block_rows = (BLOCK_BYTES / widest).clamp(1, max_rows.clamp(1, 1000));
        let buffer = ColumnarDynBuffer::from_descs(block_rows, descs);
        let mut block = cursor.bind_buffer(buffer).map_err(odbc(conn))?;
        let mut rows = Vec::new();
        while rows.len() < max_rows {
            // Truncation is found from the indicators below: MariaDB's driver cuts long
            // values without the warning (01004) odbc-api's check relies on.
            let batch = match block.fetch() {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(e) => return Err(odbc(conn)(e)),
            };
            if grow_cut_columns(&shape.reads, |c| batch.column(c), widths) {
                return Ok(None);
            }
            for r in 0..batch.num_rows() {
                if rows.len() >= max_rows {
                    break;
                }
                let row: Vec<Cell> = shape
                    .reads
                    .iter()
                    .enumerate()
                    .map(|(c, read)| named(&described.names[c], cell(batch.column(c), r, *read)))
                    .collect();
                rows.push(row);
            }
        }
        Ok(Some(Polled {
            columns: described.names.clone(),
            kinds: described.kinds.clone(),
            rows,
            track: described.track.clone(),
        }))
    }
}

/// Grows the buffer of every long column that holds a value longer than it (up to
/// [`WIDEST`]); true if one grew, and the poll must be read again.
fn grow_cut_columns<'a>(
    reads: &[Read],
    column: impl Fn(usize) -> AnyColumnBufferSlice<'a>,
    widths: &mut HashMap<usize, usize>,
) -> bool {
    let mut grew = false;
    for (c, read) in reads.iter().enumerate() {
        if !read.is_long() {
            continue;
        }
        let slice = column(c);
        let cut = match slice.as_text() {
            Some(text) => text.has_truncated_values(),
            None => slice.as_binary().and_then(|b| b.has_truncated_values()),
        };
        let Some(indicator) = cut else { continue };
        let current = widths.get(&c).copied().unwrap_or(FIRST_WIDTH);
        if current >= WIDEST {
            continue;
        }
        let needed = match indicator {
            Indicator::Length(n) => n.next_power_of_two(),
            _ => current * 4,
        };
        widths.insert(c, needed.max(current * 2).min(WIDEST));
        grew = true;
    }
    grew
}

/// Names the column in the reason of a value that cannot be published.
fn named(column: &str, cell: Cell) -> Cell {
    match cell {
        Cell::Invalid(reason) => Cell::Invalid(format!("column {column}: {reason}")),
        other => other,
    }
}

fn buffer_desc(read: Read, learnt: Option<usize>) -> BufferDesc {
    let width = learnt.unwrap_or(FIRST_WIDTH);
    match read {
        Read::Int => BufferDesc::I64 { nullable: true },
        Read::Float => BufferDesc::F64 { nullable: true },
        // As doubles: MariaDB's driver reads large FLOAT values into a float buffer as 0.
        Read::Real => BufferDesc::F64 { nullable: true },
        Read::Bool => BufferDesc::Bit { nullable: true },
        Read::Date => BufferDesc::Date { nullable: true },
        Read::Timestamp { .. } => BufferDesc::Timestamp { nullable: true },
        Read::Binary => BufferDesc::Binary { max_bytes: width },
        Read::Digits
        | Read::DateText
        | Read::Time
        | Read::Text
        | Read::Json
        | Read::Uuid
        | Read::Loose(_) => BufferDesc::Text { max_str_len: width },
    }
}

fn desc_bytes(desc: &BufferDesc) -> usize {
    match desc {
        BufferDesc::Text { max_str_len } => *max_str_len + 1,
        BufferDesc::Binary { max_bytes } => *max_bytes,
        _ => 16,
    }
}

fn cell(column: AnyColumnBufferSlice<'_>, row: usize, read: Read) -> Cell {
    use odbc_api::Bit;
    let or_null = |c: Option<Cell>| c.unwrap_or(Cell::Null);
    match read {
        Read::Int => or_null(
            column
                .as_nullable_slice::<i64>()
                .and_then(|s| s.get(row).map(|v| Cell::Int(*v))),
        ),
        Read::Float => or_null(
            column
                .as_nullable_slice::<f64>()
                .and_then(|s| s.get(row).map(|v| Cell::Float(*v))),
        ),
        Read::Real => or_null(
            column
                .as_nullable_slice::<f64>()
                .and_then(|s| s.get(row).map(|v| Cell::Float(real(*v)))),
        ),
        Read::Bool => or_null(
            column
                .as_nullable_slice::<Bit>()
                .and_then(|s| s.get(row).map(|v| Cell::Bool(v.as_bool()))),
        ),
        Read::Date => or_null(
            column
                .as_nullable_slice::<odbc_api::sys::Date>()
                .and_then(|s| s.get(row).map(date_cell)),
        ),
        Read::Timestamp { utc, sentinels } => or_null(
            column
                .as_nullable_slice::<odbc_api::sys::Timestamp>()
                .and_then(|s| s.get(row).map(|t| timestamp_cell(t, utc, sentinels))),
        ),
        Read::Binary => or_null(column.as_binary().and_then(|s| {
            s.get(row).map(|b| {
                if b.len() >= WIDEST {
                    too_large()
                } else {
                    Cell::Bytes(b.to_vec())
                }
            })
        })),
        _ => or_null(
            column
                .as_text()
                .and_then(|s| s.get(row).map(|b| text_cell(b, read))),
        ),
    }
}

/// A single-precision value read as a double, with the shortest digits of the single.
fn real(v: f64) -> f64 {
    let single = v as f32;
    if f64::from(single) == v {
        widen_real(single)
    } else {
        v
    }
}

fn too_large() -> Cell {
    Cell::Invalid(format!(
        "the value is larger than {} MiB, the most a poll reads",
        MAX_VALUE >> 20
    ))
}

/// A value read as text, kept exactly: invalid UTF-8 is refused, never replaced.
fn text_cell(bytes: &[u8], read: Read) -> Cell {
    if bytes.len() >= WIDEST {
        return too_large();
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Cell::Invalid("the value is not valid UTF-8 text".into());
    };
    match read {
        Read::Digits => Cell::Decimal(text.trim().to_string()),
        Read::DateText => text_date(text),
        Read::Time => Cell::Text(trim_time_fraction(text)),
        Read::Json => Cell::Json(text.to_string()),
        Read::Uuid => Cell::Text(text.to_ascii_lowercase()),
        Read::Loose(affinity) => sqlite_value(text.to_string(), affinity),
        _ => Cell::Text(text.to_string()),
    }
}

/// A date printed as `YYYY-MM-DD`, exactly; anything else (`0000-00-00` for the
/// infinities, BC dates) cannot be published as a date.
fn text_date(text: &str) -> Cell {
    match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(date) if date.format("%Y-%m-%d").to_string() == text => Cell::Date(date),
        _ => Cell::Invalid(format!(
            "the driver reports the date as {text:?}, which is no calendar date (PostgreSQL's driver reports `infinity` and `-infinity` so); cast the column to text in the query to publish it"
        )),
    }
}

fn date_cell(d: &odbc_api::sys::Date) -> Cell {
    match NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day)) {
        Some(date) => Cell::Date(date),
        None => Cell::Invalid(format!(
            "the driver reports the date as {:04}-{:02}-{:02}, which is no calendar date",
            d.year, d.month, d.day
        )),
    }
}

/// psqlODBC reports `infinity` as this timestamp, exactly like the real value.
fn is_infinity_sentinel(t: &odbc_api::sys::Timestamp) -> bool {
    (
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.fraction,
    ) == (9999, 12, 31, 23, 59, 59, 0)
}

fn timestamp_cell(t: &odbc_api::sys::Timestamp, utc: bool, sentinels: bool) -> Cell {
    if sentinels && (is_infinity_sentinel(t) || t.year <= 0) {
        return Cell::Invalid(format!(
            "PostgreSQL's driver reports `infinity`, `-infinity` and {:04}-{:02}-{:02} {:02}:{:02}:{:02} alike; cast the column to text in the query to publish it",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        ));
    }
    let naive: Option<NaiveDateTime> =
        NaiveDate::from_ymd_opt(i32::from(t.year), u32::from(t.month), u32::from(t.day)).and_then(
            |d| {
                d.and_hms_nano_opt(
                    u32::from(t.hour),
                    u32::from(t.minute),
                    u32::from(t.second),
                    t.fraction,
                )
            },
        );
    match naive {
        Some(n) if utc => Cell::Timestamp(n),
        Some(n) => Cell::LocalTimestamp(n),
        None => Cell::Invalid(format!(
            "the driver reports the timestamp as {:04}-{:02}-{:02} {:02}:{:02}:{:02}, which is no calendar time",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        )),
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
            Cell::Timestamp(_) | Cell::LocalTimestamp(_) => SqlKind::Timestamp,
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

#[cfg(test)]
mod tests {
    use super::*;
    use odbc_api::sys::Timestamp;

    fn stamp(year: i16, month: u16, day: u16, hms: (u16, u16, u16), fraction: u32) -> Timestamp {
        Timestamp {
            year,
            month,
            day,
            hour: hms.0,
            minute: hms.1,
            second: hms.2,
            fraction,
        }
    }

    #[test]
    fn timestamps_keep_their_zone_rule_and_refuse_the_infinity_sentinels() {
        let noon = stamp(2024, 5, 1, (12, 0, 0), 500_000_000);
        let text = |c: Cell| c.text().unwrap_or_else(|| format!("{c:?}"));
        assert_eq!(
            text(timestamp_cell(&noon, true, true)),
            "2024-05-01T12:00:00.5Z"
        );
        assert_eq!(
            text(timestamp_cell(&noon, false, false)),
            "2024-05-01T12:00:00.5"
        );
        let infinity = stamp(9999, 12, 31, (23, 59, 59), 0);
        assert!(
            matches!(timestamp_cell(&infinity, true, true), Cell::Invalid(r) if r.contains("infinity"))
        );
        // Only psqlODBC uses the sentinel; elsewhere it is a real value.
        assert_eq!(
            text(timestamp_cell(&infinity, true, false)),
            "9999-12-31T23:59:59Z"
        );
        let minus = stamp(-9999, 1, 1, (0, 0, 0), 0);
        assert!(matches!(
            timestamp_cell(&minus, true, true),
            Cell::Invalid(_)
        ));
        let zero = stamp(0, 0, 0, (0, 0, 0), 0);
        assert!(matches!(
            timestamp_cell(&zero, false, false),
            Cell::Invalid(_)
        ));
    }

    #[test]
    fn dates_read_as_text_are_exact_or_refused() {
        assert_eq!(
            text_date("2024-02-29"),
            Cell::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())
        );
        for bad in ["0000-00-00", "0044-03-15 BC", "2024-2-29", "infinity"] {
            assert!(matches!(text_date(bad), Cell::Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn text_is_kept_exactly_or_refused() {
        assert_eq!(
            text_cell("é".as_bytes(), Read::Text),
            Cell::Text("é".into())
        );
        assert!(matches!(text_cell(b"\xff", Read::Text), Cell::Invalid(_)));
        assert_eq!(
            text_cell(b"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", Read::Uuid),
            Cell::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
        );
        assert_eq!(
            text_cell(b"12:00:00.500000", Read::Time),
            Cell::Text("12:00:00.5".into())
        );
        assert_eq!(
            text_cell(b" 1.50 ", Read::Digits),
            Cell::Decimal("1.50".into())
        );
    }
}
