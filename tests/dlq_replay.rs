//! `mqdb dlq list | show | replay | purge` against dead letters that a real `mqdb run` made,
//! with the real PostgreSQL, MariaDB, SQLite (ODBC), Mosquitto and RabbitMQ:
//!
//! 1. Rows the database rejected (NOT NULL on PostgreSQL, CHECK on MariaDB with
//!    `on_conflict: ignore`) fail again before the table is fixed and land afterwards, with
//!    the original message's metadata; `--route` selects one route.
//! 2. A conversion that is still wrong fails again on every replay and counts each attempt;
//!    `--id` (repeated and comma-separated) and `--error-kind` select exactly their entries.
//! 3. `--dry-run` changes nothing and still reports database rejections.
//! 4. CSV record dead letters (`header: true`) land with values from their own header; whole
//!    CSV messages land all or nothing once the mapping is fixed.
//! 5. AMQP inbound dead letters land with their routing key, exchange, queue and headers,
//!    with no broker reachable.
//! 6. Outbound `unroutable` dead letters fail again until a queue is bound, then arrive
//!    (and a dry run publishes nothing).
//! 7. `dlq list` filters (`--route`, `--error-kind`, `--since`) and `dlq show`.
//! 8. `dlq purge` selections, `--before`, and the `--yes` rule without a terminal.
//! 9. A route that is no longer configured: `no_route` (beside a route that replays into
//!    SQLite).
//! 10. On a terminal: purge asks first, replay shows progress.
//! 11. A database or broker outage stops a replay without counting attempts.
//!
//! Every test has its own temp dir (config, state store, log), unique table, topic, queue,
//! exchange and client-id names, a private Mosquitto where MQTT is involved, and drops what
//! it created. The bridge is stopped before the CLI works on its dead letters (except in the
//! purge test, where it keeps running beside it). Waits are liveness deadlines, never speed
//! assertions; the few short sleeps only make sure the millisecond timestamps of the store
//! move on between two steps.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};
use common::{
    AmqpMessage, Bridge, Db, Header, LIVENESS, Mosquitto, Publisher, Rabbit, Route, Subscriber,
    TempTable, Workdir, dlq_list, path_str, run_mqdb, unique, wait_for, wait_until,
};
use common::{terminate_ok, try_scalar};
use serde_json::{Value as Json, json};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Long enough for the store's millisecond timestamps to move on (a clock-granularity guard,
/// not a speed assumption).
const TICK: Duration = Duration::from_millis(20);

/// One test's private world: a temp dir for the config, the state store and the bridge log,
/// and the bridge's (stable, unique) MQTT client id.
struct World {
    work: Workdir,
    client_id: String,
}

impl World {
    fn new() -> World {
        World {
            work: Workdir::new("dlq-replay"),
            client_id: unique("mqdb_dlq"),
        }
    }

    /// A SQLite database file in this world's temp dir.
    fn sqlite(&self) -> Db {
        Db::Sqlite(self.work.path("target.db"))
    }

    /// Writes (or rewrites) `mqdb.yaml`: the `brokers` (name, url; MQTT ones get this
    /// world's client id), database `d` and the given `inbound` and `outbound` routes.
    fn config(
        &self,
        brokers: &[(&str, &str)],
        connection_string: &str,
        inbound: &[Route],
        outbound: &[Route],
    ) -> PathBuf {
        let mut config = self.work.bare_config();
        for (name, url) in brokers {
            let client = url
                .starts_with("mqtt")
                .then(|| json!({ "client_id": self.client_id }));
            config = config.broker(name, url, client.unwrap_or(Json::Null));
        }
        config = config.database("d", connection_string);
        for route in inbound {
            config = config.inbound(route.clone());
        }
        for route in outbound {
            config = config.outbound(route.clone());
        }
        config.write()
    }

    /// Creates the bridge's persistent MQTT session on `broker` subscribed to `filters` at
    /// QoS 1, then disconnects: the broker queues every matching message for the bridge.
    fn persistent_session(&self, broker: &Mosquitto, filters: &[&str]) {
        let filters: Vec<(&str, u8)> = filters.iter().map(|f| (*f, 1)).collect();
        Subscriber::connect_with(broker.port, &self.client_id, false, &filters).disconnect();
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yq(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Where an inbound route reads from: an MQTT topic on broker `m`, or an AMQP queue on
/// broker `r`.
enum Src<'a> {
    Topic(&'a str),
    Queue(&'a str),
}

/// One `inbound:` list item into `table` of database `d`, with `columns` (column, source)
/// and `extra` settings written as `key: value` lines.
fn inbound(
    name: &str,
    from: Src<'_>,
    table: &str,
    columns: &[(&str, &str)],
    extra: &[&str],
) -> Route {
    let route = match from {
        Src::Topic(topic) => Route::named(name)
            .set("broker", "m")
            .set("topic", topic)
            .set("qos", 1),
        Src::Queue(queue) => Route::named(name).set("broker", "r").set("queue", queue),
    };
    route
        .set("database", "d")
        .set("table", table)
        .lines(extra)
        .columns(columns)
}

/// One `outbound:` list item named `name` on database `d` polling `query`, plus settings
/// written as `key: value` `lines`.
fn outbound(name: &str, query: &str, lines: &[&str]) -> Route {
    Route::outbound(name, query).lines(lines)
}

/// What one `mqdb dlq …` run printed.
struct Cli {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Cli {
    /// The last non-empty line of stdout (the replay summary).
    fn summary(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
    }
}

impl std::fmt::Display for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `mqdb -c CONFIG dlq ARGS…` with stdin closed (not a terminal).
fn dlq(config: &Path, args: &[&str]) -> Cli {
    let mut all = vec!["-c", path_str(config), "dlq"];
    all.extend_from_slice(args);
    let out = run_mqdb(&all);
    Cli {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like [`dlq`], asserting the exit code.
fn dlq_expect(config: &Path, args: &[&str], code: i32) -> Cli {
    let cli = dlq(config, args);
    assert_eq!(cli.code, Some(code), "mqdb dlq {args:?}:\n{cli}");
    cli
}

/// `mqdb dlq replay ARGS…`, asserting the exit code and the summary line.
fn replay(config: &Path, args: &[&str], code: i32, summary: &str) -> Cli {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    let cli = dlq_expect(config, &all, code);
    assert_eq!(cli.summary(), summary, "mqdb dlq {all:?}:\n{cli}");
    cli
}

/// Every dead letter by id (`dlq list --json`).
fn letters(config: &Path) -> BTreeMap<i64, Json> {
    dlq_list(config).into_iter().map(|l| (id(&l), l)).collect()
}

fn id(letter: &Json) -> i64 {
    letter["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer id: {letter:#}"))
}

/// The ids `dlq list --json ARGS…` prints, in order.
fn listed_ids(config: &Path, args: &[&str]) -> Vec<i64> {
    let mut all = vec!["list", "--json"];
    all.extend_from_slice(args);
    let cli = dlq_expect(config, &all, 0);
    cli.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Json = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON object: {l}: {e}\n{cli}"));
            id(&v)
        })
        .collect()
}

/// The one dead letter whose payload is `payload`.
fn letter_with_payload<'a>(letters: &'a BTreeMap<i64, Json>, payload: &str) -> &'a Json {
    let found: Vec<&Json> = letters
        .values()
        .filter(|l| l["payload"] == payload)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one dead letter with {payload:?}: {letters:#?}"
    );
    found[0]
}

/// Waits until exactly `n` dead letters are stored (more fails at once).
fn wait_letters(bridge: &mut Bridge, config: &Path, n: usize) -> BTreeMap<i64, Json> {
    wait_for(bridge, &format!("{n} dead letters"), || {
        let now = dlq_list(config).len();
        if now > n {
            return Err(format!("{now} dead letters, expected {n}"));
        }
        Ok(now == n)
    });
    letters(config)
}

/// Waits until `table` holds exactly `n` rows (more fails at once).
fn wait_rows(bridge: &mut Bridge, db: &Db, table: &str, n: i64) {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    wait_for(
        bridge,
        &format!("{n} rows in {table}"),
        || match try_scalar(db, &sql) {
            Some(now) if now > n => Err(format!("{now} rows, expected {n}")),
            Some(now) => Ok(now == n),
            None => Ok(false),
        },
    );
}

/// The rows of `sql`, each value trimmed.
fn rows(db: &Db, sql: &str) -> Vec<Vec<Option<String>>> {
    db.query(sql)
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| v.map(|t| t.trim().to_owned()))
                .collect()
        })
        .collect()
}

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

