//! `brokers:` entries: where a broker is, how mqdb signs in, and what it holds from it.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::duration;
use super::env::{EnvString, Secret};
use super::size;
use super::values::OneOrMany;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// `mqtt://`, `mqtts://`, `ws://`, `wss://` (MQTT over WebSockets, path `/mqtt` by
    /// default), `amqp://` or `amqps://`, then `host:port`.
    pub url: Spanned<EnvString>,
    /// HTTP CONNECT proxy: `http://[user[:password]@]host:port`, or `none`. Without it, the
    /// environment's `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` decide.
    #[serde(default)]
    pub proxy: Option<Spanned<Secret>>,
    /// File holding the proxy user's password; trailing newlines are removed.
    #[serde(default)]
    pub proxy_password_file: Option<EnvString>,
    /// How long one connection attempt (TCP, proxy, TLS, WebSocket, MQTT/AMQP handshake) may
    /// take before it counts as failed.
    #[serde(
        default = "super::database::default_connect_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// MQTT client id; keep it stable so the broker keeps the session between restarts.
    /// Defaults to `mqdb-<broker name>`.
    #[serde(default)]
    pub client_id: Option<EnvString>,
    /// User name for the broker.
    #[serde(default)]
    pub username: Option<EnvString>,
    /// Password for the broker (prefer `password_file`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password; trailing newlines are removed.
    #[serde(default)]
    pub password_file: Option<EnvString>,
    /// TLS settings for `mqtts://`, `wss://` and `amqps://`.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// MQTT keep-alive interval.
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "duration::deserialize"
    )]
    pub keep_alive: Duration,
    /// Start a clean session on every connect (loses messages queued while mqdb was away).
    #[serde(default)]
    pub clean_session: bool,
    /// How many unacknowledged messages the bridge holds from this broker before it stops
    /// reading from the connection.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The largest message payload taken from this broker (a number of bytes, or e.g.
    /// `16MiB`); a larger one becomes a dead letter (`too_large`) with its size. MQTT 5
    /// tells the broker this limit (Maximum Packet Size), and the broker discards larger
    /// messages itself.
    #[serde(
        default = "default_max_message_bytes",
        deserialize_with = "size::deserialize"
    )]
    pub max_message_bytes: u64,
    /// The payload bytes the bridge holds from this broker before it stops reading from it
    /// (at least `max_message_bytes`): back-pressure counts bytes as well as messages.
    #[serde(
        default = "default_max_in_flight_bytes",
        deserialize_with = "size::deserialize"
    )]
    pub max_in_flight_bytes: u64,
    /// MQTT protocol version of the subscriber: `3.1.1` or `5` (user properties become
    /// `header.NAME`).
    #[serde(default)]
    pub mqtt_version: MqttVersion,
}

/// The MQTT protocol version a subscriber speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MqttVersion {
    #[default]
    V311,
    V5,
}

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match OneOrMany::deserialize(d)?.0.as_slice() {
            [v] if v == "5" || v == "5.0" => Ok(MqttVersion::V5),
            [v] if v == "3.1.1" || v == "3" || v == "4" => Ok(MqttVersion::V311),
            _ => Err(serde::de::Error::custom("mqtt_version must be 3.1.1 or 5")),
        }
    }
}

/// The protocol a broker speaks, from its URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Mqtt,
    Amqp,
}

impl Broker {
    pub fn kind(&self) -> Option<BrokerKind> {
        match self.url.value.split_once("://").map(|(scheme, _)| scheme) {
            Some("mqtt" | "mqtts" | "ws" | "wss") => Some(BrokerKind::Mqtt),
            Some("amqp" | "amqps") => Some(BrokerKind::Amqp),
            _ => None,
        }
    }
}

pub fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

pub fn default_max_in_flight() -> usize {
    10_000
}

pub fn default_max_message_bytes() -> u64 {
    16 << 20
}

pub fn default_max_in_flight_bytes() -> u64 {
    64 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with the certificate authorities to trust (default: none but these).
    #[serde(default)]
    pub ca_file: Option<EnvString>,
    /// PEM client certificate, for brokers that require client authentication.
    #[serde(default)]
    pub cert_file: Option<EnvString>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub key_file: Option<EnvString>,
    /// The name the broker's certificate must carry, and the name sent in SNI, when it is not
    /// the host in the URL (an IP address, a tunnel, a port forward).
    #[serde(default)]
    pub server_name: Option<EnvString>,
    /// ALPN protocols offered in the handshake, e.g. `[mqtt]` for cloud brokers on port 443.
    #[serde(default)]
    pub alpn: Vec<EnvString>,
}
