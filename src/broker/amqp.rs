//! AMQP 0.9.1 connections with lapin: the broker's settings, credentials and TLS (CA and
//! client certificate). Consuming is in `amqp_source`, publishing in `amqp_publish`.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};

use crate::config::{self, Broker};

/// Resolved settings of one AMQP broker.
#[derive(Clone)]
pub struct AmqpSettings {
    pub name: String,
    uri: String,
    tls: OwnedTLSConfig,
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
        let read = |what: &str, path: &config::EnvString| {
            std::fs::read(path.as_str()).map_err(|e| {
                format!(
                    "broker {name}: cannot read tls.{what} {}: {e}",
                    path.as_str()
                )
            })
        };
        let tls = broker.tls.as_ref();
        let cert_chain = match tls.and_then(|t| t.ca_file.as_ref()) {
            Some(path) => Some(
                String::from_utf8(read("ca_file", path)?)
                    .map_err(|_| format!("broker {name}: tls.ca_file is not PEM text"))?,
            ),
            None => None,
        };
        let identity = match (
            tls.and_then(|t| t.cert_file.as_ref()),
            tls.and_then(|t| t.key_file.as_ref()),
        ) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read("cert_file", cert)?,
                key: read("key_file", key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "broker {name}: tls needs both cert_file and key_file"
                ));
            }
        };
        Ok(AmqpSettings {
            name: name.to_string(),
            uri,
            tls: OwnedTLSConfig {
                identity,
                cert_chain,
            },
        })
    }

    /// host:port, never the credentials.
    pub fn endpoint(&self) -> String {
        let rest = self
            .uri
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.uri);
        let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
        host.split('/').next().unwrap_or(host).to_string()
    }

    pub async fn connect(&self) -> Result<Connection, String> {
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        Connection::connect_with_config(
            &self.uri,
            ConnectionProperties::default(),
            self.tls.clone(),
            runtime,
        )
        .await
        .map_err(|e| {
            let text = e.to_string();
            let mut message = format!("cannot connect to {}: {text}", self.endpoint());
            // A broker that requires a client certificate often resets the connection before
            // its alert arrives, which then says nothing about why.
            let refused = ["reset", "Certificate", "HandshakeFailure"]
                .iter()
                .any(|hint| text.contains(hint));
            if self.uri.starts_with("amqps") && self.tls.identity.is_none() && refused {
                message.push_str(
                    "; the broker may require a client certificate (tls.cert_file and tls.key_file)",
                );
            }
            message
        })
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
