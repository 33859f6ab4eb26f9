//! `mqdb run` for outbound routes (a polled SELECT published to MQTT or AMQP) against the real
//! local services (SPEC §3, §4):
//!
//! 1. JSON values and types from PostgreSQL, MariaDB and SQLite; timestamps in UTC whatever the
//!    session time zone; values far beyond the initial column buffers.
//! 2. `format: csv`, with the default and a custom delimiter/quote. Publish options and
//!    destinations: QoS 2 with retain, no `track`, `delay`, the AMQP default exchange, a
//!    NUMERIC track column, a topic with a leading slash, the publisher's client id.
//! 3. SIGKILL and SIGTERM in the middle of a stream, then a restart.
//! 4. Outages in the middle of a stream: a private Mosquitto stopped and restarted (also with
//!    SIGTERM while it is down), a RabbitMQ connection and a PostgreSQL connection cut by a
//!    proxy.
//! 5. A two-column position (`track: [updated_at, id]`) with rows that share a timestamp,
//!    across a restart.
//! 6. Dead letters: topics that cannot be built (MQTT; a `/` in a value unless
//!    `topic_values_add_levels`) and unroutable messages (AMQP), with the position moving
//!    past them.
//! 7. `after_publish`, with and without `?` in the query, and rows it is rejected for.
//! 8. `mqdb check` for outbound routes.
//! 9. What consumers see: the deduplication key (the same for a row published again by a new
//!    instance, distinct for rows sharing a track value), content type and timestamp on
//!    AMQP; content type, payload format and key on MQTT 5.
//!
//! Every test has its own temp dir (config, state store, log), unique table, topic, exchange
//! and queue names, a private Mosquitto where MQTT is involved, and drops what it created.
//! Waits are liveness deadlines, never speed assertions; where a test asserts that nothing
//! more arrives, it first waits for a later row to arrive (so the bridge has polled past the
//! earlier ones) and then for a few more poll intervals.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{
    AmqpMessage, Bridge, Config, Db, LIVENESS, Rabbit, Received, Route, Subscriber, Subscriber5,
    TcpProxy, TempTable, World, dlq_list, path_str, run_mqdb, unique, wait_for,
};
use common::{terminate_ok, try_scalar};
use serde_json::{Value as Json, json};

/// The poll interval of every route here, so "nothing more arrives" needs only a short wait.
const INTERVAL: &str = "interval: 100ms";

/// How long to keep watching for messages that must not come (several poll intervals).
const QUIET: Duration = Duration::from_millis(800);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Writes `mqdb.yaml` with broker `m` (the world's Mosquitto), database `d` and the given
/// outbound `routes` (from [`route`]).
fn config(world: &World, connection_string: &str, routes: &[Route]) -> PathBuf {
    config_with(
        world,
        &[("m", &world.broker.url())],
        connection_string,
        routes,
    )
}

/// Like [`config`] with broker `rabbit` at `amqp_url` instead of `m`.
fn config_amqp(
    world: &World,
    amqp_url: &str,
    connection_string: &str,
    routes: &[Route],
) -> PathBuf {
    config_with(world, &[("rabbit", amqp_url)], connection_string, routes)
}

/// Like [`config`] with broker `m` speaking MQTT 5.
fn config_mqtt5(world: &World, connection_string: &str, routes: &[Route]) -> PathBuf {
    let (url, settings) = world.mqtt(json!({ "mqtt_version": 5 }));
    outbound_config(
        world.bare_config().broker("m", &url, settings),
        connection_string,
        routes,
    )
}

/// Writes `mqdb.yaml` with the given brokers (name, url; MQTT ones with the world's client
/// id), database `d` and `routes`.
fn config_with(
    world: &World,
    brokers: &[(&str, &str)],
    connection_string: &str,
    routes: &[Route],
) -> PathBuf {
    let config = brokers
        .iter()
        .fold(world.bare_config(), |config, (name, url)| {
            if url.starts_with("mqtt") {
                config.broker(name, url, world.mqtt(Json::Null).1)
            } else {
                config.broker(name, url, Json::Null)
            }
        });
    outbound_config(config, connection_string, routes)
}

fn outbound_config(config: Config, connection_string: &str, routes: &[Route]) -> PathBuf {
    routes
        .iter()
        .fold(config.database("d", connection_string), |config, route| {
            config.outbound(route.clone())
        })
        .write()
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yq(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// One `outbound:` list item named `name` on database `d` polling `query`, plus settings
/// written as `key: value` `lines`.
fn route(name: &str, query: &str, lines: &[&str]) -> Route {
    Route::outbound(name, query).lines(lines)
}

/// A message payload as a JSON object.
fn json_of(payload: &[u8]) -> serde_json::Map<String, Json> {
    match serde_json::from_slice(payload) {
        Ok(Json::Object(map)) => map,
        Ok(other) => panic!("payload is not a JSON object: {other}"),
        Err(e) => panic!(
            "payload is not JSON ({e}): {}",
            String::from_utf8_lossy(payload)
        ),
    }
}

/// The `id` of a JSON row payload.
fn id_of(payload: &[u8]) -> i64 {
    json_of(payload)
        .get("id")
        .and_then(Json::as_i64)
        .unwrap_or_else(|| panic!("no integer id in {}", String::from_utf8_lossy(payload)))
}

/// How many times each id arrived.
fn id_counts<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for p in payloads {
        *counts.entry(id_of(p)).or_insert(0) += 1;
    }
    counts
}

fn mqtt_id_counts(messages: &[Received]) -> BTreeMap<i64, usize> {
    id_counts(messages.iter().map(|m| m.payload.as_slice()))
}

/// Messages beyond the first per id.
fn duplicates(counts: &BTreeMap<i64, usize>) -> usize {
    counts.values().map(|c| c - 1).sum()
}

/// Ids in `1..=n` that never arrived.
fn missing(counts: &BTreeMap<i64, usize>, n: i64) -> Vec<i64> {
    (1..=n).filter(|i| !counts.contains_key(i)).collect()
}

/// Waits until the subscriber has received every id in `1..=n` at least once.
fn wait_for_ids(bridge: &mut Bridge, sub: &Subscriber, n: i64) {
    wait_for(bridge, &format!("every id in 1..={n}"), || {
        Ok(missing(&mqtt_id_counts(&sub.messages()), n).is_empty())
    });
}

/// Inserts rows `from..=to` as `(id, v)` with `v = 'row <id>'` (PostgreSQL).
fn pg_insert_range(table: &str, from: i64, to: i64) {
    Db::Postgres.exec(&format!(
        "INSERT INTO {table} (id, v) SELECT g, 'row ' || g FROM generate_series({from}, {to}) g"
    ));
}

/// A JSON number's text with trailing fractional zeros (and a bare `.`) removed.
fn normalized_decimal(n: &Json) -> String {
    let Json::Number(n) = n else {
        panic!("{n} is not a JSON number");
    };
    let text = n.to_string();
    if text.contains('.') && !text.contains(['e', 'E']) {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// An RFC 3339 timestamp in UTC (`Z`), as an instant.
fn utc(value: &Json) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a timestamp string"));
    assert!(text.ends_with('Z'), "{text:?} is not in UTC (Z)");
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("expected instant")
        .with_timezone(&Utc)
}

/// Asserts `value` is a JSON integer (no fraction, no exponent) equal to `want`.
fn assert_int(value: &Json, want: i64, what: &str) {
    let Json::Number(n) = value else {
        panic!("{what}: {value} is not a JSON number");
    };
    assert_eq!(
        n.to_string(),
        want.to_string(),
        "{what}: not the exact integer"
    );
    assert_eq!(n.as_i64(), Some(want), "{what}");
}

/// The messages sorted by their `id`.
fn by_id(messages: &[Received]) -> Vec<(String, serde_json::Map<String, Json>)> {
    let mut rows: Vec<(String, serde_json::Map<String, Json>)> = messages
        .iter()
        .map(|m| (m.topic.clone(), json_of(&m.payload)))
        .collect();
    rows.sort_by_key(|(_, row)| row["id"].as_i64());
    rows
}

// ---------------------------------------------------------------------------------------
// 1. JSON values and types
// ---------------------------------------------------------------------------------------

#[test]
fn json_values_and_types_from_postgres() {
    // Given a PostgreSQL table with one column per type and a route that names the topic
    // after a column
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_types",
        "id BIGINT PRIMARY KEY, device VARCHAR(40) NOT NULL, n INTEGER, \
         amount NUMERIC(30,10), ratio DOUBLE PRECISION, flag BOOLEAN, label TEXT, \
         ts TIMESTAMPTZ, naive TIMESTAMP, dt DATE, bin BYTEA, nothing TEXT",
    );
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES \
         (1, 'd1', 42, 12345678901234567890.1234567891, 1.5, true, 'é 日本 🎉', \
          '2024-05-01 12:00:00+02', '2024-05-01 12:00:00.123456', '2024-02-29', \
          '\\x0001feff6869', NULL), \
         (9007199254740993, 'd-2', -7, -0.5, -0.25, false, 'it''s \"quoted\" \\ back', \
          '2024-05-01 12:00:00.25+00', '1999-12-31 23:59:59', '1999-12-31', '\\x', NULL), \
         (9223372036854775807, 'd3', 2147483647, 0, 6.02214076e23, NULL, '', \
          '1970-01-01 00:00:00+00', '2000-01-01 00:00:00', '2000-01-01', NULL, NULL)"
    ));
    let root = unique("types");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "types",
            &format!(
                "SELECT id, device, n, amount, ratio, flag, label, ts, naive, dt, bin, nothing \
                 FROM {t} WHERE id > ? ORDER BY id"
            ),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&format!("{root}/{{device}}"))),
                "qos: 1",
                "format: json",
            ],
        )],
    );
    let sub = world.subscribe(&format!("{root}/#"));

    // When the bridge runs
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "three messages", || Ok(sub.count() >= 3));
    std::thread::sleep(QUIET);

    // Then each row arrived once, on the topic filled from its row
    let messages = sub.messages();
    assert_eq!(messages.len(), 3, "{messages:?}");
    let rows = by_id(&messages);
    let topics: Vec<&str> = rows.iter().map(|(topic, _)| topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            format!("{root}/d1"),
            format!("{root}/d-2"),
            format!("{root}/d3")
        ]
    );
    // And each payload is an object whose keys are the column names
    for (_, row) in &rows {
        let keys: Vec<&str> = row.keys().map(String::as_str).collect();
        let mut want = vec![
            "id", "device", "n", "amount", "ratio", "flag", "label", "ts", "naive", "dt", "bin",
            "nothing",
        ];
        want.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, want);
    }
    let col = |r: usize, c: &str| &rows[r].1[c];

    // And integers are exact JSON integers, beyond 2^53 and at i64::MAX too
    assert_int(col(0, "id"), 1, "id 1");
    assert_int(col(1, "id"), 9_007_199_254_740_993, "id 2^53+1");
    assert_int(col(2, "id"), i64::MAX, "id i64::MAX");
    assert_int(col(0, "n"), 42, "n");
    assert_int(col(1, "n"), -7, "n");
    assert_int(col(2, "n"), i64::from(i32::MAX), "n");
    // And decimals are JSON numbers that keep every digit
    let Json::Number(amount) = col(0, "amount") else {
        panic!("amount is not a JSON number: {}", col(0, "amount"));
    };
    assert_eq!(amount.to_string(), "12345678901234567890.1234567891");
    assert_eq!(normalized_decimal(col(1, "amount")), "-0.5");
    assert_eq!(normalized_decimal(col(2, "amount")), "0");
    // And floats are numbers
    let ratios: Vec<Option<f64>> = (0..3).map(|r| col(r, "ratio").as_f64()).collect();
    assert_eq!(ratios, [Some(1.5), Some(-0.25), Some(6.02214076e23)]);
    // And booleans are booleans, NULL is null
    let flags: Vec<&Json> = (0..3).map(|r| col(r, "flag")).collect();
    assert_eq!(flags, [&Json::Bool(true), &Json::Bool(false), &Json::Null]);
    // And text arrives unchanged (non-ASCII, quotes, backslash, empty)
    let labels: Vec<&Json> = (0..3).map(|r| col(r, "label")).collect();
    assert_eq!(
        labels,
        [
            &Json::from("é 日本 🎉"),
            &Json::from("it's \"quoted\" \\ back"),
            &Json::from("")
        ]
    );
    // And timestamptz values are RFC 3339 in UTC, timestamps without time zone have no offset
    assert_eq!(col(0, "ts"), &Json::from("2024-05-01T10:00:00Z"));
    assert_eq!(utc(col(1, "ts")), instant("2024-05-01T12:00:00.25Z"));
    assert_eq!(col(2, "ts"), &Json::from("1970-01-01T00:00:00Z"));
    assert_eq!(col(0, "naive"), &Json::from("2024-05-01T12:00:00.123456"));
    assert_eq!(col(1, "naive"), &Json::from("1999-12-31T23:59:59"));
    // And dates are YYYY-MM-DD, binary is base64, NULL is null
    let dates: Vec<&Json> = (0..3).map(|r| col(r, "dt")).collect();
    assert_eq!(
        dates,
        [
            &Json::from("2024-02-29"),
            &Json::from("1999-12-31"),
            &Json::from("2000-01-01")
        ]
    );
    let bins: Vec<&Json> = (0..3).map(|r| col(r, "bin")).collect();
    assert_eq!(
        bins,
        [&Json::from("AAH+/2hp"), &Json::from(""), &Json::Null]
    );
    for r in 0..3 {
        assert_eq!(col(r, "nothing"), &Json::Null);
    }
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn timestamptz_is_utc_whatever_the_session_time_zone() {
    // Given a PostgreSQL session time zone of +05:30 (set by the connection string)
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(&db, "out_tz", "id INTEGER PRIMARY KEY, ts TIMESTAMPTZ");
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES (1, '2024-05-01 12:00:00+02'), (2, '2024-12-31 23:30:00-05')"
    ));
    let cs = format!(
        "{}ConnSettings={{SET TIME ZONE 'Asia/Kolkata'}};",
        db.connection_string()
    );
    let topic = unique("tz");
    let config = config(
        &world,
        &cs,
        &[route(
            "tz",
            &format!("SELECT id, ts FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&topic)),
            ],
        )],
    );
    let sub = world.subscribe(&topic);

    // When the bridge publishes the rows
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "two messages", || Ok(sub.count() >= 2));

    // Then the instants are written in UTC
    let rows = by_id(&sub.messages());
    let stamps: Vec<&Json> = rows.iter().map(|(_, r)| &r["ts"]).collect();
    assert_eq!(
        stamps,
        [
            &Json::from("2024-05-01T10:00:00Z"),
            &Json::from("2025-01-01T04:30:00Z")
        ]
    );
    terminate_ok(&mut bridge);
}

