//! `mqdb run` for outbound routes (a polled SELECT published to MQTT or AMQP) against the real
//! local services (SPEC §3, §4): values and types, CSV, publish options, restarts and outages
//! in the middle of a stream, two-column positions, dead letters, `after_publish`,
//! `mqdb check`, and what consumers see (deduplication key, content type, timestamp).
//!
//! Where a test asserts that nothing more arrives, it first waits for a later row (so the
//! bridge has polled past the earlier ones) and then for a few more poll intervals.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{
    AmqpMessage, Bridge, Config, Db, LIVENESS, Rabbit, Ran, Received, Route, Subscriber,
    Subscriber5, TcpProxy, TempTable, World, dlq_list, line_of, mqdb_at, temp_sqlite, terminate_ok,
    text_rows, try_scalar, unique, wait_for,
};
use serde_json::{Map, Value as Json, json};

/// Several poll intervals of every route here: how long to watch for messages that must not
/// come.
const QUIET: Duration = Duration::from_millis(800);

type Row = Map<String, Json>;
/// How often each id arrived.
type Counts = BTreeMap<i64, usize>;

/// A route `name` polling `query` every 100 ms, binding the last published `id` (from 0).
fn tracked(name: &str, query: &str) -> Route {
    let route = Route::outbound(name, query).interval("100ms");
    route.track("id", 0)
}

fn to_topic(name: &str, query: &str, topic: &str) -> Route {
    tracked(name, query).broker("b").topic(topic)
}

fn to_exchange(name: &str, query: &str, exchange: &str, routing_key: &str) -> Route {
    let route = tracked(name, query).broker("rabbit");
    route.exchange(exchange).routing_key(routing_key)
}

/// `route` tracking `(updated_at, id)` from the epoch.
fn by_stamp(route: Route) -> Route {
    let route = route.set("track", json!(["updated_at", "id"]));
    route.set("start", json!(["1970-01-01 00:00:00", 0]))
}

/// [`to_topic`] of `cols` of `table` by `id`, to a new topic named after `name`; and the topic.
fn to_new_topic(name: &str, cols: &str, table: &str) -> (Route, String) {
    let topic = unique(name);
    (to_topic(name, &after_id(cols, table), &topic), topic)
}

fn after_id(cols: &str, table: &str) -> String {
    format!("SELECT {cols} FROM {table} WHERE id > ? ORDER BY id")
}

fn after_stamp(cols: &str, table: &str) -> String {
    format!("SELECT {cols} FROM {table} WHERE (updated_at, id) > (?, ?) ORDER BY updated_at, id")
}

fn mark_sent(table: &str) -> String {
    format!("UPDATE {table} SET sent_at = now() WHERE id = ?")
}

fn write(config: Config, routes: &[Route]) -> PathBuf {
    let config = routes.iter().cloned().fold(config, Config::outbound);
    config.write()
}

/// `mqdb.yaml`: the world's Mosquitto as broker `b`, database `d` at `cs`, and `routes`.
fn config(world: &World, cs: &str, routes: &[Route]) -> PathBuf {
    write(world.config_cs(cs), routes)
}

fn config_on(world: &World, broker: (&str, &str, Json), cs: &str, routes: &[Route]) -> PathBuf {
    let (name, url, settings) = broker;
    let config = world.bare_config().broker(name, url, settings);
    write(config.database("d", cs), routes)
}

fn config_mqtt5(world: &World, cs: &str, routes: &[Route]) -> PathBuf {
    let (url, settings) = world.mqtt(json!({ "mqtt_version": 5 }));
    config_on(world, ("b", &url, settings), cs, routes)
}

fn exchange_with_queue(rabbit: &mut Rabbit, prefix: &str, key: &str) -> (String, String) {
    let (exchange, queue) = (unique(prefix), unique(&format!("{prefix}_q")));
    rabbit.declare_exchange(&exchange, "direct");
    rabbit.declare_bound_queue(&queue, &exchange, key);
    (exchange, queue)
}

/// A bridge under test and a subscriber that connected before it started. Declared so that
/// the bridge stops before its broker.
struct Run {
    bridge: Bridge,
    sub: Subscriber,
    config: PathBuf,
    world: World,
}

impl Run {
    fn new(world: World, config: PathBuf, sub: Subscriber) -> Run {
        let bridge = Bridge::start(&config);
        Run {
            bridge,
            sub,
            config,
            world,
        }
    }

    fn start(cs: &str, routes: &[Route], filter: &str) -> Run {
        Run::start_in(World::new("outbound"), cs, routes, filter)
    }

    fn start_in(world: World, cs: &str, routes: &[Route], filter: &str) -> Run {
        let config = config(&world, cs, routes);
        let sub = world.subscribe(filter);
        Run::new(world, config, sub)
    }

    fn pg(route: Route, filter: &str) -> Run {
        Run::pg_in(World::new("outbound"), route, filter)
    }

    fn pg_in(world: World, route: Route, filter: &str) -> Run {
        Run::start_in(world, &Db::Postgres.connection_string(), &[route], filter)
    }

    fn wait(&mut self, n: usize) {
        self.wait_with_letters(n, 0);
    }

    fn wait_with_letters(&mut self, n: usize, k: usize) {
        let (sub, config) = (&self.sub, &self.config);
        let what = format!("{n} messages and {k} dead letters");
        wait_for(&mut self.bridge, &what, || {
            Ok(sub.count() >= n && (k == 0 || dlq_list(config).len() >= k))
        });
    }

    /// Waits for `n` messages and a few polls more, and asserts they are all there are.
    fn settled(&mut self, n: usize) -> Vec<Received> {
        self.wait(n);
        std::thread::sleep(QUIET);
        let messages = self.sub.messages();
        assert_eq!(messages.len(), n, "{messages:?}");
        messages
    }

    fn wait_ids(&mut self, n: i64) {
        wait_all(&mut self.bridge, &[], &self.sub, n);
    }

    fn wait_all_sent(&mut self, db: &Db, table: &str) {
        let unsent = format!("SELECT COUNT(*) FROM {table} WHERE sent_at IS NULL");
        wait_for(&mut self.bridge, "every row marked sent", || {
            Ok(try_scalar(db, &unsent) == Some(0))
        });
    }

    fn ids(&self) -> Vec<i64> {
        let messages = self.sub.messages();
        messages.iter().map(|m| id_of(&m.payload)).collect()
    }

    fn rows(&self) -> Vec<Row> {
        let rows = rows_by_id(&self.sub.messages());
        rows.into_iter().map(|(_, row)| row).collect()
    }

    fn counts(&self) -> Counts {
        mqtt_id_counts(&self.sub.messages())
    }

    fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.sub.messages().into_iter().map(|m| m.topic).collect();
        topics.sort();
        topics
    }

    fn letters(&self) -> Vec<Json> {
        dlq_list(&self.config)
    }

    fn finish(mut self) {
        finish_clean(&mut self.bridge, &self.config);
    }
}

fn finish_clean(bridge: &mut Bridge, config: &Path) {
    assert_eq!(dlq_list(config), Vec::<Json>::new());
    terminate_ok(bridge);
}

/// A bridge publishing to the shared RabbitMQ (broker `rabbit`), and what arrived so far in
/// `queue`.
struct AmqpRun {
    bridge: Bridge,
    config: PathBuf,
    rabbit: Rabbit,
    queue: String,
    got: Vec<AmqpMessage>,
    _world: World,
}

impl AmqpRun {
    fn start(rabbit: Rabbit, queue: &str, url: &str, cs: &str, routes: &[Route]) -> AmqpRun {
        AmqpRun::start_in(World::new("outbound"), rabbit, queue, url, cs, routes)
    }

    fn start_in(
        world: World,
        rabbit: Rabbit,
        queue: &str,
        url: &str,
        cs: &str,
        routes: &[Route],
    ) -> AmqpRun {
        let config = config_on(&world, ("rabbit", url, Json::Null), cs, routes);
        AmqpRun {
            bridge: Bridge::start(&config),
            config,
            rabbit,
            queue: queue.to_owned(),
            got: Vec::new(),
            _world: world,
        }
    }

    fn pg(rabbit: Rabbit, queue: &str, route: Route) -> AmqpRun {
        AmqpRun::pg_in(World::new("outbound"), rabbit, queue, route)
    }

    fn pg_in(world: World, rabbit: Rabbit, queue: &str, route: Route) -> AmqpRun {
        let cs = Db::Postgres.connection_string();
        AmqpRun::start_in(world, rabbit, queue, Rabbit::URL, &cs, &[route])
    }

    fn until(&mut self, mut done: impl FnMut(&[AmqpMessage], &Path) -> bool) {
        let (rabbit, queue, got, config) = (&self.rabbit, &self.queue, &mut self.got, &self.config);
        wait_for(&mut self.bridge, &format!("messages in {queue}"), || {
            got.extend(rabbit.take_all(queue));
            Ok(done(got, config))
        });
    }

    fn settle(&mut self) {
        std::thread::sleep(QUIET);
        self.got.extend(self.rabbit.take_all(&self.queue));
    }

    fn ids(&self) -> Vec<i64> {
        self.got.iter().map(|m| id_of(&m.payload)).collect()
    }

    fn letters(&self) -> Vec<Json> {
        dlq_list(&self.config)
    }
}

fn json_of(payload: &[u8]) -> Row {
    let text = || String::from_utf8_lossy(payload);
    match serde_json::from_slice(payload) {
        Ok(Json::Object(map)) => map,
        Ok(other) => panic!("payload is not a JSON object: {other}"),
        Err(e) => panic!("payload is not JSON ({e}): {}", text()),
    }
}

