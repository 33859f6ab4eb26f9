//! The command line (SPEC §2, §3, §4 "secrets") against the real local services:
//! configuration errors with `file:line`, `${VAR}` substitution, `MQDB_CONFIG`, `check`,
//! secrets in every output, `dlq list/show`, JSON logs, `--help` and usage errors.

mod common;

use common::{
    Bridge, Db, Mosquitto, Publisher, TempTable, free_port, mqdb_command, run_mqdb, unique,
    wait_until,
};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A private directory for one test's config, state store, logs and SQLite files.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::Builder::new()
                .prefix("mqdb-cli-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `sqlite:///ABS/state.db`
    fn state(&self) -> String {
        format!("sqlite://{}", self.path("state.db").display())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// `mqdb -c CONFIG ARGS...`
fn mqdb(config: &Path, args: &[&str]) -> Output {
    let c = config.to_str().expect("UTF-8 path");
    let mut all = vec!["-c", c];
    all.extend_from_slice(args);
    run_mqdb(&all)
}

/// 1-based line number of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in config:\n{text}"))
}

/// A PostgreSQL connection string (trust auth), quoted for YAML.
fn pg_cs() -> String {
    format!("'{}'", Db::Postgres.connection_string())
}

/// The MariaDB connection string without `Pwd=`, so a configured password is the only one.
fn maria_cs_no_pwd() -> String {
    "'Driver={MariaDB Unicode};Server=127.0.0.1;Port=3306;Database=test;Uid=root;'".to_string()
}

/// A config file with one broker `b` on `broker_url`, one database `d` and one route `r1`
/// writing `site` (topic level) and `v` (payload.value) into `table`.
fn simple_config(dir: &Dir, broker_url: &str, db_cs: &str, table: &str) -> String {
    format!(
        "state: {state}
brokers:
  b:
    url: {broker_url}
    client_id: {cid}
databases:
  d:
    connection_string: {db_cs}
inbound:
  - name: r1
    broker: b
    topic: 'cli/{topic}/{{site}}/+'
    database: d
    table: {table}
    columns:
      site: topic.site
      v: payload.value
",
        state = dir.state(),
        cid = unique("cli"),
        topic = unique("t"),
    )
}

/// Runs `check` on a configuration that must be rejected and verifies: exit code 2,
/// stderr names `FILE:LINE:` and contains every needle.
fn assert_config_error(dir: &Dir, text: &str, line: usize, needles: &[&str]) {
    let path = dir.write("mqdb.yaml", text);
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = stderr(&out);
    let located = format!("{}:{line}:", path.display());
    assert!(
        err.contains(&located),
        "expected {located:?} in stderr\nconfig:\n{text}\n{}",
        show(&out)
    );
    for n in needles {
        assert!(
            err.contains(n),
            "expected {n:?} in stderr\nconfig:\n{text}\n{}",
            show(&out)
        );
    }
    assert!(
        stdout(&out).trim().is_empty(),
        "no check lines for an invalid file\n{}",
        show(&out)
    );
}

/// Lines of `check` output that mention `route` (as `inbound ROUTE:`).
fn route_lines<'a>(out: &'a str, route: &str) -> Vec<&'a str> {
    let tag = format!("inbound {route}:");
    out.lines().filter(|l| l.contains(&tag)).collect()
}

fn assert_no_secret(secret: &str, what: &str, text: &str) {
    assert!(
        !text.contains(secret),
        "the secret {secret:?} appears in {what}:\n{text}"
    );
}

/// A `mqdb ARGS... run` with stdout and stderr appended to `log`.
struct Running {
    child: Option<Child>,
    log: PathBuf,
}

