//! A message as it travels from a broker source through a route.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json, json};
use tokio::sync::mpsc;

/// The instance this process runs as (`instance:`, else the host name), for
/// `meta.instance`: one name for the whole process, set once when `run` starts.
static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn set_instance(name: &str) {
    let _ = INSTANCE.set(name.to_string());
}

/// This process's instance name; empty outside `run`.
pub fn instance() -> &'static str {
    INSTANCE.get().map_or("", String::as_str)
}

/// One received message and the handle that acknowledges it.
#[derive(Debug)]
pub struct Message {
    /// The MQTT topic, or the AMQP routing key.
    pub topic: String,
    /// Shared with the buffer it was read into: no copy on the way to the route.
    pub payload: Bytes,
    pub received_at: DateTime<Utc>,
    pub broker: Arc<str>,
    pub origin: Origin,
    /// AMQP headers or MQTT 5 user properties.
    pub headers: Map<String, Json>,
    pub ack: AckHandle,
}

/// What only one protocol knows about a message.
#[derive(Debug, Clone)]
pub enum Origin {
    Mqtt {
        qos: u8,
        retain: bool,
    },
    Amqp {
        queue: Arc<str>,
        exchange: String,
        redelivered: bool,
    },
}

impl Message {
    /// The message a dead letter was made from, as far as mapping it again needs: its
    /// metadata comes from the dead letter's headers, and a CSV record gets its header
    /// line back in front of it when `with_header` (the route still reads headers).
    pub fn from_dead_letter(
        source: &str,
        payload: &[u8],
        headers: &Json,
        with_header: bool,
    ) -> Message {
        let text = |key: &str| headers.get(key).and_then(Json::as_str).unwrap_or("");
        let broker: Arc<str> = Arc::from(text("broker"));
        let received_at = DateTime::parse_from_rfc3339(text("received_at"))
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        let (topic, origin) = match headers.get("queue").and_then(Json::as_str) {
            Some(queue) => (
                text("routing_key").to_string(),
                Origin::Amqp {
                    queue: Arc::from(queue),
                    exchange: text("exchange").to_string(),
                    redelivered: headers
                        .get("redelivered")
                        .and_then(Json::as_bool)
                        .unwrap_or(false),
                },
            ),
            None => (
                source.to_string(),
                Origin::Mqtt {
                    qos: headers.get("qos").and_then(Json::as_u64).unwrap_or(1) as u8,
                    retain: headers
                        .get("retain")
                        .and_then(Json::as_bool)
                        .unwrap_or(false),
                },
            ),
        };
        let payload = match headers.get("csv_header").and_then(Json::as_str) {
            Some(header) if with_header => [header.as_bytes(), b"\n", payload].concat(),
            _ => payload.to_vec(),
        }
        .into();
        Message {
            topic,
            payload,
            received_at,
            broker,
            origin,
            headers: headers
                .get("headers")
                .and_then(Json::as_object)
                .cloned()
                .unwrap_or_default(),
            ack: AckHandle::none(),
        }
    }

    /// What a dead letter names as its source: the topic, or the queue.
    pub fn source(&self) -> &str {
        match &self.origin {
            Origin::Mqtt { .. } => &self.topic,
            Origin::Amqp { queue, .. } => queue,
        }
    }

    /// Everything but the payload, as a dead letter keeps it: enough to map the message
    /// again later.
    pub fn metadata(&self) -> Json {
        let mut meta = match &self.origin {
            Origin::Mqtt { qos, retain } => json!({
                "broker": &*self.broker,
                "qos": qos,
                "retain": retain,
            }),
            Origin::Amqp {
                queue,
                exchange,
                redelivered,
            } => json!({
                "broker": &*self.broker,
                "queue": &**queue,
                "exchange": exchange,
                "routing_key": &self.topic,
                "redelivered": redelivered,
            }),
        };
        meta["received_at"] = Json::String(self.received_at.to_rfc3339());
        if !self.headers.is_empty() {
            meta["headers"] = Json::Object(self.headers.clone());
        }
        meta
    }
}