fn id_of(payload: &[u8]) -> i64 {
    let id = json_of(payload).get("id").and_then(Json::as_i64);
    id.unwrap_or_else(|| panic!("no integer id in {}", String::from_utf8_lossy(payload)))
}

fn only(mut letters: Vec<Json>) -> Json {
    assert_eq!(letters.len(), 1, "{letters:#?}");
    letters.remove(0)
}

/// Each dead letter as its row's `id` and its fields named in `keys`, in row id order.
fn picked(letters: &[Json], keys: &[&str]) -> Vec<Json> {
    let pick = |letter: &Json| {
        let payload = letter["payload"].as_str();
        let payload = payload.unwrap_or_else(|| panic!("no text payload: {letter}"));
        let mut out = json!({ "id": id_of(payload.as_bytes()) });
        for key in keys {
            out[*key] = letter[*key].clone();
        }
        out
    };
    let mut out: Vec<Json> = letters.iter().map(pick).collect();
    out.sort_by_key(|l| (l["id"].as_i64(), l.to_string()));
    out
}

fn id_counts<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Counts {
    let mut counts = BTreeMap::new();
    for p in payloads {
        *counts.entry(id_of(p)).or_insert(0) += 1;
    }
    counts
}

fn mqtt_id_counts(messages: &[Received]) -> Counts {
    id_counts(messages.iter().map(|m| m.payload.as_slice()))
}

fn once_each(ids: impl IntoIterator<Item = i64>) -> Counts {
    ids.into_iter().map(|i| (i, 1)).collect()
}

fn duplicates(counts: &Counts) -> usize {
    counts.values().map(|c| c - 1).sum()
}

fn missing(counts: &Counts, n: i64) -> Vec<i64> {
    (1..=n).filter(|i| !counts.contains_key(i)).collect()
}

/// Waits until `before` and `sub` together hold every id in `1..=n`; returns how often each
/// arrived.
fn wait_all(bridge: &mut Bridge, before: &[Received], sub: &Subscriber, n: i64) -> Counts {
    let all = || mqtt_id_counts(&[before, sub.messages().as_slice()].concat());
    wait_for(bridge, &format!("every id in 1..={n}"), || {
        Ok(missing(&all(), n).is_empty())
    });
    all()
}

fn filled(db: &Db, prefix: &str, columns: &str, values: &str) -> TempTable {
    let table = TempTable::create(db, prefix, columns);
    db.exec(&format!("INSERT INTO {} VALUES {values}", table.name));
    table
}

fn pg_insert_range(table: &str, from: i64, to: i64) {
    Db::Postgres.exec(&format!(
        "INSERT INTO {table} (id, v) SELECT g, 'row ' || g FROM generate_series({from}, {to}) g"
    ));
}

/// A PostgreSQL table `out_<name>` of `(id, v)` rows, holding rows `1..=n`.
fn rows_table(name: &str, n: i64) -> TempTable {
    let columns = "id INTEGER PRIMARY KEY, v TEXT";
    let table = TempTable::create(&Db::Postgres, &format!("out_{name}"), columns);
    pg_insert_range(&table.name, 1, n);
    table
}

/// The exact text of column `name` of each row, which must be a JSON number.
fn numbers(rows: &[Row], name: &str) -> Vec<String> {
    let text = |row: &Row| match &row[name] {
        Json::Number(n) => n.to_string(),
        other => panic!("{other} is not a JSON number"),
    };
    rows.iter().map(text).collect()
}

fn floats(rows: &[Row], name: &str) -> Vec<Option<f64>> {
    rows.iter().map(|r| r[name].as_f64()).collect()
}

