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

mod engine;
mod inbound;
mod outbound;
mod outcome;
mod report;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::state::{DeadLetterFilter, State, StateError};

use engine::Engine;
pub use engine::{MakePublisher, Routes};
use outcome::{Outage, Outcome};
use report::Progress;
pub use report::Summary;

/// Entries claimed together, then mapped and written in the route's own batches; the next
/// claim is made while one is replayed.
const BATCH: usize = 500;

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
    let mut settler = Settler::start(rt, state.clone(), owner.clone());
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

/// Committed batches the settler may fall behind by before the replay waits for it.
const SETTLE_BEHIND: usize = 8;
/// The most letters settled in one state-store transaction.
const SETTLE_MAX: usize = 5_000;

/// Settles committed batches in the state store in the background and in order. Batches
/// that queued up meanwhile are settled together, in one transaction: a store that
/// commits slowly (a synchronous disk) settles more at a time instead of holding up the
/// replay.
struct Settler<'a> {
    rt: &'a Handle,
    queue: Option<mpsc::Sender<Vec<Outcome>>>,
    task: Option<JoinHandle<Result<(), StateError>>>,
}

impl<'a> Settler<'a> {
    fn start(rt: &'a Handle, state: State, owner: String) -> Settler<'a> {
        let (queue, batches) = mpsc::channel(SETTLE_BEHIND);
        Settler {
            rt,
            queue: Some(queue),
            task: Some(rt.spawn(settle_queued(state, owner, batches))),
        }
    }

    fn settle(&mut self, outcomes: Vec<Outcome>) -> Result<(), String> {
        let queue = self.queue.as_ref().expect("settle after finish");
        match self.rt.block_on(queue.send(outcomes)) {
            Ok(()) => Ok(()),
            // The settler stopped on an error; it says which.
            Err(_) => self.finish(),
        }
    }

    /// Waits until everything handed over is settled.
    fn finish(&mut self) -> Result<(), String> {
        self.queue = None;
        match self.task.take() {
            Some(task) => self
                .rt
                .block_on(task)
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// Deletes what was delivered and records what failed (which releases it), batch after
/// batch, until the queue closes or the store fails.
async fn settle_queued(
    state: State,
    owner: String,
    mut batches: mpsc::Receiver<Vec<Outcome>>,
) -> Result<(), StateError> {
    while let Some(first) = batches.recv().await {
        let mut queued = first;
        while queued.len() < SETTLE_MAX {
            let Ok(more) = batches.try_recv() else { break };
            queued.extend(more);
        }
        let (mut delivered, mut failed) = (Vec::new(), Vec::new());
        for (id, r) in queued {
            match r {
                Ok(()) => delivered.push(id),
                Err(f) => failed.push((id, f)),
            }
        }
        state.settle_claims(&owner, &delivered, &failed).await?;
    }
    Ok(())
}
