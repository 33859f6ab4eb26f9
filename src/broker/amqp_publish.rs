//! AMQP 0.9.1 publishing with lapin: publisher confirms, persistent messages, `mandatory`
//! so that unroutable messages come back and become dead letters.

use std::sync::Arc;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::Mutex;
use tracing::info;

use super::amqp::AmqpSettings;
use super::publish::{Answer, Delivery, Envelope, Pending};

/// Publishes to one AMQP broker over one confirming channel, reconnecting on demand.
pub struct AmqpPublisher {
    settings: Box<AmqpSettings>,
    channel: Arc<Mutex<Option<(Connection, Channel)>>>,
}

impl AmqpPublisher {
    pub fn new(settings: AmqpSettings) -> Self {
        AmqpPublisher {
            settings: Box::new(settings),
            channel: Arc::new(Mutex::new(None)),
        }
    }

    /// Connects now rather than at the first publish, so health shows the broker early.
    pub async fn connect(&self) -> Result<(), String> {
        self.channel().await.map(|_| ())
    }

    pub fn is_connected(&self) -> bool {
        self.channel.try_lock().is_ok_and(|slot| {
            slot.as_ref()
                .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected())
        })
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
        message: Envelope,
    ) -> Result<Pending, String> {
        let channel = self.channel().await?;
        let Envelope {
            payload,
            message_id,
            content_type,
            origin,
        } = message;
        let mut properties = BasicProperties::default();
        if let Some((route, position)) = origin {
            let mut headers = lapin::types::FieldTable::default();
            for (key, value) in [("route", route), ("position", position)] {
                headers.insert(
                    key.into(),
                    lapin::types::AMQPValue::LongString(value.into()),
                );
            }
            properties = properties.with_headers(headers);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                properties
                    .with_delivery_mode(2)
                    // Also pairs a returned message with its publish: rows of one poll have
                    // different ids, or are the same row with the same address and fate.
                    .with_message_id(message_id.as_str().into())
                    .with_content_type(content_type.into())
                    .with_timestamp(now),
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