fn trim_zeros(text: &str) -> &str {
    if text.contains('.') && !text.contains(['e', 'E']) {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

fn utc(value: &Json) -> DateTime<Utc> {
    let text = value.as_str();
    let text = text.unwrap_or_else(|| panic!("{value} is not a timestamp string"));
    assert!(text.ends_with('Z'), "{text:?} is not in UTC (Z)");
    let instant = DateTime::parse_from_rfc3339(text);
    let instant = instant.unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"));
    instant.to_utc()
}

fn rows_by_id(messages: &[Received]) -> Vec<(String, Row)> {
    let mut rows: Vec<(String, Row)> = messages
        .iter()
        .map(|m| (m.topic.clone(), json_of(&m.payload)))
        .collect();
    rows.sort_by_key(|(_, row)| row["id"].as_i64());
    rows
}

fn column(rows: &[Row], name: &str) -> Vec<Json> {
    rows.iter().map(|r| r[name].clone()).collect()
}

/// Asserts each column named in `want` (an object of arrays) holds those values, row by row.
fn assert_columns(rows: &[Row], want: Json) {
    for (name, values) in want.as_object().expect("columns") {
        assert_eq!(&Json::from(column(rows, name)), values, "column {name}");
    }
}

/// Publishes the rows (SQL value lists) of a new table with `columns`, selecting `id`,
/// `device` and `select`, each on a topic named after its `device`; checks each arrived once
/// on its own topic and nothing was dead-lettered, and returns the rows in id order.
fn publish_rows(db: &Db, columns: &str, select: &str, rows: &[&str]) -> Vec<Row> {
    let values = format!("({})", rows.join("), ("));
    let table = filled(db, "out_types", columns, &values);
    let root = unique("types");
    let query = after_id(&format!("id, device, {select}"), &table.name);
    let route = to_topic("types", &query, &format!("{root}/{{device}}"));
    let route = route.qos(1).format("json");
    let mut run = Run::start(&db.connection_string(), &[route], &format!("{root}/#"));
    let published = rows_by_id(&run.settled(rows.len()));
    run.finish();
    for (topic, row) in &published {
        let device = row["device"].as_str().unwrap_or_default();
        let from_row = format!("{root}/{device}");
        assert_eq!(topic, &from_row, "topics come from the row");
    }
    published.into_iter().map(|(_, row)| row).collect()
}

#[test]
fn json_values_and_types_from_postgres() {
    let rows = publish_rows(
        &Db::Postgres,
        "id BIGINT PRIMARY KEY, device VARCHAR(40) NOT NULL, n INTEGER, \
         amount NUMERIC(30,10), ratio DOUBLE PRECISION, flag BOOLEAN, label TEXT, \
         ts TIMESTAMPTZ, naive TIMESTAMP, dt DATE, bin BYTEA, nothing TEXT",
        "n, amount, ratio, flag, label, ts, naive, dt, bin, nothing",
        &[
            "1, 'd1', 42, 12345678901234567890.1234567891, 1.5, true, 'é 日本 🎉', \
             '2024-05-01 12:00:00+02', '2024-05-01 12:00:00.123456', '2024-02-29', \
             '\\x0001feff6869', NULL",
            "9007199254740993, 'd-2', -7, -0.5, -0.25, false, 'it''s \"quoted\" \\ back', \
             '2024-05-01 12:00:00.25+00', '1999-12-31 23:59:59', '1999-12-31', '\\x', NULL",
            "9223372036854775807, 'd3', 2147483647, 0, 6.02214076e23, NULL, '', \
             '1970-01-01 00:00:00+00', '2000-01-01 00:00:00', '2000-01-01', NULL, NULL",
        ],
    );
    let keys = "id device n amount ratio flag label ts naive dt bin nothing";
    for row in &rows {
        let got: BTreeSet<&str> = row.keys().map(String::as_str).collect();
        assert_eq!(got, keys.split(' ').collect());
    }
    // Integers are exact JSON integers, beyond 2^53 and at i64::MAX too; decimals keep every
    // digit
    assert_eq!(
        numbers(&rows, "id"),
        ["1", "9007199254740993", "9223372036854775807"]
    );
    assert_eq!(numbers(&rows, "n"), ["42", "-7", "2147483647"]);
    let amounts = numbers(&rows, "amount");
    assert_eq!(amounts[0], "12345678901234567890.1234567891");
    assert_eq!(
        [trim_zeros(&amounts[1]), trim_zeros(&amounts[2])],
        ["-0.5", "0"]
    );
    assert_eq!(
        floats(&rows, "ratio"),
        [Some(1.5), Some(-0.25), Some(6.02214076e23)]
    );
    // timestamptz values are RFC 3339 in UTC, timestamps without time zone have no offset
    let quarter = DateTime::parse_from_rfc3339("2024-05-01T12:00:00.25Z").expect("instant");
    assert_eq!(utc(&rows[1]["ts"]), quarter);
    assert_columns(
        &rows,
        json!({
            "device": ["d1", "d-2", "d3"],
            "flag": [true, false, null],
            "label": ["é 日本 🎉", "it's \"quoted\" \\ back", ""],
            "dt": ["2024-02-29", "1999-12-31", "2000-01-01"],
            "bin": ["AAH+/2hp", "", null],
            "nothing": [null, null, null],
        }),
    );
    assert_eq!(rows[0]["ts"], "2024-05-01T10:00:00Z");
    assert_eq!(rows[2]["ts"], "1970-01-01T00:00:00Z");
    assert_eq!(rows[0]["naive"], "2024-05-01T12:00:00.123456");
    assert_eq!(rows[1]["naive"], "1999-12-31T23:59:59");
}

#[test]
fn timestamptz_is_utc_whatever_the_session_time_zone() {
    let db = Db::Postgres;
    let values = "(1, '2024-05-01 12:00:00+02'), (2, '2024-12-31 23:30:00-05')";
    let columns = "id INTEGER PRIMARY KEY, ts TIMESTAMPTZ";
    let table = filled(&db, "out_tz", columns, values);
    // A session time zone of +05:30
    let cs = db.connection_string() + "ConnSettings={SET TIME ZONE 'Asia/Kolkata'};";
    let (route, topic) = to_new_topic("tz", "id, ts", &table.name);
    let mut run = Run::start(&cs, &[route], &topic);
    run.wait(2);
    let stamps = column(&run.rows(), "ts");
    assert_eq!(stamps, ["2024-05-01T10:00:00Z", "2025-01-01T04:30:00Z"]);
    run.finish();
}

#[test]
fn json_values_and_types_from_mariadb() {
    let rows = publish_rows(
        &Db::MariaDb,
        "id BIGINT PRIMARY KEY, device VARCHAR(40) NOT NULL, n INT, amount DECIMAL(30,10), \
         ratio DOUBLE, label TEXT, ts DATETIME(6), dt DATE, bin BLOB, nothing VARCHAR(10)",
        "n, amount, ratio, label, ts, dt, bin, nothing",
        &[
            "9007199254740993, 'm1', -7, 12345678901234567890.1234567891, 1.5, 'é 日本 🎉', \
             '2024-05-01 10:00:00', '2024-02-29', X'0001FEFF6869', NULL",
            "2, 'm2', 2147483647, -0.5, 6.02214076e23, 'it''s \"q\"', \
             '2024-05-01 12:00:00.250000', '1999-12-31', NULL, NULL",
        ],
    );
    let big = &rows[1];
    assert_eq!(column(&rows, "device"), ["m2", "m1"]);
    assert_eq!(numbers(&rows, "id"), ["2", "9007199254740993"]);
    assert_eq!(numbers(&rows, "n"), ["2147483647", "-7"]);
    let amounts = numbers(&rows, "amount");
    assert_eq!(amounts[1], "12345678901234567890.1234567891");
    assert_eq!(trim_zeros(&amounts[0]), "-0.5");
    assert_eq!(floats(&rows, "ratio"), [Some(6.02214076e23), Some(1.5)]);
    assert_eq!(column(&rows, "label"), ["it's \"q\"", "é 日本 🎉"]);
    // DATETIME has no time zone: published without an offset
    let stamps = ["2024-05-01T12:00:00.25", "2024-05-01T10:00:00"];
    assert_eq!(column(&rows, "ts"), stamps);
    assert_eq!(big["dt"], "2024-02-29");
    assert_eq!(column(&rows, "bin"), [Json::Null, json!("AAH+/2hp")]);
    assert_eq!(big["nothing"], Json::Null);
}

/// Text and binary values far beyond the bridge's initial column buffers arrive whole, and
/// the rows after them are neither skipped nor repeated. `zeros` is 99 999 zero bytes and
/// `one` the byte 0x01, as `db` writes them.
fn large_values_arrive_whole(db: Db, columns: &str, zeros: &str, one: &str) {
    let table = TempTable::create(&db, "out_large", columns);
    let t = &table.name;
    for (id, label, bin) in [
        (1, "REPEAT('é', 50000)", zeros),
        (2, "REPEAT('x', 1000000)", "NULL"),
        (3, "'small'", one),
    ] {
        let values = format!("({id}, {label}, {bin})");
        db.exec(&format!("INSERT INTO {t} (id, label, bin) VALUES {values}"));
    }
    let (route, topic) = to_new_topic("large", "id, label, bin", t);
    let mut run = Run::start(&db.connection_string(), &[route], &topic);
    run.settled(3);
    let rows = run.rows();
    assert_eq!(column(&rows, "id"), [1, 2, 3]);
    let labels = ["é".repeat(50_000), "x".repeat(1_000_000), "small".into()];
    assert_eq!(column(&rows, "label"), labels.map(Json::from));
    // 99 999 zero bytes are 33 333 groups of "AAAA" in base64
    let bins = [json!("AAAA".repeat(33_333)), Json::Null, json!("AQ==")];
    assert_eq!(column(&rows, "bin"), bins);
    run.finish();
}

#[test]
fn large_values_arrive_whole_postgres() {
    large_values_arrive_whole(
        Db::Postgres,
        "id INTEGER PRIMARY KEY, label TEXT, bin BYTEA",
        "decode(REPEAT('00', 99999), 'hex')",
        "'\\x01'",
    );
}

#[test]
fn large_values_arrive_whole_mariadb() {
    large_values_arrive_whole(
        Db::MariaDb,
        "id INT PRIMARY KEY, label LONGTEXT, bin LONGBLOB",
        "UNHEX(REPEAT('00', 99999))",
        "X'01'",
    );
}

/// [`publish_rows`] from a new SQLite file, `id` and `device` before `columns`.
fn publish_sqlite_rows(columns: &str, select: &str, rows: &[&str]) -> Vec<Row> {
    let columns = format!("id INTEGER PRIMARY KEY, device TEXT NOT NULL, {columns}");
    publish_rows(&temp_sqlite(), &columns, select, rows)
}

#[test]
fn json_values_and_types_from_sqlite() {
    // Integers (also beyond 32 bits), reals, text and NULL
    let rows = publish_sqlite_rows(
        "n INTEGER, ratio REAL, label TEXT, empty TEXT",
        "n, ratio, label, empty",
        &[
            "1, 's1', 9007199254740993, 1.5, 'é 日本 🎉', NULL",
            "2, 's2', -42, -0.25, 'it''s \"q\"', NULL",
        ],
    );
    assert_eq!(numbers(&rows, "id"), ["1", "2"]);
    assert_eq!(numbers(&rows, "n"), ["9007199254740993", "-42"]);
    assert_eq!(floats(&rows, "ratio"), [Some(1.5), Some(-0.25)]);
    assert_eq!(column(&rows, "label"), ["é 日本 🎉", "it's \"q\""]);
    assert_eq!(rows[0]["empty"], Json::Null);
}

#[test]
fn sqlite_bigint_and_blob_columns_keep_their_json_types() {
    let rows = publish_sqlite_rows(
        "big BIGINT, bin BLOB",
        "big, bin",
        &[
            "1, 's1', 9007199254740993, X'0001FEFF6869'",
            "2, 's2', -42, NULL",
        ],
    );
    assert_eq!(numbers(&rows, "big"), ["9007199254740993", "-42"]);
    assert_eq!(column(&rows, "bin"), [json!("AAH+/2hp"), Json::Null]);
}

fn csv_record(payload: &[u8], delimiter: u8, quote: u8) -> Vec<String> {
    let mut builder = csv::ReaderBuilder::new();
    builder.has_headers(false).delimiter(delimiter).quote(quote);
    let mut reader = builder.from_reader(payload);
    let text = String::from_utf8_lossy(payload);
    let records: Result<Vec<csv::StringRecord>, _> = reader.records().collect();
    let records = records.unwrap_or_else(|e| panic!("not CSV ({e}): {text}"));
    assert_eq!(records.len(), 1, "one record per message: {text}");
    records[0].iter().map(str::to_owned).collect()
}

#[test]
fn csv_rows_are_one_line_each_and_round_trip() {
    // Text holding the delimiter, the quote and a newline, through the default `,` and `"`,
    // and through `;` with `'`
    let table = filled(
        &Db::Postgres,
        "out_csv",
        "id INTEGER PRIMARY KEY, label TEXT, amount NUMERIC(12,3), nothing TEXT, \
         ts TIMESTAMPTZ, flag BOOLEAN",
        "(1, 'plain', 1.125, NULL, '2024-05-01 12:00:00+02', true), \
         (2, E'a,b \"q\"\\nline2', -2.125, NULL, '2024-05-01 10:00:00+00', false), \
         (3, 'semi;colon ''single''', 0.001, 'x', '2024-05-01 10:00:00+00', NULL)",
    );
    let root = unique("csv");
    let query = after_id("id, label, amount, nothing, ts, flag", &table.name);
    let csv_to = |variant: &str| {
        let topic = format!("{root}/{variant}/{{id}}");
        to_topic(&format!("csv_{variant}"), &query, &topic).format("csv")
    };
    let custom = csv_to("custom").set("csv", json!({ "delimiter": ";", "quote": "'" }));
    let cs = Db::Postgres.connection_string();
    let mut run = Run::start(&cs, &[csv_to("default"), custom], &format!("{root}/#"));
    let messages = run.settled(6);

    // Every message is one CSV record with the row's values (NULL = empty field)
    let stamp = "2024-05-01T10:00:00Z";
    let want = [
        ["1", "plain", "1.125", "", stamp, "true"],
        ["2", "a,b \"q\"\nline2", "-2.125", "", stamp, "false"],
        ["3", "semi;colon 'single'", "0.001", "x", stamp, ""],
    ];
    for (variant, delimiter, quote) in [("default", b',', b'"'), ("custom", b';', b'\'')] {
        let mut got: Vec<(String, Vec<String>)> = messages
            .iter()
            .filter(|m| m.topic.starts_with(&format!("{root}/{variant}/")))
            .map(|m| (m.topic.clone(), csv_record(&m.payload, delimiter, quote)))
            .collect();
        got.sort();
        let (topics, records): (Vec<String>, Vec<Vec<String>>) = got.into_iter().unzip();
        let want_topics = [1, 2, 3].map(|i| format!("{root}/{variant}/{i}"));
        assert_eq!(topics, want_topics, "{variant}");
        assert_eq!(records, want, "{variant}");
        // A row without special characters is a single line
        let plain = messages.iter().find(|m| m.topic == want_topics[0]);
        let text = plain.expect("row 1").payload_str();
        let line = text.strip_suffix('\n').unwrap_or(text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        assert!(!line.contains('\n'), "{variant}: {text:?} is not one line");
    }
    run.finish();
}

#[test]
fn qos_2_and_retain_reach_live_and_late_subscribers() {
    let world = World::new("outbound");
    let table = devices("out_retain", "(1, 'd1'), (2, 'd2')");
    let root = unique("retain");
    let route = dev_route("retain", &table, &root);
    let route = route.qos(2).set("retain", true);
    let config = config(&world, &Db::Postgres.connection_string(), &[route]);
    let live = Subscriber::connect(world.broker.port, &format!("{root}/#"), 2);
    let mut run = Run::new(world, config, live);

    let messages = run.settled(2);
    assert!(messages.iter().all(|m| m.qos == 2), "{messages:?}");
    // And a subscriber that comes later gets both as retained messages
    let late = Subscriber::connect(run.world.broker.port, &format!("{root}/#"), 1);
    let mut got: Vec<(String, i64, bool)> = late
        .wait_for(2, LIVENESS)
        .iter()
        .map(|m| (m.topic.clone(), id_of(&m.payload), m.retain))
        .collect();
    got.sort();
    assert_eq!(got, [1, 2].map(|i| (format!("{root}/d{i}"), i, true)));
    terminate_ok(&mut run.bridge);
}

#[test]
fn without_track_every_poll_publishes_every_row() {
    let table = rows_table("notrack", 2);
    let t = &table.name;
    let topic = unique("notrack");
    let route = Route::outbound("notrack", &format!("SELECT id, v FROM {t} ORDER BY id"));
    let mut run = Run::pg(route.interval("100ms").broker("b").topic(&topic), &topic);

    let sub = &run.sub;
    wait_for(&mut run.bridge, "three polls' worth", || {
        let counts = mqtt_id_counts(&sub.messages());
        Ok(counts.get(&1) >= Some(&3) && counts.get(&2) >= Some(&3))
    });
    terminate_ok(&mut run.bridge);

    // Every poll published both rows, in order, and nothing else
    let ids = run.ids();
    assert!(ids.iter().all(|i| [1, 2].contains(i)), "{ids:?}");
    let pairs = ids.len() / 2;
    assert_eq!(&ids[..pairs * 2], [1, 2].repeat(pairs), "{ids:?}");
    assert_eq!(run.letters(), Vec::<Json>::new());
}

#[test]
fn delay_leaves_young_rows_for_a_later_poll() {
    // A row an hour old and a row stamped an hour from now, and `delay: 5s`
    let db = Db::Postgres;
    let utc_now = "(now() AT TIME ZONE 'UTC')";
    let columns = "id INTEGER PRIMARY KEY, updated_at TIMESTAMP NOT NULL";
    let values = format!("(1, {utc_now} - interval '1 hour'), (2, {utc_now} + interval '1 hour')");
    let table = filled(&db, "out_delay", columns, &values);
    let t = &table.name;
    let topic = unique("delay");
    let route = to_topic("delay", &after_stamp("id, updated_at", t), &topic);
    let mut run = Run::pg(by_stamp(route).set("delay", "5s"), &topic);

    run.settled(1);
    assert_eq!(run.ids(), [1]);

    // And once the young row has aged (its stamp moved back), it goes out too, once
    let aged = format!("{utc_now} - interval '30 minutes'");
    db.exec(&format!("UPDATE {t} SET updated_at = {aged} WHERE id = 2"));
    run.settled(2);
    assert_eq!(run.ids(), [1, 2]);
    run.finish();
}

#[test]
fn amqp_default_exchange_delivers_to_the_queue_named_by_the_routing_key() {
    // `exchange: ""`, with the queue's name as routing key
    let mut rabbit = Rabbit::connect();
    let queue = unique("mqdb_out_default_q");
    rabbit.declare_queue(&queue);
    let table = rows_table("dflt", 3);
    let route = to_exchange("dflt", &after_id("id, v", &table.name), "", &queue);
    let mut run = AmqpRun::pg(rabbit, &queue, route);
    run.until(|got, _| got.len() >= 3);
    assert_eq!(run.ids(), [1, 2, 3]);
    finish_clean(&mut run.bridge, &run.config);
}

#[test]
fn a_numeric_track_column_is_bound_as_a_number() {
    // A key of NUMERIC(20,0), as in many legacy schemas; one row per poll, so the second poll
    // binds the first row's id
    let values = "(10000000000000000001, 'a'), (10000000000000000002, 'b')";
    let columns = "id NUMERIC(20,0) PRIMARY KEY, v TEXT";
    let table = filled(&Db::Postgres, "out_numtrack", columns, values);
    let (route, topic) = to_new_topic("numtrack", "id, v", &table.name);
    let mut run = Run::pg(route.set("max_rows", 1), &topic);
    let rows: Vec<Row> = run.settled(2).iter().map(|m| json_of(&m.payload)).collect();
    let ids = ["10000000000000000001", "10000000000000000002"];
    assert_eq!(numbers(&rows, "id"), ids);
    run.finish();
}

fn devices(prefix: &str, values: &str) -> TempTable {
    let columns = "id INTEGER PRIMARY KEY, dev TEXT NOT NULL";
    filled(&Db::Postgres, prefix, columns, values)
}

fn dev_route(name: &str, table: &TempTable, root: &str) -> Route {
    let topic = format!("{root}/{{dev}}");
    to_topic(name, &after_id("id, dev", &table.name), &topic)
}

#[test]
fn a_topic_template_with_a_leading_slash_publishes() {
    // A legal MQTT topic: the first level is empty, but no row value is
    let table = devices("out_slash", "(1, 'd1')");
    let root = unique("slash");
    let route = dev_route("slash", &table, &format!("/{root}"));
    let mut run = Run::pg(route, &format!("/{root}/#"));
    let (sub, config) = (&run.sub, &run.config);
    wait_for(&mut run.bridge, "the message or a dead letter", || {
        Ok(sub.count() >= 1 || !dlq_list(config).is_empty())
    });
    let letters = run.letters();
    assert_eq!(run.topics(), [format!("/{root}/d1")], "{letters:?}");
    terminate_ok(&mut run.bridge);
}

#[test]
fn outbound_mqtt_publishes_use_the_route_client_id() {
    World::on_each_store(
        "outbound",
        outbound_mqtt_publishes_use_the_route_client_id_on,
    );
}

fn outbound_mqtt_publishes_use_the_route_client_id_on(world: World) {
    let table = rows_table("cid", 1);
    let (route, topic) = to_new_topic("cid", "id, v", &table.name);
    let mut run = Run::pg_in(world, route, &topic);
    run.wait(1);
    terminate_ok(&mut run.bridge);
    // The broker saw the publisher connect as "<client_id>-<route>" (on a shared store, the
    // client id names the instance too)
    let log = run.world.broker.log();
    let name = format!(" as {}-cid ", run.world.session_id());
    assert!(log.contains(&name), "mosquitto log:\n{log}");
}

/// At most this many rows per poll in the restart and outage tests.
const STREAM_MAX_ROWS: usize = 100;

fn cut_while_rows_come(proxy: &TcpProxy, bridge: &mut Bridge, table: &str) {
    proxy.set_down(true);
    pg_insert_range(table, 1001, 2000);
    std::thread::sleep(Duration::from_secs(3));
    assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());
    proxy.set_down(false);
}

/// A [`rows_table`] published by route `name` to `topic` at QoS 1, [`STREAM_MAX_ROWS`] rows a
/// poll, and the client id of a persistent-session subscriber of the topic.
struct MqttStream {
    table: TempTable,
    world: World,
    topic: String,
    config: PathBuf,
    sub_id: String,
}

impl MqttStream {
    fn new(world: World, name: &str) -> MqttStream {
        let table = rows_table(name, 0);
        let (route, topic) = to_new_topic(name, "id, v", &table.name);
        let route = route.set("max_rows", STREAM_MAX_ROWS).qos(1);
        let config = config(&world, &Db::Postgres.connection_string(), &[route]);
        let sub_id = unique(&format!("{}_sub", table.name));
        MqttStream {
            table,
            world,
            topic,
            config,
            sub_id,
        }
    }

    fn start_mid_stream(&self, sub: &Subscriber) -> Bridge {
        pg_insert_range(&self.table.name, 1, 1000);
        let mut bridge = Bridge::start(&self.config);
        wait_for(&mut bridge, "the first messages", || Ok(sub.count() >= 100));
        bridge
    }

    /// A persistent-session subscriber of the topic: the broker keeps its messages across
    /// its own restart.
    fn durable_subscriber(&self) -> Subscriber {
        let filters = [(self.topic.as_str(), 1)];
        Subscriber::connect_with(self.world.broker.port, &self.sub_id, false, &filters)
    }

    fn broker_down(&mut self, sub: Subscriber) -> Vec<Received> {
        self.world.broker.stop();
        let before = sub.messages();
        drop(sub);
        pg_insert_range(&self.table.name, 1001, 2000);
        before
    }

    fn broker_back(&mut self) -> Subscriber {
        self.world.broker.restart();
        Subscriber::connect_with(self.world.broker.port, &self.sub_id, false, &[])
    }
}

/// Runs 2000 rows through a bridge that is stopped (SIGKILL or SIGTERM) after the first
/// messages arrive and then started again; returns how often each id arrived.
fn restart_mid_stream(world: World, graceful: bool) -> Counts {
    // A subscriber that stays connected throughout
    let stream = MqttStream::new(world, "restart");
    let sub = stream.world.subscribe(&stream.topic);
    let mut bridge = stream.start_mid_stream(&sub);
    if graceful {
        terminate_ok(&mut bridge);
    } else {
        bridge.kill();
    }
    let at_stop = sub.count();

    pg_insert_range(&stream.table.name, 1001, 2000);
    let mut bridge = Bridge::start(&stream.config);
    wait_all(&mut bridge, &[], &sub, 2000);
    std::thread::sleep(QUIET);
    let counts = mqtt_id_counts(&sub.messages());
    assert_eq!(missing(&counts, 2000), Vec::<i64>::new());
    assert_eq!(counts.len(), 2000, "ids outside 1..=2000");
    finish_clean(&mut bridge, &stream.config);
    let dups = duplicates(&counts);
    eprintln!("messages before the stop: {at_stop}; duplicates: {dups}");
    counts
}

#[test]
fn sigkill_mid_stream_then_restart_skips_nothing() {
    World::on_each_store("outbound", |world| {
        let counts = restart_mid_stream(world, false);
        // At most one poll's worth was published again (a crash between confirm and store)
        let dups = duplicates(&counts);
        let more =
            format!("{dups} duplicates after SIGKILL, more than one poll ({STREAM_MAX_ROWS})");
        assert!(dups <= STREAM_MAX_ROWS, "{more}");
    });
}

#[test]
fn sigterm_mid_stream_then_restart_publishes_each_row_once() {
    World::on_each_store("outbound", |world| {
        let counts = restart_mid_stream(world, true);
        // SIGTERM is not a crash: every id of 1..=2000 (and no other) arrived once
        assert_eq!(counts, once_each(1..=2000), "ids published more than once");
    });
}

#[test]
fn mosquitto_stopped_mid_stream_loses_nothing() {
    let mut stream = MqttStream::new(World::new("outbound"), "mqstop");
    let sub = stream.durable_subscriber();
    let mut bridge = stream.start_mid_stream(&sub);

    let before = stream.broker_down(sub);
    std::thread::sleep(Duration::from_secs(3));
    assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());
    let sub = stream.broker_back();
    let lost = "the broker lost the subscriber's session";
    assert!(sub.session_present, "{lost}");

    let counts = wait_all(&mut bridge, &before, &sub, 2000);
    assert_eq!(counts.len(), 2000, "ids outside 1..=2000");
    finish_clean(&mut bridge, &stream.config);
    let dups = duplicates(&counts);
    let at_stop = before.len();
    eprintln!("messages before the stop: {at_stop}; duplicates: {dups}");
}

#[test]
fn a_connection_lost_while_confirms_are_awaited_loses_nothing() {
    // Through a proxy, polls longer than the publish window (so publishes are in flight most
    // of the time; the next poll is read while a poll's confirms are awaited), and more rows
    // than a few polls
    let world = World::new("outbound");
    let proxy = TcpProxy::start(world.broker.addr());
    let table = rows_table("lost", 0);
    let (route, topic) = to_new_topic("lost", "id, v", &table.name);
    let route = route.set("max_rows", 5000).qos(1);
    let url = format!("mqtt://127.0.0.1:{}", proxy.port);
    let (broker, cs) = (("b", url.as_str(), world.mqtt(Json::Null).1), Db::Postgres);
    let config = config_on(&world, broker, &cs.connection_string(), &[route]);
    let sub = world.subscribe(&topic);
    let n = 30_000;
    pg_insert_range(&table.name, 1, n);
    let mut run = Run::new(world, config, sub);

    // The connection is cut in the middle of the stream and restored soon after, until a cut
    // has failed publishes that were waiting for their confirms
    let in_flight_cut = |log: &str| {
        log.lines()
            .any(|l| l.contains("publisher connection lost") && !l.contains("unconfirmed=0"))
    };
    for _ in 0..5 {
        let seen = run.sub.count();
        run.wait(seen + 1000);
        proxy.set_down(true);
        std::thread::sleep(Duration::from_millis(300));
        proxy.set_down(false);
        if in_flight_cut(&run.bridge.log()) {
            break;
        }
    }
    let log = run.bridge.log();
    let no_cut = "no cut came while publishes were in flight";
    assert!(in_flight_cut(&log), "{no_cut}:\n{log}");

    run.wait_ids(n);
    let counts = run.counts();
    assert_eq!(missing(&counts, n), Vec::<i64>::new());
    run.finish();
    eprintln!("duplicates after the cut: {}", duplicates(&counts));
}

#[test]
fn sigterm_while_the_broker_is_down_exits_and_a_restart_loses_nothing() {
    let mut stream = MqttStream::new(World::new("outbound"), "termdown");
    let sub = stream.durable_subscriber();
    let mut bridge = stream.start_mid_stream(&sub);

    // The broker stops, more rows come, and the bridge gets SIGTERM while it cannot publish
    let before = stream.broker_down(sub);
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    terminate_ok(&mut bridge);
    let took = asked.elapsed();

    let sub = stream.broker_back();
    let mut bridge = Bridge::start(&stream.config);
    wait_all(&mut bridge, &before, &sub, 2000);
    finish_clean(&mut bridge, &stream.config);
    eprintln!("SIGTERM with the broker down took {took:?}");
}

#[test]
fn rabbitmq_connection_cut_mid_stream_loses_nothing() {
    let mut rabbit = Rabbit::connect();
    let (exchange, queue) = exchange_with_queue(&mut rabbit, "mqdb_out_cut", "rows");
    let proxy = TcpProxy::start(Rabbit::addr());
    let table = rows_table("acut", 0);
    let t = &table.name;
    let route = to_exchange("acut", &after_id("id, v", t), &exchange, "rows");
    let route = route.set("max_rows", STREAM_MAX_ROWS);
    pg_insert_range(t, 1, 1000);
    let url = Rabbit::url_via(proxy.port);
    let cs = Db::Postgres.connection_string();
    let mut run = AmqpRun::start(rabbit, &queue, &url, &cs, &[route]);
    run.until(|got, _| got.len() >= 100);
    cut_while_rows_come(&proxy, &mut run.bridge, t);

    let counts = |got: &[AmqpMessage]| id_counts(got.iter().map(|m| m.payload.as_slice()));
    run.until(|got, _| missing(&counts(got), 2000).is_empty());
    assert_eq!(run.letters(), Vec::<Json>::new());
    let counts = counts(&run.got);
    assert_eq!(counts.len(), 2000, "ids outside 1..=2000");
    assert!(proxy.accepted() >= 2, "the bridge never reconnected");
    terminate_ok(&mut run.bridge);
    eprintln!("duplicates after the cut: {}", duplicates(&counts));
}

#[test]
fn database_outage_mid_stream_loses_nothing() {
    // Through a proxy, with an after_publish that marks each row sent
    let db = Db::Postgres;
    let proxy = TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 5432)));
    let columns = "id INTEGER PRIMARY KEY, v TEXT, sent_at TIMESTAMPTZ NULL";
    let table = TempTable::create(&db, "out_dbcut", columns);
    let t = &table.name;
    let (route, topic) = to_new_topic("dbcut", "id, v", t);
    let route = route.set("max_rows", STREAM_MAX_ROWS);
    pg_insert_range(t, 1, 1000);
    let cs = db.connection_string_via(proxy.port);
    let mut run = Run::start(&cs, &[route.set("after_publish", mark_sent(t))], &topic);
    run.wait(100);
    cut_while_rows_come(&proxy, &mut run.bridge, t);

    run.wait_ids(2000);
    run.wait_all_sent(&db, t);
    assert_eq!(run.letters(), Vec::<Json>::new());
    let counts = run.counts();
    assert_eq!(counts.len(), 2000, "ids outside 1..=2000");
    assert!(proxy.accepted() >= 2, "the bridge never reconnected");
    run.finish();
    eprintln!("duplicates after the database cut: {}", duplicates(&counts));
}