impl Running {
    fn start(config: &Path, extra: &[&str], log: PathBuf) -> Running {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        let file2 = file.try_clone().expect("clone log handle");
        let child = mqdb_command()
            .arg("-c")
            .arg(config)
            .args(extra)
            .arg("run")
            .current_dir(config.parent().expect("config dir"))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .expect("spawn mqdb");
        Running {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&self, needle: &str) {
        wait_until(
            &format!("{needle:?} in the log"),
            Duration::from_secs(60),
            || self.log().contains(needle),
        );
    }

    /// SIGTERM and wait (30 s, then SIGKILL and panic).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        for _ in 0..300 {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("mqdb ignored SIGTERM for 30 s; log:\n{}", self.log());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Bad configuration: exit 2, FILE:LINE: and the problem
// ---------------------------------------------------------------------------------------

const ROUTE_TAIL: &str = "    database: d
    table: t
";

fn config_prefix(dir: &Dir) -> String {
    format!(
        "state: {}
brokers:
  b:
    url: mqtt://127.0.0.1:1883
databases:
  d:
    connection_string: {}
",
        dir.state(),
        pg_cs()
    )
}

#[test]
fn unknown_broker_key_names_line_and_suggests_client_id() {
    let dir = Dir::new();
    let text = format!(
        "state: {}
brokers:
  b:
    url: mqtt://127.0.0.1:1883
    clientid: mqdb-x
",
        dir.state()
    );
    let line = line_of(&text, "clientid:");
    assert_eq!(line, 5);
    assert_config_error(&dir, &text, line, &["clientid", "client_id"]);
}

#[test]
fn unknown_route_key_names_line_and_suggests_table() {
    let dir = Dir::new();
    let text = format!(
        "{}inbound:
  - name: r1
    broker: b
    topic: a/b
    database: d
    tabel: t
",
        config_prefix(&dir)
    );
    let line = line_of(&text, "tabel:");
    assert_config_error(&dir, &text, line, &["tabel", "`table`"]);
}

#[test]
fn bad_qos_value_names_line() {
    let dir = Dir::new();
    let text = format!(
        "{}inbound:
  - name: r1
    broker: b
    topic: a/b
    qos: 7
{ROUTE_TAIL}",
        config_prefix(&dir)
    );
    let line = line_of(&text, "qos: 7");
    assert_config_error(&dir, &text, line, &["qos", "7"]);
}

#[test]
fn route_with_undefined_broker_names_line_and_broker() {
    let dir = Dir::new();
    let text = format!(
        "{}inbound:
  - name: r1
    broker: nosuchbroker
    topic: a/b
{ROUTE_TAIL}",
        config_prefix(&dir)
    );
    let line = line_of(&text, "broker: nosuchbroker");
    assert_config_error(&dir, &text, line, &["nosuchbroker", "brokers"]);
}

#[test]
fn route_with_undefined_database_names_line_and_database() {
    let dir = Dir::new();
    let text = format!(
        "{}inbound:
  - name: r1
    broker: b
    topic: a/b
    database: nosuchdb
    table: t
",
        config_prefix(&dir)
    );
    let line = line_of(&text, "database: nosuchdb");
    assert_config_error(&dir, &text, line, &["nosuchdb", "databases"]);
}

#[test]
fn malformed_topic_filter_names_line() {
    let dir = Dir::new();
    let text = format!(
        "{}inbound:
  - name: r1
    broker: b
    topic: 'a/#/b'
{ROUTE_TAIL}",
        config_prefix(&dir)
    );
    let line = line_of(&text, "topic: 'a/#/b'");
    assert_config_error(&dir, &text, line, &["r1", "#"]);
}

#[test]
fn unknown_mapping_source_names_line() {
    let dir = Dir::new();
    let text = format!(
        "{}inbound:
  - name: r1
    broker: b
    topic: 'a/{{site}}/+'
{ROUTE_TAIL}    columns:
      site: topic.site
      other: topic.nope
      v: payload.value
",
        config_prefix(&dir)
    );
    let line = line_of(&text, "topic.nope");
    assert_config_error(&dir, &text, line, &["r1", "nope"]);
}

#[test]
fn on_conflict_ignore_without_key_names_route_line() {
    let dir = Dir::new();
    let text = format!(
        "{}inbound:
  - name: r1
    broker: b
    topic: a/b
{ROUTE_TAIL}    on_conflict: ignore
",
        config_prefix(&dir)
    );
    let path = dir.write("mqdb.yaml", &text);
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = stderr(&out);
    // Either the route's first line or the on_conflict line is an exact, useful location.
    let route_line = format!("{}:{}:", path.display(), line_of(&text, "- name: r1"));
    let key_line = format!("{}:{}:", path.display(), line_of(&text, "on_conflict:"));
    assert!(
        err.contains(&route_line) || err.contains(&key_line),
        "expected {route_line:?} or {key_line:?}\n{}",
        show(&out)
    );
    assert!(err.contains("key"), "{}", show(&out));
    assert!(err.contains("ignore"), "{}", show(&out));
}

#[test]
fn unset_variable_without_default_names_line_and_variable() {
    let dir = Dir::new();
    let var = unique("MQDB_UNSET").to_ascii_uppercase();
    let text = format!(
        "state: {}
brokers:
  b:
    url: mqtt://127.0.0.1:1883
    username: '${{{var}}}'
",
        dir.state()
    );
    let line = line_of(&text, &var);
    assert_eq!(line, 5);
    assert_config_error(&dir, &text, line, &[&var, "not set"]);
}

#[test]
fn missing_config_file_is_a_usage_error_naming_the_file() {
    let dir = Dir::new();
    let path = dir.path("does-not-exist.yaml");
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        stderr(&out).contains(&path.display().to_string()),
        "{}",
        show(&out)
    );
    // The same for the other commands: the file is read before anything else happens.
    for args in [&["run"][..], &["dlq", "list"][..]] {
        let out = mqdb(&path, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{}", show(&out));
    }
}

// ---------------------------------------------------------------------------------------
// 2. ${VAR} substitution and MQDB_CONFIG
// ---------------------------------------------------------------------------------------

/// `${VAR}` in the broker url and client id and in the connection string, and
/// `${VAR:-default}` in the state URL and the connection string, all take effect: `check`
/// passes only if the substituted values are the real ones, and fails when a variable
/// points somewhere else.
#[test]
fn env_substitution_reaches_check_end_to_end() {
    let dir = Dir::new();
    let table = TempTable::create(
        &Db::Postgres,
        "cli_env",
        "site VARCHAR(40), v DOUBLE PRECISION",
    );
    let port_var = unique("MQDB_T_MQTT_PORT").to_ascii_uppercase();
    let cid_var = unique("MQDB_T_CID").to_ascii_uppercase();
    let db_var = unique("MQDB_T_DB").to_ascii_uppercase();
    let unset_var = unique("MQDB_T_UNSET").to_ascii_uppercase();
    let text = format!(
        "state: '${{{unset_var}:-{state}}}'
brokers:
  b:
    url: 'mqtt://127.0.0.1:${{{port_var}}}'
    client_id: '${{{cid_var}}}'
    username: '${{{unset_var}:-}}'
databases:
  d:
    connection_string: 'Driver={{PostgreSQL Unicode}};Server=127.0.0.1;Port=${{{unset_var}:-5432}};Database=${{{db_var}}};Uid=root;'
inbound:
  - name: r_env
    broker: b
    topic: 'cli/{{site}}/+'
    database: d
    table: {table}
    columns: {{ site: topic.site, v: payload.value }}
",
        state = dir.state(),
        table = table.name,
    );
    let path = dir.write("mqdb.yaml", &text);
    let run = |mqtt_port: &str, db: &str| {
        mqdb_command()
            .arg("-c")
            .arg(&path)
            .arg("check")
            .env(&port_var, mqtt_port)
            .env(&cid_var, unique("cli_cid"))
            .env(&db_var, db)
            .env_remove(&unset_var)
            .stdin(Stdio::null())
            .output()
            .expect("run mqdb")
    };

    // Given variables with the real broker port and database name, check passes
    let out = run("1883", "test");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s = stdout(&out);
    let lines = route_lines(&s, "r_env");
    assert_eq!(lines.len(), 1, "{}", show(&out));
    assert!(lines[0].starts_with("ok"), "{}", show(&out));
    assert!(lines[0].contains(&table.name), "{}", show(&out));
    // And the state URL's default is where `dlq list` opens the store
    assert!(!dir.path("state.db").exists());
    let out = mqdb_command()
        .arg("-c")
        .arg(&path)
        .args(["dlq", "list"])
        .env(&port_var, "1883")
        .env(&cid_var, "x")
        .env(&db_var, "test")
        .env_remove(&unset_var)
        .stdin(Stdio::null())
        .output()
        .expect("run mqdb");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(dir.path("state.db").exists(), "{}", show(&out));

    // When the port variable points at a closed port, the broker fails
    let closed = free_port().to_string();
    let out = run(&closed, "test");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let s = stdout(&out);
    let lines = route_lines(&s, "r_env");
    assert!(
        lines.len() == 1 && lines[0].starts_with("FAIL") && lines[0].contains("broker b"),
        "{}",
        show(&out)
    );

    // When the database variable names a database that does not exist, the database fails
    let out = run("1883", &unique("nodb"));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let s = stdout(&out);
    let lines = route_lines(&s, "r_env");
    assert!(
        lines.len() == 1 && lines[0].starts_with("FAIL") && lines[0].contains("database d"),
        "{}",
        show(&out)
    );
}

/// `${VAR}` in route fields (table, topic) should be substituted like everywhere else.
#[test]
fn env_substitution_in_route_table_and_topic() {
    let dir = Dir::new();
    let t1 = TempTable::create(
        &Db::Postgres,
        "cli_env1",
        "site VARCHAR(40), v DOUBLE PRECISION",
    );
    let t2 = TempTable::create(
        &Db::Postgres,
        "cli_env2",
        "site VARCHAR(40), v DOUBLE PRECISION",
    );
    let table_var = unique("MQDB_T_TABLE").to_ascii_uppercase();
    let topic_var = unique("MQDB_T_TOPIC").to_ascii_uppercase();
    let unset_var = unique("MQDB_T_UNSET").to_ascii_uppercase();
    let text = format!(
        "state: {state}
brokers:
  b: {{ url: 'mqtt://127.0.0.1:1883', client_id: {cid} }}
databases:
  d: {{ connection_string: {cs} }}
inbound:
  - name: r_env
    broker: b
    topic: '${{{topic_var}}}/{{site}}/+'
    database: d
    table: '${{{table_var}}}'
    columns: {{ site: topic.site, v: payload.value }}
  - name: r_default
    broker: b
    topic: 'cli2/{{site}}/+'
    database: d
    table: '${{{unset_var}:-{t2}}}'
    columns: {{ site: topic.site, v: payload.value }}
",
        state = dir.state(),
        cid = unique("cli"),
        cs = pg_cs(),
        t2 = t2.name,
    );
    let path = dir.write("mqdb.yaml", &text);
    let out = mqdb_command()
        .arg("-c")
        .arg(&path)
        .arg("check")
        .env(&table_var, &t1.name)
        .env(&topic_var, "cli_env_topic")
        .env_remove(&unset_var)
        .stdin(Stdio::null())
        .output()
        .expect("run mqdb");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s = stdout(&out);
    let env_line = route_lines(&s, "r_env");
    assert_eq!(env_line.len(), 1, "{}", show(&out));
    assert!(env_line[0].contains(&t1.name), "{}", show(&out));
    assert!(env_line[0].contains("cli_env_topic/+/+"), "{}", show(&out));
    let default_line = route_lines(&s, "r_default");
    assert_eq!(default_line.len(), 1, "{}", show(&out));
    assert!(default_line[0].contains(&t2.name), "{}", show(&out));
}

#[test]
fn mqdb_config_env_selects_the_file_and_dash_c_wins() {
    let dir = Dir::new();
    let sqlite = Db::Sqlite(dir.path("data.db"));
    let table = TempTable::create(&sqlite, "cli_cfg", "site TEXT, v REAL");
    let text = simple_config(
        &dir,
        "mqtt://127.0.0.1:1883",
        &format!("'{}'", sqlite.connection_string()),
        &table.name,
    );
    let good = dir.write("selected.yaml", &text);
    let bad = dir.write("bad.yaml", "brokers:\n  b:\n    urll: x\n");
    let elsewhere = Dir::new(); // a working directory without mqdb.yaml

    // MQDB_CONFIG alone selects the file
    let out = mqdb_command()
        .arg("check")
        .env("MQDB_CONFIG", &good)
        .current_dir(elsewhere.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run mqdb");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let lines = route_lines(&stdout(&out), "r1").len();
    assert_eq!(lines, 1, "{}", show(&out));

    // -c takes precedence over MQDB_CONFIG
    let out = mqdb_command()
        .arg("-c")
        .arg(&good)
        .arg("check")
        .env("MQDB_CONFIG", &bad)
        .current_dir(elsewhere.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run mqdb");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    // MQDB_CONFIG pointing at a bad file is what gets reported
    let out = mqdb_command()
        .arg("check")
        .env("MQDB_CONFIG", &bad)
        .current_dir(elsewhere.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run mqdb");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        stderr(&out).contains(&format!("{}:3:", bad.display())),
        "{}",
        show(&out)
    );

    // Neither: the default mqdb.yaml in the working directory, which does not exist here
    let out = mqdb_command()
        .arg("check")
        .current_dir(elsewhere.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run mqdb");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).contains("mqdb.yaml"), "{}", show(&out));
}

// ---------------------------------------------------------------------------------------
// 3. check
// ---------------------------------------------------------------------------------------

#[test]
fn check_passes_for_postgres_mariadb_and_sqlite_routes() {
    let dir = Dir::new();
    let sqlite = Db::Sqlite(dir.path("data.db"));
    let pg = TempTable::create(
        &Db::Postgres,
        "cli_pg",
        "site VARCHAR(40), v DOUBLE PRECISION",
    );
    let my = TempTable::create(&Db::MariaDb, "cli_my", "site VARCHAR(40), v DOUBLE");
    let lite = TempTable::create(&sqlite, "cli_lite", "site TEXT, v REAL");
    let text = format!(
        "state: {state}
brokers:
  b:
    url: mqtt://127.0.0.1:1883
    client_id: {cid}
databases:
  pg:
    connection_string: {pg_cs}
  my:
    connection_string: '{my_cs}'
  lite:
    connection_string: '{lite_cs}'
inbound:
  - name: r_pg
    broker: b
    topic: 'cli/pg/{{site}}/+'
    database: pg
    table: {pg_t}
    columns: {{ site: topic.site, v: payload.value }}
  - name: r_my
    broker: b
    topic: 'cli/my/{{site}}/+'
    database: my
    table: {my_t}
    columns: {{ site: topic.site, v: payload.value }}
    on_conflict: error
  - name: r_lite
    broker: b
    topic: 'cli/lite/{{site}}/+'
    database: lite
    table: {lite_t}
    columns: {{ site: topic.site, v: payload.value }}
",
        state = dir.state(),
        cid = unique("cli_check"),
        pg_cs = pg_cs(),
        my_cs = Db::MariaDb.connection_string(),
        lite_cs = sqlite.connection_string(),
        pg_t = pg.name,
        my_t = my.name,
        lite_t = lite.name,
    );
    let path = dir.write("mqdb.yaml", &text);
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s = stdout(&out);
    let non_empty: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(non_empty.len(), 3, "one line per route\n{}", show(&out));
    for (route, table) in [
        ("r_pg", &pg.name),
        ("r_my", &my.name),
        ("r_lite", &lite.name),
    ] {
        let lines = route_lines(&s, route);
        assert_eq!(lines.len(), 1, "{route}\n{}", show(&out));
        assert!(lines[0].starts_with("ok"), "{route}\n{}", show(&out));
        assert!(lines[0].contains(table.as_str()), "{route}\n{}", show(&out));
    }
}

#[test]
fn check_fails_naming_route_and_missing_table() {
    let dir = Dir::new();
    let present = TempTable::create(
        &Db::Postgres,
        "cli_ok",
        "site VARCHAR(40), v DOUBLE PRECISION",
    );
    let missing = unique("cli_missing");
    let text = format!(
        "state: {state}
brokers:
  b: {{ url: 'mqtt://127.0.0.1:1883', client_id: {cid} }}
databases:
  d: {{ connection_string: {cs} }}
inbound:
  - name: r_present
    broker: b
    topic: 'cli/a/{{site}}/+'
    database: d
    table: {present}
    columns: {{ site: topic.site, v: payload.value }}
  - name: r_missing
    broker: b
    topic: 'cli/b/{{site}}/+'
    database: d
    table: {missing}
    columns: {{ site: topic.site, v: payload.value }}
",
        state = dir.state(),
        cid = unique("cli"),
        cs = pg_cs(),
        present = present.name,
    );
    let path = dir.write("mqdb.yaml", &text);
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let s = stdout(&out);
    let bad = route_lines(&s, "r_missing");
    assert_eq!(bad.len(), 1, "{}", show(&out));
    assert!(bad[0].starts_with("FAIL"), "{}", show(&out));
    assert!(bad[0].contains(&missing), "{}", show(&out));
    // The other route is still checked and reported
    let good = route_lines(&s, "r_present");
    assert_eq!(good.len(), 1, "{}", show(&out));
    assert!(good[0].starts_with("ok"), "{}", show(&out));
}

#[test]
fn check_fails_naming_missing_column() {
    let dir = Dir::new();
    let table = TempTable::create(&Db::MariaDb, "cli_col", "site VARCHAR(40), v DOUBLE");
    let text = format!(
        "state: {state}
brokers:
  b: {{ url: 'mqtt://127.0.0.1:1883', client_id: {cid} }}
databases:
  d: {{ connection_string: '{cs}' }}
inbound:
  - name: r_col
    broker: b
    topic: 'cli/{{site}}/+'
    database: d
    table: {table}
    columns:
      site: topic.site
      v: payload.value
      humidity_pct: payload.h
",
        state = dir.state(),
        cid = unique("cli"),
        cs = Db::MariaDb.connection_string(),
        table = table.name,
    );
    let path = dir.write("mqdb.yaml", &text);
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let s = stdout(&out);
    let lines = route_lines(&s, "r_col");
    assert_eq!(lines.len(), 1, "{}", show(&out));
    assert!(lines[0].starts_with("FAIL"), "{}", show(&out));
    assert!(lines[0].contains("humidity_pct"), "{}", show(&out));
}

#[test]
fn check_fails_naming_unreachable_broker() {
    let dir = Dir::new();
    let sqlite = Db::Sqlite(dir.path("data.db"));
    let table = TempTable::create(&sqlite, "cli_nb", "site TEXT, v REAL");
    let port = free_port();
    let text = format!(
        "state: {state}
brokers:
  deadbroker: {{ url: 'mqtt://127.0.0.1:{port}', client_id: {cid} }}
databases:
  d: {{ connection_string: '{cs}' }}
inbound:
  - name: r_nb
    broker: deadbroker
    topic: 'cli/{{site}}/+'
    database: d
    table: {table}
    columns: {{ site: topic.site, v: payload.value }}
",
        state = dir.state(),
        cid = unique("cli"),
        cs = sqlite.connection_string(),
        table = table.name,
    );
    let path = dir.write("mqdb.yaml", &text);
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let s = stdout(&out);
    let lines = route_lines(&s, "r_nb");
    assert_eq!(lines.len(), 1, "{}", show(&out));
    assert!(lines[0].starts_with("FAIL"), "{}", show(&out));
    assert!(lines[0].contains("deadbroker"), "{}", show(&out));
}

#[test]
fn check_fails_naming_unreachable_database() {
    let dir = Dir::new();
    let port = free_port();
    let text = format!(
        "state: {state}
brokers:
  b: {{ url: 'mqtt://127.0.0.1:1883', client_id: {cid} }}
databases:
  deaddb: {{ connection_string: '{cs}' }}
inbound:
  - name: r_nd
    broker: b
    topic: 'cli/{{site}}/+'
    database: deaddb
    table: whatever
    columns: {{ site: topic.site, v: payload.value }}
",
        state = dir.state(),
        cid = unique("cli"),
        cs = Db::Postgres.connection_string_via(port),
    );
    let path = dir.write("mqdb.yaml", &text);
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let s = stdout(&out);
    let lines = route_lines(&s, "r_nd");
    assert_eq!(lines.len(), 1, "{}", show(&out));
    assert!(lines[0].starts_with("FAIL"), "{}", show(&out));
    assert!(lines[0].contains("deaddb"), "{}", show(&out));
}

// ---------------------------------------------------------------------------------------
// 4. Secrets never appear in any output
// ---------------------------------------------------------------------------------------

fn secret() -> String {
    format!("S3cr3t-pw-{}", unique("x"))
}

/// A config with broker `b` (username + `broker_secret`) and database `d`, whose block is
/// `db_block` (indented by 4), and route `r1` into `table`.
fn secret_config(
    dir: &Dir,
    broker_url: &str,
    broker_secret: &str,
    db_block: &str,
    table: &str,
) -> String {
    format!(
        "state: {state}
brokers:
  b:
    url: {broker_url}
    client_id: {cid}
    username: mqdbuser
    password: '{broker_secret}'
databases:
  d:
{db_block}
inbound:
  - name: r1
    broker: b
    topic: 'cli/{topic}/{{site}}/+'
    database: d
    table: {table}
    columns: {{ site: topic.site, v: payload.value }}
",
        state = dir.state(),
        cid = unique("cli_sec"),
        topic = unique("t"),
    )
}

#[test]
fn check_never_prints_database_or_broker_passwords() {
    let dir = Dir::new();
    let my = TempTable::create(&Db::MariaDb, "cli_sec", "site VARCHAR(40), v DOUBLE");
    let pg = TempTable::create(
        &Db::Postgres,
        "cli_sec",
        "site VARCHAR(40), v DOUBLE PRECISION",
    );
    let broker_secret = secret();

    // A wrong MariaDB password given as `password:`: the connection fails with an auth
    // error, which is reported without the password
    let db_secret = secret();
    let text = secret_config(
        &dir,
        "mqtt://127.0.0.1:1883",
        &broker_secret,
        &format!(
            "    connection_string: {}\n    password: '{db_secret}'",
            maria_cs_no_pwd()
        ),
        &my.name,
    );
    let path = dir.write("password.yaml", &text);
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let s = stdout(&out);
    let lines = route_lines(&s, "r1");
    assert_eq!(lines.len(), 1, "{}", show(&out));
    assert!(
        lines[0].starts_with("FAIL") && lines[0].contains("database d"),
        "{}",
        show(&out)
    );
    for (what, s) in [("stdout", stdout(&out)), ("stderr", stderr(&out))] {
        assert_no_secret(&db_secret, what, &s);
        assert_no_secret(&broker_secret, what, &s);
    }

    // The same with `password_file:`
    let file_secret = secret();
    let pw_file = dir.write("db_password", &format!("{file_secret}\n"));
    let text = secret_config(
        &dir,
        "mqtt://127.0.0.1:1883",
        &broker_secret,
        &format!(
            "    connection_string: {}\n    password_file: '{}'",
            maria_cs_no_pwd(),
            pw_file.display()
        ),
        &my.name,
    );
    let path = dir.write("password_file.yaml", &text);
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stdout(&out).contains("FAIL"), "{}", show(&out));
    for (what, s) in [("stdout", stdout(&out)), ("stderr", stderr(&out))] {
        assert_no_secret(&file_secret, what, &s);
        assert_no_secret(&broker_secret, what, &s);
    }

    // A password inside the connection string itself
    let cs_secret = secret();
    let text = secret_config(
        &dir,
        "mqtt://127.0.0.1:1883",
        &broker_secret,
        &format!(
            "    connection_string: 'Driver={{MariaDB Unicode}};Server=127.0.0.1;Port=3306;Database=test;Uid=root;PWD={cs_secret};'"
        ),
        &my.name,
    );
    let path = dir.write("cs.yaml", &text);
    let out = mqdb(&path, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stdout(&out).contains("FAIL"), "{}", show(&out));
    for (what, s) in [("stdout", stdout(&out)), ("stderr", stderr(&out))] {
        assert_no_secret(&cs_secret, what, &s);
        assert_no_secret(&broker_secret, what, &s);
    }

    // A succeeding check (PostgreSQL trust auth ignores the password) prints it nowhere
    let ok_secret = secret();
    let text = secret_config(
        &dir,
        "mqtt://127.0.0.1:1883",
        &broker_secret,
        &format!(
            "    connection_string: {}\n    password: '{ok_secret}'",
            pg_cs()
        ),
        &pg.name,
    );
    let path = dir.write("ok.yaml", &text);
    let out = mqdb(&path, &["-vv", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    for (what, s) in [("stdout", stdout(&out)), ("stderr", stderr(&out))] {
        assert_no_secret(&ok_secret, what, &s);
        assert_no_secret(&broker_secret, what, &s);
    }
}

#[test]
fn check_never_prints_the_broker_password_when_the_broker_fails() {
    let dir = Dir::new();
    let sqlite = Db::Sqlite(dir.path("data.db"));
    let table = TempTable::create(&sqlite, "cli_bs", "site TEXT, v REAL");
    let broker_secret = secret();
    let text = secret_config(
        &dir,
        &format!("mqtt://127.0.0.1:{}", free_port()),
        &broker_secret,
        &format!("    connection_string: '{}'", sqlite.connection_string()),
        &table.name,
    );
    let path = dir.write("mqdb.yaml", &text);
    let out = mqdb(&path, &["-vv", "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stdout(&out).contains("FAIL"), "{}", show(&out));
    for (what, s) in [("stdout", stdout(&out)), ("stderr", stderr(&out))] {
        assert_no_secret(&broker_secret, what, &s);
    }
}

#[test]
fn run_never_logs_passwords() {
    let broker = Mosquitto::start();
    let dir = Dir::new();
    let pg = TempTable::create(
        &Db::Postgres,
        "cli_run_sec",
        "site VARCHAR(40), v DOUBLE PRECISION",
    );
    let broker_secret = secret();

    // A succeeding run: PostgreSQL (trust) with a password, broker with a password
    let db_secret = secret();
    let text = secret_config(
        &dir,
        &broker.url(),
        &broker_secret,
        &format!(
            "    connection_string: {}\n    password: '{db_secret}'",
            pg_cs()
        ),
        &pg.name,
    );
    let path = dir.write("ok.yaml", &text);
    let mut bridge =
        Bridge::start_with_env(&path, &[("RUST_LOG", "warn,odbc_api=error,mqdb=trace")]);
    bridge.wait_for_log("route ready", Duration::from_secs(60));
    bridge.wait_for_log("broker connected", Duration::from_secs(60));
    let status = bridge.terminate();
    assert!(status.success(), "{status:?}\n{}", bridge.log());
    let log = bridge.log();
    assert_no_secret(&db_secret, "the run log", &log);
    assert_no_secret(&broker_secret, "the run log", &log);

    // A failing run: a wrong MariaDB password, retried and logged
    for (name, db_block, db_secret) in {
        let pw = secret();
        let file_pw = secret();
        let cs_pw = secret();
        let file = dir.write("pw", &format!("{file_pw}\n"));
        vec![
            (
                "password.yaml",
                format!(
                    "    connection_string: {}\n    password: '{pw}'",
                    maria_cs_no_pwd()
                ),
                pw,
            ),
            (
                "password_file.yaml",
                format!(
                    "    connection_string: {}\n    password_file: '{}'",
                    maria_cs_no_pwd(),
                    file.display()
                ),
                file_pw,
            ),
            (
                "cs.yaml",
                format!(
                    "    connection_string: 'Driver={{MariaDB Unicode}};Server=127.0.0.1;Port=3306;Database=test;Uid=root;PWD={cs_pw};'"
                ),
                cs_pw,
            ),
        ]
    } {
        let table = unique("cli_never");
        let text = secret_config(&dir, &broker.url(), &broker_secret, &db_block, &table);
        let path = dir.write(name, &text);
        let mut bridge =
            Bridge::start_with_env(&path, &[("RUST_LOG", "warn,odbc_api=error,mqdb=trace")]);
        // The auth error is logged (so the path that could leak ran) ...
        bridge.wait_for_log("database unreachable", Duration::from_secs(60));
        let status = bridge.terminate();
        let log = bridge.log();
        assert!(
            log.contains("Access denied") || log.contains("28000"),
            "{name}: expected the auth failure in the log:\n{log}"
        );
        assert!(status.success(), "{name}: {status:?}\n{log}");
        // ... without the password
        assert_no_secret(&db_secret, &format!("the run log of {name}"), &log);
        assert_no_secret(&broker_secret, &format!("the run log of {name}"), &log);
    }
}

// ---------------------------------------------------------------------------------------
// 5. dlq list / show, and JSON logs
// ---------------------------------------------------------------------------------------

#[test]
fn dlq_on_an_empty_store() {
    let dir = Dir::new();
    let path = dir.write("mqdb.yaml", &format!("state: {}\n", dir.state()));

    let out = mqdb(&path, &["dlq", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stdout(&out).contains("empty"), "{}", show(&out));

    let out = mqdb(&path, &["dlq", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(stdout(&out), "", "{}", show(&out));

    // A route that is neither configured nor stored is a usage error, not "no match".
    let out = mqdb(&path, &["dlq", "list", "--route", "r1"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).contains("r1"), "{}", show(&out));

    let out = mqdb(&path, &["dlq", "show", "999"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("999"), "{}", show(&out));

    let out = mqdb(&path, &["dlq", "show", "not-a-number"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

#[test]
fn malformed_message_is_listed_for_its_route_and_logs_are_json() {
    let broker = Mosquitto::start();
    let dir = Dir::new();
    let sqlite = Db::Sqlite(dir.path("data.db"));
    let table = TempTable::create(&sqlite, "cli_dlq", "site TEXT, v REAL");
    let topic_base = format!("cli/{}", unique("dlq"));
    let text = format!(
        "state: {state}
brokers:
  b: {{ url: '{url}', client_id: {cid} }}
databases:
  d: {{ connection_string: '{cs}' }}
inbound:
  - name: r1
    broker: b
    topic: '{topic_base}/{{site}}/+'
    database: d
    table: {table}
    columns: {{ site: topic.site, v: payload.value }}
",
        state = dir.state(),
        url = broker.url(),
        cid = unique("cli_dlq"),
        cs = sqlite.connection_string(),
        table = table.name,
    );
    let path = dir.write("mqdb.yaml", &text);
    let mut bridge = Running::start(&path, &["--log-format", "json"], dir.path("run.log"));
    bridge.wait_for_log("route ready");
    bridge.wait_for_log("broker connected");

    // When one good and one malformed message arrive
    let publisher = Publisher::connect(broker.port);
    let topic = format!("{topic_base}/north/s1");
    publisher.publish_all_confirmed(
        vec![
            (topic.clone(), b"not json".to_vec()),
            (topic.clone(), br#"{"value": 1.5}"#.to_vec()),
        ],
        1,
    );
    wait_until("the good row", Duration::from_secs(60), || {
        table.count() == 1
    });
    let listed = || mqdb(&path, &["dlq", "list", "--route", "r1", "--json"]);
    wait_until("a dead letter for r1", Duration::from_secs(60), || {
        !stdout(&listed()).trim().is_empty()
    });

    // Then `dlq list --route r1` shows it, in JSON and as text
    let out = listed();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s = stdout(&out);
    let letters: Vec<serde_json::Value> = s
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(letters.len(), 1, "{s}");
    let l = &letters[0];
    assert_eq!(l["route"], "r1", "{l}");
    assert_eq!(l["direction"], "inbound", "{l}");
    assert_eq!(l["source"], topic.as_str(), "{l}");
    assert_eq!(l["payload"], "not json", "{l}");
    assert_eq!(l["attempts"], 1, "{l}");
    for key in [
        "id",
        "error",
        "error_kind",
        "first_failed_at",
        "last_failed_at",
    ] {
        assert!(!l[key].is_null(), "{key} missing in {l}");
    }
    let out = mqdb(&path, &["dlq", "list", "--route", "r1"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stdout(&out).contains("r1"), "{}", show(&out));
    assert!(!stdout(&out).contains("is empty"), "{}", show(&out));

    // And `dlq show ID` prints it
    let id = l["id"].as_i64().expect("numeric id").to_string();
    let out = mqdb(&path, &["dlq", "show", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stdout(&out).contains("not json"), "{}", show(&out));

    // And a route that does not exist is a usage error naming the one that does
    let out = mqdb(&path, &["dlq", "list", "--route", "other", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(stdout(&out), "", "{}", show(&out));
    assert!(stderr(&out).contains("valid: r1"), "{}", show(&out));
    // And a kind with no dead letters matches nothing
    let out = mqdb(&path, &["dlq", "list", "--error-kind", "convert"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        stdout(&out).contains("no dead letters match"),
        "{}",
        show(&out)
    );

    // And every line the bridge logged is a JSON object
    let status = bridge.terminate();
    assert!(status.success(), "{status:?}\n{}", bridge.log());
    let log = bridge.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}\nlog:\n{log}"));
        assert!(v.is_object(), "{line}");
        lines += 1;
    }
    assert!(lines >= 3, "expected several log lines:\n{log}");
    assert!(log.contains("route ready"), "{log}");
    // Payloads are not logged by default
    assert!(!log.contains("not json"), "payload in the log:\n{log}");
}

// ---------------------------------------------------------------------------------------
// 6. Help and usage errors
// ---------------------------------------------------------------------------------------

#[test]
fn help_lists_the_commands() {
    let out = run_mqdb(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s = stdout(&out);
    for cmd in ["run", "check", "dlq"] {
        assert!(
            s.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} not listed\n{s}"
        );
    }
    let out = run_mqdb(&["dlq", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s = stdout(&out);
    for cmd in ["list", "show"] {
        assert!(
            s.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} not listed\n{s}"
        );
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
        let out = run_mqdb(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{}", show(&out));
        assert!(
            stdout(&out).is_empty() || args.is_empty(),
            "{args:?}\n{}",
            show(&out)
        );
    }
}

/// A MariaDB account with a password that the connection-string grammar must brace, dropped
/// when the test ends.
struct MariaDbUser {
    name: String,
}

impl MariaDbUser {
    fn create(password: &str) -> MariaDbUser {
        let name = unique("u");
        for host in ["%", "localhost"] {
            Db::MariaDb.exec(&format!(
                "CREATE USER '{name}'@'{host}' IDENTIFIED BY '{password}'"
            ));
            Db::MariaDb.exec(&format!("GRANT ALL ON test.* TO '{name}'@'{host}'"));
        }
        MariaDbUser { name }
    }
}

impl Drop for MariaDbUser {
    fn drop(&mut self) {
        for host in ["%", "localhost"] {
            let _ = Db::MariaDb.try_exec(&format!("DROP USER '{}'@'{host}'", self.name));
        }
    }
}

#[test]
fn username_and_password_keys_log_in_on_every_driver() {
    // Given a MariaDB account whose password holds `;`, `}`, `=` and `@`, and databases
    // whose credentials come only from the username/password keys
    let password = "p;w}d=x@1";
    let account = MariaDbUser::create(password);
    let dir = Dir::new();
    let sqlite = Db::Sqlite(dir.path("data.db"));
    let pg = TempTable::create(&Db::Postgres, "cli_cred", "v INTEGER");
    let my = TempTable::create(&Db::MariaDb, "cli_cred", "v INTEGER");
    let lite = TempTable::create(&sqlite, "cli_cred", "v INTEGER");
    let config = |my_password: &str| {
        let text = format!(
            "state: {state}
brokers:
  b: {{ url: 'mqtt://127.0.0.1:1883', client_id: {cid} }}
databases:
  pg:
    connection_string: 'Driver={{PostgreSQL Unicode}};Server=127.0.0.1;Port=5432;Database=test;'
    username: root
    password: '{password}'
  my:
    connection_string: 'Driver={{MariaDB Unicode}};Server=127.0.0.1;Port=3306;Database=test;'
    username: {user}
    password: '{my_password}'
  lite:
    connection_string: '{lite_cs}'
    username: nobody
    password: '{password}'
inbound:
  - {{ name: r_pg, broker: b, topic: cli/cred/pg, database: pg, table: {pg_t} }}
  - {{ name: r_my, broker: b, topic: cli/cred/my, database: my, table: {my_t} }}
  - {{ name: r_lite, broker: b, topic: cli/cred/lite, database: lite, table: {lite_t} }}
",
            state = dir.state(),
            cid = unique("cli_cred"),
            user = account.name,
            lite_cs = sqlite.connection_string(),
            pg_t = pg.name,
            my_t = my.name,
            lite_t = lite.name,
        );
        dir.write("mqdb.yaml", &text)
    };

    // When `check` connects with the right password, then with a wrong one
    let good = mqdb(&config(password), &["check"]);
    let bad = mqdb(&config("p;w}d=x@2"), &["check"]);

    // Then every driver logs in (PostgreSQL as `root`, not `{root}`), MariaDB refuses the
    // wrong password, and neither password is ever printed
    assert_eq!(good.status.code(), Some(0), "{}", show(&good));
    assert_eq!(bad.status.code(), Some(1), "{}", show(&bad));
    let printed = stdout(&bad);
    let refused = route_lines(&printed, "r_my");
    assert!(
        refused.len() == 1 && !refused[0].starts_with("ok"),
        "{}",
        show(&bad)
    );
    for out in [&good, &bad] {
        let all = show(out);
        assert!(!all.contains("p;w}d=x@"), "a password was printed:\n{all}");
    }
}

#[test]
fn mqtt_url_credentials_log_in_and_never_show() {
    // Given a broker that only lets `plant` in with a password holding `@` and `:`
    let dir = Dir::new();
    let passwords = dir.path("passwd");
    std::fs::write(&passwords, "").unwrap();
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", passwords.to_str().unwrap(), "plant", "s3@cr:t"])
        .status()
        .expect("run mosquitto_passwd");
    assert!(made.success());
    let broker = common::Mosquitto::start_with_extra_config(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwords.display()
    ));
    let sqlite = Db::Sqlite(dir.path("data.db"));
    let table = TempTable::create(&sqlite, "cli_url", "v INTEGER");
    let config = |url: &str| {
        let text = format!(
            "state: {state}
brokers:
  b: {{ url: '{url}', client_id: {cid} }}
databases:
  d: {{ connection_string: '{cs}' }}
inbound:
  - {{ name: r, broker: b, topic: cli/url, database: d, table: {table} }}
",
            state = dir.state(),
            cid = unique("cli_url"),
            cs = sqlite.connection_string(),
            table = table.name,
        );
        dir.write("mqdb.yaml", &text)
    };
    let port = broker.port;

    // When `check` runs with the credentials in the URL (percent-encoded), with a wrong
    // password, and with a mistyped scheme
    let good = mqdb(
        &config(&format!("mqtt://plant:s3%40cr%3At@127.0.0.1:{port}")),
        &["check"],
    );
    let bad = mqdb(
        &config(&format!("mqtt://plant:wr0ng@127.0.0.1:{port}")),
        &["check"],
    );
    let typo = mqdb(
        &config(&format!("mqtp://plant:s3%40cr%3At@127.0.0.1:{port}")),
        &["check"],
    );

    // Then the right password logs in, the wrong one is refused, the typo is a config
    // error naming the URL without its password, and no password is ever printed
    assert_eq!(good.status.code(), Some(0), "{}", show(&good));
    assert_eq!(bad.status.code(), Some(1), "{}", show(&bad));
    assert_eq!(typo.status.code(), Some(2), "{}", show(&typo));
    assert!(
        show(&typo).contains(&format!("mqtp://plant:***@127.0.0.1:{port}")),
        "{}",
        show(&typo)
    );
    for out in [&good, &bad, &typo] {
        let all = show(out);
        assert!(
            !all.contains("s3%40cr") && !all.contains("s3@cr") && !all.contains("wr0ng"),
            "a password was printed:\n{all}"
        );
    }
}

#[test]
fn dlq_list_into_a_pipe_closed_early_exits_quietly() {
    // Given more dead letters than a pipe buffers
    let dir = Dir::new();
    let state = dir.state();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let store = mqdb::state::State::open(&state)
            .await
            .expect("open the store");
        let letters: Vec<mqdb::dlq::NewDeadLetter> = (0..2000)
            .map(|i| mqdb::dlq::NewDeadLetter {
                route: "r".into(),
                direction: mqdb::dlq::Direction::Inbound,
                source: "t".into(),
                payload: format!("{i:0>200}").into_bytes(),
                headers: serde_json::json!({}),
                error_kind: "decode".into(),
                error: "invalid JSON".into(),
                sqlstate: None,
            })
            .collect();
        store.store_dead_letters(&letters).await.expect("store");
        store.close().await;
    });
    let path = dir.write(
        "mqdb.yaml",
        &format!("state: {state}\nbrokers: {{}}\ndatabases: {{}}\n"),
    );

    // When `dlq list --json` (and the table) are read for one line and the pipe is closed,
    // as `| head -1` does
    for args in [&["dlq", "list", "--json"][..], &["dlq", "list"][..]] {
        let mut child = common::mqdb_command()
            .arg("-c")
            .arg(&path)
            .args(args)
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
