//! MQTT source on rumqttc: a persistent session with a stable client id, manual
//! acknowledgements in receive order, reconnection with backoff, and resubscription when
//! the broker did not keep the session.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use rumqttc::{MqttOptions, QoS, Transport};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::budget::ByteBudget;
use super::mqtt_link::{self, AckError, AckToken, Incoming, Link, LinkClient};
use super::sequence::Sequencer;
use crate::backoff::Backoff;
use crate::config::{self, Broker, Qos};
use crate::message::{AckHandle, Message, Origin};
use crate::metrics::RouteMetrics;
use crate::topic::Filter;

/// MQTT's own ceiling on a packet; rumqttc's default (10 kB) would turn a large payload into
/// an endless reconnect loop. MQTT 3.1.1 cannot tell the broker a smaller limit, so a
/// 3.1.1 subscriber takes every message and dead-letters the oversized ones.
const MAX_PACKET: usize = 268_435_455;

/// Room for the topic and properties around the largest payload an MQTT 5 subscriber asks
/// for: a topic is at most 64 KiB.
const PACKET_OVERHEAD: u64 = 80 << 10;

/// Resolved settings of one MQTT broker.
#[derive(Clone)]
pub struct MqttSettings {
    pub name: String,
    host: String,
    port: u16,
    tls: Option<rumqttc::TlsConfiguration>,
    pub client_id: String,
    credentials: Option<(String, String)>,
    keep_alive: Duration,
    pub clean_session: bool,
    pub max_in_flight: usize,
    pub max_message_bytes: u64,
    pub max_in_flight_bytes: u64,
    pub version: MqttVersion,
}

pub use crate::config::MqttVersion;

impl MqttSettings {
    pub fn from_config(name: &str, broker: &Broker) -> Result<Self, String> {
        let parts = config::url::credentials(broker.url.value.as_str());
        let url = parts.bare.as_str();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("broker {name}: `{url}` is not a URL"))?;
        let secure = match scheme {
            "mqtt" => false,
            "mqtts" => true,
            other => return Err(format!("broker {name}: unsupported scheme {other}://")),
        };
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("broker {name}: bad port in `{url}`"))?,
            ),
            None => (authority.to_string(), if secure { 8883 } else { 1883 }),
        };
        let tls = if secure {
            Some(tls_configuration(name, broker)?)
        } else {
            None
        };
        let password = config::password(
            &format!("broker {name}"),
            &broker.password,
            &broker.password_file,
        )?;
        // The username and password keys win over a user and password in the URL.
        let user = broker
            .username
            .as_ref()
            .filter(|u| !u.as_str().is_empty())
            .map(|u| u.0.clone())
            .or(parts.user);
        // An empty password (`${MQTT_PASSWORD:-}` unset) is no password.
        let password = password.or(parts.password).filter(|p| !p.is_empty());
        let credentials = match (user, password) {
            (Some(u), p) => Some((u, p.unwrap_or_default())),
            // MQTT 3.1.1 carries no password without a user name: the broker would only
            // close the connection, without saying why.
            (None, Some(_)) => {
                return Err(format!(
                    "broker {name}: a password is set but the username is empty; set \
                     `username:` (a variable such as ${{MQTT_USER}} that is unset or empty \
                     gives an empty one) or the URL's user, or remove the password"
                ));
            }
            _ => None,
        };
        Ok(MqttSettings {
            name: name.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            tls,
            client_id: broker
                .client_id
                .as_ref()
                .map(|c| c.0.clone())
                .unwrap_or_else(|| format!("mqdb-{name}")),
            credentials,
            keep_alive: broker.keep_alive,
            clean_session: broker.clean_session,
            max_in_flight: broker.max_in_flight,
            max_message_bytes: broker.max_message_bytes,
            max_in_flight_bytes: broker.max_in_flight_bytes,
            version: broker.mqtt_version,
        })
    }

    /// rumqttc options; `client_id` may differ from the configured one (for `check`).
    pub fn options(&self, client_id: &str, clean_session: bool) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, &self.host, self.port);
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_session(clean_session)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_request_channel_capacity(1024);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::Tls(tls.clone()));
        }
        options
    }

    /// MQTT 5 options for the subscriber: a persistent session must be given an expiry, and
    /// the receive maximum asks the broker to respect the in-flight limit.
    pub fn options_v5(&self) -> rumqttc::v5::MqttOptions {
        let mut options = rumqttc::v5::MqttOptions::new(&self.client_id, &self.host, self.port);
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_start(self.clean_session)
            .set_manual_acks(true)
            .set_max_packet_size(Some(self.max_packet_v5()))
            .set_receive_maximum(Some(u16::try_from(self.max_in_flight).unwrap_or(u16::MAX)))
            .set_request_channel_capacity(1024);
        if !self.clean_session {
            options.set_session_expiry_interval(Some(u32::MAX));
        }
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::Tls(tls.clone()));
        }
        options
    }

    /// The Maximum Packet Size an MQTT 5 subscriber announces: the broker discards larger
    /// messages for this client instead of sending them (MQTT 5 §3.1.2.11.4).
    pub fn max_packet_v5(&self) -> u32 {
        (self.max_message_bytes + PACKET_OVERHEAD).min(MAX_PACKET as u64) as u32
    }

    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn tls_configuration(name: &str, broker: &Broker) -> Result<rumqttc::TlsConfiguration, String> {
    let tls = broker.tls.as_ref();
    let read = |what: &str, path: &config::EnvString| {
        std::fs::read(path.as_str()).map_err(|e| {
            format!(
                "broker {name}: cannot read tls.{what} {}: {e}",
                path.as_str()
            )
        })
    };
    let client_auth = match (
        tls.and_then(|t| t.cert_file.as_ref()),
        tls.and_then(|t| t.key_file.as_ref()),
    ) {
        (Some(cert), Some(key)) => Some((read("cert_file", cert)?, read("key_file", key)?)),
        (None, None) => None,
        _ => {
            return Err(format!(
                "broker {name}: tls needs both cert_file and key_file"
            ));
        }
    };
    match tls.and_then(|t| t.ca_file.as_ref()) {
        Some(ca) => Ok(rumqttc::TlsConfiguration::Simple {
            ca: read("ca_file", ca)?,
            alpn: None,
            client_auth,
        }),
        None if client_auth.is_none() => Ok(rumqttc::TlsConfiguration::default()),
        None => Err(format!("broker {name}: tls.cert_file needs tls.ca_file")),
    }
}