fn rows_sharing_a_timestamp_survive_a_restart(world: World, db: &Db, columns: &str) {
    // Rows with the same microsecond timestamp, tracked by (updated_at, id), three per poll
    let table = TempTable::create(db, "out_ts", columns);
    let t = &table.name;
    let insert = |from: i64, to: i64| {
        for i in from..=to {
            let row = format!("({i}, '2024-05-01 12:00:00.123456', 'row {i}')");
            db.exec(&format!("INSERT INTO {t} (id, updated_at, v) VALUES {row}"));
        }
    };
    insert(1, 10);
    let topic = unique("ts");
    let route = to_topic("ts", &after_stamp("id, updated_at, v", t), &topic);
    let route = by_stamp(route).set("max_rows", 3);
    let mut run = Run::start_in(world, &db.connection_string(), &[route], &topic);

    // The bridge is stopped after its first poll, ten more rows come, and it starts again
    run.wait(3);
    terminate_ok(&mut run.bridge);
    let at_stop = run.sub.count();
    insert(11, 20);
    run.bridge = Bridge::start(&run.config);

    // Every row arrives exactly once, the timestamp with its microseconds
    run.wait_ids(20);
    std::thread::sleep(QUIET);
    let before = format!("{at_stop} messages before the restart");
    assert_eq!(run.counts(), once_each(1..=20), "{before}");
    let first = json_of(&run.sub.messages()[0].payload);
    assert_eq!(first["updated_at"], "2024-05-01T12:00:00.123456");
    run.finish();
}

