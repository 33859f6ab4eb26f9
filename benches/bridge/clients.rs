//! Bare clients, the ceilings mqdb is measured against: a counting MQTT subscriber, a
//! confirming MQTT publisher, and AMQP's confirming publisher and counting consumer. Each
//! runs its own event loop on its own thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::common::{Rabbit, unique};

/// When the first and the last of a run's messages arrived.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub first: Instant,
    pub last: Instant,
}

impl Span {
    /// `n` over the span, or over `from` → last when the clock started earlier.
    pub fn rate(&self, n: usize, from: Option<Instant>) -> f64 {
        let start = from.unwrap_or(self.first);
        n as f64 / (self.last - start).as_secs_f64().max(1e-9)
    }
}

#[derive(Default)]
struct Arrivals {
    count: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    ready: bool,
}

/// Counts arrivals and when they came.
#[derive(Clone, Default)]
struct Tally(Arc<(Mutex<Arrivals>, Condvar)>);

impl Tally {
    /// Counts without waking the waiter, which looks every 10 ms: a wake-up per message
    /// would cost the machine more than the counting and lower the ceiling it measures.
    fn arrived(&self, k: usize) {
        let now = Instant::now();
        let mut a = self.0.0.lock().unwrap();
        a.count += k;
        a.first.get_or_insert(now);
        a.last = Some(now);
    }

    fn set_ready(&self) {
        self.0.0.lock().unwrap().ready = true;
        self.0.1.notify_all();
    }

    fn wait(&self, what: &str, timeout: Duration, done: impl Fn(&Arrivals) -> bool) -> Arrivals {
        let deadline = Instant::now() + timeout;
        let mut a = self.0.0.lock().unwrap();
        while !done(&a) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: timed out after {timeout:?} ({} arrived)",
                a.count
            );
            a = self
                .0
                .1
                .wait_timeout(a, left.min(Duration::from_millis(10)))
                .unwrap()
                .0;
        }
        Arrivals {
            count: a.count,
            first: a.first,
            last: a.last,
            ready: a.ready,
        }
    }

    /// Waits for exactly `n` arrivals (panics on fewer within `timeout`, or on more).
    fn span(&self, what: &str, n: usize, timeout: Duration) -> Span {
        let a = self.wait(what, timeout, |a| a.count >= n);
        // A moment for a duplicate to show.
        std::thread::sleep(Duration::from_millis(200));
        let count = self.0.0.lock().unwrap().count;
        assert_eq!(count, n, "{what}: {count} arrived, {n} were sent");
        Span {
            first: a.first.expect("arrived"),
            last: a.last.expect("arrived"),
        }
    }
}

/// A runtime on the calling thread, for the harness's own clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A QoS 1 subscriber that only counts (rumqttc acknowledges each message itself).
pub struct MqttCounter {
    tally: Tally,
    stop: Arc<AtomicBool>,
}

impl MqttCounter {
    pub fn start(port: u16, filter: &str) -> MqttCounter {
        MqttCounter::start_with(MqttOptions::new(unique("count"), "127.0.0.1", port), filter)
    }

    /// A counter connected with `options` (another transport, a proxy).
    pub fn start_with(mut options: MqttOptions, filter: &str) -> MqttCounter {
        let tally = Tally::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s, filter) = (tally.clone(), stop.clone(), filter.to_string());
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let (client, mut eventloop) = AsyncClient::new(options, 100);
                client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
                while !s.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::Publish(_)))) => t.arrived(1),
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => t.set_ready(),
                        Ok(Ok(_)) | Err(_) => {}
                        // The broker may go first when the run is over.
                        Ok(Err(_)) if s.load(Ordering::Relaxed) => break,
                        Ok(Err(e)) => panic!("counting subscriber: {e}"),
                    }
                }
                let _ = client.disconnect().await;
            })
        });
        let counter = MqttCounter { tally, stop };
        counter
            .tally
            .wait("SUBACK", Duration::from_secs(20), |a| a.ready);
        counter
    }

    pub fn span(&self, n: usize) -> Span {
        self.tally
            .span("MQTT subscriber", n, Duration::from_secs(900))
    }
}

