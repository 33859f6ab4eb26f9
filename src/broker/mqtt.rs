//! MQTT source on rumqttc: a persistent session with a stable client id, manual
//! acknowledgements in receive order, reconnection with backoff, and resubscription when
//! the broker did not keep the session.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::budget::ByteBudget;
use super::mqtt_link::{self, AckError, AckToken, Incoming, Link, LinkClient};
pub use super::mqtt_settings::{MqttSettings, MqttVersion, qos};
use super::sequence::Sequencer;
use crate::backoff::Backoff;
use crate::config::Qos;
use crate::message::{AckHandle, Message, Origin};
use crate::metrics::RouteMetrics;
use crate::topic::Filter;

/// A route's subscription on this broker.
#[derive(Clone)]
pub struct Subscription {
    pub filter: Filter,
    pub qos: Qos,
    /// The shared subscription group: the filter is subscribed as `$share/GROUP/filter`,
    /// and matched against each message's real topic.
    pub share: Option<String>,
    pub route: mpsc::Sender<Message>,
    pub metrics: Arc<RouteMetrics>,
}

impl Subscription {
    /// The filter as subscribed.
    fn subscribed_filter(&self) -> String {
        match &self.share {
            Some(group) => format!("$share/{group}/{}", self.filter.mqtt_filter()),
            None => self.filter.mqtt_filter(),
        }
    }
}

/// The routes a source hands messages to. A reload replaces them while the source runs:
/// the source then subscribes the new filters and unsubscribes the ones no route has
/// any more, and drops its senders to the routes that left, so they drain and end.
pub type RouteTable = watch::Receiver<Arc<Vec<Subscription>>>;

/// A table of `subscriptions`, and the sender that replaces them.
pub fn route_table(
    subscriptions: Vec<Subscription>,
) -> (watch::Sender<Arc<Vec<Subscription>>>, RouteTable) {
    watch::channel(Arc::new(subscriptions))
}

/// Each distinct filter as subscribed, with its QoS.
pub fn subscribed_filters(subscriptions: &[Subscription]) -> Vec<(String, u8)> {
    let mut filters: Vec<(String, u8)> = Vec::new();
    for s in subscriptions {
        let filter = s.subscribed_filter();
        if !filters
            .iter()
            .any(|(f, q)| *f == filter && *q == s.qos.level())
        {
            filters.push((filter, s.qos.level()));
        }
    }
    filters
}

/// A running MQTT source.
pub struct MqttSource {
    client: LinkClient,
    intake: watch::Sender<bool>,
    reader: JoinHandle<()>,
    sequencer: JoinHandle<()>,
    follower: Option<JoinHandle<()>>,
    activity: Arc<Activity>,
    routes: RouteTable,
}

/// Whether a source subscribes its routes' filters, or only takes over a session that
/// has them (to drain what the broker kept for another instance).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Subscribes when the broker did not keep the session.
    Subscribe,
    /// Subscribes at every connection: a slot's session may have been drained and
    /// unsubscribed by another instance while it was free.
    Shared,
    Drain,
}

/// What a draining source has seen, for [`MqttSource::drain`].
#[derive(Default)]
struct Activity {
    /// 0 before the first CONNACK, then 1 if the broker kept the session, else 2.
    session: std::sync::atomic::AtomicU8,
    /// Milliseconds after `epoch` of the latest message, plus one; 0 before any.
    last_message: AtomicU64,
    unsubscribed: std::sync::atomic::AtomicBool,
    /// Messages received, over every connection.
    messages: AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

impl Activity {
    fn now(&self) -> u64 {
        let epoch = self.epoch.get_or_init(std::time::Instant::now);
        epoch.elapsed().as_millis() as u64 + 1
    }

    /// How long since the latest message (or since the first look, before any).
    fn quiet_for(&self) -> Duration {
        let now = self.now();
        let last = self.last_message.load(Ordering::Relaxed).max(1);
        Duration::from_millis(now.saturating_sub(last))
    }
}

/// What the sequencer must know of each received message.
struct Registration {
    seq: u64,
    ack: Option<AckToken>,
    routes: usize,
    generation: u64,
    permit: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
}

impl MqttSource {
    pub fn start(settings: MqttSettings, routes: RouteTable) -> MqttSource {
        Self::start_in(settings, routes, Mode::Subscribe)
    }

    /// A source whose subscriptions are shared with other instances, on the session of a
    /// slot (`settings.client_id`).
    pub fn start_shared(settings: MqttSettings, routes: RouteTable) -> MqttSource {
        Self::start_in(settings, routes, Mode::Shared)
    }

