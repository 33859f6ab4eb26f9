//! AMQP 0.9.1 source: consumes one queue per route with manual acknowledgements and a
//! bounded prefetch, declares what is missing, and reconnects with backoff.
//!
//! Nothing is ever nacked or requeued by the bridge: a message it cannot finish now (the
//! database is down) stays unacknowledged, which holds the prefetch window shut, until it is
//! done or the connection closes and the broker requeues it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer, ExchangeKind};
use serde_json::{Map, Number, Value as Json};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::amqp::AmqpSettings;
use super::budget::ByteBudget;
use super::sequence::Sequencer;
use crate::backoff::Backoff;
use crate::message::{AckHandle, Message, Origin};
use crate::metrics::RouteMetrics;

/// What one route consumes.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub route: String,
    pub queue: String,
    /// Exchange and binding key.
    pub bind: Option<(String, String)>,
    pub prefetch: u16,
    pub metrics: Arc<RouteMetrics>,
}

/// A running AMQP source for one route.
pub struct AmqpSource {
    intake: watch::Sender<bool>,
    finish: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl AmqpSource {
    /// `budget` is shared by every route of the broker.
    pub fn start(
        settings: AmqpSettings,
        spec: QueueSpec,
        route: mpsc::Sender<Message>,
        budget: ByteBudget,
    ) -> AmqpSource {
        let (intake, intake_rx) = watch::channel(true);
        let (finish, finish_rx) = oneshot::channel();
        let task = tokio::spawn(consume(
            settings,
            spec,
            Handoff { route, budget },
            intake_rx,
            finish_rx,
        ));
        AmqpSource {
            intake,
            finish: Some(finish),
            task,
        }
    }

    /// Stops consuming; what is not yet handed to the route stays with the broker.
    pub fn close_intake(&self) {
        let _ = self.intake.send(false);
    }

    /// Once the route has finished: sends the last acknowledgements and closes the
    /// connection, so the broker requeues whatever is left unacknowledged.
    pub async fn shutdown(mut self, grace: Duration) {
        self.close_intake();
        if let Some(finish) = self.finish.take() {
            let _ = finish.send(());
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            warn!("the AMQP connection did not close in time");
            self.task.abort();
        }
    }
}

struct Session {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    tag: String,
}

/// Where deliveries go: the route, once their bytes fit the broker's budget.
struct Handoff {
    route: mpsc::Sender<Message>,
    budget: ByteBudget,
}

async fn consume(
    settings: AmqpSettings,
    spec: QueueSpec,
    handoff: Handoff,
    mut intake: watch::Receiver<bool>,
    mut finish: oneshot::Receiver<()>,
) {
    let queue: Arc<str> = Arc::from(spec.queue.as_str());
    let broker: Arc<str> = Arc::from(settings.name.as_str());
    // Every message handed out holds a prefetch slot, so reports never outnumber twice the
    // window (this connection's and the previous one's).
    let (done_tx, mut done_rx) = mpsc::channel::<Vec<u64>>(usize::from(spec.prefetch) * 2 + 1);
    let Handoff { route, budget } = handoff;
    let mut sequencer: Sequencer<(u64, OwnedSemaphorePermit)> = Sequencer::default();
    let mut seq: u64 = 0;
    let mut backoff = Backoff::new();
    loop {
        if !*intake.borrow() {
            return;
        }
        let session = tokio::select! {
            opened = open(&settings, &spec) => opened,
            _ = &mut finish => return,
        };
        let Session {
            conn,
            channel,
            mut consumer,
            tag,
        } = match session {
            Ok(s) => s,
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(route = %spec.route, broker = %settings.name, endpoint = %settings.endpoint(), error = %e, retry_in = ?delay, "cannot consume; retrying");
                spec.metrics.set_broker_up(false);
                RouteMetrics::add(&spec.metrics.retries, 1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut finish => return,
                }
                continue;
            }
        };
        backoff.reset();
        info!(route = %spec.route, broker = %settings.name, queue = %spec.queue, prefetch = spec.prefetch, "consuming");
        spec.metrics.set_broker_up(true);
        // Deliveries of the previous channel were requeued by the broker; their tags mean
        // nothing on this one.
        sequencer.clear();
        let mut consuming = *intake.borrow();
        let mut outbox: Option<Message> = None;
        // A delivery waiting for its bytes to fit the budget.
        let mut waiting: Option<Delivery> = None;
        let lost = loop {
            // A delivery whose bytes fit the budget, to register and hand to the route.
            let mut ready: Option<(Delivery, OwnedSemaphorePermit)> = None;
            tokio::select! {
                biased;
                _ = &mut finish => {
                    let _ = ack_ready(&channel, &mut sequencer, &mut done_rx).await;
                    let _ = conn.close(200, "mqdb stopping".into()).await;
                    return;
                }
                Some(seqs) = done_rx.recv() => {
                    seqs.into_iter().for_each(|s| sequencer.done(s));
                    if let Err(e) = ack_ready(&channel, &mut sequencer, &mut done_rx).await {
                        break e;
                    }
                }
                permit = route.reserve(), if outbox.is_some() => match permit {
                    Ok(permit) => permit.send(outbox.take().expect("guarded")),
                    Err(_) => {
                        outbox = None;
                        consuming = false;
                    }
                },
                bytes = budget.take(waiting.as_ref().map_or(0, delivery_size)), if waiting.is_some() => {
                    let Some(bytes) = bytes else { return };
                    ready = waiting.take().map(|d| (d, bytes));
                }
                delivery = consumer.next(), if consuming && outbox.is_none() && waiting.is_none() => match delivery {
                    Some(Ok(d)) => {
                        match budget.try_take(delivery_size(&d)) {
                            Some(bytes) => ready = Some((d, bytes)),
                            None => waiting = Some(d),
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "the broker cancelled the consumer".to_string(),
                },
                changed = intake.changed(), if consuming => {
                    if changed.is_err() || !*intake.borrow() {
                        consuming = false;
                        outbox = None;
                        waiting = None;
                        let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    }
                }
            }
            if let Some((d, bytes)) = ready {
                seq += 1;
                sequencer.register(seq, 1, (d.delivery_tag, bytes));
                let message = message(d, &broker, &queue, AckHandle::new(seq, done_tx.clone()));
                // Straight to the route when it has room; otherwise wait for room without
                // taking further deliveries.
                match route.try_send(message) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(message)) => outbox = Some(message),
                    Err(mpsc::error::TrySendError::Closed(_)) => consuming = false,
                }
            }
        };
        let delay = backoff.next_delay();
        warn!(route = %spec.route, broker = %settings.name, endpoint = %settings.endpoint(), error = %lost, retry_in = ?delay, "broker connection lost; unacknowledged messages will be redelivered");
        spec.metrics.set_broker_up(false);
        RouteMetrics::add(&spec.metrics.retries, 1);
        let _ = conn.close(200, "reconnecting".into()).await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut finish => return,
        }
    }
}

