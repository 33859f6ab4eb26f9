//! The outbound route loop: poll the query from the stored position, publish each row,
//! and advance the position only past rows the broker confirmed (or that became dead
//! letters), in order. `after_publish` runs for those rows before the position moves.
//! Only the holder of the route's lease polls and publishes; every position it stores is
//! fenced by the lease. With `wake`, a PostgreSQL notification starts the next poll early
//! ([`wake`]); only the lease holder listens.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::broker::publish::{Address, Answer, Delivery, Envelope, Pending};
use crate::broker::publisher::Publisher;
use crate::cell::Cell;
use crate::config::{CsvOptions, Format};
use crate::db::poll::{Polled, Poller};
use crate::dedup;
use crate::destination::Target;
use crate::dlq::{Direction, NewDeadLetter};
use crate::lease::{Lease, LeaseSpec};
use crate::metrics::RouteMetrics;
use crate::state::{Fence, State, StateError};

pub mod barrier;
mod row;
pub mod wake;

use barrier::Gate;
use row::{column_text, next_position, older_than, payload, track_values, unpublishable};
use wake::{WakeSpec, Waker};

pub struct OutboundRoute {
    pub name: String,
    pub broker: String,
    pub poller: Poller,
    pub publisher: Publisher,
    pub state: State,
    pub destination: Target,
    pub format: Format,
    pub csv: CsvOptions,
    /// The first position; empty without `track`.
    pub start: Vec<String>,
    pub interval: Duration,
    pub delay: Option<Duration>,
    pub max_rows: usize,
    pub after_publish: bool,
    pub metrics: Arc<RouteMetrics>,
    /// Where the route says that its configuration cannot work, and stops.
    pub misconfigured: tokio::sync::mpsc::UnboundedSender<String>,
    /// The route's lease among the instances sharing the state store (an `Option` only so
    /// that `run` can move it out).
    pub lease: Option<LeaseSpec>,
    /// The line of `visibility: snapshot`, when the route holds its position back behind
    /// running transactions ([`barrier`]).
    pub snapshot_line: Option<u64>,
    /// The PostgreSQL channel whose notifications start a poll at once.
    pub wake: Option<WakeSpec>,
}

/// Why a poll failed: a misconfigured route stops, one that lost its lease stands by, any
/// other failure is retried.
enum Failed {
    Retry(String),
    Misconfigured(String),
    LeaseLost,
}

impl From<String> for Failed {
    fn from(message: String) -> Failed {
        Failed::Retry(message)
    }
}

/// One row after the broker has answered (or the row never reached it).
enum Answered {
    Broker {
        message_id: Option<String>,
        answer: Answer,
    },
    Dead {
        kind: &'static str,
        reason: String,
    },
}

/// One row's fate within a poll.
enum Attempt {
    Published(Pending),
    Dead { kind: &'static str, reason: String },
}

impl OutboundRoute {
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let spec = self
            .lease
            .take()
            .expect("every outbound route is built with its lease");
        let mut lease = Lease::keep(spec);
        self.metrics.set_standby(true);
        while let Some(fence) = lease.acquired(&mut stop).await {
            self.metrics.set_standby(false);
            let stopped = self.hold(&lease, &fence, &mut stop).await;
            self.metrics.set_standby(true);
            if stopped {
                break;
            }
            info!(route = %self.name, "outbound route standing by: another instance holds it");
        }
        lease.release().await;
    }