#[test]
fn rows_sharing_a_timestamp_survive_a_restart_postgres() {
    let columns = "id INTEGER PRIMARY KEY, updated_at TIMESTAMP NOT NULL, v TEXT";
    World::on_each_store("outbound", |world| {
        rows_sharing_a_timestamp_survive_a_restart(world, &Db::Postgres, columns);
    });
}

#[test]
fn rows_sharing_a_timestamp_survive_a_restart_mariadb() {
    let columns = "id INT PRIMARY KEY, updated_at DATETIME(6) NOT NULL, v TEXT";
    rows_sharing_a_timestamp_survive_a_restart(World::new("outbound"), &Db::MariaDb, columns);
}

#[test]
fn rows_whose_topic_cannot_be_built_become_dead_letters() {
    // Topic values holding `+`, `#`, `/`, or nothing, between good rows
    let values = "(1, 'ok1'), (2, 'a+b'), (3, 'ok3'), (4, 'x#'), (5, ''), (6, 'ok6'), \
                  (7, E'site/\\u001b[2J')";
    let table = devices("out_topic", values);
    let root = unique("topic");
    let mut run = Run::pg(dev_route("badtopic", &table, &root), &format!("{root}/#"));
    run.wait_with_letters(3, 4);
    Db::Postgres.exec(&format!("INSERT INTO {} VALUES (8, 'ok8')", table.name));
    run.settled(4);

    let good = ["ok1", "ok3", "ok6", "ok8"].map(|d| format!("{root}/{d}"));
    assert_eq!(run.topics(), good);
    // And each bad row is exactly one outbound dead letter of kind "topic", with the row;
    // as it never got a topic, its source is the template it was meant for
    let template = format!("{root}/{{dev}}");
    let want = [2, 4, 5, 7].map(|id| {
        json!({ "id": id, "route": "badtopic", "direction": "outbound",
            "error_kind": "topic", "source": template })
    });
    let letters = run.letters();
    let keys = ["route", "direction", "error_kind", "source"];
    assert_eq!(picked(&letters, &keys), want);
    // And the `/` one names the column and its value, escaped, and the key that allows it
    let slash = letters
        .iter()
        .map(|l| l["error"].as_str().unwrap_or_default())
        .find(|e| e.contains('/'))
        .unwrap_or_else(|| panic!("no dead letter for the `/` value: {letters:#?}"));
    let named = r#"column dev value "site/\u{1b}[2J" contains `/`"#;
    assert!(slash.contains(named), "{slash}");
    assert!(slash.contains("topic_values_add_levels: true"), "{slash}");
    terminate_ok(&mut run.bridge);
}

