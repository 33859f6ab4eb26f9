//! `mqdb dlq replay`: each dead letter goes through its route again, as the route is
//! configured now. Inbound letters are decoded, mapped and inserted straight into the
//! database (no broker), with the route's batching and conflict rules; outbound letters are
//! published again with confirms (or, for `after_publish` failures, the statement runs
//! again). A success deletes the entry; a failure keeps it with one more attempt and the
//! new error.
//!
//! Entries are claimed in the state store before they are touched, so a replay can run
//! beside `mqdb run` or another replay. The database commit comes before the entry is
//! deleted, and an interruption is only acted on between batches: every entry ends either
//! in the database or still in the queue. Outages stop the replay and count no attempt.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use odbc_api::Connection;
use serde_json::Value as Json;
use tokio::runtime::Handle;

use crate::broker::publish::{Address, Delivery, Envelope};
use crate::broker::publisher::Publisher;
use crate::cell::Cell;
use crate::config::Format;
use crate::db::DbSpec;
use crate::db::insert::TablePlan;
use crate::db::poll::{PollSpec, run_after_publish};
use crate::db::worker;
use crate::db::write::Writer;
use crate::dlq::DeadLetter;
use crate::error::{Class, DbError};
use crate::mapping::Mapper;
use crate::message::Message;
use crate::routes::{InboundPlan, OutboundPlan};
use crate::state::{DeadLetterFilter, Failure, State, StateError};

/// Entries claimed and replayed together; the next batch is claimed while one is replayed.
const BATCH: usize = 500;

/// What a replay did.
#[derive(Debug, Default)]
pub struct Summary {
    pub total: u64,
    pub replayed: u64,
    /// Skipped because another live replay held them, and still in the queue at the end.
    pub held: u64,
    /// Failed again, by error kind.
    pub failed: BTreeMap<String, u64>,
    pub interrupted: bool,
    /// The outage that stopped the replay.
    pub outage: Option<String>,
    pub dry_run: bool,
}

impl Summary {
    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Nothing selected is left for this replay to deliver: none failed, none was held by
    /// another replay, and it ran to the end. Entries that left the queue meanwhile (purged,
    /// or delivered by another replay) are counted apart.
    pub fn succeeded(&self) -> bool {
        self.failures() == 0 && self.held == 0 && !self.interrupted && self.outage.is_none()
    }

    /// Selected entries this replay did not find when it came to them: purged, or delivered
    /// by another replay, while it ran. Unknown (counted as not attempted) when it stopped
    /// early.
    pub fn gone(&self) -> u64 {
        if self.interrupted || self.outage.is_some() {
            return 0;
        }
        self.total
            .saturating_sub(self.replayed + self.failures() + self.held)
    }

    pub fn render(&self) -> String {
        let verb = if self.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        let mut out = format!("{verb} {} of {}", self.replayed, self.total);
        let failed = self.failures();
        if failed > 0 {
            let kinds: Vec<String> = self
                .failed
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            let verb = if self.dry_run { "would fail" } else { "failed" };
            out.push_str(&format!(", {verb} {failed} ({})", kinds.join(", ")));
        }
        if self.held > 0 {
            out.push_str(&format!(
                ", {} held by another replay (a dead replay's claims expire after 10 minutes)",
                self.held
            ));
        }
        let gone = self.gone();
        if gone > 0 {
            out.push_str(&format!(
                ", {gone} no longer in the queue (purged or replayed elsewhere meanwhile)"
            ));
        }
        let left = self
            .total
            .saturating_sub(self.replayed + failed + self.held + gone);
        if left > 0 {
            out.push_str(&format!(", {left} not attempted"));
        }
        if self.interrupted {
            out.push_str("; interrupted: what was not attempted is still in the queue");
        }
        if let Some(e) = &self.outage {
            out.push_str(&format!("; stopped by an outage (no attempt counted): {e}"));
        }
        out
    }
}

/// The configuration a replay resolves routes from.
pub struct Routes {
    pub inbound: Vec<InboundPlan>,
    pub outbound: Vec<OutboundPlan>,
    pub dbs: BTreeMap<String, DbSpec>,
    /// Builds a confirming publisher for an outbound route.
    pub publisher: MakePublisher,
}

/// Builds a confirming publisher for an outbound route.
pub type MakePublisher = Box<dyn Fn(&OutboundPlan) -> Result<Publisher, String> + Send>;

struct Outage(String);

/// One letter's fate.
type Outcome = (i64, Result<(), Failure>);