    /// Works the route while `fence` is this process's; true when it stopped for good
    /// (shutdown or a configuration that cannot work).
    async fn hold(&self, lease: &Lease, fence: &Fence, stop: &mut watch::Receiver<bool>) -> bool {
        // Read again at every takeover: the previous holder may have moved it.
        let mut position = loop {
            match self.state.position(&self.name).await {
                Ok(p) => break p.unwrap_or_else(|| self.start.clone()),
                Err(e) => {
                    warn!(route = %self.name, error = %e, "cannot read the stored position; retrying");
                    if sleep_or_stop(Duration::from_secs(1), stop).await {
                        return true;
                    }
                    if !lease.still(fence) {
                        return false;
                    }
                }
            }
        };
        info!(route = %self.name, position = ?position, epoch = fence.epoch, "outbound route started");
        if let Err(e) = self.publisher.connect().await {
            warn!(route = %self.name, broker = %self.broker, error = %e, "publisher cannot connect yet; retrying with the first rows");
        }
        let waker = self
            .wake
            .clone()
            .map(|spec| Waker::start(spec, self.name.clone()));
        let mut backoff = Backoff::new();
        let mut ahead = None;
        // Empty at every start: the first poll only sets a barrier.
        let mut gate = self.snapshot_line.map(|_| Gate::default());
        loop {
            if *stop.borrow() {
                return true;
            }
            if !lease.still(fence) {
                return false;
            }
            // An idle AMQP publisher only reconnects when asked; without this, health would
            // show its broker down until the next row.
            if !self.publisher.is_connected()
                && let Err(e) = self.publisher.connect().await
            {
                RouteMetrics::add(&self.metrics.retries, 1);
                debug!(route = %self.name, broker = %self.broker, error = %e, "publisher not connected");
            }
            let result = self
                .cycle(&mut position, &mut ahead, gate.as_mut(), lease, fence)
                .await;
            self.metrics.set_broker_up(self.publisher.is_connected());
            let pause = match result {
                Ok(true) => {
                    backoff.reset();
                    Duration::ZERO
                }
                Ok(false) => {
                    backoff.reset();
                    match wait_or_wake(self.interval, waker.as_ref(), stop).await {
                        Waited::Stopped => return true,
                        Waited::Woken => RouteMetrics::add(&self.metrics.wakes, 1),
                        Waited::Elapsed => {}
                    }
                    Duration::ZERO
                }
                Err(Failed::Misconfigured(message)) => {
                    let _ = self.misconfigured.send(message);
                    return true;
                }
                Err(Failed::LeaseLost) => {
                    lease.lost();
                    return false;
                }
                Err(Failed::Retry(e)) => {
                    RouteMetrics::add(&self.metrics.retries, 1);
                    let pause = backoff.next_delay();
                    warn!(route = %self.name, error = %e, retry_in = ?pause, "outbound poll or publish failed; retrying from the stored position");
                    pause
                }
            };
            if sleep_or_stop(pause, stop).await {
                return true;
            }
        }
    }

