//! A RabbitMQ client for sync tests (it owns a small tokio runtime and blocks on each call),
//! and waits on the broker's view of a queue while a bridge consumes it.
//!
//! What a test declares, or adopts by name ([`Rabbit::adopt_queue`]) before the bridge
//! declares it, is deleted when the [`Rabbit`] is dropped, also when the test panics.

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use std::process::{Command, Stdio};

use super::{Bridge, Ran, Route, wait_for};

pub struct Rabbit {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    channel: Channel,
    /// A second channel in confirm mode, for publishing.
    confirms: Channel,
    exchanges: Vec<String>,
    queues: Vec<String>,
}

/// An AMQP header value for [`Rabbit::publish`].
#[derive(Clone, Debug)]
pub enum Header {
    Str(String),
    Int(i64),
    /// A signed 32-bit integer (what many clients send for small numbers).
    Int32(i32),
    Bool(bool),
    Float(f64),
    /// A decimal: `value × 10^-scale`, the value a signed 32-bit integer as pika and the
    /// Java client send it.
    Decimal {
        scale: u8,
        value: i32,
    },
}

impl Header {
    fn to_amqp(&self) -> AMQPValue {
        match self {
            Header::Str(s) => AMQPValue::LongString(s.as_str().into()),
            Header::Int(i) => AMQPValue::LongLongInt(*i),
            Header::Int32(i) => AMQPValue::LongInt(*i),
            Header::Bool(b) => AMQPValue::Boolean(*b),
            Header::Float(f) => AMQPValue::Double(*f),
            Header::Decimal { scale, value } => {
                let (scale, value) = (*scale, *value as u32);
                AMQPValue::DecimalValue(lapin::types::DecimalValue { scale, value })
            }
        }
    }
}

/// One message for [`Rabbit::publish_all`]: routing key, payload, headers.
pub type Outgoing<'a> = (String, Vec<u8>, Vec<(&'a str, Header)>);

/// One queue as `rabbitmqctl list_queues` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// Ready + unacknowledged.
    pub messages: u64,
    pub ready: u64,
    pub unacked: u64,
    pub durable: bool,
}

/// One exchange as `rabbitmqctl list_exchanges` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeInfo {
    /// `topic`, `direct`, `fanout`, `headers`.
    pub kind: String,
    pub durable: bool,
}

/// Runs `cmd -q ARGS --no-table-headers` (a `rabbitmqctl`) and returns its stdout lines
/// split on tabs (about a second per call).
pub(crate) fn ctl_rows(mut cmd: Command, args: &[&str]) -> Vec<Vec<String>> {
    let ran = Ran::of(cmd.arg("-q").args(args).arg("--no-table-headers"));
    ran.code(0)
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').map(|f| f.trim().to_owned()).collect())
        .collect()
}

/// The row of `list` (a `rabbitmqctl` listing, its fields split on spaces) whose first
/// field is `name`.
fn ctl_row(list: &str, name: &str) -> Option<Vec<String>> {
    let list: Vec<&str> = list.split(' ').collect();
    let rows = ctl_rows(Command::new("rabbitmqctl"), &list);
    rows.into_iter().find(|r| r[0] == name)
}

fn parse_bool_field(text: &str, what: &str) -> bool {
    text.parse()
        .unwrap_or_else(|_| panic!("rabbitmqctl: {what} is {text:?}, not true/false"))
}

impl Rabbit {
    pub const URL: &'static str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    /// The shared broker reached at `127.0.0.1:port` (e.g. through a [`super::TcpProxy`]).
    pub fn url_via(port: u16) -> String {
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
    }

