//! Outbound: PostgreSQL rows published to MQTT at QoS 1, against a bare publisher waiting
//! for the same PUBACKs with the same window, both timed at the same counting subscriber.

use std::time::Duration;

use crate::clients::{self, MqttCounter};
use crate::common::{Db, Mosquitto, TempTable, unique};
use crate::report::Usage;
use crate::running::Running;

/// Rows per poll, and so mqdb's publish window; the bare publisher's window too.
pub const WINDOW: usize = 1000;

fn payload(i: usize) -> Vec<u8> {
    format!(
        r#"{{"id":{i},"device":"dev{:03}","level":{},"text":"temperature above threshold","raised_at":"2024-05-01T10:00:00Z"}}"#,
        i % 100,
        i % 5
    )
    .into_bytes()
}

pub fn bare_publisher(broker: &Mosquitto, n: usize) -> f64 {
    let prefix = unique("bareout");
    let counter = MqttCounter::start(broker.port, &format!("{prefix}/#"));
    let messages = (0..n).map(|i| (format!("{prefix}/dev{:03}", i % 100), payload(i)));
    clients::mqtt_publish(broker.port, messages, WINDOW);
    counter.span(n).rate(n, None)
}

pub fn mqdb(broker: &Mosquitto, n: usize) -> (f64, Usage) {
    let db = Db::Postgres;
    let table = TempTable::create(
        &db,
        "bench_out",
        "id bigint primary key, device text, level int, text text, raised_at timestamptz",
    );
    db.exec(&format!(
        "INSERT INTO {} SELECT g, 'dev' || lpad((g % 100)::text, 3, '0'), g % 5, 'temperature above threshold', '2024-05-01 10:00:00+00' FROM generate_series(1, {n}) g",
        table.name
    ));
    let prefix = unique("out");
    let counter = MqttCounter::start(broker.port, &format!("{prefix}/#"));
    let running = Running::start(&format!(
        r#"brokers:
  mosquitto: {{ url: "{url}", client_id: "{client}" }}
databases:
  pg: {{ connection_string: "{cs}" }}
outbound:
  - name: bench
    database: pg
    query: SELECT id, device, level, text, raised_at FROM {table} WHERE id > ? ORDER BY id
    track: id
    start: 0
    max_rows: {WINDOW}
    interval: 100ms
    broker: mosquitto
    topic: {prefix}/{{device}}
    qos: 1
"#,
        url = broker.url(),
        client = unique("mqdb"),
        cs = db.connection_string(),
        table = table.name,
    ));
    let rate = counter.span(n).rate(n, None);
    running.wait_counter(
        "mqdb_messages_published_total",
        n as u64,
        Duration::from_secs(60),
    );
    assert_eq!(running.dead_letters(), 0, "unexpected dead letters");
    (rate, running.stop())
}
