//! AMQP inbound throughput, RabbitMQ → MariaDB, as ratios against ceilings measured in the
//! same run on the same machine. Each path drains the same pre-filled durable queue of
//! persistent messages, so publishing speed is not part of any figure:
//!
//! 1. bare consumer: a plain lapin consumer with the same prefetch that only counts and
//!    acknowledges (`multiple`, every 250 messages);
//! 2. raw insert ceiling: the same rows inserted through the same ODBC driver by the fastest
//!    plain path (column-wise parameter arrays, 500 rows per execution, one commit each);
//! 3. mqdb, JSON payloads: first delivery to last row committed;
//! 4. mqdb, CSV payloads (the same values, one record per message).
//!
//! Run with `cargo bench --bench amqp_inbound` (`MQDB_BENCH_MESSAGES` sets the count, default
//! 100000; `MQDB_BENCH_PREFETCH` the prefetch, default 1000). It reconciles counts and fails if a message is missing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Bridge, Db, Rabbit, unique};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

const BATCH: usize = 500;
/// The prefetch of both the bare consumer and mqdb (`MQDB_BENCH_PREFETCH`, default 1000).
fn prefetch() -> u16 {
    std::env::var("MQDB_BENCH_PREFETCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}
const COLUMNS: &str = "seq BIGINT PRIMARY KEY, site VARCHAR(16), device VARCHAR(16), value DECIMAL(10,3), status VARCHAR(16), ts DATETIME(3), received_at DATETIME(3)";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("amqp_inbound: bench");
        return;
    }
    let n: usize = std::env::var("MQDB_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let json = json_payloads(n);
    let csv = csv_payloads(n);
    let avg = json.iter().map(Vec::len).sum::<usize>() / n;
    println!(
        "mqdb AMQP inbound benchmark: {n} persistent messages of ~{avg} bytes (JSON) → MariaDB"
    );
    println!(
        "machine: {} cores, {}",
        common::cores(),
        common::cpu_model()
    );

    let mut rabbit = Rabbit::connect();
    let bare_before = bare_consumer(&mut rabbit, &json);
    let ceiling = raw_insert(n);
    let (via_json, rss_json, cpu_json) = through_mqdb(&mut rabbit, &json, "json");
    let (via_csv, rss_csv, cpu_csv) = through_mqdb(&mut rabbit, &csv, "csv");
    // The broker's rate drifts during a run (queue files, memory): the ceiling is the
    // better of a drain before and one after.
    let bare = bare_before.max(bare_consumer(&mut rabbit, &json));

    println!();
    println!("| path | msg/s | ratio |");
    println!("|---|---:|---:|");
    println!(
        "| bare AMQP consumer, prefetch {} (broker ceiling) | {bare:.0} | 1.00 |",
        prefetch()
    );
    println!(
        "| raw ODBC parameter arrays, batch {BATCH} (database ceiling) | {ceiling:.0} | 1.00 |"
    );
    for (label, rate) in [("JSON", via_json), ("CSV", via_csv)] {
        println!(
            "| mqdb AMQP → MariaDB, {label} | {rate:.0} | {:.2} of broker, {:.2} of database |",
            rate / bare,
            rate / ceiling
        );
    }
    println!();
    for (label, rss, cpu) in [("JSON", rss_json, cpu_json), ("CSV", rss_csv, cpu_csv)] {
        println!(
            "mqdb {label}: peak RSS {:.1} MB, {:.2} CPU seconds per 100k messages",
            rss as f64 / 1024.0,
            cpu * 100_000.0 / n as f64
        );
    }
}

fn row(i: usize) -> (String, String, String, String) {
    (
        format!("{}.{:03}", i % 90, i % 1000),
        format!("dev{:03}", i % 100),
        format!(
            "2024-05-01T12:{:02}:{:02}.{:03}+02:00",
            (i / 60) % 60,
            i % 60,
            i % 1000
        ),
        format!("site{}", i % 4),
    )
}

fn json_payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let (value, device, ts, site) = row(i);
            format!(
                r#"{{"seq":{i},"site":"{site}","device":"{device}","value":{value},"status":"nominal","ts":"{ts}","note":"sensor reading in range"}}"#
            )
            .into_bytes()
        })
        .collect()
}

fn csv_payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let (value, device, ts, site) = row(i);
            format!("{i},{site},{device},{value},nominal,{ts},sensor reading in range\n")
                .into_bytes()
        })
        .collect()
}

fn fill(rabbit: &mut Rabbit, payloads: &[Vec<u8>]) -> String {
    let queue = unique("bench_q");
    rabbit.declare_durable_queue(&queue);
    for chunk in payloads.chunks(10_000) {
        rabbit.publish_to_queue(&queue, chunk.to_vec());
    }
    queue
}