/// Runs the replay on the current (blocking) thread; async work goes through `rt`.
pub fn replay(
    rt: &Handle,
    routes: Routes,
    state: &State,
    mut filter: DeadLetterFilter,
    dry_run: bool,
    stop: &AtomicBool,
) -> Result<Summary, String> {
    let _guard = rt.enter();
    let owner = format!(
        "replay-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    // The selection is what exists now: letters stored while the replay runs wait for the
    // next one, so the summary counts what was selected.
    let (total, through) = rt
        .block_on(state.selection(&filter))
        .map_err(|e| e.to_string())?;
    filter.through = Some(through.unwrap_or(0));
    let selection = filter.clone();
    let mut summary = Summary {
        total,
        dry_run,
        ..Summary::default()
    };
    let progress = Progress::new(summary.total);
    let mut engines: HashMap<String, Engine> = HashMap::new();
    let mut settler = Settler {
        rt,
        state: state.clone(),
        owner: owner.clone(),
        pending: None,
    };
    let mut failure = None;
    let claim = |filter: DeadLetterFilter| {
        let (state, owner) = (state.clone(), owner.clone());
        rt.spawn(async move {
            if dry_run {
                state
                    .page_dead_letters(&filter, BATCH)
                    .await
                    .map(|letters| crate::state::Claimed { letters, held: 0 })
            } else {
                state.claim_batch(&filter, &owner, BATCH).await
            }
        })
    };
    // The next batch is claimed while this one is replayed.
    let mut next = Some(claim(filter.clone()));
    loop {
        if stop.load(Ordering::SeqCst) {
            summary.interrupted = true;
            break;
        }
        // The claim task itself failing (a panic) ends the replay like a failed claim.
        let claimed = rt
            .block_on(next.take().expect("a claim is always ahead"))
            .map_err(|e| e.to_string())
            .and_then(|claim| claim.map_err(|e| e.to_string()));
        let letters = match claimed {
            Ok(claimed) => {
                summary.held += claimed.held;
                claimed.letters
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let Some(last) = letters.last() else {
            break;
        };
        // Entries that fail again are released; never claim them twice in one replay.
        filter.after = Some(last.id);
        next = Some(claim(filter.clone()));
        let mut attempted = 0;
        // Each batch the database committed is settled in the state store (delivered
        // entries deleted, failures recorded) in the background while the next one runs.
        let mut on_batch = |outcomes: Vec<Outcome>| -> bool {
            attempted += outcomes.len();
            for (_, r) in &outcomes {
                match r {
                    Ok(()) => summary.replayed += 1,
                    Err(f) => *summary.failed.entry(f.kind.clone()).or_default() += 1,
                }
            }
            if dry_run {
                return true;
            }
            match settler.settle(outcomes) {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        };
        let mut outage = None;
        for group in letters.chunk_by(|a, b| a.route == b.route) {
            let route = &group[0].route;
            let engine = engines
                .entry(route.clone())
                .or_insert_with(|| Engine::new(&routes, route, &group[0].direction));
            if let Err(Outage(e)) = engine.replay(rt, group, dry_run, stop, &mut on_batch) {
                outage = Some(e);
                break;
            }
        }
        progress.show(summary.replayed + summary.failures(), summary.failures());
        if failure.is_some() {
            break;
        }
        if let Some(e) = outage {
            summary.outage = Some(e);
            break;
        }
        if attempted < letters.len() {
            // Stopped between two batches of the route: the rest stays in the queue.
            summary.interrupted = true;
            break;
        }
    }
    progress.finish();
    // What was claimed ahead is given back with the rest below.
    if let Some(ahead) = next.take() {
        let _ = rt.block_on(ahead);
    }
    let settled = settler.finish();
    if !dry_run {
        rt.block_on(state.release_claims(&owner))
            .map_err(|e| e.to_string())?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    settled?;
    if !dry_run && !summary.interrupted && summary.outage.is_none() && summary.held > 0 {
        // What another replay held and has since delivered (or what was purged) is no
        // longer in the queue: only what is still there counts as held.
        let present = rt
            .block_on(state.count_dead_letters(&selection))
            .map_err(|e| e.to_string())?;
        summary.held = summary.held.min(present.saturating_sub(summary.failures()));
    }
    Ok(summary)
}

/// Settles committed batches in the state store, one at a time and in order, each while
/// the next batch is replayed.
struct Settler<'a> {
    rt: &'a Handle,
    state: State,
    owner: String,
    pending: Option<tokio::task::JoinHandle<Result<(), StateError>>>,
}

impl Settler<'_> {
    fn settle(&mut self, outcomes: Vec<Outcome>) -> Result<(), String> {
        self.wait()?;
        let (state, owner) = (self.state.clone(), self.owner.clone());
        self.pending = Some(self.rt.spawn(settle(state, owner, outcomes)));
        Ok(())
    }

    fn wait(&mut self) -> Result<(), String> {
        match self.pending.take() {
            Some(task) => self
                .rt
                .block_on(task)
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    fn finish(mut self) -> Result<(), String> {
        self.wait()
    }
}

/// Deletes what was delivered and records what failed (which releases it).
async fn settle(state: State, owner: String, outcomes: Vec<Outcome>) -> Result<(), StateError> {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (id, r) in outcomes {
        match r {
            Ok(()) => ok.push(id),
            Err(f) => failed.push((id, f)),
        }
    }
    state.resolve_dead_letters(&owner, &ok).await?;
    state.fail_dead_letters(&owner, &failed).await
}

fn failure(kind: &str, error: impl Into<String>, sqlstate: Option<String>) -> Failure {
    Failure {
        kind: kind.to_string(),
        error: error.into(),
        sqlstate,
    }
}

/// A route, ready to take its dead letters again.
enum Engine {
    /// Every letter fails with this.
    Broken(Failure),
    Inbound {
        conn: Connection<'static>,
        table: TablePlan,
        mapper: Mapper,
    },
    Outbound {
        plan: Box<OutboundPlan>,
        publisher: Result<Publisher, String>,
        spec: DbSpec,
        db: Option<Connection<'static>>,
    },
    /// The route's database was unreachable when first needed.
    Unreachable(String),
}

impl Engine {
    fn new(routes: &Routes, route: &str, direction: &str) -> Engine {
        let inbound = routes.inbound.iter().find(|p| p.name == route);
        let outbound = routes.outbound.iter().find(|p| p.name == route);
        match (direction, inbound, outbound) {
            ("inbound", Some(plan), _) => {
                match worker::connect(&routes.dbs[&plan.database], &plan.target) {
                    Ok((conn, table)) => Engine::Inbound {
                        mapper: plan.mapper(&table),
                        conn,
                        table,
                    },
                    Err(e) if e.class() == Class::Outage => Engine::Unreachable(e.to_string()),
                    Err(e) => Engine::Broken(failure("rejected", e.to_string(), e.sqlstate)),
                }
            }
            ("outbound", _, Some(plan)) => Engine::Outbound {
                publisher: (routes.publisher)(plan),
                spec: routes.dbs[&plan.database].clone(),
                db: None,
                plan: Box::new(plan.clone()),
            },
            _ => Engine::Broken(failure(
                "no_route",
                format!("route {route} is not configured as an {direction} route any more"),
                None,
            )),
        }
    }

    /// Replays `letters` (all of this route), handing the outcomes of each batch to
    /// `on_batch` (false: stop). An inbound route also stops between batches once `stop`
    /// is set, leaving the rest unattempted.
    fn replay(
        &mut self,
        rt: &Handle,
        letters: &[DeadLetter],
        dry_run: bool,
        stop: &AtomicBool,
        on_batch: &mut dyn FnMut(Vec<Outcome>) -> bool,
    ) -> Result<(), Outage> {
        match self {
            Engine::Broken(f) => {
                on_batch(letters.iter().map(|l| (l.id, Err(f.clone()))).collect());
                Ok(())
            }
            Engine::Unreachable(e) => Err(Outage(e.clone())),
            Engine::Inbound {
                conn,
                table,
                mapper,
            } => replay_inbound(conn, table, mapper, letters, dry_run, stop, on_batch),
            Engine::Outbound {
                plan,
                publisher,
                spec,
                db,
            } => {
                let target = Outbound {
                    plan,
                    publisher,
                    spec,
                };
                on_batch(replay_outbound(rt, &target, db, letters, dry_run)?);
                Ok(())
            }
        }
    }
}

fn outage(e: DbError) -> Outage {
    Outage(format!("database: {e}"))
}

/// Inbound letters in batches of the route's `max_rows`, each one transaction; the next
/// batch is mapped on another thread while this one is written.
fn replay_inbound(
    conn: &Connection<'static>,
    table: &TablePlan,
    mapper: &Mapper,
    letters: &[DeadLetter],
    dry_run: bool,
    stop: &AtomicBool,
    on_batch: &mut dyn FnMut(Vec<Outcome>) -> bool,
) -> Result<(), Outage> {
    let mut writer = Writer::new(conn, table);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for batch in letters.chunks(table.max_rows.max(1)) {
                if tx.send(map_letters(mapper, batch)).is_err() {
                    return;
                }
            }
        });
        for mapped in rx {
            let mut outcomes = Vec::new();
            write_mapped(&mut writer, mapped, dry_run, &mut outcomes)?;
            if !on_batch(outcomes) || stop.load(Ordering::SeqCst) {
                break;
            }
        }
        Ok(())
    })
}

/// A batch of inbound letters, mapped again.
#[derive(Default)]
struct Mapped {
    /// Letters settled by mapping alone: they failed, or carry no row.
    settled: Vec<Outcome>,
    /// Letters of one row.
    single: Vec<(i64, crate::mapping::Row)>,
    /// Letters of many rows (a whole CSV message): all or nothing each, so that a failure
    /// never leaves half of one stored.
    many: Vec<(i64, Vec<crate::mapping::Row>)>,
}

fn map_letters(mapper: &Mapper, letters: &[DeadLetter]) -> Mapped {
    let mut out = Mapped::default();
    for letter in letters {
        let message = Message::from_dead_letter(
            &letter.source,
            &letter.payload,
            &letter.headers,
            mapper.reads_csv_header(),
        );
        let mapped = mapper.map(&message);
        if let Some((_, Err(e))) = mapped.iter().find(|(_, r)| r.is_err()) {
            out.settled
                .push((letter.id, Err(failure(e.kind(), e.message(), None))));
            continue;
        }
        let mut rows: Vec<crate::mapping::Row> =
            mapped.into_iter().filter_map(|(_, r)| r.ok()).collect();
        match rows.len() {
            0 => out.settled.push((letter.id, Ok(()))),
            1 => out.single.push((letter.id, rows.remove(0))),
            _ => out.many.push((letter.id, rows)),
        }
    }
    out
}

fn write_mapped(
    writer: &mut Writer<'_>,
    mapped: Mapped,
    dry_run: bool,
    outcomes: &mut Vec<Outcome>,
) -> Result<(), Outage> {
    outcomes.extend(mapped.settled);
    for (id, rows) in mapped.many {
        match writer.write_all(&rows, !dry_run).map_err(outage)? {
            Ok(()) => outcomes.push((id, Ok(()))),
            Err(e) => outcomes.push((id, Err(failure("rejected", e.message, e.sqlstate)))),
        }
    }
    if mapped.single.is_empty() {
        return Ok(());
    }
    let (ids, rows): (Vec<i64>, Vec<crate::mapping::Row>) = mapped.single.into_iter().unzip();
    let mut rejected = writer
        .write_rows(&rows, !dry_run)
        .map_err(outage)?
        .into_iter()
        .peekable();
    for (i, id) in ids.into_iter().enumerate() {
        match rejected.next_if(|(r, _)| *r == i) {
            Some((_, e)) => outcomes.push((id, Err(failure("rejected", e.message, e.sqlstate)))),
            None => outcomes.push((id, Ok(()))),
        }
    }
    Ok(())
}

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
struct Outbound<'a> {
    plan: &'a OutboundPlan,
    publisher: &'a Result<Publisher, String>,
    spec: &'a DbSpec,
}