    /// Takes over the persistent session `settings.client_id` (another instance's, which
    /// holds the filters of `routes`) without subscribing anything, to
    /// [`MqttSource::drain`] it.
    pub fn adopt(settings: MqttSettings, routes: RouteTable) -> MqttSource {
        Self::start_in(settings, routes, Mode::Drain)
    }

    fn start_in(settings: MqttSettings, routes: RouteTable, mode: Mode) -> MqttSource {
        let activity = Arc::new(Activity::default());
        activity.now();
        let (client, eventloop) = mqtt_link::connect(&settings, 1024);
        let (intake, intake_rx) = watch::channel(true);
        let generation = Arc::new(AtomicU64::new(0));
        let (register_tx, register_rx) = mpsc::channel(settings.max_in_flight);
        let (done_tx, done_rx) = mpsc::channel(settings.max_in_flight);
        let sequencer = tokio::spawn(sequence_acks(
            client.clone(),
            register_rx,
            done_rx,
            intake_rx.clone(),
            generation.clone(),
        ));
        let follower = (mode != Mode::Drain)
            .then(|| tokio::spawn(follow(client.clone(), routes.clone(), intake_rx.clone())));
        let reader = tokio::spawn(read(
            settings,
            client.clone(),
            eventloop,
            routes.clone(),
            Handoff {
                intake: intake_rx,
                generation,
                register: register_tx,
                done: done_tx,
                mode,
                activity: activity.clone(),
            },
        ));
        MqttSource {
            client,
            intake,
            reader,
            sequencer,
            follower,
            activity,
            routes,
        }
    }