#[test]
fn topic_values_add_levels_lets_a_slash_in_a_value_add_levels() {
    let values = "(1, 'hall/dev1'), (2, 'dev2'), (3, 'hall//dev3')";
    let table = devices("out_levels", values);
    let root = unique("levels");
    let route = dev_route("levels", &table, &root).set("topic_values_add_levels", true);
    let mut run = Run::pg(route, &format!("{root}/#"));
    run.wait_with_letters(2, 1);
    terminate_ok(&mut run.bridge);

    // The `/` made a level, and an empty level is still a dead letter
    let topics = [format!("{root}/dev2"), format!("{root}/hall/dev1")];
    assert_eq!(run.topics(), topics);
    let letter = only(run.letters());
    assert_eq!(letter["error_kind"], "topic", "{letter:#}");
    let error = letter["error"].as_str().unwrap_or_default();
    assert!(error.contains("empty topic level"), "{error}");
}

#[test]
fn unroutable_amqp_rows_become_dead_letters_and_the_position_moves_on() {
    World::on_each_store("outbound", unroutable_amqp_rows_on);
}

fn unroutable_amqp_rows_on(world: World) {
    // Only routing key `r.good` has a queue; rows with keys `r.good`, `r.bad` and `r.other`
    let db = Db::Postgres;
    let mut rabbit = Rabbit::connect();
    let (exchange, queue) = exchange_with_queue(&mut rabbit, "mqdb_out_unr", "r.good");
    let values = "(1, 'good'), (2, 'bad'), (3, 'good'), (4, 'other'), (5, 'good')";
    let columns = "id INTEGER PRIMARY KEY, kind TEXT NOT NULL";
    let table = filled(&db, "out_unr", columns, values);
    let query = after_id("id, kind", &table.name);
    let route = to_exchange("unroutable", &query, &exchange, "r.{kind}");
    let mut run = AmqpRun::pg_in(world, rabbit, &queue, route);
    run.until(|got, config| got.len() >= 3 && dlq_list(config).len() >= 2);
    db.exec(&format!("INSERT INTO {} VALUES (6, 'good')", table.name));
    run.until(|got, _| got.len() >= 4);
    run.settle();

    let mut ids = run.ids();
    ids.sort_unstable();
    assert_eq!(ids, [1, 3, 5, 6]);
    for m in &run.got {
        let to = (m.exchange.as_str(), m.routing_key.as_str());
        assert_eq!(to, (exchange.as_str(), "r.good"));
        assert_eq!(m.delivery_mode, Some(2), "{m:?}");
    }
    let want = [(2, "bad"), (4, "other")].map(|(id, key)| {
        json!({ "id": id, "route": "unroutable", "direction": "outbound",
            "error_kind": "unroutable", "source": format!("{exchange}/r.{key}") })
    });
    let keys = ["route", "direction", "error_kind", "source"];
    assert_eq!(picked(&run.letters(), &keys), want);
    terminate_ok(&mut run.bridge);
}

fn outbox(db: &Db, prefix: &str, from: i64, to: i64) -> TempTable {
    let columns = "id INTEGER PRIMARY KEY, dev TEXT, sent_at TIMESTAMPTZ NULL";
    let table = TempTable::create(db, prefix, columns);
    insert_devs(&table, from, to);
    table
}

fn insert_devs(table: &TempTable, from: i64, to: i64) {
    table.db.exec(&format!(
        "INSERT INTO {} (id, dev) SELECT g, 'd' || g FROM generate_series({from}, {to}) g",
        table.name
    ));
}

/// An outbox polled by position (`id > ?`) whose `after_publish` marks each row sent.
fn after_publish_marks_every_row(db: Db, columns: &str, mark: &str) {
    let values: Vec<String> = (1..=50).map(|i| format!("({i}, 'd{i}', NULL)")).collect();
    let table = filled(&db, "out_after", columns, &values.join(", "));
    let t = &table.name;
    let topic = unique("after");
    let update = format!("UPDATE {t} SET sent_at = {mark} WHERE id = ?");
    let route = to_topic("after", &after_id("id, dev", t), &topic);
    let route = route.set("max_rows", 20).set("after_publish", update);
    let mut run = Run::start(&db.connection_string(), &[route], &topic);
    run.wait_ids(50);
    run.wait_all_sent(&db, t);
    std::thread::sleep(QUIET);
    assert_eq!(run.counts(), once_each(1..=50));
    run.finish();
}

#[test]
fn after_publish_marks_every_row_postgres() {
    let columns = "id INTEGER PRIMARY KEY, dev TEXT, sent_at TIMESTAMPTZ NULL";
    after_publish_marks_every_row(Db::Postgres, columns, "now()");
}

#[test]
fn after_publish_marks_every_row_mariadb() {
    let columns = "id INT PRIMARY KEY, dev VARCHAR(20), sent_at DATETIME(6) NULL";
    after_publish_marks_every_row(Db::MariaDb, columns, "CURRENT_TIMESTAMP(6)");
}

#[test]
fn after_publish_rejections_become_dead_letters_and_the_rest_commit() {
    // An after_publish the database rejects for row 3 only (a CHECK constraint, SQLSTATE 23514)
    let db = Db::Postgres;
    let values: Vec<String> = (1..=10)
        .map(|i| format!("({i}, {}, NULL)", if i == 3 { 50 } else { 1 }))
        .collect();
    let columns = "id INTEGER PRIMARY KEY, n INTEGER CHECK (n <= 100), sent_at TIMESTAMPTZ NULL";
    let table = filled(&db, "out_after_rej", columns, &values.join(", "));
    let t = &table.name;
    let topic = unique("after_rej");
    let update = format!("UPDATE {t} SET n = n * 10, sent_at = now() WHERE id = ?");
    let route = to_topic("after_rej", &after_id("id, n", t), &topic);
    let mut run = Run::pg(route.set("after_publish", update), &topic);
    run.wait_ids(10);
    run.wait_with_letters(10, 1);
    std::thread::sleep(QUIET);

    assert_eq!(run.counts(), once_each(1..=10));
    // And every other row's after_publish committed
    let unsent = db.query(&format!(
        "SELECT id FROM {t} WHERE sent_at IS NULL ORDER BY id"
    ));
    assert_eq!(
        unsent,
        text_rows(&[["3"]]),
        "rows whose after_publish did not commit"
    );
    let letters = picked(&run.letters(), &["route", "direction"]);
    let want = json!({ "id": 3, "route": "after_rej", "direction": "outbound" });
    assert_eq!(letters, [want]);
    terminate_ok(&mut run.bridge);
}

/// An outbox polled as "every unsent row" (no `?`), marked sent by `after_publish`,
/// `max_rows` rows per poll, to `topic`.
fn outbox_route(table: &str, max_rows: usize, topic: &str) -> Route {
    let query = format!("SELECT id, dev FROM {table} WHERE sent_at IS NULL ORDER BY id");
    let route = to_topic("outbox", &query, topic).set("max_rows", max_rows);
    route.set("after_publish", mark_sent(table))
}

#[test]
fn outbox_without_a_position_parameter_publishes_each_row_once() {
    let db = Db::Postgres;
    let table = outbox(&db, "out_outbox", 1, 30);
    let topic = unique("outbox");
    let mut run = Run::pg(outbox_route(&table.name, 10, &topic), &topic);
    run.wait_ids(30);
    run.wait_all_sent(&db, &table.name);
    insert_devs(&table, 31, 40);
    run.wait_ids(40);
    run.wait_all_sent(&db, &table.name);
    std::thread::sleep(QUIET);
    assert_eq!(run.counts(), once_each(1..=40));
    run.finish();
}

