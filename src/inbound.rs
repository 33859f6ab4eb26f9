//! The inbound route loop: messages → rows → batches → the ODBC sink → dead letters and
//! acknowledgements.
//!
//! While a batch commits the next one fills. A batch leaves when it is full, when no
//! further message is ready, or when `max_delay` has passed since its first row, whichever
//! comes first; a full one also leaves while another is being written, so that at most two
//! are at the database at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::db::insert::{Strategy, presence};
use crate::db::postgres::Arrays;
use crate::db::worker::{InsertOutcome, InsertRequest, Sink};
use crate::db::write::goes_alone;
use crate::dlq::{Direction, NewDeadLetter};
use crate::error::DbError;
use crate::mapping::{MapError, Mapper, Part, Progress, Row};
use crate::message::{AckHandle, Message};
use crate::metrics::RouteMetrics;
use crate::routes::InboundPlan;
use crate::state::State;

pub struct InboundRoute {
    pub name: String,
    pub mapper: Mapper,
    pub sink: Sink,
    pub state: State,
    pub max_rows: usize,
    pub max_delay: Duration,
    pub max_message_bytes: usize,
    pub metrics: Arc<RouteMetrics>,
}

/// Messages of one batch, in receive order, with their rows and mapping failures. A long
/// CSV message, or a long array of `rows:`, spreads over several batches; the last one
/// acknowledges it.
#[derive(Default)]
struct Batch {
    messages: Vec<Arc<Message>>,
    /// The messages whose last rows are in this batch.
    acks: Vec<AckHandle>,
    /// Their payload bytes.
    finished_bytes: usize,
    rows: Vec<Row>,
    /// For each row: its message (an index into `messages`) and its part of it.
    origins: Vec<(usize, Option<Part>)>,
    /// Messages, or parts of them, that could not become rows.
    failures: Vec<(usize, Option<Part>, MapError)>,
    /// PostgreSQL array parameters for `rows`, built as the rows come, while every row binds
    /// the same columns: the database thread then only sends them. `None` once a row
    /// differs; the database thread groups the rows itself.
    arrays: Option<Arrays>,
    started: Option<Instant>,
}

impl Batch {
    /// A message of many parts weighs as many rows (or failed parts).
    fn len(&self) -> usize {
        self.messages
            .len()
            .max(self.rows.len() + self.failures.len())
    }
}

/// Batches at the database at once: one being written, one waiting.
const IN_FLIGHT: usize = 2;

/// A message whose rows do not all fit the batch: the rest go into the next ones.
struct Partial {
    message: Arc<Message>,
    ack: AckHandle,
    progress: Progress,
}

struct InFlight {
    reply: oneshot::Receiver<InsertOutcome>,
    batch: Batch,
    sent: Instant,
}

impl InboundRoute {
    /// The route of `plan`, writing through `sink`.
    pub fn new(plan: &InboundPlan, sink: Sink, state: State, metrics: Arc<RouteMetrics>) -> Self {
        InboundRoute {
            name: plan.name.clone(),
            mapper: plan.mapper(&sink.plan),
            max_rows: plan.target.max_rows,
            max_delay: plan.max_delay,
            max_message_bytes: plan.max_message_bytes,
            sink,
            state,
            metrics,
        }
    }