pub fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// A route's subscription on this broker.
pub struct Subscription {
    pub filter: Filter,
    pub qos: Qos,
    pub route: mpsc::Sender<Message>,
    pub metrics: Arc<RouteMetrics>,
}

/// A running MQTT source.
pub struct MqttSource {
    client: LinkClient,
    intake: watch::Sender<bool>,
    reader: JoinHandle<()>,
    sequencer: JoinHandle<()>,
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
    pub fn start(settings: MqttSettings, subscriptions: Vec<Subscription>) -> MqttSource {
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
        let reader = tokio::spawn(read(
            settings,
            client.clone(),
            eventloop,
            subscriptions,
            Handoff {
                intake: intake_rx,
                generation,
                register: register_tx,
                done: done_tx,
            },
        ));
        MqttSource {
            client,
            intake,
            reader,
            sequencer,
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
}

async fn read(
    settings: MqttSettings,
    client: LinkClient,
    mut link: Link,
    subscriptions: Vec<Subscription>,
    handoff: Handoff,
) {
    let Handoff {
        intake,
        generation: shared_generation,
        register,
        done,
    } = handoff;
    let broker: Arc<str> = Arc::from(settings.name.as_str());
    let permits = Arc::new(Semaphore::new(settings.max_in_flight));
    let budget = ByteBudget::new(settings.max_in_flight_bytes);
    let filters: Vec<(String, u8)> = subscriptions
        .iter()
        .map(|s| (s.filter.mqtt_filter(), s.qos.level()))
        .collect();
    let mut seq: u64 = 0;
    let mut generation: u64 = 0;
    let mut backoff = Backoff::new();
    loop {
        match link.poll().await {
            Ok(Incoming::Connected { session_present }) => {
                generation += 1;
                shared_generation.store(generation, Ordering::SeqCst);
                backoff.reset();
                info!(broker = %settings.name, endpoint = %settings.endpoint(), session_present, "broker connected");
                if session_present {
                    // The session kept the subscriptions: no SUBACK will come.
                    for s in &subscriptions {
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
                let mut received = *publish;
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
                for s in &subscriptions {
                    s.metrics.set_broker_up(true);
                }
            }
            Ok(Incoming::Other) => {}
            Err(e) => {
                if !*intake.borrow() && register.is_closed() {
                    return;
                }
                let delay = backoff.next_delay();
                warn!(broker = %settings.name, endpoint = %settings.endpoint(), error = %e, retry_in = ?delay, "broker connection lost");
                for s in &subscriptions {
                    s.metrics.set_broker_up(false);
                    RouteMetrics::add(&s.metrics.retries, 1);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(broker: &str) -> Result<MqttSettings, String> {
        let yaml = format!("brokers:\n  b:\n{broker}");
        let config = crate::config::parse(std::path::Path::new("c.yaml"), &yaml).expect("parses");
        MqttSettings::from_config("b", &config.brokers["b"].value)
    }

    #[test]
    fn a_password_without_a_username_is_a_configuration_error() {
        let e =
            settings("    url: mqtt://127.0.0.1:1883\n    username: ''\n    password: secret\n")
                .err()
                .expect("refused");
        assert!(
            e.contains("broker b") && e.contains("username is empty"),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
        let with_user =
            settings("    url: mqtt://127.0.0.1:1883\n    username: u\n    password: secret\n");
        assert!(with_user.is_ok());
        assert!(settings("    url: mqtt://127.0.0.1:1883\n").is_ok());
        let both_empty =
            settings("    url: mqtt://127.0.0.1:1883\n    username: ''\n    password: ''\n");
        assert!(both_empty.is_ok_and(|s| s.credentials.is_none()));
    }
}
