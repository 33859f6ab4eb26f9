//! `dead_letter.publish`: every new dead letter is also published to a broker as a JSON
//! envelope (the `dlq list --json` object), for teams that watch a broker dead-letter queue.
//!
//! The mirror reads the state store, not the data path: routes store dead letters as
//! always, and the mirror follows with its own stored position, advanced only past what
//! the broker confirmed. A mirror outage delays the mirror and nothing else.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::broker::publish::{Delivery, Envelope};
use crate::broker::publisher::Publisher;
use crate::destination::Target;
use crate::dlq::DeadLetter;
use crate::state::State;

/// The mirror's row in the state store.
const POSITION: &str = "dead_letter.publish";

/// Dead letters published per round.
const ROUND: usize = 500;

/// The values a dead-letter copy's address may name ([`crate::dlq::MIRROR_FIELDS`]).
fn field(letter: &DeadLetter, name: &str) -> Option<String> {
    match name {
        "route" => Some(letter.route.clone()),
        "direction" => Some(letter.direction.clone()),
        "error_kind" => Some(letter.error_kind.clone()),
        _ => None,
    }
}

pub struct Mirror {
    pub state: State,
    pub publisher: Publisher,
    pub target: Target,
    pub broker: String,
}

/// Fixes where the mirror starts (the newest dead letter now) before any route runs, so
/// that none stored from then on is missed.
pub async fn start_position(state: &State) -> Result<i64, String> {
    state
        .mirror_position(POSITION)
        .await
        .map_err(|e| e.to_string())
}

impl Mirror {
    /// Follows the dead-letter store until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        info!(broker = %self.broker, "mirroring dead letters");
        // The mirror is the only writer of its position: read it once, then keep it here.
        let mut last = None;
        loop {
            if *stop.borrow() {
                return;
            }
            let pause = match self.round(&mut last).await {
                Ok(0) => Duration::from_millis(500),
                Ok(_) => {
                    backoff.reset();
                    Duration::ZERO
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(broker = %self.broker, error = %e, retry_in = ?delay, "dead-letter mirror cannot publish; retrying");
                    delay
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }

    /// Publishes what is new since the stored position; returns how many went out.
    async fn round(&self, position: &mut Option<i64>) -> Result<usize, String> {
        let last = match *position {
            Some(p) => p,
            None => *position.insert(start_position(&self.state).await?),
        };
        let letters = self
            .state
            .dead_letters_after(last, ROUND)
            .await
            .map_err(|e| e.to_string())?;
        if letters.is_empty() {
            return Ok(0);
        }
        let mut pending = Vec::with_capacity(letters.len());
        for letter in &letters {
            let address = match self.target.address(|name| field(letter, name)) {
                Ok(address) => address,
                Err(reason) => {
                    // A route name that is no valid topic level; the letter stays in the store.
                    warn!(id = letter.id, reason = %reason, "a dead letter has no mirror address");
                    pending.push((letter.id, None));
                    continue;
                }
            };
            let message = Envelope {
                payload: serde_json::to_vec(&letter.to_json()).unwrap_or_default(),
                // The dead letter's id in this state store, as `dlq show --id` takes it.
                message_id: letter.id.to_string(),
                content_type: "application/json",
            };
            pending.push((
                letter.id,
                Some(self.publisher.publish(&address, message).await?),
            ));
        }
        let mut confirmed = last;
        let mut result = Ok(());
        for (id, p) in pending {
            let Some(p) = p else {
                confirmed = id;
                continue;
            };
            match p.confirm.await {
                Ok(answer) => {
                    // The store stays the source of truth: a mirror copy the broker will not
                    // route is reported, not retried for ever.
                    if let Delivery::Rejected { reason, .. } = &answer.delivery {
                        warn!(id, reason = %reason, "the broker refused a dead-letter copy");
                    }
                    if let Some((_, reason)) = answer.returned.first() {
                        warn!(id, reason = %reason, "the broker returned a dead-letter copy");
                    }
                    confirmed = id;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if confirmed > last {
            self.state
                .set_mirror_position(POSITION, confirmed)
                .await
                .map_err(|e| e.to_string())?;
            *position = Some(confirmed);
        }
        result.map(|()| letters.len())
    }
}
