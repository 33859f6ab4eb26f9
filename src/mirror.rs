//! `dead_letter.publish`: every new dead letter is also published to a broker as a JSON
//! envelope (the `dlq list --json` object), for teams that watch a broker dead-letter queue.
//!
//! The mirror reads the state store, not the data path: routes store dead letters as
//! always, and the mirror follows with its own stored position, advanced only past what
//! the broker confirmed. A mirror outage delays the mirror and nothing else. One instance
//! among those sharing the state store mirrors at a time: the holder of the `mirror` lease.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::broker::publish::{Delivery, Envelope};
use crate::broker::publisher::Publisher;
use crate::destination::Target;
use crate::dlq::DeadLetter;
use crate::lease::{Lease, LeaseSpec};
use crate::state::{Fence, State, StateError};

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
    pub lease: LeaseSpec,
}

/// The name of the mirror's lease.
pub const LEASE: &str = "mirror";

/// Fixes where the mirror starts (the newest dead letter now) before any route runs, so
/// that none stored from then on is missed.
pub async fn start_position(state: &State) -> Result<i64, String> {
    state
        .mirror_position(POSITION)
        .await
        .map_err(|e| e.to_string())
}

impl Mirror {
    /// Follows the dead-letter store until `stop`, while it holds the mirror's lease.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let Mirror {
            state,
            publisher,
            target,
            broker,
            lease,
        } = self;
        let mut lease = Lease::keep(lease);
        let worker = Worker {
            state,
            publisher,
            target,
            broker,
        };
        while let Some(fence) = lease.acquired(&mut stop).await {
            if worker.hold(&lease, &fence, &mut stop).await {
                break;
            }
            info!(broker = %worker.broker, "dead-letter mirror standing by: another instance holds it");
        }
        lease.release().await;
    }
}

/// The mirror without its lease.
struct Worker {
    state: State,
    publisher: Publisher,
    target: Target,
    broker: String,
}

impl Worker {
    /// Mirrors while `fence` is held; true on shutdown.
    async fn hold(&self, lease: &Lease, fence: &Fence, stop: &mut watch::Receiver<bool>) -> bool {
        let mut backoff = Backoff::new();
        info!(broker = %self.broker, epoch = fence.epoch, "mirroring dead letters");
        // The holder is the only writer of the position: read it at each takeover, then
        // keep it here.
        let mut last = None;
        loop {
            if *stop.borrow() {
                return true;
            }
            if !lease.still(fence) {
                return false;
            }
            let pause = match self.round(&mut last, lease, fence).await {
                Ok(0) => Duration::from_millis(500),
                Ok(_) => {
                    backoff.reset();
                    Duration::ZERO
                }
                Err(RoundFailed::LeaseLost) => {
                    lease.lost();
                    return false;
                }
                Err(RoundFailed::Retry(e)) => {
                    let delay = backoff.next_delay();
                    warn!(broker = %self.broker, error = %e, retry_in = ?delay, "dead-letter mirror cannot publish; retrying");
                    delay
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return true,
                }
            }
        }
    }

    /// Publishes what is new since the stored position; returns how many went out.
    async fn round(
        &self,
        position: &mut Option<i64>,
        lease: &Lease,
        fence: &Fence,
    ) -> Result<usize, RoundFailed> {
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
            if !lease.still(fence) {
                break;
            }
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
                origin: None,
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
            match self
                .state
                .set_mirror_position(POSITION, confirmed, Some(fence))
                .await
            {
                Ok(()) => *position = Some(confirmed),
                Err(StateError::Fenced(_)) => return Err(RoundFailed::LeaseLost),
                Err(e) => return Err(RoundFailed::Retry(e.to_string())),
            }
        }
        if !lease.still(fence) {
            return Err(RoundFailed::LeaseLost);
        }
        result.map(|()| letters.len()).map_err(RoundFailed::Retry)
    }
}

/// Why a round stopped short.
enum RoundFailed {
    LeaseLost,
    Retry(String),
}

impl From<String> for RoundFailed {
    fn from(message: String) -> RoundFailed {
        RoundFailed::Retry(message)
    }
}