    /// `127.0.0.1:5672`, for a [`super::TcpProxy`] target.
    pub fn addr() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 5672))
    }

    pub fn connect() -> Rabbit {
        Rabbit::connect_to(Rabbit::URL)
    }

    /// Connects to the broker at `url` and opens a channel, and one in confirm mode.
    pub fn connect_to(url: &str) -> Rabbit {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime for the AMQP test client");
        let (conn, channel, confirms) = rt.block_on(async {
            let conn = Connection::connect(url, ConnectionProperties::default())
                .await
                .unwrap_or_else(|e| panic!("connect {url}: {e}"));
            let channel = conn.create_channel().await.expect("open an AMQP channel");
            let confirms = conn.create_channel().await.expect("open an AMQP channel");
            let select = confirms.confirm_select(ConfirmSelectOptions::default());
            select.await.expect("confirm.select");
            (conn, channel, confirms)
        });
        let (exchanges, queues) = (Vec::new(), Vec::new());
        Rabbit {
            rt,
            conn,
            channel,
            confirms,
            exchanges,
            queues,
        }
    }

    /// Declares a non-durable exchange of `kind` (`direct`, `topic`, `fanout`); deleted on drop.
    pub fn declare_exchange(&mut self, name: &str, kind: &str) {
        // lapin sends any kind by its name alone.
        let kind = ExchangeKind::Custom(kind.to_owned());
        let options = ExchangeDeclareOptions::default();
        let declare = self
            .channel
            .exchange_declare(name.into(), kind, options, Default::default());
        let declared = self.rt.block_on(declare);
        declared.unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
        self.exchanges.push(name.to_owned());
    }

    /// Declares a non-durable queue; deleted on drop.
    pub fn declare_queue(&mut self, queue: &str) {
        self.declare(queue, false, None);
    }

    /// Declares a non-durable queue bound to `exchange` with `routing_key`; deleted on drop.
    pub fn declare_bound_queue(&mut self, queue: &str, exchange: &str, routing_key: &str) {
        self.declare(queue, false, Some((exchange, routing_key)));
    }

    /// Declares a durable queue (as the bridge declares the queues it consumes); deleted on
    /// drop.
    pub fn declare_durable_queue(&mut self, queue: &str) {
        self.declare(queue, true, None);
    }

    fn declare(&mut self, queue: &str, durable: bool, bind: Option<(&str, &str)>) {
        let options = QueueDeclareOptions {
            durable,
            ..QueueDeclareOptions::default()
        };
        let channel = &self.channel;
        let declared = self.rt.block_on(async {
            let table = FieldTable::default;
            channel
                .queue_declare(queue.into(), options, table())
                .await?;
            let Some((exchange, key)) = bind else {
                return Ok(());
            };
            let bind_options = QueueBindOptions::default();
            let (q, x, k) = (queue.into(), exchange.into(), key.into());
            channel.queue_bind(q, x, k, bind_options, table()).await
        });
        declared.unwrap_or_else(|e| panic!("declare queue {queue} (bound: {bind:?}): {e}"));
        self.queues.push(queue.to_owned());
    }

    /// The number of messages ready in `queue` (a passive declare; messages a consumer holds
    /// unacknowledged are not counted).
    pub fn ready_count(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declare = self
            .channel
            .queue_declare(queue.into(), passive, Default::default());
        let declared = self.rt.block_on(declare);
        let declared = declared.unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
        declared.message_count()
    }

    /// Deletes `queue` on drop, whoever declares it (e.g. the bridge). Call it before the
    /// queue may exist, so a panic anywhere later still cleans it up.
    pub fn adopt_queue(&mut self, queue: &str) {
        if !self.queues.iter().any(|q| q == queue) {
            self.queues.push(queue.to_owned());
        }
    }

    /// Deletes `exchange` on drop, whoever declares it (e.g. the bridge).
    pub fn adopt_exchange(&mut self, exchange: &str) {
        if !self.exchanges.iter().any(|x| x == exchange) {
            self.exchanges.push(exchange.to_owned());
        }
    }

    /// Publishes one persistent message (delivery mode 2) with `headers` (none if empty) and
    /// waits for the broker's publisher confirm. `exchange` "" is the default exchange.
    pub fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        headers: &[(&str, Header)],
    ) {
        let message = (routing_key.to_owned(), payload.to_vec(), headers.to_vec());
        self.publish_all(exchange, vec![message]);
    }

    /// Publishes `messages` (routing key, payload, headers) in order, persistent, all
    /// pipelined, then waits for every publisher confirm (panics on a nack).
    pub fn publish_all(&self, exchange: &str, messages: Vec<Outgoing<'_>>) {
        self.rt.block_on(async {
            let mut pending = Vec::with_capacity(messages.len());
            for (routing_key, payload, headers) in &messages {
                let mut properties = BasicProperties::default().with_delivery_mode(2);
                if !headers.is_empty() {
                    let mut table = FieldTable::default();
                    for (name, value) in headers {
                        table.insert((*name).into(), value.to_amqp());
                    }
                    properties = properties.with_headers(table);
                }
                let confirm = self
                    .confirms
                    .basic_publish(
                        exchange.into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        payload,
                        properties,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("publish to {exchange:?}/{routing_key}: {e}"));
                pending.push(confirm);
            }
            for (i, confirm) in pending.into_iter().enumerate() {
                match confirm.await {
                    Ok(Confirmation::Ack(_)) => {}
                    other => panic!("publish #{i} to {exchange:?} was not confirmed: {other:?}"),
                }
            }
        });
    }

    /// Publishes one persistent message per payload to `queue` (by the default exchange).
    pub fn publish_to_queue(&self, queue: &str, payloads: Vec<Vec<u8>>) {
        let messages = payloads
            .into_iter()
            .map(|p| (queue.to_owned(), p, Vec::new()));
        self.publish_all("", messages.collect());
    }

    /// The broker's view of `queue` (`rabbitmqctl list_queues`), `None` if it does not exist.
    pub fn queue_info(queue: &str) -> Option<QueueInfo> {
        let list = "list_queues name messages messages_ready messages_unacknowledged durable";
        let row = ctl_row(list, queue)?;
        let [_, messages, ready, unacked, durable] = &row[..] else {
            panic!("rabbitmqctl list_queues: unexpected line {row:?}");
        };
        let num = |text: &str, what: &str| -> u64 {
            let n = text.parse();
            n.unwrap_or_else(|e| panic!("rabbitmqctl: {what} of {queue} is {text:?}: {e}"))
        };
        Some(QueueInfo {
            messages: num(messages, "messages"),
            ready: num(ready, "messages_ready"),
            unacked: num(unacked, "messages_unacknowledged"),
            durable: parse_bool_field(durable, "durable"),
        })
    }

    /// The broker's view of `exchange` (`rabbitmqctl list_exchanges`), if it exists.
    pub fn exchange_info(exchange: &str) -> Option<ExchangeInfo> {
        let row = ctl_row("list_exchanges name type durable", exchange)?;
        let [_, kind, durable] = &row[..] else {
            panic!("rabbitmqctl list_exchanges: unexpected line {row:?}");
        };
        Some(ExchangeInfo {
            kind: kind.clone(),
            durable: parse_bool_field(durable, "durable"),
        })
    }

    /// Takes every message currently in `queue`, in queue order.
    pub fn take_all(&self, queue: &str) -> Vec<AmqpMessage> {
        self.take_up_to(queue, usize::MAX)
    }

    /// Takes at most `max` messages from `queue` (basic.get with no_ack until it is empty or
    /// `max` were taken), in queue order. Unlike [`Rabbit::take_all`] it returns even while
    /// something keeps filling the queue.
    pub fn take_up_to(&self, queue: &str, max: usize) -> Vec<AmqpMessage> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            while out.len() < max {
                let get = self
                    .channel
                    .basic_get(queue.into(), BasicGetOptions { no_ack: true });
                let got = get
                    .await
                    .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"));
                let Some(message) = got else { break };
                out.push(AmqpMessage::from(&message.delivery));
            }
            out
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
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    /// Seconds since the epoch.
    pub timestamp: Option<u64>,
    /// The headers whose values are strings.
    pub headers: std::collections::BTreeMap<String, String>,
}

