//! `mqdb dlq list | show | replay | purge` against dead letters that a real `mqdb run` made.
//!
//! The bridge is stopped before the CLI works on its dead letters, except in the purge test,
//! where it keeps running beside it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};
use common::{
    AmqpMessage, Bridge, Db, Header, LIVENESS, Rabbit, Route, Subscriber, TempTable, Workdir,
    World, dlq_list, letter_id as id, path_str, run_bounded, terminate_ok, unique,
    wait_dead_letters, wait_for, wait_for_count, wait_until,
};
use serde_json::{Value as Json, json};

/// Long enough for the store's millisecond timestamps to move on (a clock-granularity guard,
/// not a speed assumption).
const TICK: Duration = Duration::from_millis(20);

const ID_V: &[(&str, &str)] = &[("id", "payload.id"), ("v", "payload.v")];

type Letters = BTreeMap<i64, Json>;
type Messages = Vec<(String, Vec<u8>)>;

fn world() -> World {
    World::new("dlq-replay")
}

/// The bridge's persistent session subscribed to every route's filter, so that the broker
/// queues what is published before the bridge first starts.
fn sessions(world: &World, filters: &[&str]) {
    let filters: Vec<(&str, u8)> = filters.iter().map(|f| (*f, 1)).collect();
    Subscriber::connect_with(world.broker.port, &world.client_id, false, &filters).disconnect();
}

/// Each of `payloads` on `topic`.
fn on<P: AsRef<str>>(topic: &str, payloads: impl IntoIterator<Item = P>) -> Messages {
    let message = |p: P| (topic.to_owned(), p.as_ref().as_bytes().to_vec());
    payloads.into_iter().map(message).collect()
}

/// Runs the bridge until each table has its row count and `n` dead letters are stored,
/// then stops it; returns the dead letters.
fn run_until(config: &Path, db: &Db, tables: &[(&str, i64)], n: usize) -> Letters {
    let mut bridge = Bridge::start(config);
    for (table, rows) in tables {
        wait_for_count(
            &mut bridge,
            db,
            &format!("SELECT COUNT(*) FROM {table}"),
            *rows,
        );
    }
    let letters = by_id(wait_dead_letters(&mut bridge, config, n));
    terminate_ok(&mut bridge);
    letters
}

/// A config on `work` with the outbound route `out` that publishes each row of `query` to
/// `exchange` on broker `rabbit` at `url` with routing key `key`.
fn rabbit_out(
    work: &Workdir,
    url: &str,
    db: &Db,
    query: &str,
    exchange: &str,
    key: &str,
) -> PathBuf {
    let route = Route::outbound("out", query)
        .lines(&["track: id", "start: 0", "interval: 100ms", "broker: rabbit"])
        .set("exchange", exchange)
        .set("routing_key", key);
    work.bare_config()
        .broker("rabbit", url, Json::Null)
        .database("d", &db.connection_string())
        .outbound(route)
        .write()
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
        let last = self.stdout.lines().rev().find(|l| !l.trim().is_empty());
        last.unwrap_or("").trim()
    }
}

impl std::fmt::Display for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, out, err) = (self.code, &self.stdout, &self.stderr);
        write!(f, "exit {code:?}\n--- stdout\n{out}--- stderr\n{err}")
    }
}

/// `mqdb -c CONFIG dlq ARGS…` with stdin closed (not a terminal), killed and failed if it
/// runs past [`LIVENESS`].
fn dlq(config: &Path, args: &[&str]) -> Cli {
    let mut all = vec!["-c", path_str(config), "dlq"];
    all.extend_from_slice(args);
    let dir = config.parent().expect("config dir");
    let (status, stdout, stderr) = run_bounded(&all, dir, LIVENESS);
    Cli {
        code: status.code(),
        stdout,
        stderr,
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
    let all = [&["replay"][..], args].concat();
    let cli = dlq_expect(config, &all, code);
    assert_eq!(cli.summary(), summary, "mqdb dlq {all:?}:\n{cli}");
    cli
}

fn by_id(letters: Vec<Json>) -> Letters {
    letters.into_iter().map(|l| (id(&l), l)).collect()
}

/// Every dead letter by id (`dlq list --json`).
fn letters(config: &Path) -> Letters {
    by_id(dlq_list(config))
}

/// The ids `dlq list --json ARGS…` prints, sorted.
fn listed_ids(config: &Path, args: &[&str]) -> Vec<i64> {
    let cli = dlq_expect(config, &[&["list", "--json"][..], args].concat(), 0);
    let parse = |l: &str| -> Json {
        serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object: {l}: {e}\n{cli}"))
    };
    let lines = cli.stdout.lines().filter(|l| !l.trim().is_empty());
    sorted(lines.map(|l| id(&parse(l))).collect())
}

/// The one dead letter whose payload is `payload`.
fn with_payload<'a>(letters: &'a Letters, payload: &str) -> &'a Json {
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

/// The rows of `sql`, each value trimmed.
fn rows(db: &Db, sql: &str) -> Vec<Vec<Option<String>>> {
    let trim = |r: Vec<Option<String>>| r.into_iter().map(|v| v.map(|t| t.trim().to_owned()));
    db.query(sql)
        .into_iter()
        .map(|r| trim(r).collect())
        .collect()
}

/// Expected rows, every value set.
fn texts(rows: &[&[&str]]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|r| r.iter().map(|v| s(v)).collect())
        .collect()
}

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

