//! Memory per byte: large messages MQTT → PostgreSQL (one to MariaDB, to compare drivers),
//! each case on a fresh mqdb. For each:
//! the idle RSS before the load, the peak during it, the payload bytes mqdb may hold in
//! flight (the load, or `max_in_flight_bytes` when the load is larger), and the RSS a while
//! after the last row. Targets: peak under idle + 3 × the bytes in flight, and back within
//! 50 MB of idle after the settle time. Every case reconciles its rows.

use std::time::Duration;

use crate::clients;
use crate::common::{Db, Mosquitto, TempTable, unique};
use crate::report::{MemoryCase as Case, read_proc};
use crate::running::Running;

/// What one case publishes: its messages, the rows they make, and the broker limits.
struct Load {
    label: String,
    db: Db,
    csv: bool,
    messages: Vec<Vec<u8>>,
    rows: i64,
    max_message: &'static str,
    max_in_flight: u64,
    /// Publishes the harness keeps unacknowledged.
    window: usize,
    /// The payload bytes mqdb may hold at once when this is lower than the load or
    /// `max_in_flight` (a bound in messages).
    held_bound: Option<u64>,
}

const MIB: u64 = 1 << 20;

fn json_message(id: usize, bytes: usize) -> Vec<u8> {
    let head = format!("{{\"id\": {id}, \"note\": \"");
    let mut out = Vec::with_capacity(bytes);
    out.extend_from_slice(head.as_bytes());
    out.resize(bytes - 2, b'x');
    out.extend_from_slice(b"\"}");
    out
}

/// A CSV message of `lines` short lines (`id,value,label`).
fn csv_message(lines: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines * 16);
    for i in 0..lines {
        out.extend_from_slice(format!("{i},{}.5,s{}\n", i % 1000, i % 97).as_bytes());
    }
    out
}

fn csv_label(message: &[u8], lines: &str) -> String {
    format!(
        "one {:.0} MB CSV message, {lines} lines",
        message.len() as f64 / 1e6
    )
}

/// Mosquitto's `max_inflight_messages` in the harness: the most unacknowledged messages it
/// delivers to mqdb, below mqdb's default `max_in_flight` (10000).
const BROKER_IN_FLIGHT: u64 = 1000;
/// mqdb's defaults.
const DEFAULT_MAX_IN_FLIGHT: u64 = 10_000;
const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = 64 * MIB;

/// Many JSON messages of `bytes` each with the default limits: twice as many as fill the
/// in-flight bound, whichever of the message count (mqdb's or the broker's) and the bytes
/// binds first.
fn at_bound(label: &str, bytes: usize) -> Load {
    let held = DEFAULT_MAX_IN_FLIGHT
        .min(BROKER_IN_FLIGHT)
        .min(DEFAULT_MAX_IN_FLIGHT_BYTES / bytes as u64)
        .max(1);
    let count = (held * 2) as usize;
    Load {
        label: format!("{count} × {label} JSON messages, {held} in flight"),
        db: Db::Postgres,
        csv: false,
        messages: (1..=count).map(|i| json_message(i, bytes)).collect(),
        rows: count as i64,
        max_message: "16MiB",
        max_in_flight: DEFAULT_MAX_IN_FLIGHT_BYTES,
        window: held as usize,
        held_bound: Some(held * bytes as u64),
    }
}

