//! Inbound: the bare subscriber and consumer ceilings, and mqdb end to end, from the first
//! publish to the last row committed, against the same broker and publisher.

use std::time::{Duration, Instant};

use crate::clients::{self, AmqpCounter, MqttCounter};
use crate::common::{Db, Mosquitto, Rabbit, TempTable, unique};
use crate::load;
use crate::report::Usage;
use crate::running::Running;
use crate::wss::WssPath;

/// Unconfirmed publishes the AMQP publisher keeps in flight.
const AMQP_WINDOW: usize = 1000;
/// mqdb's and the bare consumer's prefetch.
pub const PREFETCH: u16 = 2000;

/// Where messages come from.
pub enum Feed<'a> {
    Mqtt(&'a Mosquitto),
    Amqp,
    /// MQTT over wss through an HTTP proxy.
    Wss(&'a WssPath),
}

impl Feed<'_> {
    pub fn label(&self) -> &'static str {
        match self {
            Feed::Mqtt(_) => "MQTT",
            Feed::Amqp => "AMQP",
            Feed::Wss(_) => "MQTT over wss through the proxy",
        }
    }
}

/// Unacknowledged publishes the MQTT publisher keeps in flight.
const MQTT_WINDOW: usize = 1000;

/// A plain QoS 1 subscriber that only counts, fed by the publisher mqdb gets.
pub fn bare_mqtt(broker: &Mosquitto, n: usize) -> f64 {
    let prefix = unique("bare");
    let counter = MqttCounter::start(broker.port, &format!("{prefix}/#"));
    let messages = load::mqtt_messages(&prefix, n);
    let start = Instant::now();
    clients::mqtt_publish(broker.port, messages.into_iter(), MQTT_WINDOW);
    counter.span(n).rate(n, Some(start))
}

/// The same bare subscriber over wss through the proxy, fed over ws.
pub fn bare_wss(path: &WssPath, n: usize) -> f64 {
    let prefix = unique("bare");
    let counter = MqttCounter::start_with(path.subscriber_options(), &format!("{prefix}/#"));
    let messages = load::mqtt_messages(&prefix, n);
    let start = Instant::now();
    clients::mqtt_publish_with(path.publisher_options(), messages.into_iter(), MQTT_WINDOW);
    counter.span(n).rate(n, Some(start))
}

/// A plain consumer that only counts and acknowledges, fed by the publisher mqdb gets.
pub fn bare_amqp(n: usize) -> f64 {
    let mut rabbit = Rabbit::connect();
    let queue = unique("bench_bare");
    rabbit.declare_durable_queue(&queue);
    let counter = AmqpCounter::start(&queue, PREFETCH);
    let payloads = load::payloads(n);
    let start = Instant::now();
    clients::amqp_publish(&queue, &payloads, AMQP_WINDOW);
    counter.span(n).rate(n, Some(start))
}

/// mqdb from `feed` into `db`: the rate from the first publish to the last row committed
/// (mqdb's own counter, then checked against the table), and its process figures.
pub fn mqdb(feed: &Feed<'_>, db: &Db, n: usize) -> (f64, Usage) {
    let table = TempTable::create(db, "bench_in", load::columns(db));
    let mut rabbit = Rabbit::connect();
    let (broker, source, mapping) = match feed {
        Feed::Mqtt(m) => {
            let prefix = unique("in");
            (
                format!(
                    "{{ url: \"{}\", client_id: \"{}\" }}",
                    m.url(),
                    unique("mqdb")
                ),
                format!("topic: {prefix}/{{site}}/{{device}}\n    qos: 1\n"),
                (true, prefix),
            )
        }
        Feed::Wss(path) => {
            let prefix = unique("in");
            (
                path.broker_block(),
                format!("topic: {prefix}/{{site}}/{{device}}\n    qos: 1\n"),
                (true, prefix),
            )
        }
        Feed::Amqp => {
            let queue = unique("bench_in");
            rabbit.adopt_queue(&queue);
            (
                format!("{{ url: \"{}\" }}", Rabbit::URL),
                format!("queue: {queue}\n    prefetch: {PREFETCH}\n"),
                (false, queue),
            )
        }
    };
    let (from_topic, address) = mapping;
    let running = Running::start(&load::inbound_config(
        &broker,
        &source,
        &db.connection_string(),
        &table.name,
        from_topic,
    ));
    let start = Instant::now();
    let publishing = match feed {
        Feed::Mqtt(m) => {
            let port = m.port;
            std::thread::spawn(move || {
                clients::mqtt_publish(
                    port,
                    load::mqtt_messages(&address, n).into_iter(),
                    MQTT_WINDOW,
                )
            })
        }
        Feed::Wss(path) => {
            let options = path.publisher_options();
            std::thread::spawn(move || {
                let messages = load::mqtt_messages(&address, n).into_iter();
                clients::mqtt_publish_with(options, messages, MQTT_WINDOW)
            })
        }
        Feed::Amqp => std::thread::spawn(move || {
            clients::amqp_publish(&address, &load::payloads(n), AMQP_WINDOW)
        }),
    };
    let done = running.wait_counters(
        &["mqdb_rows_written_total", "mqdb_dead_letters_total"],
        n as u64,
        Duration::from_secs(900),
    );
    let rate = n as f64 / (done - start).as_secs_f64();
    publishing.join().expect("publisher");
    assert_eq!(
        table.count(),
        n as i64,
        "rows do not reconcile with published messages"
    );
    assert_eq!(running.dead_letters(), 0, "unexpected dead letters");
    let usage = running.stop();
    (rate, usage)
}