/// A delivered message for the route.
fn message(d: Delivery, broker: &Arc<str>, queue: &Arc<str>, ack: AckHandle) -> Message {
    Message {
        topic: d.routing_key.as_str().to_string(),
        received_at: Utc::now(),
        broker: broker.clone(),
        origin: Origin::Amqp {
            queue: queue.clone(),
            exchange: d.exchange.as_str().to_string(),
            redelivered: d.redelivered,
        },
        headers: d
            .properties
            .headers()
            .as_ref()
            .map(table_json)
            .unwrap_or_default(),
        payload: d.data.into(),
        ack,
    }
}

fn delivery_size(d: &Delivery) -> usize {
    d.data.len() + d.routing_key.as_str().len()
}

/// Acknowledges, with one `multiple` ack, every message done in receive order so far; the
/// bytes they held go back to the budget.
async fn ack_ready(
    channel: &Channel,
    sequencer: &mut Sequencer<(u64, OwnedSemaphorePermit)>,
    done: &mut mpsc::Receiver<Vec<u64>>,
) -> Result<(), String> {
    while let Ok(seqs) = done.try_recv() {
        seqs.into_iter().for_each(|s| sequencer.done(s));
    }
    let mut last = None;
    while let Some((tag, _bytes)) = sequencer.pop_ready() {
        last = Some(tag);
    }
    match last {
        Some(tag) => channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| format!("acknowledgement failed: {e}")),
        None => Ok(()),
    }
}

