//! Holding a lease while a route runs: a task takes the lease, renews it every third of
//! its length, and tells the route whether it holds it. The route publishes only while it
//! does, and every position it stores is fenced by the lease's epoch, so a holder that
//! was paused past its lease (a frozen VM, SIGSTOP) can neither move the position nor go
//! on as if nothing happened once it notices.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::state::{Fence, Holder, State, WorkDone};

/// A lease this process holds, and until when it may act on it by its own clock.
#[derive(Clone, Debug)]
struct Held {
    fence: Fence,
    until: Instant,
}

/// A route's side of its lease.
pub struct Lease {
    held: watch::Receiver<Option<Held>>,
    /// To forget the lease at once when a write under it was refused.
    forget: watch::Sender<Option<Held>>,
    lost: Arc<Notify>,
    release: watch::Sender<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

/// What every lease of this process shares: the store, this process, the lease length
/// and where the lease gauges go.
#[derive(Clone)]
pub struct Leases {
    pub state: State,
    pub holder: Holder,
    pub ttl: Duration,
    pub metrics: Arc<Metrics>,
}

impl Leases {
    /// The lease `name`, for [`Lease::keep`].
    pub fn spec(&self, name: &str) -> LeaseSpec {
        LeaseSpec {
            state: self.state.clone(),
            name: name.to_string(),
            holder: self.holder.clone(),
            ttl: self.ttl,
            metrics: self.metrics.clone(),
        }
    }
}

/// What keeps a lease: the store, who holds it, for how long.
pub struct LeaseSpec {
    pub state: State,
    pub name: String,
    pub holder: Holder,
    pub ttl: Duration,
    pub metrics: Arc<Metrics>,
}

impl Lease {
    /// Starts keeping the lease; it is released by [`Lease::release`].
    pub fn keep(spec: LeaseSpec) -> Lease {
        let (held_tx, held) = watch::channel(None);
        let lost = Arc::new(Notify::new());
        let (release, release_rx) = watch::channel(false);
        let forget = held_tx.clone();
        let keeper = tokio::spawn(keeper(spec, held_tx, lost.clone(), release_rx));
        Lease {
            held,
            forget,
            lost,
            release,
            keeper,
        }
    }

