//! Outbound letters: published again to the address they were meant for, or their
//! `after_publish` run again.

use std::collections::HashMap;

use serde_json::Value as Json;
use tokio::runtime::Handle;

use crate::broker::publish::{Address, Delivery, Envelope};
use crate::broker::publisher::Publisher;
use crate::cell::Cell;
use crate::config::Format;
use crate::db::DbSpec;
use crate::db::describe::PollSpec;
use crate::db::poll::run_after_publish;
use crate::db::worker;
use crate::dlq::DeadLetter;
use crate::routes::OutboundPlan;
use crate::state::Failure;

use super::outcome::{Outage, Outcome, failure, outage};

/// Where an outbound dead letter was to be published.
fn address(letter: &DeadLetter, amqp: bool) -> Option<Address> {
    if let Some(a) = letter.headers.get("address") {
        return Some(Address {
            exchange: a.get("exchange").and_then(Json::as_str)?.to_string(),
            topic: a.get("topic").and_then(Json::as_str)?.to_string(),
        });
    }
    if letter.error_kind == "topic" || letter.error_kind == "after_publish" {
        return None;
    }
    Some(match (amqp, letter.source.split_once('/')) {
        (true, Some((exchange, key))) => Address {
            exchange: exchange.to_string(),
            topic: key.to_string(),
        },
        _ => Address {
            exchange: String::new(),
            topic: letter.source.clone(),
        },
    })
}

/// What an outbound route replays with.
pub(super) struct Outbound<'a> {
    pub(super) plan: &'a OutboundPlan,
    pub(super) publisher: &'a Result<Publisher, String>,
    pub(super) spec: &'a DbSpec,
}

pub(super) fn replay_outbound(
    rt: &Handle,
    target: &Outbound<'_>,
    db: &mut Option<crate::db::DbConn>,
    letters: &[DeadLetter],
    dry_run: bool,
) -> Result<Vec<Outcome>, Outage> {
    let mut outcomes = Vec::with_capacity(letters.len());
    let amqp = target.plan.destination.target.is_amqp();
    let mut pending = Vec::new();
    for letter in letters {
        if letter.error_kind == "after_publish" {
            outcomes.push((letter.id, after_publish(target, db, letter, dry_run)?));
            continue;
        }
        if letter.error_kind == "value" {
            outcomes.push((
                letter.id,
                Err(failure(
                    "value",
                    "a value of this row cannot be published exactly (the error names it); change the query, e.g. cast the column to text, and move the route's position back to publish it again",
                    None,
                )),
            ));
            continue;
        }
        let Some(to) = address(letter, amqp) else {
            outcomes.push((
                letter.id,
                Err(failure(
                    "topic",
                    "no topic could be built from this row when it was polled; move the route's position back to publish it again",
                    None,
                )),
            ));
            continue;
        };
        if dry_run {
            outcomes.push((letter.id, Ok(())));
            continue;
        }
        let p = target.publisher.as_ref().map_err(|e| Outage(e.clone()))?;
        let sent = rt
            .block_on(p.publish(&to, envelope(letter, target.plan.format)))
            .map_err(Outage)?;
        pending.push((letter.id, sent));
    }
    let mut answers = Vec::with_capacity(pending.len());
    for (id, p) in pending {
        let answer = rt.block_on(p.confirm).map_err(Outage)?;
        answers.push((id, p.message_id, answer));
    }
    // A return may arrive with the confirm of another message of the batch.
    let returned: HashMap<String, String> = answers
        .iter()
        .flat_map(|(_, _, a)| a.returned.iter().cloned())
        .collect();
    for (id, message_id, answer) in answers {
        let result = match message_id.and_then(|m| returned.get(&m)) {
            Some(reason) => Err(failure("unroutable", reason.clone(), None)),
            None => match answer.delivery {
                Delivery::Confirmed => Ok(()),
                Delivery::Rejected { kind, reason } => Err(failure(kind, reason, None)),
            },
        };
        outcomes.push((id, result));
    }
    Ok(outcomes)
}

/// A dead-lettered row's message as the route sent it: the same deduplication key, so a
/// consumer that already has the row can tell.
fn envelope(letter: &DeadLetter, format: Format) -> Envelope {
    let track: Vec<Option<String>> = letter
        .headers
        .get("track")
        .and_then(Json::as_array)
        .map(|values| {
            values
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    // The format of the payload, which the route may no longer have.
    let stored = letter.headers.get("content_type").and_then(Json::as_str);
    let content_type = [Format::Json, Format::Csv]
        .map(crate::dedup::content_type)
        .into_iter()
        .find(|c| Some(*c) == stored)
        .unwrap_or(crate::dedup::content_type(format));
    Envelope {
        payload: letter.payload.clone(),
        message_id: crate::dedup::message_id(&letter.route, &track, &letter.payload),
        content_type,
        origin: Some(crate::dedup::origin(&letter.route, &track)),
    }
}

fn after_publish(
    target: &Outbound<'_>,
    db: &mut Option<crate::db::DbConn>,
    letter: &DeadLetter,
    dry_run: bool,
) -> Result<Result<(), Failure>, Outage> {
    let value = letter
        .headers
        .get("track")
        .and_then(|t| t.get(0))
        .and_then(Json::as_str)
        .map(str::to_string);
    let Some(value) = value else {
        return Ok(Err(failure(
            "after_publish",
            "the dead letter has no track value to bind",
            None,
        )));
    };
    if dry_run || target.plan.poll.after_publish.is_none() {
        return Ok(Ok(()));
    }
    let conn = match db {
        Some(c) => c,
        None => db.insert(worker::open(target.spec).map_err(outage)?),
    };
    let cell = value
        .parse::<i64>()
        .map(Cell::Int)
        .unwrap_or(Cell::Text(value));
    let spec: &PollSpec = &target.plan.poll;
    match run_after_publish(conn, spec, &[cell])
        .map_err(outage)?
        .pop()
    {
        Some((_, e)) => Ok(Err(failure("after_publish", e.message, e.sqlstate))),
        None => Ok(Ok(())),
    }
}
