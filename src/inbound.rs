//! The inbound route loop: messages → rows → batches → the ODBC sink → dead letters and
//! acknowledgements.
//!
//! One batch is in the database at a time; while it commits the next one fills. A batch
//! leaves when it is full, when no further message is ready, or when `max_delay` has passed
//! since its first row, whichever comes first.

use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::db::worker::{InsertOutcome, InsertRequest, Sink};
use crate::dlq::{Direction, NewDeadLetter};
use crate::error::DbError;
use crate::mapping::{MapError, Mapper, Row};
use crate::message::Message;
use crate::state::State;

pub struct InboundRoute {
    pub name: String,
    pub mapper: Mapper,
    pub sink: Sink,
    pub state: State,
    pub max_rows: usize,
    pub max_delay: Duration,
}

/// Messages of one batch, in receive order, with their rows or their mapping failure.
#[derive(Default)]
struct Batch {
    rows: Vec<Row>,
    /// For each message: the index of its row in `rows`, or why it has none.
    messages: Vec<(Message, Result<usize, MapError>)>,
    started: Option<Instant>,
}

impl Batch {
    fn len(&self) -> usize {
        self.messages.len()
    }
}

struct InFlight {
    reply: oneshot::Receiver<InsertOutcome>,
    batch: Batch,
}

impl InboundRoute {
    /// Runs until `stop` turns true and every message already received is done.
    pub async fn run(self, mut messages: mpsc::Receiver<Message>, mut stop: watch::Receiver<bool>) {
        let mut batch = Batch::default();
        let mut in_flight: Option<InFlight> = None;
        let mut stopping = false;
        loop {
            let ready_to_send = in_flight.is_none()
                && batch.len() > 0
                && (batch.len() >= self.max_rows
                    || messages.is_empty()
                    || batch.started.is_some_and(|t| t.elapsed() >= self.max_delay));
            if ready_to_send {
                in_flight = self.dispatch(std::mem::take(&mut batch)).await;
            }
            if stopping && in_flight.is_none() && batch.len() == 0 && messages.is_empty() {
                return;
            }
            let deadline = batch.started.map(|t| t + self.max_delay);
            tokio::select! {
                biased;
                outcome = async { (&mut in_flight.as_mut().expect("guarded").reply).await }, if in_flight.is_some() => {
                    let done = in_flight.take().expect("guarded");
                    match outcome {
                        Ok(InsertOutcome::Committed { rejected }) => self.finish(done.batch, rejected).await,
                        Ok(InsertOutcome::Abandoned) | Err(_) => {
                            info!(route = %self.name, messages = done.batch.len(), "batch released unacknowledged; the broker will redeliver it");
                        }
                    }
                }
                message = messages.recv(), if batch.len() < self.max_rows => match message {
                    Some(message) => self.add(&mut batch, message),
                    None => stopping = true,
                },
                _ = sleep_until_opt(deadline), if deadline.is_some() && in_flight.is_none() => {}
                changed = stop.changed(), if !stopping => {
                    if changed.is_err() || *stop.borrow() {
                        stopping = true;
                    }
                }
            }
        }
    }

    fn add(&self, batch: &mut Batch, message: Message) {
        batch.started.get_or_insert_with(Instant::now);
        let mapped = self.mapper.map(&message).map(|row| {
            batch.rows.push(row);
            batch.rows.len() - 1
        });
        if let Err(e) = &mapped {
            debug!(route = %self.name, topic = %message.topic, error = e.message(), "message cannot become a row");
        }
        batch.messages.push((message, mapped));
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
            reply: reply_tx,
        };
        if self.sink.requests.send(request).await.is_err() {
            warn!(route = %self.name, "database thread gone; batch released unacknowledged");
            return None;
        }
        Some(InFlight {
            reply: reply_rx,
            batch,
        })
    }

    /// Stores the dead letters of a committed batch, then acknowledges all its messages.
    async fn finish(&self, batch: Batch, rejected: Vec<(usize, DbError)>) {
        let mut letters = Vec::new();
        for (message, mapped) in &batch.messages {
            let failure = match mapped {
                Err(e) => Some((e.kind(), e.message().to_string(), None)),
                Ok(row) => rejected
                    .iter()
                    .find(|(i, _)| i == row)
                    .map(|(_, e)| ("rejected", e.message.clone(), e.sqlstate.clone())),
            };
            if let Some((kind, error, sqlstate)) = failure {
                letters.push(self.dead_letter(message, kind, error, sqlstate));
            }
        }
        if !letters.is_empty() {
            self.store(&letters).await;
            warn!(route = %self.name, count = letters.len(), "messages dead-lettered");
        }
        for (message, _) in batch.messages {
            message.ack.complete().await;
        }
    }

    fn dead_letter(
        &self,
        message: &Message,
        kind: &str,
        error: String,
        sqlstate: Option<String>,
    ) -> NewDeadLetter {
        NewDeadLetter {
            route: self.name.clone(),
            direction: Direction::Inbound,
            source: message.topic.clone(),
            payload: message.payload.clone(),
            headers: json!({
                "broker": &*message.broker,
                "qos": message.qos,
                "retain": message.retain,
                "received_at": message.received_at.to_rfc3339(),
            }),
            error_kind: kind.to_string(),
            error,
            sqlstate,
        }
    }

    /// A dead letter must be durable before its message is acknowledged: retry until stored.
    async fn store(&self, letters: &[NewDeadLetter]) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.state.store_dead_letters(letters).await {
                Ok(_) => return,
                Err(e) => {
                    warn!(route = %self.name, error = %e, "cannot store dead letters; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
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
