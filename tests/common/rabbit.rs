//! A RabbitMQ client for tests (the shared broker on 127.0.0.1:5672, guest/guest), usable from
//! sync tests: it owns a small tokio runtime and blocks on each call.
//!
//! The tests declare their own (uniquely named) exchanges and queues; they are deleted when
//! the [`Rabbit`] is dropped, also when the test panics.

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

/// A connection and a channel to the shared RabbitMQ, plus what the test declared.
pub struct Rabbit {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    channel: Channel,
    exchanges: Vec<String>,
    queues: Vec<String>,
}

impl Rabbit {
    /// The shared broker, directly (not through a proxy).
    pub const URL: &'static str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    /// The shared broker reached at `127.0.0.1:port` (e.g. through a [`super::TcpProxy`]).
    pub fn url_via(port: u16) -> String {
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
    }

    /// `127.0.0.1:5672`, for a [`super::TcpProxy`] target.
    pub fn addr() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 5672))
    }

    /// Connects to [`Rabbit::URL`] and opens one channel.
    pub fn connect() -> Rabbit {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime for the AMQP test client");
        let (conn, channel) = rt.block_on(async {
            let conn = Connection::connect(Rabbit::URL, ConnectionProperties::default())
                .await
                .unwrap_or_else(|e| panic!("connect {}: {e}", Rabbit::URL));
            let channel = conn.create_channel().await.expect("open an AMQP channel");
            (conn, channel)
        });
        Rabbit {
            rt,
            conn,
            channel,
            exchanges: Vec::new(),
            queues: Vec::new(),
        }
    }

    /// Declares a non-durable exchange of `kind` (`direct`, `topic`, `fanout`); deleted on drop.
    pub fn declare_exchange(&mut self, name: &str, kind: &str) {
        let kind = match kind {
            "direct" => ExchangeKind::Direct,
            "topic" => ExchangeKind::Topic,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            other => ExchangeKind::Custom(other.to_owned()),
        };
        self.rt
            .block_on(self.channel.exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ))
            .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
        self.exchanges.push(name.to_owned());
    }

    /// Declares a non-durable queue (reachable through the default exchange by its name);
    /// deleted on drop.
    pub fn declare_queue(&mut self, queue: &str) {
        self.rt
            .block_on(self.channel.queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            ))
            .unwrap_or_else(|e| panic!("declare queue {queue}: {e}"));
        self.queues.push(queue.to_owned());
    }

    /// Declares a non-durable queue bound to `exchange` with `routing_key`; deleted on drop.
    pub fn declare_bound_queue(&mut self, queue: &str, exchange: &str, routing_key: &str) {
        self.rt
            .block_on(async {
                self.channel
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                self.channel
                    .queue_bind(
                        queue.into(),
                        exchange.into(),
                        routing_key.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            })
            .unwrap_or_else(|e| panic!("declare queue {queue} bound to {exchange}: {e}"));
        self.queues.push(queue.to_owned());
    }

    /// Takes every message currently in `queue` (basic.get with no_ack until it is empty), in
    /// queue order.
    pub fn take_all(&self, queue: &str) -> Vec<AmqpMessage> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            loop {
                let got = self
                    .channel
                    .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                    .await
                    .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"));
                match got {
                    Some(m) => out.push(AmqpMessage {
                        exchange: m.delivery.exchange.as_str().to_owned(),
                        routing_key: m.delivery.routing_key.as_str().to_owned(),
                        payload: m.delivery.data.clone(),
                        delivery_mode: *m.delivery.properties.delivery_mode(),
                    }),
                    None => return out,
                }
            }
        })
    }
}

/// A message taken from a queue by [`Rabbit::take_all`].
#[derive(Clone, Debug)]
pub struct AmqpMessage {
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// 2 = persistent.
    pub delivery_mode: Option<u8>,
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        let conn = &self.conn;
        self.rt.block_on(async move {
            for q in queues {
                let _ = channel
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for x in exchanges {
                let _ = channel
                    .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = conn.close(200, "bye".into()).await;
        });
    }
}