/// An RFC 3339 text as an instant.
fn rfc3339(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// A JSON string field holding an RFC 3339 time.
fn json_instant(letter: &Json, field: &str) -> DateTime<Utc> {
    rfc3339(
        letter[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is not text: {letter:#}")),
    )
}

/// A timestamp read back as UTC text (`YYYY-MM-DD HH:MM:SS[.ffffff]`).
fn db_instant(text: &str) -> DateTime<Utc> {
    let t = text.trim().replace('T', " ");
    NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("{text:?} is not a timestamp: {e}"))
        .and_utc()
}

/// Asserts that a stored timestamp is the dead letter's `received_at` (to the microsecond
/// the databases keep).
fn assert_received_at(stored: &str, letter: &Json) {
    let want = json_instant(&letter["headers"], "received_at");
    let got = db_instant(stored);
    let diff = (got - want).num_microseconds().unwrap_or(i64::MAX).abs();
    assert!(
        diff <= 1,
        "stored {got} is not the message's received_at {want}: {letter:#}"
    );
}

/// Asserts that every field of `after` except those named in `changed` equals `before`.
fn assert_same_except(before: &Json, after: &Json, changed: &[&str]) {
    let (Json::Object(b), Json::Object(a)) = (before, after) else {
        panic!("not objects: {before} / {after}");
    };
    for (k, v) in b {
        if !changed.contains(&k.as_str()) {
            assert_eq!(
                a.get(k),
                Some(v),
                "{k} changed: before {before:#}, after {after:#}"
            );
        }
    }
}

/// Asserts a failed-again entry: one more attempt, a later last_failed_at, the same
/// first_failed_at and payload, the new error kind.
fn assert_failed_again(before: &Json, after: &Json, kind: &str) {
    assert_eq!(
        after["attempts"].as_i64(),
        before["attempts"].as_i64().map(|a| a + 1),
        "one more attempt: before {before:#}, after {after:#}"
    );
    assert!(
        json_instant(after, "last_failed_at") > json_instant(before, "last_failed_at"),
        "last_failed_at moved on: before {before:#}, after {after:#}"
    );
    assert_eq!(after["error_kind"], kind, "{after:#}");
    assert!(
        !after["error"].as_str().unwrap_or("").trim().is_empty(),
        "{after:#}"
    );
    assert_same_except(
        before,
        after,
        &[
            "attempts",
            "last_failed_at",
            "error",
            "error_kind",
            "sqlstate",
        ],
    );
}

/// PostgreSQL: a TIMESTAMPTZ column as UTC text.
fn pg_utc(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
}

// ---------------------------------------------------------------------------------------
// 1. Rejected rows, replayed after the table is fixed
// ---------------------------------------------------------------------------------------

#[test]
fn rejected_rows_fail_again_then_land_with_their_metadata_once_the_table_is_fixed_postgres() {
    // Given a NOT NULL column without a default, a route mapping the payload, a topic level,
    // the topic and the receive time, and a second route into a table with a CHECK
    let db = Db::Postgres;
    let world = World::new();
    let broker = Mosquitto::start();
    let readings = TempTable::create(
        &db,
        "rr_read",
        "id INTEGER PRIMARY KEY, v INTEGER NOT NULL, site TEXT, topic TEXT, received TIMESTAMPTZ",
    );
    let others = TempTable::create(
        &db,
        "rr_other",
        "id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)",
    );
    let root = unique("rr");
    let root2 = unique("rr_other");
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &[
            inbound(
                "readings",
                Src::Topic(&format!("{root}/{{site}}")),
                &readings.name,
                &[
                    ("id", "payload.id"),
                    ("v", "payload.v"),
                    ("site", "topic.site"),
                    ("topic", "meta.topic"),
                    ("received", "meta.received_at"),
                ],
                &["batch: { max_rows: 100, max_delay: 50ms }"],
            ),
            inbound(
                "others",
                Src::Topic(&root2),
                &others.name,
                &[("id", "payload.id"), ("v", "payload.v")],
                &[],
            ),
        ],
        &[],
    );
    world.persistent_session(&broker, &[&format!("{root}/+"), &root2]);

    // When good messages and messages without `v` are published and the bridge runs
    let mut messages: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|i| {
            (
                format!("{root}/north"),
                format!(r#"{{"id":{i},"v":{}}}"#, i * 10).into_bytes(),
            )
        })
        .collect();
    let bad = [
        ("north", "101", r#"{"id":101}"#),
        ("south", "102", r#"{"id":102,"note":"no v"}"#),
        ("east", "103", r#"{"id":103}"#),
    ];
    for (site, _, payload) in bad {
        messages.push((format!("{root}/{site}"), payload.as_bytes().to_vec()));
    }
    messages.push((root2.clone(), br#"{"id":1,"v":-1}"#.to_vec()));
    Publisher::connect(broker.port).publish_all_confirmed(messages, 1);
    let mut bridge = Bridge::start(&config);
    wait_rows(&mut bridge, &db, &readings.name, 5);
    let first = wait_letters(&mut bridge, &config, 4);
    terminate_ok(&mut bridge);
    let stopped_at = Utc::now();
    for letter in first.values() {
        assert_eq!(letter["error_kind"], "rejected", "{letter:#}");
        assert_eq!(letter["attempts"], 1, "{letter:#}");
    }

    // When every entry is replayed before the table is fixed
    std::thread::sleep(TICK);
    replay(
        &config,
        &["--all"],
        1,
        "replayed 0 of 4, failed 4 (rejected: 4)",
    );

    // Then every entry is kept with a second attempt, a new last_failed_at and the error
    let second = letters(&config);
    assert_eq!(
        second.keys().collect::<Vec<_>>(),
        first.keys().collect::<Vec<_>>()
    );
    for (id, after) in &second {
        let before = &first[id];
        assert_failed_again(before, after, "rejected");
        let state = if before["route"] == "readings" {
            "23502"
        } else {
            "23514"
        };
        assert_eq!(after["sqlstate"], state, "{after:#}");
    }
    assert_eq!(readings.count(), 5, "nothing was inserted");

    // When the column gets a default and the route's entries are replayed
    db.exec(&format!(
        "ALTER TABLE {} ALTER COLUMN v SET DEFAULT -1",
        readings.name
    ));
    replay(&config, &["--route", "readings"], 0, "replayed 3 of 3");

    // Then the rows are in the table with the default and the original message's topic,
    // topic level and receive time
    let got = rows(
        &db,
        &format!(
            "SELECT id, v, site, topic, {} FROM {} WHERE id > 100 ORDER BY id",
            pg_utc("received"),
            readings.name
        ),
    );
    assert_eq!(got.len(), 3, "{got:?}");
    for (row, (site, id, payload)) in got.iter().zip(bad) {
        let letter = letter_with_payload(&first, payload);
        assert_eq!(
            row[..4],
            [s(id), s("-1"), s(site), s(&format!("{root}/{site}"))],
            "{row:?}"
        );
        let received = row[4].as_deref().expect("received is set");
        assert_received_at(received, letter);
        assert!(db_instant(received) < stopped_at, "{row:?}");
    }
    assert_eq!(readings.count(), 8);
    // And only the other route's entry is left, untouched by the --route replay
    let left = letters(&config);
    assert_eq!(left.len(), 1, "{left:#?}");
    let other = left.values().next().expect("one");
    assert_eq!(other["route"], "others", "{other:#}");
    let before = &second[&id(other)];
    assert_eq!(other, before);
    assert_eq!(others.count(), 0);
}

#[test]
fn rejected_rows_replayed_with_on_conflict_ignore_never_duplicate_mariadb() {
    // Given a MariaDB table with a named CHECK and a route with on_conflict: ignore on `id`
    let db = Db::MariaDb;
    let world = World::new();
    let broker = Mosquitto::start();
    let check = unique("v_nonneg");
    let table = TempTable::create(
        &db,
        "rr_maria",
        &format!(
            "id INT PRIMARY KEY, v INT, topic VARCHAR(200), received DATETIME(6), \
             CONSTRAINT {check} CHECK (v >= 0)"
        ),
    );
    let t = &table.name;
    let root = unique("rrm");
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &[inbound(
            "maria",
            Src::Topic(&format!("{root}/+")),
            t,
            &[
                ("id", "payload.id"),
                ("v", "payload.v"),
                ("topic", "meta.topic"),
                ("received", "meta.received_at"),
            ],
            &["on_conflict: ignore", "key: [id]"],
        )],
        &[],
    );
    world.persistent_session(&broker, &[&format!("{root}/+")]);

    // When good messages and negative ones (id 101 twice) are published and the bridge runs
    let mut messages: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|i| {
            (
                format!("{root}/good"),
                format!(r#"{{"id":{i},"v":{i}}}"#).into_bytes(),
            )
        })
        .collect();
    let bad = [
        ("a", r#"{"id":101,"v":-5}"#),
        ("b", r#"{"id":101,"v":-6}"#),
        ("c", r#"{"id":102,"v":-7}"#),
    ];
    for (level, payload) in bad {
        messages.push((format!("{root}/{level}"), payload.as_bytes().to_vec()));
    }
    Publisher::connect(broker.port).publish_all_confirmed(messages, 1);
    let mut bridge = Bridge::start(&config);
    wait_rows(&mut bridge, &db, t, 5);
    let first = wait_letters(&mut bridge, &config, 3);
    terminate_ok(&mut bridge);
    for letter in first.values() {
        assert_eq!(letter["error_kind"], "rejected", "{letter:#}");
        assert_eq!(letter["sqlstate"], "23000", "{letter:#}");
    }
    let a = letter_with_payload(&first, bad[0].1).clone();

    // When the CHECK is dropped and the first id-101 entry alone is replayed
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT {check}"));
    let a_id = id(&a).to_string();
    replay(&config, &["--id", &a_id], 0, "replayed 1 of 1");

    // Then that row is in, with its topic and receive time; the others still wait
    let row = rows(
        &db,
        &format!("SELECT v, topic, received FROM {t} WHERE id = 101"),
    );
    assert_eq!(row.len(), 1, "{row:?}");
    assert_eq!(row[0][..2], [s("-5"), s(&format!("{root}/a"))]);
    assert_received_at(row[0][2].as_deref().expect("received"), &a);
    assert_eq!(letters(&config).len(), 2);

    // When everything left is replayed, and then again
    replay(&config, &["--all"], 0, "replayed 2 of 2");
    replay(&config, &["--all"], 0, "replayed 0 of 0");

    // Then the second id-101 entry was ignored (no duplicate, the first kept), 102 is in,
    // and the queue is empty
    assert_eq!(
        rows(
            &db,
            &format!("SELECT id, v, topic FROM {t} WHERE id > 100 ORDER BY id")
        ),
        vec![
            vec![s("101"), s("-5"), s(&format!("{root}/a"))],
            vec![s("102"), s("-7"), s(&format!("{root}/c"))],
        ]
    );
    assert_eq!(table.count(), 7);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

// ---------------------------------------------------------------------------------------
// 2. A replay that fails again; --id and --error-kind
// ---------------------------------------------------------------------------------------

#[test]
fn a_conversion_that_is_still_wrong_counts_every_attempt_and_id_selects_exactly() {
    // Given two values that do not convert to INTEGER and a payload that is not JSON
    let db = Db::Postgres;
    let world = World::new();
    let broker = Mosquitto::start();
    let table = TempTable::create(&db, "conv", "id INTEGER PRIMARY KEY, n INTEGER");
    let topic = unique("conv");
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &[inbound(
            "conv",
            Src::Topic(&topic),
            &table.name,
            &[("id", "payload.id"), ("n", "payload.n")],
            &[],
        )],
        &[],
    );
    world.persistent_session(&broker, &[&topic]);
    Publisher::connect(broker.port).publish_all_confirmed(
        [
            r#"{"id":1,"n":1}"#,
            r#"{"id":7,"n":"abc"}"#,
            r#"{"id":8,"n":"xyz"}"#,
            "not json",
        ]
        .iter()
        .map(|p| (topic.clone(), p.as_bytes().to_vec()))
        .collect(),
        1,
    );
    let mut bridge = Bridge::start(&config);
    wait_rows(&mut bridge, &db, &table.name, 1);
    let mut last = wait_letters(&mut bridge, &config, 3);
    terminate_ok(&mut bridge);
    let x = id(letter_with_payload(&last, r#"{"id":7,"n":"abc"}"#));
    let y = id(letter_with_payload(&last, r#"{"id":8,"n":"xyz"}"#));
    let z = id(letter_with_payload(&last, "not json"));
    assert_eq!(last[&x]["error_kind"], "convert");
    assert_eq!(last[&z]["error_kind"], "decode");

    // When one entry is replayed by id, several times, then with others in both --id forms
    // and by error kind, each step checked against the one before
    let steps: Vec<(Vec<String>, &str, Vec<i64>)> = vec![
        (
            vec!["--id".into(), x.to_string()],
            "replayed 0 of 1, failed 1 (convert: 1)",
            vec![x],
        ),
        (
            vec!["--id".into(), x.to_string()],
            "replayed 0 of 1, failed 1 (convert: 1)",
            vec![x],
        ),
        (
            vec!["--id".into(), format!("{x},{y}")],
            "replayed 0 of 2, failed 2 (convert: 2)",
            vec![x, y],
        ),
        (
            vec!["--id".into(), x.to_string(), "--id".into(), z.to_string()],
            "replayed 0 of 2, failed 2 (convert: 1, decode: 1)",
            vec![x, z],
        ),
        (
            vec!["--all".into(), "--error-kind".into(), "decode".into()],
            "replayed 0 of 1, failed 1 (decode: 1)",
            vec![z],
        ),
        (
            vec![
                "--route".into(),
                "conv".into(),
                "--error-kind".into(),
                "convert".into(),
            ],
            "replayed 0 of 2, failed 2 (convert: 2)",
            vec![x, y],
        ),
    ];
    for (args, summary, touched) in steps {
        std::thread::sleep(TICK);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        replay(&config, &args, 1, summary);
        // Then exactly the selected entries have one more attempt and the same error kind;
        // the others are unchanged
        let now = letters(&config);
        assert_eq!(
            now.keys().collect::<Vec<_>>(),
            last.keys().collect::<Vec<_>>()
        );
        for (id, after) in &now {
            let before = &last[id];
            if touched.contains(id) {
                let kind = before["error_kind"].as_str().expect("kind");
                assert_failed_again(before, after, kind);
            } else {
                assert_eq!(after, before, "replay {args:?} touched {id}");
            }
        }
        last = now;
    }
    // And the attempts add up: x 6, y 3, z 3; the error still names the value
    let attempts: Vec<i64> = [x, y, z]
        .iter()
        .map(|i| last[i]["attempts"].as_i64().expect("attempts"))
        .collect();
    assert_eq!(attempts, [6, 3, 3], "{last:#?}");
    assert!(
        last[&x]["error"].as_str().unwrap_or("").contains("abc"),
        "{:#}",
        last[&x]
    );

    // When nothing matches the selection
    replay(
        &config,
        &["--all", "--error-kind", "rejected"],
        0,
        "replayed 0 of 0",
    );
    // Or the selection is not exactly one of --all, --id, --route
    let (xs, ys) = (x.to_string(), y.to_string());
    for args in [
        &["replay"][..],
        &["replay", "--error-kind", "convert"],
        &["replay", "--all", "--route", "conv"],
        &["replay", "--all", "--id", &xs],
        &["replay", "--route", "conv", "--id", &ys],
    ] {
        dlq_expect(&config, args, 2);
    }
    // Then nothing changed
    assert_eq!(letters(&config), last);
    assert_eq!(table.count(), 1);
}

// ---------------------------------------------------------------------------------------
// 3. --dry-run
// ---------------------------------------------------------------------------------------

#[test]
fn dry_run_changes_nothing_and_reports_database_rejections() {
    // Given three dead letters: a CHECK violation, a value that does not convert, and a
    // duplicate key
    let db = Db::Postgres;
    let world = World::new();
    let broker = Mosquitto::start();
    let table = TempTable::create(
        &db,
        "dry",
        "id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)",
    );
    let t = &table.name;
    let topic = unique("dry");
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &[inbound(
            "dry",
            Src::Topic(&topic),
            t,
            &[("id", "payload.id"), ("v", "payload.v")],
            &[],
        )],
        &[],
    );
    world.persistent_session(&broker, &[&topic]);
    let check = r#"{"id":10,"v":-1}"#;
    let convert = r#"{"id":11,"v":"abc"}"#;
    let duplicate = r#"{"id":1,"v":7}"#;
    Publisher::connect(broker.port).publish_all_confirmed(
        [
            r#"{"id":1,"v":1}"#,
            r#"{"id":2,"v":2}"#,
            r#"{"id":3,"v":3}"#,
            check,
            convert,
            duplicate,
        ]
        .iter()
        .map(|p| (topic.clone(), p.as_bytes().to_vec()))
        .collect(),
        1,
    );
    let mut bridge = Bridge::start(&config);
    wait_rows(&mut bridge, &db, t, 3);
    let before = wait_letters(&mut bridge, &config, 3);
    terminate_ok(&mut bridge);
    assert_eq!(letter_with_payload(&before, duplicate)["sqlstate"], "23505");
    let dup_id = id(letter_with_payload(&before, duplicate)).to_string();

    // When the row the duplicate collided with is deleted (so it would go in now) and every
    // entry is replayed with --dry-run
    db.exec(&format!("DELETE FROM {t} WHERE id = 1"));
    let ids_sql = format!("SELECT id, v FROM {t} ORDER BY id");
    let table_before = rows(&db, &ids_sql);
    std::thread::sleep(TICK);
    let dry = replay(
        &config,
        &["--all", "--dry-run"],
        1,
        "would replay 1 of 3, would fail 2 (convert: 1, rejected: 1)",
    );
    // (it says what would happen: nothing failed "again")
    assert!(
        dry.stderr.contains("2 dead letters would fail") && !dry.stderr.contains("again"),
        "{dry}"
    );
    // And the insertable one alone
    replay(
        &config,
        &["--id", &dup_id, "--dry-run"],
        0,
        "would replay 1 of 1",
    );

    // Then the table and the entries (attempts, times, errors) are exactly as before: the
    // rejection was found by the database, and the insert that worked was rolled back
    assert_eq!(rows(&db, &ids_sql), table_before);
    assert_eq!(letters(&config), before);

    // And a real replay does what the dry run said
    replay(
        &config,
        &["--all"],
        1,
        "replayed 1 of 3, failed 2 (convert: 1, rejected: 1)",
    );
    assert_eq!(
        rows(&db, &ids_sql),
        vec![
            vec![s("1"), s("7")],
            vec![s("2"), s("2")],
            vec![s("3"), s("3")]
        ]
    );
    let after = letters(&config);
    assert_eq!(after.len(), 2, "{after:#?}");
    assert_failed_again(
        letter_with_payload(&before, check),
        letter_with_payload(&after, check),
        "rejected",
    );
    assert_eq!(letter_with_payload(&after, check)["sqlstate"], "23514");
    assert_failed_again(
        letter_with_payload(&before, convert),
        letter_with_payload(&after, convert),
        "convert",
    );
}

// ---------------------------------------------------------------------------------------
// 4. CSV records with a header
// ---------------------------------------------------------------------------------------

#[test]
fn csv_record_dead_letters_land_once_with_values_from_their_own_header() {
    // Given a CSV route with `header: true` and a CHECK that rejects large quantities, and
    // a second one (`whole`) mapping a header name that its messages lack
    let db = Db::Postgres;
    let world = World::new();
    let broker = Mosquitto::start();
    let check = unique("qty_small");
    let table = TempTable::create(
        &db,
        "csvh",
        &format!(
            "id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER, raw TEXT, \
             CONSTRAINT {check} CHECK (qty < 100)"
        ),
    );
    let t = &table.name;
    let whole_table = TempTable::create(
        &db,
        "csvw",
        "id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER DEFAULT 42",
    );
    let w = &whole_table.name;
    db.exec(&format!("INSERT INTO {w} VALUES (1, 'pre', 1)"));
    let topic = unique("csvh");
    let whole_topic = unique("csvw");
    let items = inbound(
        "items",
        Src::Topic(&topic),
        t,
        &[
            ("id", "payload.id"),
            ("sku", "payload.sku"),
            ("qty", "payload.qty"),
            ("raw", "payload"),
        ],
        &["format: csv", "csv: { header: true }"],
    );
    let whole = |columns: &[(&str, &str)]| {
        inbound(
            "whole",
            Src::Topic(&whole_topic),
            w,
            columns,
            &["format: csv", "csv: { header: true }"],
        )
    };
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &[
            items.clone(),
            whole(&[
                ("id", "payload.id"),
                ("sku", "payload.sku"),
                ("qty", "payload.qty"),
            ]),
        ],
        &[],
    );
    world.persistent_session(&broker, &[&topic, &whole_topic]);

    // When two multi-line messages with differently ordered headers each carry a rejected
    // record in the middle, and two messages without `qty` in their header arrive for the
    // other route (the second with a key that is taken)
    let w_ok = "id,sku\n7,G\n8,H\n";
    let w_dup = "id,sku\n9,I\n1,J\n";
    Publisher::connect(broker.port).publish_all_confirmed(
        vec![
            (
                topic.clone(),
                b"qty,id,sku\n5,1,A\n500,2,B\n7,3,C\n".to_vec(),
            ),
            (
                topic.clone(),
                b"sku,qty,id\nD,8,4\nE,900,5\nF,9,6\n".to_vec(),
            ),
            (whole_topic.clone(), w_ok.as_bytes().to_vec()),
            (whole_topic.clone(), w_dup.as_bytes().to_vec()),
        ],
        1,
    );
    let mut bridge = Bridge::start(&config);
    wait_rows(&mut bridge, &db, t, 4);
    let first = wait_letters(&mut bridge, &config, 4);
    terminate_ok(&mut bridge);
    let b = letter_with_payload(&first, "500,2,B");
    let e = letter_with_payload(&first, "E,900,5");
    assert_eq!(b["headers"]["csv_header"], "qty,id,sku", "{b:#}");
    assert_eq!(e["headers"]["csv_header"], "sku,qty,id", "{e:#}");
    for l in [b, e] {
        assert_eq!(l["error_kind"], "rejected", "{l:#}");
        assert_eq!(l["headers"]["line"], 3, "{l:#}");
    }
    for p in [w_ok, w_dup] {
        let l = letter_with_payload(&first, p);
        assert_eq!(l["error_kind"], "decode", "{l:#}");
        assert_eq!(l["route"], "whole", "{l:#}");
    }

    // When the CHECK is dropped and the route's entries are replayed (twice)
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT {check}"));
    replay(&config, &["--route", "items"], 0, "replayed 2 of 2");
    replay(&config, &["--route", "items"], 0, "replayed 0 of 0");

    // Then each record is one row, its values read through its own message's header, and
    // `payload` is the record's own line as for the records stored by `run`
    assert_eq!(
        rows(
            &db,
            &format!("SELECT id, sku, qty, raw FROM {t} ORDER BY id")
        ),
        vec![
            vec![s("1"), s("A"), s("5"), s("5,1,A")],
            vec![s("2"), s("B"), s("500"), s("500,2,B")],
            vec![s("3"), s("C"), s("7"), s("7,3,C")],
            vec![s("4"), s("D"), s("8"), s("D,8,4")],
            vec![s("5"), s("E"), s("900"), s("E,900,5")],
            vec![s("6"), s("F"), s("9"), s("F,9,6")],
        ]
    );

    // When the other route's mapping no longer asks for `qty` and its entries are replayed
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &[
            items,
            whole(&[("id", "payload.id"), ("sku", "payload.sku")]),
        ],
        &[],
    );
    std::thread::sleep(TICK);
    replay(
        &config,
        &["--route", "whole"],
        1,
        "replayed 1 of 2, failed 1 (rejected: 1)",
    );

    // Then the whole message without a conflict is in (every record, qty defaulted), the
    // one with a taken key is all or nothing: none of its records, the entry kept
    assert_eq!(
        rows(&db, &format!("SELECT id, sku, qty FROM {w} ORDER BY id")),
        vec![
            vec![s("1"), s("pre"), s("1")],
            vec![s("7"), s("G"), s("42")],
            vec![s("8"), s("H"), s("42")],
        ]
    );
    let left = letters(&config);
    assert_eq!(left.len(), 1, "{left:#?}");
    let dup = letter_with_payload(&left, w_dup);
    assert_failed_again(letter_with_payload(&first, w_dup), dup, "rejected");
    assert_eq!(dup["sqlstate"], "23505", "{dup:#}");
}

// ---------------------------------------------------------------------------------------
// 5. AMQP inbound, replayed without a broker
// ---------------------------------------------------------------------------------------

#[test]
fn amqp_dead_letters_replay_with_their_routing_key_and_headers_without_a_broker() {
    // Given an AMQP route (the bridge declares its queue and binds it to an exchange) mapping
    // the routing key, exchange, queue, redelivered flag, broker, two headers and the
    // receive time, into a table with a CHECK
    let db = Db::Postgres;
    let world = World::new();
    let mut rabbit = Rabbit::connect();
    let queue = unique("mqdb_dlq_q");
    let exchange = unique("mqdb_dlq_x");
    rabbit.adopt_queue(&queue);
    rabbit.adopt_exchange(&exchange);
    let check = unique("v_nonneg");
    let table = TempTable::create(
        &db,
        "amqp_rp",
        &format!(
            "id INTEGER PRIMARY KEY, v INTEGER, rk TEXT, ex TEXT, q TEXT, re BOOLEAN, br TEXT, \
             site TEXT, seq BIGINT, received TIMESTAMPTZ, CONSTRAINT {check} CHECK (v >= 0)"
        ),
    );
    let t = &table.name;
    let route = |url: &str| {
        world.config(
            &[("r", url)],
            &db.connection_string(),
            &[inbound(
                "amqp_in",
                Src::Queue(&queue),
                t,
                &[
                    ("id", "payload.id"),
                    ("v", "payload.v"),
                    ("rk", "meta.routing_key"),
                    ("ex", "meta.exchange"),
                    ("q", "meta.queue"),
                    ("re", "meta.redelivered"),
                    ("br", "meta.broker"),
                    ("site", "header.x-site"),
                    ("seq", "header.x-seq"),
                    ("received", "meta.received_at"),
                ],
                &[&format!(
                    "bind: {{ exchange: {}, routing_key: \"sensors.#\" }}",
                    yq(&exchange)
                )],
            )],
            &[],
        )
    };
    let config = route(Rabbit::URL);
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "the queue and its binding", || {
        Ok(bridge_log_has(&config, "consuming") && Rabbit::queue_info(&queue).is_some())
    });

    // When a good message and two negative ones (one through the exchange, one straight to
    // the queue through the default exchange) arrive, with headers
    rabbit.publish(
        &exchange,
        "sensors.ok.t",
        br#"{"id":1,"v":1}"#,
        &[("x-site", Header::Str("ok".into()))],
    );
    rabbit.publish(
        &exchange,
        "sensors.north.t",
        br#"{"id":2,"v":-1}"#,
        &[
            ("x-site", Header::Str("Zürich-1".into())),
            ("x-seq", Header::Int(9_007_199_254_740_993)),
        ],
    );
    rabbit.publish(
        "",
        &queue,
        br#"{"id":3,"v":-2}"#,
        &[
            ("x-site", Header::Str("south".into())),
            ("x-seq", Header::Int32(-7)),
        ],
    );
    wait_rows(&mut bridge, &db, t, 1);
    let first = wait_letters(&mut bridge, &config, 2);
    wait_for(&mut bridge, "the queue acknowledged empty", || {
        Ok(Rabbit::queue_info(&queue).is_some_and(|q| q.messages == 0))
    });
    terminate_ok(&mut bridge);

    // When the configuration points at a broker that is not there, the CHECK is dropped,
    // and the entries are replayed
    let config = route("amqp://guest:guest@127.0.0.1:1/%2f");
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT {check}"));
    replay(&config, &["--all"], 0, "replayed 2 of 2");

    // Then the rows carry the original routing key, exchange, queue, flag, broker, headers
    // and receive time
    let got = rows(
        &db,
        &format!(
            "SELECT id, v, rk, ex, q, re::text, br, site, seq, {} FROM {t} WHERE id > 1 ORDER BY id",
            pg_utc("received")
        ),
    );
    assert_eq!(
        got.iter().map(|r| r[..9].to_vec()).collect::<Vec<_>>(),
        vec![
            vec![
                s("2"),
                s("-1"),
                s("sensors.north.t"),
                s(&exchange),
                s(&queue),
                s("false"),
                s("r"),
                s("Zürich-1"),
                s("9007199254740993"),
            ],
            vec![
                s("3"),
                s("-2"),
                s(&queue),
                s(""),
                s(&queue),
                s("false"),
                s("r"),
                s("south"),
                s("-7"),
            ],
        ]
    );
    assert_received_at(
        got[0][9].as_deref().expect("received"),
        letter_with_payload(&first, r#"{"id":2,"v":-1}"#),
    );
    assert_received_at(
        got[1][9].as_deref().expect("received"),
        letter_with_payload(&first, r#"{"id":3,"v":-2}"#),
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

/// Whether the bridge log next to `config` contains `needle`.
fn bridge_log_has(config: &Path, needle: &str) -> bool {
    std::fs::read_to_string(config.with_extension("log"))
        .unwrap_or_default()
        .contains(needle)
}

// ---------------------------------------------------------------------------------------
// 6. Outbound: unroutable, then bound
// ---------------------------------------------------------------------------------------

#[test]
fn unroutable_outbound_dead_letters_fail_again_until_a_queue_is_bound_then_arrive() {
    // Given an exchange without any binding and a route publishing three rows to it
    let db = Db::Postgres;
    let world = World::new();
    let mut rabbit = Rabbit::connect();
    let exchange = unique("mqdb_dlq_out_x");
    let queue = unique("mqdb_dlq_out_q");
    rabbit.declare_exchange(&exchange, "topic");
    let table = TempTable::create(&db, "out_unr", "id INTEGER PRIMARY KEY, kind TEXT NOT NULL");
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES (1, 'a'), (2, 'b'), (3, 'a')"
    ));
    let config = world.config(
        &[("rabbit", Rabbit::URL)],
        &db.connection_string(),
        &[],
        &[outbound(
            "out",
            &format!("SELECT id, kind FROM {t} WHERE id > ? ORDER BY id"),
            &[
                "track: id",
                "start: 0",
                "interval: 100ms",
                "broker: rabbit",
                &format!("exchange: {}", yq(&exchange)),
                "routing_key: \"r.{kind}\"",
            ],
        )],
    );
    let mut bridge = Bridge::start(&config);
    let first = wait_letters(&mut bridge, &config, 3);
    terminate_ok(&mut bridge);
    for l in first.values() {
        assert_eq!(l["error_kind"], "unroutable", "{l:#}");
        assert_eq!(l["direction"], "outbound", "{l:#}");
    }

    // When they are replayed while nothing is bound
    std::thread::sleep(TICK);
    replay(
        &config,
        &["--all"],
        1,
        "replayed 0 of 3, failed 3 (unroutable: 3)",
    );

    // Then they are kept, with a second attempt
    let second = letters(&config);
    assert_eq!(second.len(), 3, "{second:#?}");
    for (id, after) in &second {
        assert_failed_again(&first[id], after, "unroutable");
        assert_eq!(after["attempts"], 2, "{after:#}");
    }

    // When a queue is bound to the exchange and they are replayed with --dry-run
    rabbit.declare_bound_queue(&queue, &exchange, "r.#");
    replay(&config, &["--all", "--dry-run"], 0, "would replay 3 of 3");
    // Then nothing is published and the entries are unchanged
    std::thread::sleep(Duration::from_millis(300));
    let early = rabbit.take_all(&queue);
    assert!(early.is_empty(), "a dry run published {early:?}");
    assert_eq!(letters(&config), second);

    // When they are replayed for real
    replay(&config, &["--all"], 0, "replayed 3 of 3");

    // Then the queue receives exactly the original payloads, with their routing keys,
    // persistent, with their rows' keys, and the entries are gone
    let mut got: Vec<AmqpMessage> = Vec::new();
    wait_until("three messages in the queue", LIVENESS, || {
        got.extend(rabbit.take_all(&queue));
        got.len() >= 3
    });
    std::thread::sleep(Duration::from_millis(300));
    got.extend(rabbit.take_all(&queue));
    let mut received: Vec<(String, Vec<u8>)> = got
        .iter()
        .map(|m| {
            assert_eq!(m.exchange, exchange, "{m:?}");
            assert_eq!(m.delivery_mode, Some(2), "{m:?}");
            // With the key the route gives the row, so a consumer can tell a row it has
            assert_eq!(m.content_type.as_deref(), Some("application/json"), "{m:?}");
            let id: Json = serde_json::from_slice::<Json>(&m.payload).expect("JSON")["id"].clone();
            let key = mqdb::dedup::message_id("out", &[Some(id.to_string())], &m.payload);
            assert_eq!(m.message_id.as_deref(), Some(key.as_str()), "{m:?}");
            (m.routing_key.clone(), m.payload.clone())
        })
        .collect();
    received.sort();
    let mut expected: Vec<(String, Vec<u8>)> = first
        .values()
        .map(|l| {
            let source = l["source"].as_str().expect("source");
            let key = source
                .strip_prefix(&format!("{exchange}/"))
                .unwrap_or_else(|| panic!("source {source:?} is not {exchange}/KEY"));
            (
                key.to_owned(),
                l["payload"].as_str().expect("payload").as_bytes().to_vec(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(received, expected);
    let keys: Vec<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["r.a", "r.a", "r.b"]);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

// ---------------------------------------------------------------------------------------
// 7. List filters and show
// ---------------------------------------------------------------------------------------

#[test]
fn list_filters_by_route_kind_and_time_and_show_prints_one_entry() {
    // Given two routes and dead letters of several kinds, made in two rounds
    let db = Db::Postgres;
    let world = World::new();
    let broker = Mosquitto::start();
    let ta = TempTable::create(
        &db,
        "lst_a",
        "id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)",
    );
    let tb = TempTable::create(
        &db,
        "lst_b",
        "id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)",
    );
    let topic_a = unique("lst_a");
    let topic_b = unique("lst_b");
    let columns = [("id", "payload.id"), ("v", "payload.v")];
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &[
            inbound("alpha", Src::Topic(&topic_a), &ta.name, &columns, &[]),
            inbound("beta", Src::Topic(&topic_b), &tb.name, &columns, &[]),
        ],
        &[],
    );
    world.persistent_session(&broker, &[&topic_a, &topic_b]);
    let publisher = Publisher::connect(broker.port);
    let mut bridge = Bridge::start(&config);
    publisher.publish_all_confirmed(
        vec![
            (topic_a.clone(), b"alpha not json".to_vec()),
            (topic_a.clone(), br#"{"id":1,"v":"abc"}"#.to_vec()),
            (topic_a.clone(), br#"{"id":2,"v":-1}"#.to_vec()),
            (topic_b.clone(), b"beta not json".to_vec()),
        ],
        1,
    );
    let round1 = wait_letters(&mut bridge, &config, 4);
    std::thread::sleep(TICK);
    let between = Utc::now();
    std::thread::sleep(TICK);
    publisher.publish_all_confirmed(
        vec![
            (topic_a.clone(), br#"{"id":3,"v":-3}"#.to_vec()),
            (topic_b.clone(), br#"{"id":4,"v":"zz"}"#.to_vec()),
        ],
        1,
    );
    let all = wait_letters(&mut bridge, &config, 6);
    terminate_ok(&mut bridge);
    let by_payload = |p: &str| id(letter_with_payload(&all, p));
    let a_decode = by_payload("alpha not json");
    let a_convert = by_payload(r#"{"id":1,"v":"abc"}"#);
    let a_rejected1 = by_payload(r#"{"id":2,"v":-1}"#);
    let b_decode = by_payload("beta not json");
    let a_rejected2 = by_payload(r#"{"id":3,"v":-3}"#);
    let b_convert = by_payload(r#"{"id":4,"v":"zz"}"#);
    let round2 = {
        let mut v: Vec<i64> = all
            .keys()
            .filter(|i| !round1.contains_key(i))
            .copied()
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(round2, sorted(vec![a_rejected2, b_convert]));

    let between_z = between.to_rfc3339_opts(SecondsFormat::Millis, true);
    let between_plus2 = between
        .with_timezone(&FixedOffset::east_opt(2 * 3600).expect("offset"))
        .to_rfc3339_opts(SecondsFormat::Millis, false);
    let future =
        (Utc::now() + chrono::Duration::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let cases: Vec<(Vec<&str>, Vec<i64>)> = vec![
        (vec![], all.keys().copied().collect()),
        (
            vec!["--route", "alpha"],
            vec![a_decode, a_convert, a_rejected1, a_rejected2],
        ),
        (vec!["--route", "beta"], vec![b_decode, b_convert]),
        (vec!["--error-kind", "decode"], vec![a_decode, b_decode]),
        (vec!["--error-kind", "convert"], vec![a_convert, b_convert]),
        (
            vec!["--route", "alpha", "--error-kind", "rejected"],
            vec![a_rejected1, a_rejected2],
        ),
        (vec!["--route", "beta", "--error-kind", "rejected"], vec![]),
        (vec!["--since", "1h"], all.keys().copied().collect()),
        (vec!["--since", "7d"], all.keys().copied().collect()),
        (vec!["--since", &between_z], round2.clone()),
        (vec!["--since", &between_plus2], round2.clone()),
        (
            vec![
                "--since",
                &between_z,
                "--route",
                "alpha",
                "--error-kind",
                "rejected",
            ],
            vec![a_rejected2],
        ),
        (
            vec!["--since", &between_z, "--error-kind", "decode"],
            vec![],
        ),
        (vec!["--since", &future], vec![]),
    ];
    for (args, want) in cases {
        assert_eq!(
            sorted(listed_ids(&config, &args)),
            sorted(want),
            "dlq list --json {args:?}"
        );
    }
    // (a route that is neither configured nor stored is a usage error naming the routes)
    let unknown = dlq_expect(&config, &["list", "--json", "--route", "gamma"], 2);
    assert!(
        unknown.stderr.contains("gamma") && unknown.stderr.contains("alpha, beta"),
        "{unknown}"
    );

    // And the table form prints its header and one line per match, or says nothing matches
    let table = dlq_expect(&config, &["list", "--route", "beta"], 0);
    let header = table.stdout.lines().next().unwrap_or("");
    for column in ["ID", "ROUTE", "AGE", "ATTEMPTS", "KIND", "ERROR", "PAYLOAD"] {
        assert!(header.contains(column), "{table}");
    }
    let lines: Vec<&str> = table
        .stdout
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 2, "{table}");
    for (line, want) in lines.iter().zip(sorted(vec![b_decode, b_convert])) {
        assert_eq!(
            line.split_whitespace().next(),
            Some(want.to_string().as_str()),
            "{table}"
        );
        assert!(line.contains("beta"), "{table}");
    }
    let none = dlq_expect(&config, &["list", "--since", &future], 0);
    assert_eq!(none.stdout.trim(), "no dead letters match", "{none}");
    // And a time that is neither RFC 3339 nor a duration is a usage error
    dlq_expect(&config, &["list", "--since", "yesterday"], 2);

    // And show prints one entry with its payload and error; a missing id exits 1
    let shown = dlq_expect(&config, &["show", &b_convert.to_string()], 0);
    assert!(shown.stdout.contains(r#"{"id":4,"v":"zz"}"#), "{shown}");
    assert!(shown.stdout.contains("beta"), "{shown}");
    let error = all[&b_convert]["error"].as_str().expect("error");
    assert!(shown.stdout.contains(error), "{shown}");
    assert!(
        !shown.stdout.contains("not json"),
        "only that entry: {shown}"
    );
    let missing = 1 + all.keys().max().expect("ids");
    let absent = dlq_expect(&config, &["show", &missing.to_string()], 1);
    assert!(
        absent
            .stderr
            .contains(&format!("no dead letter with id {missing}")),
        "{absent}"
    );
    // And listing changed nothing
    assert_eq!(letters(&config), all);
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------------------------------
// 8. Purge
// ---------------------------------------------------------------------------------------

#[test]
fn purge_selects_by_id_route_and_time_and_needs_yes_without_a_terminal() {
    // Given dead letters on two routes, the bridge still running beside the CLI
    let world = World::new();
    let db = world.sqlite();
    let broker = Mosquitto::start();
    let ta = TempTable::create(&db, "pg_a", "id INTEGER PRIMARY KEY, v TEXT");
    let tb = TempTable::create(&db, "pg_b", "id INTEGER PRIMARY KEY, v TEXT");
    let topic_a = unique("purge_a");
    let topic_b = unique("purge_b");
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &[
            inbound("alpha", Src::Topic(&topic_a), &ta.name, &[], &[]),
            inbound("beta", Src::Topic(&topic_b), &tb.name, &[], &[]),
        ],
        &[],
    );
    world.persistent_session(&broker, &[&topic_a, &topic_b]);
    let publisher = Publisher::connect(broker.port);
    let bad = |topic: &str, n: usize, tag: &str| -> Vec<(String, Vec<u8>)> {
        (1..=n)
            .map(|i| (topic.to_owned(), format!("{tag} {i} not json").into_bytes()))
            .collect()
    };
    let mut first = bad(&topic_a, 3, "a");
    first.extend(bad(&topic_b, 3, "b"));
    publisher.publish_all_confirmed(first, 1);
    let mut bridge = Bridge::start(&config);
    let all = wait_letters(&mut bridge, &config, 6);
    let by = |p: &str| id(letter_with_payload(&all, p));
    let (a1, a2, a3) = (by("a 1 not json"), by("a 2 not json"), by("a 3 not json"));
    let (b1, b2, b3) = (by("b 1 not json"), by("b 2 not json"), by("b 3 not json"));
    let ids = |config: &Path| sorted(letters(config).keys().copied().collect());
    let past = "2000-01-01T00:00:00Z";
    let future =
        (Utc::now() + chrono::Duration::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true);

    // When the selection is not exactly one of --all, --id, --route (or --before alone)
    let (a1s, b1s) = (a1.to_string(), b1.to_string());
    for args in [
        &["purge", "--yes"][..],
        &["purge", "--all", "--route", "alpha", "--yes"],
        &["purge", "--id", &a1s, "--all", "-y"],
        &["purge", "--route", "alpha", "--id", &b1s, "--yes"],
    ] {
        dlq_expect(&config, args, 2);
    }
    // Or --yes is missing and stdin is not a terminal
    for args in [
        &["purge", "--route", "alpha"][..],
        &["purge", "--all"],
        &["purge", "--id", &a1s],
        &["purge", "--before", &future],
    ] {
        let cli = dlq_expect(&config, args, 2);
        assert!(cli.stderr.contains("--yes"), "{cli}");
    }
    // Then nothing is deleted
    assert_eq!(ids(&config), sorted(vec![a1, a2, a3, b1, b2, b3]));

    // When nothing matches: a time in the past, also narrowed by route; an id that is gone
    for args in [
        &["purge", "--before", past, "--yes"][..],
        &["purge", "--route", "alpha", "--before", past, "-y"],
        &["purge", "--before", "1h", "--yes"],
    ] {
        let cli = dlq_expect(&config, args, 0);
        assert_eq!(
            cli.stdout.trim(),
            "no dead letters match; nothing purged",
            "{cli}"
        );
    }
    let unknown = dlq_expect(&config, &["purge", "--route", "gamma", "--yes"], 2);
    assert!(unknown.stderr.contains("alpha, beta"), "{unknown}");
    assert_eq!(ids(&config), sorted(vec![a1, a2, a3, b1, b2, b3]));

    // When one id, then two ids, then a route before a future time are purged
    let steps: Vec<(Vec<String>, u64, Vec<i64>)> = vec![
        (
            vec!["--id".into(), a1.to_string(), "--yes".into()],
            1,
            vec![a2, a3, b1, b2, b3],
        ),
        (
            vec!["--id".into(), format!("{b1},{b2}"), "-y".into()],
            2,
            vec![a2, a3, b3],
        ),
        (
            vec![
                "--route".into(),
                "alpha".into(),
                "--before".into(),
                future.clone(),
                "--yes".into(),
            ],
            2,
            vec![b3],
        ),
        (
            vec!["--before".into(), future.clone(), "--yes".into()],
            1,
            vec![],
        ),
    ];
    for (args, n, left) in steps {
        let mut all_args = vec!["purge"];
        all_args.extend(args.iter().map(String::as_str));
        let cli = dlq_expect(&config, &all_args, 0);
        // Then exactly those are gone
        assert_eq!(
            cli.stdout.trim(),
            format!("purged {n} dead letters"),
            "{cli}"
        );
        assert_eq!(ids(&config), sorted(left), "after {all_args:?}");
    }

    // When new dead letters arrive and everything is purged
    publisher.publish_all_confirmed(bad(&topic_a, 2, "c"), 1);
    wait_letters(&mut bridge, &config, 2);
    dlq_expect(&config, &["purge", "--all"], 2);
    assert_eq!(letters(&config).len(), 2);
    let cli = dlq_expect(&config, &["purge", "--all", "--yes"], 0);
    assert_eq!(cli.stdout.trim(), "purged 2 dead letters", "{cli}");
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    let cli = dlq_expect(&config, &["purge", "--all", "--yes"], 0);
    assert_eq!(
        cli.stdout.trim(),
        "no dead letters match; nothing purged",
        "{cli}"
    );
    terminate_ok(&mut bridge);
    assert_eq!(ta.count() + tb.count(), 0);
}

// ---------------------------------------------------------------------------------------
// 9. A route that is gone
// ---------------------------------------------------------------------------------------

#[test]
fn dead_letters_of_a_route_no_longer_configured_are_kept_as_no_route() {
    // Given three inbound routes into SQLite, each with a duplicate-key dead letter
    let world = World::new();
    let db = world.sqlite();
    let broker = Mosquitto::start();
    let tables: Vec<TempTable> = ["nr_kept", "nr_gone", "nr_flip"]
        .iter()
        .map(|p| TempTable::create(&db, p, "id INTEGER PRIMARY KEY, v INTEGER"))
        .collect();
    let names = ["kept", "gone", "flipped"];
    let topics: Vec<String> = names.iter().map(|n| unique(&format!("nr_{n}"))).collect();
    let columns = [("id", "payload.id"), ("v", "payload.v")];
    let routes: Vec<Route> = (0..3)
        .map(|i| {
            inbound(
                names[i],
                Src::Topic(&topics[i]),
                &tables[i].name,
                &columns,
                &[],
            )
        })
        .collect();
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &routes,
        &[],
    );
    let filters: Vec<&str> = topics.iter().map(String::as_str).collect();
    world.persistent_session(&broker, &filters);
    let mut messages = Vec::new();
    for topic in &topics {
        messages.push((topic.clone(), br#"{"id":1,"v":1}"#.to_vec()));
        messages.push((topic.clone(), br#"{"id":1,"v":2}"#.to_vec()));
    }
    Publisher::connect(broker.port).publish_all_confirmed(messages, 1);
    let mut bridge = Bridge::start(&config);
    for table in &tables {
        wait_rows(&mut bridge, &db, &table.name, 1);
    }
    let first = wait_letters(&mut bridge, &config, 3);
    terminate_ok(&mut bridge);
    let by_route = |route: &str| -> i64 {
        let found: Vec<i64> = first
            .values()
            .filter(|l| l["route"] == route)
            .map(id)
            .collect();
        assert_eq!(found.len(), 1, "{route}: {first:#?}");
        found[0]
    };
    let (kept, gone, flipped) = (by_route("kept"), by_route("gone"), by_route("flipped"));

    // When the conflicting rows are deleted (every entry could go in now), `gone` is removed
    // from the config and `flipped` becomes the name of an outbound route
    for table in &tables {
        db.exec(&format!("DELETE FROM {} WHERE id = 1", table.name));
    }
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &routes[..1],
        &[outbound(
            "flipped",
            &format!(
                "SELECT id, v FROM {} WHERE id > ? ORDER BY id",
                tables[2].name
            ),
            &["track: id", "start: 0", "broker: m", "topic: \"x/{id}\""],
        )],
    );
    std::thread::sleep(TICK);
    replay(
        &config,
        &["--all"],
        1,
        "replayed 1 of 3, failed 2 (no_route: 2)",
    );

    // Then the configured route's entry is in its table, and the other two are kept with
    // kind no_route, naming their route
    assert_eq!(
        rows(&db, &format!("SELECT id, v FROM {}", tables[0].name)),
        vec![vec![s("1"), s("2")]]
    );
    for table in &tables[1..] {
        assert_eq!(table.count(), 0, "{}", table.name);
    }
    let left = letters(&config);
    assert_eq!(
        left.keys().copied().collect::<Vec<_>>(),
        sorted(vec![gone, flipped]),
        "{left:#?}"
    );
    assert!(!left.contains_key(&kept));
    for (id, route) in [(gone, "gone"), (flipped, "flipped")] {
        let after = &left[&id];
        assert_failed_again(&first[&id], after, "no_route");
        assert!(after["sqlstate"].is_null(), "{after:#}");
        assert!(
            after["error"].as_str().unwrap_or("").contains(route),
            "the error names the route: {after:#}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 10. On a terminal
// ---------------------------------------------------------------------------------------

/// `mqdb -c CONFIG dlq ARGS…` on a pseudo-terminal (util-linux `script`), with `input`
/// typed in: its exit code and everything it wrote (stdout and stderr share the terminal).
fn dlq_on_terminal(config: &Path, args: &[&str], input: &str) -> (Option<i32>, String) {
    use std::io::Write as _;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut cmd = vec![
        quote(path_str(&common::mqdb_bin())),
        "-c".into(),
        quote(path_str(config)),
        "dlq".into(),
    ];
    cmd.extend(args.iter().map(|a| quote(a)));
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd.join(" "), "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("MQDB_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run script(1)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("type the answer");
    let out = child.wait_with_output().expect("wait for script(1)");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn on_a_terminal_purge_asks_first_and_replay_shows_progress() {
    // Given three dead letters
    let world = World::new();
    let db = world.sqlite();
    let broker = Mosquitto::start();
    let table = TempTable::create(&db, "tty", "id INTEGER PRIMARY KEY, v TEXT");
    let topic = unique("tty");
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string(),
        &[inbound("tty", Src::Topic(&topic), &table.name, &[], &[])],
        &[],
    );
    world.persistent_session(&broker, &[&topic]);
    Publisher::connect(broker.port).publish_all_confirmed(
        (1..=3)
            .map(|i| (topic.clone(), format!("junk {i}").into_bytes()))
            .collect(),
        1,
    );
    let mut bridge = Bridge::start(&config);
    let first = wait_letters(&mut bridge, &config, 3);
    terminate_ok(&mut bridge);

    // When purge runs on a terminal without --yes and the answer is no
    let (code, out) = dlq_on_terminal(&config, &["purge", "--all"], "n\n");
    // Then it asked, purged nothing, and exits 0
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("purge 3 dead letters for good? [y/N]"),
        "{out}"
    );
    assert!(out.contains("nothing purged"), "{out}");
    assert_eq!(letters(&config), first);

    // When replay runs on a terminal
    let (code, out) = dlq_on_terminal(&config, &["replay", "--all"], "");
    // Then it shows its progress and the summary, and the entries failed again
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("3/3"), "progress: {out}");
    assert!(
        out.contains("replayed 0 of 3, failed 3 (decode: 3)"),
        "{out}"
    );
    let second = letters(&config);
    assert!(second.values().all(|l| l["attempts"] == 2), "{second:#?}");

    // When purge asks again and the answer is yes
    let (code, out) = dlq_on_terminal(&config, &["purge", "--route", "tty"], "y\n");
    // Then they are gone
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("purged 3 dead letters"), "{out}");
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

// ---------------------------------------------------------------------------------------
// 11. Outages stop a replay without counting attempts
// ---------------------------------------------------------------------------------------

/// Like [`dlq`], killing the command (and failing) if it runs past [`LIVENESS`].
fn dlq_within_liveness(config: &Path, args: &[&str]) -> Cli {
    let mut all = vec!["-c", path_str(config), "dlq"];
    all.extend_from_slice(args);
    let mut child = common::mqdb_command()
        .args(&all)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mqdb");
    let start = std::time::Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > LIVENESS {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "mqdb dlq {args:?} still running after {LIVENESS:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("wait");
    Cli {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_database_outage_stops_the_replay_and_counts_no_attempt() {
    // Given duplicate-key dead letters of a route whose database is reached through a proxy,
    // and the conflicting rows deleted afterwards (so every entry could go in now)
    let db = Db::Postgres;
    let world = World::new();
    let broker = Mosquitto::start();
    let proxy = common::TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 5432)));
    let table = TempTable::create(&db, "outage", "id INTEGER PRIMARY KEY, v INTEGER");
    let topic = unique("outage");
    let config = world.config(
        &[("m", &broker.url())],
        &db.connection_string_via(proxy.port),
        &[inbound(
            "outage",
            Src::Topic(&topic),
            &table.name,
            &[("id", "payload.id"), ("v", "payload.v")],
            &[],
        )],
        &[],
    );
    world.persistent_session(&broker, &[&topic]);
    let mut messages = Vec::new();
    for id in 1..=3 {
        messages.push((
            topic.clone(),
            format!(r#"{{"id":{id},"v":1}}"#).into_bytes(),
        ));
        messages.push((
            topic.clone(),
            format!(r#"{{"id":{id},"v":2}}"#).into_bytes(),
        ));
    }
    Publisher::connect(broker.port).publish_all_confirmed(messages, 1);
    let mut bridge = Bridge::start(&config);
    wait_rows(&mut bridge, &db, &table.name, 3);
    let first = wait_letters(&mut bridge, &config, 3);
    terminate_ok(&mut bridge);
    db.exec(&format!("DELETE FROM {}", table.name));

    // When the database is unreachable during a replay
    proxy.set_down(true);
    let cli = dlq_within_liveness(&config, &["replay", "--all"]);

    // Then the replay stops with exit 1, says so, and every entry is as it was
    assert_eq!(cli.code, Some(1), "{cli}");
    assert!(
        cli.summary().starts_with("replayed 0 of 3")
            && cli.summary().contains("; stopped by an outage"),
        "{cli}"
    );
    assert_eq!(letters(&config), first);
    // And a dry run is stopped the same way
    let cli = dlq_within_liveness(&config, &["replay", "--all", "--dry-run"]);
    assert_eq!(cli.code, Some(1), "{cli}");
    assert!(cli.summary().contains("; stopped by an outage"), "{cli}");
    assert_eq!(letters(&config), first);

    // When the database is back
    proxy.set_down(false);
    replay(&config, &["--all"], 0, "replayed 3 of 3");
    assert_eq!(
        rows(
            &db,
            &format!("SELECT id, v FROM {} ORDER BY id", table.name)
        ),
        vec![
            vec![s("1"), s("2")],
            vec![s("2"), s("2")],
            vec![s("3"), s("2")]
        ]
    );
}

#[test]
fn a_broker_outage_stops_an_outbound_replay_and_counts_no_attempt() {
    // Given unroutable outbound dead letters of a route whose broker is reached through a
    // proxy, and a queue bound afterwards (so every entry could be delivered now)
    let db = Db::Postgres;
    let world = World::new();
    let mut rabbit = Rabbit::connect();
    let proxy = common::TcpProxy::start(Rabbit::addr());
    let exchange = unique("mqdb_dlq_outage_x");
    let queue = unique("mqdb_dlq_outage_q");
    rabbit.declare_exchange(&exchange, "topic");
    let table = TempTable::create(&db, "out_outage", "id INTEGER PRIMARY KEY");
    db.exec(&format!("INSERT INTO {} VALUES (1), (2)", table.name));
    let config = world.config(
        &[("rabbit", &Rabbit::url_via(proxy.port))],
        &db.connection_string(),
        &[],
        &[outbound(
            "out",
            &format!("SELECT id FROM {} WHERE id > ? ORDER BY id", table.name),
            &[
                "track: id",
                "start: 0",
                "interval: 100ms",
                "broker: rabbit",
                &format!("exchange: {}", yq(&exchange)),
                "routing_key: \"k.{id}\"",
            ],
        )],
    );
    let mut bridge = Bridge::start(&config);
    let first = wait_letters(&mut bridge, &config, 2);
    terminate_ok(&mut bridge);
    rabbit.declare_bound_queue(&queue, &exchange, "k.#");

    // When the broker is unreachable during a replay
    proxy.set_down(true);
    let cli = dlq_within_liveness(&config, &["replay", "--all"]);

    // Then the replay stops with exit 1, says so, and every entry is as it was
    assert_eq!(cli.code, Some(1), "{cli}");
    assert!(
        cli.summary().starts_with("replayed 0 of 2")
            && cli.summary().contains("; stopped by an outage"),
        "{cli}"
    );
    assert_eq!(letters(&config), first);

    // When the broker is back
    proxy.set_down(false);
    replay(&config, &["--all"], 0, "replayed 2 of 2");
    let mut got: Vec<AmqpMessage> = Vec::new();
    wait_until("two messages in the queue", LIVENESS, || {
        got.extend(rabbit.take_all(&queue));
        got.len() >= 2
    });
    let mut keys: Vec<String> = got.iter().map(|m| m.routing_key.clone()).collect();
    keys.sort();
    assert_eq!(keys, ["k.1", "k.2"]);
}
