//! The benchmark harness: in one run, on one machine, broker and databases, each mqdb path
//! as a rate and as a ratio to the ceiling it runs against, measured in the same run:
//!
//! 1. the bare broker: a QoS 1 subscriber (and an AMQP consumer) that only counts, fed by
//!    the publisher mqdb gets (bounded in-flight window, a private Mosquitto that never
//!    drops);
//! 2. raw insert ceilings: the same rows, batch size and driver by the fastest plain ODBC
//!    path (PostgreSQL `unnest`, MariaDB parameter arrays, SQLite multi-row `VALUES`),
//!    with PostgreSQL `COPY` as the physical reference;
//! 3. mqdb inbound end to end, MQTT → PostgreSQL, MQTT → MariaDB, AMQP → PostgreSQL;
//! 4. mqdb outbound, PostgreSQL → MQTT, against a bare publisher waiting for the same
//!    PUBACKs;
//! 5. the database path with the broker not limiting: the inbound route loop fed from
//!    memory, per driver, against that driver's raw insert ceiling;
//! 6. the dead-letter replay rate per driver (database path alone, no broker), from a
//!    SQLite and from a PostgreSQL state store, as a ratio to the same ceiling;
//! 7. mqdb's memory through a database outage;
//! 8. mqdb's memory per byte: large JSON and CSV messages against the bytes it may hold in
//!    flight, and how much it gives back after the load;
//! 9. scale-out: one shared MQTT subscription run by one, two and three instances on a
//!    PostgreSQL state store, and an outbound route's failover time after a SIGKILL;
//! 10. outbound latency from an INSERT's commit to the subscriber, polling every 5 s with
//!     and without `wake` (PostgreSQL LISTEN/NOTIFY);
//! 11. latency with the default settings: MQTT → PostgreSQL from the publish call to the
//!     row's insert at 1,000 and 20,000 msg/s (p99 targets 5 ms and 20 ms), and
//!     PostgreSQL → MQTT with the default interval.
//!
//! Every mqdb path also reports its own user + system CPU time per message moved (µs).
//!
//! Each mqdb run is measured between two runs of the ceiling it is compared with (the
//! machine and the services drift within a run), and reports how busy the machine was.
//! Every section reconciles its counts and panics when one is off; none fails on speed.
//! `cargo bench --bench bridge`; `MQDB_BENCH_MESSAGES` (default 200000, rounded up to whole
//! batches), `MQDB_BENCH_OUTAGE` (seconds, default 30), `MQDB_BENCH_SETTLE` (seconds after a memory
//! load before its RSS is read again, default 60), `MQDB_BENCH_ONLY` (a comma list of
//! sections: broker, ceilings, inbound (or one of mqtt-postgres, mqtt-mariadb,
//! amqp-postgres, mqtt-wss-postgres), outbound, pipeline, replay, outage, memory, scale-out,
//! wake, latency).

#[path = "../../tests/common/mod.rs"]
mod common;

mod ceilings;
mod clients;
mod inbound;
mod latency;
mod load;
mod memory;
mod outage;
mod outbound;
mod pipeline;
mod replay;
mod report;
mod running;
mod scale;
mod wake;
mod wss;

use std::time::Duration;

use common::{Db, Mosquitto};
use inbound::Feed;
use report::{Report, Run};

