//! What `check` must catch before `run` meets it (unique keys for `on_conflict`, `start`
//! values, a table named in the wrong case), its verdict line, and the dead-letter
//! commands' usage errors: all through the real binary against the local services.

mod common;

use common::{
    Bridge, Config, Db, Route, TempTable, Workdir, free_port, mqdb_at, temp_sqlite, unique,
};
use serde_json::json;
use std::time::Duration;

/// The state store, broker `b` (the shared Mosquitto) and database `d`.
fn head(work: &Workdir, db: &Db) -> Config {
    let client_id = json!({ "client_id": unique("opcheck") });
    work.bare_config()
        .broker("b", "mqtt://127.0.0.1:1883", client_id)
        .database("d", &db.connection_string())
}

fn topic() -> String {
    format!("opcheck/{}/+", unique("t"))
}

fn inbound(name: &str, table: &str, conflict: &str, key: &str) -> Route {
    let columns = "columns: { site: payload.site, ts: payload.ts, v: payload.v, id: payload.id }";
    Route::inbound(name, &topic(), table)
        .lines(&[columns])
        .set("on_conflict", conflict)
        .lines(&[&format!("key: [{key}]")])
}

/// `on_conflict` needs a unique key on exactly the key columns.
fn conflict_keys_are_checked_against_the_catalog(db: &Db) {
    let int = if matches!(db, Db::Sqlite(_)) {
        "INTEGER"
    } else {
        "INT"
    };
    let columns = format!(
        "id {int} NOT NULL PRIMARY KEY, site VARCHAR(40), ts VARCHAR(40), v {int}, \
         CONSTRAINT site_ts UNIQUE (site, ts)"
    );
    let table = TempTable::create(db, "opkey", &columns);
    let t = &table.name;
    let work = Workdir::new("opcheck");
    let config = head(&work, db)
        .inbound(inbound("by_site", t, "ignore", "site"))
        .inbound(inbound("by_v", t, "update", "v"))
        .inbound(inbound("by_ts_site", t, "update", "ts, site"))
        .inbound(inbound("by_id", t, "ignore", "id"));
    let out = mqdb_at(&config.write(), &["check"]);
    out.code(1)
        .route_is("by_site", "FAIL", &["unique", "key"])
        .route_is("by_v", "FAIL", &["unique", "key"])
        .route_is("by_ts_site", "ok", &[])
        .route_is("by_id", "ok", &[]);
}

common::cases! {
    check_fails_an_on_conflict_key_without_a_unique_constraint_on_postgres:
        conflict_keys_are_checked_against_the_catalog(&Db::Postgres);
    check_fails_an_on_conflict_key_without_a_unique_constraint_on_mariadb:
        conflict_keys_are_checked_against_the_catalog(&Db::MariaDb);
    check_fails_an_on_conflict_key_without_a_unique_constraint_on_sqlite:
        conflict_keys_are_checked_against_the_catalog(&temp_sqlite());
}

#[test]
fn check_fails_an_on_conflict_key_on_a_deferrable_constraint_on_postgres() {
    // PostgreSQL takes no deferrable constraint as the arbiter of ON CONFLICT.
    let work = Workdir::new("opcheck");
    let db = Db::Postgres;
    let table = TempTable::create(
        &db,
        "opdefer",
        "id INT, site VARCHAR(40), ts VARCHAR(40), v INT, \
         CONSTRAINT id_later UNIQUE (id) DEFERRABLE INITIALLY DEFERRED",
    );
    let route = inbound("deferred", &table.name, "ignore", "id");
    mqdb_at(&head(&work, &db).inbound(route).write(), &["check"])
        .code(1)
        .route_is("deferred", "", &["unique keys"]);
}

#[test]
fn a_table_named_in_the_wrong_case_fails_with_the_name_that_exists() {
    let work = Workdir::new("opcheck");
    let sqlite = Db::Sqlite(work.path("data.db"));
    for db in [Db::Postgres, Db::MariaDb, sqlite] {
        let table = TempTable::create(&db, "opcase", "site VARCHAR(40), v INT");
        let route = Route::inbound("cased", &topic(), &table.name.to_uppercase())
            .columns(&[("site", "payload.site"), ("v", "payload.v")]);
        let out = mqdb_at(&head(&work, &db).inbound(route).write(), &["check"]);
        if let Db::Sqlite(_) = db {
            // SQLite matches table names without regard to case: the route works as written.
            out.code(0);
        } else {
            // The hint names the existing table.
            let hint = format!("table: {}", table.name);
            out.fails("cased", &[&hint]);
        }
    }
}

