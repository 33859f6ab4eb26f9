//! The command line (SPEC §2, §3, §4 "secrets") against the real local services:
//! configuration errors with `file:line`, `${VAR}` substitution, `MQDB_CONFIG`, `check`,
//! secrets in every output, `dlq list/show`, JSON logs, `--help` and usage errors.

mod common;

use common::{
    Bridge, Config, Db, Mosquitto, Ran, Route, TempTable, Workdir, World, free_port, letter_id,
    line_of, mqdb_at, mqdb_command, mqdb_env, pairs, path_str, terminate_ok, unique, wait_for,
    wait_for_count,
};
use mqdb::dlq::{Direction, NewDeadLetter};
use mqdb::state::State;
use serde_json::{Value as Json, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const SHARED_BROKER: &str = "mqtt://127.0.0.1:1883";

/// The MariaDB connection string without `Pwd=`, so a configured password is the only one.
const MARIA_NO_PWD: &str =
    "Driver={MariaDB Unicode};Server=127.0.0.1;Port=3306;Database=test;Uid=root;";

/// The config's state store and broker `b` (the shared Mosquitto).
fn with_broker(work: &Workdir) -> Config {
    let client_id = json!({ "client_id": unique("cli") });
    work.bare_config().broker("b", SHARED_BROKER, client_id)
}

fn base(work: &Workdir, db: &Db) -> Config {
    with_broker(work).database("d", &db.connection_string())
}

/// Inbound route `name` writing `site` (a topic level) and `v` (payload.value) into `table`.
fn site_route(name: &str, table: &str) -> Route {
    let topic = format!("cli/{}/{{site}}/+", unique("t"));
    Route::named(name)
        .set("broker", "b")
        .set("topic", topic)
        .set("database", "d")
        .set("table", table)
        .columns(&pairs("site=topic.site v=payload.value"))
}

/// A `site VARCHAR, v DOUBLE` table for [`site_route`].
fn site_table(db: &Db, prefix: &str) -> TempTable {
    let columns = match db {
        Db::Postgres => "site VARCHAR(40), v DOUBLE PRECISION",
        Db::MariaDb => "site VARCHAR(40), v DOUBLE",
        Db::Sqlite(_) => "site TEXT, v REAL",
    };
    TempTable::create(db, prefix, columns)
}

fn check(config: &Config) -> Ran {
    mqdb_at(&config.write(), &["check"])
}

/// Runs `check` on a configuration that must be rejected: exit code 2, stderr names
/// `FILE:LINE:` (the first line holding `at`) and every needle, nothing on stdout.
fn assert_config_error(config: Config, at: &str, needles: &[&str]) -> usize {
    let path = config.write();
    let line = line_of(&config.yaml(), at);
    let located = format!("{}:{line}:", path.display());
    let out = mqdb_at(&path, &["check"]);
    out.code(2).stderr_has(&[&located]).stderr_has(needles);
    assert!(out.stdout.trim().is_empty(), "no check lines\n{out}");
    line
}

/// [`assert_config_error`] for a config with `route`.
fn route_error(route: Route, at: &str, needles: &[&str]) {
    let work = Workdir::new("cli");
    assert_config_error(base(&work, &Db::Postgres).inbound(route), at, needles);
}

/// Route `r1` from broker `b` on `a/b` into table `t` of database `d`, then `changes`.
fn r1(changes: &[&str]) -> Route {
    let route = ["broker: b", "topic: a/b", "database: d", "table: t"];
    Route::named("r1").lines(&route).lines(changes)
}

#[test]
fn unknown_broker_key_names_line_and_suggests_client_id() {
    let work = Workdir::new("cli");
    let broker = json!({ "clientid": "mqdb-x" });
    let config = work.bare_config().broker("b", SHARED_BROKER, broker);
    let line = assert_config_error(config, "clientid:", &["clientid", "client_id"]);
    assert_eq!(line, 5);
}

#[test]
fn unknown_route_key_names_line_and_suggests_table() {
    let route = Route::named("r1").lines(&["broker: b", "topic: a/b", "database: d", "tabel: t"]);
    route_error(route, "tabel:", &["tabel", "`table`"]);
}

common::cases! {
    bad_qos_value_names_line: route_error(r1(&["qos: 7"]), "qos: 7", &["qos", "7"]);
    route_with_undefined_broker_names_line_and_broker:
        route_error(r1(&["broker: nosuchbroker"]), "nosuchbroker", &["nosuchbroker", "brokers"]);
    route_with_undefined_database_names_line_and_database:
        route_error(r1(&["database: nosuchdb"]), "nosuchdb", &["nosuchdb", "databases"]);
    malformed_topic_filter_names_line:
        route_error(r1(&["topic: 'a/#/b'"]), "a/#/b", &["r1", "#"]);
}

#[test]
fn unknown_mapping_source_names_line() {
    let columns = "columns: { site: topic.site, other: topic.nope, v: payload.value }";
    let route = r1(&["topic: 'a/{site}/+'", columns]);
    route_error(route, "topic.nope", &["r1", "nope"]);
}

#[test]
fn on_conflict_ignore_without_key_names_route_line() {
    let work = Workdir::new("cli");
    let config = base(&work, &Db::Postgres).inbound(r1(&["on_conflict: ignore"]));
    let (path, text) = (config.write(), config.yaml());
    let out = mqdb_at(&path, &["check"]);
    out.code(2).stderr_has(&["key", "ignore"]);
    // Either the route's first line or the on_conflict line is an exact, useful location.
    let route_line = format!("{}:{}:", path.display(), line_of(&text, "- name:"));
    let key_line = format!("{}:{}:", path.display(), line_of(&text, "on_conflict:"));
    let located = out.stderr.contains(&route_line) || out.stderr.contains(&key_line);
    assert!(located, "expected {route_line:?} or {key_line:?}\n{out}");
}

#[test]
fn unset_variable_without_default_names_line_and_variable() {
    let work = Workdir::new("cli");
    let var = unique("MQDB_UNSET").to_ascii_uppercase();
    let broker = json!({ "username": format!("${{{var}}}") });
    let config = work.bare_config().broker("b", SHARED_BROKER, broker);
    let line = assert_config_error(config, &var, &[&var, "not set"]);
    assert_eq!(line, 5);
}

#[test]
fn missing_config_file_is_a_usage_error_naming_the_file() {
    let work = Workdir::new("cli");
    let path = work.path("does-not-exist.yaml");
    let out = mqdb_at(&path, &["check"]);
    out.code(2).stderr_has(&[&path.display().to_string()]);
    // The same for the other commands: the file is read before anything else happens.
    for args in [&["run"][..], &["dlq", "list"][..]] {
        mqdb_at(&path, args).code(2);
    }
}

fn env_vars<const N: usize>(prefixes: [&str; N]) -> [String; N] {
    prefixes.map(|v| unique(v).to_ascii_uppercase())
}

/// `${VAR}` in the broker url and client id and in the connection string, and
/// `${VAR:-default}` in the state URL and the connection string, all take effect: `check`
/// passes only if the substituted values are the real ones, and fails when a variable
/// points somewhere else.
#[test]
fn env_substitution_reaches_check_end_to_end() {
    let work = Workdir::new("cli");
    let table = site_table(&Db::Postgres, "cli_env");
    let [port_var, cid_var, db_var, unset] =
        env_vars(["MQDB_T_PORT", "MQDB_T_CID", "MQDB_T_DB", "MQDB_T_UNSET"]);
    let url = format!("mqtt://127.0.0.1:${{{port_var}}}");
    let (cid, username) = (format!("${{{cid_var}}}"), format!("${{{unset}:-}}"));
    let cs = format!(
        "Driver={{PostgreSQL Unicode}};Server=127.0.0.1;Port=${{{unset}:-5432}};\
         Database=${{{db_var}}};Uid=root;"
    );
    let config = Config::at(work.path("mqdb.yaml"))
        .state(&format!("${{{unset}:-{}}}", work.store.url()))
        .broker("b", &url, json!({ "client_id": cid, "username": username }));
    let path = config
        .database("d", &cs)
        .inbound(site_route("r_env", &table.name))
        .write();
    let run = |args: &[&str], mqtt_port: &str, db: &str| {
        let cid = unique("cli_cid");
        let env = [
            (port_var.as_str(), mqtt_port),
            (&cid_var, &cid),
            (&db_var, db),
        ];
        mqdb_env(&path, args, &env)
    };

    // Given variables with the real broker port and database name, check passes
    let route = "inbound r_env";
    let out = run(&["check"], "1883", "test");
    out.code(0).route_is(route, "ok", &[&table.name]);
    // And the state URL's default is where `dlq list` opens the store
    assert!(!work.path("state.db").exists());
    let out = run(&["dlq", "list"], "1883", "test");
    assert!(work.path("state.db").exists(), "{}", out.code(0));

    // When the port variable points at a closed port, the broker fails
    let closed = free_port().to_string();
    run(&["check"], &closed, "test").fails(route, &["broker b"]);

    // When the database variable names a database that does not exist, the database fails
    run(&["check"], "1883", &unique("nodb")).fails(route, &["database d"]);
}

/// `${VAR}` in route fields (table, topic) should be substituted like everywhere else.
#[test]
fn env_substitution_in_route_table_and_topic() {
    let work = Workdir::new("cli");
    let t1 = site_table(&Db::Postgres, "cli_env1");
    let t2 = site_table(&Db::Postgres, "cli_env2");
    let [table_var, topic_var, unset] = env_vars(["MQDB_T_TABLE", "MQDB_T_TOPIC", "MQDB_T_UNSET"]);
    let topic = format!("${{{topic_var}}}/{{site}}/+");
    let with_env = site_route("r_env", &format!("${{{table_var}}}")).set("topic", topic);
    let with_default = site_route("r_default", &format!("${{{unset}:-{}}}", t2.name));
    let config = base(&work, &Db::Postgres).inbound(with_env);
    let path = config.inbound(with_default).write();
    let env = [
        (table_var.as_str(), t1.name.as_str()),
        (&topic_var, "cli_env_topic"),
    ];
    mqdb_env(&path, &["check"], &env)
        .code(0)
        .route_is("inbound r_env", "", &[&t1.name, "cli_env_topic/+/+"])
        .route_is("inbound r_default", "", &[&t2.name]);
}

#[test]
fn mqdb_config_env_selects_the_file_and_dash_c_wins() {
    let work = Workdir::new("cli");
    let sqlite = Db::Sqlite(work.path("data.db"));
    let table = site_table(&sqlite, "cli_cfg");
    let good = work.path("selected.yaml");
    let config = base(&work, &sqlite).inbound(site_route("r1", &table.name));
    config.write_to(&good);
    let bad = work.path("bad.yaml");
    std::fs::write(&bad, "brokers:\n  b:\n    urll: x\n").expect("write bad.yaml");
    let elsewhere = Workdir::new("cli"); // a working directory without mqdb.yaml
    let run = |args: &[&str], config: Option<&PathBuf>| {
        let mut cmd = mqdb_command();
        cmd.args(args).current_dir(elsewhere.dir.path());
        if let Some(config) = config {
            cmd.env("MQDB_CONFIG", config);
        }
        Ran::of(&mut cmd)
    };

    // MQDB_CONFIG alone selects the file
    run(&["check"], Some(&good))
        .code(0)
        .route_line("inbound r1");
    // -c takes precedence over MQDB_CONFIG
    run(&["-c", path_str(&good), "check"], Some(&bad)).code(0);
    // MQDB_CONFIG pointing at a bad file is what gets reported
    let bad_line = format!("{}:3:", bad.display());
    run(&["check"], Some(&bad)).code(2).stderr_has(&[&bad_line]);
    // Neither: the default mqdb.yaml in the working directory, which does not exist here
    run(&["check"], None).code(2).stderr_has(&["mqdb.yaml"]);
}

#[test]
fn check_passes_for_postgres_mariadb_and_sqlite_routes() {
    let work = Workdir::new("cli");
    let sqlite = Db::Sqlite(work.path("data.db"));
    let tables = [
        ("pg", site_table(&Db::Postgres, "cli_pg")),
        ("my", site_table(&Db::MariaDb, "cli_my")),
        ("lite", site_table(&sqlite, "cli_lite")),
    ];
    let mut config = with_broker(&work);
    for (name, table) in &tables {
        let route = site_route(&format!("r_{name}"), &table.name).set("database", *name);
        let route = match *name {
            "my" => route.set("on_conflict", "error"),
            _ => route,
        };
        config = config
            .database(name, &table.db.connection_string())
            .inbound(route);
    }
    let out = check(&config);
    let non_empty = out.code(0).stdout.lines().filter(|l| !l.trim().is_empty());
    assert_eq!(non_empty.count(), 3, "one line per route\n{out}");
    for (name, table) in &tables {
        out.route_is(&format!("inbound r_{name}"), "ok", &[&table.name]);
    }
}

#[test]
fn check_fails_naming_route_and_missing_table() {
    let work = Workdir::new("cli");
    let present = site_table(&Db::Postgres, "cli_ok");
    let missing = unique("cli_missing");
    let config = base(&work, &Db::Postgres)
        .inbound(site_route("r_present", &present.name))
        .inbound(site_route("r_missing", &missing));
    check(&config)
        .fails("inbound r_missing", &[&missing])
        // The other route is still checked and reported
        .route_is("inbound r_present", "ok", &[]);
}

#[test]
fn check_fails_naming_missing_column() {
    let work = Workdir::new("cli");
    let table = site_table(&Db::MariaDb, "cli_col");
    let columns = pairs("site=topic.site v=payload.value humidity_pct=payload.h");
    let route = site_route("r_col", &table.name).columns(&columns);
    let config = base(&work, &Db::MariaDb).inbound(route);
    check(&config).fails("inbound r_col", &["humidity_pct"]);
}

#[test]
fn check_fails_naming_unreachable_broker() {
    let work = Workdir::new("cli");
    let sqlite = Db::Sqlite(work.path("data.db"));
    let table = site_table(&sqlite, "cli_nb");
    let url = format!("mqtt://127.0.0.1:{}", free_port());
    let client_id = json!({ "client_id": unique("cli") });
    let config = work.bare_config().broker("deadbroker", &url, client_id);
    let config = config.database("d", &sqlite.connection_string());
    let config = config.inbound(site_route("r_nb", &table.name).set("broker", "deadbroker"));
    check(&config).fails("inbound r_nb", &["deadbroker"]);
}

#[test]
fn check_fails_naming_unreachable_database() {
    let work = Workdir::new("cli");
    let config =
        with_broker(&work).database("deaddb", &Db::Postgres.connection_string_via(free_port()));
    let config = config.inbound(site_route("r_nd", "whatever").set("database", "deaddb"));
    check(&config).fails("inbound r_nd", &["deaddb"]);
}

// Secrets never appear in any output

/// PostgreSQL (trust auth, so any password logs in) with `password`.
fn pg_with(password: &str) -> Json {
    json!({ "connection_string": Db::Postgres.connection_string(), "password": password })
}

fn secret() -> String {
    format!("S3cr3t-pw-{}", unique("x"))
}

/// A config with broker `b` (url, password), database `d` as `db` and route `r1` into `table`.
fn secret_config(work: &Workdir, broker: (&str, &str), db: Json, table: &str) -> Config {
    let (url, secret) = broker;
    let broker =
        json!({ "client_id": unique("cli_sec"), "username": "mqdbuser", "password": secret });
    let config = work.bare_config().broker("b", url, broker);
    config
        .set("databases", json!({ "d": db }))
        .inbound(site_route("r1", table))
}

/// MariaDB with a wrong password given as `password:`, as `password_file:` and inside the
/// connection string: a file name for each, the database entry and its secret.
fn wrong_maria_passwords(work: &Workdir) -> [(&'static str, Json, String); 3] {
    let [pw, file_pw, cs_pw] = [secret(), secret(), secret()];
    let file = work.path("db_password");
    std::fs::write(&file, format!("{file_pw}\n")).expect("write the password file");
    let maria = |key: &str, value: Json| json!({ "connection_string": MARIA_NO_PWD, key: value });
    let in_file = maria("password_file", json!(file));
    let in_cs = json!({ "connection_string": format!("{MARIA_NO_PWD}PWD={cs_pw};") });
    [
        ("password.yaml", maria("password", json!(pw)), pw),
        ("password_file.yaml", in_file, file_pw),
        ("cs.yaml", in_cs, cs_pw),
    ]
}

#[test]
fn check_never_prints_database_or_broker_passwords() {
    let work = Workdir::new("cli");
    let my = site_table(&Db::MariaDb, "cli_sec");
    let pg = site_table(&Db::Postgres, "cli_sec");
    let broker_secret = secret();

    // A wrong MariaDB password, however it is given: the connection fails with an auth
    // error, which is reported without the password
    for (name, db, db_secret) in wrong_maria_passwords(&work) {
        let config = secret_config(&work, (SHARED_BROKER, &broker_secret), db, &my.name);
        config.write_to(&work.path(name));
        mqdb_at(&work.path(name), &["check"])
            .fails("inbound r1", &["database d"])
            .never_shows(&db_secret)
            .never_shows(&broker_secret);
    }

    // A succeeding check (PostgreSQL trust auth ignores the password) prints it nowhere
    let ok_secret = secret();
    let broker = (SHARED_BROKER, broker_secret.as_str());
    let config = secret_config(&work, broker, pg_with(&ok_secret), &pg.name);
    let out = mqdb_at(&config.write(), &["-vv", "check"]);
    out.code(0).never_shows(&ok_secret);
    out.never_shows(&broker_secret);
}

#[test]
fn check_never_prints_the_broker_password_when_the_broker_fails() {
    let work = Workdir::new("cli");
    let sqlite = Db::Sqlite(work.path("data.db"));
    let table = site_table(&sqlite, "cli_bs");
    let broker_secret = secret();
    let url = format!("mqtt://127.0.0.1:{}", free_port());
    let db = json!({ "connection_string": sqlite.connection_string() });
    let config = secret_config(&work, (&url, &broker_secret), db, &table.name);
    let out = mqdb_at(&config.write(), &["-vv", "check"]);
    out.code(1).stdout_has("FAIL").never_shows(&broker_secret);
}

#[test]
fn run_never_logs_passwords() {
    let broker = Mosquitto::start();
    let work = Workdir::new("cli");
    let pg = site_table(&Db::Postgres, "cli_run_sec");
    let broker_secret = secret();
    let env = [("RUST_LOG", "warn,odbc_api=error,mqdb=trace")];
    let assert_hidden = |secret: &str, what: &str, log: &str| {
        assert!(!log.contains(secret), "{secret:?} in {what}:\n{log}");
    };

    // A succeeding run: PostgreSQL (trust) with a password, broker with a password
    let db_secret = secret();
    let db = pg_with(&db_secret);
    let config = secret_config(&work, (&broker.url(), &broker_secret), db, &pg.name);
    let mut bridge = Bridge::start_with_env(&config.write(), &env);
    bridge.wait_for_log("route ready", Duration::from_secs(60));
    bridge.wait_for_log("broker connected", Duration::from_secs(60));
    terminate_ok(&mut bridge);
    for secret in [&db_secret, &broker_secret] {
        assert_hidden(secret, "the run log", &bridge.log());
    }

    // A failing run: a wrong MariaDB password, retried and logged
    for (name, db, db_secret) in wrong_maria_passwords(&work) {
        let table = unique("cli_never");
        let path = work.path(name);
        secret_config(&work, (&broker.url(), &broker_secret), db, &table).write_to(&path);
        let mut bridge = Bridge::start_with_env(&path, &env);
        // The auth error is logged (so the path that could leak ran) ...
        bridge.wait_for_log("database unreachable", Duration::from_secs(60));
        let status = bridge.terminate();
        let log = bridge.log();
        let auth_failed = log.contains("Access denied") || log.contains("28000");
        assert!(auth_failed, "{name}: no auth failure in the log:\n{log}");
        assert!(status.success(), "{name}: {status:?}\n{log}");
        // ... without the password
        for secret in [&db_secret, &broker_secret] {
            assert_hidden(secret, &format!("the run log of {name}"), &log);
        }
    }
}

// dlq list / show, and JSON logs

#[test]
fn dlq_on_an_empty_store() {
    let work = Workdir::new("cli");
    let path = work.bare_config().write();
    mqdb_at(&path, &["dlq", "list"]).code(0).stdout_has("empty");
    let out = mqdb_at(&path, &["dlq", "list", "--json"]);
    assert_eq!(out.code(0).stdout, "", "{out}");
    // A route that is neither configured nor stored is a usage error, not "no match".
    let out = mqdb_at(&path, &["dlq", "list", "--route", "r1"]);
    out.code(2).stderr_has(&["r1"]);
    let out = mqdb_at(&path, &["dlq", "show", "999"]);
    out.code(1).stderr_has(&["999"]);
    mqdb_at(&path, &["dlq", "show", "not-a-number"]).code(2);
}

#[test]
fn malformed_message_is_listed_for_its_route_and_logs_are_json() {
    let world = World::new("cli");
    let sqlite = Db::Sqlite(world.path("data.db"));
    let table = site_table(&sqlite, "cli_dlq");
    let topic_base = format!("cli/{}", unique("dlq"));
    let route = site_route("r1", &table.name).set("topic", format!("{topic_base}/{{site}}/+"));
    let path = world.config(&sqlite).inbound(route).write();
    let mut bridge = Bridge::start_with(&path, &["--log-format", "json"], &[]);
    bridge.wait_for_log("route ready", Duration::from_secs(60));
    bridge.wait_for_log("broker connected", Duration::from_secs(60));

    // When one good and one malformed message arrive
    let topic = format!("{topic_base}/north/s1");
    let msgs = [&b"not json"[..], br#"{"value": 1.5}"#].map(|m| (topic.clone(), m.to_vec()));
    world.publisher().publish_all_confirmed(msgs.to_vec(), 1);
    let count = format!("SELECT COUNT(*) FROM {}", table.name);
    wait_for_count(&mut bridge, &sqlite, &count, 1);
    let listed = || mqdb_at(&path, &["dlq", "list", "--route", "r1", "--json"]);
    wait_for(&mut bridge, "a dead letter for r1", || {
        Ok(!listed().stdout.trim().is_empty())
    });

    // Then `dlq list --route r1` shows it, in JSON and as text
    let out = listed();
    let parse = |l: &str| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
    let letters: Vec<Json> = out.code(0).stdout.lines().map(parse).collect();
    assert_eq!(letters.len(), 1, "{out}");
    let l = &letters[0];
    let want = json!({
        "route": "r1", "direction": "inbound", "source": topic, "payload": "not json", "attempts": 1
    });
    for (key, value) in want.as_object().expect("an object") {
        assert_eq!(&l[key], value, "{key} in {l}");
    }
    for key in "id error error_kind first_failed_at last_failed_at".split(' ') {
        assert!(!l[key].is_null(), "{key} missing in {l}");
    }
    let out = mqdb_at(&path, &["dlq", "list", "--route", "r1"]);
    let listed = out.code(0).stdout_has("r1");
    assert!(!listed.stdout.contains("is empty"), "{out}");

    // And `dlq show ID` prints it
    let id = letter_id(l).to_string();
    mqdb_at(&path, &["dlq", "show", &id])
        .code(0)
        .stdout_has("not json");

    // And a route that does not exist is a usage error naming the one that does
    let out = mqdb_at(&path, &["dlq", "list", "--route", "other", "--json"]);
    assert_eq!(out.code(2).stderr_has(&["valid: r1"]).stdout, "", "{out}");
    // And a kind with no dead letters matches nothing
    let out = mqdb_at(&path, &["dlq", "list", "--error-kind", "convert"]);
    out.code(0).stdout_has("no dead letters match");

    // And every line the bridge logged is a JSON object
    terminate_ok(&mut bridge);
    let log = bridge.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    for line in &lines {
        let v: Json = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}\nlog:\n{log}"));
        assert!(v.is_object(), "{line}");
    }
    assert!(lines.len() >= 3, "expected several log lines:\n{log}");
    assert!(log.contains("route ready"), "{log}");
    // Payloads are not logged by default
    assert!(!log.contains("not json"), "payload in the log:\n{log}");
}

// Help and usage errors

#[test]
fn help_lists_the_commands() {
    for (args, commands) in [
        (&["--help"][..], &["run", "check", "dlq"][..]),
        (&["dlq", "--help"][..], &["list", "show"][..]),
    ] {
        let out = Ran::of(mqdb_command().args(args));
        out.code(0);
        for cmd in commands {
            let listed = out.stdout.lines().any(|l| l.trim_start().starts_with(cmd));
            assert!(listed, "{cmd} not listed\n{out}");
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["bogus"][..],
        &[][..],
        &["--no-such-flag", "check"][..],
        &["dlq"][..],
        &["dlq", "bogus"][..],
        &["--log-format", "xml", "check"][..],
        &["-v", "-q", "check"][..],
    ] {
        let out = Ran::of(mqdb_command().args(args));
        assert_eq!(out.code, Some(2), "{args:?}\n{out}");
        let quiet = out.stdout.is_empty() || args.is_empty();
        assert!(quiet, "{args:?}\n{out}");
    }
}

/// Runs its closure when dropped, also when the test fails.
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// A database at `cs` whose credentials come only from the username/password keys.
fn login(cs: &str, username: &str, password: &str) -> Json {
    json!({ "connection_string": cs, "username": username, "password": password })
}

#[test]
fn username_and_password_keys_log_in_on_every_driver() {
    // Given a MariaDB account whose password holds `;`, `}`, `=` and `@`, and databases
    // whose credentials come only from the username/password keys
    let password = "p;w}d=x@1";
    let user = unique("u");
    let hosts = ["%", "localhost"];
    for host in hosts {
        let account = format!("'{user}'@'{host}'");
        Db::MariaDb.exec(&format!("CREATE USER {account} IDENTIFIED BY '{password}'"));
        Db::MariaDb.exec(&format!("GRANT ALL ON test.* TO {account}"));
    }
    let _drop_user = Defer(|| {
        for host in hosts {
            let _ = Db::MariaDb.try_exec(&format!("DROP USER '{user}'@'{host}'"));
        }
    });
    let work = Workdir::new("cli");
    let sqlite = Db::Sqlite(work.path("data.db"));
    let pg = TempTable::create(&Db::Postgres, "cli_cred", "v INTEGER");
    let my = TempTable::create(&Db::MariaDb, "cli_cred", "v INTEGER");
    let lite = TempTable::create(&sqlite, "cli_cred", "v INTEGER");
    let pg_cs = "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=5432;Database=test;";
    let my_cs = "Driver={MariaDB Unicode};Server=127.0.0.1;Port=3306;Database=test;";
    let config = |my_password: &str| {
        let databases = json!({
            "pg": login(pg_cs, "root", password),
            "my": login(my_cs, &user, my_password),
            "lite": login(&sqlite.connection_string(), "nobody", password),
        });
        let mut config = with_broker(&work).set("databases", databases);
        for (db, table) in [("pg", &pg), ("my", &my), ("lite", &lite)] {
            let route = Route::inbound(&format!("r_{db}"), &format!("cli/cred/{db}"), &table.name);
            config = config.inbound(route.set("database", db));
        }
        config.write()
    };

    // When `check` connects with the right password, then with a wrong one
    let good = mqdb_at(&config(password), &["check"]);
    let bad = mqdb_at(&config("p;w}d=x@2"), &["check"]);

    // Then every driver logs in (PostgreSQL as `root`, not `{root}`), MariaDB refuses the
    // wrong password, and neither password is ever printed
    good.code(0).never_shows("p;w}d=x@");
    bad.code(1).never_shows("p;w}d=x@");
    let refused = bad.route_line("inbound r_my");
    assert!(!refused.starts_with("ok"), "{bad}");
}

#[test]
fn mqtt_url_credentials_log_in_and_never_show() {
    // Given a broker that only lets `plant` in with a password holding `@` and `:`
    let work = Workdir::new("cli");
    let passwords = work.path("passwd");
    std::fs::write(&passwords, "").unwrap();
    let add_plant = ["-b", path_str(&passwords), "plant", "s3@cr:t"];
    Ran::of(std::process::Command::new("mosquitto_passwd").args(add_plant)).code(0);
    let only_users = format!(
        "allow_anonymous false\npassword_file {}\n",
        passwords.display()
    );
    let broker = Mosquitto::start_with_extra_config(&only_users);
    let sqlite = Db::Sqlite(work.path("data.db"));
    let table = TempTable::create(&sqlite, "cli_url", "v INTEGER");
    let port = broker.port;
    let check_url = |url: String| {
        let client_id = json!({ "client_id": unique("cli_url") });
        let config = work.bare_config().broker("b", &url, client_id);
        let config = config.database("d", &sqlite.connection_string());
        check(&config.inbound(Route::inbound("r", "cli/url", &table.name)))
    };

    // When `check` runs with the credentials in the URL (percent-encoded), with a wrong
    // password, and with a mistyped scheme
    let good = check_url(format!("mqtt://plant:s3%40cr%3At@127.0.0.1:{port}"));
    let bad = check_url(format!("mqtt://plant:wr0ng@127.0.0.1:{port}"));
    let typo = check_url(format!("mqtp://plant:s3%40cr%3At@127.0.0.1:{port}"));

    // Then the right password logs in, the wrong one is refused, the typo is a config
    // error naming the URL without its password, and no password is ever printed
    good.code(0);
    bad.code(1);
    let masked = format!("mqtp://plant:***@127.0.0.1:{port}");
    assert!(typo.code(2).to_string().contains(&masked), "{typo}");
    for out in [&good, &bad, &typo] {
        out.never_shows("s3%40cr")
            .never_shows("s3@cr")
            .never_shows("wr0ng");
    }
}

#[test]
fn dlq_list_into_a_pipe_closed_early_exits_quietly() {
    // Given more dead letters than a pipe buffers
    let work = Workdir::new("cli");
    let state = work.store.url();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let store = State::open(&state).await.expect("open the store");
        let letter = |i| NewDeadLetter {
            route: "r".into(),
            direction: Direction::Inbound,
            source: "t".into(),
            payload: format!("{i:0>200}").into_bytes(),
            headers: json!({}),
            error_kind: "decode".into(),
            error: "invalid JSON".into(),
            sqlstate: None,
        };
        let letters: Vec<NewDeadLetter> = (0..2000).map(letter).collect();
        store.store_dead_letters(&letters).await.expect("store");
        store.close().await;
    });
    let config = work.bare_config().set("brokers", json!({}));
    let path = config.set("databases", json!({})).write();

    // When `dlq list --json` (and the table) are read for one line and the pipe is closed,
    // as `| head -1` does
    for args in [&["dlq", "list", "--json"][..], &["dlq", "list"][..]] {
        let mut child = mqdb_command()
            .args([&["-c", path_str(&path)], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mqdb");
        let mut first = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        std::io::BufRead::read_line(&mut stdout, &mut first).expect("read one line");
        drop(stdout);
        let out = child.wait_with_output().expect("wait for mqdb");

        // Then it exits 0 without a panic
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!first.is_empty());
    }
}
