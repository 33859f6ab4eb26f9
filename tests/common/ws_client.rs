//! Test clients for MQTT over WebSockets (`ws://`, `wss://`), on rumqttc's websocket
//! transport, so a test can publish to and subscribe at a broker that has no TCP listener.

use std::path::Path;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use super::mqtt::tuned;
use super::{Publisher, Subscriber, unique};

/// Where a WebSocket MQTT broker is and how a test client logs in.
#[derive(Clone, Debug)]
pub struct WsBroker {
    /// `ws://HOST:PORT/PATH` or `wss://…`.
    pub url: String,
    /// The CA that signed the server's certificate (PEM), for `wss://`.
    pub ca: Option<std::path::PathBuf>,
    pub credentials: Option<(String, String)>,
}

impl WsBroker {
    pub fn new(url: &str) -> WsBroker {
        WsBroker {
            url: url.to_owned(),
            ca: None,
            credentials: None,
        }
    }

    pub fn ca(mut self, ca: &Path) -> WsBroker {
        self.ca = Some(ca.to_owned());
        self
    }

    pub fn login(mut self, user: &str, password: &str) -> WsBroker {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Client options for `client_id` over this transport.
    pub fn options(&self, client_id: &str, clean_session: bool) -> MqttOptions {
        let port = url_port(&self.url);
        let mut o = tuned(MqttOptions::new(client_id, &self.url, port), clean_session);
        if let Some((user, password)) = &self.credentials {
            o.set_credentials(user, password);
        }
        let transport = match self.url.starts_with("ws://") {
            true => Transport::Ws,
            false => Transport::Wss(self.tls()),
        };
        o.set_transport(transport);
        o
    }

    /// Trust in the test CA, for `wss://`.
    fn tls(&self) -> TlsConfiguration {
        let ca = self.ca.as_ref();
        let ca = ca.unwrap_or_else(|| panic!("a wss:// test broker needs its CA: {}", self.url));
        let ca = std::fs::read(ca).unwrap_or_else(|e| panic!("read {}: {e}", ca.display()));
        // rumqttc builds its rustls config on the process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (alpn, client_auth) = (None, None);
        TlsConfiguration::Simple {
            ca,
            alpn,
            client_auth,
        }
    }

    /// A clean-session publisher with a unique client id.
    pub fn publisher(&self) -> Publisher {
        Publisher::connect_with(self.options(&unique("wspub"), true))
    }

    /// A clean-session subscriber of `filter` at QoS 1.
    pub fn subscribe(&self, filter: &str) -> Subscriber {
        Subscriber::connect_options(self.options(&unique("wssub"), true), &[(filter, 1)])
    }

    /// Creates `client_id`'s persistent session subscribed to `filter` at QoS 1, then
    /// disconnects, so the broker queues matching messages until the client comes back.
    pub fn persistent_session(&self, client_id: &str, filter: &str) {
        let options = self.options(client_id, false);
        Subscriber::connect_options(options, &[(filter, 1)]).disconnect();
    }
}

/// The port of a `ws://` / `wss://` URL (explicit, or the scheme's default).
fn url_port(url: &str) -> u16 {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let port = authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
    port.unwrap_or(if url.starts_with("wss://") { 443 } else { 80 })
}