    /// One poll: publish, confirm, run after_publish, store. `Ok(true)` when more rows may
    /// be waiting right now.
    ///
    /// `ahead` is the next poll, read while this one's confirms were awaited: it is used
    /// only when the position it was read from is the one this poll starts at.
    async fn cycle(
        &self,
        position: &mut Vec<String>,
        ahead: &mut Option<ReadAhead>,
        gate: Option<&mut Gate>,
        lease: &Lease,
        fence: &Fence,
    ) -> Result<bool, Failed> {
        let started = std::time::Instant::now();
        let polled = match ahead.take() {
            Some(read) if read.from == *position => read.polled,
            _ => self.poller.poll(position.clone()).await.map_err(|e| {
                if e.misconfigured {
                    let whence = if *position == self.start {
                        "the start value"
                    } else {
                        "the stored position"
                    };
                    return Failed::Misconfigured(format!("route {}: {whence}: {e}", self.name));
                }
                self.metrics.set_database_up(false);
                format!("query failed: {e}").into()
            })?,
        };
        self.metrics.set_database_up(true);
        let tracked = !polled.track.is_empty();
        let mut rows: &[Vec<Cell>] = &polled.rows;
        if let (Some(delay), Some(&first)) = (self.delay, polled.track.first()) {
            rows = &rows[..older_than(rows, first, delay)];
        }
        let read = rows.len();
        if let Some(gate) = gate {
            rows = &rows[..self.admitted(gate, &polled, rows)?];
        }
        let more = tracked && rows.len() >= self.max_rows;
        if rows.is_empty() {
            if read == 0 {
                self.metrics.caught_up();
            } else {
                self.metrics.behind();
            }
            return Ok(false);
        }
        self.metrics.behind();
        RouteMetrics::add(&self.metrics.received, rows.len());

        let read_at = started.elapsed();
        let mut attempts: Vec<(Attempt, Option<Address>, Vec<u8>)> = Vec::with_capacity(rows.len());
        let mut publish_failure = None;
        let mut lease_lost = false;
        for row in rows {
            // A holder paused past its lease stops here: what it has sent is confirmed and
            // its position write is refused, so the next holder starts where this one was.
            if !lease.still(fence) {
                lease_lost = true;
                break;
            }
            let payload = payload(self.format, &self.csv, &polled.columns, row);
            let address = match unpublishable(row) {
                Some(reason) => Err((Some("value"), reason)),
                None => self
                    .destination
                    .address(|column| column_text(&polled, row, column))
                    .map_err(|r| (None, r)),
            };
            match address {
                Err((Some(kind), reason)) => {
                    attempts.push((Attempt::Dead { kind, reason }, None, payload))
                }
                Err((None, reason)) => attempts.push((
                    Attempt::Dead {
                        kind: "topic",
                        reason,
                    },
                    None,
                    payload,
                )),
                Ok(address) => match self
                    .publisher
                    .publish(&address, self.envelope(&polled, row, &payload))
                    .await
                {
                    Ok(confirm) => {
                        attempts.push((Attempt::Published(confirm), Some(address), payload))
                    }
                    Err(e) => {
                        publish_failure = Some(e);
                        break;
                    }
                },
            }
        }

        let waiting = attempts
            .iter()
            .filter(|(a, _, _)| matches!(a, Attempt::Published(_)))
            .count();
        self.metrics.enter(waiting);
        // All answers first, in order, up to the first outage: a returned message may come
        // with the answer of another publish of the same poll.
        let confirms = async {
            let mut answered: Vec<(Answered, Option<Address>, Vec<u8>)> = Vec::new();
            for (attempt, source, payload) in attempts {
                match attempt {
                    Attempt::Published(pending) => match pending.confirm.await {
                        Ok(answer) => answered.push((
                            Answered::Broker {
                                message_id: pending.message_id,
                                answer,
                            },
                            source,
                            payload,
                        )),
                        Err(e) => return (answered, Some(e)),
                    },
                    Attempt::Dead { kind, reason } => {
                        answered.push((Answered::Dead { kind, reason }, source, payload))
                    }
                }
            }
            (answered, None)
        };
        // Without this the broker idles while the next rows are read. after_publish may
        // change what the query returns, so such a route reads only after it has run.
        let next = (more && !self.after_publish && publish_failure.is_none() && !lease_lost)
            .then(|| next_position(&polled.track, &rows[rows.len() - 1], position));
        let read_ahead = async {
            match next {
                Some(from) => match self.poller.poll(from.clone()).await {
                    Ok(polled) => Some(ReadAhead { from, polled }),
                    // The next poll reads again, and reports it.
                    Err(_) => None,
                },
                None => None,
            }
        };
        let ((answered, confirm_failure), read) = tokio::join!(confirms, read_ahead);
        *ahead = read;
        self.metrics.leave(waiting);
        let returned: std::collections::HashMap<String, String> = answered
            .iter()
            .filter_map(|(a, _, _)| match a {
                Answered::Broker { answer, .. } => Some(answer.returned.iter().cloned()),
                Answered::Dead { .. } => None,
            })
            .flatten()
            .collect();

        // Walk the rows in order; the position never passes an unanswered one.
        let mut done = 0;
        let mut published = 0;
        let mut letters = Vec::new();
        // Rows the route is done with, for after_publish: confirmed ones, and dead-lettered
        // ones (the dead letter holds them now). Marking only confirmed rows would make an
        // outbox query return a dead-lettered row, and dead-letter it again, on every poll.
        let mut finished: Vec<(usize, Cell, bool)> = Vec::new();
        for (i, (answered, source, payload)) in answered.into_iter().enumerate() {
            let dead = match answered {
                Answered::Dead { kind, reason } => Some((kind, reason)),
                Answered::Broker { message_id, answer } => {
                    match message_id.and_then(|id| returned.get(&id).cloned()) {
                        Some(reason) => Some(("unroutable", reason)),
                        None => match answer.delivery {
                            Delivery::Confirmed => None,
                            Delivery::Rejected { kind, reason } => Some((kind, reason)),
                        },
                    }
                }
            };
            let is_dead = dead.is_some();
            match dead {
                Some((kind, reason)) => letters.push(self.dead_letter(
                    &polled,
                    &rows[i],
                    kind,
                    reason,
                    source.as_ref(),
                    payload,
                )),
                None => published += 1,
            }
            if let Some(&first) = polled.track.first() {
                finished.push((i, rows[i][first].clone(), is_dead));
            }
            done = i + 1;
        }

        let confirmed_at = started.elapsed();
        if self.after_publish && !finished.is_empty() {
            let values: Vec<Cell> = finished.iter().map(|(_, v, _)| v.clone()).collect();
            let rejected = self
                .poller
                .after_publish(values)
                .await
                .map_err(|e| format!("after_publish failed: {e}"))?;
            for (k, error) in rejected {
                let (i, _, already_dead) = finished[k];
                if already_dead {
                    // One dead letter per row: it already has one.
                    warn!(route = %self.name, error = %error, "after_publish rejected a dead-lettered row");
                    continue;
                }
                let payload = payload(self.format, &self.csv, &polled.columns, &rows[i]);
                letters.push(self.dead_letter(
                    &polled,
                    &rows[i],
                    "after_publish",
                    error.to_string(),
                    None,
                    payload,
                ));
            }
        }

        let new_position: Option<Vec<String>> =
            (tracked && done > 0).then(|| next_position(&polled.track, &rows[done - 1], position));
        if new_position.is_some() || !letters.is_empty() {
            match self
                .state
                .advance(&self.name, Some(fence), new_position.as_deref(), &letters)
                .await
            {
                Ok(()) => {}
                Err(StateError::Fenced(_)) => {
                    warn!(route = %self.name, rows = done, "lease taken over while publishing; the position stays for the new holder");
                    return Err(Failed::LeaseLost);
                }
                Err(e) => return Err(format!("cannot store the position: {e}").into()),
            }
        }
        RouteMetrics::add(&self.metrics.published, published);
        RouteMetrics::add(&self.metrics.dead_letters, letters.len());
        self.metrics.batch.observe(started.elapsed());
        if !letters.is_empty() {
            warn!(route = %self.name, count = letters.len(), "rows dead-lettered");
        }
        debug!(
            route = %self.name,
            rows = done,
            dead = letters.len(),
            read = ?read_at,
            confirmed = ?confirmed_at,
            stored = ?started.elapsed(),
            "poll done"
        );
        if let Some(p) = new_position {
            *position = p;
        }
        if lease_lost {
            return Err(Failed::LeaseLost);
        }
        match publish_failure.or(confirm_failure) {
            Some(e) => Err(format!("broker {}: {e}", self.broker).into()),
            None => {
                let more = more && done == rows.len();
                if !more {
                    self.metrics.caught_up();
                }
                Ok(more)
            }
        }
    }