async fn open(settings: &AmqpSettings, spec: &QueueSpec) -> Result<Session, String> {
    let conn = settings.connect().await?;
    declare(&conn, spec).await?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let tag = format!("mqdb-{}", spec.route);
    let consumer = channel
        .basic_consume(
            spec.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot consume from queue {:?}: {e}", spec.queue))?;
    Ok(Session {
        conn,
        channel,
        consumer,
        tag,
    })
}

/// Declares the queue (durable) and the bound exchange (durable, `topic`) when they do not
/// exist; existing ones are used as they are, whatever their arguments.
async fn declare(conn: &Connection, spec: &QueueSpec) -> Result<(), String> {
    if !queue_exists(conn, &spec.queue).await? {
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        channel
            .queue_declare(
                spec.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot declare queue {:?}: {e}", spec.queue))?;
        info!(route = %spec.route, queue = %spec.queue, "declared durable queue");
        let _ = channel.close(200, "declared".into()).await;
    }
    let Some((exchange, key)) = &spec.bind else {
        return Ok(());
    };
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let exists = channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .is_ok();
    // A failed passive declare closes its channel.
    let channel = if exists {
        channel
    } else {
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot declare exchange {exchange:?}: {e}"))?;
        info!(route = %spec.route, exchange = %exchange, "declared durable topic exchange");
        channel
    };
    channel
        .queue_bind(
            spec.queue.as_str().into(),
            exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot bind queue {:?} to {exchange:?}: {e}", spec.queue))?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Whether the queue exists, and how many messages wait in it.
pub async fn queue_depth(conn: &Connection, queue: &str) -> Result<Option<u32>, String> {
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(q) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(Some(q.message_count()))
        }
        Err(_) if conn.status().connected() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn queue_exists(conn: &Connection, queue: &str) -> Result<bool, String> {
    queue_depth(conn, queue).await.map(|d| d.is_some())
}

/// AMQP headers as JSON, so that `header.NAME` converts like a JSON value.
pub fn table_json(table: &FieldTable) -> Map<String, Json> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value_json(v)))
        .collect()
}

fn value_json(value: &AMQPValue) -> Json {
    match value {
        AMQPValue::Boolean(b) => Json::Bool(*b),
        AMQPValue::ShortShortInt(i) => Json::from(*i),
        AMQPValue::ShortShortUInt(i) => Json::from(*i),
        AMQPValue::ShortInt(i) => Json::from(*i),
        AMQPValue::ShortUInt(i) => Json::from(*i),
        AMQPValue::LongInt(i) => Json::from(*i),
        AMQPValue::LongUInt(i) => Json::from(*i),
        AMQPValue::LongLongInt(i) => Json::from(*i),
        AMQPValue::Timestamp(t) => Json::from(*t),
        AMQPValue::Float(f) => float_json(f64::from(*f)),
        AMQPValue::Double(f) => float_json(*f),
        AMQPValue::DecimalValue(d) => decimal(d.value, d.scale)
            .parse::<Number>()
            .map_or(Json::Null, Json::Number),
        AMQPValue::ShortString(s) => Json::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Json::String(text.to_string()),
            Err(_) => Json::String(crate::dlq::base64(s.as_bytes())),
        },
        AMQPValue::ByteArray(b) => Json::String(crate::dlq::base64(b.as_slice())),
        AMQPValue::FieldArray(items) => {
            Json::Array(items.as_slice().iter().map(value_json).collect())
        }
        AMQPValue::FieldTable(t) => Json::Object(table_json(t)),
        AMQPValue::Void => Json::Null,
    }
}

/// A double as a JSON number; NaN and the infinities, which JSON has no numbers for, as
/// their names, so that a numeric column refuses them instead of storing NULL.
fn float_json(f: f64) -> Json {
    Number::from_f64(f).map_or_else(|| Json::String(f.to_string()), Json::Number)
}

/// `value × 10^-scale` as exact decimal text. The value is a signed 32-bit integer on the
/// wire (pika, the Java client), though lapin reads it as unsigned.
fn decimal(value: u32, scale: u8) -> String {
    let signed = value as i32;
    let digits = signed.unsigned_abs().to_string();
    let sign = if signed < 0 { "-" } else { "" };
    let scale = usize::from(scale);
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};

    #[test]
    fn headers_become_json() {
        let mut table = FieldTable::default();
        table.insert(
            ShortString::from("site"),
            AMQPValue::LongString(LongString::from("north")),
        );
        table.insert(ShortString::from("n"), AMQPValue::LongLongInt(-7));
        table.insert(ShortString::from("ok"), AMQPValue::Boolean(true));
        table.insert(
            ShortString::from("list"),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortInt(1)])),
        );
        table.insert(
            ShortString::from("price"),
            AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: 3,
                value: 1205,
            }),
        );
        let json = Json::Object(table_json(&table));
        assert_eq!(
            json,
            serde_json::json!({"site": "north", "n": -7, "ok": true, "list": [1], "price": 1.205})
        );
    }

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(decimal(5, 2), "0.05");
        assert_eq!(decimal(1205, 3), "1.205");
        assert_eq!(decimal(42, 0), "42");
    }

    #[test]
    fn doubles_without_a_json_number_keep_their_name() {
        assert_eq!(value_json(&AMQPValue::Double(f64::NAN)), Json::from("NaN"));
        assert_eq!(
            value_json(&AMQPValue::Float(f32::NEG_INFINITY)),
            Json::from("-inf")
        );
        assert_eq!(value_json(&AMQPValue::Double(-0.0)).to_string(), "-0.0");
    }

    #[test]
    fn negative_decimals_keep_their_sign() {
        assert_eq!(decimal((-1i32) as u32, 6), "-0.000001");
        assert_eq!(decimal((-5i32) as u32, 0), "-5");
        assert_eq!(decimal(i32::MIN as u32, 2), "-21474836.48");
        assert_eq!(decimal(i32::MAX as u32, 0), "2147483647");
    }
}