#[test]
fn json_values_and_types_from_mariadb() {
    // Given a MariaDB table with the common types
    let db = Db::MariaDb;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_types",
        "id BIGINT PRIMARY KEY, device VARCHAR(40) NOT NULL, n INT, amount DECIMAL(30,10), \
         ratio DOUBLE, label TEXT, ts DATETIME(6), dt DATE, bin BLOB, nothing VARCHAR(10)",
    );
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES \
         (9007199254740993, 'm1', -7, 12345678901234567890.1234567891, 1.5, 'é 日本 🎉', \
          '2024-05-01 10:00:00', '2024-02-29', X'0001FEFF6869', NULL), \
         (2, 'm2', 2147483647, -0.5, 6.02214076e23, 'it''s \"q\"', \
          '2024-05-01 12:00:00.250000', '1999-12-31', NULL, NULL)"
    ));
    let root = unique("mtypes");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "mtypes",
            &format!(
                "SELECT id, device, n, amount, ratio, label, ts, dt, bin, nothing \
                 FROM {t} WHERE id > ? ORDER BY id"
            ),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&format!("{root}/{{device}}"))),
            ],
        )],
    );
    let sub = world.subscribe(&format!("{root}/#"));

    // When the bridge runs
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "two messages", || Ok(sub.count() >= 2));

    // Then the values keep their JSON types
    let rows = by_id(&sub.messages());
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (topic, big) = &rows[1];
    let (topic2, small) = &rows[0];
    assert_eq!(topic, &format!("{root}/m1"));
    assert_eq!(topic2, &format!("{root}/m2"));
    assert_int(&big["id"], 9_007_199_254_740_993, "id");
    assert_int(&big["n"], -7, "n");
    assert_int(&small["n"], i64::from(i32::MAX), "n");
    let Json::Number(amount) = &big["amount"] else {
        panic!("amount is not a JSON number: {}", big["amount"]);
    };
    assert_eq!(amount.to_string(), "12345678901234567890.1234567891");
    assert_eq!(normalized_decimal(&small["amount"]), "-0.5");
    assert_eq!(big["ratio"].as_f64(), Some(1.5));
    assert_eq!(small["ratio"].as_f64(), Some(6.02214076e23));
    assert_eq!(big["label"], Json::from("é 日本 🎉"));
    assert_eq!(small["label"], Json::from("it's \"q\""));
    // DATETIME has no time zone: published without an offset
    assert_eq!(big["ts"], Json::from("2024-05-01T10:00:00"));
    assert_eq!(small["ts"], Json::from("2024-05-01T12:00:00.25"));
    assert_eq!(big["dt"], Json::from("2024-02-29"));
    assert_eq!(big["bin"], Json::from("AAH+/2hp"));
    assert_eq!(small["bin"], Json::Null);
    assert_eq!(big["nothing"], Json::Null);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

/// How one database spells the large-value test's expressions.
struct LargeCase {
    db: Db,
    columns: &'static str,
    /// `n` bytes of 0x00 as a binary value.
    zeros: fn(usize) -> String,
    /// A binary value of the single byte 0x01.
    one: &'static str,
}

/// Text and binary values far beyond the bridge's initial column buffers arrive whole, and
/// the rows after them are neither skipped nor repeated.
fn large_values_arrive_whole(case: LargeCase) {
    // Given a 100 KB non-ASCII text with 100 KB of binary, a 1 MB text, and a small row
    let LargeCase {
        db,
        columns,
        zeros,
        one,
    } = case;
    let world = World::new("outbound");
    let table = TempTable::create(&db, "out_large", columns);
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} (id, label, bin) VALUES (1, REPEAT('é', 50000), {})",
        zeros(99_999)
    ));
    db.exec(&format!(
        "INSERT INTO {t} (id, label, bin) VALUES (2, REPEAT('x', 1000000), NULL)"
    ));
    db.exec(&format!(
        "INSERT INTO {t} (id, label, bin) VALUES (3, 'small', {one})"
    ));
    let topic = unique("large");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "large",
            &format!("SELECT id, label, bin FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&topic)),
            ],
        )],
    );
    let sub = world.subscribe(&topic);

    // When the bridge publishes them
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "three messages", || Ok(sub.count() >= 3));
    std::thread::sleep(QUIET);

    // Then each row arrived once with every character and byte
    let rows = by_id(&sub.messages());
    let ids: Vec<i64> = rows.iter().filter_map(|(_, r)| r["id"].as_i64()).collect();
    assert_eq!(ids, [1, 2, 3]);
    let label = |r: usize| rows[r].1["label"].as_str().map(str::to_owned);
    assert_eq!(label(0), Some("é".repeat(50_000)));
    assert_eq!(label(1).map(|l| l.len()), Some(1_000_000));
    assert_eq!(label(1), Some("x".repeat(1_000_000)));
    assert_eq!(label(2).as_deref(), Some("small"));
    // 99 999 zero bytes are 33 333 groups of "AAAA" in base64
    assert_eq!(rows[0].1["bin"], Json::from("AAAA".repeat(33_333)));
    assert_eq!(rows[1].1["bin"], Json::Null);
    assert_eq!(rows[2].1["bin"], Json::from("AQ=="));
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn large_values_arrive_whole_postgres() {
    large_values_arrive_whole(LargeCase {
        db: Db::Postgres,
        columns: "id INTEGER PRIMARY KEY, label TEXT, bin BYTEA",
        zeros: |n| format!("decode(REPEAT('00', {n}), 'hex')"),
        one: "'\\x01'",
    });
}

#[test]
fn large_values_arrive_whole_mariadb() {
    large_values_arrive_whole(LargeCase {
        db: Db::MariaDb,
        columns: "id INT PRIMARY KEY, label LONGTEXT, bin LONGBLOB",
        zeros: |n| format!("UNHEX(REPEAT('00', {n}))"),
        one: "X'01'",
    });
}

/// Publishes the rows of a fresh SQLite table (`id`, `device` and `columns`, rows given as
/// SQL value lists) and returns the payloads in id order.
fn publish_sqlite_rows(
    columns: &str,
    select: &str,
    rows: &[&str],
) -> Vec<(String, serde_json::Map<String, Json>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::Sqlite(dir.path().join("source.db"));
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_types",
        &format!("id INTEGER PRIMARY KEY, device TEXT NOT NULL, {columns}"),
    );
    let t = &table.name;
    db.exec(&format!("INSERT INTO {t} VALUES ({})", rows.join("), (")));
    let root = unique("stypes");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "stypes",
            &format!("SELECT id, device, {select} FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&format!("{root}/{{device}}"))),
            ],
        )],
    );
    let sub = world.subscribe(&format!("{root}/#"));
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "every row", || Ok(sub.count() >= rows.len()));
    let published = by_id(&sub.messages());
    assert_eq!(published.len(), rows.len(), "{published:?}");
    let devices: Vec<String> = published
        .iter()
        .map(|(_, r)| format!("{root}/{}", r["device"].as_str().unwrap_or_default()))
        .collect();
    let topics: Vec<String> = published.iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(topics, devices, "topics are filled from the row");
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
    published
}