    /// How many leading `rows` no transaction still running can add a row behind.
    fn admitted(
        &self,
        gate: &mut Gate,
        polled: &Polled,
        rows: &[Vec<Cell>],
    ) -> Result<usize, Failed> {
        let Some(running) = &polled.running else {
            return Err(Failed::Misconfigured(format!(
                "route {}: visibility: snapshot (line {}) needs PostgreSQL, and the route's database is not; remove it (or use delay:)",
                self.name,
                self.snapshot_line.unwrap_or_default()
            )));
        };
        let now = std::time::Instant::now();
        let admitted = gate.admit(rows, &polled.track, running, now);
        let waiting = gate.waiting(running);
        self.metrics.set_visibility_wait(
            waiting
                .as_ref()
                .map_or(Duration::ZERO, |w| now.saturating_duration_since(w.since)),
        );
        if let Some(w) = waiting
            && gate.warn(w.since, now)
        {
            warn!(
                route = %self.name,
                waited = ?now.saturating_duration_since(w.since),
                pids = ?w.pids,
                "visibility: snapshot: rows wait for transactions that were running when they were read; \
                 a session idle in a transaction holds the route back until it ends \
                 (see idle_in_transaction_session_timeout)"
            );
        }
        Ok(admitted)
    }

    /// A row's message, with the key it has whenever and by whomever it is published.
    fn envelope(&self, polled: &Polled, row: &[Cell], payload: &[u8]) -> Envelope {
        let track = track_values(polled, row);
        Envelope {
            payload: payload.to_vec(),
            message_id: dedup::message_id(&self.name, &track, payload),
            content_type: dedup::content_type(self.format),
            origin: Some(dedup::origin(&self.name, &track)),
        }
    }