#[test]
fn an_outbox_marks_dead_lettered_rows_so_they_are_dead_lettered_once() {
    // The topic comes from the row, and row 4's value cannot be a topic level (`+`): it
    // becomes a dead letter, not a message
    let db = Db::Postgres;
    let table = outbox(&db, "out_outbox_dead", 1, 8);
    let t = &table.name;
    db.exec(&format!("UPDATE {t} SET dev = 'bad+dev' WHERE id = 4"));
    let topic = unique("outbox_dead");
    let route = outbox_route(t, 3, &format!("{topic}/{{dev}}"));
    let mut run = Run::pg(route, &format!("{topic}/#"));
    let sub = &run.sub;
    wait_for(&mut run.bridge, "seven rows published", || {
        Ok(mqtt_id_counts(&sub.messages()).len() == 7)
    });
    run.wait_all_sent(&db, t);
    std::thread::sleep(QUIET);

    // The bad row is one dead letter, however many polls ran, and every other row was
    // published once
    let letter = only(run.letters());
    assert_eq!(letter["error_kind"], "topic", "{letter}");
    assert_eq!(run.counts(), once_each([1, 2, 3, 5, 6, 7, 8]));
    terminate_ok(&mut run.bridge);
}

fn check(config: &Path) -> Ran {
    mqdb_at(config, &["check"])
}

fn check_one(prefix: &str, route: impl FnOnce(&str) -> Route) -> Ran {
    let world = World::new("outbound");
    let table = TempTable::create(&Db::Postgres, prefix, "id INTEGER PRIMARY KEY");
    let route = route(&table.name);
    check(&config(&world, &Db::Postgres.connection_string(), &[route]))
}

#[test]
fn check_reports_each_outbound_route() {
    // A good MQTT and a good AMQP route, and routes with one problem each: a query naming a
    // missing column, a track column the query does not return, a topic naming a column the
    // query does not return, an exchange that does not exist, and an unreachable broker
    let db = Db::Postgres;
    let world = World::new("outbound");
    let mut rabbit = Rabbit::connect();
    let exchange = unique("mqdb_out_check");
    rabbit.declare_exchange(&exchange, "topic");
    let absent = unique("mqdb_out_absent");
    let columns = "id INTEGER PRIMARY KEY, seq_no INTEGER, dev TEXT";
    let table = TempTable::create(&db, "out_check", columns);
    let t = &table.name;
    let root = unique("check");
    let topic = format!("{root}/{{dev}}");
    let select = after_id("id, dev", t);
    let by_seq_no = format!("SELECT id, dev FROM {t} WHERE seq_no > ? ORDER BY seq_no");
    let missing_column = after_id("id, dev, no_such_column", t);
    let no_such_level = format!("{root}/{{no_such_level}}");
    let routes = [
        to_topic("good", &select, &topic),
        to_exchange("good_amqp", &select, &exchange, "x.{dev}"),
        to_topic("bad_column", &missing_column, &topic),
        to_topic("bad_track", &by_seq_no, &topic).set("track", "seq_no"),
        to_topic("bad_template", &select, &no_such_level),
        to_exchange("no_exchange", &select, &absent, "x.{dev}"),
        to_topic("gone_broker", &select, &topic).broker("gone"),
    ];
    let problems = [
        ("bad_column", "no_such_column"),
        ("bad_track", "seq_no"),
        ("bad_template", "no_such_level"),
        ("no_exchange", absent.as_str()),
        ("gone_broker", "gone"),
    ];
    let good = &routes[..2];
    let brokers = world.config(&db).broker("rabbit", Rabbit::URL, Json::Null);
    let closed = format!("mqtt://127.0.0.1:{}", common::free_port());
    let gone = world.mqtt(Json::Null).1;
    let with_gone = brokers.clone().broker("gone", &closed, gone);
    let ran = check(&write(with_gone, &routes));

    // It fails (exit 1) with one line per route: ok for the good ones, FAIL naming the
    // problem (after the route's name) for the others
    ran.code(1);
    for name in ["good", "good_amqp"] {
        ran.route_is(&format!("outbound {name}"), "ok", &[]);
    }
    for (name, needle) in problems {
        let route = format!("outbound {name}");
        let line = ran.route_is(&route, "FAIL", &[]).route_line(&route);
        let detail = line.split_once(':').map_or("", |(_, d)| d);
        let expected = format!("{name}: expected {needle:?}");
        assert!(detail.contains(needle), "{expected}\n{ran}");
    }

    let ran = check(&write(brokers, good));
    ran.code(0).route_is("outbound good", "ok", &[]);
    assert!(!ran.stdout.contains("FAIL"), "{ran}");
}

#[test]
fn check_fails_when_after_publish_does_not_prepare() {
    // An after_publish that updates a column that does not exist
    let ran = check_one("out_chk_after", |t| {
        let update = format!("UPDATE {t} SET no_such_target = 1 WHERE id = ?");
        to_topic("bad_after", &after_id("id", t), &unique("chk")).set("after_publish", update)
    });
    ran.fails("outbound bad_after", &["no_such_target"]);
}

#[test]
fn check_prints_one_line_per_outbound_route() {
    // A query naming a missing column (psqlODBC's message has two lines)
    let ran = check_one("out_chk_line", |t| {
        let query = after_id("id, no_such_column", t);
        to_topic("one_line", &query, &unique("chk"))
    });
    ran.code(1);
    let lines: Vec<&str> = ran
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{ran}");
    assert!(lines[0].starts_with("FAIL  outbound one_line:"), "{ran}");
    assert!(lines[0].contains("no_such_column"), "{ran}");
}

/// The deduplication key of the row of `route` with track values `track` and body `payload`.
fn key_of(route: &str, track: &[&str], payload: &[u8]) -> String {
    let track: Vec<Option<String>> = track.iter().map(|v| Some((*v).to_owned())).collect();
    mqdb::dedup::message_id(route, &track, payload)
}

fn row_id(payload: &[u8]) -> i64 {
    if payload.first() == Some(&b'{') {
        return id_of(payload);
    }
    let text = String::from_utf8_lossy(payload);
    let first = text.split(',').next().unwrap_or_default();
    let id = first.parse();
    id.unwrap_or_else(|_| panic!("no id first in {text:?}"))
}

fn epoch_seconds() -> u64 {
    Utc::now().timestamp().try_into().expect("clock after 1970")
}

/// Each message's row id and key, checked against the key of `route` for that row.
fn keys_by_id(route: &str, messages: &[AmqpMessage]) -> BTreeMap<i64, String> {
    let mut keys = BTreeMap::new();
    for m in messages {
        let id = row_id(&m.payload);
        let want = key_of(route, &[&id.to_string()], &m.payload);
        assert_eq!(m.message_id.as_deref(), Some(want.as_str()), "{m:?}");
        // The route and position, for consumers that drop a takeover's duplicates.
        assert_eq!(
            m.headers.get("route").map(String::as_str),
            Some(route),
            "{m:?}"
        );
        let position = format!("[\"{id}\"]");
        assert_eq!(m.headers.get("position"), Some(&position), "{m:?}");
        keys.insert(id, want);
    }
    keys
}

#[test]
fn amqp_messages_carry_a_key_stable_across_instances_their_content_type_and_a_timestamp() {
    World::on_each_store("outbound", amqp_messages_carry_a_stable_key_on);
}

fn amqp_messages_carry_a_stable_key_on(world: World) {
    // A queue for JSON rows and one for CSV rows, and two routes publishing the same rows
    let db = Db::Postgres;
    let mut rabbit = Rabbit::connect();
    let (exchange, json_q) = exchange_with_queue(&mut rabbit, "mqdb_out_key", "json");
    let csv_q = unique("mqdb_out_key_csv");
    rabbit.declare_bound_queue(&csv_q, &exchange, "csv");
    let table = rows_table("key", 3);
    let t = &table.name;
    let query = after_id("id, v", t);
    let routes = [("keys_json", "json"), ("keys_csv", "csv")]
        .map(|(name, format)| to_exchange(name, &query, &exchange, format).format(format));
    let rabbit_at = ("rabbit", Rabbit::URL, Json::Null);
    let config = config_on(&world, rabbit_at, &db.connection_string(), &routes);
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

    let before = epoch_seconds();
    let (json, csv) = run(&mut rabbit, 3);
    let after = epoch_seconds();

    // Each message says what it holds, and when it was published
    let typed = json.iter().map(|m| (m, "application/json"));
    for (m, content_type) in typed.chain(csv.iter().map(|m| (m, "text/csv"))) {
        assert_eq!(m.content_type.as_deref(), Some(content_type), "{m:?}");
        let at = m.timestamp.unwrap_or_else(|| panic!("no timestamp: {m:?}"));
        let published = before..=after;
        assert!(published.contains(&at), "{at} not in {published:?}");
    }
    // And each carries its row's key, which differs between rows and between routes
    let json_keys = keys_by_id("keys_json", &json);
    let csv_keys = keys_by_id("keys_csv", &csv);
    let all: BTreeSet<&String> = json_keys.values().chain(csv_keys.values()).collect();
    assert_eq!(all.len(), 6, "{json_keys:?} {csv_keys:?}");

    // When the state store is lost, so both routes publish from `start` again as a new
    // instance would, and a new row comes
    world.store.wipe();
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
        assert!(!all.contains(&again[&4]), "{route}: row 4 reuses a key");
    }
}