#[test]
fn json_values_and_types_from_sqlite() {
    // Given a SQLite file with integers (also beyond 32 bits), reals, text and NULL
    // When the bridge publishes the rows
    let rows = publish_sqlite_rows(
        "n INTEGER, ratio REAL, label TEXT, empty TEXT",
        "n, ratio, label, empty",
        &[
            "1, 's1', 9007199254740993, 1.5, 'é 日本 🎉', NULL",
            "2, 's2', -42, -0.25, 'it''s \"q\"', NULL",
        ],
    );

    // Then the values keep their JSON types
    let (_, a) = &rows[0];
    let (_, b) = &rows[1];
    assert_int(&a["id"], 1, "id");
    assert_int(&a["n"], 9_007_199_254_740_993, "n");
    assert_int(&b["n"], -42, "n");
    assert_eq!(a["ratio"].as_f64(), Some(1.5));
    assert_eq!(b["ratio"].as_f64(), Some(-0.25));
    assert_eq!(a["label"], Json::from("é 日本 🎉"));
    assert_eq!(b["label"], Json::from("it's \"q\""));
    assert_eq!(a["empty"], Json::Null);
}

#[test]
fn sqlite_bigint_and_blob_columns_keep_their_json_types() {
    // Given a SQLite file with BIGINT and BLOB columns
    // When the bridge publishes the rows
    let rows = publish_sqlite_rows(
        "big BIGINT, bin BLOB",
        "big, bin",
        &[
            "1, 's1', 9007199254740993, X'0001FEFF6869'",
            "2, 's2', -42, NULL",
        ],
    );

    // Then BIGINT values are JSON integers and BLOBs base64
    let (_, a) = &rows[0];
    let (_, b) = &rows[1];
    assert_int(&a["big"], 9_007_199_254_740_993, "big");
    assert_int(&b["big"], -42, "big");
    assert_eq!(a["bin"], Json::from("AAH+/2hp"));
    assert_eq!(b["bin"], Json::Null);
}

// ---------------------------------------------------------------------------------------
// 2. CSV
// ---------------------------------------------------------------------------------------

/// Parses one payload as CSV and returns its only record.
fn csv_record(payload: &[u8], delimiter: u8, quote: u8) -> Vec<String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delimiter)
        .quote(quote)
        .from_reader(payload);
    let records: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not CSV ({e}): {}", String::from_utf8_lossy(payload)));
    assert_eq!(
        records.len(),
        1,
        "one record per message: {}",
        String::from_utf8_lossy(payload)
    );
    records[0].iter().map(str::to_owned).collect()
}

#[test]
fn csv_rows_are_one_line_each_and_round_trip() {
    // Given rows whose text holds the delimiter, the quote and a newline, and two CSV
    // routes: the default `,` and `"`, and `;` with `'`
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_csv",
        "id INTEGER PRIMARY KEY, label TEXT, amount NUMERIC(12,3), nothing TEXT, \
         ts TIMESTAMPTZ, flag BOOLEAN",
    );
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES \
         (1, 'plain', 1.125, NULL, '2024-05-01 12:00:00+02', true), \
         (2, E'a,b \"q\"\\nline2', -2.125, NULL, '2024-05-01 10:00:00+00', false), \
         (3, 'semi;colon ''single''', 0.001, 'x', '2024-05-01 10:00:00+00', NULL)"
    ));
    let root = unique("csv");
    let query =
        format!("SELECT id, label, amount, nothing, ts, flag FROM {t} WHERE id > ? ORDER BY id");
    let config = config(
        &world,
        &db.connection_string(),
        &[
            route(
                "csv_default",
                &query,
                &[
                    "track: id",
                    "start: 0",
                    INTERVAL,
                    "broker: m",
                    &format!("topic: {}", yq(&format!("{root}/default/{{id}}"))),
                    "format: csv",
                ],
            ),
            route(
                "csv_custom",
                &query,
                &[
                    "track: id",
                    "start: 0",
                    INTERVAL,
                    "broker: m",
                    &format!("topic: {}", yq(&format!("{root}/custom/{{id}}"))),
                    "format: csv",
                    "csv: { delimiter: \";\", quote: \"'\" }",
                ],
            ),
        ],
    );
    let sub = world.subscribe(&format!("{root}/#"));

    // When the bridge runs
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "six messages", || Ok(sub.count() >= 6));
    std::thread::sleep(QUIET);
    let messages = sub.messages();
    assert_eq!(messages.len(), 6, "{messages:?}");

    // Then every message is one CSV record with the row's values (NULL = empty field)
    let want: Vec<Vec<&str>> = vec![
        vec!["1", "plain", "1.125", "", "2024-05-01T10:00:00Z", "true"],
        vec![
            "2",
            "a,b \"q\"\nline2",
            "-2.125",
            "",
            "2024-05-01T10:00:00Z",
            "false",
        ],
        vec![
            "3",
            "semi;colon 'single'",
            "0.001",
            "x",
            "2024-05-01T10:00:00Z",
            "",
        ],
    ];
    for (variant, delimiter, quote) in [("default", b',', b'"'), ("custom", b';', b'\'')] {
        let mut got: Vec<(String, Vec<String>)> = messages
            .iter()
            .filter(|m| m.topic.starts_with(&format!("{root}/{variant}/")))
            .map(|m| (m.topic.clone(), csv_record(&m.payload, delimiter, quote)))
            .collect();
        got.sort();
        let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [1, 2, 3].map(|i| format!("{root}/{variant}/{i}")),
            "{variant}"
        );
        let records: Vec<Vec<&str>> = got
            .iter()
            .map(|(_, r)| r.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(records, want, "{variant}");
        // And a row without special characters is a single line
        let plain = messages
            .iter()
            .find(|m| m.topic == format!("{root}/{variant}/1"))
            .expect("row 1");
        let text = plain.payload_str();
        let line = text.strip_suffix('\n').unwrap_or(text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        assert!(!line.contains('\n'), "{variant}: {text:?} is not one line");
    }
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

// ---------------------------------------------------------------------------------------
// 2b. Publish options and destinations
// ---------------------------------------------------------------------------------------

#[test]
fn qos_2_and_retain_reach_live_and_late_subscribers() {
    // Given a route publishing at QoS 2 with retain, one topic per device
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_retain",
        "id INTEGER PRIMARY KEY, dev TEXT NOT NULL",
    );
    let t = &table.name;
    db.exec(&format!("INSERT INTO {t} VALUES (1, 'd1'), (2, 'd2')"));
    let root = unique("retain");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "retain",
            &format!("SELECT id, dev FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&format!("{root}/{{dev}}"))),
                "qos: 2",
                "retain: true",
            ],
        )],
    );
    let live = Subscriber::connect(world.broker.port, &format!("{root}/#"), 2);

    // When the bridge publishes the rows
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "two messages", || Ok(live.count() >= 2));
    std::thread::sleep(QUIET);

    // Then a live QoS 2 subscriber got each once, at QoS 2
    let messages = live.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages.iter().all(|m| m.qos == 2), "{messages:?}");
    // And a subscriber that comes later gets both as retained messages
    let late = Subscriber::connect(world.broker.port, &format!("{root}/#"), 1);
    let retained = late.wait_for(2, LIVENESS);
    let mut got: Vec<(String, i64, bool)> = retained
        .iter()
        .map(|m| (m.topic.clone(), id_of(&m.payload), m.retain))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (format!("{root}/d1"), 1, true),
            (format!("{root}/d2"), 2, true)
        ]
    );
    terminate_ok(&mut bridge);
}

#[test]
fn without_track_every_poll_publishes_every_row() {
    // Given a route without `track`
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(&db, "out_notrack", "id INTEGER PRIMARY KEY, v TEXT");
    let t = &table.name;
    pg_insert_range(t, 1, 2);
    let topic = unique("notrack");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "notrack",
            &format!("SELECT id, v FROM {t} ORDER BY id"),
            &[INTERVAL, "broker: m", &format!("topic: {}", yq(&topic))],
        )],
    );
    let sub = world.subscribe(&topic);

    // When the bridge polls several times
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "three polls' worth", || {
        let counts = mqtt_id_counts(&sub.messages());
        Ok(counts.get(&1) >= Some(&3) && counts.get(&2) >= Some(&3))
    });
    terminate_ok(&mut bridge);

    // Then every poll published both rows, in order, and nothing else
    let ids: Vec<i64> = sub.messages().iter().map(|m| id_of(&m.payload)).collect();
    assert!(ids.iter().all(|i| [1, 2].contains(i)), "{ids:?}");
    let pairs = ids.len() / 2;
    assert_eq!(&ids[..pairs * 2], [1, 2].repeat(pairs), "{ids:?}");
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