#[test]
fn a_start_value_that_does_not_convert_fails_check_and_stops_run_with_exit_2() {
    let work = Workdir::new("opcheck");
    let db = Db::Postgres;
    let table = TempTable::create(&db, "opstart", "id INT PRIMARY KEY, site VARCHAR(40)");
    let t = &table.name;
    db.exec(&format!("INSERT INTO {t} VALUES (1, 'a')"));
    let query = format!("SELECT id, site FROM {t} WHERE id > ? ORDER BY id");
    let route = Route::outbound("from_abc", &query)
        .lines(&["track: id", "start: abc", "interval: 100ms", "broker: b"])
        .set("topic", format!("opcheck/{}/{{site}}", unique("t")));
    let config = head(&work, &db).outbound(route).write();
    // It names the value and its track column.
    let needles = ["start", "abc", "`id`"];
    mqdb_at(&config, &["check"]).fails("from_abc", &needles);

    // `run` stops on it (bounded: a bridge that keeps retrying fails here).
    let args = ["-c", common::path_str(&config), "run"];
    let out = common::mqdb_bounded(&args, work.dir.path(), Duration::from_secs(60));
    out.code(2).stderr_has(&["from_abc", "start value", "abc"]);
}

#[test]
fn check_counts_a_failed_mirror_apart_from_the_routes() {
    let work = Workdir::new("opcheck");
    let db = Db::Postgres;
    let down = format!("mqtt://127.0.0.1:{}", free_port());
    let route = Route::named("only")
        .lines(&["broker: down", "database: d", "table: nowhere"])
        .set("topic", topic())
        .columns(&[("v", "payload.v")]);
    let mirror = json!({ "publish": { "broker": "down", "topic": "dl/{route}" } });
    let config = work
        .bare_config()
        .broker("down", &down, serde_json::Value::Null)
        .database("d", &db.connection_string())
        .set("dead_letter", mirror)
        .inbound(route);
    mqdb_at(&config.write(), &["check"])
        .code(1)
        .stderr_has(&["1 of 1 routes failed", "dead_letter.publish"]);
}

// Dead-letter commands: a value that names nothing is a usage error

#[test]
fn unknown_routes_kinds_and_ids_are_usage_errors_naming_what_is_valid() {
    let work = Workdir::new("opcheck");
    let db = Db::Sqlite(work.path("data.db"));
    let route = inbound("known_route", "t", "ignore", "id");
    let config = head(&work, &db).inbound(route).write();
    for (args, needles) in [
        ("dlq list --route nosuchroute", "nosuchroute known_route"),
        ("dlq list --error-kind nope", "nope decode rejected"),
        ("dlq replay --route nosuchroute", "known_route"),
        ("dlq replay --all --error-kind nope", "decode"),
        ("dlq purge --route nosuchroute --yes", "known_route"),
        ("dlq replay --id 9999", "9999"),
        ("dlq purge --yes", "--before"),
    ] {
        let words = |text: &'static str| text.split(' ').collect::<Vec<_>>();
        mqdb_at(&config, &words(args))
            .code(2)
            .stderr_has(&words(needles));
    }
    // A known route without letters is no error.
    mqdb_at(&config, &["dlq", "list", "--route", "known_route"]).code(0);
}

#[test]
fn log_summary_is_honoured_with_http_on() {
    let work = Workdir::new("opcheck");
    let db = Db::Sqlite(work.path("data.db"));
    let listen = json!({ "listen": format!("127.0.0.1:{}", free_port()) });
    let config = head(&work, &db)
        .set("http", listen)
        .set("log_summary", "1s");
    let mut bridge = Bridge::start(&config.write());
    bridge.wait_for_log("summary:", Duration::from_secs(30));
    assert!(bridge.terminate().success(), "{}", bridge.log());
}
