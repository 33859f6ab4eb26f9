//! Resolved settings of one MQTT broker, built from its configuration block, and the
//! rumqttc options they give: what the MQTT source and publisher connect with.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};

use super::reach;
use crate::config::{self, Broker, Qos};
use crate::net::{self, ProxyChoice};

pub use crate::config::MqttVersion;

/// MQTT's own ceiling on a packet; rumqttc's default (10 kB) would turn a large payload into
/// an endless reconnect loop. MQTT 3.1.1 cannot tell the broker a smaller limit, so a
/// 3.1.1 subscriber takes every message and dead-letters the oversized ones.
const MAX_PACKET: usize = config::size::MQTT_MAX_PACKET as usize;

/// Room for the topic and properties around the largest payload an MQTT 5 subscriber asks
/// for: a topic is at most 64 KiB.
const PACKET_OVERHEAD: u64 = 80 << 10;

/// How the MQTT connection is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    Tcp,
    Tls,
    /// MQTT over WebSockets.
    Ws,
    Wss,
}

impl Carrier {
    fn is_tls(self) -> bool {
        matches!(self, Carrier::Tls | Carrier::Wss)
    }
}

/// Resolved settings of one MQTT broker.
#[derive(Clone)]
pub struct MqttSettings {
    pub name: String,
    host: String,
    port: u16,
    pub carrier: Carrier,
    /// `ws[s]://host:port/path` for WebSockets.
    ws_url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the broker's certificate is checked against.
    tls_name: String,
    pub proxy: ProxyChoice,
    pub connect_timeout: Duration,
    pub client_id: String,
    /// The configured client id, before any instance or slot suffix.
    pub configured_client_id: String,
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
        let parts = net::url::credentials(broker.url.value.as_str());
        let url = parts.bare.as_str();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("broker {name}: `{url}` is not a URL"))?;
        let (carrier, default_port) = match scheme {
            "mqtt" => (Carrier::Tcp, 1883),
            "mqtts" => (Carrier::Tls, 8883),
            "ws" => (Carrier::Ws, 80),
            "wss" => (Carrier::Wss, 443),
            other => return Err(format!("broker {name}: unsupported scheme {other}://")),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let (host, port) = net::url::host_port(authority, default_port)
            .ok_or_else(|| format!("broker {name}: bad port in `{url}`"))?;
        let path = if path.is_empty() || path == "/" {
            "/mqtt"
        } else {
            path
        };
        let ws_url = format!("{scheme}://{authority}{path}");
        let tls_settings = reach::tls_settings(name, broker)?;
        let tls_name = tls_settings.name_for(&host).to_string();
        let tls = if carrier.is_tls() {
            Some(tls_settings.client_config(&format!("broker {name}"))?)
        } else {
            None
        };
        let proxy = reach::proxy_choice(name, broker, carrier.is_tls(), &host)?;
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
        let configured_client_id = broker
            .client_id
            .as_ref()
            .map(|c| c.0.clone())
            .unwrap_or_else(|| format!("mqdb-{name}"));
        Ok(MqttSettings {
            name: name.to_string(),
            host,
            port,
            carrier,
            ws_url,
            tls,
            tls_name,
            proxy,
            connect_timeout: broker.connect_timeout,
            client_id: configured_client_id.clone(),
            configured_client_id,
            credentials,
            keep_alive: broker.keep_alive,
            clean_session: broker.clean_session,
            max_in_flight: broker.max_in_flight,
            max_message_bytes: broker.max_message_bytes,
            max_in_flight_bytes: broker.max_in_flight_bytes,
            version: broker.mqtt_version,
        })
    }

    /// A 3.1.1 client and its event loop on `options` (from [`Self::options`]), with the
    /// connect timeout, which 3.1.1 keeps on the event loop.
    pub fn client(
        &self,
        options: MqttOptions,
        capacity: usize,
    ) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, capacity);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(self.timeout_secs());
        eventloop.set_network_options(network);
        (client, eventloop)
    }

    /// rumqttc options; `client_id` may differ from the configured one (for `check`).
    pub fn options(&self, client_id: &str, clean_session: bool) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.broker_addr(), self.port);
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_session(clean_session)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_request_channel_capacity(1024);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        options.set_transport(self.transport());
        if let Some(proxy) = self.rumqttc_proxy() {
            options.set_proxy(proxy);
        }
        options
    }

    /// MQTT 5 options for the subscriber: a persistent session must be given an expiry, and
    /// the receive maximum asks the broker to respect the in-flight limit.
    pub fn options_v5(&self) -> rumqttc::v5::MqttOptions {
        let mut options =
            rumqttc::v5::MqttOptions::new(&self.client_id, self.broker_addr(), self.port);
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_start(self.clean_session)
            .set_manual_acks(true)
            .set_max_packet_size(Some(self.max_packet_v5()))
            .set_receive_maximum(Some(u16::try_from(self.max_in_flight).unwrap_or(u16::MAX)))
            .set_connection_timeout(self.timeout_secs())
            .set_request_channel_capacity(1024);
        if !self.clean_session {
            options.set_session_expiry_interval(Some(u32::MAX));
        }
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        options.set_transport(self.transport());
        if let Some(proxy) = self.rumqttc_proxy() {
            options.set_proxy(proxy);
        }
        options
    }

    /// For WebSockets rumqttc takes the whole URL where it otherwise takes the host.
    fn broker_addr(&self) -> &str {
        match self.carrier {
            Carrier::Ws | Carrier::Wss => &self.ws_url,
            Carrier::Tcp | Carrier::Tls => &self.host,
        }
    }

    fn transport(&self) -> Transport {
        let tls = || TlsConfiguration::Rustls(self.tls.clone().expect("TLS settings"));
        match self.carrier {
            Carrier::Tcp => Transport::Tcp,
            Carrier::Tls => Transport::Tls(tls()),
            Carrier::Ws => Transport::Ws,
            Carrier::Wss => Transport::Wss(tls()),
        }
    }

    fn rumqttc_proxy(&self) -> Option<rumqttc::Proxy> {
        let proxy = self.proxy.proxy.as_ref()?;
        Some(rumqttc::Proxy {
            ty: rumqttc::ProxyType::Http,
            auth: match &proxy.user {
                Some(user) => rumqttc::ProxyAuth::Basic {
                    username: user.clone(),
                    password: proxy.password.clone().unwrap_or_default(),
                },
                None => rumqttc::ProxyAuth::None,
            },
            addr: proxy.host.clone(),
            port: proxy.port,
        })
    }

    /// rumqttc counts whole seconds; a connect attempt gets at least one.
    fn timeout_secs(&self) -> u64 {
        self.connect_timeout.as_secs_f64().ceil().max(1.0) as u64
    }

    /// The Maximum Packet Size an MQTT 5 subscriber announces: the broker discards larger
    /// messages for this client instead of sending them (MQTT 5 §3.1.2.11.4).
    pub fn max_packet_v5(&self) -> u32 {
        (self.max_message_bytes + PACKET_OVERHEAD).min(MAX_PACKET as u64) as u32
    }

    /// Where mqdb connects, for log lines: `host:port`, or the URL for WebSockets.
    pub fn endpoint(&self) -> String {
        match self.carrier {
            Carrier::Ws | Carrier::Wss => self.ws_url.clone(),
            Carrier::Tcp | Carrier::Tls => net::url::authority(&self.host, self.port),
        }
    }

    /// rumqttc's error text (3.1.1 and 5 word them alike) as a sentence naming the hop that
    /// failed: name resolution, the proxy, TLS, the WebSocket upgrade or the broker's answer.
    pub fn explain(&self, error: &str) -> String {
        let via = match &self.proxy.proxy {
            Some(p) => format!("proxy {p}"),
            None => self.endpoint(),
        };
        let tls_name = || self.tls_name.clone();
        if let Some(rest) = error.strip_prefix("Proxy Connect: ") {
            let proxy = self
                .proxy
                .proxy
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let target = net::url::authority(&self.host, self.port);
            if let Some(code) = rest
                .split("not equal 200: ")
                .nth(1)
                .and_then(|c| c.trim_end_matches('.').trim().parse::<u16>().ok())
            {
                return format!(
                    "proxy {proxy} answered {code} {}{} (CONNECT {target})",
                    reason(code),
                    net::tunnel::hint(code)
                );
            }
            if rest.starts_with("Socket connect: ") {
                let text = io_text(rest);
                if text.contains("lookup") {
                    return format!("cannot resolve the name of proxy {proxy}: {text}");
                }
                return format!("cannot reach proxy {proxy}: {text}");
            }
            return format!("proxy {proxy} failed the CONNECT to {target}: {rest}");
        }
        if let Some(rest) = error.strip_prefix("TLS: ") {
            return format!("TLS handshake with {} failed: {rest}", tls_name());
        }
        if error.starts_with("Websocket response validation") {
            return format!(
                "WebSocket upgrade at {} succeeded without the mqtt subprotocol: the path may \
                 not be the broker's MQTT endpoint",
                self.ws_url
            );
        }
        if let Some(rest) = error.strip_prefix("Websocket: ") {
            if rest.contains("certificate") || rest.contains("TLS") || rest.contains("tls") {
                return format!("TLS handshake with {} failed: {rest}", tls_name());
            }
            return format!("WebSocket upgrade at {} failed: {rest}", self.ws_url);
        }
        if let Some(rest) = error.strip_prefix("I/O: ") {
            if rest.contains("lookup") || rest.contains("resolve") {
                return format!("cannot resolve the name of {via}: {rest}");
            }
            if self.tls.is_some() && (rest.contains("certificate") || rest.contains("alert")) {
                return format!("TLS handshake with {} failed: {rest}", tls_name());
            }
            return format!("cannot connect to {via}: {rest}");
        }
        if error.starts_with("Connection refused, return code") {
            return format!("the broker refused the MQTT connection (CONNACK): {error}");
        }
        if error == "Network timeout" || error == "Timeout" {
            return format!(
                "connecting to {} did not complete within {:?} (connect_timeout{})",
                self.endpoint(),
                self.connect_timeout,
                match &self.proxy.proxy {
                    Some(p) => format!(", through proxy {p}"),
                    None => String::new(),
                }
            );
        }
        error.to_string()
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// The usual reason phrase of an HTTP status a proxy answers with.
fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// `Socket connect: <io error>.` without rumqttc's wrapping.
fn io_text(text: &str) -> &str {
    text.trim_start_matches("Socket connect: ")
        .trim_end_matches('.')
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
    fn connection_errors_name_the_hop_that_failed() {
        let via_proxy = settings(
            "    url: wss://broker.example:443/mqtt\n    proxy: http://u:secret@proxy.corp:3128\n    connect_timeout: 3s\n",
        )
        .expect("settings");
        let cases = [
            (
                "Proxy Connect: Proxy connect: The HTTP code is not equal 200: 407.",
                "proxy http://u@proxy.corp:3128 answered 407 Proxy Authentication Required",
            ),
            (
                "Proxy Connect: Proxy connect: The HTTP code is not equal 200: 403.",
                "answered 403 Forbidden; the proxy's rules do not allow CONNECT",
            ),
            (
                "Proxy Connect: Socket connect: Connection refused (os error 111).",
                "cannot reach proxy http://u@proxy.corp:3128: Connection refused",
            ),
            (
                "Proxy Connect: Socket connect: failed to lookup address information: x.",
                "cannot resolve the name of proxy http://u@proxy.corp:3128",
            ),
            (
                "Websocket: HTTP error: 404 Not Found",
                "WebSocket upgrade at wss://broker.example:443/mqtt failed: HTTP error: 404",
            ),
            (
                "TLS: I/O: invalid peer certificate: NotValidForName",
                "TLS handshake with broker.example failed",
            ),
            (
                "Connection refused, return code: `NotAuthorized`",
                "the broker refused the MQTT connection (CONNACK)",
            ),
            (
                "Network timeout",
                "did not complete within 3s (connect_timeout, through proxy http://u@proxy.corp:3128)",
            ),
        ];
        for (error, expected) in cases {
            let said = via_proxy.explain(error);
            assert!(said.contains(expected), "{error:?} became {said:?}");
            assert!(!said.contains("secret"), "{said}");
        }
        let direct = settings("    url: mqtt://no.such.host:1883\n").expect("settings");
        let said = direct.explain("I/O: failed to lookup address information: Name unknown");
        assert!(
            said.starts_with("cannot resolve the name of no.such.host:1883"),
            "{said}"
        );
        assert_eq!(
            direct.explain("Mqtt state: Io error"),
            "Mqtt state: Io error",
            "an error of a connection that was up stays as rumqttc says it"
        );
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