/// A JSON string field holding an RFC 3339 time.
fn json_instant(letter: &Json, field: &str) -> DateTime<Utc> {
    let text = letter[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not text: {letter:#}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
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
fn assert_received_at(stored: Option<&str>, letter: &Json) {
    let want = json_instant(&letter["headers"], "received_at");
    let got = db_instant(stored.expect("received is set"));
    let diff = (got - want).num_microseconds().unwrap_or(i64::MAX).abs();
    assert!(
        diff <= 1,
        "stored {got} is not the message's received_at {want}: {letter:#}"
    );
}

/// Asserts a failed-again entry: one more attempt, a later last_failed_at, the new error
/// kind and an error, every other field (first_failed_at, payload, …) as before.
fn assert_failed_again(before: &Json, after: &Json, kind: &str) {
    let ctx = format!("before {before:#}, after {after:#}");
    let attempts = before["attempts"].as_i64().map(|a| a + 1);
    assert_eq!(
        after["attempts"].as_i64(),
        attempts,
        "one more attempt: {ctx}"
    );
    let moved = json_instant(after, "last_failed_at") > json_instant(before, "last_failed_at");
    assert!(moved, "last_failed_at moved on: {ctx}");
    assert_eq!(after["error_kind"], kind, "{after:#}");
    assert!(
        !after["error"].as_str().unwrap_or("").trim().is_empty(),
        "{after:#}"
    );
    let changed = [
        "attempts",
        "last_failed_at",
        "error",
        "error_kind",
        "sqlstate",
    ];
    let (Json::Object(b), Json::Object(a)) = (before, after) else {
        panic!("not objects: {ctx}");
    };
    for (k, v) in b.iter().filter(|(k, _)| !changed.contains(&k.as_str())) {
        assert_eq!(a.get(k), Some(v), "{k} changed: {ctx}");
    }
}

/// Asserts that exactly the `touched` entries failed again with their kind and the others
/// are unchanged.
fn assert_touched(before: &Letters, after: &Letters, touched: &[i64], what: &str) {
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (id, now) in after {
        let was = &before[id];
        if touched.contains(id) {
            assert_failed_again(was, now, was["error_kind"].as_str().expect("kind"));
        } else {
            assert_eq!(now, was, "{what} touched {id}");
        }
    }
}

/// PostgreSQL: a TIMESTAMPTZ column as UTC text.
fn pg_utc(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
}

// Rejected rows, replayed after the table is fixed

#[test]
fn rejected_rows_fail_again_then_land_with_their_metadata_once_the_table_is_fixed_postgres() {
    // Given a NOT NULL column without a default, a route mapping the payload, a topic level,
    // the topic and the receive time, and a second route into a table with a CHECK
    let db = Db::Postgres;
    let world = world();
    let readings = TempTable::create(
        &db,
        "rr_read",
        "id INTEGER PRIMARY KEY, v INTEGER NOT NULL, site TEXT, topic TEXT, received TIMESTAMPTZ",
    );
    let check = "id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)";
    let others = TempTable::create(&db, "rr_other", check);
    let (root, root2) = (unique("rr"), unique("rr_other"));
    let config = world
        .config(&db)
        .inbound(
            Route::inbound("readings", &format!("{root}/{{site}}"), &readings.name)
                .columns(&[
                    ("id", "payload.id"),
                    ("v", "payload.v"),
                    ("site", "topic.site"),
                    ("topic", "meta.topic"),
                    ("received", "meta.received_at"),
                ])
                .set("batch", json!({ "max_rows": 100, "max_delay": "50ms" })),
        )
        .inbound(Route::inbound("others", &root2, &others.name).columns(ID_V))
        .write();
    sessions(&world, &[&format!("{root}/+"), &root2]);

    // When good messages and messages without `v` are published and the bridge runs
    let good = (1..=5).map(|i| format!(r#"{{"id":{i},"v":{}}}"#, i * 10));
    let mut messages = on(&format!("{root}/north"), good);
    let bad = [
        ("north", "101", r#"{"id":101}"#),
        ("south", "102", r#"{"id":102,"note":"no v"}"#),
        ("east", "103", r#"{"id":103}"#),
    ];
    for (site, _, payload) in bad {
        messages.extend(on(&format!("{root}/{site}"), [payload]));
    }
    messages.extend(on(&root2, [r#"{"id":1,"v":-1}"#]));
    world.publisher().publish_all_confirmed(messages, 1);
    let first = run_until(&config, &db, &[(&readings.name, 5)], 4);
    let stopped_at = Utc::now();
    for letter in first.values() {
        assert_eq!(letter["error_kind"], "rejected", "{letter:#}");
        assert_eq!(letter["attempts"], 1, "{letter:#}");
    }

    // When every entry is replayed before the table is fixed
    std::thread::sleep(TICK);
    let summary = "replayed 0 of 4, failed 4 (rejected: 4)";
    replay(&config, &["--all"], 1, summary);

    // Then every entry is kept with a second attempt, a new last_failed_at and the error
    let second = letters(&config);
    assert_touched(
        &first,
        &second,
        &sorted(first.keys().copied().collect()),
        "--all",
    );
    for after in second.values() {
        let state = if after["route"] == "readings" {
            "23502"
        } else {
            "23514"
        };
        assert_eq!(after["sqlstate"], state, "{after:#}");
    }
    assert_eq!(readings.count(), 5, "nothing was inserted");

    // When the column gets a default and the route's entries are replayed
    let t = &readings.name;
    db.exec(&format!("ALTER TABLE {t} ALTER COLUMN v SET DEFAULT -1"));
    replay(&config, &["--route", "readings"], 0, "replayed 3 of 3");

    // Then the rows are in the table with the default and the original message's topic,
    // topic level and receive time
    let received = pg_utc("received");
    let sql = format!("SELECT id, v, site, topic, {received} FROM {t} WHERE id > 100 ORDER BY id");
    let got = rows(&db, &sql);
    assert_eq!(got.len(), 3, "{got:?}");
    for (row, (site, id, payload)) in got.iter().zip(bad) {
        let topic = format!("{root}/{site}");
        assert_eq!(row[..4], [s(id), s("-1"), s(site), s(&topic)], "{row:?}");
        assert_received_at(row[4].as_deref(), with_payload(&first, payload));
        assert!(
            db_instant(row[4].as_deref().expect("set")) < stopped_at,
            "{row:?}"
        );
    }
    assert_eq!(readings.count(), 8);
    // And only the other route's entry is left, untouched by the --route replay
    let left = letters(&config);
    assert_eq!(left.len(), 1, "{left:#?}");
    let other = left.values().next().expect("one");
    assert_eq!(other["route"], "others", "{other:#}");
    assert_eq!(other, &second[&id(other)]);
    assert_eq!(others.count(), 0);
}

#[test]
fn rejected_rows_replayed_with_on_conflict_ignore_never_duplicate_mariadb() {
    // Given a MariaDB table with a named CHECK and a route with on_conflict: ignore on `id`
    let db = Db::MariaDb;
    let world = world();
    let check = unique("v_nonneg");
    let columns = format!(
        "id INT PRIMARY KEY, v INT, topic VARCHAR(200), received DATETIME(6), \
         CONSTRAINT {check} CHECK (v >= 0)"
    );
    let table = TempTable::create(&db, "rr_maria", &columns);
    let t = &table.name;
    let root = unique("rrm");
    let route = Route::inbound("maria", &format!("{root}/+"), t)
        .columns(&[
            ID_V[0],
            ID_V[1],
            ("topic", "meta.topic"),
            ("received", "meta.received_at"),
        ])
        .lines(&["on_conflict: ignore", "key: [id]"]);
    let config = world.config(&db).inbound(route).write();
    world.persistent_session(&format!("{root}/+"));

    // When good messages and negative ones (id 101 twice) are published and the bridge runs
    let good = (1..=5).map(|i| format!(r#"{{"id":{i},"v":{i}}}"#));
    let mut messages = on(&format!("{root}/good"), good);
    let bad = [
        ("a", r#"{"id":101,"v":-5}"#),
        ("b", r#"{"id":101,"v":-6}"#),
        ("c", r#"{"id":102,"v":-7}"#),
    ];
    for (level, payload) in bad {
        messages.extend(on(&format!("{root}/{level}"), [payload]));
    }
    world.publisher().publish_all_confirmed(messages, 1);
    let first = run_until(&config, &db, &[(t, 5)], 3);
    for letter in first.values() {
        assert_eq!(letter["error_kind"], "rejected", "{letter:#}");
        assert_eq!(letter["sqlstate"], "23000", "{letter:#}");
    }
    let a = with_payload(&first, bad[0].1);

    // When the CHECK is dropped and the first id-101 entry alone is replayed
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT {check}"));
    replay(&config, &["--id", &id(a).to_string()], 0, "replayed 1 of 1");

    // Then that row is in, with its topic and receive time; the others still wait
    let row = rows(
        &db,
        &format!("SELECT v, topic, received FROM {t} WHERE id = 101"),
    );
    assert_eq!(row.len(), 1, "{row:?}");
    assert_eq!(row[0][..2], [s("-5"), s(&format!("{root}/a"))]);
    assert_received_at(row[0][2].as_deref(), a);
    assert_eq!(letters(&config).len(), 2);

    // When everything left is replayed, and then again
    replay(&config, &["--all"], 0, "replayed 2 of 2");
    replay(&config, &["--all"], 0, "replayed 0 of 0");

    // Then the second id-101 entry was ignored (no duplicate, the first kept), 102 is in,
    // and the queue is empty
    let (ta, tc) = (format!("{root}/a"), format!("{root}/c"));
    assert_eq!(
        rows(
            &db,
            &format!("SELECT id, v, topic FROM {t} WHERE id > 100 ORDER BY id")
        ),
        texts(&[&["101", "-5", &ta], &["102", "-7", &tc]])
    );
    assert_eq!(table.count(), 7);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

// A replay that fails again; --id and --error-kind

#[test]
fn a_conversion_that_is_still_wrong_counts_every_attempt_and_id_selects_exactly() {
    // Given two values that do not convert to INTEGER and a payload that is not JSON
    let db = Db::Postgres;
    let world = world();
    let table = TempTable::create(&db, "conv", "id INTEGER PRIMARY KEY, n INTEGER");
    let topic = unique("conv");
    let route = Route::inbound("conv", &topic, &table.name)
        .columns(&[("id", "payload.id"), ("n", "payload.n")]);
    let config = world.config(&db).inbound(route).write();
    world.persistent_session(&topic);
    let (px, py) = (r#"{"id":7,"n":"abc"}"#, r#"{"id":8,"n":"xyz"}"#);
    let messages = on(&topic, [r#"{"id":1,"n":1}"#, px, py, "not json"]);
    world.publisher().publish_all_confirmed(messages, 1);
    let mut last = run_until(&config, &db, &[(&table.name, 1)], 3);
    let [x, y, z] = [px, py, "not json"].map(|p| id(with_payload(&last, p)));
    assert_eq!(last[&x]["error_kind"], "convert");
    assert_eq!(last[&z]["error_kind"], "decode");

    // When one entry is replayed by id, several times, then with others in both --id forms
    // and by error kind, each step checked against the one before
    let [xs, ys, zs] = [x, y, z].map(|i| i.to_string());
    let xy = format!("{x},{y}");
    let steps: [(&[&str], &str, &[i64]); 6] = [
        (
            &["--id", &xs],
            "replayed 0 of 1, failed 1 (convert: 1)",
            &[x],
        ),
        (
            &["--id", &xs],
            "replayed 0 of 1, failed 1 (convert: 1)",
            &[x],
        ),
        (
            &["--id", &xy],
            "replayed 0 of 2, failed 2 (convert: 2)",
            &[x, y],
        ),
        (
            &["--id", &xs, "--id", &zs],
            "replayed 0 of 2, failed 2 (convert: 1, decode: 1)",
            &[x, z],
        ),
        (
            &["--all", "--error-kind", "decode"],
            "replayed 0 of 1, failed 1 (decode: 1)",
            &[z],
        ),
        (
            &["--route", "conv", "--error-kind", "convert"],
            "replayed 0 of 2, failed 2 (convert: 2)",
            &[x, y],
        ),
    ];
    for (args, summary, touched) in steps {
        std::thread::sleep(TICK);
        replay(&config, args, 1, summary);
        // Then exactly the selected entries have one more attempt and the same error kind;
        // the others are unchanged
        let now = letters(&config);
        assert_touched(&last, &now, touched, &format!("replay {args:?}"));
        last = now;
    }
    // And the attempts add up: x 6, y 3, z 3; the error still names the value
    let attempts = [x, y, z].map(|i| last[&i]["attempts"].as_i64().expect("attempts"));
    assert_eq!(attempts, [6, 3, 3], "{last:#?}");
    let error = last[&x]["error"].as_str().unwrap_or("");
    assert!(error.contains("abc"), "{:#}", last[&x]);

    // When nothing matches the selection
    replay(
        &config,
        &["--all", "--error-kind", "rejected"],
        0,
        "replayed 0 of 0",
    );
    // Or the selection is not exactly one of --all, --id, --route
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

#[test]
fn dry_run_changes_nothing_and_reports_database_rejections() {
    // Given three dead letters: a CHECK violation, a value that does not convert, and a
    // duplicate key
    let db = Db::Postgres;
    let world = world();
    let table = TempTable::create(
        &db,
        "dry",
        "id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)",
    );
    let t = &table.name;
    let topic = unique("dry");
    let config = world
        .config(&db)
        .inbound(Route::inbound("dry", &topic, t).columns(ID_V))
        .write();
    world.persistent_session(&topic);
    let check = r#"{"id":10,"v":-1}"#;
    let convert = r#"{"id":11,"v":"abc"}"#;
    let duplicate = r#"{"id":1,"v":7}"#;
    let good = [
        r#"{"id":1,"v":1}"#,
        r#"{"id":2,"v":2}"#,
        r#"{"id":3,"v":3}"#,
    ];
    let messages = on(&topic, good.into_iter().chain([check, convert, duplicate]));
    world.publisher().publish_all_confirmed(messages, 1);
    let before = run_until(&config, &db, &[(t, 3)], 3);
    assert_eq!(with_payload(&before, duplicate)["sqlstate"], "23505");
    let dup_id = id(with_payload(&before, duplicate)).to_string();

    // When the row the duplicate collided with is deleted (so it would go in now) and every
    // entry is replayed with --dry-run
    db.exec(&format!("DELETE FROM {t} WHERE id = 1"));
    let ids_sql = format!("SELECT id, v FROM {t} ORDER BY id");
    let table_before = rows(&db, &ids_sql);
    std::thread::sleep(TICK);
    let summary = "would replay 1 of 3, would fail 2 (convert: 1, rejected: 1)";
    let dry = replay(&config, &["--all", "--dry-run"], 1, summary);
    // (it says what would happen: nothing failed "again")
    let said = dry.stderr.contains("2 dead letters would fail") && !dry.stderr.contains("again");
    assert!(said, "{dry}");
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
    let summary = "replayed 1 of 3, failed 2 (convert: 1, rejected: 1)";
    replay(&config, &["--all"], 1, summary);
    let want = texts(&[&["1", "7"], &["2", "2"], &["3", "3"]]);
    assert_eq!(rows(&db, &ids_sql), want);
    let after = letters(&config);
    assert_eq!(after.len(), 2, "{after:#?}");
    for (payload, kind) in [(check, "rejected"), (convert, "convert")] {
        let now = with_payload(&after, payload);
        assert_failed_again(with_payload(&before, payload), now, kind);
    }
    assert_eq!(with_payload(&after, check)["sqlstate"], "23514");
}

// CSV records with a header

#[test]
fn csv_record_dead_letters_land_once_with_values_from_their_own_header() {
    // Given a CSV route with `header: true` and a CHECK that rejects large quantities, and
    // a second one (`whole`) mapping a header name that its messages lack
    let db = Db::Postgres;
    let world = world();
    let check = unique("qty_small");
    let columns = format!(
        "id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER, raw TEXT, \
         CONSTRAINT {check} CHECK (qty < 100)"
    );
    let table = TempTable::create(&db, "csvh", &columns);
    let t = &table.name;
    let whole_columns = "id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER DEFAULT 42";
    let whole_table = TempTable::create(&db, "csvw", whole_columns);
    let w = &whole_table.name;
    db.exec(&format!("INSERT INTO {w} VALUES (1, 'pre', 1)"));
    let (topic, whole_topic) = (unique("csvh"), unique("csvw"));
    let csv = |name: &str, topic: &str, table: &str, columns: &[(&str, &str)]| {
        let route = Route::inbound(name, topic, table).columns(columns);
        route.lines(&["format: csv", "csv: { header: true }"])
    };
    let (id_sku, qty) = (
        [("id", "payload.id"), ("sku", "payload.sku")],
        ("qty", "payload.qty"),
    );
    let items = csv(
        "items",
        &topic,
        t,
        &[id_sku[0], id_sku[1], qty, ("raw", "payload")],
    );
    let config = |whole_columns: &[(&str, &str)]| {
        let whole = csv("whole", &whole_topic, w, whole_columns);
        world
            .config(&db)
            .inbound(items.clone())
            .inbound(whole)
            .write()
    };
    let config_v1 = config(&[id_sku[0], id_sku[1], qty]);
    sessions(&world, &[&topic, &whole_topic]);

    // When two multi-line messages with differently ordered headers each carry a rejected
    // record in the middle, and two messages without `qty` in their header arrive for the
    // other route (the second with a key that is taken)
    let (w_ok, w_dup) = ("id,sku\n7,G\n8,H\n", "id,sku\n9,I\n1,J\n");
    let (one, two) = (
        "qty,id,sku\n5,1,A\n500,2,B\n7,3,C\n",
        "sku,qty,id\nD,8,4\nE,900,5\nF,9,6\n",
    );
    let mut messages = on(&topic, [one, two]);
    messages.extend(on(&whole_topic, [w_ok, w_dup]));
    world.publisher().publish_all_confirmed(messages, 1);
    let first = run_until(&config_v1, &db, &[(t, 4)], 4);
    for (payload, header) in [("500,2,B", "qty,id,sku"), ("E,900,5", "sku,qty,id")] {
        let l = with_payload(&first, payload);
        assert_eq!(l["headers"]["csv_header"], header, "{l:#}");
        assert_eq!(l["error_kind"], "rejected", "{l:#}");
        assert_eq!(l["headers"]["line"], 3, "{l:#}");
    }
    for p in [w_ok, w_dup] {
        let l = with_payload(&first, p);
        assert_eq!(l["error_kind"], "decode", "{l:#}");
        assert_eq!(l["route"], "whole", "{l:#}");
    }

    // When the CHECK is dropped and the route's entries are replayed (twice)
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT {check}"));
    replay(&config_v1, &["--route", "items"], 0, "replayed 2 of 2");
    replay(&config_v1, &["--route", "items"], 0, "replayed 0 of 0");

    // Then each record is one row, its values read through its own message's header, and
    // `payload` is the record's own line as for the records stored by `run`
    assert_eq!(
        rows(
            &db,
            &format!("SELECT id, sku, qty, raw FROM {t} ORDER BY id")
        ),
        texts(&[
            &["1", "A", "5", "5,1,A"],
            &["2", "B", "500", "500,2,B"],
            &["3", "C", "7", "7,3,C"],
            &["4", "D", "8", "D,8,4"],
            &["5", "E", "900", "E,900,5"],
            &["6", "F", "9", "F,9,6"],
        ])
    );

    // When the other route's mapping no longer asks for `qty` and its entries are replayed
    let config_v2 = config(&id_sku);
    std::thread::sleep(TICK);
    let summary = "replayed 1 of 2, failed 1 (rejected: 1)";
    replay(&config_v2, &["--route", "whole"], 1, summary);

    // Then the whole message without a conflict is in (every record, qty defaulted), the
    // one with a taken key is all or nothing: none of its records, the entry kept
    assert_eq!(
        rows(&db, &format!("SELECT id, sku, qty FROM {w} ORDER BY id")),
        texts(&[&["1", "pre", "1"], &["7", "G", "42"], &["8", "H", "42"]])
    );
    let left = letters(&config_v2);
    assert_eq!(left.len(), 1, "{left:#?}");
    let dup = with_payload(&left, w_dup);
    assert_failed_again(with_payload(&first, w_dup), dup, "rejected");
    assert_eq!(dup["sqlstate"], "23505", "{dup:#}");
}

// AMQP inbound, replayed without a broker

#[test]
fn amqp_dead_letters_replay_with_their_routing_key_and_headers_without_a_broker() {
    // Given an AMQP route (the bridge declares its queue and binds it to an exchange) mapping
    // the routing key, exchange, queue, redelivered flag, broker, two headers and the
    // receive time, into a table with a CHECK
    let db = Db::Postgres;
    let work = Workdir::new("dlq-replay");
    let mut rabbit = Rabbit::connect();
    let (queue, exchange) = (unique("mqdb_dlq_q"), unique("mqdb_dlq_x"));
    rabbit.adopt_queue(&queue);
    rabbit.adopt_exchange(&exchange);
    let check = unique("v_nonneg");
    let columns = format!(
        "id INTEGER PRIMARY KEY, v INTEGER, rk TEXT, ex TEXT, q TEXT, re BOOLEAN, br TEXT, \
         site TEXT, seq BIGINT, received TIMESTAMPTZ, CONSTRAINT {check} CHECK (v >= 0)"
    );
    let table = TempTable::create(&db, "amqp_rp", &columns);
    let t = &table.name;
    let route = Route::named("amqp_in")
        .set("broker", "r")
        .set("queue", queue.as_str())
        .set("database", "d")
        .set("table", t.as_str())
        .set(
            "bind",
            json!({ "exchange": exchange, "routing_key": "sensors.#" }),
        )
        .columns(&[
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
        ]);
    let config = |url: &str| {
        let config = work.bare_config().broker("r", url, Json::Null);
        config
            .database("d", &db.connection_string())
            .inbound(route.clone())
            .write()
    };
    let config_up = config(Rabbit::URL);
    let mut bridge = Bridge::start(&config_up);
    wait_for(&mut bridge, "the queue and its binding", || {
        let log = std::fs::read_to_string(config_up.with_extension("log")).unwrap_or_default();
        Ok(log.contains("consuming") && Rabbit::queue_info(&queue).is_some())
    });

    // When a good message and two negative ones (one through the exchange, one straight to
    // the queue through the default exchange) arrive, with headers
    let site = |s: &str| ("x-site", Header::Str(s.into()));
    rabbit.publish(
        &exchange,
        "sensors.ok.t",
        br#"{"id":1,"v":1}"#,
        &[site("ok")],
    );
    let north = [
        site("Zürich-1"),
        ("x-seq", Header::Int(9_007_199_254_740_993)),
    ];
    rabbit.publish(&exchange, "sensors.north.t", br#"{"id":2,"v":-1}"#, &north);
    let south = [site("south"), ("x-seq", Header::Int32(-7))];
    rabbit.publish("", &queue, br#"{"id":3,"v":-2}"#, &south);
    wait_for_count(&mut bridge, &db, &format!("SELECT COUNT(*) FROM {t}"), 1);
    let first = by_id(wait_dead_letters(&mut bridge, &config_up, 2));
    wait_for(&mut bridge, "the queue acknowledged empty", || {
        Ok(Rabbit::queue_info(&queue).is_some_and(|q| q.messages == 0))
    });
    terminate_ok(&mut bridge);

    // When the configuration points at a broker that is not there, the CHECK is dropped,
    // and the entries are replayed
    let config = config("amqp://guest:guest@127.0.0.1:1/%2f");
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT {check}"));
    replay(&config, &["--all"], 0, "replayed 2 of 2");

    // Then the rows carry the original routing key, exchange, queue, flag, broker, headers
    // and receive time
    let (received, rk) = (pg_utc("received"), "sensors.north.t");
    let got = rows(
        &db,
        &format!(
            "SELECT id, v, rk, ex, q, re::text, br, site, seq, {received} FROM {t} WHERE id > 1 ORDER BY id"
        ),
    );
    assert_eq!(
        got.iter().map(|r| r[..9].to_vec()).collect::<Vec<_>>(),
        texts(&[
            &[
                "2",
                "-1",
                rk,
                &exchange,
                &queue,
                "false",
                "r",
                "Zürich-1",
                "9007199254740993"
            ],
            &["3", "-2", &queue, "", &queue, "false", "r", "south", "-7"],
        ])
    );
    for (row, payload) in got.iter().zip([r#"{"id":2,"v":-1}"#, r#"{"id":3,"v":-2}"#]) {
        assert_received_at(row[9].as_deref(), with_payload(&first, payload));
    }
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

// Outbound: unroutable, then bound

#[test]
fn unroutable_outbound_dead_letters_fail_again_until_a_queue_is_bound_then_arrive() {
    // Given an exchange without any binding and a route publishing three rows to it
    let db = Db::Postgres;
    let work = Workdir::new("dlq-replay");
    let mut rabbit = Rabbit::connect();
    let (exchange, queue) = (unique("mqdb_dlq_out_x"), unique("mqdb_dlq_out_q"));
    rabbit.declare_exchange(&exchange, "topic");
    let table = TempTable::create(&db, "out_unr", "id INTEGER PRIMARY KEY, kind TEXT NOT NULL");
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} VALUES (1, 'a'), (2, 'b'), (3, 'a')"
    ));
    let query = format!("SELECT id, kind FROM {t} WHERE id > ? ORDER BY id");
    let config = rabbit_out(&work, Rabbit::URL, &db, &query, &exchange, "r.{kind}");
    let first = run_until(&config, &db, &[], 3);
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
    assert_touched(
        &first,
        &second,
        &sorted(first.keys().copied().collect()),
        "--all",
    );
    assert!(second.values().all(|l| l["attempts"] == 2), "{second:#?}");

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
    let mut received: Messages = got
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
    let mut expected: Messages = first
        .values()
        .map(|l| {
            let source = l["source"].as_str().expect("source");
            let key = source
                .strip_prefix(&format!("{exchange}/"))
                .unwrap_or_else(|| panic!("source {source:?} is not {exchange}/KEY"));
            let payload = l["payload"].as_str().expect("payload");
            (key.to_owned(), payload.as_bytes().to_vec())
        })
        .collect();
    expected.sort();
    assert_eq!(received, expected);
    let keys: Vec<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["r.a", "r.a", "r.b"]);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

// List filters and show

#[test]
fn list_filters_by_route_kind_and_time_and_show_prints_one_entry() {
    // Given two routes and dead letters of several kinds, made in two rounds
    let db = Db::Postgres;
    let world = world();
    let columns = "id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)";
    let ta = TempTable::create(&db, "lst_a", columns);
    let tb = TempTable::create(&db, "lst_b", columns);
    let (topic_a, topic_b) = (unique("lst_a"), unique("lst_b"));
    let config = world
        .config(&db)
        .inbound(Route::inbound("alpha", &topic_a, &ta.name).columns(ID_V))
        .inbound(Route::inbound("beta", &topic_b, &tb.name).columns(ID_V))
        .write();
    sessions(&world, &[&topic_a, &topic_b]);
    let publisher = world.publisher();
    let mut bridge = Bridge::start(&config);
    let (a_bad, b_bad) = (
        [
            "alpha not json",
            r#"{"id":1,"v":"abc"}"#,
            r#"{"id":2,"v":-1}"#,
        ],
        "beta not json",
    );
    let mut messages = on(&topic_a, a_bad);
    messages.extend(on(&topic_b, [b_bad]));
    publisher.publish_all_confirmed(messages, 1);
    let round1 = by_id(wait_dead_letters(&mut bridge, &config, 4));
    std::thread::sleep(TICK);
    let between = Utc::now();
    std::thread::sleep(TICK);
    let (a_late, b_late) = (r#"{"id":3,"v":-3}"#, r#"{"id":4,"v":"zz"}"#);
    let mut messages = on(&topic_a, [a_late]);
    messages.extend(on(&topic_b, [b_late]));
    publisher.publish_all_confirmed(messages, 1);
    let all = by_id(wait_dead_letters(&mut bridge, &config, 6));
    terminate_ok(&mut bridge);
    let [a_decode, a_convert, a_rejected1] = a_bad.map(|p| id(with_payload(&all, p)));
    let [b_decode, a_rejected2, b_convert] =
        [b_bad, a_late, b_late].map(|p| id(with_payload(&all, p)));
    let round2: Vec<i64> = all
        .keys()
        .filter(|i| !round1.contains_key(i))
        .copied()
        .collect();
    assert_eq!(round2, sorted(vec![a_rejected2, b_convert]));

    let between_z = between.to_rfc3339_opts(SecondsFormat::Millis, true);
    let between_plus2 = between
        .with_timezone(&FixedOffset::east_opt(2 * 3600).expect("offset"))
        .to_rfc3339_opts(SecondsFormat::Millis, false);
    let future =
        (Utc::now() + chrono::Duration::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let every: Vec<i64> = all.keys().copied().collect();
    let alpha = [a_decode, a_convert, a_rejected1, a_rejected2];
    let cases: [(&[&str], &[i64]); 14] = [
        (&[], &every),
        (&["--route", "alpha"], &alpha),
        (&["--route", "beta"], &[b_decode, b_convert]),
        (&["--error-kind", "decode"], &[a_decode, b_decode]),
        (&["--error-kind", "convert"], &[a_convert, b_convert]),
        (
            &["--route", "alpha", "--error-kind", "rejected"],
            &[a_rejected1, a_rejected2],
        ),
        (&["--route", "beta", "--error-kind", "rejected"], &[]),
        (&["--since", "1h"], &every),
        (&["--since", "7d"], &every),
        (&["--since", &between_z], &round2),
        (&["--since", &between_plus2], &round2),
        (
            &[
                "--since",
                &between_z,
                "--route",
                "alpha",
                "--error-kind",
                "rejected",
            ],
            &[a_rejected2],
        ),
        (&["--since", &between_z, "--error-kind", "decode"], &[]),
        (&["--since", &future], &[]),
    ];
    for (args, want) in cases {
        assert_eq!(
            listed_ids(&config, args),
            sorted(want.to_vec()),
            "dlq list --json {args:?}"
        );
    }
    // (a route that is neither configured nor stored is a usage error naming the routes)
    let unknown = dlq_expect(&config, &["list", "--json", "--route", "gamma"], 2);
    let named = unknown.stderr.contains("gamma") && unknown.stderr.contains("alpha, beta");
    assert!(named, "{unknown}");

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
        let first_word = line.split_whitespace().next();
        assert_eq!(first_word, Some(want.to_string().as_str()), "{table}");
        assert!(line.contains("beta"), "{table}");
    }
    let none = dlq_expect(&config, &["list", "--since", &future], 0);
    assert_eq!(none.stdout.trim(), "no dead letters match", "{none}");
    // And a time that is neither RFC 3339 nor a duration is a usage error
    dlq_expect(&config, &["list", "--since", "yesterday"], 2);

    // And show prints one entry with its payload and error; a missing id exits 1
    let shown = dlq_expect(&config, &["show", &b_convert.to_string()], 0);
    let error = all[&b_convert]["error"].as_str().expect("error");
    for part in [b_late, "beta", error] {
        assert!(shown.stdout.contains(part), "{shown}");
    }
    assert!(
        !shown.stdout.contains("not json"),
        "only that entry: {shown}"
    );
    let missing = 1 + all.keys().max().expect("ids");
    let absent = dlq_expect(&config, &["show", &missing.to_string()], 1);
    let said = absent
        .stderr
        .contains(&format!("no dead letter with id {missing}"));
    assert!(said, "{absent}");
    // And listing changed nothing
    assert_eq!(letters(&config), all);
}

// Purge

#[test]
fn purge_selects_by_id_route_and_time_and_needs_yes_without_a_terminal() {
    // Given dead letters on two routes, the bridge still running beside the CLI
    let world = world();
    let db = Db::Sqlite(world.path("target.db"));
    let ta = TempTable::create(&db, "pg_a", "id INTEGER PRIMARY KEY, v TEXT");
    let tb = TempTable::create(&db, "pg_b", "id INTEGER PRIMARY KEY, v TEXT");
    let (topic_a, topic_b) = (unique("purge_a"), unique("purge_b"));
    let config = world
        .config(&db)
        .inbound(Route::inbound("alpha", &topic_a, &ta.name))
        .inbound(Route::inbound("beta", &topic_b, &tb.name))
        .write();
    sessions(&world, &[&topic_a, &topic_b]);
    let publisher = world.publisher();
    let bad = |topic: &str, n: usize, tag: &str| -> Messages {
        on(topic, (1..=n).map(|i| format!("{tag} {i} not json")))
    };
    publisher.publish_all_confirmed([bad(&topic_a, 3, "a"), bad(&topic_b, 3, "b")].concat(), 1);
    let mut bridge = Bridge::start(&config);
    let all = by_id(wait_dead_letters(&mut bridge, &config, 6));
    let by = |p: &str| id(with_payload(&all, p));
    let [a1, a2, a3, b1, b2, b3] =
        ["a 1", "a 2", "a 3", "b 1", "b 2", "b 3"].map(|p| by(&format!("{p} not json")));
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
    let b12 = format!("{b1},{b2}");
    let steps: [(&[&str], u64, &[i64]); 4] = [
        (&["--id", &a1s, "--yes"], 1, &[a2, a3, b1, b2, b3]),
        (&["--id", &b12, "-y"], 2, &[a2, a3, b3]),
        (
            &["--route", "alpha", "--before", &future, "--yes"],
            2,
            &[b3],
        ),
        (&["--before", &future, "--yes"], 1, &[]),
    ];
    for (args, n, left) in steps {
        let cli = dlq_expect(&config, &[&["purge"][..], args].concat(), 0);
        // Then exactly those are gone
        assert_eq!(
            cli.stdout.trim(),
            format!("purged {n} dead letters"),
            "{cli}"
        );
        assert_eq!(ids(&config), sorted(left.to_vec()), "after purge {args:?}");
    }

    // When new dead letters arrive and everything is purged
    publisher.publish_all_confirmed(bad(&topic_a, 2, "c"), 1);
    wait_dead_letters(&mut bridge, &config, 2);
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

// A route that is gone

#[test]
fn dead_letters_of_a_route_no_longer_configured_are_kept_as_no_route() {
    // Given three inbound routes into SQLite, each with a duplicate-key dead letter
    let world = world();
    let db = Db::Sqlite(world.path("target.db"));
    let names = ["kept", "gone", "flipped"];
    let tables = ["nr_kept", "nr_gone", "nr_flip"]
        .map(|p| TempTable::create(&db, p, "id INTEGER PRIMARY KEY, v INTEGER"));
    let topics = names.map(|n| unique(&format!("nr_{n}")));
    let routes: Vec<Route> = (0..3)
        .map(|i| Route::inbound(names[i], &topics[i], &tables[i].name).columns(ID_V))
        .collect();
    let config = routes
        .iter()
        .fold(world.config(&db), |c, r| c.inbound(r.clone()))
        .write();
    sessions(&world, &topics.each_ref().map(String::as_str));
    let messages = topics
        .iter()
        .flat_map(|t| on(t, [r#"{"id":1,"v":1}"#, r#"{"id":1,"v":2}"#]));
    world
        .publisher()
        .publish_all_confirmed(messages.collect(), 1);
    let counts = tables.each_ref().map(|t| (t.name.as_str(), 1));
    let first = run_until(&config, &db, &counts, 3);
    let by_route = |route: &str| -> i64 {
        let found: Vec<i64> = first
            .values()
            .filter(|l| l["route"] == route)
            .map(id)
            .collect();
        assert_eq!(found.len(), 1, "{route}: {first:#?}");
        found[0]
    };
    let [kept, gone, flipped] = names.map(by_route);

    // When the conflicting rows are deleted (every entry could go in now), `gone` is removed
    // from the config and `flipped` becomes the name of an outbound route
    for table in &tables {
        db.exec(&format!("DELETE FROM {} WHERE id = 1", table.name));
    }
    let query = format!(
        "SELECT id, v FROM {} WHERE id > ? ORDER BY id",
        tables[2].name
    );
    let flipped_out = Route::outbound("flipped", &query).lines(&[
        "track: id",
        "start: 0",
        "broker: b",
        "topic: \"x/{id}\"",
    ]);
    let config = world
        .config(&db)
        .inbound(routes[0].clone())
        .outbound(flipped_out)
        .write();
    std::thread::sleep(TICK);
    replay(
        &config,
        &["--all"],
        1,
        "replayed 1 of 3, failed 2 (no_route: 2)",
    );

    // Then the configured route's entry is in its table, and the other two are kept with
    // kind no_route, naming their route
    let kept_rows = rows(&db, &format!("SELECT id, v FROM {}", tables[0].name));
    assert_eq!(kept_rows, texts(&[&["1", "2"]]));
    for table in &tables[1..] {
        assert_eq!(table.count(), 0, "{}", table.name);
    }
    let left = letters(&config);
    let left_ids: Vec<i64> = left.keys().copied().collect();
    assert_eq!(left_ids, sorted(vec![gone, flipped]), "{left:#?}");
    assert!(!left.contains_key(&kept));
    for (id, route) in [(gone, "gone"), (flipped, "flipped")] {
        let after = &left[&id];
        assert_failed_again(&first[&id], after, "no_route");
        assert!(after["sqlstate"].is_null(), "{after:#}");
        let named = after["error"].as_str().unwrap_or("").contains(route);
        assert!(named, "the error names the route: {after:#}");
    }
}

// On a terminal

/// `mqdb -c CONFIG dlq ARGS…` on a pseudo-terminal (util-linux `script`), with `input`
/// typed in: its exit code and everything it wrote (stdout and stderr share the terminal).
fn dlq_on_terminal(config: &Path, args: &[&str], input: &str) -> (Option<i32>, String) {
    use std::io::Write as _;
    use std::process::Stdio;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut cmd = vec![quote(path_str(&common::mqdb_bin())), "-c".into()];
    cmd.extend([quote(path_str(config)), "dlq".into()]);
    cmd.extend(args.iter().map(|a| quote(a)));
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd.join(" "), "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("MQDB_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script(1)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("type the answer");
    drop(stdin);
    let out = child.wait_with_output().expect("wait for script(1)");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn on_a_terminal_purge_asks_first_and_replay_shows_progress() {
    // Given three dead letters
    let world = world();
    let db = Db::Sqlite(world.path("target.db"));
    let table = TempTable::create(&db, "tty", "id INTEGER PRIMARY KEY, v TEXT");
    let topic = unique("tty");
    let config = world
        .config(&db)
        .inbound(Route::inbound("tty", &topic, &table.name))
        .write();
    world.persistent_session(&topic);
    let junk = on(&topic, ["junk 1", "junk 2", "junk 3"]);
    world.publisher().publish_all_confirmed(junk, 1);
    let first = run_until(&config, &db, &[], 3);

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

// Outages stop a replay without counting attempts

/// Asserts that a replay of `n` entries stopped with exit 1 and said it was an outage.
fn assert_stopped_by_outage(cli: &Cli, n: usize) {
    assert_eq!(cli.code, Some(1), "{cli}");
    let start = format!("replayed 0 of {n}");
    let summary = cli.summary();
    let said = summary.starts_with(&start) && summary.contains("; stopped by an outage");
    assert!(said, "{cli}");
}

#[test]
fn a_database_outage_stops_the_replay_and_counts_no_attempt() {
    // Given duplicate-key dead letters of a route whose database is reached through a proxy,
    // and the conflicting rows deleted afterwards (so every entry could go in now)
    let db = Db::Postgres;
    let world = world();
    let proxy = common::TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 5432)));
    let table = TempTable::create(&db, "outage", "id INTEGER PRIMARY KEY, v INTEGER");
    let topic = unique("outage");
    let route = Route::inbound("outage", &topic, &table.name).columns(ID_V);
    let config = world
        .config_cs(&db.connection_string_via(proxy.port))
        .inbound(route)
        .write();
    world.persistent_session(&topic);
    let payloads = (1..=3).flat_map(|id| [1, 2].map(|v| format!(r#"{{"id":{id},"v":{v}}}"#)));
    let messages = on(&topic, payloads);
    world.publisher().publish_all_confirmed(messages, 1);
    let first = run_until(&config, &db, &[(&table.name, 3)], 3);
    db.exec(&format!("DELETE FROM {}", table.name));

    // When the database is unreachable during a replay
    proxy.set_down(true);
    let cli = dlq(&config, &["replay", "--all"]);

    // Then the replay stops with exit 1, says so, and every entry is as it was
    assert_stopped_by_outage(&cli, 3);
    assert_eq!(letters(&config), first);
    // And a dry run is stopped the same way
    let cli = dlq(&config, &["replay", "--all", "--dry-run"]);
    assert_eq!(cli.code, Some(1), "{cli}");
    assert!(cli.summary().contains("; stopped by an outage"), "{cli}");
    assert_eq!(letters(&config), first);

    // When the database is back
    proxy.set_down(false);
    replay(&config, &["--all"], 0, "replayed 3 of 3");
    let sql = format!("SELECT id, v FROM {} ORDER BY id", table.name);
    assert_eq!(
        rows(&db, &sql),
        texts(&[&["1", "2"], &["2", "2"], &["3", "2"]])
    );
}

#[test]
fn a_broker_outage_stops_an_outbound_replay_and_counts_no_attempt() {
    // Given unroutable outbound dead letters of a route whose broker is reached through a
    // proxy, and a queue bound afterwards (so every entry could be delivered now)
    let db = Db::Postgres;
    let work = Workdir::new("dlq-replay");
    let mut rabbit = Rabbit::connect();
    let proxy = common::TcpProxy::start(Rabbit::addr());
    let (exchange, queue) = (unique("mqdb_dlq_outage_x"), unique("mqdb_dlq_outage_q"));
    rabbit.declare_exchange(&exchange, "topic");
    let table = TempTable::create(&db, "out_outage", "id INTEGER PRIMARY KEY");
    db.exec(&format!("INSERT INTO {} VALUES (1), (2)", table.name));
    let query = format!("SELECT id FROM {} WHERE id > ? ORDER BY id", table.name);
    let url = Rabbit::url_via(proxy.port);
    let config = rabbit_out(&work, &url, &db, &query, &exchange, "k.{id}");
    let first = run_until(&config, &db, &[], 2);
    rabbit.declare_bound_queue(&queue, &exchange, "k.#");

    // When the broker is unreachable during a replay
    proxy.set_down(true);
    let cli = dlq(&config, &["replay", "--all"]);

    // Then the replay stops with exit 1, says so, and every entry is as it was
    assert_stopped_by_outage(&cli, 2);
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
