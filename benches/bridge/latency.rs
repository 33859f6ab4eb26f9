//! Latency with the default settings: inbound, from a paced publisher's publish call to the
//! row in PostgreSQL (no `batch:` block in the route), and outbound, from an INSERT to a
//! subscriber (the default `interval`).
//!
//! Inbound: each payload carries its publish time (µs since the epoch, read just before the
//! publish call) and the table's `committed_at` is `DEFAULT clock_timestamp()`, PostgreSQL's
//! clock when the row is inserted. In a batch that is just before its COMMIT, so the figure
//! slightly understates the commit time; `pg_xact_commit_timestamp` would be exact but needs
//! `track_commit_timestamp`, a server setting. Publisher and server share one clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, MqttOptions, QoS};

use crate::clients;
use crate::common::{Db, Mosquitto, TempTable, unique};
use crate::running::Running;
use crate::wake::{Arrivals, Latencies, XorShift, insert_and_time};

/// How long each paced rate runs, unless `MQDB_BENCH_MESSAGES` is smaller.
const SECONDS_PER_RATE: usize = 10;
/// Rows inserted for the outbound figure.
pub const OUTBOUND_ROWS: usize = 200;

/// One paced inbound run.
pub struct Inbound {
    pub rate: usize,
    /// The publish rate achieved, from the first publish call to the last.
    pub achieved: f64,
    pub latencies: Latencies,
}

/// MQTT → PostgreSQL at `rate` messages a second, for ten seconds or `cap` messages.
pub fn inbound(broker: &Mosquitto, rate: usize, cap: usize) -> Inbound {
    let db = Db::Postgres;
    let n = (rate * SECONDS_PER_RATE).min(cap).max(1);
    let table = TempTable::create(
        &db,
        "bench_latency",
        "id BIGINT, sent_us BIGINT, committed_at TIMESTAMPTZ DEFAULT clock_timestamp()",
    );
    let topic = format!("{}/l", unique("latency"));
    let running = Running::start(&format!(
        "brokers:\n  b: {{ url: \"{url}\", client_id: \"{client}\" }}\n\
         databases:\n  d: {{ connection_string: \"{cs}\" }}\n\
         inbound:\n  - name: bench\n    broker: b\n    topic: \"{topic}\"\n    qos: 1\n    \
         database: d\n    table: {table}\n    columns:\n      id: payload.id\n      \
         sent_us: payload.sent_us\n",
        url = broker.url(),
        client = unique("mqdb"),
        cs = db.connection_string(),
        table = table.name,
    ));
    let achieved = paced_publish(broker.port, &topic, rate, n);
    running.wait_counters(
        &["mqdb_rows_written_total", "mqdb_dead_letters_total"],
        n as u64,
        Duration::from_secs(300),
    );
    assert_eq!(table.count(), n as i64, "rows do not reconcile at {rate}/s");
    assert_eq!(running.dead_letters(), 0, "unexpected dead letters");
    running.stop();
    let rows = db.query(&format!(
        "SELECT (EXTRACT(EPOCH FROM committed_at) * 1000000)::BIGINT - sent_us FROM {}",
        table.name
    ));
    let mut sorted: Vec<Duration> = rows
        .iter()
        .map(|r| {
            let us: i64 = r[0].as_deref().expect("latency").parse().expect("number");
            Duration::from_micros(us.max(0) as u64)
        })
        .collect();
    sorted.sort();
    assert_eq!(sorted.len(), n, "latencies do not reconcile");
    Inbound {
        rate,
        achieved,
        latencies: Latencies {
            label: format!("{rate}/s"),
            sorted,
        },
    }
}

/// Publishes `n` messages at QoS 1 on the schedule of `rate` a second (sleeping when ahead
/// of it, publishing at once when behind); the rate achieved.
fn paced_publish(port: u16, topic: &str, rate: usize, n: usize) -> f64 {
    let options = MqttOptions::new(unique("paced"), "127.0.0.1", port);
    clients::runtime().block_on(async move {
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let driver = tokio::spawn(async move {
            let mut acked = 0usize;
            while acked < n {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("paced publisher: {e}"),
                }
            }
        });
        let start = tokio::time::Instant::now();
        let mut last = start;
        for id in 0..n {
            let due = start + Duration::from_secs_f64(id as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
            let sent_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after the epoch")
                .as_micros();
            let payload = format!("{{\"id\": {id}, \"sent_us\": {sent_us}}}");
            last = tokio::time::Instant::now();
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
        driver.await.expect("publisher acknowledged");
        let _ = client.disconnect().await;
        let span = (last - start).as_secs_f64();
        if span > 0.0 {
            (n - 1) as f64 / span
        } else {
            n as f64
        }
    })
}

/// PostgreSQL → MQTT with the default `interval`: rows inserted 20–200 ms apart, from the
/// INSERT's return (autocommit: its commit) to a subscriber receiving the row.
pub fn outbound(broker: &Mosquitto) -> Latencies {
    let db = Db::Postgres;
    let table = TempTable::create(&db, "bench_outlat", "id INTEGER PRIMARY KEY, v TEXT");
    let prefix = unique("outlat");
    let topic = format!("{prefix}/rows");
    let arrivals = Arrivals::start(broker.port, &format!("{prefix}/#"));
    let running = Running::start(&format!(
        "brokers:\n  mosquitto: {{ url: \"{url}\", client_id: \"{client}\" }}\n\
         databases:\n  pg: {{ connection_string: \"{cs}\" }}\noutbound:\n  - name: bench\n    \
         database: pg\n    query: SELECT id, v FROM {table} WHERE id > ? ORDER BY id\n    \
         track: id\n    start: 0\n    broker: mosquitto\n    topic: {topic}\n    qos: 1\n",
        url = broker.url(),
        client = unique("mqdb"),
        cs = db.connection_string(),
        table = table.name,
    ));
    let mut random = XorShift(0x2545_f491_4f6c_dd1d);
    let sorted = insert_and_time(
        &db,
        &table.name,
        &arrivals,
        &topic,
        OUTBOUND_ROWS,
        (20, 200),
        &mut random,
    );
    assert_eq!(running.dead_letters(), 0, "unexpected dead letters");
    running.stop();
    Latencies {
        label: "default interval".into(),
        sorted,
    }
}