#[test]
fn delay_leaves_young_rows_for_a_later_poll() {
    // Given a row an hour old and a row stamped an hour from now, and `delay: 5s`
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_delay",
        "id INTEGER PRIMARY KEY, updated_at TIMESTAMP NOT NULL",
    );
    let t = &table.name;
    let utc_now = "(now() AT TIME ZONE 'UTC')";
    db.exec(&format!(
        "INSERT INTO {t} VALUES (1, {utc_now} - interval '1 hour'),          (2, {utc_now} + interval '1 hour')"
    ));
    let topic = unique("delay");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "delay",
            &format!(
                "SELECT id, updated_at FROM {t} WHERE (updated_at, id) > (?, ?) \
                 ORDER BY updated_at, id"
            ),
            &[
                "track: [updated_at, id]",
                "start: [\"1970-01-01 00:00:00\", 0]",
                "delay: 5s",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&topic)),
            ],
        )],
    );
    let sub = world.subscribe(&topic);

    // When the bridge runs
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "the old row", || Ok(sub.count() >= 1));
    std::thread::sleep(QUIET);

    // Then only the old row went out
    let ids: Vec<i64> = sub.messages().iter().map(|m| id_of(&m.payload)).collect();
    assert_eq!(ids, [1]);

    // And once the young row has aged (its stamp moved back), it goes out too, once
    db.exec(&format!(
        "UPDATE {t} SET updated_at = {utc_now} - interval '30 minutes' WHERE id = 2"
    ));
    wait_for(&mut bridge, "the aged row", || Ok(sub.count() >= 2));
    std::thread::sleep(QUIET);
    let ids: Vec<i64> = sub.messages().iter().map(|m| id_of(&m.payload)).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn amqp_default_exchange_delivers_to_the_queue_named_by_the_routing_key() {
    // Given a queue, and a route publishing to the default exchange (`exchange: ""`) with
    // the queue's name as routing key
    let db = Db::Postgres;
    let world = World::new("outbound");
    let mut rabbit = Rabbit::connect();
    let queue = unique("mqdb_out_default_q");
    rabbit.declare_queue(&queue);
    let table = TempTable::create(&db, "out_dflt", "id INTEGER PRIMARY KEY, v TEXT");
    let t = &table.name;
    pg_insert_range(t, 1, 3);
    let config = config_amqp(
        &world,
        Rabbit::URL,
        &db.connection_string(),
        &[route(
            "dflt",
            &format!("SELECT id, v FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: rabbit",
                "exchange: \"\"",
                &format!("routing_key: {}", yq(&queue)),
            ],
        )],
    );

    // When the bridge runs
    let mut bridge = Bridge::start(&config);
    let mut got: Vec<AmqpMessage> = Vec::new();
    wait_for(&mut bridge, "three messages in the queue", || {
        got.extend(rabbit.take_all(&queue));
        Ok(got.len() >= 3)
    });

    // Then the rows are in the queue, in order
    let ids: Vec<i64> = got.iter().map(|m| id_of(&m.payload)).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn a_numeric_track_column_is_bound_as_a_number() {
    // Given a PostgreSQL table keyed by NUMERIC(20,0) (as many legacy schemas are)
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(&db, "out_numtrack", "id NUMERIC(20,0) PRIMARY KEY, v TEXT");
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES (10000000000000000001, 'a'), (10000000000000000002, 'b')"
    ));
    let topic = unique("numtrack");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "numtrack",
            &format!("SELECT id, v FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                "max_rows: 1",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&topic)),
            ],
        )],
    );
    let sub = world.subscribe(&topic);

    // When the bridge polls (one row per poll, so the second poll binds the first row's id)
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "two messages", || Ok(sub.count() >= 2));
    std::thread::sleep(QUIET);

    // Then both rows went out once, with every digit
    let ids: Vec<String> = sub
        .messages()
        .iter()
        .map(|m| json_of(&m.payload)["id"].to_string())
        .collect();
    assert_eq!(ids, ["10000000000000000001", "10000000000000000002"]);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn a_topic_template_with_a_leading_slash_publishes() {
    // Given a topic template with a leading slash (a legal MQTT topic: the first level is
    // empty, but no row value is)
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_slash",
        "id INTEGER PRIMARY KEY, dev TEXT NOT NULL",
    );
    let t = &table.name;
    db.exec(&format!("INSERT INTO {t} VALUES (1, 'd1')"));
    let root = unique("slash");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "slash",
            &format!("SELECT id, dev FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&format!("/{root}/{{dev}}"))),
            ],
        )],
    );
    let sub = world.subscribe(&format!("/{root}/#"));

    // When the bridge runs
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "the message or a dead letter", || {
        Ok(sub.count() >= 1 || !dlq_list(&config).is_empty())
    });

    // Then the row is published on its topic
    let topics: Vec<String> = sub.messages().iter().map(|m| m.topic.clone()).collect();
    assert_eq!(
        topics,
        [format!("/{root}/d1")],
        "dead letters: {:?}",
        dlq_list(&config)
    );
    terminate_ok(&mut bridge);
}

#[test]
fn outbound_mqtt_publishes_use_the_route_client_id() {
    // Given a route on broker `m` whose client_id is known
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(&db, "out_cid", "id INTEGER PRIMARY KEY, v TEXT");
    let t = &table.name;
    pg_insert_range(t, 1, 1);
    let topic = unique("cid");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "cid",
            &format!("SELECT id, v FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&topic)),
            ],
        )],
    );
    let sub = world.subscribe(&topic);

    // When the bridge publishes
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "the message", || Ok(sub.count() >= 1));
    terminate_ok(&mut bridge);

    // Then the broker saw the publisher connect as "<client_id>-<route>"
    let log = world.broker.log();
    assert!(
        log.contains(&format!(" as {}-cid ", world.client_id)),
        "mosquitto log:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Restart in the middle of a stream
// ---------------------------------------------------------------------------------------

/// The rows table and route of the restart and outage tests: `id INTEGER, v TEXT`,
/// `track: id`, `max_rows: 100`.
const STREAM_ROWS: &str = "max_rows: 100";
const STREAM_MAX_ROWS: usize = 100;

fn stream_route(name: &str, table: &str, target: &[&str]) -> Route {
    let mut lines = vec!["track: id", "start: 0", INTERVAL, STREAM_ROWS];
    lines.extend_from_slice(target);
    route(
        name,
        &format!("SELECT id, v FROM {table} WHERE id > ? ORDER BY id"),
        &lines,
    )
}

/// A stream test's world: a table `out_<name>` (`id INTEGER, v TEXT`) polled by route
/// `name` with [`stream_route`] to `topic` on broker `m` at QoS 1.
struct MqttStream {
    table: TempTable,
    world: World,
    topic: String,
    config: PathBuf,
}

impl MqttStream {
    fn new(name: &str) -> MqttStream {
        let world = World::new("outbound");
        let table = TempTable::create(
            &Db::Postgres,
            &format!("out_{name}"),
            "id INTEGER PRIMARY KEY, v TEXT",
        );
        let topic = unique(name);
        let target = ["broker: m", &format!("topic: {}", yq(&topic)), "qos: 1"];
        let config = config(
            &world,
            &Db::Postgres.connection_string(),
            &[stream_route(name, &table.name, &target)],
        );
        MqttStream {
            table,
            world,
            topic,
            config,
        }
    }

    /// Inserts rows 1..=1000, starts the bridge and waits until `sub` has the first poll's
    /// messages.
    fn start_mid_stream(&self, sub: &Subscriber) -> Bridge {
        pg_insert_range(&self.table.name, 1, 1000);
        let mut bridge = Bridge::start(&self.config);
        wait_for(&mut bridge, "the first messages", || Ok(sub.count() >= 100));
        bridge
    }

    /// A persistent-session subscriber of the topic (the broker keeps its messages across
    /// its own restart) and its client id.
    fn durable_subscriber(&self) -> (String, Subscriber) {
        let id = unique(&format!("{}_sub", self.table.name));
        let sub = Subscriber::connect_with(self.world.broker.port, &id, false, &[(&self.topic, 1)]);
        (id, sub)
    }
}

/// Runs 2000 rows through a bridge that is stopped (SIGKILL or SIGTERM) after the first
/// messages arrive and then started again; returns how often each id arrived.
fn restart_mid_stream(graceful: bool) -> BTreeMap<i64, usize> {
    // Given 1000 rows, and a subscriber that stays connected throughout
    let stream = MqttStream::new("restart");
    let sub = stream.world.subscribe(&stream.topic);

    // When the bridge is stopped as soon as the first poll's messages arrive
    let mut bridge = stream.start_mid_stream(&sub);
    let (t, config) = (&stream.table.name, &stream.config);
    if graceful {
        terminate_ok(&mut bridge);
    } else {
        bridge.kill();
    }
    let at_stop = sub.count();

    // And 1000 more rows are inserted while it is down, and it is started again
    pg_insert_range(t, 1001, 2000);
    let mut bridge = Bridge::start(config);

    // Then every row arrives
    wait_for_ids(&mut bridge, &sub, 2000);
    std::thread::sleep(QUIET);
    let counts = mqtt_id_counts(&sub.messages());
    assert_eq!(missing(&counts, 2000), Vec::<i64>::new());
    assert_eq!(counts.len(), 2000, "ids outside 1..=2000");
    assert_eq!(dlq_list(config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
    eprintln!(
        "messages before the stop: {at_stop}; duplicates: {}",
        duplicates(&counts)
    );
    counts
}

#[test]
fn sigkill_mid_stream_then_restart_skips_nothing() {
    let counts = restart_mid_stream(false);
    // And at most one poll's worth was published again (a crash between confirm and store)
    let dups = duplicates(&counts);
    assert!(
        dups <= STREAM_MAX_ROWS,
        "{dups} duplicates after SIGKILL, more than one poll (max_rows {STREAM_MAX_ROWS})"
    );
}

#[test]
fn sigterm_mid_stream_then_restart_publishes_each_row_once() {
    let counts = restart_mid_stream(true);
    // And nothing was published twice: SIGTERM is not a crash
    let twice: Vec<i64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        twice,
        Vec::<i64>::new(),
        "ids published more than once after SIGTERM"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Broker outages
// ---------------------------------------------------------------------------------------

#[test]
fn mosquitto_stopped_mid_stream_loses_nothing() {
    // Given a persistent-session subscriber, so the broker keeps its messages across its own
    // restart, and 1000 rows
    let stream = MqttStream::new("mqstop");
    let (sub_id, sub) = stream.durable_subscriber();
    let mut bridge = stream.start_mid_stream(&sub);
    let MqttStream {
        table,
        mut world,
        config,
        ..
    } = stream;
    let t = &table.name;

    // When the broker stops while rows keep coming, and comes back a few seconds later
    world.broker.stop();
    let before = sub.messages();
    drop(sub);
    pg_insert_range(t, 1001, 2000);
    std::thread::sleep(Duration::from_secs(3));
    assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());
    world.broker.restart();
    let sub = Subscriber::connect_with(world.broker.port, &sub_id, false, &[]);
    assert!(
        sub.session_present,
        "the broker lost the subscriber's session"
    );

    // Then every row arrives, and nothing was dead-lettered
    wait_for(&mut bridge, "every id in 1..=2000", || {
        let mut all = before.clone();
        all.extend(sub.messages());
        Ok(missing(&mqtt_id_counts(&all), 2000).is_empty())
    });
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    let mut all = before.clone();
    all.extend(sub.messages());
    let counts = mqtt_id_counts(&all);
    assert_eq!(counts.len(), 2000, "ids outside 1..=2000");
    terminate_ok(&mut bridge);
    eprintln!(
        "messages before the stop: {}; duplicates: {}",
        before.len(),
        duplicates(&counts)
    );
}

#[test]
fn a_connection_lost_while_confirms_are_awaited_loses_nothing() {
    // Given a bridge that reaches Mosquitto through a proxy, polls longer than the publish
    // window (so publishes are in flight most of the time; the next poll is read while a
    // poll's confirms are awaited), and more rows than a few polls
    let world = World::new("outbound");
    let proxy = TcpProxy::start(world.broker.addr());
    let table = TempTable::create(&Db::Postgres, "out_lost", "id INTEGER PRIMARY KEY, v TEXT");
    let t = &table.name;
    let topic = unique("lost");
    let url = format!("mqtt://127.0.0.1:{}", proxy.port);
    let config = config_with(
        &world,
        &[("m", &url)],
        &Db::Postgres.connection_string(),
        &[route(
            "lost",
            &format!("SELECT id, v FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "max_rows: 5000",
                "broker: m",
                &format!("topic: {}", yq(&topic)),
                "qos: 1",
            ],
        )],
    );
    let sub = world.subscribe(&topic);
    let n = 30_000;
    pg_insert_range(t, 1, n);
    let mut bridge = Bridge::start(&config);

    // When the connection is cut in the middle of the stream and restored soon after, until
    // a cut has failed publishes that were waiting for their confirms
    let in_flight_cut = |log: &str| {
        log.lines()
            .any(|l| l.contains("publisher connection lost") && !l.contains("unconfirmed=0"))
    };
    for _ in 0..5 {
        let seen = sub.count();
        wait_for(&mut bridge, "more messages", || {
            Ok(sub.count() >= seen + 1000)
        });
        proxy.set_down(true);
        std::thread::sleep(Duration::from_millis(300));
        proxy.set_down(false);
        if in_flight_cut(&bridge.log()) {
            break;
        }
    }
    let log = bridge.log();
    assert!(
        in_flight_cut(&log),
        "no cut came while publishes were in flight:\n{log}"
    );

    // Then every row arrives, and nothing was dead-lettered
    wait_for_ids(&mut bridge, &sub, n);
    let counts = mqtt_id_counts(&sub.messages());
    assert_eq!(missing(&counts, n), Vec::<i64>::new());
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
    eprintln!("duplicates after the cut: {}", duplicates(&counts));
}

#[test]
fn sigterm_while_the_broker_is_down_exits_and_a_restart_loses_nothing() {
    // Given a bridge in the middle of a stream to a persistent-session subscriber
    let stream = MqttStream::new("termdown");
    let (sub_id, sub) = stream.durable_subscriber();
    let mut bridge = stream.start_mid_stream(&sub);
    let MqttStream {
        table,
        mut world,
        config,
        ..
    } = stream;
    let t = &table.name;

    // When the broker stops, more rows come, and the bridge gets SIGTERM while it cannot
    // publish
    world.broker.stop();
    let before = sub.messages();
    drop(sub);
    pg_insert_range(t, 1001, 2000);
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    terminate_ok(&mut bridge);
    let took = asked.elapsed();

    // Then, with the broker back, a new bridge publishes every row
    world.broker.restart();
    let sub = Subscriber::connect_with(world.broker.port, &sub_id, false, &[]);
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "every id in 1..=2000", || {
        let mut all = before.clone();
        all.extend(sub.messages());
        Ok(missing(&mqtt_id_counts(&all), 2000).is_empty())
    });
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
    eprintln!("SIGTERM with the broker down took {took:?}");
}

#[test]
fn rabbitmq_connection_cut_mid_stream_loses_nothing() {
    // Given an exchange with a bound queue, a bridge that reaches RabbitMQ through a proxy,
    // and 1000 rows
    let world = World::new("outbound");
    let mut rabbit = Rabbit::connect();
    let exchange = unique("mqdb_out_cut");
    let queue = unique("mqdb_out_cut_q");
    rabbit.declare_exchange(&exchange, "direct");
    rabbit.declare_bound_queue(&queue, &exchange, "rows");
    let proxy = TcpProxy::start(Rabbit::addr());
    let table = TempTable::create(&Db::Postgres, "out_acut", "id INTEGER PRIMARY KEY, v TEXT");
    let t = &table.name;
    let config = config_amqp(
        &world,
        &Rabbit::url_via(proxy.port),
        &Db::Postgres.connection_string(),
        &[stream_route(
            "acut",
            t,
            &[
                "broker: rabbit",
                &format!("exchange: {}", yq(&exchange)),
                "routing_key: rows",
            ],
        )],
    );
    pg_insert_range(t, 1, 1000);
    let mut bridge = Bridge::start(&config);
    let mut got: Vec<Vec<u8>> = Vec::new();
    wait_for(&mut bridge, "the first messages", || {
        got.extend(rabbit.take_all(&queue).into_iter().map(|m| m.payload));
        Ok(got.len() >= 100)
    });

    // When the connection is cut while rows keep coming, and restored a few seconds later
    proxy.set_down(true);
    pg_insert_range(t, 1001, 2000);
    std::thread::sleep(Duration::from_secs(3));
    assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());
    proxy.set_down(false);

    // Then every row arrives in the queue, and nothing was dead-lettered
    wait_for(&mut bridge, "every id in 1..=2000 in the queue", || {
        got.extend(rabbit.take_all(&queue).into_iter().map(|m| m.payload));
        Ok(missing(&id_counts(got.iter().map(Vec::as_slice)), 2000).is_empty())
    });
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    let counts = id_counts(got.iter().map(Vec::as_slice));
    assert_eq!(counts.len(), 2000, "ids outside 1..=2000");
    assert!(proxy.accepted() >= 2, "the bridge never reconnected");
    terminate_ok(&mut bridge);
    eprintln!("duplicates after the cut: {}", duplicates(&counts));
}

#[test]
fn database_outage_mid_stream_loses_nothing() {
    // Given a bridge that reaches PostgreSQL through a proxy, 1000 rows, and an
    // after_publish that marks each row sent
    let db = Db::Postgres;
    let world = World::new("outbound");
    let proxy = TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 5432)));
    let table = TempTable::create(
        &db,
        "out_dbcut",
        "id INTEGER PRIMARY KEY, v TEXT, sent_at TIMESTAMPTZ NULL",
    );
    let t = &table.name;
    let topic = unique("dbcut");
    let after = format!(
        "after_publish: {}",
        yq(&format!("UPDATE {t} SET sent_at = now() WHERE id = ?"))
    );
    let config = config(
        &world,
        &db.connection_string_via(proxy.port),
        &[stream_route(
            "dbcut",
            t,
            &["broker: m", &format!("topic: {}", yq(&topic)), &after],
        )],
    );
    let sub = world.subscribe(&topic);
    pg_insert_range(t, 1, 1000);
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "the first messages", || Ok(sub.count() >= 100));

    // When the database connection is cut while rows keep coming, and restored later
    proxy.set_down(true);
    pg_insert_range(t, 1001, 2000);
    std::thread::sleep(Duration::from_secs(3));
    assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());
    proxy.set_down(false);

    // Then every row arrives and is marked sent, and nothing was dead-lettered
    wait_for_ids(&mut bridge, &sub, 2000);
    let unsent = format!("SELECT COUNT(*) FROM {t} WHERE sent_at IS NULL");
    wait_for(&mut bridge, "every row marked sent", || {
        Ok(try_scalar(&db, &unsent) == Some(0))
    });
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    let counts = mqtt_id_counts(&sub.messages());
    assert_eq!(counts.len(), 2000, "ids outside 1..=2000");
    assert!(proxy.accepted() >= 2, "the bridge never reconnected");
    terminate_ok(&mut bridge);
    eprintln!("duplicates after the database cut: {}", duplicates(&counts));
}