/// Tells the source that a route is finished with a message: its row is committed or its
/// dead letter stored. The source acknowledges to the broker in receive order.
#[derive(Debug)]
pub struct AckHandle {
    seq: u64,
    /// `None` for a message no broker waits for.
    done: Option<mpsc::Sender<Vec<u64>>>,
}

impl AckHandle {
    /// `done` takes the sequence numbers of finished messages, a batch at a time.
    pub fn new(seq: u64, done: mpsc::Sender<Vec<u64>>) -> Self {
        AckHandle {
            seq,
            done: Some(done),
        }
    }

    /// For a message no broker waits for (a replayed dead letter).
    pub fn none() -> Self {
        AckHandle { seq: 0, done: None }
    }

    /// Reports a batch of finished messages with one report per source, not one per
    /// message: each report may wake the source's task.
    pub async fn complete_all(handles: impl IntoIterator<Item = AckHandle>) {
        let mut group: Option<(mpsc::Sender<Vec<u64>>, Vec<u64>)> = None;
        for handle in handles {
            let Some(done) = handle.done else { continue };
            match &mut group {
                Some((to, seqs)) if to.same_channel(&done) => seqs.push(handle.seq),
                _ => {
                    if let Some((to, seqs)) = group.replace((done, vec![handle.seq])) {
                        report(&to, seqs).await;
                    }
                }
            }
        }
        if let Some((to, seqs)) = group {
            report(&to, seqs).await;
        }
    }
}

async fn report(done: &mpsc::Sender<Vec<u64>>, seqs: Vec<u64>) {
    // A closed channel means the source is gone; the broker will redeliver instead.
    let _ = done.send(seqs).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: &Message, payload: &[u8], extra: Json) -> Message {
        let mut headers = m.metadata();
        if let (Json::Object(h), Json::Object(e)) = (&mut headers, extra) {
            h.extend(e);
        }
        Message::from_dead_letter(m.source(), payload, &headers, true)
    }

    fn back_headers(m: &Message) -> Json {
        let mut h = m.metadata();
        h["csv_header"] = json!("a;b");
        h
    }

    #[test]
    fn dead_letters_give_their_message_back() {
        let amqp = Message {
            topic: "plant.north".into(),
            payload: Bytes::from_static(b"1;2"),
            received_at: DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            broker: "rabbit".into(),
            origin: Origin::Amqp {
                queue: "q".into(),
                exchange: "x".into(),
                redelivered: true,
            },
            headers: json!({"site": "north"}).as_object().unwrap().clone(),
            ack: AckHandle::none(),
        };
        let back = round_trip(&amqp, b"1;2", json!({"line": 2, "csv_header": "a;b"}));
        assert_eq!(back.topic, "plant.north");
        assert_eq!(&back.payload[..], b"a;b\n1;2");
        // A route that no longer reads headers must not take the header line for data.
        let bare = Message::from_dead_letter("q", b"1;2", &back_headers(&amqp), false);
        assert_eq!(&bare.payload[..], b"1;2");
        assert_eq!(back.received_at, amqp.received_at);
        assert_eq!(back.headers, amqp.headers);
        assert!(matches!(
            back.origin,
            Origin::Amqp { ref queue, ref exchange, redelivered: true } if &**queue == "q" && exchange == "x"
        ));

        let mqtt = Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"{}"),
            received_at: Utc::now(),
            broker: "m".into(),
            origin: Origin::Mqtt {
                qos: 2,
                retain: true,
            },
            headers: Map::new(),
            ack: AckHandle::none(),
        };
        let back = round_trip(&mqtt, b"{}", json!({}));
        assert_eq!(back.topic, "a/b");
        assert_eq!(&back.payload[..], b"{}");
        assert!(matches!(
            back.origin,
            Origin::Mqtt {
                qos: 2,
                retain: true
            }
        ));
    }
}
