//! What a confirming publisher hands over and answers, shared by the MQTT and AMQP
//! publishers and the routes that publish.

use std::future::Future;
use std::pin::Pin;

/// What the broker said about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Confirmed: PUBACK/PUBCOMP (MQTT), or an AMQP publisher confirm.
    Confirmed,
    /// The broker will not take it (unroutable, nacked): a dead letter.
    Rejected { kind: &'static str, reason: String },
}

/// The broker's answer for one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub delivery: Delivery,
    /// Messages the broker returned as unroutable, by message id, with the reason. AMQP
    /// sends a return before the ack of its message, but lapin hands it over with whichever
    /// confirm it resolves next, so a return is matched to its message only once all
    /// confirms of a poll are in.
    pub returned: Vec<(String, String)>,
}

/// The broker's answer for one publish; an `Err` is an outage (retry, never dead-letter).
pub type Confirm = Pin<Box<dyn Future<Output = Result<Answer, String>> + Send>>;

/// One message to publish and what it says about itself to consumers.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub payload: Vec<u8>,
    /// The deduplication key: AMQP `message_id`, the MQTT 5 user property `message_id`.
    pub message_id: String,
    /// AMQP `content_type`, MQTT 5 Content Type.
    pub content_type: &'static str,
    /// The outbound route and the row's position (its track values as a JSON array), for
    /// consumers that drop what a takeover published twice: MQTT 5 user properties and
    /// AMQP headers `route` and `position`. `None` for dead-letter copies.
    pub origin: Option<(String, String)>,
}

/// The MQTT 5 user property that carries [`Envelope::message_id`].
pub const MESSAGE_ID_PROPERTY: &str = "message_id";

/// A publish in flight: its message id (AMQP), and the broker's answer to come.
pub struct Pending {
    pub message_id: Option<String>,
    pub confirm: Confirm,
}

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