// ---------------------------------------------------------------------------------------
// 5. A two-column position across a restart
// ---------------------------------------------------------------------------------------

fn rows_sharing_a_timestamp_survive_a_restart(db: Db, columns: &str) {
    // Given ten rows with the same microsecond timestamp and a route that tracks
    // (updated_at, id), three rows per poll
    let world = World::new("outbound");
    let table = TempTable::create(&db, "out_ts", columns);
    let t = &table.name;
    let stamp = "2024-05-01 12:00:00.123456";
    let insert = |from: i64, to: i64| {
        let values: Vec<String> = (from..=to)
            .map(|i| format!("({i}, '{stamp}', 'row {i}')"))
            .collect();
        db.exec(&format!(
            "INSERT INTO {t} (id, updated_at, v) VALUES {}",
            values.join(", ")
        ));
    };
    insert(1, 10);
    let topic = unique("ts");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "ts",
            &format!(
                "SELECT id, updated_at, v FROM {t} WHERE (updated_at, id) > (?, ?) \
                 ORDER BY updated_at, id"
            ),
            &[
                "track: [updated_at, id]",
                "start: [\"1970-01-01 00:00:00\", 0]",
                "max_rows: 3",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&topic)),
            ],
        )],
    );
    let sub = world.subscribe(&topic);

    // When the bridge publishes some of them and is stopped
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "the first poll", || Ok(sub.count() >= 3));
    terminate_ok(&mut bridge);
    let at_stop = sub.count();

    // And ten more rows with the same timestamp and higher ids are inserted, and the bridge
    // starts again
    insert(11, 20);
    let mut bridge = Bridge::start(&config);

    // Then every row arrives exactly once
    wait_for_ids(&mut bridge, &sub, 20);
    std::thread::sleep(QUIET);
    let counts = mqtt_id_counts(&sub.messages());
    assert_eq!(
        counts,
        (1..=20).map(|i| (i, 1)).collect::<BTreeMap<i64, usize>>(),
        "{at_stop} messages before the restart"
    );
    // And the tracked timestamp went out with its microseconds
    let first = json_of(&sub.messages()[0].payload);
    assert_eq!(
        first["updated_at"],
        Json::from("2024-05-01T12:00:00.123456")
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn rows_sharing_a_timestamp_survive_a_restart_postgres() {
    rows_sharing_a_timestamp_survive_a_restart(
        Db::Postgres,
        "id INTEGER PRIMARY KEY, updated_at TIMESTAMP NOT NULL, v TEXT",
    );
}

#[test]
fn rows_sharing_a_timestamp_survive_a_restart_mariadb() {
    rows_sharing_a_timestamp_survive_a_restart(
        Db::MariaDb,
        "id INT PRIMARY KEY, updated_at DATETIME(6) NOT NULL, v TEXT",
    );
}

// ---------------------------------------------------------------------------------------
// 6. Dead letters
// ---------------------------------------------------------------------------------------

#[test]
fn rows_whose_topic_cannot_be_built_become_dead_letters() {
    // Given rows whose topic value holds `+`, `#`, `/`, or nothing, between good rows
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_topic",
        "id INTEGER PRIMARY KEY, dev TEXT NOT NULL",
    );
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES (1, 'ok1'), (2, 'a+b'), (3, 'ok3'), (4, 'x#'), (5, ''), (6, 'ok6'), \
         (7, E'site/\\u001b[2J')"
    ));
    let root = unique("topic");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "badtopic",
            &format!("SELECT id, dev FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&format!("{root}/{{dev}}"))),
            ],
        )],
    );
    let sub = world.subscribe(&format!("{root}/#"));

    // When the bridge runs, and a later good row is inserted once the first ones are done
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "the good rows and four dead letters", || {
        Ok(sub.count() >= 3 && dlq_list(&config).len() >= 4)
    });
    db.exec(&format!("INSERT INTO {t} VALUES (8, 'ok8')"));
    wait_for(&mut bridge, "the later row", || Ok(sub.count() >= 4));
    std::thread::sleep(QUIET);

    // Then the good rows were published once each, on their topics
    let mut topics: Vec<String> = sub.messages().iter().map(|m| m.topic.clone()).collect();
    topics.sort();
    assert_eq!(
        topics,
        ["ok1", "ok3", "ok6", "ok8"].map(|d| format!("{root}/{d}"))
    );
    // And each bad row is exactly one outbound dead letter of kind "topic", with the row
    let letters = dlq_list(&config);
    assert_eq!(letters.len(), 4, "{letters:#?}");
    let mut ids = Vec::new();
    for letter in &letters {
        assert_eq!(letter["route"], "badtopic", "{letter}");
        assert_eq!(letter["direction"], "outbound", "{letter}");
        assert_eq!(letter["error_kind"], "topic", "{letter}");
        // The row never got a topic: its source is the template it was meant for.
        assert_eq!(letter["source"], format!("{root}/{{dev}}"), "{letter}");
        let payload = letter["payload"]
            .as_str()
            .unwrap_or_else(|| panic!("no text payload: {letter}"));
        let row = json_of(payload.as_bytes());
        ids.push(row["id"].as_i64().expect("id"));
    }
    ids.sort_unstable();
    assert_eq!(ids, [2, 4, 5, 7]);
    // And the `/` one names the column and its value, escaped, and the key that allows it
    let slash = letters
        .iter()
        .map(|l| l["error"].as_str().unwrap_or_default())
        .find(|e| e.contains('/'))
        .unwrap_or_else(|| panic!("no dead letter for the `/` value: {letters:#?}"));
    assert!(
        slash.contains(r#"column dev value "site/\u{1b}[2J" contains `/`"#),
        "{slash}"
    );
    assert!(slash.contains("topic_values_add_levels: true"), "{slash}");
    terminate_ok(&mut bridge);
}

