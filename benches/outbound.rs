//! Outbound throughput, PostgreSQL → MQTT QoS 1, as a ratio against a ceiling measured in the
//! same run on the same broker: a bare rumqttc publisher that waits for the same PUBACKs
//! with the same in-flight window (1000) that mqdb uses.
//!
//! Run with `cargo bench --bench outbound` (`MQDB_BENCH_ROWS` sets the count, default
//! 100000). Counts are reconciled: every row must reach the counting subscriber.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Bridge, Db, Mosquitto, Subscriber, unique};

const WINDOW: usize = 1000;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("outbound: bench");
        return;
    }
    let n: usize = std::env::var("MQDB_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let broker = Mosquitto::start();
    println!("mqdb outbound benchmark: {n} PostgreSQL rows → MQTT QoS 1");
    let bare = bare_publisher(&broker, n);
    let (bridge, rss_kb, cpu_s) = through_mqdb(&broker, n);
    println!();
    println!("| path | msg/s | ratio |");
    println!("|---|---:|---:|");
    println!("| bare publisher, QoS 1, {WINDOW} in flight, PUBACKs counted | {bare:.0} | 1.00 |");
    println!(
        "| mqdb PostgreSQL → MQTT, confirmed, position stored | {bridge:.0} | {:.2} |",
        bridge / bare
    );
    println!();
    println!(
        "mqdb peak RSS {:.1} MB, {:.2} CPU seconds per 100k rows",
        rss_kb as f64 / 1024.0,
        cpu_s * 100_000.0 / n as f64
    );
}

fn payload(i: usize) -> Vec<u8> {
    format!(
        r#"{{"id":{i},"device":"dev{:03}","level":{},"text":"temperature above threshold","raised_at":"2024-05-01T10:00:00Z"}}"#,
        i % 100,
        i % 5
    )
    .into_bytes()
}

fn bare_publisher(broker: &Mosquitto, n: usize) -> f64 {
    let sub = Subscriber::connect(broker.port, "benchout/#", 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    runtime.block_on(async {
        let mut options = rumqttc::MqttOptions::new(unique("barepub"), "127.0.0.1", broker.port);
        options
            .set_inflight(WINDOW as u16)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, WINDOW);
        let publisher = tokio::spawn(async move {
            for i in 0..n {
                let topic = format!("benchout/dev{:03}", i % 100);
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload(i))
                    .await
                    .unwrap();
            }
            client
        });
        let mut acked = 0;
        while acked < n {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                eventloop.poll().await.unwrap()
            {
                acked += 1;
            }
        }
        drop(publisher.await);
    });
    let rate = n as f64 / start.elapsed().as_secs_f64();
    sub.wait_for(n, Duration::from_secs(600));
    assert_eq!(
        sub.count(),
        n,
        "the bare publisher's messages do not reconcile"
    );
    sub.disconnect();
    println!("bare publisher: {rate:.0} msg/s");
    rate
}

fn through_mqdb(broker: &Mosquitto, n: usize) -> (f64, u64, f64) {
    let db = Db::Postgres;
    let table = unique("bench_out");
    db.exec(&format!(
        "CREATE TABLE {table} (id bigint primary key, device text, level int, text text, raised_at timestamptz)"
    ));
    db.exec(&format!(
        "INSERT INTO {table} SELECT g, 'dev' || lpad((g % 100)::text, 3, '0'), g % 5, 'temperature above threshold', '2024-05-01 10:00:00+00' FROM generate_series(1, {n}) g"
    ));
    let prefix = unique("bo");
    let sub = Subscriber::connect(broker.port, &format!("{prefix}/#"), 1);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.yaml");
    std::fs::write(
        &config,
        format!(
            r#"state: sqlite://{state}
brokers:
  mosquitto: {{ url: "{url}", client_id: "{client}" }}
databases:
  pg: {{ connection_string: "{cs}" }}
outbound:
  - name: bench
    database: pg
    query: SELECT id, device, level, text, raised_at FROM {table} WHERE id > ? ORDER BY id
    track: id
    start: 0
    max_rows: 1000
    interval: 100ms
    broker: mosquitto
    topic: {prefix}/{{device}}
    qos: 1
"#,
            state = dir.path().join("state.db").display(),
            url = broker.url(),
            client = unique("bench"),
            cs = db.connection_string(),
        ),
    )
    .unwrap();
    let start = Instant::now();
    let mut bridge = Bridge::start(&config);
    let pid = bridge.pid().expect("bridge running");
    sub.wait_for(n, Duration::from_secs(900));
    let elapsed = start.elapsed().as_secs_f64();
    let (rss, cpu) = common::process_stats(pid);
    let received = sub.count();
    bridge.terminate();
    db.exec(&format!("DROP TABLE {table}"));
    assert!(
        received >= n,
        "only {received} of {n} rows were published:\n{}",
        bridge.log()
    );
    let dead = common::run_mqdb(&["-c", config.to_str().unwrap(), "dlq", "list", "--json"]);
    assert!(dead.stdout.is_empty(), "unexpected dead letters");
    let rate = n as f64 / elapsed;
    println!(
        "mqdb outbound: {rate:.0} msg/s ({received} received, {} duplicates)",
        received - n
    );
    (rate, rss, cpu)
}