/// Targets, as ratios to the ceiling measured in the same run.
const INBOUND_TARGET: f64 = 0.9;
const DATABASE_TARGET: f64 = 0.7;
const OUTBOUND_TARGET: f64 = 0.9;
const REPLAY_TARGET: f64 = 0.5;
/// Paced inbound publish rates (msg/s) and the p99 latency each aims for, in ms.
const INBOUND_LATENCY_TARGETS: [(usize, u64); 2] = [(1_000, 5), (20_000, 20)];

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("bridge: bench");
        return;
    }
    let n = env("MQDB_BENCH_MESSAGES", 200_000usize).div_ceil(load::BATCH) * load::BATCH;
    let outage_s = env("MQDB_BENCH_OUTAGE", 30u64);
    let only: String = env("MQDB_BENCH_ONLY", String::new());
    let wanted = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    let sqlite_dir = tempfile::tempdir().unwrap();
    let sqlite = Db::Sqlite(sqlite_dir.path().join("bench.db"));

    println!(
        "mqdb benchmark: {n} messages of ~{} bytes, batches of {}",
        load::average_size(load::payloads(n.min(10_000)).iter().map(Vec::len)),
        load::BATCH
    );
    println!(
        "machine: {} cores, {}; {}",
        common::cores(),
        common::cpu_model(),
        versions()
    );
    let broker = Mosquitto::start();
    let mut report = Report::default();

    if wanted("broker") {
        println!("broker ceilings:");
        report.ceiling("bare MQTT QoS 1 subscriber", inbound::bare_mqtt(&broker, n));
        report.ceiling("bare AMQP consumer", inbound::bare_amqp(n));
    }
    if wanted("ceilings") {
        println!("database ceilings:");
        report.ceiling(
            "raw PostgreSQL insert (unnest, prepared)",
            ceilings::postgres_unnest(n),
        );
        report.ceiling(
            "raw PostgreSQL insert (multi-row VALUES)",
            ceilings::multi_row_values(&Db::Postgres, n),
        );
        report.ceiling(
            "PostgreSQL COPY (psql, physical reference)",
            ceilings::postgres_copy(n),
        );
        report.ceiling(
            "raw MariaDB insert (parameter arrays)",
            ceilings::mariadb_arrays(n),
        );
        report.ceiling(
            "raw SQLite insert (multi-row VALUES)",
            ceilings::multi_row_values(&sqlite, n),
        );
    }
    // A private broker and proxy, started only when their path is measured.
    let wss_path = (wanted("inbound") || wanted("mqtt-wss-postgres")).then(wss::WssPath::start);
    let mut feeds = vec![
        ("mqtt-postgres", Feed::Mqtt(&broker), Db::Postgres),
        ("mqtt-mariadb", Feed::Mqtt(&broker), Db::MariaDb),
        ("amqp-postgres", Feed::Amqp, Db::Postgres),
    ];
    if let Some(path) = &wss_path {
        feeds.push(("mqtt-wss-postgres", Feed::Wss(path), Db::Postgres));
    }
    let feeds: Vec<_> = feeds
        .into_iter()
        .filter(|(name, ..)| wanted("inbound") || wanted(name))
        .collect();
    if !feeds.is_empty() {
        println!("mqdb inbound, end to end, each between two runs of its bare ceiling:");
        let mut brackets = Brackets::default();
        for (_, feed, db) in feeds {
            let (kind, bare): (&str, &dyn Fn() -> f64) = match feed {
                Feed::Mqtt(b) => ("bare MQTT QoS 1 subscriber", &move || {
                    inbound::bare_mqtt(b, n)
                }),
                Feed::Amqp => ("bare AMQP consumer", &move || inbound::bare_amqp(n)),
                Feed::Wss(path) => (
                    "bare MQTT QoS 1 subscriber over wss through the proxy",
                    &move || inbound::bare_wss(path, n),
                ),
            };
            let (ceiling, (rate, usage), busy) =
                brackets.around(kind, bare, || inbound::mqdb(&feed, &db, n));
            report.bridge(
                &format!("mqdb {} → {} end to end", feed.label(), db.label()),
                Run {
                    rate,
                    usage,
                    n,
                    busy: Some(busy),
                },
                Some((&ceiling.label, ceiling.rate)),
                Some(INBOUND_TARGET),
            );
        }
    }
    if let Some(path) = &wss_path {
        println!(
            "  proxy: {} tunnels to the wss broker logged",
            path.tunnels()
        );
    }
    if wanted("outbound") {
        println!("outbound, between two runs of its bare ceiling:");
        let bare = || outbound::bare_publisher(&broker, n);
        let (ceiling, (rate, usage), busy) = Brackets::default().around(
            "bare MQTT publisher, QoS 1, PUBACKs awaited",
            &bare,
            || outbound::mqdb(&broker, n),
        );
        report.bridge(
            "mqdb PostgreSQL → MQTT, confirmed, position stored",
            Run {
                rate,
                usage,
                n,
                busy: Some(busy),
            },
            Some((&ceiling.label, ceiling.rate)),
            Some(OUTBOUND_TARGET),
        );
    }
    // The database paths, each run between two runs of its driver's raw ceiling.
    let lite_db = sqlite.clone();
    type RawRun = Box<dyn Fn() -> f64>;
    let raw: [(&Db, &str, RawRun); 3] = [
        (
            &Db::Postgres,
            "raw PostgreSQL insert (unnest, prepared)",
            Box::new(move || ceilings::postgres_unnest(n)),
        ),
        (
            &Db::MariaDb,
            "raw MariaDB insert (parameter arrays)",
            Box::new(move || ceilings::mariadb_arrays(n)),
        ),
        (
            &sqlite,
            "raw SQLite insert (multi-row VALUES)",
            Box::new(move || ceilings::multi_row_values(&lite_db, n)),
        ),
    ];
    type DbRun = fn(&Db, usize) -> (f64, report::Usage);
    let paths: [(&str, &str, &str, DbRun, Option<f64>); 3] = [
        (
            "pipeline",
            "inbound database path (the route fed from memory, no broker):",
            "mqdb inbound route → {}, broker not limiting",
            pipeline::run,
            Some(DATABASE_TARGET),
        ),
        (
            "replay",
            "dead-letter replay (database path, no broker), SQLite state store:",
            "mqdb dlq replay → {}, SQLite state store",
            replay::replay,
            Some(REPLAY_TARGET),
        ),
        (
            "replay",
            "dead-letter replay (database path, no broker), PostgreSQL state store:",
            "mqdb dlq replay → {}, PostgreSQL state store",
            replay::replay_postgres_store,
            Some(REPLAY_TARGET),
        ),
    ];
    for (section, heading, path, run, target) in paths {
        if !wanted(section) {
            continue;
        }
        println!("{heading}");
        let mut brackets = Brackets::default();
        for (db, kind, ceiling) in &raw {
            let (ceiling, (rate, usage), busy) = brackets.around(kind, ceiling, || run(db, n));
            report.bridge(
                &path.replace("{}", db.label()),
                Run {
                    rate,
                    usage,
                    n,
                    busy: Some(busy),
                },
                Some((&ceiling.label, ceiling.rate)),
                target,
            );
        }
    }
    if wanted("outage") {
        println!("memory through a database outage:");
        let steady = Duration::from_secs(outage_s.clamp(5, 10));
        let o = outage::run(&broker, 2000, steady, Duration::from_secs(outage_s));
        report.note(format!(
            "database outage of {} s at {} msg/s (MQTT → PostgreSQL, {} messages): mqdb RSS peak {:.1} MB before, {:.1} MB during, {:.1} MB while catching up; {} retries, every message a row, no dead letters",
            o.outage.as_secs(),
            o.rate,
            o.messages,
            o.before_kb as f64 / 1024.0,
            o.during_kb as f64 / 1024.0,
            o.after_kb as f64 / 1024.0,
            o.retries,
        ));
    }
    if wanted("scale-out") {
        println!("scale-out (MQTT → PostgreSQL, share:, a PostgreSQL state store):");
        let mut brackets = Brackets::default();
        for k in 1..=3 {
            let bare = || inbound::bare_mqtt(&broker, n);
            let (ceiling, rate, busy) =
                brackets.around("bare MQTT QoS 1 subscriber", &bare, || {
                    scale::shared(&broker, n, k)
                });
            report.note(format!(
                "shared subscription, {k} instance(s): {rate:.0} msg/s, {:.2} of the bare subscriber ({:.0}/s; machine {:.0}% busy)",
                rate / ceiling.rate,
                ceiling.rate,
                busy * 100.0
            ));
        }
        let took = scale::takeover(&broker);
        report.note(format!(
            "outbound failover after SIGKILL of the holder (lease 10 s, interval 1 s): the next row published {:.1} s later",
            took.as_secs_f64()
        ));
    }
    if wanted("wake") {
        println!(
            "outbound latency, INSERT commit → subscriber, {} inserts 10–100 ms apart per route:",
            wake::ROWS
        );
        for l in wake::run(&broker) {
            let max = *l.sorted.last().expect("rows");
            let path = format!(
                "INSERT commit → subscriber, mqdb PostgreSQL → MQTT, {}",
                l.label
            );
            report.latency(
                &path,
                l.sorted.len(),
                l.quantile(0.5),
                l.quantile(0.99),
                max,
                None,
            );
        }
    }
    if wanted("latency") {
        println!("latency with the default settings (MQTT → PostgreSQL, paced QoS 1 publisher):");
        for (rate, target_ms) in INBOUND_LATENCY_TARGETS {
            let run = latency::inbound(&broker, rate, n);
            println!(
                "  asked {rate}/s, achieved {:.0}/s over {} messages",
                run.achieved,
                run.latencies.sorted.len()
            );
            let l = &run.latencies;
            report.latency(
                &format!(
                    "publish → row inserted, mqdb MQTT → PostgreSQL, default batch, {}/s asked, {:.0}/s achieved",
                    run.rate, run.achieved
                ),
                l.sorted.len(),
                l.quantile(0.5),
                l.quantile(0.99),
                *l.sorted.last().expect("rows"),
                Some(Duration::from_millis(target_ms)),
            );
        }
        let l = latency::outbound(&broker);
        report.latency(
            &format!(
                "INSERT commit → subscriber, mqdb PostgreSQL → MQTT, {} (1 s), inserts 20–200 ms apart",
                l.label
            ),
            l.sorted.len(),
            l.quantile(0.5),
            l.quantile(0.99),
            *l.sorted.last().expect("rows"),
            None,
        );
    }
    if wanted("memory") {
        println!("memory per byte (MQTT → PostgreSQL unless named, a fresh mqdb per case):");
        let settle = Duration::from_secs(env("MQDB_BENCH_SETTLE", 60u64));
        memory::run(&broker, settle, |case| report.memory(case, settle));
    }
    report.print();
}

