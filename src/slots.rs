//! Shared MQTT subscriptions across instances, without orphaned sessions.
//!
//! A broker's MQTT source whose routes set `share:` connects as one of a numbered set of
//! client ids, the **slots** (`CLIENT_ID-slot1`, `-slot2`…), each held through a lease in the
//! state store. An instance takes the lowest free slot, so a replacement for an instance
//! that died resumes its persistent session and what the broker kept in it. While no
//! instance holds a slot (its holder is gone and its lease expired), a surviving instance
//! **adopts** it: it takes the session over, stores and acknowledges everything the broker
//! kept, unsubscribes it so the broker queues nothing more there, ends it and frees the
//! slot. Brokers such as Mosquitto keep handing a dead member its share of new messages;
//! without adoption, those would wait for ever.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::broker::mqtt::{self, MqttSettings, MqttSource, RouteTable};
use crate::lease::{Lease, Leases};

/// How long a drained session must stay quiet before it counts as empty.
const QUIET: Duration = Duration::from_secs(1);

/// The running source of one broker's shared subscriptions.
pub struct SharedSource {
    phase: watch::Sender<Phase>,
    task: JoinHandle<()>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    Running,
    IntakeClosed,
    /// Shut down, waiting this long for acknowledgements.
    Shutdown(Duration),
}

impl SharedSource {
    pub fn start(settings: MqttSettings, routes: RouteTable, leases: Leases) -> Self {
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let task = tokio::spawn(run(settings, routes, leases, phase_rx));
        SharedSource { phase, task }
    }

    pub fn close_intake(&self) {
        self.phase.send_if_modified(|p| {
            let closing = *p == Phase::Running;
            if closing {
                *p = Phase::IntakeClosed;
            }
            closing
        });
    }

    pub async fn shutdown(self, grace: Duration) {
        let _ = self.phase.send(Phase::Shutdown(grace));
        let _ = self.task.await;
    }
}

fn slot_lease(broker: &str, n: u32) -> String {
    format!("slot:{broker}:{n}")
}

/// Holds a slot (taking another when it loses one) and adopts orphaned ones, until
/// shutdown.
async fn run(
    settings: MqttSettings,
    routes: RouteTable,
    leases: Leases,
    mut phase: watch::Receiver<Phase>,
) {
    let broker = settings.name.clone();
    let mut adoption: Option<JoinHandle<()>> = None;
    loop {
        let Some((n, lease)) = claim(&leases, &broker, &mut phase).await else {
            return;
        };
        let mut own = settings.clone();
        own.client_id = format!("{}-slot{n}", settings.configured_client_id);
        info!(broker = %broker, slot = n, client_id = %own.client_id, "holding a shared-subscription slot");
        let source = MqttSource::start_shared(own, routes.clone());
        let mut scan = tokio::time::interval(leases.ttl / 2);
        let lost = loop {
            tokio::select! {
                _ = phase.changed() => {
                    let now = *phase.borrow();
                    match now {
                        Phase::Running => {}
                        Phase::IntakeClosed => source.close_intake(),
                        Phase::Shutdown(grace) => {
                            source.shutdown(grace).await;
                            if let Some(a) = adoption.take() {
                                let _ = a.await;
                            }
                            lease.release().await;
                            return;
                        }
                    }
                }
                _ = scan.tick() => {
                    if lease.current().is_none() {
                        break true;
                    }
                    let idle = adoption.as_ref().is_none_or(JoinHandle::is_finished);
                    if idle && *phase.borrow() == Phase::Running
                        && let Some(orphan) = orphan(&leases, &broker).await
                    {
                        adoption = Some(tokio::spawn(adopt(
                            settings.clone(),
                            routes.clone(),
                            leases.clone(),
                            orphan,
                            phase.clone(),
                        )));
                    }
                }
            }
        };
        if lost {
            // Another instance may be adopting this session now: leave it to that one.
            warn!(broker = %broker, slot = n, "lost the lease of its slot; leaving the session and taking another slot");
            source.close_intake();
            source.shutdown(Duration::from_secs(5)).await;
            lease.release().await;
        }
    }
}

/// Takes the lowest-numbered free slot; `None` on shutdown.
async fn claim(
    leases: &Leases,
    broker: &str,
    phase: &mut watch::Receiver<Phase>,
) -> Option<(u32, Lease)> {
    loop {
        for n in 1..=1024 {
            if *phase.borrow() != Phase::Running {
                return None;
            }
            let name = slot_lease(broker, n);
            match leases
                .state
                .take_lease(&name, &leases.holder, leases.ttl)
                .await
            {
                Ok(Some(_)) => {
                    let mut lease = Lease::keep(leases.spec(&name));
                    let (_keep, mut never) = watch::channel(false);
                    lease.acquired(&mut never).await;
                    return Some((n, lease));
                }
                Ok(None) => continue,
                Err(e) => {
                    warn!(broker, error = %e, "cannot claim a shared-subscription slot; retrying");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(leases.ttl / 4) => {}
            _ = phase.changed() => {}
        }
    }
}

/// A slot of `broker` whose holder is gone, now taken by this instance for adoption.
async fn orphan(leases: &Leases, broker: &str) -> Option<(u32, Lease)> {
    let (rows, now) = leases.state.leases().await.ok()?;
    let prefix = format!("slot:{broker}:");
    for lease in rows {
        let Some(n) = lease
            .name
            .strip_prefix(&prefix)
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        if lease.expires_at > now || lease.holder == leases.holder.id {
            continue;
        }
        if let Ok(Some(_)) = leases
            .state
            .take_lease(&lease.name, &leases.holder, leases.ttl)
            .await
        {
            let mut held = Lease::keep(leases.spec(&lease.name));
            let (_keep, mut never) = watch::channel(false);
            held.acquired(&mut never).await;
            return Some((n, held));
        }
    }
    None
}

/// Drains the session of an orphaned slot into this instance's routes, then ends it and
/// frees the slot.
async fn adopt(
    settings: MqttSettings,
    routes: RouteTable,
    leases: Leases,
    (n, lease): (u32, Lease),
    mut phase: watch::Receiver<Phase>,
) {
    let mut theirs = settings.clone();
    theirs.client_id = format!("{}-slot{n}", settings.configured_client_id);
    theirs.clean_session = false;
    let broker = settings.name.clone();
    info!(broker = %broker, slot = n, client_id = %theirs.client_id, instance = %leases.holder.instance, "adopting the session of a slot whose instance is gone");
    let source = MqttSource::adopt(theirs.clone(), routes);
    let patience = settings.connect_timeout * 3;
    let drained = tokio::select! {
        r = source.drain(QUIET, patience) => r,
        _ = phase.wait_for(|p| *p != Phase::Running) => Err("shutting down".to_string()),
    };
    source.close_intake();
    let messages = source.received();
    let grace = match *phase.borrow() {
        Phase::Shutdown(grace) => grace,
        _ => Duration::from_secs(30),
    };
    source.shutdown(grace).await;
    match drained {
        Ok(()) => match mqtt::end_session(&theirs).await {
            Ok(()) => {
                info!(broker = %broker, slot = n, messages, "adopted session drained and ended; the slot is free")
            }
            Err(e) => {
                warn!(broker = %broker, slot = n, error = %e, "adopted session drained, but ending it failed; the slot is free")
            }
        },
        Err(e) => {
            warn!(broker = %broker, slot = n, error = %e, "adoption stopped early; another instance will adopt the slot")
        }
    }
    lease.release().await;
}