#[test]
fn rows_sharing_a_track_value_get_their_own_keys_and_only_the_unroutable_one_is_a_dead_letter() {
    // Rows in one poll that share their track value, one of them unroutable
    let mut rabbit = Rabbit::connect();
    let (exchange, queue) = exchange_with_queue(&mut rabbit, "mqdb_out_tie", "r.good");
    let columns = "id INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL";
    let values = "(1, 10, 'good'), (2, 10, 'bad'), (3, 10, 'good'), (4, 10, 'good')";
    let table = filled(&Db::Postgres, "out_tie", columns, values);
    let t = &table.name;
    let query = format!("SELECT id, at, kind FROM {t} WHERE at > ? ORDER BY at, id");
    let route = to_exchange("ties", &query, &exchange, "r.{kind}").set("track", "at");
    let mut run = AmqpRun::pg(rabbit, &queue, route);
    run.until(|got, config| got.len() >= 3 && !dlq_list(config).is_empty());
    run.settle();
    terminate_ok(&mut run.bridge);

    // The routable rows arrived once each, each with a key of its own
    let mut keys = BTreeMap::new();
    for m in &run.got {
        let want = key_of("ties", &["10"], &m.payload);
        assert_eq!(m.message_id.as_deref(), Some(want.as_str()), "{m:?}");
        let first = keys.insert(id_of(&m.payload), want).is_none();
        assert!(first, "{:?}", run.got);
    }
    assert_eq!(keys.keys().copied().collect::<Vec<_>>(), [1, 3, 4]);
    let distinct: BTreeSet<&String> = keys.values().collect();
    assert_eq!(distinct.len(), 3, "{keys:?}");
    let letters = picked(&run.letters(), &["error_kind"]);
    assert_eq!(letters, [json!({ "id": 2, "error_kind": "unroutable" })]);
}

#[test]
fn mqtt5_messages_carry_content_type_payload_format_and_key() {
    // An MQTT 5 broker and subscriber, and a JSON and a CSV route
    let db = Db::Postgres;
    let world = World::new("outbound");
    let table = rows_table("v5", 2);
    let root = unique("v5");
    let query = after_id("id, v", &table.name);
    let routes = [("v5_json", "json"), ("v5_csv", "csv")].map(|(name, format)| {
        let topic = format!("{root}/{format}/{{id}}");
        to_topic(name, &query, &topic).format(format)
    });
    let config = config_mqtt5(&world, &db.connection_string(), &routes);
    let sub = Subscriber5::connect(world.broker.port, &format!("{root}/#"));
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "two rows of each", || {
        Ok(sub.messages().len() >= 4)
    });
    terminate_ok(&mut bridge);

    // Each message has its content type, says it is UTF-8, and carries its row's key
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
        assert_eq!(m.user_property("route"), Some(route), "{m:?}");
        let position = format!("[\"{id}\"]");
        assert_eq!(
            m.user_property("position"),
            Some(position.as_str()),
            "{m:?}"
        );
    }
}

#[test]
fn an_mqtt5_broker_refusing_a_publish_makes_a_dead_letter_at_qos_1_and_2() {
    // An MQTT 5 broker whose ACL lets anonymous clients use `<root>/ok/#` only, and two routes
    // (QoS 1 and QoS 2) publishing rows to `<root>/<kind>/...`, one row of kind denied
    let root = unique("acl");
    let acl = tempfile::NamedTempFile::new().expect("acl file");
    std::fs::write(acl.path(), format!("topic readwrite {root}/ok/#\n")).expect("write acl");
    // A non-zero queue limit: at 0, mosquitto 2.0 also drops a client it refused.
    let acl_file = acl.path().display();
    let broker = format!("acl_file {acl_file}\nmax_queued_messages 1000");
    let world = World::with_broker_config("outbound", &broker);
    let db = Db::Postgres;
    let columns = "id INTEGER PRIMARY KEY, kind TEXT NOT NULL";
    let values = "(1, 'ok'), (2, 'denied'), (3, 'ok')";
    let table = filled(&db, "out_acl", columns, values);
    let t = &table.name;
    let query = after_id("id, kind", t);
    let routes = [1, 2].map(|qos| {
        let topic = format!("{root}/{{kind}}/q{qos}/{{id}}");
        to_topic(&format!("acl{qos}"), &query, &topic).qos(qos)
    });
    let config = config_mqtt5(&world, &db.connection_string(), &routes);
    let sub = world.subscribe(&format!("{root}/ok/#"));
    let mut run = Run::new(world, config, sub);
    run.wait(4);
    db.exec(&format!("INSERT INTO {t} VALUES (4, 'ok')"));
    run.wait(6);
    terminate_ok(&mut run.bridge);

    // The refused row is a dead letter of each route, naming the broker's reason
    let letters = run.letters();
    for l in &letters {
        let error = l["error"].as_str().unwrap_or_default();
        assert!(error.contains("NotAuthorized"), "{l:#}");
    }
    let want = ["acl1", "acl2"].map(|r| json!({ "id": 2, "route": r, "error_kind": "nacked" }));
    assert_eq!(picked(&letters, &["route", "error_kind"]), want);
}

/// A trigger on `table` that notifies `channel` after every INSERT statement, and the
/// function it calls (dropped with the guard; the trigger goes with the table).
struct NotifyOnInsert {
    function: String,
}

impl NotifyOnInsert {
    fn create(table: &str, channel: &str) -> NotifyOnInsert {
        let function = format!("{table}_notify");
        Db::Postgres.exec(&format!(
            "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS \
             'BEGIN PERFORM pg_notify(TG_ARGV[0], ''''); RETURN NULL; END'"
        ));
        Db::Postgres.exec(&format!(
            "CREATE TRIGGER {table}_inserted AFTER INSERT ON {table} \
             FOR EACH STATEMENT EXECUTE FUNCTION {function}('{channel}')"
        ));
        NotifyOnInsert { function }
    }
}

impl Drop for NotifyOnInsert {
    fn drop(&mut self) {
        let drop = format!("DROP FUNCTION IF EXISTS {} CASCADE", self.function);
        let _ = Db::Postgres.try_exec(&drop);
    }
}

#[test]
fn wake_publishes_an_inserted_row_at_once_and_survives_a_lost_listener() {
    // A table whose inserts notify a channel, and a route polling it only every hour but
    // woken by that channel
    let table = TempTable::create(&Db::Postgres, "out_wake", "id INTEGER PRIMARY KEY, v TEXT");
    let t = &table.name;
    let channel = unique("wake");
    let _trigger = NotifyOnInsert::create(t, &channel);
    let topic = unique("wake");
    let route = to_topic("woken", &after_id("id, v", t), &topic)
        .interval("1h")
        .set("wake", json!({ "listen": channel }));
    let world = World::new("outbound");
    let addr = format!("127.0.0.1:{}", common::free_port());
    let with_http = world.config_cs(&Db::Postgres.connection_string());
    let config = write(with_http.set("http", json!({ "listen": addr })), &[route]);
    let sub = world.subscribe(&topic);
    let mut run = Run::new(world, config, sub);
    run.bridge.wait_for_log("wake listener connected", LIVENESS);

    // When a row is inserted, it is published: the hour is not over, so the notification
    // did it
    Db::Postgres.exec(&format!("INSERT INTO {t} VALUES (1, 'a')"));
    run.wait(1);
    assert_eq!(run.ids(), [1]);

    // When the listening connection is terminated from SQL, mqdb says it polls on its timer,
    // reconnects, and a row inserted afterwards is woken again
    let listening = format!(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query = 'LISTEN \"{channel}\"'"
    );
    assert_eq!(try_scalar(&Db::Postgres, &listening), Some(1));
    run.bridge.wait_for_log("wake listener lost", LIVENESS);
    run.bridge
        .wait_for_log("wake listener connected again", LIVENESS);
    Db::Postgres.exec(&format!("INSERT INTO {t} VALUES (2, 'b')"));
    run.wait(2);
    assert_eq!(run.ids(), [1, 2]);
    let log = run.bridge.log();
    assert_eq!(log.matches("wake listener lost").count(), 1, "{log}");

    // And the woken polls are counted: at least one per inserted row
    let (status, metrics) = common::http::get(&addr, "/metrics");
    assert_eq!(status, 200);
    let series = "mqdb_outbound_wakes_total{route=\"woken\",direction=\"outbound\"} ";
    let wakes: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}in:\n{metrics}"));
    assert!(wakes >= 2.0, "{wakes} woken polls");
    run.finish();
}

#[test]
fn wake_on_a_mariadb_route_is_refused_by_check_with_its_line() {
    // A route with wake on a MariaDB database
    let world = World::new("outbound");
    let route = to_topic("maria_wake", &after_id("id", "t"), "x")
        .set("wake", json!({ "listen": "rows_changed" }));
    let path = config(&world, &Db::MariaDb.connection_string(), &[route]);
    let yaml = std::fs::read_to_string(&path).unwrap();
    let located = format!("{}:{}:", path.display(), line_of(&yaml, "rows_changed"));

    // check refuses it (exit 2), naming the file and line, and why
    check(&path)
        .code(2)
        .stderr_has(&[&located, "PostgreSQL", "MariaDB", "remove wake"]);
}

#[test]
fn check_listens_once_for_each_route_with_wake() {
    // A route whose wake reaches the database, and one whose wake.url names a closed port
    let world = World::new("outbound");
    let table = TempTable::create(&Db::Postgres, "out_chk_wake", "id INTEGER PRIMARY KEY");
    let query = after_id("id", &table.name);
    let closed = format!("postgres://root@127.0.0.1:{}/test", common::free_port());
    let routes = [
        to_topic("listens", &query, &unique("chk")).set("wake", json!({ "listen": "chk_wake" })),
        to_topic("deaf", &query, &unique("chk"))
            .set("wake", json!({ "listen": "chk_wake", "url": closed })),
    ];

    // check passes the first and fails the second, saying that it cannot LISTEN and why
    let ran = check(&config(&world, &Db::Postgres.connection_string(), &routes));
    ran.code(1).route_is("outbound listens", "ok", &[]);
    ran.fails(
        "outbound deaf",
        &["wake: cannot LISTEN on chk_wake", "refused"],
    );
}