    fn dead_letter(
        &self,
        polled: &Polled,
        row: &[Cell],
        kind: &str,
        error: String,
        address: Option<&Address>,
        payload: Vec<u8>,
    ) -> NewDeadLetter {
        let track = track_values(polled, row);
        let content_type = dedup::content_type(self.format);
        let mut headers =
            json!({ "broker": self.broker, "track": track, "content_type": content_type });
        if let Some(a) = address {
            // Kept apart from `source` so a replay publishes to exactly the same place.
            headers["address"] = json!({ "exchange": a.exchange, "topic": a.topic });
        }
        NewDeadLetter {
            route: self.name.clone(),
            direction: Direction::Outbound,
            // A row that got no address is shown with the destination it was meant for.
            source: address.map_or_else(|| self.destination.describe(), Address::describe),
            payload,
            headers,
            error_kind: kind.to_string(),
            error,
            sqlstate: None,
        }
    }
}

/// A poll read before the one before it was done, and the position it was read from.
struct ReadAhead {
    from: Vec<String>,
    polled: Polled,
}

/// How a wait for the next poll ended.
enum Waited {
    Elapsed,
    Woken,
    Stopped,
}

/// Waits out `interval`, or less when `waker` is notified first.
async fn wait_or_wake(
    interval: Duration,
    waker: Option<&Waker>,
    stop: &mut watch::Receiver<bool>,
) -> Waited {
    let Some(waker) = waker else {
        return match sleep_or_stop(interval, stop).await {
            true => Waited::Stopped,
            false => Waited::Elapsed,
        };
    };
    tokio::select! {
        stopped = sleep_or_stop(interval, stop) => if stopped { Waited::Stopped } else { Waited::Elapsed },
        _ = waker.notified() => if *stop.borrow() { Waited::Stopped } else { Waited::Woken },
    }
}

/// Sleeps; true if shutdown came first.
async fn sleep_or_stop(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    // `changed` only sees a stop it has not seen yet.
    if pause.is_zero() || *stop.borrow() {
        return *stop.borrow();
    }
    tokio::select! {
        _ = tokio::time::sleep(pause) => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notifications_during_a_poll_cause_one_more_poll_not_one_each() {
        let (waker, notify) = Waker::by_hand();
        let (_stop_tx, mut stop) = watch::channel(false);
        let hour = Duration::from_secs(3600);
        // Three notifications while the route was busy polling
        for _ in 0..3 {
            notify.notify_one();
        }
        // The next wait ends at once, and the one after waits out its interval
        assert!(matches!(
            wait_or_wake(hour, Some(&waker), &mut stop).await,
            Waited::Woken
        ));
        let short = Duration::from_millis(50);
        assert!(matches!(
            wait_or_wake(short, Some(&waker), &mut stop).await,
            Waited::Elapsed
        ));
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait_whether_or_not_a_waker_is_there() {
        let (waker, _notify) = Waker::by_hand();
        let (stop_tx, mut stop) = watch::channel(false);
        stop_tx.send(true).unwrap();
        let hour = Duration::from_secs(3600);
        assert!(matches!(
            wait_or_wake(hour, Some(&waker), &mut stop).await,
            Waited::Stopped
        ));
        assert!(matches!(
            wait_or_wake(hour, None, &mut stop).await,
            Waited::Stopped
        ));
    }
}