/// A broker ceiling measured just before and just after the mqdb run it judges: brokers
/// drift during a run (queue files, memory, other load), so the ratio is to the mean of the
/// two. The run after one mqdb run is the run before the next of the same kind.
#[derive(Default)]
struct Brackets {
    /// The last run of each kind: its rate and how busy the machine was.
    last: std::collections::HashMap<String, (f64, f64)>,
}

struct Ceiling {
    label: String,
    rate: f64,
}

impl Brackets {
    fn around<T>(
        &mut self,
        kind: &str,
        bare: &dyn Fn() -> f64,
        run: impl FnOnce() -> T,
    ) -> (Ceiling, T, f64) {
        let measure = || report::machine_busy(bare);
        let (before, busy_before) = self.last.remove(kind).unwrap_or_else(measure);
        let (result, busy) = report::machine_busy(run);
        let (after, busy_after) = measure();
        self.last.insert(kind.to_string(), (after, busy_after));
        println!(
            "  {kind}: {before:.0}/s before, {after:.0}/s after (machine {:.0}% and {:.0}% busy)",
            busy_before * 100.0,
            busy_after * 100.0
        );
        let ceiling = Ceiling {
            label: format!(
                "{kind} ({before:.0} before, {after:.0} after; machine {:.0}%, {:.0}% busy)",
                busy_before * 100.0,
                busy_after * 100.0
            ),
            rate: (before + after) / 2.0,
        };
        (ceiling, result, busy)
    }
}

/// The servers and drivers the figures belong to.
fn versions() -> String {
    let pg = Db::Postgres
        .query("SHOW server_version")
        .first()
        .and_then(|r| r[0].clone())
        .unwrap_or_default();
    let maria = Db::MariaDb
        .query("SELECT VERSION()")
        .first()
        .and_then(|r| r[0].clone())
        .unwrap_or_default();
    let package = |name: &str| {
        std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    format!(
        "PostgreSQL {pg} (psqlODBC {}), MariaDB {maria} (Connector/ODBC {}), SQLite ODBC {}, Mosquitto {}",
        package("odbc-postgresql"),
        package("odbc-mariadb"),
        package("libsqliteodbc"),
        package("mosquitto"),
    )
}
