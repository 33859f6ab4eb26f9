//! Inbound throughput, MQTT QoS 1 → PostgreSQL, as ratios against ceilings measured in the
//! same run on the same machine:
//!
//! 1. bare broker: a plain QoS 1 subscriber that only counts, fed by the same publisher;
//! 2. raw insert ceiling: the same rows inserted through the same ODBC driver, multi-row
//!    `INSERT … VALUES` of `max_rows` rows, one commit per batch;
//! 3. mqdb end to end: first publish to last row committed.
//!
//! Run with `cargo bench --bench inbound` (`MQDB_BENCH_MESSAGES` sets the count, default
//! 100000). It reconciles counts and fails if a message is missing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Bridge, Db, Mosquitto, Publisher, Subscriber, odbc_exec, unique};

const BATCH: usize = 500;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("inbound: bench");
        return;
    }
    let n: usize = std::env::var("MQDB_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let broker = Mosquitto::start();
    let messages = sample(n);
    let avg = messages.iter().map(|(_, p)| p.len()).sum::<usize>() / n;
    println!("mqdb inbound benchmark: {n} MQTT QoS 1 messages of ~{avg} bytes → PostgreSQL");
    println!(
        "machine: {} cores, {}",
        common::cores(),
        common::cpu_model()
    );

    let bare = bare_subscriber(&broker, &messages);
    let ceiling = raw_insert(&messages);
    let (bridge, rss_kb, cpu_s) = through_mqdb(&broker, &messages);

    println!();
    println!("| path | msg/s | ratio |");
    println!("|---|---:|---:|");
    println!("| bare QoS 1 subscriber (broker ceiling) | {bare:.0} | 1.00 |");
    println!(
        "| raw ODBC multi-row insert, batch {BATCH} (database ceiling) | {ceiling:.0} | 1.00 |"
    );
    println!(
        "| mqdb MQTT → PostgreSQL end to end | {bridge:.0} | {:.2} of broker, {:.2} of database |",
        bridge / bare,
        bridge / ceiling
    );
    println!();
    println!(
        "mqdb peak RSS {:.1} MB, {:.2} CPU seconds per 100k messages",
        rss_kb as f64 / 1024.0,
        cpu_s * 100_000.0 / n as f64
    );
}

fn sample(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let topic = format!("bench/site{}/dev{:03}", i % 4, i % 100);
            let payload = format!(
                r#"{{"seq":{i},"value":{}.{:03},"status":"nominal","ts":"2024-05-01T12:{:02}:{:02}.{:03}+02:00","note":"sensor reading in range"}}"#,
                i % 90,
                i % 1000,
                (i / 60) % 60,
                i % 60,
                i % 1000
            );
            (topic, payload.into_bytes())
        })
        .collect()
}

fn bare_subscriber(broker: &Mosquitto, messages: &[(String, Vec<u8>)]) -> f64 {
    let sub = Subscriber::connect(broker.port, "bench/#", 1);
    let publisher = Publisher::connect(broker.port);
    let start = Instant::now();
    publisher.publish_all_confirmed(messages.to_vec(), 1);
    sub.wait_for(messages.len(), Duration::from_secs(600));
    let rate = messages.len() as f64 / start.elapsed().as_secs_f64();
    assert_eq!(sub.count(), messages.len(), "bare subscriber lost messages");
    sub.disconnect();
    println!("bare subscriber: {rate:.0} msg/s");
    rate
}

const COLUMNS: &str = "seq bigint primary key, site text, device text, value numeric(10,3), status text, ts timestamptz, received_at timestamptz";

fn raw_insert(messages: &[(String, Vec<u8>)]) -> f64 {
    use odbc_api::IntoParameter;
    use odbc_api::parameter::InputParameter;
    let db = Db::Postgres;
    let table = unique("bench_raw");
    db.exec(&format!("CREATE TABLE {table} ({COLUMNS})"));
    let conn = db.connect();
    conn.set_autocommit(false).unwrap();
    let rows: Vec<[String; 6]> = messages
        .iter()
        .map(|(topic, payload)| {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            let mut levels = topic.split('/').skip(1);
            [
                v["seq"].to_string(),
                levels.next().unwrap().to_string(),
                levels.next().unwrap().to_string(),
                v["value"].to_string(),
                v["status"].as_str().unwrap().to_string(),
                v["ts"].as_str().unwrap().to_string(),
            ]
        })
        .collect();
    let start = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let values = vec!["(?,?,?,?,?,?,now())"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO {table} (seq,site,device,value,status,ts,received_at) VALUES {values}"
        );
        let params: Vec<Box<dyn InputParameter>> = chunk
            .iter()
            .flat_map(|r| {
                let seq: i64 = r[0].parse().unwrap();
                let mut p: Vec<Box<dyn InputParameter>> = vec![Box::new(seq)];
                p.extend(
                    r[1..]
                        .iter()
                        .map(|s| Box::new(s.clone().into_parameter()) as Box<dyn InputParameter>),
                );
                p
            })
            .collect();
        conn.execute(&sql, params.as_slice(), None).unwrap();
        conn.commit().unwrap();
    }
    let rate = rows.len() as f64 / start.elapsed().as_secs_f64();
    assert_eq!(db.count(&table), rows.len() as i64);
    odbc_exec(&conn, &format!("DROP TABLE {table}")).unwrap();
    conn.commit().unwrap();
    println!("raw ODBC insert: {rate:.0} rows/s");
    rate
}

fn through_mqdb(broker: &Mosquitto, messages: &[(String, Vec<u8>)]) -> (f64, u64, f64) {
    let db = Db::Postgres;
    let table = unique("bench_mqdb");
    db.exec(&format!("CREATE TABLE {table} ({COLUMNS})"));
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
inbound:
  - name: bench
    broker: mosquitto
    topic: bench/{{site}}/{{device}}
    database: pg
    table: {table}
    columns:
      seq: payload.seq
      site: topic.site
      device: topic.device
      value: payload.value
      status: payload.status
      ts: payload.ts
      received_at: meta.received_at
    batch: {{ max_rows: {BATCH}, max_delay: 100ms }}
"#,
            state = dir.path().join("state.db").display(),
            url = broker.url(),
            client = unique("bench"),
            cs = db.connection_string(),
        ),
    )
    .unwrap();
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log("broker connected", Duration::from_secs(60));
    let pid = bridge.pid().expect("bridge running");
    let publisher = Publisher::connect(broker.port);
    let start = Instant::now();
    publisher.publish_all_confirmed(messages.to_vec(), 1);
    let want = messages.len() as i64;
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    while count < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        count = db.count(&table);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (rss, cpu) = common::process_stats(pid);
    assert_eq!(
        count,
        want,
        "rows do not reconcile with published messages:\n{}",
        bridge.log()
    );
    let dead = common::run_mqdb(&["-c", config.to_str().unwrap(), "dlq", "list", "--json"]);
    assert!(dead.stdout.is_empty(), "unexpected dead letters");
    bridge.terminate();
    db.exec(&format!("DROP TABLE {table}"));
    let rate = messages.len() as f64 / elapsed;
    println!("mqdb end to end: {rate:.0} msg/s");
    (rate, rss, cpu)
}