#[test]
fn topic_values_add_levels_lets_a_slash_in_a_value_add_levels() {
    // Given a route that allows values to add topic levels, and a value with `/`
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_levels",
        "id INTEGER PRIMARY KEY, dev TEXT NOT NULL",
    );
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES (1, 'hall/dev1'), (2, 'dev2'), (3, 'hall//dev3')"
    ));
    let root = unique("levels");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "levels",
            &format!("SELECT id, dev FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&format!("{root}/{{dev}}"))),
                "topic_values_add_levels: true",
            ],
        )],
    );
    let sub = world.subscribe(&format!("{root}/#"));

    // When the bridge runs
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "two rows and a dead letter", || {
        Ok(sub.count() >= 2 && !dlq_list(&config).is_empty())
    });
    terminate_ok(&mut bridge);

    // Then the `/` made a level, and an empty level is still a dead letter
    let mut topics: Vec<String> = sub.messages().iter().map(|m| m.topic.clone()).collect();
    topics.sort();
    assert_eq!(
        topics,
        [format!("{root}/dev2"), format!("{root}/hall/dev1")]
    );
    let letters = dlq_list(&config);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["error_kind"], "topic", "{letters:#?}");
    let error = letters[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("empty topic level"), "{error}");
}

#[test]
fn unroutable_amqp_rows_become_dead_letters_and_the_position_moves_on() {
    // Given an exchange where only routing key `r.good` has a queue, and rows whose key
    // would be `r.good`, `r.bad` or `r.other`
    let db = Db::Postgres;
    let world = World::new("outbound");
    let mut rabbit = Rabbit::connect();
    let exchange = unique("mqdb_out_unr");
    let queue = unique("mqdb_out_unr_q");
    rabbit.declare_exchange(&exchange, "direct");
    rabbit.declare_bound_queue(&queue, &exchange, "r.good");
    let table = TempTable::create(&db, "out_unr", "id INTEGER PRIMARY KEY, kind TEXT NOT NULL");
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES (1, 'good'), (2, 'bad'), (3, 'good'), (4, 'other'), (5, 'good')"
    ));
    let config = config_amqp(
        &world,
        Rabbit::URL,
        &db.connection_string(),
        &[route(
            "unroutable",
            &format!("SELECT id, kind FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: rabbit",
                &format!("exchange: {}", yq(&exchange)),
                "routing_key: \"r.{kind}\"",
            ],
        )],
    );

    // When the bridge runs, and a later good row is inserted once the first ones are done
    let mut bridge = Bridge::start(&config);
    let mut got: Vec<AmqpMessage> = Vec::new();
    wait_for(
        &mut bridge,
        "three routed rows and two dead letters",
        || {
            got.extend(rabbit.take_all(&queue));
            Ok(got.len() >= 3 && dlq_list(&config).len() >= 2)
        },
    );
    db.exec(&format!("INSERT INTO {t} VALUES (6, 'good')"));
    wait_for(&mut bridge, "the later row", || {
        got.extend(rabbit.take_all(&queue));
        Ok(got.len() >= 4)
    });
    std::thread::sleep(QUIET);
    got.extend(rabbit.take_all(&queue));

    // Then the routable rows are in the queue once each, with their routing key
    let mut ids: Vec<i64> = got.iter().map(|m| id_of(&m.payload)).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 3, 5, 6]);
    for m in &got {
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            (exchange.as_str(), "r.good")
        );
        // And they were published persistent
        assert_eq!(m.delivery_mode, Some(2), "{m:?}");
    }
    // And the unroutable ones are dead letters (once each: the position moved past them)
    let letters = dlq_list(&config);
    assert_eq!(letters.len(), 2, "{letters:#?}");
    let mut seen: Vec<(String, i64)> = letters
        .iter()
        .map(|l| {
            assert_eq!(l["route"], "unroutable", "{l}");
            assert_eq!(l["direction"], "outbound", "{l}");
            assert_eq!(l["error_kind"], "unroutable", "{l}");
            let payload = l["payload"].as_str().unwrap_or_else(|| panic!("{l}"));
            (
                l["source"].as_str().unwrap_or_default().to_owned(),
                id_of(payload.as_bytes()),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (format!("{exchange}/r.bad"), 2),
            (format!("{exchange}/r.other"), 4)
        ]
    );
    terminate_ok(&mut bridge);
}

// ---------------------------------------------------------------------------------------
// 7. after_publish
// ---------------------------------------------------------------------------------------

/// An outbox polled by position (`id > ?`) whose `after_publish` marks each row sent.
fn after_publish_marks_every_row(db: Db, columns: &str, mark: &str) {
    // Given 50 unsent rows
    let world = World::new("outbound");
    let table = TempTable::create(&db, "out_after", columns);
    let t = &table.name;
    let values: Vec<String> = (1..=50).map(|i| format!("({i}, 'd{i}')")).collect();
    db.exec(&format!(
        "INSERT INTO {t} (id, dev) VALUES {}",
        values.join(", ")
    ));
    let topic = unique("after");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "after",
            &format!("SELECT id, dev FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                "max_rows: 20",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&topic)),
                &format!(
                    "after_publish: {}",
                    yq(&format!("UPDATE {t} SET sent_at = {mark} WHERE id = ?"))
                ),
            ],
        )],
    );
    let sub = world.subscribe(&topic);

    // When the bridge publishes them
    let mut bridge = Bridge::start(&config);
    wait_for_ids(&mut bridge, &sub, 50);

    // Then every row is marked sent, and was published once
    let unsent = format!("SELECT COUNT(*) FROM {t} WHERE sent_at IS NULL");
    wait_for(&mut bridge, "every row marked sent", || {
        Ok(try_scalar(&db, &unsent) == Some(0))
    });
    std::thread::sleep(QUIET);
    let counts = mqtt_id_counts(&sub.messages());
    assert_eq!(
        counts,
        (1..=50).map(|i| (i, 1)).collect::<BTreeMap<i64, usize>>()
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn after_publish_marks_every_row_postgres() {
    after_publish_marks_every_row(
        Db::Postgres,
        "id INTEGER PRIMARY KEY, dev TEXT, sent_at TIMESTAMPTZ NULL",
        "now()",
    );
}

#[test]
fn after_publish_marks_every_row_mariadb() {
    after_publish_marks_every_row(
        Db::MariaDb,
        "id INT PRIMARY KEY, dev VARCHAR(20), sent_at DATETIME(6) NULL",
        "CURRENT_TIMESTAMP(6)",
    );
}

#[test]
fn after_publish_rejections_become_dead_letters_and_the_rest_commit() {
    // Given ten rows, and an after_publish that the database rejects for row 3 only (a
    // CHECK constraint, SQLSTATE 23514)
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_after_rej",
        "id INTEGER PRIMARY KEY, n INTEGER CHECK (n <= 100), sent_at TIMESTAMPTZ NULL",
    );
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} (id, n) SELECT g, CASE WHEN g = 3 THEN 50 ELSE 1 END \
         FROM generate_series(1, 10) g"
    ));
    let topic = unique("after_rej");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "after_rej",
            &format!("SELECT id, n FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&topic)),
                &format!(
                    "after_publish: {}",
                    yq(&format!(
                        "UPDATE {t} SET n = n * 10, sent_at = now() WHERE id = ?"
                    ))
                ),
            ],
        )],
    );
    let sub = world.subscribe(&topic);

    // When the bridge publishes them
    let mut bridge = Bridge::start(&config);
    wait_for_ids(&mut bridge, &sub, 10);
    wait_for(&mut bridge, "one dead letter", || {
        Ok(!dlq_list(&config).is_empty())
    });
    std::thread::sleep(QUIET);

    // Then every row was published once (the position moved past row 3)
    let counts = mqtt_id_counts(&sub.messages());
    assert_eq!(
        counts,
        (1..=10).map(|i| (i, 1)).collect::<BTreeMap<i64, usize>>()
    );
    // And every other row's after_publish committed
    let unsent: Vec<i64> = db
        .query(&format!(
            "SELECT id FROM {t} WHERE sent_at IS NULL ORDER BY id"
        ))
        .iter()
        .filter_map(|r| r[0].as_deref()?.trim().parse().ok())
        .collect();
    assert_eq!(unsent, [3], "rows whose after_publish did not commit");
    // And row 3 is one outbound dead letter
    let letters = dlq_list(&config);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["route"], "after_rej");
    assert_eq!(letters[0]["direction"], "outbound");
    let payload = letters[0]["payload"].as_str().unwrap_or_default();
    assert_eq!(id_of(payload.as_bytes()), 3, "{}", letters[0]);
    terminate_ok(&mut bridge);
}