impl Drop for MqttCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Publishes `n` messages at QoS 1 with at most `window` unacknowledged, as fast as the
/// broker confirms them; returns once every PUBACK is in.
pub fn mqtt_publish(port: u16, messages: impl Iterator<Item = (String, Vec<u8>)>, window: usize) {
    let options = MqttOptions::new(unique("barepub"), "127.0.0.1", port);
    mqtt_publish_with(options, messages, window);
}

/// [`mqtt_publish`] connected with `options` (another transport).
pub fn mqtt_publish_with(
    mut options: MqttOptions,
    messages: impl Iterator<Item = (String, Vec<u8>)>,
    window: usize,
) {
    runtime().block_on(async {
        options
            .set_inflight(window as u16)
            .set_max_packet_size(1 << 28, 1 << 28);
        let (client, mut eventloop) = AsyncClient::new(options, window);
        let (mut sent, mut acked) = (0usize, 0usize);
        let mut messages = messages.peekable();
        loop {
            // Queue up to the window, then let the event loop send and collect PUBACKs.
            while messages.peek().is_some() && sent - acked < window {
                let (topic, payload) = messages.next().expect("peeked");
                client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload)
                    .unwrap();
                sent += 1;
            }
            if messages.peek().is_none() && acked == sent {
                break;
            }
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                acked += 1;
            }
        }
        let _ = client.disconnect().await;
    });
}

/// Publishes every payload to `queue` (persistent) with at most `window` unconfirmed;
/// returns once all are confirmed.
pub fn amqp_publish(queue: &str, payloads: &[Vec<u8>], window: usize) {
    runtime().block_on(async {
        let conn = Connection::connect(Rabbit::URL, Default::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut pending: std::collections::VecDeque<lapin::PublisherConfirm> =
            std::collections::VecDeque::with_capacity(window);
        for payload in payloads {
            if pending.len() >= window {
                let confirm = pending.pop_front().expect("full");
                assert!(confirm.await.unwrap().is_ack(), "a publish was nacked");
            }
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    payload,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
            pending.push_back(confirm);
        }
        for confirm in pending {
            assert!(confirm.await.unwrap().is_ack(), "a publish was nacked");
        }
        let _ = conn.close(200, "done".into()).await;
    });
}

/// A consumer of `queue` that only counts, acknowledging (`multiple`) every 100 messages.
pub struct AmqpCounter {
    tally: Tally,
    stop: Arc<AtomicBool>,
}

impl AmqpCounter {
    pub fn start(queue: &str, prefetch: u16) -> AmqpCounter {
        let tally = Tally::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s, queue) = (tally.clone(), stop.clone(), queue.to_string());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let conn = Connection::connect(Rabbit::URL, Default::default())
                    .await
                    .unwrap();
                let channel = conn.create_channel().await.unwrap();
                channel
                    .basic_qos(prefetch, BasicQosOptions::default())
                    .await
                    .unwrap();
                let mut consumer = channel
                    .basic_consume(
                        queue.as_str().into(),
                        "bench".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
                t.set_ready();
                // The newest unacknowledged delivery, and how many are behind it.
                let mut unacked: Option<(u64, usize)> = None;
                while !s.load(Ordering::Relaxed) {
                    let tag = match tokio::time::timeout(Duration::from_millis(50), consumer.next())
                        .await
                    {
                        Ok(Some(delivery)) => {
                            let tag = delivery.unwrap().delivery_tag;
                            t.arrived(1);
                            let behind = unacked.map_or(0, |(_, k)| k) + 1;
                            unacked = Some((tag, behind));
                            (behind >= 100).then_some(tag)
                        }
                        Ok(None) => break,
                        // The tail of a run is acknowledged when the stream pauses.
                        Err(_) => unacked.map(|(tag, _)| tag),
                    };
                    if let Some(tag) = tag {
                        channel
                            .basic_ack(tag, BasicAckOptions { multiple: true })
                            .await
                            .unwrap();
                        unacked = None;
                    }
                }
                let _ = conn.close(200, "done".into()).await;
            })
        });
        let counter = AmqpCounter { tally, stop };
        counter
            .tally
            .wait("AMQP consumer", Duration::from_secs(20), |a| a.ready);
        counter
    }

    pub fn span(&self, n: usize) -> Span {
        self.tally
            .span("AMQP consumer", n, Duration::from_secs(900))
    }
}

impl Drop for AmqpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
