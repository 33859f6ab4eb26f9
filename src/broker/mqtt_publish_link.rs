//! One MQTT publisher connection, in either protocol version: rumqttc's 3.1.1 and 5 clients
//! behind the few operations the publisher needs.

use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::mqttbytes::v5::{self as v5b, PubAckReason, PubRecReason, PublishProperties};
use rumqttc::{Outgoing, Packet, QoS};

use super::mqtt_settings::{MqttSettings, MqttVersion};
use super::publish::{Delivery, Envelope, MESSAGE_ID_PROPERTY};

pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the connection reports.
pub enum Event {
    Connected,
    /// The next queued publish went out with this packet id.
    Sent(u16),
    /// The broker's final answer for a packet id.
    Answered(u16, Delivery),
    Other,
}

/// A clean-session publisher connection as `client_id`, with up to `window` publishes in
/// flight.
pub fn open(settings: &MqttSettings, client_id: &str, window: usize) -> (Client, EventLoop) {
    let inflight = u16::try_from(window).unwrap_or(u16::MAX).max(1);
    match settings.version {
        MqttVersion::V311 => {
            let mut options = settings.options(client_id, true);
            options.set_inflight(inflight);
            let (client, eventloop) = settings.client(options, window.max(1));
            (Client::V4(client), EventLoop::V4(Box::new(eventloop)))
        }
        MqttVersion::V5 => {
            let mut options = settings.options_v5();
            options
                .set_client_id(client_id.to_string())
                .set_clean_start(true)
                .set_session_expiry_interval(None)
                .set_outgoing_inflight_upper_limit(inflight);
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, window.max(1));
            (Client::V5(client), EventLoop::V5(Box::new(eventloop)))
        }
    }
}

impl Client {
    /// Queues one publish; MQTT 3.1.1 has no properties, so there only the payload goes.
    pub fn try_publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        message: Envelope,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos, retain, message.payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let properties = properties(&message);
                c.try_publish_with_properties(
                    topic,
                    qos_v5(qos),
                    retain,
                    message.payload,
                    properties,
                )
                .map_err(|e| e.to_string())
            }
        }
    }

    pub fn try_disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

impl EventLoop {
    pub async fn poll(&mut self) -> Result<Event, String> {
        match self {
            EventLoop::V4(eventloop) => {
                Ok(match eventloop.poll().await.map_err(|e| e.to_string())? {
                    rumqttc::Event::Incoming(Packet::ConnAck(_)) => Event::Connected,
                    rumqttc::Event::Outgoing(Outgoing::Publish(pkid)) => Event::Sent(pkid),
                    rumqttc::Event::Incoming(Packet::PubAck(ack)) => {
                        Event::Answered(ack.pkid, Delivery::Confirmed)
                    }
                    rumqttc::Event::Incoming(Packet::PubComp(comp)) => {
                        Event::Answered(comp.pkid, Delivery::Confirmed)
                    }
                    _ => Event::Other,
                })
            }
            EventLoop::V5(eventloop) => {
                Ok(match eventloop.poll().await.map_err(|e| e.to_string())? {
                    rumqttc::v5::Event::Incoming(v5b::Packet::ConnAck(_)) => Event::Connected,
                    rumqttc::v5::Event::Outgoing(Outgoing::Publish(pkid)) => Event::Sent(pkid),
                    rumqttc::v5::Event::Incoming(v5b::Packet::PubAck(ack)) => {
                        let delivery = match ack.reason {
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                                Delivery::Confirmed
                            }
                            refused => refused_by_broker("PUBACK", &refused),
                        };
                        Event::Answered(ack.pkid, delivery)
                    }
                    // A refused QoS 2 publish ends at PUBREC: no PUBCOMP will come.
                    rumqttc::v5::Event::Incoming(v5b::Packet::PubRec(rec))
                        if !matches!(
                            rec.reason,
                            PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                        ) =>
                    {
                        Event::Answered(rec.pkid, refused_by_broker("PUBREC", &rec.reason))
                    }
                    rumqttc::v5::Event::Incoming(v5b::Packet::PubComp(comp)) => {
                        Event::Answered(comp.pkid, Delivery::Confirmed)
                    }
                    _ => Event::Other,
                })
            }
        }
    }
}

fn refused_by_broker(packet: &str, reason: &dyn std::fmt::Debug) -> Delivery {
    Delivery::Rejected {
        kind: "nacked",
        reason: format!("the broker refused the message: {packet} reason {reason:?}"),
    }
}

/// What an MQTT 5 message says about itself.
fn properties(message: &Envelope) -> PublishProperties {
    // 1 promises UTF-8, which the broker and subscribers may check: only when it holds.
    let utf8 = std::str::from_utf8(&message.payload).is_ok();
    let mut user_properties = vec![(MESSAGE_ID_PROPERTY.to_string(), message.message_id.clone())];
    if let Some((route, position)) = &message.origin {
        user_properties.push(("route".into(), route.clone()));
        user_properties.push(("position".into(), position.clone()));
    }
    PublishProperties {
        payload_format_indicator: Some(u8::from(utf8)),
        content_type: Some(message.content_type.to_string()),
        user_properties,
        ..PublishProperties::default()
    }
}

fn qos_v5(qos: QoS) -> V5QoS {
    match qos {
        QoS::AtMostOnce => V5QoS::AtMostOnce,
        QoS::AtLeastOnce => V5QoS::AtLeastOnce,
        QoS::ExactlyOnce => V5QoS::ExactlyOnce,
    }
}
