//! What `check` must catch before `run` meets it (unique keys for `on_conflict`, `start`
//! values, a table named in the wrong case), its verdict line, and the dead-letter
//! commands' usage errors: all through the real binary against the local services.

mod common;

use common::{Bridge, Db, TempTable, free_port, run_mqdb, unique};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::Builder::new()
            .prefix("mqdb-opcheck-")
            .tempdir()
            .expect("temp dir"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn write(&self, text: &str) -> PathBuf {
        let p = self.path("mqdb.yaml");
        std::fs::write(&p, text).expect("write config");
        p
    }

    /// The config's head: the state store, broker `b` and database `d`.
    fn head(&self, db: &Db) -> String {
        format!(
            "state: sqlite://{state}
brokers:
  b: {{ url: 'mqtt://127.0.0.1:1883', client_id: {cid} }}
databases:
  d: {{ connection_string: '{cs}' }}
",
            state = self.path("state.db").display(),
            cid = unique("opcheck"),
            cs = db.connection_string(),
        )
    }
}

fn mqdb(config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["-c", config.to_str().expect("UTF-8 path")];
    all.extend_from_slice(args);
    run_mqdb(&all)
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The `check` line of inbound route `route`.
fn line_of(out: &Output, route: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tag = format!(" {route}:");
    stdout
        .lines()
        .find(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("no line for {route}\n{}", show(out)))
        .to_string()
}

fn inbound(name: &str, table: &str, conflict: &str, key: &str) -> String {
    format!(
        "  - name: {name}
    broker: b
    topic: 'opcheck/{topic}/+'
    database: d
    table: {table}
    columns: {{ site: payload.site, ts: payload.ts, v: payload.v, id: payload.id }}
    on_conflict: {conflict}
    key: [{key}]
",
        topic = unique("t"),
    )
}

// ---------------------------------------------------------------------------------------
// on_conflict needs a unique key on exactly the key columns
// ---------------------------------------------------------------------------------------

fn conflict_keys_are_checked_against_the_catalog(db: &Db, dir: &Dir) {
    let int = if matches!(db, Db::Sqlite(_)) {
        "INTEGER"
    } else {
        "INT"
    };
    let table = TempTable::create(
        db,
        "opkey",
        &format!(
            "id {int} NOT NULL PRIMARY KEY, site VARCHAR(40), ts VARCHAR(40), v {int}, \
             CONSTRAINT site_ts UNIQUE (site, ts)"
        ),
    );
    let t = &table.name;
    let text = format!(
        "{head}inbound:\n{a}{b}{c}{d}",
        head = dir.head(db),
        a = inbound("by_site", t, "ignore", "site"),
        b = inbound("by_v", t, "update", "v"),
        c = inbound("by_ts_site", t, "update", "ts, site"),
        d = inbound("by_id", t, "ignore", "id"),
    );
    let out = mqdb(&dir.write(&text), &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    for route in ["by_site", "by_v"] {
        let line = line_of(&out, route);
        assert!(line.starts_with("FAIL"), "{route}: {}", show(&out));
        assert!(
            line.contains("unique") && line.contains("key"),
            "{route} names what is missing: {}",
            show(&out)
        );
    }
    for route in ["by_ts_site", "by_id"] {
        assert!(
            line_of(&out, route).starts_with("ok"),
            "{route}: {}",
            show(&out)
        );
    }
}

#[test]
fn check_fails_an_on_conflict_key_without_a_unique_constraint_on_postgres() {
    conflict_keys_are_checked_against_the_catalog(&Db::Postgres, &Dir::new());
}

#[test]
fn check_fails_an_on_conflict_key_on_a_deferrable_constraint_on_postgres() {
    // PostgreSQL takes no deferrable constraint as the arbiter of ON CONFLICT.
    let dir = Dir::new();
    let db = Db::Postgres;
    let table = TempTable::create(
        &db,
        "opdefer",
        "id INT, site VARCHAR(40), ts VARCHAR(40), v INT, \
         CONSTRAINT id_later UNIQUE (id) DEFERRABLE INITIALLY DEFERRED",
    );
    let text = format!(
        "{head}inbound:\n{route}",
        head = dir.head(&db),
        route = inbound("deferred", &table.name, "ignore", "id"),
    );
    let out = mqdb(&dir.write(&text), &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        line_of(&out, "deferred").contains("unique keys"),
        "{}",
        show(&out)
    );
}

#[test]
fn check_fails_an_on_conflict_key_without_a_unique_constraint_on_mariadb() {
    conflict_keys_are_checked_against_the_catalog(&Db::MariaDb, &Dir::new());
}

#[test]
fn check_fails_an_on_conflict_key_without_a_unique_constraint_on_sqlite() {
    let dir = Dir::new();
    let db = Db::Sqlite(dir.path("data.db"));
    conflict_keys_are_checked_against_the_catalog(&db, &dir);
}

// ---------------------------------------------------------------------------------------
// A table named in the wrong case
// ---------------------------------------------------------------------------------------

fn wrong_case_gets_the_existing_name(db: &Db, dir: &Dir) -> (Output, String) {
    let table = TempTable::create(db, "opcase", "site VARCHAR(40), v INT");
    let upper = table.name.to_uppercase();
    let text = format!(
        "{head}inbound:
  - name: cased
    broker: b
    topic: 'opcheck/{topic}/+'
    database: d
    table: {upper}
    columns: {{ site: payload.site, v: payload.v }}
",
        head = dir.head(db),
        topic = unique("t"),
    );
    let out = mqdb(&dir.write(&text), &["check"]);
    (out, table.name.clone())
}

#[test]
fn a_table_named_in_the_wrong_case_fails_with_the_name_that_exists() {
    for db in [Db::Postgres, Db::MariaDb] {
        let dir = Dir::new();
        let (out, name) = wrong_case_gets_the_existing_name(&db, &dir);
        assert_eq!(out.status.code(), Some(1), "{}: {}", db.label(), show(&out));
        let line = line_of(&out, "cased");
        assert!(line.starts_with("FAIL"), "{}: {}", db.label(), show(&out));
        assert!(
            line.contains(&format!("table: {name}")),
            "{}: the hint names the existing table: {}",
            db.label(),
            show(&out)
        );
    }
    // SQLite matches table names without regard to case: the route works as written.
    let dir = Dir::new();
    let db = Db::Sqlite(dir.path("data.db"));
    let (out, _) = wrong_case_gets_the_existing_name(&db, &dir);
    assert_eq!(out.status.code(), Some(0), "sqlite: {}", show(&out));
}

// ---------------------------------------------------------------------------------------
// A start value its track column cannot take
// ---------------------------------------------------------------------------------------

#[test]
fn a_start_value_that_does_not_convert_fails_check_and_stops_run_with_exit_2() {
    let dir = Dir::new();
    let db = Db::Postgres;
    let table = TempTable::create(&db, "opstart", "id INT PRIMARY KEY, site VARCHAR(40)");
    db.exec(&format!("INSERT INTO {} VALUES (1, 'a')", table.name));
    let text = format!(
        "{head}outbound:
  - name: from_abc
    database: d
    query: SELECT id, site FROM {t} WHERE id > ? ORDER BY id
    track: id
    start: abc
    interval: 100ms
    broker: b
    topic: opcheck/{topic}/{{site}}
",
        head = dir.head(&db),
        t = table.name,
        topic = unique("t"),
    );
    let config = dir.write(&text);
    let out = mqdb(&config, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let line = line_of(&out, "from_abc");
    assert!(line.starts_with("FAIL"), "{}", show(&out));
    assert!(
        line.contains("start") && line.contains("abc") && line.contains("`id`"),
        "names the value and its track column: {}",
        show(&out)
    );

    // `run` stops on it (bounded: a bridge that keeps retrying is killed and fails here).
    let mut child = common::mqdb_command()
        .args(["-c", config.to_str().expect("UTF-8 path"), "run"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mqdb run");
    let status = common::wait_child(&mut child, Duration::from_secs(60));
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("mqdb run output");
    let log = show(&out);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("from_abc") && err.contains("start value") && err.contains("abc"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------
// check's verdict counts routes among routes
// ---------------------------------------------------------------------------------------

#[test]
fn check_counts_a_failed_mirror_apart_from_the_routes() {
    let dir = Dir::new();
    let db = Db::Postgres;
    let down = free_port();
    let text = format!(
        "state: sqlite://{state}
brokers:
  down: {{ url: 'mqtt://127.0.0.1:{down}' }}
databases:
  d: {{ connection_string: '{cs}' }}
dead_letter:
  publish: {{ broker: down, topic: 'dl/{{route}}' }}
inbound:
  - name: only
    broker: down
    topic: 'opcheck/{topic}/+'
    database: d
    table: nowhere
    columns: {{ v: payload.v }}
",
        state = dir.path("state.db").display(),
        cs = db.connection_string(),
        topic = unique("t"),
    );
    let out = mqdb(&dir.write(&text), &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 of 1 routes failed") && err.contains("dead_letter.publish"),
        "{}",
        show(&out)
    );
}

// ---------------------------------------------------------------------------------------
// Dead-letter commands: a value that names nothing is a usage error
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_routes_kinds_and_ids_are_usage_errors_naming_what_is_valid() {
    let dir = Dir::new();
    let db = Db::Sqlite(dir.path("data.db"));
    let text = format!(
        "{head}inbound:{route}",
        head = dir.head(&db),
        route = "\n".to_string() + &inbound("known_route", "t", "ignore", "id"),
    );
    let config = dir.write(&text);
    let usage = |args: &[&str], needles: &[&str]| {
        let out = mqdb(&config, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "{args:?} names {n}: {}", show(&out));
        }
    };
    usage(
        &["dlq", "list", "--route", "nosuchroute"],
        &["nosuchroute", "known_route"],
    );
    usage(
        &["dlq", "list", "--error-kind", "nope"],
        &["nope", "decode", "rejected"],
    );
    usage(
        &["dlq", "replay", "--route", "nosuchroute"],
        &["known_route"],
    );
    usage(
        &["dlq", "replay", "--all", "--error-kind", "nope"],
        &["decode"],
    );
    usage(
        &["dlq", "purge", "--route", "nosuchroute", "--yes"],
        &["known_route"],
    );
    usage(&["dlq", "replay", "--id", "9999"], &["9999"]);
    usage(&["dlq", "purge", "--yes"], &["--before"]);
    // A known route without letters is no error.
    let out = mqdb(&config, &["dlq", "list", "--route", "known_route"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

// ---------------------------------------------------------------------------------------
// The summary line with the HTTP endpoint on
// ---------------------------------------------------------------------------------------

#[test]
fn log_summary_is_honoured_with_http_on() {
    let dir = Dir::new();
    let db = Db::Sqlite(dir.path("data.db"));
    let text = format!(
        "{head}http: {{ listen: '127.0.0.1:{port}' }}\nlog_summary: 1s\n",
        head = dir.head(&db),
        port = free_port(),
    );
    let mut bridge = Bridge::start(&dir.write(&text));
    bridge.wait_for_log("summary:", Duration::from_secs(30));
    assert!(bridge.terminate().success(), "{}", bridge.log());
}