#[test]
fn outbox_without_a_position_parameter_publishes_each_row_once() {
    // Given an outbox polled as "every unsent row" (no `?`), marked sent by after_publish
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_outbox",
        "id INTEGER PRIMARY KEY, dev TEXT, sent_at TIMESTAMPTZ NULL",
    );
    let t = &table.name;
    let insert = |from: i64, to: i64| {
        db.exec(&format!(
            "INSERT INTO {t} (id, dev) SELECT g, 'd' || g FROM generate_series({from}, {to}) g"
        ));
    };
    insert(1, 30);
    let topic = unique("outbox");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "outbox",
            &format!("SELECT id, dev FROM {t} WHERE sent_at IS NULL ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                "max_rows: 10",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&topic)),
                &format!(
                    "after_publish: {}",
                    yq(&format!("UPDATE {t} SET sent_at = now() WHERE id = ?"))
                ),
            ],
        )],
    );
    let sub = world.subscribe(&topic);

    // When the bridge runs, and ten more rows come once the first are sent
    let mut bridge = Bridge::start(&config);
    wait_for_ids(&mut bridge, &sub, 30);
    let unsent = format!("SELECT COUNT(*) FROM {t} WHERE sent_at IS NULL");
    wait_for(&mut bridge, "the first rows marked sent", || {
        Ok(try_scalar(&db, &unsent) == Some(0))
    });
    insert(31, 40);
    wait_for_ids(&mut bridge, &sub, 40);
    wait_for(&mut bridge, "every row marked sent", || {
        Ok(try_scalar(&db, &unsent) == Some(0))
    });
    std::thread::sleep(QUIET);

    // Then each row was published exactly once
    let counts = mqtt_id_counts(&sub.messages());
    assert_eq!(
        counts,
        (1..=40).map(|i| (i, 1)).collect::<BTreeMap<i64, usize>>()
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn an_outbox_marks_dead_lettered_rows_so_they_are_dead_lettered_once() {
    // Given an outbox whose topic comes from the row, and a row whose value cannot be a
    // topic level (`+`): it becomes a dead letter, not a message
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(
        &db,
        "out_outbox_dead",
        "id INTEGER PRIMARY KEY, dev TEXT, sent_at TIMESTAMPTZ NULL",
    );
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} (id, dev) SELECT g, CASE WHEN g = 4 THEN 'bad+dev' ELSE 'd' || g END FROM generate_series(1, 8) g"
    ));
    let topic = unique("outbox_dead");
    let config = config(
        &world,
        &db.connection_string(),
        &[route(
            "outbox",
            &format!("SELECT id, dev FROM {t} WHERE sent_at IS NULL ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                "max_rows: 3",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&format!("{topic}/{{dev}}"))),
                &format!(
                    "after_publish: {}",
                    yq(&format!("UPDATE {t} SET sent_at = now() WHERE id = ?"))
                ),
            ],
        )],
    );
    let sub = world.subscribe(&format!("{topic}/#"));

    // When the bridge runs for many polls
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "seven rows published", || {
        Ok(mqtt_id_counts(&sub.messages()).len() == 7)
    });
    let unsent = format!("SELECT COUNT(*) FROM {t} WHERE sent_at IS NULL");
    wait_for(&mut bridge, "every row marked", || {
        Ok(try_scalar(&db, &unsent) == Some(0))
    });
    std::thread::sleep(QUIET);

    // Then the bad row is one dead letter, however many polls ran, and every other row
    // was published once
    let letters = dlq_list(&config);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["error_kind"], "topic", "{}", letters[0]);
    let counts = mqtt_id_counts(&sub.messages());
    assert_eq!(
        counts,
        [1, 2, 3, 5, 6, 7, 8]
            .into_iter()
            .map(|i| (i, 1))
            .collect::<BTreeMap<i64, usize>>()
    );
    terminate_ok(&mut bridge);
}

// ---------------------------------------------------------------------------------------
// 8. check
// ---------------------------------------------------------------------------------------

