//! `mqdb dlq list | show | replay | purge` against dead letters that a real `mqdb run` made.
//!
//! The bridge is stopped before the CLI works on its dead letters, except in the purge test,
//! where it keeps running beside it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use common::{
    AmqpMessage, Bridge, Db, Header, LIVENESS, Rabbit, Ran, Route, Subscriber, TempTable, Workdir,
    World, amqp_route, dlq_list, letter_id as id, mqdb_bounded, pairs, parse_ts, path_str,
    terminate_ok, unique, wait_consuming, wait_dead_letters, wait_for_count, wait_queue_drained,
    wait_until,
};
use serde_json::{Value as Json, json};

/// Long enough for the store's millisecond timestamps to move on (a clock-granularity guard,
/// not a speed assumption).
const TICK: Duration = Duration::from_millis(20);

const ID_V: &[(&str, &str)] = &[("id", "payload.id"), ("v", "payload.v")];

type Letters = BTreeMap<i64, Json>;
type Messages = Vec<(String, Vec<u8>)>;
type Shape = fn(Route) -> Route;
type Topics = Vec<String>;

/// The config with one inbound route `(name, table)` on `db` per item, each on its own
/// topic (returned in the same order) and shaped by `shape`; the bridge's persistent
/// session already subscribes to every topic.
fn routes(world: &World, db: &Db, routes: &[(&str, &str)], shape: Shape) -> (PathBuf, Topics) {
    let topics: Vec<String> = routes.iter().map(|(n, _)| unique(n)).collect();
    let mut config = world.config(db);
    for ((name, table), topic) in routes.iter().zip(&topics) {
        config = config.inbound(shape(Route::inbound(name, topic, table)));
    }
    sessions(world, &topics);
    (config.write(), topics)
}

/// The bridge's persistent session subscribed to every route's filter, so that the broker
/// queues what is published before the bridge first starts.
fn sessions(world: &World, filters: &[String]) {
    let filters: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 1)).collect();
    let (port, client) = (world.broker.port, &world.session_id());
    Subscriber::connect_with(port, client, false, &filters).disconnect();
}

fn on<P: AsRef<str>>(topic: &str, payloads: impl IntoIterator<Item = P>) -> Messages {
    let message = |p: P| (topic.to_owned(), p.as_ref().as_bytes().to_vec());
    payloads.into_iter().map(message).collect()
}

/// Each `(level, payload)` on `<root>/<level>`.
fn at_levels(root: &str, items: &[(&str, &str)]) -> Messages {
    let message = |(level, p): &(&str, &str)| on(&format!("{root}/{level}"), [p]);
    items.iter().flat_map(message).collect()
}

/// Runs the bridge until each table has its row count and `n` dead letters are stored,
/// then stops it; returns the dead letters.
fn run_until(config: &Path, db: &Db, tables: &[(&str, i64)], n: usize) -> Letters {
    let mut bridge = Bridge::start(config);
    for (table, rows) in tables {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        wait_for_count(&mut bridge, db, &sql, *rows);
    }
    let letters = by_id(wait_dead_letters(&mut bridge, config, n));
    terminate_ok(&mut bridge);
    letters
}

/// A config with the outbound route `out` on PostgreSQL that publishes each row of `query`
/// to `exchange` on broker `rabbit` at `url` with routing key `key`.
fn rabbit_out(work: &Workdir, url: &str, query: &str, exchange: &str, key: &str) -> PathBuf {
    let route = Route::outbound("out", query)
        .lines(&["track: id", "start: 0", "interval: 100ms", "broker: rabbit"])
        .exchange(exchange)
        .routing_key(key);
    let config = work.bare_config().broker("rabbit", url, Json::Null);
    let cs = Db::Postgres.connection_string();
    config.database("d", &cs).outbound(route).write()
}

/// Takes messages from `queue` until there are at least `n`.
fn take(rabbit: &Rabbit, queue: &str, n: usize) -> Vec<AmqpMessage> {
    let mut got = Vec::new();
    wait_until(&format!("{n} messages in {queue}"), LIVENESS, || {
        got.extend(rabbit.take_all(queue));
        got.len() >= n
    });
    got
}

/// `mqdb -c CONFIG dlq ARGS…` (`args` split at spaces) with stdin closed (not a terminal),
/// killed and failed if it runs past [`LIVENESS`].
fn dlq(config: &Path, args: &str) -> Ran {
    let args: Vec<&str> = args.split_whitespace().collect();
    let all = [&["-c", path_str(config), "dlq"][..], &args].concat();
    mqdb_bounded(&all, config.parent().expect("config dir"), LIVENESS)
}

fn dlq_expect(config: &Path, args: &str, code: i32) -> Ran {
    let ran = dlq(config, args);
    assert_eq!(ran.code, Some(code), "mqdb dlq {args}:\n{ran}");
    ran
}

/// The last non-empty line of stdout (the replay summary).
fn summary(ran: &Ran) -> &str {
    let last = ran.stdout.lines().rev().find(|l| !l.trim().is_empty());
    last.unwrap_or("").trim()
}

/// `mqdb dlq replay ARGS…`, asserting the exit code and the summary line.
fn replay(config: &Path, args: &str, code: i32, want: &str) -> Ran {
    let ran = dlq_expect(config, &format!("replay {args}"), code);
    assert_eq!(summary(&ran), want, "mqdb dlq replay {args}:\n{ran}");
    ran
}

/// The summary of a replay of `n` entries that all failed again, `kinds` as it counts them.
fn failed(n: usize, kinds: &str) -> String {
    format!("replayed 0 of {n}, failed {n} ({kinds})")
}

fn by_id(letters: Vec<Json>) -> Letters {
    letters.into_iter().map(|l| (id(&l), l)).collect()
}

fn letters(config: &Path) -> Letters {
    by_id(dlq_list(config))
}

/// The ids `dlq list --json ARGS…` prints, sorted.
fn listed_ids(config: &Path, args: &str) -> Vec<i64> {
    let ran = dlq_expect(config, &format!("list --json {args}"), 0);
    let parse = |l: &str| -> Json {
        serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object: {l}: {e}\n{ran}"))
    };
    let lines = ran.stdout.lines().filter(|l| !l.trim().is_empty());
    sorted(lines.map(|l| id(&parse(l))).collect())
}

/// Like [`dlq_expect`], asserting also that stdout, trimmed, is `want`.
fn dlq_says(config: &Path, args: &str, code: i32, want: &str) {
    let ran = dlq_expect(config, args, code);
    assert_eq!(ran.stdout.trim(), want, "mqdb dlq {args}:\n{ran}");
}

/// The one dead letter whose payload is `payload`.
fn with_payload<'a>(letters: &'a Letters, payload: &str) -> &'a Json {
    let found = Vec::from_iter(letters.values().filter(|l| l["payload"] == payload));
    assert_eq!(found.len(), 1, "one {payload:?}: {letters:#?}");
    found[0]
}

