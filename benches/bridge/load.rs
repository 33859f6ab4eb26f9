//! The load every section shares: sensor readings of ~150 bytes, the tables they land in,
//! and the route configuration that maps them.

use crate::common::Db;

/// Rows per batch, for mqdb and for every ceiling.
pub const BATCH: usize = 500;

/// One reading, as its message carries it and as the raw ceilings insert it.
pub struct Reading {
    pub seq: i64,
    pub site: String,
    pub device: String,
    pub value: String,
    pub status: &'static str,
    /// RFC 3339 with a +02:00 offset, as the payload carries it.
    pub ts: String,
    /// The same instant in UTC, as the database stores it.
    pub ts_utc: String,
}

pub fn reading(i: usize) -> Reading {
    let (minute, second, milli) = ((i / 60) % 60, i % 60, i % 1000);
    Reading {
        seq: i as i64,
        site: format!("site{}", i % 4),
        device: format!("dev{:03}", i % 100),
        value: format!("{}.{:03}", i % 90, i % 1000),
        status: "nominal",
        ts: format!("2024-05-01T12:{minute:02}:{second:02}.{milli:03}+02:00"),
        ts_utc: format!("2024-05-01 10:{minute:02}:{second:02}.{milli:03}"),
    }
}

pub fn json(r: &Reading) -> Vec<u8> {
    format!(
        r#"{{"seq":{},"site":"{}","device":"{}","value":{},"status":"{}","ts":"{}","note":"sensor reading in range"}}"#,
        r.seq, r.site, r.device, r.value, r.status, r.ts
    )
    .into_bytes()
}

/// `n` MQTT messages under `prefix`: topic `prefix/site/device`, JSON payload.
pub fn mqtt_messages(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let r = reading(i);
            (format!("{prefix}/{}/{}", r.site, r.device), json(&r))
        })
        .collect()
}

pub fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| json(&reading(i))).collect()
}

pub fn average_size(payloads: impl Iterator<Item = usize>) -> usize {
    let (mut total, mut count) = (0, 0);
    for p in payloads {
        total += p;
        count += 1;
    }
    total / count.max(1)
}

/// The readings table in each database's own types.
pub fn columns(db: &Db) -> &'static str {
    match db {
        Db::Postgres => {
            "seq bigint primary key, site text, device text, value numeric(10,3), status text, ts timestamptz, received_at timestamptz"
        }
        Db::MariaDb => {
            "seq BIGINT PRIMARY KEY, site VARCHAR(16), device VARCHAR(16), value DECIMAL(10,3), status VARCHAR(16), ts DATETIME(6), received_at DATETIME(6)"
        }
        Db::Sqlite(_) => {
            "seq INTEGER PRIMARY KEY, site TEXT, device TEXT, value NUMERIC, status TEXT, ts TIMESTAMP, received_at TIMESTAMP"
        }
    }
}

pub const COLUMN_NAMES: [&str; 7] = [
    "seq",
    "site",
    "device",
    "value",
    "status",
    "ts",
    "received_at",
];

/// The `columns:` block of an inbound route; MQTT routes take site and device from the
/// topic, AMQP routes from the payload.
pub fn column_mapping(from_topic: bool) -> String {
    let (site, device) = if from_topic {
        ("topic.site", "topic.device")
    } else {
        ("payload.site", "payload.device")
    };
    format!(
        "    columns:\n      seq: payload.seq\n      site: {site}\n      device: {device}\n      value: payload.value\n      status: payload.status\n      ts: payload.ts\n      received_at: meta.received_at\n"
    )
}

/// Writes `dir/bench.yaml`: an MQTT inbound route `bench` on topics `root/site/device` into
/// `table`, with the state store at `state` (a `state:` URL), for runs that never connect
/// to the broker (the route fed from memory, dead-letter replay). Returns the file.
pub fn offline_route(
    dir: &std::path::Path,
    db: &Db,
    table: &str,
    root: &str,
    state: &str,
) -> std::path::PathBuf {
    let config = dir.join("bench.yaml");
    let broker = format!(
        "{{ url: \"mqtt://127.0.0.1:1883\", client_id: \"{}\" }}",
        crate::common::unique(root)
    );
    let source = format!("topic: {root}/{{site}}/{{device}}\n");
    let yaml = inbound_config(&broker, &source, &db.connection_string(), table, true);
    std::fs::write(&config, format!("state: {state}\n{yaml}")).unwrap();
    config
}

/// The harness's inbound route `bench`: broker `src` (`broker` is its YAML mapping), the
/// `source` lines (a topic or a queue, each line ending in a newline) and database `db`
/// at `cs`, every payload field mapped to a column of `table` (`from_topic`: site and
/// device from the topic too).
pub fn inbound_config(
    broker: &str,
    source: &str,
    cs: &str,
    table: &str,
    from_topic: bool,
) -> String {
    format!(
        r#"brokers:
  src: {broker}
databases:
  db: {{ connection_string: "{cs}" }}
inbound:
  - name: bench
    broker: src
    {source}    database: db
    table: {table}
{columns}    batch: {{ max_rows: {BATCH}, max_delay: 100ms }}
"#,
        columns = column_mapping(from_topic),
    )
}