/// `check`'s stdout lines that mention `outbound ROUTE:`.
fn outbound_lines(stdout: &str, route: &str) -> Vec<String> {
    let tag = format!("outbound {route}:");
    stdout
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

#[test]
fn check_reports_each_outbound_route() {
    // Given a good MQTT route and a good AMQP route, and routes with one problem each: a
    // query naming a missing column, a track column the query does not return, a topic
    // naming a column the query does not return, an exchange that does not exist, and an
    // unreachable broker
    let db = Db::Postgres;
    let world = World::new("outbound");
    let mut rabbit = Rabbit::connect();
    let exchange = unique("mqdb_out_check");
    rabbit.declare_exchange(&exchange, "topic");
    let absent_exchange = unique("mqdb_out_absent");
    let table = TempTable::create(
        &db,
        "out_check",
        "id INTEGER PRIMARY KEY, seq_no INTEGER, dev TEXT",
    );
    let t = &table.name;
    let root = unique("check");
    let topic = format!("topic: {}", yq(&format!("{root}/{{dev}}")));
    let select = format!("SELECT id, dev FROM {t} WHERE id > ? ORDER BY id");
    let tracked = ["track: id", "start: 0"];
    let good = route(
        "good",
        &select,
        &[&tracked[..], &["broker: m", &topic]].concat(),
    );
    let good_amqp = route(
        "good_amqp",
        &select,
        &[
            &tracked[..],
            &[
                "broker: rabbit",
                &format!("exchange: {}", yq(&exchange)),
                "routing_key: \"x.{dev}\"",
            ],
        ]
        .concat(),
    );
    let bad = [
        route(
            "bad_column",
            &format!("SELECT id, dev, no_such_column FROM {t} WHERE id > ? ORDER BY id"),
            &[&tracked[..], &["broker: m", &topic]].concat(),
        ),
        route(
            "bad_track",
            &format!("SELECT id, dev FROM {t} WHERE seq_no > ? ORDER BY seq_no"),
            &["track: seq_no", "start: 0", "broker: m", &topic],
        ),
        route(
            "bad_template",
            &select,
            &[
                &tracked[..],
                &[
                    "broker: m",
                    &format!("topic: {}", yq(&format!("{root}/{{no_such_level}}"))),
                ],
            ]
            .concat(),
        ),
        route(
            "no_exchange",
            &select,
            &[
                &tracked[..],
                &[
                    "broker: rabbit",
                    &format!("exchange: {}", yq(&absent_exchange)),
                    "routing_key: \"x.{dev}\"",
                ],
            ]
            .concat(),
        ),
        route(
            "gone_broker",
            &select,
            &[&tracked[..], &["broker: gone", &topic]].concat(),
        ),
    ];
    let problems = [
        ("bad_column", "no_such_column"),
        ("bad_track", "seq_no"),
        ("bad_template", "no_such_level"),
        ("no_exchange", absent_exchange.as_str()),
        ("gone_broker", "gone"),
    ];
    let closed = format!("mqtt://127.0.0.1:{}", common::free_port());
    let brokers = [
        ("m", world.broker.url()),
        ("rabbit", Rabbit::URL.to_owned()),
        ("gone", closed),
    ];
    let brokers: Vec<(&str, &str)> = brokers.iter().map(|(n, u)| (*n, u.as_str())).collect();

    // When check runs on all of them
    let mut routes = vec![good.clone(), good_amqp.clone()];
    routes.extend(bad);
    let config = config_with(&world, &brokers, &db.connection_string(), &routes);
    let out = run_mqdb(&["-c", path_str(&config), "check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let show = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));

    // Then it fails (exit 1) with one line per route: ok for the good ones, FAIL naming the
    // problem for the others
    assert_eq!(out.status.code(), Some(1), "{show}");
    for name in ["good", "good_amqp"] {
        let lines = outbound_lines(&stdout, name);
        assert_eq!(lines.len(), 1, "{name}\n{show}");
        assert!(lines[0].starts_with("ok"), "{name}\n{show}");
    }
    for (name, needle) in problems {
        let lines = outbound_lines(&stdout, name);
        assert_eq!(lines.len(), 1, "{name}\n{show}");
        assert!(lines[0].starts_with("FAIL"), "{name}\n{show}");
        let detail = lines[0].split_once(':').map_or("", |(_, d)| d);
        assert!(
            detail.contains(needle),
            "{name}: expected {needle:?}\n{show}"
        );
    }

    // And with only the good routes it passes (exit 0)
    let config = config_with(
        &world,
        &brokers[..2],
        &db.connection_string(),
        &[good, good_amqp],
    );
    let out = run_mqdb(&["-c", path_str(&config), "check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(outbound_lines(&stdout, "good").len(), 1, "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// A one-route check: its status, and stdout + stderr.
fn check_one(world: &World, route_yaml: Route) -> (Option<i32>, String, String) {
    let config = config(world, &Db::Postgres.connection_string(), &[route_yaml]);
    let out = run_mqdb(&["-c", path_str(&config), "check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let show = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), stdout, show)
}

#[test]
fn check_fails_when_after_publish_does_not_prepare() {
    // Given a route whose after_publish updates a column that does not exist
    let world = World::new("outbound");
    let table = TempTable::create(&Db::Postgres, "out_chk_after", "id INTEGER PRIMARY KEY");
    let t = &table.name;
    let route_yaml = route(
        "bad_after",
        &format!("SELECT id FROM {t} WHERE id > ? ORDER BY id"),
        &[
            "track: id",
            "start: 0",
            "broker: m",
            &format!("topic: {}", yq(&unique("chk"))),
            &format!(
                "after_publish: {}",
                yq(&format!("UPDATE {t} SET no_such_target = 1 WHERE id = ?"))
            ),
        ],
    );

    // When check runs
    let (code, stdout, show) = check_one(&world, route_yaml);

    // Then the route fails, naming the column
    assert_eq!(code, Some(1), "{show}");
    let lines = outbound_lines(&stdout, "bad_after");
    assert_eq!(lines.len(), 1, "{show}");
    assert!(lines[0].starts_with("FAIL"), "{show}");
    assert!(lines[0].contains("no_such_target"), "{show}");
}

#[test]
fn check_prints_one_line_per_outbound_route() {
    // Given a route whose query names a missing column (psqlODBC's message has two lines)
    let world = World::new("outbound");
    let table = TempTable::create(&Db::Postgres, "out_chk_line", "id INTEGER PRIMARY KEY");
    let t = &table.name;
    let route_yaml = route(
        "one_line",
        &format!("SELECT id, no_such_column FROM {t} WHERE id > ? ORDER BY id"),
        &[
            "track: id",
            "start: 0",
            "broker: m",
            &format!("topic: {}", yq(&unique("chk"))),
        ],
    );

    // When check runs
    let (code, stdout, show) = check_one(&world, route_yaml);

    // Then stdout is exactly one FAIL line for the route
    assert_eq!(code, Some(1), "{show}");
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{show}");
    assert!(lines[0].starts_with("FAIL  outbound one_line:"), "{show}");
    assert!(lines[0].contains("no_such_column"), "{show}");
}

// ---------------------------------------------------------------------------------------
// 9. What consumers see: the deduplication key, content type and timestamp
// ---------------------------------------------------------------------------------------

/// The deduplication key of the row of `route` with track values `track` and body `payload`.
fn key_of(route: &str, track: &[&str], payload: &[u8]) -> String {
    let track: Vec<Option<String>> = track.iter().map(|v| Some((*v).to_owned())).collect();
    mqdb::dedup::message_id(route, &track, payload)
}

/// The first field of a CSV row, or the `id` of a JSON row.
fn row_id(payload: &[u8]) -> i64 {
    if payload.first() == Some(&b'{') {
        return id_of(payload);
    }
    let text = String::from_utf8_lossy(payload);
    let first = text.split(',').next().unwrap_or_default();
    first
        .parse()
        .unwrap_or_else(|_| panic!("no id first in {text:?}"))
}

fn epoch_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Each message's row id and key, checked against the key of `route` for that row.
fn keys_by_id(route: &str, messages: &[AmqpMessage]) -> BTreeMap<i64, String> {
    let mut keys = BTreeMap::new();
    for m in messages {
        let id = row_id(&m.payload);
        let want = key_of(route, &[&id.to_string()], &m.payload);
        assert_eq!(m.message_id.as_deref(), Some(want.as_str()), "{m:?}");
        keys.insert(id, want);
    }
    keys
}

#[test]
fn amqp_messages_carry_a_key_stable_across_instances_their_content_type_and_a_timestamp() {
    // Given an exchange with a queue for JSON rows and one for CSV rows, and two routes
    // publishing the same three rows there
    let db = Db::Postgres;
    let world = World::new("outbound");
    let mut rabbit = Rabbit::connect();
    let exchange = unique("mqdb_out_key");
    let json_q = unique("mqdb_out_key_json");
    let csv_q = unique("mqdb_out_key_csv");
    rabbit.declare_exchange(&exchange, "direct");
    rabbit.declare_bound_queue(&json_q, &exchange, "json");
    rabbit.declare_bound_queue(&csv_q, &exchange, "csv");
    let table = TempTable::create(&db, "out_key", "id INTEGER PRIMARY KEY, v TEXT");
    let t = &table.name;
    pg_insert_range(t, 1, 3);
    let query = format!("SELECT id, v FROM {t} WHERE id > ? ORDER BY id");
    let exchange_line = format!("exchange: {}", yq(&exchange));
    let routes = [("keys_json", "json"), ("keys_csv", "csv")].map(|(name, format)| {
        route(
            name,
            &query,
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: rabbit",
                &exchange_line,
                &format!("routing_key: {format}"),
                &format!("format: {format}"),
            ],
        )
    });
    let config = config_amqp(&world, Rabbit::URL, &db.connection_string(), &routes);
    let run = |rabbit: &mut Rabbit, n: usize| {
        let mut bridge = Bridge::start(&config);
        let (mut json, mut csv) = (Vec::new(), Vec::new());
        wait_for(&mut bridge, &format!("{n} rows in each queue"), || {
            json.extend(rabbit.take_all(&json_q));
            csv.extend(rabbit.take_all(&csv_q));
            Ok(json.len() >= n && csv.len() >= n)
        });
        terminate_ok(&mut bridge);
        (json, csv)
    };

    // When the bridge runs
    let before = epoch_seconds();
    let (json, csv) = run(&mut rabbit, 3);
    let after = epoch_seconds();

    // Then each message says what it holds, and when it was published
    let typed = json.iter().map(|m| (m, "application/json"));
    for (m, content_type) in typed.chain(csv.iter().map(|m| (m, "text/csv"))) {
        assert_eq!(m.content_type.as_deref(), Some(content_type), "{m:?}");
        let at = m.timestamp.unwrap_or_else(|| panic!("no timestamp: {m:?}"));
        assert!(
            (before..=after).contains(&at),
            "{at} not in {before}..={after}"
        );
    }
    // And each carries its row's key, which differs between rows and between routes
    let json_keys = keys_by_id("keys_json", &json);
    let csv_keys = keys_by_id("keys_csv", &csv);
    let mut all: Vec<&String> = json_keys.values().chain(csv_keys.values()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6, "{json_keys:?} {csv_keys:?}");

    // When the state store is lost, so both routes publish from `start` again as a new
    // instance would, and a new row comes
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(world.dir.path().join(file));
    }
    db.exec(&format!("INSERT INTO {t} VALUES (4, 'row 4')"));
    let (json_again, csv_again) = run(&mut rabbit, 4);

    // Then the rows published again carry the keys they had, and the new row a new key
    for (route, first, again) in [
        ("keys_json", &json_keys, &json_again),
        ("keys_csv", &csv_keys, &csv_again),
    ] {
        let again = keys_by_id(route, again);
        assert_eq!(again.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
        for id in 1..=3 {
            assert_eq!(again[&id], first[&id], "{route} row {id}");
        }
        assert!(!all.contains(&&again[&4]), "{route}: row 4 reuses a key");
    }
}

#[test]
fn rows_sharing_a_track_value_get_their_own_keys_and_only_the_unroutable_one_is_a_dead_letter() {
    // Given rows in one poll that share their track value, one of them unroutable
    let db = Db::Postgres;
    let world = World::new("outbound");
    let mut rabbit = Rabbit::connect();
    let exchange = unique("mqdb_out_tie");
    let queue = unique("mqdb_out_tie_q");
    rabbit.declare_exchange(&exchange, "direct");
    rabbit.declare_bound_queue(&queue, &exchange, "r.good");
    let table = TempTable::create(
        &db,
        "out_tie",
        "id INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL",
    );
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES (1, 10, 'good'), (2, 10, 'bad'), (3, 10, 'good'), (4, 10, 'good')"
    ));
    let config = config_amqp(
        &world,
        Rabbit::URL,
        &db.connection_string(),
        &[route(
            "ties",
            &format!("SELECT id, at, kind FROM {t} WHERE at > ? ORDER BY at, id"),
            &[
                "track: at",
                "start: 0",
                INTERVAL,
                "broker: rabbit",
                &format!("exchange: {}", yq(&exchange)),
                "routing_key: \"r.{kind}\"",
            ],
        )],
    );

    // When the bridge runs
    let mut bridge = Bridge::start(&config);
    let mut got: Vec<AmqpMessage> = Vec::new();
    wait_for(&mut bridge, "three routed rows and a dead letter", || {
        got.extend(rabbit.take_all(&queue));
        Ok(got.len() >= 3 && !dlq_list(&config).is_empty())
    });
    std::thread::sleep(QUIET);
    got.extend(rabbit.take_all(&queue));
    terminate_ok(&mut bridge);

    // Then the routable rows arrived once each, each with a key of its own
    let mut keys = BTreeMap::new();
    for m in &got {
        let want = key_of("ties", &["10"], &m.payload);
        assert_eq!(m.message_id.as_deref(), Some(want.as_str()), "{m:?}");
        assert!(keys.insert(id_of(&m.payload), want).is_none(), "{got:?}");
    }
    assert_eq!(keys.keys().copied().collect::<Vec<_>>(), [1, 3, 4]);
    let mut distinct: Vec<&String> = keys.values().collect();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{keys:?}");
    // And only the unroutable row is a dead letter
    let letters = dlq_list(&config);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["error_kind"], "unroutable", "{letters:#?}");
    let payload = letters[0]["payload"].as_str().expect("text payload");
    assert_eq!(id_of(payload.as_bytes()), 2);
}

#[test]
fn mqtt5_messages_carry_content_type_payload_format_and_key() {
    // Given an MQTT 5 broker, an MQTT 5 subscriber, and a JSON and a CSV route
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = TempTable::create(&db, "out_v5", "id INTEGER PRIMARY KEY, v TEXT");
    let t = &table.name;
    pg_insert_range(t, 1, 2);
    let root = unique("v5");
    let query = format!("SELECT id, v FROM {t} WHERE id > ? ORDER BY id");
    let routes = [("v5_json", "json"), ("v5_csv", "csv")].map(|(name, format)| {
        route(
            name,
            &query,
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("topic: {}", yq(&format!("{root}/{format}/{{id}}"))),
                &format!("format: {format}"),
            ],
        )
    });
    let config = config_mqtt5(&world, &db.connection_string(), &routes);
    let sub = Subscriber5::connect(world.broker.port, &format!("{root}/#"));

    // When the bridge runs
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "two rows of each route", || {
        Ok(sub.messages().len() >= 4)
    });
    terminate_ok(&mut bridge);

    // Then each message has its content type, says it is UTF-8, and carries its row's key
    let messages = sub.messages();
    assert_eq!(messages.len(), 4, "{messages:#?}");
    for m in &messages {
        let (route, content_type) = if m.topic.starts_with(&format!("{root}/json/")) {
            ("v5_json", "application/json")
        } else {
            ("v5_csv", "text/csv")
        };
        assert_eq!(m.content_type.as_deref(), Some(content_type), "{m:?}");
        assert_eq!(m.payload_format_indicator, Some(1), "{m:?}");
        let id = row_id(&m.payload).to_string();
        let want = key_of(route, &[&id], &m.payload);
        assert_eq!(m.user_property("message_id"), Some(want.as_str()), "{m:?}");
    }
}

#[test]
fn an_mqtt5_broker_refusing_a_publish_makes_a_dead_letter_at_qos_1_and_2() {
    // Given an MQTT 5 broker whose ACL lets anonymous clients use `<root>/ok/#` only, and two
    // routes (QoS 1 and QoS 2) publishing rows to `<root>/<kind>/...`, one row of kind denied
    let root = unique("acl");
    let acl = tempfile::NamedTempFile::new().expect("acl file");
    std::fs::write(acl.path(), format!("topic readwrite {root}/ok/#\n")).expect("write acl");
    // A non-zero queue limit: at 0, mosquitto 2.0 also drops a client it refused.
    let world = World::with_broker_config(
        "outbound",
        &format!(
            "acl_file {}\nmax_queued_messages 1000",
            acl.path().display()
        ),
    );
    let db = Db::Postgres;
    let table = TempTable::create(&db, "out_acl", "id INTEGER PRIMARY KEY, kind TEXT NOT NULL");
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES (1, 'ok'), (2, 'denied'), (3, 'ok')"
    ));
    let query = format!("SELECT id, kind FROM {t} WHERE id > ? ORDER BY id");
    let routes = [1, 2].map(|qos| {
        route(
            &format!("acl{qos}"),
            &query,
            &[
                "track: id",
                "start: 0",
                INTERVAL,
                "broker: m",
                &format!("qos: {qos}"),
                &format!("topic: {}", yq(&format!("{root}/{{kind}}/q{qos}/{{id}}"))),
            ],
        )
    });
    let config = config_mqtt5(&world, &db.connection_string(), &routes);
    let sub = world.subscribe(&format!("{root}/ok/#"));

    // When the bridge runs, and a later row is published once the first ones are done
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "the allowed rows", || Ok(sub.count() >= 4));
    db.exec(&format!("INSERT INTO {t} VALUES (4, 'ok')"));
    wait_for(&mut bridge, "the later row", || Ok(sub.count() >= 6));
    terminate_ok(&mut bridge);

    // Then the refused row is a dead letter of each route, naming the broker's reason
    let mut letters: Vec<(String, i64)> = dlq_list(&config)
        .iter()
        .map(|l| {
            assert_eq!(l["error_kind"], "nacked", "{l:#}");
            let error = l["error"].as_str().unwrap_or_default();
            assert!(error.contains("NotAuthorized"), "{l:#}");
            let payload = l["payload"].as_str().expect("text payload");
            (
                l["route"].as_str().unwrap_or_default().to_owned(),
                id_of(payload.as_bytes()),
            )
        })
        .collect();
    letters.sort();
    assert_eq!(letters, [("acl1".to_owned(), 2), ("acl2".to_owned(), 2)]);
}