/// Asserts that each of `letters` has the fields of `want` (an object) with its values.
fn assert_fields<'a>(letters: impl IntoIterator<Item = &'a Json>, want: Json) {
    for l in letters {
        for (k, v) in want.as_object().expect("an object") {
            assert_eq!(&l[k], v, "{k}: {l:#}");
        }
    }
}

/// The rows of `sql`, each value trimmed.
fn rows(db: &Db, sql: &str) -> Vec<Vec<Option<String>>> {
    let trim = |v: Option<String>| v.map(|t| t.trim().to_owned());
    let row = |r: Vec<Option<String>>| r.into_iter().map(trim).collect();
    db.query(sql).into_iter().map(row).collect()
}

/// Expected rows, each written as its values joined by a space, every value set.
fn texts<S: AsRef<str>>(rows: &[S]) -> Vec<Vec<Option<String>>> {
    let row = |r: &S| r.as_ref().split(' ').map(|v| Some(v.to_owned())).collect();
    rows.iter().map(row).collect()
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

fn json_instant(letter: &Json, field: &str) -> DateTime<Utc> {
    let text = letter[field].as_str();
    let text = text.unwrap_or_else(|| panic!("{field} is not text: {letter:#}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// Asserts that a stored timestamp is the dead letter's `received_at` (to the microsecond
/// the databases keep).
fn assert_received_at(stored: Option<&str>, letter: &Json) {
    let want = json_instant(&letter["headers"], "received_at");
    let got = parse_ts(stored.expect("received is set")).and_utc();
    let diff = (got - want).num_microseconds().unwrap_or(i64::MAX).abs();
    let ctx = format!("{letter:#}");
    assert!(diff <= 1, "stored {got} is not received_at {want}: {ctx}");
}

/// Asserts a failed-again entry: one more attempt, a later last_failed_at, the new error
/// kind and an error, every other field (first_failed_at, payload, …) as before.
fn assert_failed_again(before: &Json, after: &Json, kind: &str) {
    let ctx = format!("before {before:#}, after {after:#}");
    let attempts = before["attempts"].as_i64().map(|a| a + 1);
    assert_eq!(after["attempts"].as_i64(), attempts, "{ctx}");
    let last = |l: &Json| json_instant(l, "last_failed_at");
    assert!(last(after) > last(before), "last_failed_at: {ctx}");
    assert_eq!(after["error_kind"], kind, "{ctx}");
    let error = after["error"].as_str().unwrap_or("");
    assert!(!error.trim().is_empty(), "{ctx}");
    let changed = "attempts last_failed_at error error_kind sqlstate";
    let fields = before.as_object().expect("an object").iter();
    for (k, v) in fields.filter(|(k, _)| !changed.split(' ').any(|c| *k == c)) {
        assert_eq!(after.get(k), Some(v), "{k} changed: {ctx}");
    }
}

/// Asserts that exactly the `touched` entries failed again with their kind and the others
/// are unchanged.
fn assert_touched(before: &Letters, after: &Letters, touched: &[i64], what: &str) {
    let keys = |l: &Letters| l.keys().copied().collect::<Vec<_>>();
    assert_eq!(keys(after), keys(before), "{what}");
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

#[test]
fn rejected_rows_fail_again_then_land_with_their_metadata_once_the_table_is_fixed_postgres() {
    World::on_each_store(
        "dlq-replay",
        rejected_rows_fail_again_then_land_with_their_metadata_once_the_table_is_fixed_postgres_on,
    );
}

fn rejected_rows_fail_again_then_land_with_their_metadata_once_the_table_is_fixed_postgres_on(
    world: World,
) {
    // Given a NOT NULL column without a default, a route mapping the payload, a topic level,
    // the topic and the receive time, and a second route into a table with a CHECK
    let db = Db::Postgres;
    let columns = "id INTEGER PRIMARY KEY, v INTEGER NOT NULL, site TEXT, topic TEXT, \
                   received TIMESTAMPTZ";
    let readings = TempTable::create(&db, "rr_read", columns);
    let check = "id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)";
    let others = TempTable::create(&db, "rr_other", check);
    let t = &readings.name;
    let (root, root2) = (unique("rr"), unique("rr_other"));
    let readings_route = Route::inbound("readings", &format!("{root}/{{site}}"), t)
        .lines(&["batch: { max_rows: 100, max_delay: 50ms }"]);
    let spec = "id=payload.id v=payload.v site=topic.site topic=meta.topic \
                received=meta.received_at";
    let readings_route = readings_route.columns(&pairs(spec));
    let config = world.config(&db).inbound(readings_route);
    let others_route = Route::inbound("others", &root2, &others.name).columns(ID_V);
    let config = config.inbound(others_route).write();
    sessions(&world, &[format!("{root}/+"), root2.clone()]);

    // When good messages and messages without `v` are published and the bridge runs
    let good = (1..=5).map(|i| format!(r#"{{"id":{i},"v":{}}}"#, i * 10));
    let mut messages = on(&format!("{root}/north"), good);
    let bad = [
        ("north", "101", r#"{"id":101}"#),
        ("south", "102", r#"{"id":102,"note":"no v"}"#),
        ("east", "103", r#"{"id":103}"#),
    ];
    messages.extend(at_levels(&root, &bad.map(|(site, _, p)| (site, p))));
    messages.extend(on(&root2, [r#"{"id":1,"v":-1}"#]));
    world.publisher().publish_all_confirmed(messages, 1);
    let first = run_until(&config, &db, &[(t, 5)], 4);
    let stopped_at = Utc::now();
    let want = json!({"error_kind": "rejected", "attempts": 1});
    assert_fields(first.values(), want);

    // When every entry is replayed before the table is fixed
    std::thread::sleep(TICK);
    replay(&config, "--all", 1, &failed(4, "rejected: 4"));

    // Then every entry is kept with a second attempt, a new last_failed_at and the error
    let second = letters(&config);
    let all: Vec<i64> = first.keys().copied().collect();
    assert_touched(&first, &second, &all, "--all");
    for after in second.values() {
        let readings = after["route"] == "readings";
        let state = if readings { "23502" } else { "23514" };
        assert_eq!(after["sqlstate"], state, "{after:#}");
    }
    assert_eq!(readings.count(), 5, "nothing was inserted");

    // When the column gets a default and the route's entries are replayed
    db.exec(&format!("ALTER TABLE {t} ALTER COLUMN v SET DEFAULT -1"));
    replay(&config, "--route readings", 0, "replayed 3 of 3");

    // Then the rows are in the table with the default and the original message's topic,
    // topic level and receive time
    let received = pg_utc("received");
    let sql = format!("SELECT id, v, site, topic, {received} FROM {t} WHERE id > 100 ORDER BY id");
    let got = rows(&db, &sql);
    let head: Vec<_> = got.iter().map(|r| r[..4].to_vec()).collect();
    let want = bad.map(|(site, id, _)| format!("{id} -1 {site} {root}/{site}"));
    assert_eq!(head, texts(&want));
    for (row, (_, _, payload)) in got.iter().zip(bad) {
        assert_received_at(row[4].as_deref(), with_payload(&first, payload));
        let received = parse_ts(row[4].as_deref().expect("set")).and_utc();
        assert!(received < stopped_at, "{row:?}");
    }
    assert_eq!(readings.count(), 8);
    // And only the other route's entry is left, untouched by the --route replay
    let mut other = second.clone();
    other.retain(|_, l| l["route"] == "others");
    assert_eq!(letters(&config), other);
    assert_eq!(others.count(), 0);
}

#[test]
fn rejected_rows_replayed_with_on_conflict_ignore_never_duplicate_mariadb() {
    // Given a MariaDB table with a named CHECK and a route with on_conflict: ignore on `id`
    let (db, world) = (Db::MariaDb, World::new("dlq-replay"));
    let check = unique("v_nonneg");
    let columns = format!(
        "id INT PRIMARY KEY, v INT, topic VARCHAR(200), received DATETIME(6), \
         CONSTRAINT {check} CHECK (v >= 0)"
    );
    let table = TempTable::create(&db, "rr_maria", &columns);
    let t = &table.name;
    let root = unique("rrm");
    let route = Route::inbound("maria", &format!("{root}/+"), t)
        .lines(&["on_conflict: ignore", "key: [id]"]);
    let spec = "id=payload.id v=payload.v topic=meta.topic received=meta.received_at";
    let route = route.columns(&pairs(spec));
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
    messages.extend(at_levels(&root, &bad));
    world.publisher().publish_all_confirmed(messages, 1);
    let first = run_until(&config, &db, &[(t, 5)], 3);
    let want = json!({"error_kind": "rejected", "sqlstate": "23000"});
    assert_fields(first.values(), want);
    let a = with_payload(&first, bad[0].1);

    // When the CHECK is dropped and the first id-101 entry alone is replayed
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT {check}"));
    replay(&config, &format!("--id {}", id(a)), 0, "replayed 1 of 1");

    // Then that row is in, with its topic and receive time; the others still wait
    let sql = format!("SELECT v, topic, received FROM {t} WHERE id = 101");
    let row = rows(&db, &sql);
    assert_eq!(row.len(), 1, "{row:?}");
    assert_eq!(row[0][..2], texts(&[format!("-5 {root}/a")])[0]);
    assert_received_at(row[0][2].as_deref(), a);
    assert_eq!(letters(&config).len(), 2);

    // When everything left is replayed, and then again
    replay(&config, "--all", 0, "replayed 2 of 2");
    replay(&config, "--all", 0, "replayed 0 of 0");

    // Then the second id-101 entry was ignored (no duplicate, the first kept), 102 is in,
    // and the queue is empty
    let sql = format!("SELECT id, v, topic FROM {t} WHERE id > 100 ORDER BY id");
    let want = texts(&[&format!("101 -5 {root}/a"), &format!("102 -7 {root}/c")]);
    assert_eq!(rows(&db, &sql), want);
    assert_eq!(table.count(), 7);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

#[test]
fn a_conversion_that_is_still_wrong_counts_every_attempt_and_id_selects_exactly() {
    World::on_each_store(
        "dlq-replay",
        a_conversion_that_is_still_wrong_counts_every_attempt_and_id_selects_exactly_on,
    );
}

fn a_conversion_that_is_still_wrong_counts_every_attempt_and_id_selects_exactly_on(world: World) {
    // Given two values that do not convert to INTEGER and a payload that is not JSON
    let db = Db::Postgres;
    let table = TempTable::create(&db, "conv", "id INTEGER PRIMARY KEY, n INTEGER");
    let t = table.name.as_str();
    let shape = |r: Route| r.columns(&[("id", "payload.id"), ("n", "payload.n")]);
    let (config, topics) = routes(&world, &db, &[("conv", t)], shape);
    let (px, py) = (r#"{"id":7,"n":"abc"}"#, r#"{"id":8,"n":"xyz"}"#);
    let messages = on(&topics[0], [r#"{"id":1,"n":1}"#, px, py, "not json"]);
    world.publisher().publish_all_confirmed(messages, 1);
    let mut last = run_until(&config, &db, &[(t, 1)], 3);
    let [x, y, z] = [px, py, "not json"].map(|p| id(with_payload(&last, p)));
    assert_eq!(last[&x]["error_kind"], "convert");
    assert_eq!(last[&z]["error_kind"], "decode");

    // When one entry is replayed by id, several times, then with others in both --id forms
    // and by error kind, each step checked against the one before
    // (each step: the selection, the kinds of the entries that failed again, which they are)
    let by_x = format!("--id {x}");
    let xy = format!("--id {x},{y}");
    let xz = format!("--id {x} --id {z}");
    let steps: [(&str, &str, &[i64]); 6] = [
        (&by_x, "convert: 1", &[x]),
        (&by_x, "convert: 1", &[x]),
        (&xy, "convert: 2", &[x, y]),
        (&xz, "convert: 1, decode: 1", &[x, z]),
        ("--all --error-kind decode", "decode: 1", &[z]),
        ("--route conv --error-kind convert", "convert: 2", &[x, y]),
    ];
    for (args, kinds, touched) in steps {
        std::thread::sleep(TICK);
        replay(&config, args, 1, &failed(touched.len(), kinds));
        // Then exactly the selected entries have one more attempt and the same error kind;
        // the others are unchanged
        let now = letters(&config);
        assert_touched(&last, &now, touched, &format!("replay {args}"));
        last = now;
    }
    // And the attempts add up: x 6, y 3, z 3; the error still names the value
    let attempts = [x, y, z].map(|i| last[&i]["attempts"].as_i64().expect("attempts"));
    assert_eq!(attempts, [6, 3, 3], "{last:#?}");
    let error = last[&x]["error"].as_str().unwrap_or("");
    assert!(error.contains("abc"), "{:#}", last[&x]);

    // When nothing matches the selection
    replay(&config, "--all --error-kind rejected", 0, "replayed 0 of 0");
    // Or the selection is not exactly one of --all, --id, --route
    for args in [
        "replay",
        "replay --error-kind convert",
        "replay --all --route conv",
        &format!("replay --all --id {x}"),
        &format!("replay --route conv --id {y}"),
    ] {
        dlq_expect(&config, args, 2);
    }
    // Then nothing changed
    assert_eq!(letters(&config), last);
    assert_eq!(table.count(), 1);
}

#[test]
fn dry_run_changes_nothing_and_reports_database_rejections() {
    World::on_each_store(
        "dlq-replay",
        dry_run_changes_nothing_and_reports_database_rejections_on,
    );
}

fn dry_run_changes_nothing_and_reports_database_rejections_on(world: World) {
    // Given three dead letters: a CHECK violation, a value that does not convert, and a
    // duplicate key
    let db = Db::Postgres;
    let columns = "id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)";
    let table = TempTable::create(&db, "dry", columns);
    let t = table.name.as_str();
    let (config, topics) = routes(&world, &db, &[("dry", t)], |r| r.columns(ID_V));
    let check = r#"{"id":10,"v":-1}"#;
    let convert = r#"{"id":11,"v":"abc"}"#;
    let duplicate = r#"{"id":1,"v":7}"#;
    let good = (1..=3).map(|i| format!(r#"{{"id":{i},"v":{i}}}"#));
    let bad = [check, convert, duplicate].map(String::from);
    let messages = on(&topics[0], good.chain(bad));
    world.publisher().publish_all_confirmed(messages, 1);
    let before = run_until(&config, &db, &[(t, 3)], 3);
    assert_eq!(with_payload(&before, duplicate)["sqlstate"], "23505");

    // When the row the duplicate collided with is deleted (so it would go in now) and every
    // entry is replayed with --dry-run
    db.exec(&format!("DELETE FROM {t} WHERE id = 1"));
    let ids_sql = format!("SELECT id, v FROM {t} ORDER BY id");
    let table_before = rows(&db, &ids_sql);
    std::thread::sleep(TICK);
    let summary = "would replay 1 of 3, would fail 2 (convert: 1, rejected: 1)";
    let dry = replay(&config, "--all --dry-run", 1, summary);
    // (it says what would happen: nothing failed "again")
    let err = &dry.stderr;
    let said = err.contains("2 dead letters would fail") && !err.contains("again");
    assert!(said, "{dry}");
    // And the insertable one alone
    let one = format!("--id {} --dry-run", id(with_payload(&before, duplicate)));
    replay(&config, &one, 0, "would replay 1 of 1");

    // Then the table and the entries (attempts, times, errors) are exactly as before: the
    // rejection was found by the database, and the insert that worked was rolled back
    assert_eq!(rows(&db, &ids_sql), table_before);
    assert_eq!(letters(&config), before);

    // And a real replay does what the dry run said
    let summary = "replayed 1 of 3, failed 2 (convert: 1, rejected: 1)";
    replay(&config, "--all", 1, summary);
    let want = texts(&["1 7", "2 2", "3 3"]);
    assert_eq!(rows(&db, &ids_sql), want);
    let after = letters(&config);
    assert_eq!(after.len(), 2, "{after:#?}");
    for (payload, kind) in [(check, "rejected"), (convert, "convert")] {
        let now = with_payload(&after, payload);
        assert_failed_again(with_payload(&before, payload), now, kind);
    }
    assert_eq!(with_payload(&after, check)["sqlstate"], "23514");
}

#[test]
fn csv_record_dead_letters_land_once_with_values_from_their_own_header() {
    // Given a CSV route with `header: true` and a CHECK that rejects large quantities, and
    // a second one (`whole`) mapping a header name that its messages lack
    let (db, world) = (Db::Postgres, World::new("dlq-replay"));
    let check = unique("qty_small");
    let columns = format!(
        "id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER, raw TEXT, \
         CONSTRAINT {check} CHECK (qty < 100)"
    );
    let table = TempTable::create(&db, "csvh", &columns);
    let whole_columns = "id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER DEFAULT 42";
    let whole_table = TempTable::create(&db, "csvw", whole_columns);
    let (t, w) = (table.name.as_str(), whole_table.name.as_str());
    db.exec(&format!("INSERT INTO {w} VALUES (1, 'pre', 1)"));
    let topics = [unique("csvh"), unique("csvw")];
    let csv = |name: &str, topic: &str, table: &str, spec: &str| {
        let route = Route::inbound(name, topic, table).columns(&pairs(spec));
        route.lines(&["format: csv", "csv: { header: true }"])
    };
    let spec = "id=payload.id sku=payload.sku qty=payload.qty raw=payload";
    let items = csv("items", &topics[0], t, spec);
    let config = |spec: &str| {
        let config = world.config(&db).inbound(items.clone());
        config.inbound(csv("whole", &topics[1], w, spec)).write()
    };
    let config_v1 = config("id=payload.id sku=payload.sku qty=payload.qty");
    sessions(&world, &topics);

    // When two multi-line messages with differently ordered headers each carry a rejected
    // record in the middle, and two messages without `qty` in their header arrive for the
    // other route (the second with a key that is taken)
    let (w_ok, w_dup) = ("id,sku\n7,G\n8,H\n", "id,sku\n9,I\n1,J\n");
    let one = "qty,id,sku\n5,1,A\n500,2,B\n7,3,C\n";
    let two = "sku,qty,id\nD,8,4\nE,900,5\nF,9,6\n";
    let mut messages = on(&topics[0], [one, two]);
    messages.extend(on(&topics[1], [w_ok, w_dup]));
    world.publisher().publish_all_confirmed(messages, 1);
    let first = run_until(&config_v1, &db, &[(t, 4)], 4);
    for (payload, header) in [("500,2,B", "qty,id,sku"), ("E,900,5", "sku,qty,id")] {
        let l = with_payload(&first, payload);
        assert_eq!(l["headers"]["csv_header"], header, "{l:#}");
        assert_eq!(l["headers"]["line"], 3, "{l:#}");
        assert_fields([l], json!({"error_kind": "rejected"}));
    }
    let whole_letters = [w_ok, w_dup].map(|p| with_payload(&first, p));
    let want = json!({"error_kind": "decode", "route": "whole"});
    assert_fields(whole_letters, want);

    // When the CHECK is dropped and the route's entries are replayed (twice)
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT {check}"));
    replay(&config_v1, "--route items", 0, "replayed 2 of 2");
    replay(&config_v1, "--route items", 0, "replayed 0 of 0");

    // Then each record is one row, its values read through its own message's header, and
    // `payload` is the record's own line as for the records stored by `run`
    let sql = format!("SELECT id, sku, qty, raw FROM {t} ORDER BY id");
    let want = texts(&[
        "1 A 5 5,1,A",
        "2 B 500 500,2,B",
        "3 C 7 7,3,C",
        "4 D 8 D,8,4",
        "5 E 900 E,900,5",
        "6 F 9 F,9,6",
    ]);
    assert_eq!(rows(&db, &sql), want);

    // When the other route's mapping no longer asks for `qty` and its entries are replayed
    let config_v2 = config("id=payload.id sku=payload.sku");
    std::thread::sleep(TICK);
    let summary = "replayed 1 of 2, failed 1 (rejected: 1)";
    replay(&config_v2, "--route whole", 1, summary);

    // Then the whole message without a conflict is in (every record, qty defaulted), the
    // one with a taken key is all or nothing: none of its records, the entry kept
    let sql = format!("SELECT id, sku, qty FROM {w} ORDER BY id");
    let want = texts(&["1 pre 1", "7 G 42", "8 H 42"]);
    assert_eq!(rows(&db, &sql), want);
    let left = letters(&config_v2);
    assert_eq!(left.len(), 1, "{left:#?}");
    let dup = with_payload(&left, w_dup);
    assert_failed_again(with_payload(&first, w_dup), dup, "rejected");
    assert_eq!(dup["sqlstate"], "23505", "{dup:#}");
}

#[test]
fn amqp_dead_letters_replay_with_their_routing_key_and_headers_without_a_broker() {
    // Given an AMQP route (the bridge declares its queue and binds it to an exchange) mapping
    // the routing key, exchange, queue, redelivered flag, broker, two headers and the
    // receive time, into a table with a CHECK
    let (db, work) = (Db::Postgres, Workdir::new("dlq-replay"));
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
    let bind = json!({ "exchange": exchange, "routing_key": "sensors.#" });
    let route = amqp_route("amqp_in", &queue, t).set("bind", bind);
    let spec = "id=payload.id v=payload.v rk=meta.routing_key ex=meta.exchange q=meta.queue \
                re=meta.redelivered br=meta.broker site=header.x-site seq=header.x-seq \
                received=meta.received_at";
    let route = route.columns(&pairs(spec));
    let config = |url: &str| {
        let config = work.bare_config().broker("r", url, Json::Null);
        let cs = db.connection_string();
        config.database("d", &cs).inbound(route.clone()).write()
    };
    let config_up = config(Rabbit::URL);
    let mut bridge = Bridge::start(&config_up);
    wait_consuming(&mut bridge, &queue);

    // When a good message and two negative ones (one through the exchange, one straight to
    // the queue through the default exchange) arrive, with headers
    let site = |s: &str| ("x-site", Header::Str(s.into()));
    let (ok, north) = (br#"{"id":1,"v":1}"#, br#"{"id":2,"v":-1}"#);
    rabbit.publish(&exchange, "sensors.ok.t", ok, &[site("ok")]);
    let seq = ("x-seq", Header::Int(9_007_199_254_740_993));
    let headers = [site("Zürich-1"), seq];
    rabbit.publish(&exchange, "sensors.north.t", north, &headers);
    let seq = ("x-seq", Header::Int32(-7));
    rabbit.publish("", &queue, br#"{"id":3,"v":-2}"#, &[site("south"), seq]);
    wait_for_count(&mut bridge, &db, &format!("SELECT COUNT(*) FROM {t}"), 1);
    let first = by_id(wait_dead_letters(&mut bridge, &config_up, 2));
    wait_queue_drained(&mut bridge, &queue);
    terminate_ok(&mut bridge);

    // When the configuration points at a broker that is not there, the CHECK is dropped,
    // and the entries are replayed
    let config = config("amqp://guest:guest@127.0.0.1:1/%2f");
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT {check}"));
    replay(&config, "--all", 0, "replayed 2 of 2");

    // Then the rows carry the original routing key, exchange, queue, flag, broker, headers
    // and receive time
    let (received, rk) = (pg_utc("received"), "sensors.north.t");
    let select = format!("SELECT id, v, rk, ex, q, re::text, br, site, seq, {received}");
    let got = rows(&db, &format!("{select} FROM {t} WHERE id > 1 ORDER BY id"));
    let (x, q) = (exchange.as_str(), queue.as_str());
    // (the default exchange has an empty name: two spaces)
    let want = texts(&[
        &format!("2 -1 {rk} {x} {q} false r Zürich-1 9007199254740993"),
        &format!("3 -2 {q}  {q} false r south -7"),
    ]);
    let head: Vec<_> = got.iter().map(|r| r[..9].to_vec()).collect();
    assert_eq!(head, want);
    for (row, payload) in got.iter().zip([r#"{"id":2,"v":-1}"#, r#"{"id":3,"v":-2}"#]) {
        assert_received_at(row[9].as_deref(), with_payload(&first, payload));
    }
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

#[test]
fn unroutable_outbound_dead_letters_fail_again_until_a_queue_is_bound_then_arrive() {
    // Given an exchange without any binding and a route publishing three rows to it
    let (db, work) = (Db::Postgres, Workdir::new("dlq-replay"));
    let mut rabbit = Rabbit::connect();
    let (exchange, queue) = (unique("mqdb_dlq_out_x"), unique("mqdb_dlq_out_q"));
    rabbit.declare_exchange(&exchange, "topic");
    let table = TempTable::create(&db, "out_unr", "id INTEGER PRIMARY KEY, kind TEXT NOT NULL");
    let t = &table.name;
    let kinds = "(1, 'a'), (2, 'b'), (3, 'a')";
    db.exec(&format!("INSERT INTO {t} VALUES {kinds}"));
    let query = format!("SELECT id, kind FROM {t} WHERE id > ? ORDER BY id");
    let config = rabbit_out(&work, Rabbit::URL, &query, &exchange, "r.{kind}");
    let first = run_until(&config, &db, &[], 3);
    let want = json!({"error_kind": "unroutable", "direction": "outbound"});
    assert_fields(first.values(), want);

    // When they are replayed while nothing is bound
    std::thread::sleep(TICK);
    replay(&config, "--all", 1, &failed(3, "unroutable: 3"));

    // Then they are kept, with a second attempt
    let second = letters(&config);
    let all: Vec<i64> = first.keys().copied().collect();
    assert_touched(&first, &second, &all, "--all");
    assert_fields(second.values(), json!({"attempts": 2}));

    // When a queue is bound to the exchange and they are replayed with --dry-run
    rabbit.declare_bound_queue(&queue, &exchange, "r.#");
    replay(&config, "--all --dry-run", 0, "would replay 3 of 3");
    // Then nothing is published and the entries are unchanged
    std::thread::sleep(Duration::from_millis(300));
    let early = rabbit.take_all(&queue);
    assert!(early.is_empty(), "a dry run published {early:?}");
    assert_eq!(letters(&config), second);

    // When they are replayed for real
    replay(&config, "--all", 0, "replayed 3 of 3");

    // Then the queue receives exactly the original payloads, with their routing keys,
    // persistent, with their rows' keys, and the entries are gone
    let mut got = take(&rabbit, &queue, 3);
    std::thread::sleep(Duration::from_millis(300));
    got.extend(rabbit.take_all(&queue));
    let mut received = Messages::new();
    for m in got {
        assert_eq!(m.exchange, exchange, "{m:?}");
        assert_eq!(m.delivery_mode, Some(2), "{m:?}");
        // With the key the route gives the row, so a consumer can tell a row it has
        let json = m.content_type.as_deref();
        assert_eq!(json, Some("application/json"), "{m:?}");
        let row: Json = serde_json::from_slice(&m.payload).expect("JSON");
        let row_key = [Some(row["id"].to_string())];
        let key = mqdb::dedup::message_id("out", &row_key, &m.payload);
        assert_eq!(m.message_id.as_deref(), Some(key.as_str()), "{m:?}");
        received.push((m.routing_key, m.payload));
    }
    received.sort();
    let mut expected = Messages::new();
    for l in first.values() {
        let source = l["source"].as_str().expect("source");
        let key = source.strip_prefix(&format!("{exchange}/"));
        let key = key.unwrap_or_else(|| panic!("source {source:?} is not {exchange}/KEY"));
        let payload = l["payload"].as_str().expect("payload");
        expected.push((key.to_owned(), payload.as_bytes().to_vec()));
    }
    expected.sort();
    assert_eq!(received, expected);
    let keys: Vec<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["r.a", "r.a", "r.b"]);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

#[test]
fn list_filters_by_route_kind_and_time_and_show_prints_one_entry() {
    World::on_each_store(
        "dlq-replay",
        list_filters_by_route_kind_and_time_and_show_prints_one_entry_on,
    );
}

fn list_filters_by_route_kind_and_time_and_show_prints_one_entry_on(world: World) {
    // Given two routes and dead letters of several kinds, made in two rounds
    let db = Db::Postgres;
    let columns = "id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0)";
    let ta = TempTable::create(&db, "lst_a", columns);
    let tb = TempTable::create(&db, "lst_b", columns);
    let tables = [("alpha", ta.name.as_str()), ("beta", tb.name.as_str())];
    let (config, topics) = routes(&world, &db, &tables, |r| r.columns(ID_V));
    let publisher = world.publisher();
    let mut bridge = Bridge::start(&config);
    let (convert, rejected) = (r#"{"id":1,"v":"abc"}"#, r#"{"id":2,"v":-1}"#);
    let (a_bad, b_bad) = (["alpha not json", convert, rejected], "beta not json");
    let round = |alpha: &[&str], beta: &str| [on(&topics[0], alpha), on(&topics[1], [beta])];
    publisher.publish_all_confirmed(round(&a_bad, b_bad).concat(), 1);
    let round1 = by_id(wait_dead_letters(&mut bridge, &config, 4));
    std::thread::sleep(TICK);
    let between = Utc::now();
    std::thread::sleep(TICK);
    let (a_late, b_late) = (r#"{"id":3,"v":-3}"#, r#"{"id":4,"v":"zz"}"#);
    publisher.publish_all_confirmed(round(&[a_late], b_late).concat(), 1);
    let all = by_id(wait_dead_letters(&mut bridge, &config, 6));
    terminate_ok(&mut bridge);
    let by = |p: &str| id(with_payload(&all, p));
    let [a_decode, a_convert, a_rejected1] = a_bad.map(by);
    let [b_decode, a_rejected2, b_convert] = [b_bad, a_late, b_late].map(by);
    let new = |i: &&i64| !round1.contains_key(*i);
    let round2: Vec<i64> = all.keys().filter(new).copied().collect();
    assert_eq!(round2, sorted(vec![a_rejected2, b_convert]));

    let between_z = between.to_rfc3339_opts(SecondsFormat::Millis, true);
    let plus2 = FixedOffset::east_opt(2 * 3600).expect("offset");
    let between_plus2 = between.with_timezone(&plus2);
    let between_plus2 = between_plus2.to_rfc3339_opts(SecondsFormat::Millis, false);
    let future = Utc::now() + chrono::Duration::days(1);
    let future = future.to_rfc3339_opts(SecondsFormat::Secs, true);
    let every: Vec<i64> = all.keys().copied().collect();
    let alpha = [a_decode, a_convert, a_rejected1, a_rejected2];
    let a_rejected = "--route alpha --error-kind rejected";
    let cases: [(&str, &[i64]); 14] = [
        ("", &every),
        ("--route alpha", &alpha),
        ("--route beta", &[b_decode, b_convert]),
        ("--error-kind decode", &[a_decode, b_decode]),
        ("--error-kind convert", &[a_convert, b_convert]),
        (a_rejected, &[a_rejected1, a_rejected2]),
        ("--route beta --error-kind rejected", &[]),
        ("--since 1h", &every),
        ("--since 7d", &every),
        (&format!("--since {between_z}"), &round2),
        (&format!("--since {between_plus2}"), &round2),
        (&format!("--since {between_z} {a_rejected}"), &[a_rejected2]),
        (&format!("--since {between_z} --error-kind decode"), &[]),
        (&format!("--since {future}"), &[]),
    ];
    for (args, want) in cases {
        let what = format!("dlq list --json {args}");
        assert_eq!(listed_ids(&config, args), sorted(want.to_vec()), "{what}");
    }
    // (a route that is neither configured nor stored is a usage error naming the routes)
    let unknown = dlq_expect(&config, "list --json --route gamma", 2);
    unknown.stderr_has(&["gamma", "alpha, beta"]);

    // And the table form prints its header and one line per match, or says nothing matches
    let table = dlq_expect(&config, "list --route beta", 0);
    let header = table.stdout.lines().next().unwrap_or("");
    for column in ["ID", "ROUTE", "AGE", "ATTEMPTS", "KIND", "ERROR", "PAYLOAD"] {
        assert!(header.contains(column), "{table}");
    }
    let body = table.stdout.lines().skip(1);
    let lines: Vec<&str> = body.filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 2, "{table}");
    for (line, want) in lines.iter().zip(sorted(vec![b_decode, b_convert])) {
        let first_word = line.split_whitespace().next();
        assert_eq!(first_word, Some(want.to_string().as_str()), "{table}");
        assert!(line.contains("beta"), "{table}");
    }
    let since_future = format!("list --since {future}");
    dlq_says(&config, &since_future, 0, "no dead letters match");
    // And a time that is neither RFC 3339 nor a duration is a usage error
    dlq_expect(&config, "list --since yesterday", 2);

    // And show prints one entry with its payload and error; a missing id exits 1
    let shown = dlq_expect(&config, &format!("show {b_convert}"), 0);
    let error = all[&b_convert]["error"].as_str().expect("error");
    shown.stdout_has(b_late).stdout_has("beta");
    shown.stdout_has(error);
    let only = !shown.stdout.contains("not json");
    assert!(only, "only that entry: {shown}");
    let missing = 1 + all.keys().max().expect("ids");
    let absent = dlq_expect(&config, &format!("show {missing}"), 1);
    absent.stderr_has(&[&format!("no dead letter with id {missing}")]);
    // And listing changed nothing
    assert_eq!(letters(&config), all);
}

#[test]
fn purge_selects_by_id_route_and_time_and_needs_yes_without_a_terminal() {
    World::on_each_store(
        "dlq-replay",
        purge_selects_by_id_route_and_time_and_needs_yes_without_a_terminal_on,
    );
}

fn purge_selects_by_id_route_and_time_and_needs_yes_without_a_terminal_on(world: World) {
    // Given dead letters on two routes, the bridge still running beside the CLI
    let db = Db::Sqlite(world.path("target.db"));
    let ta = TempTable::create(&db, "pg_a", "id INTEGER PRIMARY KEY, v TEXT");
    let tb = TempTable::create(&db, "pg_b", "id INTEGER PRIMARY KEY, v TEXT");
    let tables = [("alpha", ta.name.as_str()), ("beta", tb.name.as_str())];
    let (config, topics) = routes(&world, &db, &tables, |r| r);
    let publisher = world.publisher();
    let bad = |topic: &str, n: usize, tag: &str| -> Messages {
        on(topic, (1..=n).map(|i| format!("{tag} {i} not json")))
    };
    let first = [bad(&topics[0], 3, "a"), bad(&topics[1], 3, "b")];
    publisher.publish_all_confirmed(first.concat(), 1);
    let mut bridge = Bridge::start(&config);
    let all = by_id(wait_dead_letters(&mut bridge, &config, 6));
    let by = |p: &str| id(with_payload(&all, &format!("{p} not json")));
    let [a1, a2, a3, b1, b2, b3] = ["a 1", "a 2", "a 3", "b 1", "b 2", "b 3"].map(by);
    let ids = |config: &Path| sorted(letters(config).keys().copied().collect());
    let future = Utc::now() + chrono::Duration::days(1);
    let future = future.to_rfc3339_opts(SecondsFormat::Secs, true);
    let nothing = "no dead letters match; nothing purged";

    // When the selection is not exactly one of --all, --id, --route (or --before alone)
    let id_all = format!("--id {a1} --all -y");
    let route_id = format!("--route alpha --id {b1} --yes");
    for args in ["--yes", "--all --route alpha --yes", &id_all, &route_id] {
        dlq_expect(&config, &format!("purge {args}"), 2);
    }
    // Or --yes is missing and stdin is not a terminal
    let (one_id, before) = (format!("--id {a1}"), format!("--before {future}"));
    for args in ["--route alpha", "--all", &one_id, &before] {
        dlq_expect(&config, &format!("purge {args}"), 2).stderr_has(&["--yes"]);
    }
    // Then nothing is deleted
    let six = sorted(vec![a1, a2, a3, b1, b2, b3]);
    assert_eq!(ids(&config), six);

    // When nothing matches: a time in the past, also narrowed by route; an id that is gone
    let past = "--before 2000-01-01T00:00:00Z";
    let alpha_past = format!("--route alpha {past} -y");
    for args in [&format!("{past} --yes"), &alpha_past, "--before 1h --yes"] {
        dlq_says(&config, &format!("purge {args}"), 0, nothing);
    }
    let unknown = dlq_expect(&config, "purge --route gamma --yes", 2);
    unknown.stderr_has(&["alpha, beta"]);
    assert_eq!(ids(&config), six);

    // When one id, then two ids, then a route before a future time are purged
    let steps: [(&str, u64, &[i64]); 4] = [
        (&format!("--id {a1} --yes"), 1, &[a2, a3, b1, b2, b3]),
        (&format!("--id {b1},{b2} -y"), 2, &[a2, a3, b3]),
        (&format!("--route alpha --before {future} --yes"), 2, &[b3]),
        (&format!("--before {future} --yes"), 1, &[]),
    ];
    for (args, n, left) in steps {
        // Then exactly those are gone
        let purged = format!("purged {n} dead letters");
        dlq_says(&config, &format!("purge {args}"), 0, &purged);
        assert_eq!(ids(&config), sorted(left.to_vec()), "after purge {args}");
    }

    // When new dead letters arrive and everything is purged
    publisher.publish_all_confirmed(bad(&topics[0], 2, "c"), 1);
    wait_dead_letters(&mut bridge, &config, 2);
    dlq_expect(&config, "purge --all", 2);
    assert_eq!(letters(&config).len(), 2);
    dlq_says(&config, "purge --all --yes", 0, "purged 2 dead letters");
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    dlq_says(&config, "purge --all --yes", 0, nothing);
    terminate_ok(&mut bridge);
    assert_eq!(ta.count() + tb.count(), 0);
}

#[test]
fn dead_letters_of_a_route_no_longer_configured_are_kept_as_no_route() {
    // Given three inbound routes into SQLite, each with a duplicate-key dead letter
    let world = World::new("dlq-replay");
    let db = Db::Sqlite(world.path("target.db"));
    let names = ["kept", "gone", "flipped"];
    let columns = "id INTEGER PRIMARY KEY, v INTEGER";
    let tables = names.map(|n| TempTable::create(&db, &format!("nr_{n}"), columns));
    let routed = [0, 1, 2].map(|i| (names[i], tables[i].name.as_str()));
    let (config, topics) = routes(&world, &db, &routed, |r| r.columns(ID_V));
    let dup = [r#"{"id":1,"v":1}"#, r#"{"id":1,"v":2}"#];
    let messages = topics.iter().flat_map(|t| on(t, dup)).collect();
    world.publisher().publish_all_confirmed(messages, 1);
    let counts = routed.map(|(_, t)| (t, 1));
    let first = run_until(&config, &db, &counts, 3);
    let by_route = |route: &str| -> i64 {
        let found = Vec::from_iter(first.values().filter(|l| l["route"] == route));
        assert_eq!(found.len(), 1, "{route}: {first:#?}");
        id(found[0])
    };
    let [kept, gone, flipped] = names.map(by_route);

    // When the conflicting rows are deleted (every entry could go in now), `gone` is removed
    // from the config and `flipped` becomes the name of an outbound route
    for (_, table) in routed {
        db.exec(&format!("DELETE FROM {table} WHERE id = 1"));
    }
    let query = format!("SELECT id, v FROM {} WHERE id > ? ORDER BY id", routed[2].1);
    let flipped_out = Route::outbound("flipped", &query)
        .lines(&["track: id", "start: 0", "broker: b"])
        .set("topic", "x/{id}");
    let kept_route = Route::inbound("kept", &topics[0], routed[0].1).columns(ID_V);
    let config = world.config(&db).inbound(kept_route);
    let config = config.outbound(flipped_out).write();
    std::thread::sleep(TICK);
    let summary = "replayed 1 of 3, failed 2 (no_route: 2)";
    replay(&config, "--all", 1, summary);

    // Then the configured route's entry is in its table, and the other two are kept with
    // kind no_route, naming their route
    let kept_rows = rows(&db, &format!("SELECT id, v FROM {}", routed[0].1));
    assert_eq!(kept_rows, texts(&["1 2"]));
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

/// `mqdb -c CONFIG dlq ARGS…` on a pseudo-terminal (util-linux `script`), with `input`
/// typed in, asserting its exit `code`: everything it wrote (stdout and stderr share the
/// terminal).
fn dlq_on_terminal(config: &Path, args: &str, input: &str, code: i32) -> String {
    use std::io::Write as _;
    use std::process::Stdio;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut cmd = vec![quote(path_str(&common::mqdb_bin())), "-c".into()];
    cmd.extend([quote(path_str(config)), "dlq".into()]);
    cmd.extend(args.split_whitespace().map(quote));
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
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(code), "mqdb dlq {args}: {text}");
    text
}

#[test]
fn on_a_terminal_purge_asks_first_and_replay_shows_progress() {
    // Given three dead letters
    let world = World::new("dlq-replay");
    let db = Db::Sqlite(world.path("target.db"));
    let table = TempTable::create(&db, "tty", "id INTEGER PRIMARY KEY, v TEXT");
    let (config, topics) = routes(&world, &db, &[("tty", table.name.as_str())], |r| r);
    let junk = on(&topics[0], ["junk 1", "junk 2", "junk 3"]);
    world.publisher().publish_all_confirmed(junk, 1);
    let first = run_until(&config, &db, &[], 3);

    // When purge runs on a terminal without --yes and the answer is no
    let out = dlq_on_terminal(&config, "purge --all", "n\n", 0);
    // Then it asked, purged nothing, and exits 0
    let asked = out.contains("purge 3 dead letters for good? [y/N]");
    assert!(asked && out.contains("nothing purged"), "{out}");
    assert_eq!(letters(&config), first);

    // When replay runs on a terminal
    let out = dlq_on_terminal(&config, "replay --all", "", 1);
    // Then it shows its progress and the summary, and the entries failed again
    assert!(out.contains("3/3"), "progress: {out}");
    assert!(out.contains(&failed(3, "decode: 3")), "{out}");
    assert_fields(letters(&config).values(), json!({"attempts": 2}));

    // When purge asks again and the answer is yes
    let out = dlq_on_terminal(&config, "purge --route tty", "y\n", 0);
    // Then they are gone
    assert!(out.contains("purged 3 dead letters"), "{out}");
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
}

/// Asserts that `mqdb dlq ARGS` (a replay of `n` entries; 0: of any count) stopped with exit
/// 1, said it was an outage, and left every entry as it was in `before`.
fn assert_stopped_by_outage(config: &Path, args: &str, n: usize, before: &Letters) {
    let ran = dlq_expect(config, args, 1);
    let counted = n == 0 || summary(&ran).starts_with(&format!("replayed 0 of {n}"));
    let said = counted && summary(&ran).contains("; stopped by an outage");
    assert!(said, "{ran}");
    assert_eq!(&letters(config), before);
}

#[test]
fn a_database_outage_stops_the_replay_and_counts_no_attempt() {
    World::on_each_store(
        "dlq-replay",
        a_database_outage_stops_the_replay_and_counts_no_attempt_on,
    );
}

fn a_database_outage_stops_the_replay_and_counts_no_attempt_on(world: World) {
    // Given duplicate-key dead letters of a route whose database is reached through a proxy,
    // and the conflicting rows deleted afterwards (so every entry could go in now)
    let db = Db::Postgres;
    let proxy = common::TcpProxy::start(([127, 0, 0, 1], 5432).into());
    let table = TempTable::create(&db, "outage", "id INTEGER PRIMARY KEY, v INTEGER");
    let t = &table.name;
    let topic = unique("outage");
    let route = Route::inbound("outage", &topic, t).columns(ID_V);
    let config = world.config_cs(&db.connection_string_via(proxy.port));
    let config = config.inbound(route).write();
    world.persistent_session(&topic);
    let payload = |id| [1, 2].map(|v| format!(r#"{{"id":{id},"v":{v}}}"#));
    let messages = on(&topic, (1..=3).flat_map(payload));
    world.publisher().publish_all_confirmed(messages, 1);
    let first = run_until(&config, &db, &[(t, 3)], 3);
    db.exec(&format!("DELETE FROM {t}"));

    // When the database is unreachable during a replay
    proxy.set_down(true);
    // Then the replay stops with exit 1, says so, and every entry is as it was
    assert_stopped_by_outage(&config, "replay --all", 3, &first);
    // And a dry run is stopped the same way
    assert_stopped_by_outage(&config, "replay --all --dry-run", 0, &first);

    // When the database is back
    proxy.set_down(false);
    replay(&config, "--all", 0, "replayed 3 of 3");
    let got = rows(&db, &format!("SELECT id, v FROM {t} ORDER BY id"));
    assert_eq!(got, texts(&["1 2", "2 2", "3 2"]));
}

#[test]
fn a_broker_outage_stops_an_outbound_replay_and_counts_no_attempt() {
    // Given unroutable outbound dead letters of a route whose broker is reached through a
    // proxy, and a queue bound afterwards (so every entry could be delivered now)
    let (db, work) = (Db::Postgres, Workdir::new("dlq-replay"));
    let mut rabbit = Rabbit::connect();
    let proxy = common::TcpProxy::start(Rabbit::addr());
    let (exchange, queue) = (unique("mqdb_dlq_outage_x"), unique("mqdb_dlq_outage_q"));
    rabbit.declare_exchange(&exchange, "topic");
    let table = TempTable::create(&db, "out_outage", "id INTEGER PRIMARY KEY");
    let t = &table.name;
    db.exec(&format!("INSERT INTO {t} VALUES (1), (2)"));
    let query = format!("SELECT id FROM {t} WHERE id > ? ORDER BY id");
    let url = Rabbit::url_via(proxy.port);
    let config = rabbit_out(&work, &url, &query, &exchange, "k.{id}");
    let first = run_until(&config, &db, &[], 2);
    rabbit.declare_bound_queue(&queue, &exchange, "k.#");

    // When the broker is unreachable during a replay
    proxy.set_down(true);
    // Then the replay stops with exit 1, says so, and every entry is as it was
    assert_stopped_by_outage(&config, "replay --all", 2, &first);

    // When the broker is back
    proxy.set_down(false);
    replay(&config, "--all", 0, "replayed 2 of 2");
    let got = take(&rabbit, &queue, 2).into_iter();
    let mut keys: Vec<String> = got.map(|m| m.routing_key).collect();
    keys.sort();
    assert_eq!(keys, ["k.1", "k.2"]);
}