    /// Runs until `stop` turns true and every message already received is done.
    pub async fn run(self, mut messages: mpsc::Receiver<Message>, mut stop: watch::Receiver<bool>) {
        let mut batch = Batch::default();
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(IN_FLIGHT);
        let mut spare = None;
        let mut partial: Option<Partial> = None;
        let mut stopping = false;
        loop {
            if batch.len() < self.max_rows
                && let Some(p) = partial.take()
            {
                partial = self.add_part(&mut batch, p, &mut spare);
            }
            if self.can_send(&batch, &messages, &in_flight)
                && let Some(sent) = self.dispatch(std::mem::take(&mut batch)).await
            {
                in_flight.push_back(sent);
            }
            if stopping
                && in_flight.is_empty()
                && batch.len() == 0
                && partial.is_none()
                && messages.is_empty()
            {
                return;
            }
            let deadline = batch.started.map(|t| t + self.max_delay);
            tokio::select! {
                biased;
                outcome = async { (&mut in_flight.front_mut().expect("guarded").reply).await }, if !in_flight.is_empty() => {
                    let done = in_flight.pop_front().expect("guarded");
                    match outcome {
                        Ok(InsertOutcome::Committed { rejected, arrays }) => {
                            spare = arrays;
                            self.metrics.batch.observe(done.sent.elapsed());
                            RouteMetrics::add(&self.metrics.written, done.batch.origins.len() - rejected.len());
                            // The next batch goes to the database before this one is
                            // acknowledged, so that the two overlap.
                            if self.can_send(&batch, &messages, &in_flight)
                                && let Some(sent) = self.dispatch(std::mem::take(&mut batch)).await
                            {
                                in_flight.push_back(sent);
                            }
                            self.finish(done.batch, rejected).await
                        }
                        Ok(InsertOutcome::Abandoned) | Err(_) => {
                            self.metrics.leave(done.batch.acks.len());
                            info!(route = %self.name, messages = done.batch.len(), "batch released unacknowledged; the broker will redeliver it");
                        }
                    }
                }
                message = messages.recv(), if batch.len() < self.max_rows && partial.is_none() => match message {
                    Some(message) => partial = self.add(&mut batch, message, &mut spare),
                    None => stopping = true,
                },
                _ = sleep_until_opt(deadline), if deadline.is_some() && in_flight.is_empty() && partial.is_none() => {}
                // The rest of a long message goes on at the top of the loop.
                _ = async {}, if partial.is_some() && batch.len() < self.max_rows => {}
                changed = stop.changed(), if !stopping => {
                    if changed.is_err() || *stop.borrow() {
                        stopping = true;
                    }
                }
            }
        }
    }

    /// Whether `batch` goes to the database now. With nothing in flight, a batch leaves
    /// when it is full, when no further message is ready, or when `max_delay` has passed
    /// since its first row. A full batch also leaves while one is being written, so the
    /// database thread finds it waiting instead of idling for the hand-over.
    fn can_send(
        &self,
        batch: &Batch,
        messages: &mpsc::Receiver<Message>,
        in_flight: &VecDeque<InFlight>,
    ) -> bool {
        match in_flight.len() {
            0 => {
                batch.len() > 0
                    && (batch.len() >= self.max_rows
                        || messages.is_empty()
                        || batch.started.is_some_and(|t| t.elapsed() >= self.max_delay))
            }
            n if n < IN_FLIGHT => batch.len() >= self.max_rows,
            _ => false,
        }
    }

    /// Maps `message` into `batch`; `spare` holds array buffers back from the database.
    /// What does not fit comes back, to go on in the next batch.
    fn add(
        &self,
        batch: &mut Batch,
        mut message: Message,
        spare: &mut Option<Arrays>,
    ) -> Option<Partial> {
        RouteMetrics::add(&self.metrics.received, 1);
        self.metrics.enter(1);
        let ack = std::mem::replace(&mut message.ack, AckHandle::none());
        let message = Arc::new(message);
        if message.payload.len() > self.max_message_bytes {
            let error = format!(
                "the payload is {} bytes, over the broker's max_message_bytes ({})",
                message.payload.len(),
                crate::config::size::describe(self.max_message_bytes as u64)
            );
            debug!(route = %self.name, source = %message.source(), error, "message too large");
            batch.started.get_or_insert_with(Instant::now);
            batch
                .failures
                .push((batch.messages.len(), None, MapError::TooLarge(error)));
            batch.finished_bytes += message.payload.len();
            batch.messages.push(message);
            batch.acks.push(ack);
            return None;
        }
        self.add_part(
            batch,
            Partial {
                message,
                ack,
                progress: Progress::default(),
            },
            spare,
        )
    }

    /// Maps as many of the message's rows as the batch has room for.
    fn add_part(
        &self,
        batch: &mut Batch,
        mut part: Partial,
        spare: &mut Option<Arrays>,
    ) -> Option<Partial> {
        batch.started.get_or_insert_with(Instant::now);
        let index = batch.messages.len();
        let plan = &self.sink.plan;
        let room = self
            .max_rows
            .saturating_sub(batch.rows.len() + batch.failures.len())
            .max(1);
        let message = &part.message;
        self.mapper
            .map_part(message, &mut part.progress, room, &mut |at, mapped| match mapped {
                Ok(row) => {
                    batch.arrays = match batch.arrays.take() {
                        // The database thread writes such a row alone, from its own memory.
                        _ if goes_alone(&row, plan.max_rows) => None,
                        _ if batch.rows.is_empty() => {
                            let present = presence(&row);
                            (plan.strategy(&present) == Strategy::Unnest).then(|| {
                                let mut arrays = spare.take().unwrap_or_default();
                                arrays.reset(&present);
                                arrays
                            })
                        }
                        Some(a) if a.fits(&row) && a.rows < plan.rows_per_statement(&a.present) => {
                            Some(a)
                        }
                        _ => None,
                    };
                    if let Some(a) = &mut batch.arrays {
                        a.push(&row);
                    }
                    batch.rows.push(row);
                    batch.origins.push((index, at));
                }
                Err(e) => {
                    debug!(route = %self.name, source = %message.source(), error = e.message(), "message cannot become a row");
                    batch.failures.push((index, at, e));
                }
            });
        batch.messages.push(part.message.clone());
        if part.progress.is_done() {
            batch.finished_bytes += part.message.payload.len();
            batch.acks.push(part.ack);
            None
        } else {
            Some(part)
        }
    }

