//! AMQP 0.9.1 connections with lapin: the broker's settings, credentials, TLS (CA, client
//! certificate, server name, ALPN) and the HTTP proxy the connection may go through.
//! Consuming is in `amqp_source`, publishing in `amqp_publish`.

use std::sync::Arc;
use std::time::Duration;

use async_rs::traits::Reactor;
use async_rs::{Tokio, TokioRuntime};
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use super::reach;
use crate::config::{self, Broker};
use crate::net::{self, ProxyChoice};

/// The socket lapin speaks AMQP over, on the tokio runtime.
type Stream = AsyncTcpStream<<Tokio as Reactor>::TcpStream>;

/// Resolved settings of one AMQP broker.
#[derive(Clone)]
pub struct AmqpSettings {
    pub name: String,
    uri: String,
    host: String,
    port: u16,
    /// `None` for amqp://.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the TLS session is for (SNI and verification).
    tls_name: String,
    has_client_cert: bool,
    pub proxy: ProxyChoice,
    pub connect_timeout: Duration,
}

impl AmqpSettings {
    pub fn from_config(name: &str, broker: &Broker) -> Result<Self, String> {
        let mut uri = broker.url.value.to_string();
        let password = config::password(
            &format!("broker {name}"),
            &broker.password,
            &broker.password_file,
        )?;
        if let Some(user) = broker.username.as_ref().filter(|u| !u.is_empty()) {
            let (scheme, rest) = uri.split_once("://").unwrap_or(("amqp", &uri));
            let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
            let auth = match &password {
                Some(p) => format!("{}:{}", encode(user), encode(p)),
                None => encode(user),
            };
            uri = format!("{scheme}://{auth}@{host}");
        }
        // The heartbeat is what notices a path that went silent (packets dropped): the same
        // interval as an MQTT broker's keep-alive, unless the URL sets its own.
        if !uri.contains("heartbeat=") {
            let sep = if uri.contains('?') { '&' } else { '?' };
            uri = format!(
                "{uri}{sep}heartbeat={}",
                broker.keep_alive.as_secs().clamp(1, u64::from(u16::MAX))
            );
        }
        let parsed: AMQPUri = uri
            .parse()
            .map_err(|e| format!("broker {name}: bad AMQP URL: {e}"))?;
        let secure = uri.starts_with("amqps");
        let host = parsed.authority.host.clone();
        let settings = reach::tls_settings(name, broker)?;
        let tls = if secure {
            Some(settings.client_config(&format!("broker {name}"))?)
        } else {
            None
        };
        Ok(AmqpSettings {
            name: name.to_string(),
            proxy: reach::proxy_choice(name, broker, secure, &host)?,
            tls_name: settings.name_for(&host).to_string(),
            has_client_cert: settings.client.is_some(),
            port: parsed.authority.port,
            host,
            uri,
            tls,
            connect_timeout: broker.connect_timeout,
        })
    }

    /// host:port, never the credentials.
    pub fn endpoint(&self) -> String {
        net::url::authority(&self.host, self.port)
    }

    pub async fn connect(&self) -> Result<Connection, String> {
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let uri: AMQPUri = self.uri.parse().map_err(|e: String| e)?;
        let hop = Hop::default();
        let opened = {
            let (settings, hop) = (self.clone(), hop.clone());
            // lapin runs this for the connection's socket: TCP to the proxy or the broker,
            // CONNECT through the proxy, then TLS.
            Connection::connector(
                uri,
                runtime,
                async move |_uri, runtime| {
                    settings
                        .open_stream(&runtime, &hop)
                        .await
                        .map_err(|e| lapin::Error::from(std::io::Error::other(e)))
                },
                ConnectionProperties::default(),
            )
        };
        match tokio::time::timeout(self.connect_timeout, opened).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.describe(&hop, e.to_string())),
            Err(_) => Err(format!(
                "{} did not complete within {:?} (connect_timeout)",
                hop.current(self),
                self.connect_timeout
            )),
        }
    }

    async fn open_stream(&self, runtime: &TokioRuntime, hop: &Hop) -> Result<Stream, String> {
        let (dial_host, dial_port) = match &self.proxy.proxy {
            Some(p) => (p.host.clone(), p.port),
            None => (self.host.clone(), self.port),
        };
        let what = match &self.proxy.proxy {
            Some(p) => format!("proxy {p}"),
            None => self.endpoint(),
        };
        hop.set(Step::Resolve);
        let addrs: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host((dial_host.as_str(), dial_port))
                .await
                .map_err(|e| format!("cannot resolve the name {dial_host} ({what}): {e}"))?
                .collect();
        hop.set(Step::Tcp);
        let mut last = None;
        let mut opened = None;
        for addr in addrs {
            match AsyncTcpStream::connect(runtime, addr).await {
                Ok(s) => {
                    opened = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = opened.ok_or_else(|| match last {
            Some(e) => format!("cannot connect to {what}: {e}"),
            None => format!("the name {dial_host} ({what}) has no address"),
        })?;
        if let Some(proxy) = &self.proxy.proxy {
            hop.set(Step::Proxy);
            net::tunnel::connect(&mut stream, proxy, &self.host, self.port).await?;
        }
        match &self.tls {
            Some(config) => {
                hop.set(Step::Tls);
                let connector = RustlsConnector::from(config.clone());
                stream
                    .into_rustls(&connector, &self.tls_name)
                    .await
                    .map_err(|e| format!("TLS handshake with {} failed: {e}", self.tls_name))
            }
            None => Ok(stream),
        }
        .inspect(|_| hop.set(Step::Amqp))
    }

    fn describe(&self, hop: &Hop, text: String) -> String {
        let text = text.strip_prefix("IO error: ").unwrap_or(&text).to_string();
        let step = hop.get();
        let mut message = if matches!(step, Step::Amqp) {
            format!("AMQP handshake with {} failed: {text}", self.endpoint())
        } else {
            text
        };
        // A broker that requires a client certificate often resets the connection before
        // its alert arrives, which then says nothing about why.
        let refused = ["reset", "Certificate", "HandshakeFailure"]
            .iter()
            .any(|hint| message.contains(hint));
        if self.tls.is_some() && !self.has_client_cert && refused {
            message.push_str(
                "; the broker may require a client certificate (tls.cert_file and tls.key_file)",
            );
        }
        message
    }
}

/// How far a connection attempt got, for the message of one that fails or times out.
#[derive(Clone, Copy, Default)]
enum Step {
    #[default]
    Resolve,
    Tcp,
    Proxy,
    Tls,
    Amqp,
}

#[derive(Clone, Default)]
struct Hop(Arc<std::sync::Mutex<Step>>);

impl Hop {
    fn set(&self, step: Step) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = step;
    }

    fn get(&self) -> Step {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self, settings: &AmqpSettings) -> String {
        match (self.get(), &settings.proxy.proxy) {
            (Step::Resolve, Some(p)) => format!("resolving the name of proxy {p}"),
            (Step::Resolve, None) => format!("resolving the name {}", settings.host),
            (Step::Tcp, Some(p)) => format!("the TCP connection to proxy {p}"),
            (Step::Tcp, None) => format!("the TCP connection to {}", settings.endpoint()),
            (Step::Proxy, Some(p)) => format!("proxy {p}'s answer to CONNECT"),
            (Step::Proxy, None) => "the proxy".to_string(),
            (Step::Tls, _) => format!("the TLS handshake with {}", settings.tls_name),
            (Step::Amqp, _) => format!("the AMQP handshake with {}", settings.endpoint()),
        }
    }
}

/// Percent-encodes a URI user-info part.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