fn bare_consumer(rabbit: &mut Rabbit, payloads: &[Vec<u8>]) -> f64 {
    let queue = fill(rabbit, payloads);
    let n = payloads.len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let elapsed = rt.block_on(async {
        let conn = lapin::Connection::connect(Rabbit::URL, Default::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .basic_qos(prefetch(), BasicQosOptions::default())
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
        let start = Instant::now();
        let mut count = 0;
        while count < n {
            let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
                .await
                .expect("a delivery within 60 s")
                .unwrap()
                .unwrap();
            count += 1;
            if count % 250 == 0 || count == n {
                channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                    .await
                    .unwrap();
            }
        }
        let elapsed = start.elapsed();
        let _ = conn.close(200, "done".into()).await;
        elapsed
    });
    let rate = n as f64 / elapsed.as_secs_f64();
    let left = Rabbit::queue_info(&queue).map(|q| q.messages).unwrap_or(0);
    assert_eq!(left, 0, "the bare consumer left messages in the queue");
    println!("bare consumer: {rate:.0} msg/s");
    rate
}

fn raw_insert(n: usize) -> f64 {
    use odbc_api::buffers::BufferDesc;
    use odbc_api::{BindParamDesc, DataType};
    let db = Db::MariaDb;
    let table = unique("bench_raw");
    db.exec(&format!("CREATE TABLE {table} ({COLUMNS})"));
    let conn = db.connect();
    conn.set_autocommit(false).unwrap();
    let rows: Vec<(i64, [String; 5])> = (0..n)
        .map(|i| {
            let (value, device, ts, site) = row(i);
            let utc = chrono::DateTime::parse_from_rfc3339(&ts)
                .unwrap()
                .naive_utc()
                .format("%Y-%m-%d %H:%M:%S%.3f")
                .to_string();
            (i as i64, [site, device, value, "nominal".into(), utc])
        })
        .collect();
    let sql = format!(
        "INSERT INTO {table} (seq,site,device,value,status,ts,received_at) VALUES (?,?,?,?,?,?,NOW(3))"
    );
    let text = |len: usize| BindParamDesc {
        buffer_desc: BufferDesc::Text { max_str_len: len },
        data_type: DataType::Varchar {
            length: std::num::NonZeroUsize::new(len),
        },
    };
    let start = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let descs = vec![
            BindParamDesc {
                buffer_desc: BufferDesc::I64 { nullable: false },
                data_type: DataType::BigInt,
            },
            text(16),
            text(16),
            text(16),
            text(16),
            text(32),
        ];
        let prepared = conn.prepare(&sql).unwrap();
        let mut inserter = prepared.into_column_inserter(chunk.len(), descs).unwrap();
        inserter.set_num_rows(chunk.len());
        let seqs = inserter.column_mut(0).as_slice::<i64>().unwrap();
        for (r, (seq, _)) in chunk.iter().enumerate() {
            seqs[r] = *seq;
        }
        for c in 0..5 {
            let mut col = inserter.column_mut(c + 1).as_text().unwrap();
            for (r, (_, fields)) in chunk.iter().enumerate() {
                col.set_cell(r, Some(fields[c].as_bytes()));
            }
        }
        inserter.execute().unwrap();
        conn.commit().unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(db.count(&table), n as i64);
    db.exec(&format!("DROP TABLE {table}"));
    println!("raw ODBC insert: {rate:.0} rows/s");
    rate
}

fn through_mqdb(rabbit: &mut Rabbit, payloads: &[Vec<u8>], format: &str) -> (f64, u64, f64) {
    let queue = fill(rabbit, payloads);
    let db = Db::MariaDb;
    let table = unique("bench_mqdb");
    db.exec(&format!("CREATE TABLE {table} ({COLUMNS})"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.yaml");
    let mapping = if format == "csv" {
        "    format: csv\n    csv: { fields: [seq, site, device, value, status, ts, note] }\n"
    } else {
        "    format: json\n"
    };
    std::fs::write(
        &config,
        format!(
            r#"state: sqlite://{state}
brokers:
  rabbit: {{ url: "{url}" }}
databases:
  maria: {{ connection_string: "{cs}" }}
inbound:
  - name: bench
    broker: rabbit
    queue: {queue}
    prefetch: {prefetch}
    database: maria
    table: {table}
{mapping}    columns:
      seq: payload.seq
      site: payload.site
      device: payload.device
      value: payload.value
      status: payload.status
      ts: payload.ts
      received_at: meta.received_at
    batch: {{ max_rows: {BATCH}, max_delay: 100ms }}
"#,
            state = dir.path().join("state.db").display(),
            prefetch = prefetch(),
            url = Rabbit::URL,
            cs = db.connection_string(),
        ),
    )
    .unwrap();
    let want = payloads.len() as i64;
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log("route ready", Duration::from_secs(60));
    let pid = bridge.pid().expect("bridge running");
    // The clock starts once the consumer is attached, which the log marks.
    bridge.wait_for_log("consuming", Duration::from_secs(60));
    let start = Instant::now();
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
    let left = Rabbit::queue_info(&queue).map(|q| q.messages).unwrap_or(0);
    assert_eq!(left, 0, "mqdb left messages in the queue");
    db.exec(&format!("DROP TABLE {table}"));
    let rate = payloads.len() as f64 / elapsed;
    println!("mqdb {format}: {rate:.0} msg/s");
    (rate, rss, cpu)
}
