//! AMQP 0.9.1 publishing with lapin: publisher confirms, persistent messages, `mandatory`
//! so that unroutable messages come back and become dead letters.

use std::sync::Arc;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tracing::info;

use std::sync::atomic::{AtomicU64, Ordering};

use super::publish::{Answer, Delivery, Pending};
use crate::config::{self, Broker};

/// Resolved settings of one AMQP broker.
#[derive(Clone)]
pub struct AmqpSettings {
    pub name: String,
    uri: String,
    ca: Option<String>,
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
        let ca = match broker.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
            Some(path) => Some(std::fs::read_to_string(path.as_str()).map_err(|e| {
                format!(
                    "broker {name}: cannot read tls.ca_file {}: {e}",
                    path.as_str()
                )
            })?),
            None => None,
        };
        Ok(AmqpSettings {
            name: name.to_string(),
            uri,
            ca,
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
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca.clone(),
        };
        Connection::connect_with_config(&self.uri, ConnectionProperties::default(), tls, runtime)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.endpoint()))
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

/// Publishes to one AMQP broker over one confirming channel, reconnecting on demand.
pub struct AmqpPublisher {
    settings: AmqpSettings,
    next_id: AtomicU64,
    channel: Arc<Mutex<Option<(Connection, Channel)>>>,
}

impl AmqpPublisher {
    pub fn new(settings: AmqpSettings) -> Self {
        AmqpPublisher {
            settings,
            next_id: AtomicU64::new(1),
            channel: Arc::new(Mutex::new(None)),
        }
    }

    async fn channel(&self) -> Result<Channel, String> {
        let mut slot = self.channel.lock().await;
        if let Some((conn, channel)) = slot.as_ref()
            && conn.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *slot = None;
        let conn = self.settings.connect().await?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        info!(broker = %self.settings.name, endpoint = %self.settings.endpoint(), "publisher connected");
        *slot = Some((conn, channel.clone()));
        Ok(channel)
    }

    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: Vec<u8>,
    ) -> Result<Pending, String> {
        let channel = self.channel().await?;
        // Unique within this process run: it pairs returned messages with their publish.
        let message_id = format!(
            "mqdb-{}-{}",
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(message_id.as_str().into()),
            )
            .await;
        let confirm = match confirm {
            Ok(c) => c,
            Err(e) => {
                *self.channel.lock().await = None;
                return Err(format!("publish to exchange {exchange:?} failed: {e}"));
            }
        };
        let confirm = Box::pin(async move {
            let returned =
                |r: Option<lapin::message::BasicReturnMessage>| -> Vec<(String, String)> {
                    r.into_iter()
                        .map(|r| {
                            let id = r
                                .properties
                                .message_id()
                                .as_ref()
                                .map(|m| m.to_string())
                                .unwrap_or_default();
                            let reason = format!(
                                "returned by the broker: {} {}",
                                r.reply_code, r.reply_text
                            );
                            (id, reason)
                        })
                        .collect()
                };
            match confirm.await {
                Ok(Confirmation::Ack(r)) => Ok(Answer {
                    delivery: Delivery::Confirmed,
                    returned: returned(r),
                }),
                Ok(Confirmation::NotRequested) => Ok(Answer {
                    delivery: Delivery::Confirmed,
                    returned: Vec::new(),
                }),
                Ok(Confirmation::Nack(r)) => Ok(Answer {
                    delivery: Delivery::Rejected {
                        kind: "nacked",
                        reason: "the broker refused the message (basic.nack)".into(),
                    },
                    returned: returned(r),
                }),
                Err(e) => Err(format!("no confirm from the broker: {e}")),
            }
        });
        Ok(Pending {
            message_id: Some(message_id),
            confirm,
        })
    }
}
