//! Resolved settings of one MQTT broker, built from its configuration block, and the
//! rumqttc options they give: what the MQTT source and publisher connect with.

use std::time::Duration;

use rumqttc::{MqttOptions, QoS, Transport};

use crate::config::{self, Broker, Qos};

pub use crate::config::MqttVersion;

/// MQTT's own ceiling on a packet; rumqttc's default (10 kB) would turn a large payload into
/// an endless reconnect loop. MQTT 3.1.1 cannot tell the broker a smaller limit, so a
/// 3.1.1 subscriber takes every message and dead-letters the oversized ones.
const MAX_PACKET: usize = config::size::MQTT_MAX_PACKET as usize;

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