    /// Waits until this process holds the lease; `None` if `stop` came first.
    pub async fn acquired(&mut self, stop: &mut watch::Receiver<bool>) -> Option<Fence> {
        loop {
            if *stop.borrow() {
                return None;
            }
            if let Some(fence) = self.current() {
                return Some(fence);
            }
            tokio::select! {
                changed = self.held.changed() => if changed.is_err() { return None },
                _ = stop.changed() => {}
                // A lease held but past its local deadline is renewed by the keeper; look again.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// The fence while the lease is held and its time by this process's clock has not run
    /// out (a renewal that cannot reach the store does not extend it).
    pub fn current(&self) -> Option<Fence> {
        let held = self.held.borrow();
        held.as_ref()
            .filter(|h| Instant::now() < h.until)
            .map(|h| h.fence.clone())
    }

    /// True while `fence` is still this process's current one.
    pub fn still(&self, fence: &Fence) -> bool {
        // Called before every published row: compared in place, nothing cloned.
        let held = self.held.borrow();
        held.as_ref()
            .is_some_and(|h| Instant::now() < h.until && h.fence == *fence)
    }

    /// A write under the lease was refused: another process holds it now. Forgotten at
    /// once, so that [`Lease::acquired`] cannot hand out the refused fence again before the
    /// keeper has looked.
    pub fn lost(&self) {
        self.forget.send_replace(None);
        self.lost.notify_one();
    }

    /// Gives the lease up (at once, for the next holder) and ends its keeper.
    pub async fn release(self) {
        let _ = self.release.send(true);
        let _ = self.keeper.await;
    }
}

/// Renews while held, otherwise tries to take the lease often enough that a takeover
/// follows its expiry closely.
async fn keeper(
    spec: LeaseSpec,
    held_tx: watch::Sender<Option<Held>>,
    lost: Arc<Notify>,
    mut release: watch::Receiver<bool>,
) {
    let LeaseSpec {
        state,
        name,
        holder,
        ttl,
        metrics,
    } = spec;
    let renew_every = ttl / 3;
    let retry_every = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    // A renewal started at `sent` extends the lease from a moment no earlier than `sent`
    // on the store's clock; a tenth is kept back for clocks that run at different rates.
    let margin = ttl / 10;
    let gauge = metrics.lease(&name);
    let mut held: Option<Held> = None;
    // One warning per state-store outage, not one per attempt.
    let mut failing = false;
    loop {
        let sent = Instant::now();
        let taken = state.take_lease(&name, &holder, ttl).await;
        if taken.is_ok() && std::mem::take(&mut failing) {
            info!(lease = %name, "the state store answers again");
        }
        let next = match taken {
            Ok(Some(epoch)) => {
                let fence = Fence {
                    lease: name.clone(),
                    holder: holder.id.clone(),
                    epoch,
                };
                match &held {
                    Some(h) if h.fence.epoch != epoch => {
                        error!(lease = %name, instance = %holder.instance, from = h.fence.epoch, to = epoch, "the lease changed hands since this instance last renewed it; if this repeats, two processes run under this instance name, and instance names must be unique");
                    }
                    None => info!(lease = %name, instance = %holder.instance, epoch, "lease taken"),
                    Some(_) => {}
                }
                held = Some(Held {
                    fence,
                    until: sent + ttl.saturating_sub(margin),
                });
                renew_every
            }
            Ok(None) => {
                if held.take().is_some() {
                    warn!(lease = %name, instance = %holder.instance, "lease taken over by another instance; stepping down");
                }
                retry_every
            }
            Err(e) => {
                if held.as_ref().is_some_and(|h| Instant::now() >= h.until) {
                    held = None;
                    warn!(lease = %name, error = %e, "lease expired while the state store was unreachable; stepping down");
                } else if !std::mem::replace(&mut failing, true) {
                    warn!(lease = %name, error = %e, "cannot reach the state store for the lease; retrying");
                }
                retry_every
            }
        };
        gauge.store(
            held.as_ref().map_or(0, |h| h.fence.epoch),
            std::sync::atomic::Ordering::Relaxed,
        );
        held_tx.send_replace(held.clone());
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = lost.notified() => {
                if held.take().is_some() {
                    warn!(lease = %name, instance = %holder.instance, "a write under the lease was refused; stepping down");
                }
                held_tx.send_replace(None);
            }
            _ = release.changed() => break,
        }
    }
    held_tx.send_replace(None);
    gauge.store(0, std::sync::atomic::Ordering::Relaxed);
    if let Some(h) = held
        && let Err(e) = state.release_lease(&h.fence).await
    {
        warn!(lease = %name, error = %e, "cannot release the lease; it expires by itself");
    }
}

/// Keeps this process's row in the instances table fresh until `stop`, then marks it
/// stopped.
pub async fn heartbeat(
    state: State,
    holder: Holder,
    every: Duration,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    let mut work = WorkSeen::default();
    loop {
        let (done, totals) = work.since_last(&metrics);
        let beat = async {
            state.instance_seen(&holder, false).await?;
            state.record_work(&holder.instance, &done).await
        };
        match beat.await {
            Ok(()) => {
                failing = false;
                work.recorded(totals);
            }
            Err(e) if !std::mem::replace(&mut failing, true) => {
                warn!(error = %e, "cannot record this instance in the state store");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
    }
    let (done, _) = work.since_last(&metrics);
    let _ = state.record_work(&holder.instance, &done).await;
    let _ = state.instance_seen(&holder, true).await;
}

/// What each running route had moved at the last heartbeat that reached the store, by
/// its metrics (a route a reload restarted has new ones, counting from zero).
#[derive(Default)]
struct WorkSeen(std::collections::HashMap<usize, u64>);

/// What each route moved since the last heartbeat, and the totals that will then be
/// recorded.
type Tally = (Vec<WorkDone>, std::collections::HashMap<usize, u64>);

impl WorkSeen {
    /// What each route moved (stored, published or dead-lettered) since then.
    fn since_last(&self, metrics: &Metrics) -> Tally {
        let mut done = Vec::new();
        let mut totals = std::collections::HashMap::new();
        for r in metrics.routes() {
            let total = r.written.load(Ordering::Relaxed)
                + r.published.load(Ordering::Relaxed)
                + r.dead_letters.load(Ordering::Relaxed);
            let key = Arc::as_ptr(&r) as usize;
            let moved = total.saturating_sub(self.0.get(&key).copied().unwrap_or(0));
            if moved > 0 {
                done.push(WorkDone {
                    route: r.name.clone(),
                    direction: r.kind.as_str(),
                    moved,
                });
            }
            totals.insert(key, total);
        }
        (done, totals)
    }

    fn recorded(&mut self, totals: std::collections::HashMap<usize, u64>) {
        self.0 = totals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_stores::stores;

    fn spec(state: &State, instance: &str) -> LeaseSpec {
        LeaseSpec {
            state: state.clone(),
            name: "outbound:r".into(),
            holder: Holder::this_process(instance),
            ttl: Duration::from_secs(30),
            metrics: Metrics::new(),
        }
    }

    #[tokio::test]
    async fn a_refused_fence_is_never_handed_out_again() {
        for (_keep, state) in stores().await {
            let (_stop_tx, mut stop) = watch::channel(false);
            let mut a = Lease::keep(spec(&state, "a"));
            let first = a.acquired(&mut stop).await.unwrap();
            // Another instance takes the lease over (as after an expiry).
            let b = Holder::this_process("b");
            state.release_lease(&first).await.unwrap();
            let epoch = state
                .take_lease("outbound:r", &b, Duration::from_secs(30))
                .await;
            assert_eq!(epoch.unwrap(), Some(first.epoch + 1));
            a.lost();
            assert_eq!(a.current(), None, "the refused fence is forgotten at once");
            assert!(!a.still(&first));
            a.release().await;
        }
    }

    #[tokio::test]
    async fn a_released_lease_goes_to_the_next_keeper() {
        for (_keep, state) in stores().await {
            let (_stop_tx, mut stop) = watch::channel(false);
            let mut a = Lease::keep(spec(&state, "a"));
            let held = a.acquired(&mut stop).await.unwrap();
            let mut b = Lease::keep(spec(&state, "b"));
            a.release().await;
            let taken = b.acquired(&mut stop).await.unwrap();
            assert_eq!(taken.epoch, held.epoch + 1);
            b.release().await;
        }
    }
}