fn loads() -> Vec<Load> {
    let csv_15 = csv_message(1_000_000);
    let csv_79 = csv_message(4_500_000);
    vec![
        Load {
            label: "one 64 MiB JSON message".into(),
            db: Db::Postgres,
            csv: false,
            messages: vec![json_message(1, 64 << 20)],
            rows: 1,
            max_message: "64MiB",
            max_in_flight: 128 * MIB,
            window: 8,
            held_bound: None,
        },
        // The same message to MariaDB: what a driver copies of a bound value shows in the
        // difference.
        Load {
            label: "one 64 MiB JSON message, to MariaDB".into(),
            db: Db::MariaDb,
            csv: false,
            messages: vec![json_message(1, 64 << 20)],
            rows: 1,
            max_message: "64MiB",
            max_in_flight: 128 * MIB,
            window: 8,
            held_bound: None,
        },
        Load {
            label: "eight 64 MiB JSON messages".into(),
            db: Db::Postgres,
            csv: false,
            messages: (1..=8).map(|i| json_message(i, 64 << 20)).collect(),
            rows: 8,
            max_message: "64MiB",
            max_in_flight: 128 * MIB,
            window: 8,
            held_bound: None,
        },
        Load {
            label: csv_label(&csv_15, "1,000,000"),
            db: Db::Postgres,
            csv: true,
            messages: vec![csv_15],
            rows: 1_000_000,
            max_message: "64MiB",
            max_in_flight: 64 * MIB,
            window: 8,
            held_bound: None,
        },
        Load {
            label: csv_label(&csv_79, "4,500,000"),
            db: Db::Postgres,
            csv: true,
            messages: vec![csv_79],
            rows: 4_500_000,
            max_message: "128MiB",
            max_in_flight: 128 * MIB,
            window: 8,
            held_bound: None,
        },
        at_bound("1 KB", 1000),
        at_bound("64 KB", 64_000),
        at_bound("1 MB", 1_000_000),
    ]
}

/// Each case in turn, handed to `report` as soon as it is measured.
pub fn run(broker: &Mosquitto, settle: Duration, mut report: impl FnMut(Case)) {
    for load in loads() {
        report(one(broker, load, settle));
    }
}

fn one(broker: &Mosquitto, load: Load, settle: Duration) -> Case {
    let db = load.db;
    let columns = match (load.csv, &db) {
        (true, _) => "id BIGINT, value DOUBLE PRECISION, label TEXT",
        (false, Db::MariaDb) => "id BIGINT, note LONGTEXT",
        (false, _) => "id BIGINT, note TEXT",
    };
    if matches!(db, Db::MariaDb) {
        // The server's default (16 MiB) refuses a 64 MiB value; this is the local server.
        db.exec("SET GLOBAL max_allowed_packet = 268435456");
    }
    let table = TempTable::create(&db, "bench_memory", columns);
    let topic = format!("{}/m", unique("memory"));
    let format = if load.csv { "    format: csv\n" } else { "" };
    let running = Running::start(&format!(
        "brokers:\n  b:\n    url: \"{url}\"\n    client_id: \"{client}\"\n    \
         max_message_bytes: {max}\n    max_in_flight_bytes: {flight}\n\
         databases:\n  d:\n    connection_string: \"{cs}\"\n\
         inbound:\n  - name: bench\n    broker: b\n    topic: \"{topic}\"\n    qos: 1\n    \
         database: d\n    table: {table}\n{format}",
        url = broker.url(),
        client = unique("mqdb"),
        max = load.max_message,
        flight = load.max_in_flight,
        cs = db.connection_string(),
        table = table.name,
    ));
    let pid = running.bridge.pid().expect("running");
    std::thread::sleep(Duration::from_secs(1));
    let idle_kb = read_proc(pid).expect("mqdb alive").0;
    let loaded: u64 = load.messages.iter().map(|m| m.len() as u64).sum();
    let in_flight_bytes = loaded
        .min(load.max_in_flight)
        .min(load.held_bound.unwrap_or(u64::MAX));
    let window = load.window;
    clients::mqtt_publish(
        broker.port,
        load.messages.into_iter().map(|m| (topic.clone(), m)),
        window,
    );
    running.wait_counters(
        &["mqdb_rows_written_total", "mqdb_dead_letters_total"],
        load.rows as u64,
        Duration::from_secs(900),
    );
    let peak_kb = read_proc(pid).expect("mqdb alive").1;
    std::thread::sleep(settle);
    let settled_kb = read_proc(pid).expect("mqdb alive").0;
    assert_eq!(
        table.count(),
        load.rows,
        "{}: rows do not reconcile",
        load.label
    );
    assert_eq!(running.dead_letters(), 0, "{}: dead letters", load.label);
    running.stop();
    Case {
        label: load.label,
        in_flight_bytes,
        idle_kb,
        peak_kb,
        settled_kb,
        rows: load.rows,
    }
}
