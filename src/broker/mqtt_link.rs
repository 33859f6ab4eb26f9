//! One MQTT subscriber connection, in either protocol version: rumqttc's 3.1.1 and 5
//! clients behind the few operations the source needs. MQTT 5 adds user properties,
//! which routes read as `header.NAME`.

use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::mqttbytes::v5 as v5b;
use rumqttc::{Outgoing, Packet, QoS, SubscribeReasonCode};
use serde_json::{Map, Value as Json};

use super::mqtt_settings::{MqttSettings, MqttVersion};

/// The event loop side: reading packets.
pub enum Link {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// The client side: acknowledging, subscribing, disconnecting.
#[derive(Clone)]
pub enum LinkClient {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// What acknowledges one received message.
pub enum AckToken {
    V4(rumqttc::Publish),
    V5(v5b::Publish),
}

/// A received publish.
pub struct Received {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 user properties.
    pub headers: Map<String, Json>,
    /// `None` at QoS 0.
    pub ack: Option<AckToken>,
}

pub enum Incoming {
    Connected {
        session_present: bool,
    },
    Publish(Box<Received>),
    SubscribeRefused,
    /// The broker granted a subscription.
    Subscribed,
    /// The broker confirmed an unsubscription: it routes nothing more for those filters.
    Unsubscribed,
    Disconnecting,
    Other,
}

pub enum AckError {
    /// rumqttc's request channel is full; try again later.
    Full,
    Closed,
}

/// Opens a persistent (or clean) subscriber session as configured.
pub fn connect(settings: &MqttSettings, capacity: usize) -> (LinkClient, Link) {
    match settings.version {
        MqttVersion::V311 => {
            let options = settings.options(&settings.client_id, settings.clean_session);
            let (client, eventloop) = settings.client(options, capacity);
            (LinkClient::V4(client), Link::V4(Box::new(eventloop)))
        }
        MqttVersion::V5 => {
            let options = settings.options_v5();
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, capacity);
            (LinkClient::V5(client), Link::V5(Box::new(eventloop)))
        }
    }
}

impl Link {
    pub async fn poll(&mut self) -> Result<Incoming, String> {
        match self {
            Link::V4(eventloop) => match eventloop.poll().await.map_err(|e| e.to_string())? {
                rumqttc::Event::Incoming(Packet::ConnAck(ack)) => Ok(Incoming::Connected {
                    session_present: ack.session_present,
                }),
                rumqttc::Event::Incoming(Packet::Publish(p)) => {
                    // A PUBACK needs only the packet id: no copy of the topic.
                    let ack = (p.qos != QoS::AtMostOnce).then(|| {
                        let mut bare = rumqttc::Publish::new("", p.qos, Vec::new());
                        bare.pkid = p.pkid;
                        AckToken::V4(bare)
                    });
                    Ok(Incoming::Publish(Box::new(Received {
                        topic: p.topic,
                        payload: p.payload,
                        qos: p.qos as u8,
                        retain: p.retain,
                        headers: Map::new(),
                        ack,
                    })))
                }
                rumqttc::Event::Incoming(Packet::SubAck(ack))
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure)) =>
                {
                    Ok(Incoming::SubscribeRefused)
                }
                rumqttc::Event::Incoming(Packet::SubAck(_)) => Ok(Incoming::Subscribed),
                rumqttc::Event::Incoming(Packet::UnsubAck(_)) => Ok(Incoming::Unsubscribed),
                rumqttc::Event::Outgoing(Outgoing::Disconnect) => Ok(Incoming::Disconnecting),
                _ => Ok(Incoming::Other),
            },
            Link::V5(eventloop) => match eventloop.poll().await.map_err(|e| e.to_string())? {
                rumqttc::v5::Event::Incoming(v5b::Packet::ConnAck(ack)) => {
                    Ok(Incoming::Connected {
                        session_present: ack.session_present,
                    })
                }
                rumqttc::v5::Event::Incoming(v5b::Packet::Publish(p)) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let headers = p
                        .properties
                        .as_ref()
                        .map(|props| user_properties(&props.user_properties))
                        .unwrap_or_default();
                    let qos = p.qos;
                    let ack = (qos != V5QoS::AtMostOnce).then(|| {
                        let mut bare = v5b::Publish::new("", qos, Vec::new(), None);
                        bare.pkid = p.pkid;
                        AckToken::V5(bare)
                    });
                    Ok(Incoming::Publish(Box::new(Received {
                        topic,
                        payload: p.payload,
                        qos: qos as u8,
                        retain: p.retain,
                        headers,
                        ack,
                    })))
                }
                rumqttc::v5::Event::Incoming(v5b::Packet::SubAck(ack))
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| !matches!(c, v5b::SubscribeReasonCode::Success(_))) =>
                {
                    Ok(Incoming::SubscribeRefused)
                }
                rumqttc::v5::Event::Incoming(v5b::Packet::SubAck(_)) => Ok(Incoming::Subscribed),
                rumqttc::v5::Event::Incoming(v5b::Packet::UnsubAck(_)) => {
                    Ok(Incoming::Unsubscribed)
                }
                rumqttc::v5::Event::Outgoing(Outgoing::Disconnect) => Ok(Incoming::Disconnecting),
                _ => Ok(Incoming::Other),
            },
        }
    }
}