    /// Sends the rows to the sink; a batch without rows finishes at once.
    async fn dispatch(&self, mut batch: Batch) -> Option<InFlight> {
        if batch.rows.is_empty() {
            self.finish(batch, Vec::new()).await;
            return None;
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = InsertRequest {
            rows: std::mem::take(&mut batch.rows),
            arrays: batch.arrays.take(),
            reply: reply_tx,
        };
        if self.sink.requests.send(request).await.is_err() {
            warn!(route = %self.name, "database thread gone; batch released unacknowledged");
            self.metrics.leave(batch.acks.len());
            return None;
        }
        Some(InFlight {
            reply: reply_rx,
            batch,
            sent: Instant::now(),
        })
    }

    /// Stores the dead letters of a committed batch, then acknowledges all its messages.
    async fn finish(&self, batch: Batch, rejected: Vec<(usize, DbError)>) {
        let mut letters = Vec::with_capacity(batch.failures.len() + rejected.len());
        for (index, part, e) in &batch.failures {
            letters.push(self.dead_letter(
                &batch.messages[*index],
                part.as_ref(),
                e.kind(),
                e.message().to_string(),
                None,
            ));
        }
        for (row, e) in rejected {
            let (index, part) = &batch.origins[row];
            let error = match part {
                Some(p) => format!("{}: {}", p.label(), e.message),
                None => e.message.clone(),
            };
            letters.push(self.dead_letter(
                &batch.messages[*index],
                part.as_ref(),
                "rejected",
                error,
                e.sqlstate.clone(),
            ));
        }
        if !letters.is_empty() {
            self.store(&letters).await;
            RouteMetrics::add(&self.metrics.dead_letters, letters.len());
            warn!(route = %self.name, count = letters.len(), "messages dead-lettered");
        }
        let done = batch.acks.len();
        let carried = batch.finished_bytes;
        drop(batch.messages);
        AckHandle::complete_all(batch.acks).await;
        self.metrics.leave(done);
        if carried >= crate::heap::LARGE {
            tokio::task::spawn_blocking(crate::heap::trim);
        }
    }

    /// A dead letter keeps the message's metadata; for a CSV record, its payload is the
    /// record's line alone; for an element of `rows:`, the element's JSON, with its index
    /// and, where columns read it, the message around the array.
    fn dead_letter(
        &self,
        message: &Message,
        part: Option<&Part>,
        kind: &str,
        error: String,
        sqlstate: Option<String>,
    ) -> NewDeadLetter {
        let mut headers = message.metadata();
        let payload = match part {
            Some(Part::Element(e)) => {
                headers["index"] = json!(e.index);
                if self.mapper.reads_message() {
                    headers["message"] = e.context().clone();
                }
                e.text()
            }
            Some(Part::Line(l)) => {
                headers["line"] = json!(l.number);
                if let Some((start, end)) = l.header {
                    headers["csv_header"] =
                        json!(String::from_utf8_lossy(&message.payload[start..end]));
                }
                l.bytes(&message.payload).to_vec()
            }
            None => message.payload.to_vec(),
        };
        NewDeadLetter {
            route: self.name.clone(),
            direction: Direction::Inbound,
            source: message.source().to_string(),
            payload,
            headers,
            error_kind: kind.to_string(),
            error,
            sqlstate,
        }
    }

    /// A dead letter must be durable before its message is acknowledged: retry until stored.
    async fn store(&self, letters: &[NewDeadLetter]) {
        let mut backoff = Backoff::new();
        loop {
            match self.state.store_dead_letters(letters).await {
                Ok(_) => return,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(route = %self.name, error = %e, retry_in = ?delay, "cannot store dead letters; retrying");
                    RouteMetrics::add(&self.metrics.retries, 1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
