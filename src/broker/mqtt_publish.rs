//! MQTT publishing with confirmation: each publish counts only once the broker has sent
//! PUBACK (QoS 1) or PUBCOMP (QoS 2) for its packet id (rumqttc's `publish` only queues).
//!
//! rumqttc hands out packet ids in request order and reports each as `Outgoing::Publish`,
//! so requests are matched to packet ids in that order. On any connection error the
//! client and its request queue are dropped whole and rebuilt: a request queued for a dead
//! connection can then never be matched to a later packet id.
//!
//! On an MQTT 5 broker each message carries its content type, payload format and
//! deduplication key (user property `message_id`), and a PUBACK or PUBREC with an error
//! reason code is the broker refusing the message.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rumqttc::QoS;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::mqtt_publish_link::{self, Event};
use super::mqtt_settings::MqttSettings;
use super::publish::{Answer, Confirm, Delivery, Envelope};
use crate::backoff::Backoff;

type Done = oneshot::Sender<Result<Delivery, String>>;

struct Request {
    topic: String,
    message: Envelope,
    done: Done,
}

/// Publishes to one MQTT broker with one QoS and retain flag.
pub struct MqttPublisher {
    requests: mpsc::Sender<Request>,
    connected: Arc<AtomicBool>,
}

impl MqttPublisher {
    /// `window` bounds the publishes in flight (sent, not yet confirmed).
    pub fn start(
        settings: MqttSettings,
        client_id: String,
        qos: QoS,
        retain: bool,
        window: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(window);
        let connected = Arc::new(AtomicBool::new(false));
        let link = Link {
            qos,
            retain,
            window,
            connected: connected.clone(),
        };
        tokio::spawn(run(settings, client_id, link, rx));
        MqttPublisher {
            requests: tx,
            connected,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub async fn publish(&self, topic: &str, message: Envelope) -> Result<Confirm, String> {
        let (done, answer) = oneshot::channel();
        self.requests
            .send(Request {
                topic: topic.to_string(),
                message,
                done,
            })
            .await
            .map_err(|_| "the MQTT publisher stopped".to_string())?;
        Ok(Box::pin(async move {
            match answer.await {
                Ok(Ok(delivery)) => Ok(Answer {
                    delivery,
                    returned: Vec::new(),
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("the MQTT publisher stopped".into()),
            }
        }))
    }
}

/// How the connection publishes, and where it reports whether it is up.
struct Link {
    qos: QoS,
    retain: bool,
    window: usize,
    connected: Arc<AtomicBool>,
}

async fn run(
    settings: MqttSettings,
    client_id: String,
    link: Link,
    mut requests: mpsc::Receiver<Request>,
) {
    let Link {
        qos,
        retain,
        window,
        connected: up,
    } = link;
    let mut backoff = Backoff::new();
    loop {
        // A clean session: what was in flight on a lost connection is published again by
        // the route, never silently by the client.
        let (client, mut eventloop) = mqtt_publish_link::open(&settings, &client_id, window);
        let mut connected = false;
        let mut sent: VecDeque<Done> = VecDeque::new();
        let mut unconfirmed: HashMap<u16, Done> = HashMap::new();
        let failure = loop {
            tokio::select! {
                event = eventloop.poll() => match event {
                    Ok(Event::Connected) => {
                        connected = true;
                        up.store(true, Ordering::Relaxed);
                        backoff.reset();
                        info!(broker = %settings.name, endpoint = %settings.endpoint(), "publisher connected");
                    }
                    Ok(Event::Sent(pkid)) => {
                        if let Some(done) = sent.pop_front() {
                            if qos == QoS::AtMostOnce {
                                let _ = done.send(Ok(Delivery::Confirmed));
                            } else {
                                unconfirmed.insert(pkid, done);
                            }
                        }
                    }
                    Ok(Event::Answered(pkid, delivery)) => {
                        if let Some(done) = unconfirmed.remove(&pkid) {
                            let _ = done.send(Ok(delivery));
                        }
                    }
                    Ok(Event::Other) => {}
                    Err(e) => break e,
                },
                request = requests.recv(), if connected && sent.len() + unconfirmed.len() < window => {
                    let Some(request) = request else {
                        client.try_disconnect();
                        return;
                    };
                    // Take whatever else is already waiting, up to the window, in one turn.
                    let mut next = Some(request);
                    while let Some(request) = next.take() {
                        match client.try_publish(request.topic, qos, retain, request.message) {
                            Ok(()) => sent.push_back(request.done),
                            Err(e) => {
                                let _ = request.done.send(Err(e));
                            }
                        }
                        if sent.len() + unconfirmed.len() < window {
                            next = requests.try_recv().ok();
                        }
                    }
                }
            }
        };
        up.store(false, Ordering::Relaxed);
        let lost = sent.len() + unconfirmed.len();
        for done in sent.drain(..).chain(unconfirmed.drain().map(|(_, d)| d)) {
            let _ = done.send(Err(format!("broker connection lost: {failure}")));
        }
        let delay = backoff.next_delay();
        warn!(broker = %settings.name, endpoint = %settings.endpoint(), error = %settings.explain(&failure), unconfirmed = lost, retry_in = ?delay, "publisher connection lost");
        tokio::time::sleep(delay).await;
    }
}