impl LinkClient {
    pub fn try_ack(&self, token: &AckToken) -> Result<(), AckError> {
        match (self, token) {
            (LinkClient::V4(c), AckToken::V4(p)) => c.try_ack(p).map_err(|e| match e {
                rumqttc::ClientError::TryRequest(_) => AckError::Full,
                _ => AckError::Closed,
            }),
            (LinkClient::V5(c), AckToken::V5(p)) => c.try_ack(p).map_err(|e| match e {
                rumqttc::v5::ClientError::TryRequest(_) => AckError::Full,
                _ => AckError::Closed,
            }),
            _ => Err(AckError::Closed),
        }
    }

    pub async fn subscribe(&self, filters: Vec<(String, u8)>) -> Result<(), String> {
        match self {
            LinkClient::V4(c) => c
                .subscribe_many(
                    filters
                        .into_iter()
                        .map(|(f, q)| rumqttc::SubscribeFilter::new(f, qos_v4(q))),
                )
                .await
                .map_err(|e| e.to_string()),
            LinkClient::V5(c) => c
                .subscribe_many(
                    filters
                        .into_iter()
                        .map(|(f, q)| v5b::Filter::new(f, qos_v5(q))),
                )
                .await
                .map_err(|e| e.to_string()),
        }
    }

    pub async fn unsubscribe(&self, filter: String) -> Result<(), String> {
        match self {
            LinkClient::V4(c) => c.unsubscribe(filter).await.map_err(|e| e.to_string()),
            LinkClient::V5(c) => c.unsubscribe(filter).await.map_err(|e| e.to_string()),
        }
    }

    pub async fn disconnect(&self) {
        let _ = match self {
            LinkClient::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            LinkClient::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

fn qos_v4(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

fn qos_v5(level: u8) -> V5QoS {
    match level {
        0 => V5QoS::AtMostOnce,
        2 => V5QoS::ExactlyOnce,
        _ => V5QoS::AtLeastOnce,
    }
}

/// MQTT 5 user properties as headers. A name may repeat and every value is kept: one value
/// is a string, several are an array of strings in the order sent (`header.x` takes the
/// first; a dead letter keeps them all).
fn user_properties(properties: &[(String, String)]) -> Map<String, Json> {
    let mut headers = Map::new();
    for (name, value) in properties {
        let value = Json::String(value.clone());
        match headers.get_mut(name) {
            None => {
                headers.insert(name.clone(), value);
            }
            Some(Json::Array(values)) => values.push(value),
            Some(first) => *first = Json::Array(vec![first.take(), value]),
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_user_properties_keep_every_value() {
        let props = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let headers = user_properties(&props(&[("a", "1"), ("b", "x"), ("a", "2"), ("a", "3")]));
        assert_eq!(
            Json::Object(headers),
            serde_json::json!({"a": ["1", "2", "3"], "b": "x"})
        );
    }
}