impl From<&lapin::message::Delivery> for AmqpMessage {
    fn from(d: &lapin::message::Delivery) -> AmqpMessage {
        let p = &d.properties;
        AmqpMessage {
            exchange: d.exchange.as_str().to_owned(),
            routing_key: d.routing_key.as_str().to_owned(),
            payload: d.data.clone(),
            delivery_mode: *p.delivery_mode(),
            message_id: p.message_id().as_ref().map(|m| m.as_str().to_owned()),
            content_type: p.content_type().as_ref().map(|c| c.as_str().to_owned()),
            timestamp: *p.timestamp(),
            headers: p
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .filter_map(|(k, v)| match v {
                            lapin::types::AMQPValue::LongString(s) => {
                                Some((k.to_string(), s.to_string()))
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        let conn = &self.conn;
        let failed: Vec<String> = self.rt.block_on(async move {
            // A fresh channel for each delete: the test's may have been closed by a channel
            // error, and a failed delete closes its own.
            let mut failed = Vec::new();
            for q in queues {
                let options = QueueDeleteOptions::default();
                let deleted = match conn.create_channel().await {
                    Ok(c) => c.queue_delete(q.as_str().into(), options).await.is_ok(),
                    Err(_) => false,
                };
                if !deleted {
                    failed.push(q);
                }
            }
            for x in exchanges {
                if let Ok(c) = conn.create_channel().await {
                    let options = ExchangeDeleteOptions::default();
                    let _ = c.exchange_delete(x.as_str().into(), options).await;
                }
            }
            let _ = conn.close(200, "bye".into()).await;
            failed
        });
        // Last resort for queues (e.g. the connection is gone): the broker's own tool.
        for q in failed {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", &q])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Waits until the bridge logs that it consumes `queue` (a line with `consuming` and
/// `queue=<name>`): from then on its queue (and binding) exist.
pub fn wait_consuming(bridge: &mut Bridge, queue: &str) {
    let plain = format!("queue={queue}");
    let quoted = format!("queue=\"{queue}\"");
    let log_path = bridge.log_path.clone();
    let what = format!("the log line `consuming … {plain}`");
    wait_for(bridge, &what, || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Ok(log.lines().any(|l| {
            l.contains("consuming")
                && (l.contains(&quoted) || l.split_whitespace().any(|w| w == plain))
        }))
    });
}

/// Waits until `check` accepts the broker's view of `queue` (`Err` fails at once); returns
/// the last view.
pub fn wait_queue(
    bridge: &mut Bridge,
    queue: &str,
    what: &str,
    mut check: impl FnMut(&QueueInfo) -> Result<bool, String>,
) -> QueueInfo {
    let mut last = None;
    wait_for(bridge, &format!("queue {queue}: {what}"), || {
        let info = Rabbit::queue_info(queue).ok_or_else(|| format!("queue {queue} is gone"))?;
        last = Some(info);
        check(&info).map_err(|e| format!("{e} ({info:?})"))
    });
    last.expect("at least one look at the queue")
}

/// Waits until the broker holds nothing for `queue`: every message was acknowledged.
pub fn wait_queue_drained(bridge: &mut Bridge, queue: &str) {
    wait_queue(bridge, queue, "every message acknowledged", |q| {
        Ok(q.messages == 0 && q.unacked == 0)
    });
}

/// JSON payloads `{"id":ID,"v":"mID"}`, one per id.
pub fn id_payloads(ids: impl Iterator<Item = i64>) -> Vec<Vec<u8>> {
    ids.map(|id| format!(r#"{{"id":{id},"v":"m{id}"}}"#).into_bytes())
        .collect()
}

/// An inbound route `name` consuming `queue` from broker `r` into `table` of database `d`.
pub fn amqp_route(name: &str, queue: &str, table: &str) -> Route {
    Route::named(name)
        .set("broker", "r")
        .set("queue", queue)
        .set("database", "d")
        .set("table", table)
}
