//! Publishing with broker confirmation, over MQTT or AMQP: what outbound routes use.

use std::future::Future;
use std::pin::Pin;

use super::amqp::AmqpPublisher;
use super::mqtt_publish::MqttPublisher;

/// What the broker said about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Confirmed: PUBACK/PUBCOMP (MQTT), or an AMQP publisher confirm.
    Confirmed,
    /// The broker will not take it (unroutable, nacked): a dead letter.
    Rejected { kind: &'static str, reason: String },
}

/// The broker's answer for one publish; an `Err` is an outage (retry, never dead-letter).
pub type Confirm = Pin<Box<dyn Future<Output = Result<Delivery, String>> + Send>>;

/// Where a message goes.
#[derive(Debug, Clone)]
pub struct Address {
    /// MQTT topic, or AMQP routing key.
    pub topic: String,
    /// AMQP exchange; empty for MQTT.
    pub exchange: String,
}

impl Address {
    /// How the address reads in logs and dead letters.
    pub fn describe(&self) -> String {
        if self.exchange.is_empty() {
            self.topic.clone()
        } else {
            format!("{}/{}", self.exchange, self.topic)
        }
    }
}

/// A broker connection that confirms what it publishes.
pub enum Publisher {
    Mqtt(MqttPublisher),
    Amqp(AmqpPublisher),
}

impl Publisher {
    /// Hands one message to the broker; the returned future resolves once the broker has
    /// answered, so many publishes can be in flight at once.
    pub async fn publish(&self, to: &Address, payload: Vec<u8>) -> Result<Confirm, String> {
        match self {
            Publisher::Mqtt(p) => p.publish(&to.topic, payload).await,
            Publisher::Amqp(p) => p.publish(&to.exchange, &to.topic, payload).await,
        }
    }
}