fn replay_outbound(
    rt: &Handle,
    target: &Outbound<'_>,
    db: &mut Option<Connection<'static>>,
    letters: &[DeadLetter],
    dry_run: bool,
) -> Result<Vec<Outcome>, Outage> {
    let mut outcomes = Vec::with_capacity(letters.len());
    let amqp = matches!(
        target.plan.destination,
        crate::outbound::Destination::Amqp { .. }
    );
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
    }
}

fn after_publish(
    target: &Outbound<'_>,
    db: &mut Option<Connection<'static>>,
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

/// Progress on a terminal: one line, rewritten.
struct Progress {
    total: u64,
    on: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            total,
            on: std::io::stderr().is_terminal() && total > 0,
        }
    }

    fn show(&self, done: u64, failed: u64) {
        if self.on {
            let mut err = std::io::stderr();
            let _ = write!(
                err,
                "\rreplaying: {done}/{} done, {failed} failed",
                self.total
            );
            let _ = err.flush();
        }
    }

    fn finish(&self) {
        if self.on {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(total: u64, replayed: u64, failed: u64, held: u64) -> Summary {
        let mut s = Summary {
            total,
            replayed,
            held,
            ..Summary::default()
        };
        if failed > 0 {
            s.failed.insert("rejected".into(), failed);
        }
        s
    }

    #[test]
    fn every_selected_entry_is_accounted_for_once() {
        let s = summary(10, 5, 1, 3);
        assert_eq!(s.gone(), 1);
        assert_eq!(
            s.render(),
            "replayed 5 of 10, failed 1 (rejected: 1), 3 held by another replay (a dead \
             replay's claims expire after 10 minutes), 1 no longer in the queue (purged or \
             replayed elsewhere meanwhile)"
        );
        assert!(!s.succeeded());
        // Entries purged meanwhile are not held, and leave nothing to do.
        let purged = summary(10, 7, 0, 0);
        assert!(purged.succeeded());
        assert!(!purged.render().contains("held"), "{}", purged.render());
        // Stopped early: what is left is not attempted, not gone.
        let mut stopped = summary(10, 4, 0, 0);
        stopped.interrupted = true;
        assert_eq!(stopped.gone(), 0);
        assert!(stopped.render().contains("6 not attempted"));
    }
}
