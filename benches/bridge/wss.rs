//! MQTT over WebSockets with TLS, through an HTTP CONNECT proxy: a private RabbitMQ node
//! with web_mqtt (the test CA's certificate) behind a private Squid with basic
//! authentication. The bare subscriber takes the same path as mqdb (wss through the same
//! proxy); the publisher reaches the broker directly over ws.

use rumqttc::MqttOptions;

use crate::common::{RabbitNode, Squid, WsBroker, make_pki, temp_dir, unique};

/// The broker, the proxy in front of it and the CA.
pub struct WssPath {
    pub node: RabbitNode,
    pub squid: Squid,
    pki: tempfile::TempDir,
}

impl WssPath {
    pub fn start() -> WssPath {
        let pki = temp_dir("bench-pki");
        make_pki(pki.path());
        let node = RabbitNode::start_web_mqtt(pki.path());
        let squid = Squid::start("bench", "bench-secret", &[node.wss_port]);
        WssPath { node, squid, pki }
    }

    fn ca(&self) -> std::path::PathBuf {
        self.pki.path().join("ca.pem")
    }

    /// Options over wss through the proxy, as mqdb connects.
    pub fn subscriber_options(&self) -> MqttOptions {
        let broker = WsBroker::new(&self.node.wss_url("localhost"))
            .ca(&self.ca())
            .login("guest", "guest");
        let mut options = broker.options(&unique("count"), true);
        options.set_proxy(rumqttc::Proxy {
            ty: rumqttc::ProxyType::Http,
            auth: rumqttc::ProxyAuth::Basic {
                username: self.squid.user.clone(),
                password: self.squid.password.clone(),
            },
            addr: "127.0.0.1".into(),
            port: self.squid.port,
        });
        options
    }

    /// Options of the publisher, straight to the broker over ws.
    pub fn publisher_options(&self) -> MqttOptions {
        let broker = WsBroker::new(&self.node.ws_url()).login("guest", "guest");
        broker.options(&unique("barepub"), true)
    }

    /// mqdb's broker block: wss through the proxy, with the test CA.
    pub fn broker_block(&self) -> String {
        format!(
            "{{ url: \"{}\", client_id: \"{}\", username: guest, password: guest, \
             proxy: \"{}\", tls: {{ ca_file: \"{}\" }} }}",
            self.node.wss_url("localhost"),
            unique("mqdb"),
            self.squid.url(),
            self.ca().display()
        )
    }

    /// Waits until the proxy logged a tunnel to the broker (when one closes) and returns
    /// how many it logged: the runs took the proxy, not a direct path.
    pub fn tunnels(&self) -> usize {
        let target = format!("localhost:{}", self.node.wss_port);
        let wait = std::time::Duration::from_secs(30);
        self.squid.wait_connect(&target, "TCP_TUNNEL/200", wait);
        self.squid.connects_to(&target).len()
    }
}
