//! Publishing with broker confirmation, over MQTT or AMQP: what outbound routes use.

use super::amqp_publish::AmqpPublisher;
use super::mqtt_publish::MqttPublisher;
use super::publish::{Address, Envelope, Pending};

/// A broker connection that confirms what it publishes.
pub enum Publisher {
    Mqtt(MqttPublisher),
    Amqp(AmqpPublisher),
}

impl Publisher {
    /// Opens the connection if it is not open yet.
    pub async fn connect(&self) -> Result<(), String> {
        match self {
            Publisher::Mqtt(_) => Ok(()),
            Publisher::Amqp(p) => p.connect().await,
        }
    }

    pub fn is_connected(&self) -> bool {
        match self {
            Publisher::Mqtt(p) => p.is_connected(),
            Publisher::Amqp(p) => p.is_connected(),
        }
    }

    /// Hands one message to the broker; the returned future resolves once the broker has
    /// answered, so many publishes can be in flight at once.
    pub async fn publish(&self, to: &Address, message: Envelope) -> Result<Pending, String> {
        match self {
            Publisher::Mqtt(p) => Ok(Pending {
                message_id: None,
                confirm: p.publish(&to.topic, message).await?,
            }),
            Publisher::Amqp(p) => p.publish(&to.exchange, &to.topic, message).await,
        }
    }
}