    /// For an adopted session: waits until the broker has handed over what it kept (no
    /// message for `idle`), unsubscribes the session's filters so that the broker routes
    /// nothing more to it, and waits for what was already on its way. `Err` if the
    /// broker could not be reached within `patience`.
    pub async fn drain(&self, idle: Duration, patience: Duration) -> Result<(), String> {
        let started = std::time::Instant::now();
        while self.activity.session.load(Ordering::Relaxed) == 0 {
            if started.elapsed() > patience {
                return Err("the broker did not accept the session's client id in time".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.activity.session.load(Ordering::Relaxed) == 2 {
            // The broker kept nothing for this client id.
            return Ok(());
        }
        self.quiet(idle).await;
        let filters = subscribed_filters(&self.routes.borrow());
        for (filter, _) in filters {
            self.client.unsubscribe(filter).await?;
        }
        let asked = std::time::Instant::now();
        while !self.activity.unsubscribed.load(Ordering::Relaxed) {
            if asked.elapsed() > patience {
                return Err("the broker did not confirm the unsubscription".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.quiet(idle).await;
        Ok(())
    }

    /// Unsubscribes `filters`, which an earlier source on this session subscribed and no
    /// route has any more; sent once the broker is reached.
    pub fn forget(&self, filters: Vec<String>) {
        let client = self.client.clone();
        tokio::spawn(async move {
            for filter in filters {
                info!(filter = %filter, "unsubscribing a filter no route has any more");
                if let Err(e) = client.unsubscribe(filter).await {
                    warn!(error = %e, "unsubscribe request failed");
                }
            }
        });
    }

    /// How many messages this source has received.
    pub fn received(&self) -> u64 {
        self.activity.messages.load(Ordering::Relaxed)
    }

    async fn quiet(&self, idle: Duration) {
        loop {
            let quiet = self.activity.quiet_for();
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }

    /// Stops handing new messages to routes; what is not yet handed out is never
    /// acknowledged, so the broker delivers it again later.
    pub fn close_intake(&self) {
        let _ = self.intake.send(false);
    }

    /// Once every route has finished: sends the remaining acknowledgements, then
    /// disconnects cleanly.
    pub async fn shutdown(self, grace: Duration) {
        self.close_intake();
        if let Some(follower) = self.follower {
            follower.abort();
        }
        if tokio::time::timeout(grace, self.sequencer).await.is_err() {
            warn!("acknowledgements still pending at shutdown; the broker will redeliver them");
        }
        self.client.disconnect().await;
        if tokio::time::timeout(grace, self.reader).await.is_err() {
            warn!("the broker connection did not close in time");
        }
    }
}

/// What the reader shares with the sequencer.
struct Handoff {
    intake: watch::Receiver<bool>,
    generation: Arc<AtomicU64>,
    register: mpsc::Sender<Registration>,
    done: mpsc::Sender<Vec<u64>>,
    mode: Mode,
    activity: Arc<Activity>,
}

async fn read(
    settings: MqttSettings,
    client: LinkClient,
    mut link: Link,
    routes: RouteTable,
    handoff: Handoff,
) {
    let Handoff {
        intake,
        generation: shared_generation,
        register,
        done,
        mode,
        activity,
    } = handoff;
    // An adopted session is another instance's: its routes' health is not this one's.
    let owned = mode != Mode::Drain;
    let broker: Arc<str> = Arc::from(settings.name.as_str());
    let permits = Arc::new(Semaphore::new(settings.max_in_flight));
    let budget = ByteBudget::new(settings.max_in_flight_bytes);
    let mut seq: u64 = 0;
    let mut generation: u64 = 0;
    let mut backoff = Backoff::new();
    loop {
        match link.poll().await {
            Ok(Incoming::Connected { session_present }) => {
                generation += 1;
                shared_generation.store(generation, Ordering::SeqCst);
                backoff.reset();
                info!(broker = %settings.name, endpoint = %settings.endpoint(), client_id = %settings.client_id, session_present, "broker connected");
                activity
                    .session
                    .store(if session_present { 1 } else { 2 }, Ordering::Relaxed);
                let subscriptions = routes.borrow().clone();
                let filters = subscribed_filters(&subscriptions);
                if !owned {
                    // Draining subscribes nothing: a new subscription would only bring more.
                } else if session_present && mode == Mode::Subscribe {
                    // The session kept the subscriptions: no SUBACK will come.
                    for s in subscriptions.iter() {
                        s.metrics.set_broker_up(true);
                    }
                } else if !filters.is_empty() {
                    let client = client.clone();
                    let filters = filters.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client.subscribe(filters).await {
                            warn!(error = %e, "subscribe request failed");
                        }
                    });
                }
            }
            Ok(Incoming::Publish(publish)) => {
                if !*intake.borrow() {
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                seq += 1;
                activity
                    .last_message
                    .store(activity.now(), Ordering::Relaxed);
                activity.messages.fetch_add(1, Ordering::Relaxed);
                let mut received = *publish;
                // The table as it is now; a route a reload removed ends once this is dropped.
                let subscriptions = routes.borrow().clone();
                let matching: Vec<&Subscription> = subscriptions
                    .iter()
                    .filter(|s| s.filter.matches(&received.topic))
                    .collect();
                // Every route holds its own copy, so each copy counts.
                let size = (received.payload.len() + received.topic.len()) * matching.len().max(1);
                let Some(bytes) = budget.take(size).await else {
                    return;
                };
                let registration = Registration {
                    seq,
                    ack: received.ack.take(),
                    routes: matching.len(),
                    generation,
                    permit,
                    bytes,
                };
                if register.send(registration).await.is_err() {
                    return;
                }
                let received_at = Utc::now();
                let origin = Origin::Mqtt {
                    qos: received.qos,
                    retain: received.retain,
                };
                let last = matching.len().saturating_sub(1);
                for (i, subscription) in matching.into_iter().enumerate() {
                    // The last route takes the payload itself; only extra routes copy it.
                    let (topic, payload, headers) = if i == last {
                        (
                            std::mem::take(&mut received.topic),
                            std::mem::take(&mut received.payload),
                            std::mem::take(&mut received.headers),
                        )
                    } else {
                        (
                            received.topic.clone(),
                            received.payload.clone(),
                            received.headers.clone(),
                        )
                    };
                    let message = Message {
                        topic,
                        payload,
                        received_at,
                        broker: broker.clone(),
                        origin: origin.clone(),
                        headers,
                        ack: AckHandle::new(seq, done.clone()),
                    };
                    if subscription.route.send(message).await.is_err() {
                        debug!("route closed; message left unacknowledged");
                    }
                }
            }
            Ok(Incoming::Disconnecting) => return,
            Ok(Incoming::SubscribeRefused) => {
                warn!(broker = %settings.name, "the broker refused a subscription");
            }
            // One SUBSCRIBE carries every filter, so one SUBACK answers for all routes.
            Ok(Incoming::Subscribed) => {
                for s in routes.borrow().iter() {
                    s.metrics.set_broker_up(true);
                }
            }
            Ok(Incoming::Unsubscribed) => activity.unsubscribed.store(true, Ordering::Relaxed),
            Ok(Incoming::Other) => {}
            Err(e) => {
                if !*intake.borrow() && register.is_closed() {
                    return;
                }
                let delay = backoff.next_delay();
                warn!(broker = %settings.name, endpoint = %settings.endpoint(), error = %settings.explain(&e), retry_in = ?delay, "broker connection lost");
                for s in routes.borrow().iter().filter(|_| owned) {
                    s.metrics.set_broker_up(false);
                    RouteMetrics::add(&s.metrics.retries, 1);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Subscribes the filters a reload added and unsubscribes those no route has any more.
/// Requests made while the broker is unreachable are sent on reconnection; a session the
/// broker did not keep is subscribed afresh from the table anyway.
async fn follow(client: LinkClient, mut routes: RouteTable, mut intake: watch::Receiver<bool>) {
    let mut subscribed = subscribed_filters(&routes.borrow_and_update());
    loop {
        tokio::select! {
            changed = routes.changed() => if changed.is_err() { return },
            changed = intake.changed() => if changed.is_err() || !*intake.borrow() { return },
        }
        let now = subscribed_filters(&routes.borrow_and_update());
        let added: Vec<(String, u8)> = now
            .iter()
            .filter(|f| !subscribed.contains(f))
            .cloned()
            .collect();
        for (filter, _) in subscribed
            .iter()
            .filter(|f| !now.iter().any(|n| n.0 == f.0))
        {
            info!(filter = %filter, "unsubscribing a filter no route has any more");
            if let Err(e) = client.unsubscribe(filter.clone()).await {
                warn!(error = %e, "unsubscribe request failed");
            }
        }
        if !added.is_empty() {
            info!(filters = ?added, "subscribing the filters of new routes");
            if let Err(e) = client.subscribe(added).await {
                warn!(error = %e, "subscribe request failed");
            }
        }
        subscribed = now;
    }
}

/// Ends the persistent session of `settings.client_id` at the broker: connects with a clean
/// session and leaves. For a drained session that nobody will resume.
pub async fn end_session(settings: &MqttSettings) -> Result<(), String> {
    let mut clean = settings.clone();
    clean.clean_session = true;
    let (client, mut link) = mqtt_link::connect(&clean, 16);
    let work = async {
        loop {
            match link.poll().await? {
                Incoming::Connected { .. } => client.disconnect().await,
                Incoming::Disconnecting => return Ok(()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(settings.connect_timeout * 2, work)
        .await
        .map_err(|_| "no answer from the broker".to_string())?
}

/// Sends acknowledgements in receive order (MQTT 3.1.1 §4.6): a message's ack waits until
/// every earlier message is done. Messages from an earlier connection are never acked on a
/// later one: the broker has already redelivered them, and their packet ids may be reused.
async fn sequence_acks(
    client: LinkClient,
    mut register: mpsc::Receiver<Registration>,
    mut done: mpsc::Receiver<Vec<u64>>,
    mut intake: watch::Receiver<bool>,
    generation: Arc<AtomicU64>,
) {
    let mut sequencer: Sequencer<(
        Option<AckToken>,
        u64,
        (OwnedSemaphorePermit, OwnedSemaphorePermit),
    )> = Sequencer::default();
    // Acks that rumqttc's request channel had no room for. Waiting on that channel here
    // would stall the routes, which would stall the reader that drains the channel.
    let mut unsent: VecDeque<(AckToken, u64)> = VecDeque::new();
    let mut open = true;
    let mut retry = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            r = register.recv() => match r {
                Some(r) => sequencer.register(r.seq, r.routes, (r.ack, r.generation, (r.permit, r.bytes))),
                None => return,
            },
            d = done.recv() => match d {
                Some(seqs) => seqs.into_iter().for_each(|seq| sequencer.done(seq)),
                None => return,
            },
            changed = intake.changed(), if open => {
                open = changed.is_ok() && *intake.borrow();
            }
            _ = retry.tick(), if !unsent.is_empty() => {}
        }
        // A finished message frees its in-flight slot at once (the permit drops), even if
        // its ack must wait for room: the reader needs that slot to keep polling, and
        // polling sends the acks.
        while let Some((ack, generation, _permit)) = sequencer.pop_ready() {
            if let Some(publish) = ack {
                unsent.push_back((publish, generation));
            }
        }
        let current = generation.load(Ordering::SeqCst);
        while let Some((publish, publish_generation)) = unsent.front() {
            if *publish_generation == current {
                match client.try_ack(publish) {
                    Ok(()) => {}
                    Err(AckError::Full) => break,
                    Err(AckError::Closed) => return,
                }
            }
            unsent.pop_front();
        }
        if !open && sequencer.is_empty() && unsent.is_empty() && register.is_empty() {
            return;
        }
    }
}
