//! A message as it travels from a broker source through a route.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json, json};
use tokio::sync::mpsc;

/// One received message and the handle that acknowledges it.
#[derive(Debug)]
pub struct Message {
    /// The MQTT topic, or the AMQP routing key.
    pub topic: String,
    pub payload: Vec<u8>,
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
    done: mpsc::Sender<u64>,
}

impl AckHandle {
    pub fn new(seq: u64, done: mpsc::Sender<u64>) -> Self {
        AckHandle { seq, done }
    }

    pub async fn complete(self) {
        // A closed channel means the source is gone; the broker will redeliver instead.
        let _ = self.done.send(self.seq).await;
    }
}
