//! The outbound poller thread of one route: runs the route's query with the stored position
//! bound to its `?`s, reads the rows through block cursors, and runs `after_publish`.

use std::collections::HashMap;

use odbc_api::buffers::{BufferDesc, ColumnarDynBuffer};
use odbc_api::parameter::InputParameter;
use odbc_api::{Connection, Cursor};
use tokio::sync::{mpsc, oneshot};

use super::DbSpec;
use super::describe::{Described, PollSpec, bind_position, describe, misfit, odbc};
use super::dialect::Dialect;
use super::fetch::{buffer_desc, cell, desc_bytes, grow_cut_columns, named};
pub use super::running::Transaction;
use super::running::running;
use super::shape::{Column, Read, mysql_tinyint_types, postgres_types, read_of};
pub use crate::cell::{Cell, rfc3339};
use crate::convert::SqlKind;
use crate::error::{Class, DbError};

/// The rows of one poll.
#[derive(Debug, Clone, Default)]
pub struct Polled {
    pub columns: Vec<String>,
    pub kinds: Vec<SqlKind>,
    pub rows: Vec<Vec<Cell>>,
    /// Indexes of the track columns in `columns`.
    pub track: Vec<usize>,
    /// With `visibility: snapshot` on PostgreSQL: the transactions running before and
    /// after the query. `None` elsewhere.
    pub running: Option<Running>,
}

/// The other transactions running in the database around one poll's query.
#[derive(Debug, Clone, Default)]
pub struct Running {
    /// Read before the query took its snapshot (and in an earlier transaction).
    pub before: Vec<Transaction>,
    /// Read after the query took its snapshot.
    pub after: Vec<Transaction>,
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
    let mut conn: Option<(super::DbConn, Dialect)> = None;
    // Column buffer lengths learnt from long values, by column index.
    let mut widths: HashMap<usize, usize> = HashMap::new();
    // Described once per connection: some drivers answer SQLDescribeCol only by running
    // the query.
    let mut shape: Option<Shape> = None;
    loop {
        let next = match &conn {
            Some((c, _)) => c.idle(|| requests.blocking_recv()),
            None => requests.blocking_recv(),
        };
        let Some(request) = next else { break };
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
                let result = session
                    .run_poll_seen(&position, &mut widths, &mut shape)
                    .map_err(|e| c.explain(e));
                let _ = c.commit();
                let outage = is_outage(&result);
                let _ = reply.send(result);
                outage
            }
            Request::AfterPublish { values, reply } => {
                let result = run_after_publish(c, &poll, &values).map_err(|e| c.explain(e));
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

/// Values of one column stay within this many bytes of buffer per block.
const BLOCK_BYTES: usize = 16 << 20;
pub use super::fetch::MAX_VALUE;

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
    /// [`Session::run_poll`], between two readings of the running transactions when the
    /// route asks for them on PostgreSQL.
    fn run_poll_seen(
        &self,
        position: &[String],
        widths: &mut HashMap<usize, usize>,
        shape: &mut Option<Shape>,
    ) -> Result<Polled, DbError> {
        if !(self.poll.snapshot && self.dialect == Dialect::Postgres) {
            return self.run_poll(position, widths, shape);
        }
        let before = running(self.conn)?;
        let mut polled = self.run_poll(position, widths, shape)?;
        let after = running(self.conn)?;
        polled.running = Some(Running { before, after });
        Ok(polled)
    }

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
        let server_types: Vec<Option<String>> = match self.dialect {
            Dialect::Postgres => {
                let params = self.params(described, position)?;
                postgres_types(self.conn, &self.poll.query, &described.names, &params)
                    .map(|types| types.into_iter().map(Some).collect())
                    .unwrap_or_default()
            }
            Dialect::MySql => {
                let types = mysql_tinyint_types(self.conn, &described.origins);
                let _ = self.conn.commit();
                types
            }
            _ => Vec::new(),
        };
        Ok((0..described.names.len())
            .map(|i| {
                let column = Column {
                    data_type: &described.types[i],
                    type_name: described.type_names[i].clone(),
                    server_type: server_types.get(i).cloned().flatten(),
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
                bind_position(&value, kind).map_err(|e| misfit(e, described, t))
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
            running: None,
        }))
    }
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
