//! The shipped examples (`examples/*.yaml`): each one passes `mqdb check` against the local
//! services once its `.sql` has created its tables, with an `ok` line for each of its
//! routes. The AMQP CSV, outbox and edge gateway examples are also run end to end.
//! [`every_example_is_checked`] fails when an example has no test here.
//!
//! `check` runs on the example file itself, in a temporary working directory (where the
//! default `state: sqlite://mqdb-state.db`, and the edge gateway's SQLite file, land), with
//! every `${VAR}` the example reads cleared unless the test sets it: the defaults are what
//! is checked. A run that touches shared names (queues, exchanges, the outbox table) uses a
//! private copy of the example with those names made unique.
//!
//! The configuration blocks of README.md are loaded and validated as `mqdb` loads a config
//! file (without connecting): see `common::readme` for the markers that say how a block
//! is loaded.

mod common;

use common::{
    Bridge, Db, Header, LIVENESS, Mosquitto, Publisher, Rabbit, Subscriber, TempTable, make_pki,
    mqdb_command, readme, terminate_ok, unique, wait_for,
};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

/// The stems of `examples/*.yaml` that the tests in this file cover.
const COVERED: &[&str] = &[
    "mqtt-json-postgres",
    "postgres-mqtt-alarms",
    "amqp-csv-mariadb",
    "outbox-after-publish",
    "tls-broker",
    "sqlite-edge-gateway",
];

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// `examples/STEM.yaml`
fn example(stem: &str) -> PathBuf {
    examples_dir().join(format!("{stem}.yaml"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The statements of `examples/STEM.sql`: `--` comments removed, split on `;`.
fn statements(stem: &str) -> Vec<String> {
    let text = read(&examples_dir().join(format!("{stem}.sql")));
    let code: String = text
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let statements: Vec<String> = code
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(
        !statements.is_empty(),
        "examples/{stem}.sql has no statement"
    );
    statements
}

/// Runs `examples/STEM.sql` on `db`, with `rename` (from, to) applied to its text.
fn create_tables(db: &Db, stem: &str, rename: Option<(&str, &str)>) {
    for sql in statements(stem) {
        let sql = match rename {
            Some((from, to)) => sql.replace(from, to),
            None => sql,
        };
        db.exec(&sql);
    }
}

/// The names of the `${VAR}` / `${VAR:-default}` references in an example.
fn variables(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split("${")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A private working directory.
fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

/// `mqdb -c CONFIG check` in `dir`, with every variable the config reads cleared and then
/// `env` set.
fn check(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = mqdb_command();
    for name in variables(&read(config)) {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied())
        .arg("-c")
        .arg(config)
        .arg("check")
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run mqdb check: {e}"))
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `check` exited 0 and printed exactly one line per route, each `ok`: `routes` are
/// `inbound NAME` / `outbound NAME`.
fn assert_check_passes(out: &Output, routes: &[&str]) {
    assert!(out.status.success(), "check failed\n{}", show(out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    for route in routes {
        let ok = lines.iter().filter(|l| {
            l.strip_prefix("ok")
                .is_some_and(|rest| rest.trim_start().starts_with(&format!("{route}:")))
        });
        assert_eq!(
            ok.count(),
            1,
            "no single ok line for {route}\n{}",
            show(out)
        );
    }
    assert_eq!(
        lines.len(),
        routes.len(),
        "expected one line per route {routes:?}\n{}",
        show(out)
    );
}

/// `mqdb -c CONFIG dlq list --json` in `dir` (where the config's relative state store is).
fn dead_letters(config: &Path, dir: &Path) -> Vec<Json> {
    let out = mqdb_command()
        .arg("-c")
        .arg(config)
        .args(["dlq", "list", "--json"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run mqdb dlq list: {e}"));
    assert!(out.status.success(), "dlq list failed\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn json(payload: &[u8]) -> Json {
    serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("not JSON: {}: {e}", String::from_utf8_lossy(payload)))
}

// ---------------------------------------------------------------------------------------
// The README's configuration blocks
// ---------------------------------------------------------------------------------------

/// Values for the variables README blocks reference without a default.
const README_VARIABLES: &[(&str, &str)] = &[("MQTT_USER", "mqdb"), ("MQTT_PASSWORD", "secret")];

fn readme_text() -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
}

#[test]
fn every_readme_config_block_loads_and_validates() {
    let blocks = readme::yaml_blocks(&readme_text()).unwrap_or_else(|e| panic!("README.md {e}"));
    let first = blocks.first().expect("README.md has a ```yaml block");
    assert_eq!(
        first.role,
        readme::Role::Whole,
        "README.md line {}: the first ```yaml block is the main example and loads on its own",
        first.line
    );
    let dir = temp_dir("mqdb-readme-");
    let mut failures = Vec::new();
    let mut loaded = 0;
    for block in &blocks {
        let text = match block.role {
            readme::Role::Whole => block.text.clone(),
            readme::Role::AddsToFirst => format!("{}\n{}", first.text, block.text),
            readme::Role::Skip => continue,
        };
        let text = readme::with_defaults(&text, README_VARIABLES)
            .unwrap_or_else(|e| panic!("README.md line {}: {e}", block.line));
        let path = dir.path().join(format!("readme-line-{}.yaml", block.line));
        std::fs::write(&path, text).expect("write the block");
        match mqdb::config::load(&path) {
            Ok(_) => loaded += 1,
            Err(e) => failures.push(format!("README.md line {}: {e}", block.line)),
        }
    }
    assert!(
        failures.is_empty(),
        "README configuration blocks that do not load:\n{}",
        failures.join("\n")
    );
    assert!(loaded >= 1, "no README block was loaded");
}

#[test]
fn readme_markers_are_read_and_a_typo_is_refused() {
    let text = "```yaml\na: 1\n```\n<!-- config-test: adds to the first example -->\n```yaml\nb: 2\n```\n\
                <!-- config-test: skip -->\n  ```yaml\n  c: 3\n  ```\n";
    let blocks = readme::yaml_blocks(text).unwrap();
    let got: Vec<(usize, readme::Role, &str)> = blocks
        .iter()
        .map(|b| (b.line, b.role, b.text.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, readme::Role::Whole, "a: 1\n"),
            (5, readme::Role::AddsToFirst, "b: 2\n"),
            (9, readme::Role::Skip, "c: 3\n"),
        ]
    );
    let typo = "<!-- config-test: skp -->\n```yaml\na: 1\n```\n";
    let e = readme::yaml_blocks(typo).unwrap_err();
    assert!(e.contains("line 2") && e.contains("skp"), "{e}");
    assert_eq!(
        readme::with_defaults("u: ${MQTT_USER}\np: ${X:-d}\nq: $${Y}\n", README_VARIABLES).unwrap(),
        "u: ${MQTT_USER:-mqdb}\np: ${X:-d}\nq: $${Y}\n"
    );
    assert!(
        readme::with_defaults("u: ${NOPE}", README_VARIABLES)
            .unwrap_err()
            .contains("NOPE")
    );
}

// ---------------------------------------------------------------------------------------
// Every example has a test
// ---------------------------------------------------------------------------------------

#[test]
fn every_example_is_checked() {
    let mut stems: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("read examples/")
        .map(|entry| entry.expect("examples/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .expect("UTF-8 file name")
                .to_owned()
        })
        .collect();
    stems.sort();
    let untested: Vec<&String> = stems
        .iter()
        .filter(|s| !COVERED.contains(&s.as_str()))
        .collect();
    assert!(
        untested.is_empty(),
        "examples without a test in tests/examples.rs: {untested:?}"
    );
    let missing: Vec<&&str> = COVERED
        .iter()
        .filter(|c| !stems.iter().any(|s| s == *c))
        .collect();
    assert!(
        missing.is_empty(),
        "COVERED names examples that do not exist: {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------
// One test per example
// ---------------------------------------------------------------------------------------

/// mqtt-json-postgres: MQTT JSON → PostgreSQL, on the shared Mosquitto.
#[test]
fn the_postgres_example_passes_check() {
    create_tables(&Db::Postgres, "mqtt-json-postgres", None);
    let dir = temp_dir("mqdb-example-");
    let out = check(&example("mqtt-json-postgres"), dir.path(), &[]);
    assert_check_passes(&out, &["inbound temperatures"]);
}

/// postgres-mqtt-alarms: PostgreSQL → MQTT with `track: id` and `after_publish`.
#[test]
fn the_alarms_example_passes_check() {
    create_tables(&Db::Postgres, "postgres-mqtt-alarms", None);
    let dir = temp_dir("mqdb-example-");
    let out = check(&example("postgres-mqtt-alarms"), dir.path(), &[]);
    assert_check_passes(&out, &["outbound alarms"]);
}

/// amqp-csv-mariadb: passes `check` against the local RabbitMQ and MariaDB once its table
/// exists, and a message in its documented shape lands as rows.
#[test]
fn the_amqp_csv_example_passes_check_and_runs() {
    create_tables(&Db::MariaDb, "amqp-csv-mariadb", None);
    let dir = temp_dir("mqdb-example-");
    // `check` only looks at the queue (it does not declare it, nor the exchange).
    let out = check(&example("amqp-csv-mariadb"), dir.path(), &[]);
    assert_check_passes(&out, &["inbound movements"]);

    // A private copy, so this test's queue, exchange and state are its own.
    let queue = unique("mqdb_example_movements");
    let exchange = unique("warehouse");
    let text = read(&example("amqp-csv-mariadb"))
        .replace("mqdb.example.movements", &queue)
        .replace("exchange: warehouse", &format!("exchange: {exchange}"));
    let config = dir.path().join("example.yaml");
    std::fs::write(&config, text).unwrap();
    let mut rabbit = Rabbit::connect();
    rabbit.adopt_queue(&queue);
    rabbit.adopt_exchange(&exchange);
    let out = check(&config, dir.path(), &[]);
    assert_check_passes(&out, &["inbound movements"]);

    let sku = unique("A");
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log("consuming", LIVENESS);
    let payload = format!(
        "sku;qty;moved_at;note\r\n{sku};12;2024-05-01T08:00:00+02:00;\"inbound; pallet 7\"\r\n{sku};-3;2024-05-01T08:01:30+02:00;\r\n"
    );
    rabbit.publish(
        &exchange,
        "movements.north",
        payload.as_bytes(),
        &[("warehouse", Header::Str("north".into()))],
    );
    let query = format!(
        "SELECT qty, DATE_FORMAT(moved_at, '%H:%i:%s'), note, warehouse, routing_key FROM mqdb_example_movements WHERE sku = '{sku}' ORDER BY moved_at"
    );
    wait_for(&mut bridge, "the example's two rows", || {
        Ok(Db::MariaDb.query(&query).len() == 2)
    });
    let rows = Db::MariaDb.query(&query);
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        vec![
            vec![
                s("12"),
                s("06:00:00"),
                s("inbound; pallet 7"),
                s("north"),
                s("movements.north")
            ],
            vec![
                s("-3"),
                s("06:01:30"),
                None,
                s("north"),
                s("movements.north")
            ],
        ]
    );
    terminate_ok(&mut bridge);
    Db::MariaDb.exec(&format!(
        "DELETE FROM mqdb_example_movements WHERE sku = '{sku}'"
    ));
}

/// outbox-after-publish: passes `check` with its exchange present and fails it without;
/// run, every unsent row is published to the exchange and then marked sent, also a row
/// that appears behind one already sent.
#[test]
fn the_outbox_example_passes_check_and_never_skips_a_row() {
    create_tables(&Db::MariaDb, "outbox-after-publish", None);
    let dir = temp_dir("mqdb-example-");
    let mut rabbit = Rabbit::connect();
    let exchange = unique("mqdb_example_outbox");
    rabbit.declare_exchange(&exchange, "topic");
    let queue = unique("outbox_events");
    rabbit.declare_bound_queue(&queue, &exchange, "#");

    let out = check(
        &example("outbox-after-publish"),
        dir.path(),
        &[("OUTBOX_EXCHANGE", &exchange)],
    );
    assert_check_passes(&out, &["outbound outbox"]);

    // Without its exchange the route fails the check, naming it.
    let missing = unique("no_such_exchange");
    let out = check(
        &example("outbox-after-publish"),
        dir.path(),
        &[("OUTBOX_EXCHANGE", &missing)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL")
            && l.contains("outbound outbox")
            && l.contains(&missing)),
        "{}",
        show(&out)
    );

    // The run uses a private outbox table, so no other bridge polls it.
    let table = TempTable {
        db: Db::MariaDb,
        name: unique("mqdb_example_outbox"),
    };
    let t = table.name.clone();
    create_tables(
        &Db::MariaDb,
        "outbox-after-publish",
        Some(("mqdb_example_outbox", &t)),
    );
    let config = dir.path().join("outbox.yaml");
    std::fs::write(
        &config,
        read(&example("outbox-after-publish")).replace("mqdb_example_outbox", &t),
    )
    .unwrap();
    Db::MariaDb.exec(&format!(
        "INSERT INTO {t} (id, event_type, aggregate_id, payload) VALUES \
         (1, 'order.created', 'A-1', '{{\"total\": 12.5}}'), \
         (2, 'order.paid', 'A-1', '{{}}'), \
         (10, 'order.shipped', 'A-1', '{{}}')"
    ));
    let mut bridge = Bridge::start_with_env(&config, &[("OUTBOX_EXCHANGE", &exchange)]);
    // Every row of the table, `n` of them, is marked sent.
    let all_sent = |n: i64| {
        let total = format!("SELECT COUNT(*) FROM {t}");
        let unsent = format!("SELECT COUNT(*) FROM {t} WHERE sent_at IS NULL");
        move || {
            Ok(common::try_scalar(&Db::MariaDb, &total) == Some(n)
                && common::try_scalar(&Db::MariaDb, &unsent) == Some(0))
        }
    };
    wait_for(&mut bridge, "the three rows marked sent", all_sent(3));
    let first = rabbit.take_all(&queue);

    // A row committed late, behind the highest id already sent: still published.
    Db::MariaDb.exec(&format!(
        "INSERT INTO {t} (id, event_type, aggregate_id, payload) VALUES \
         (5, 'order.cancelled', 'A-2', '{{}}')"
    ));
    wait_for(&mut bridge, "the late row marked sent", all_sent(4));
    let second = rabbit.take_all(&queue);
    terminate_ok(&mut bridge);

    let keys = |messages: &[common::AmqpMessage]| -> Vec<(i64, String)> {
        messages
            .iter()
            .map(|m| {
                let body = json(&m.payload);
                assert_eq!(m.exchange, exchange);
                assert_eq!(m.delivery_mode, Some(2), "not persistent: {body}");
                assert_eq!(body["event_type"].as_str(), Some(m.routing_key.as_str()));
                (body["id"].as_i64().expect("id"), m.routing_key.clone())
            })
            .collect()
    };
    assert_eq!(
        keys(&first),
        vec![
            (1, "order.created".to_string()),
            (2, "order.paid".to_string()),
            (10, "order.shipped".to_string()),
        ]
    );
    assert_eq!(keys(&second), vec![(5, "order.cancelled".to_string())]);
    let body = json(&first[0].payload);
    let names: Vec<&str> = body
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        ["id", "event_type", "aggregate_id", "payload", "created_at"]
    );
    assert_eq!(body["aggregate_id"].as_str(), Some("A-1"));
    assert_eq!(body["payload"].as_str(), Some("{\"total\": 12.5}"));
    assert!(
        body["created_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{body}"
    );
    assert_eq!(dead_letters(&config, dir.path()), Vec::<Json>::new());
}

/// tls-broker: passes `check` against a private Mosquitto whose TLS listener requires a
/// client certificate, with the URL and the PEM files from the environment.
#[test]
fn the_tls_example_passes_check() {
    create_tables(&Db::Postgres, "tls-broker", None);
    let pki = temp_dir("mqdb-example-pki-");
    let p = pki.path();
    make_pki(p);
    let file = |name: &str| p.join(name).display().to_string();
    let (_broker, tls_port) = Mosquitto::start_tls(p);
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let env = [
        ("MQTT_TLS_URL", url.as_str()),
        ("MQTT_TLS_CA", ca.as_str()),
        ("MQTT_TLS_CERT", cert.as_str()),
        ("MQTT_TLS_KEY", key.as_str()),
    ];
    let dir = temp_dir("mqdb-example-");
    let out = check(&example("tls-broker"), dir.path(), &env);
    assert_check_passes(&out, &["inbound secure_readings"]);
}

/// sqlite-edge-gateway: passes `check` with its defaults (the SQLite file in the working
/// directory, both brokers on the local Mosquitto); run on a private Mosquitto, readings
/// are stored once each and forwarded upstream, and marked forwarded.
#[test]
fn the_edge_gateway_example_passes_check_and_forwards() {
    let dir = temp_dir("mqdb-example-");
    let edge = Db::Sqlite(dir.path().join("mqdb-edge.db"));
    create_tables(&edge, "sqlite-edge-gateway", None);
    let out = check(&example("sqlite-edge-gateway"), dir.path(), &[]);
    assert_check_passes(&out, &["inbound capture", "outbound forward"]);

    // The run: a verbatim copy next to the SQLite file (the bridge runs in its config's
    // directory), on a private broker standing for both the local and the upstream one.
    let broker = Mosquitto::start();
    let config = dir.path().join("sqlite-edge-gateway.yaml");
    std::fs::copy(example("sqlite-edge-gateway"), &config).unwrap();
    // The bridge's persistent session exists before it starts, so readings published now
    // are queued for it, as they would be while the gateway restarts.
    Subscriber::connect_with(broker.port, "mqdb-example-edge", false, &[("edge/+/+", 1)])
        .disconnect();
    let upstream = Subscriber::connect(broker.port, "plant/#", 1);
    let publisher = Publisher::connect(broker.port);
    let reading = |device: &str, value: &str, ts: &str| {
        (
            format!("edge/{device}/temperature"),
            format!("{{\"value\": {value}, \"ts\": \"{ts}\"}}").into_bytes(),
        )
    };
    publisher.publish_all_confirmed(
        vec![
            reading("press3", "71.5", "2024-05-01T12:00:00+02:00"),
            // The same reading again (a sensor resending): stored and forwarded once.
            reading("press3", "71.5", "2024-05-01T12:00:00+02:00"),
            reading("press4", "3", "2024-05-01T10:00:01Z"),
        ],
        1,
    );
    let url = broker.url();
    let mut bridge = Bridge::start_with_env(
        &config,
        &[
            ("EDGE_MQTT_URL", url.as_str()),
            ("UPSTREAM_MQTT_URL", url.as_str()),
            ("GATEWAY_ID", "gw-test"),
        ],
    );
    wait_for(&mut bridge, "both readings forwarded and marked", || {
        Ok(common::try_scalar(
            &edge,
            "SELECT COUNT(*) FROM mqdb_example_edge_readings WHERE forwarded_at IS NOT NULL",
        ) == Some(2))
    });
    upstream.wait_for(2, LIVENESS);
    terminate_ok(&mut bridge);

    assert_eq!(edge.count("mqdb_example_edge_readings"), 2);
    let received = upstream.messages();
    let got: Vec<(String, String, f64, String)> = received
        .iter()
        .map(|m| {
            let body = json(&m.payload);
            (
                m.topic.clone(),
                body["device"].as_str().expect("device").to_owned(),
                body["value"].as_f64().expect("value"),
                body["measured_at"]
                    .as_str()
                    .expect("measured_at")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "plant/gw-test/press3/temperature".to_string(),
                "press3".to_string(),
                71.5,
                "2024-05-01T10:00:00Z".to_string()
            ),
            (
                "plant/gw-test/press4/temperature".to_string(),
                "press4".to_string(),
                3.0,
                "2024-05-01T10:00:01Z".to_string()
            ),
        ]
    );
    assert_eq!(dead_letters(&config, dir.path()), Vec::<Json>::new());
}

// ---------------------------------------------------------------------------------------
// The systemd unit
// ---------------------------------------------------------------------------------------

const UNIT: &str = "deploy/systemd/mqdb.service";

/// `(section, key, value)` of every setting of a unit file, in order.
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT}: not a setting: {line}"));
        out.push((
            section.clone(),
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    out
}

#[test]
fn the_systemd_unit_matches_the_readme_and_verifies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = read(&root.join(UNIT));
    let settings = unit_settings(&text);
    let service = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        match service(key).as_slice() {
            [v] => v,
            other => panic!("{UNIT}: expected one {key}=, found {other:?}"),
        }
    };

    // The binary where the README and the Dockerfile install it, running `run`.
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(exec, ["/usr/local/bin/mqdb", "run"], "{UNIT}: ExecStart");
    let dockerfile = read(&root.join("Dockerfile"));
    assert!(
        dockerfile.contains(" /usr/local/bin/mqdb\n"),
        "Dockerfile installs elsewhere"
    );
    let readme = readme_text();
    assert!(
        readme.contains("install -m 0755 target/release/mqdb /usr/local/bin/mqdb"),
        "the README's install step names another path"
    );

    // A non-root user, its state in the state directory the README's config names.
    let user = one("User");
    assert!(
        !user.is_empty() && user != "root" && user != "0",
        "User={user}"
    );
    let state_dir = format!("/var/lib/{}", one("StateDirectory"));
    assert_eq!(one("WorkingDirectory"), state_dir);
    let state = format!("state: sqlite://{state_dir}/state.db");
    assert!(
        readme.contains(&state),
        "README.md does not configure `{state}`"
    );
    assert!(
        dockerfile.contains(&format!("VOLUME [\"{state_dir}\"]")),
        "the Dockerfile's volume is not {state_dir}"
    );
    assert_eq!(one("Environment"), "MQDB_CONFIG=/etc/mqdb/mqdb.yaml");
    assert!(readme.contains("/etc/mqdb/mqdb.yaml"));

    // Restarted after a failure, but not for a configuration error (exit 2).
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("RestartPreventExitStatus"), "2");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(one(key), value, "{UNIT}: {key}");
    }

    // systemd's own check, with ExecStart pointing at the binary under test (verify
    // requires it to exist). Warnings (an unknown key, a bad value) fail it too.
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: {UNIT} was only parsed");
        return;
    };
    let dir = temp_dir("mqdb-unit-");
    let unit = dir.path().join("mqdb.service");
    let bin = common::mqdb_bin();
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/mqdb", &bin.display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze verify");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify {UNIT}\n{}",
        show(&out)
    );
}

/// The path of `program` on `PATH`.
fn which(program: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

// ---------------------------------------------------------------------------------------
// scripts/setup.sh
// ---------------------------------------------------------------------------------------

/// Runs `scripts/setup.sh --packages` as user id `uid` with every package missing, every
/// driver unregistered and CommLog on, on stand-ins for the system commands (`id`, `sudo`,
/// `dpkg-query`, `apt-get`, `odbcinst`) that log what they were asked to do instead of
/// doing it, and returns that log. `sudo` logs its command and does not run it.
fn setup_steps(uid: u32) -> Vec<String> {
    let dir = temp_dir("mqdb-setup-");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("log");
    let fake = |name: &str, body: &str| {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        let mut mode = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o755);
        std::fs::set_permissions(&path, mode).unwrap();
    };
    let logs = r#"echo "$(basename "$0") $*" >> "$FAKE_LOG""#;
    fake(
        "id",
        r#"[ "$1" = -u ] && echo "$FAKE_UID" || exec /usr/bin/id "$@""#,
    );
    fake("sudo", logs);
    fake("dpkg-query", "exit 1");
    fake("apt-get", logs);
    fake(
        "odbcinst",
        &format!("{logs}\n[ \"$1\" = -q ] && exit 1\ncat >/dev/null"),
    );
    let ini = dir.path().join("odbcinst.ini");
    std::fs::write(&ini, "[PostgreSQL Unicode]\nCommLog=1\n").unwrap();

    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--packages")
        .env("PATH", path)
        .env("FAKE_LOG", &log)
        .env("FAKE_UID", uid.to_string())
        .env("ODBCSYSINI", dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/setup.sh");
    assert!(
        out.status.success(),
        "setup.sh as uid {uid}\n{}",
        show(&out)
    );
    let mut steps: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    if read(&ini).contains("CommLog=0") {
        steps.push("(CommLog turned off without sudo)".into());
    }
    steps
}

#[test]
fn setup_uses_sudo_for_every_privileged_step_unless_root() {
    let privileged = |steps: &[String]| {
        steps
            .iter()
            .filter(|s| !s.starts_with("odbcinst -q"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let missing = "unixodbc unixodbc-dev odbc-postgresql odbc-mariadb libsqliteodbc";

    // Not root: apt-get, the driver registrations and the CommLog fix all go through sudo.
    let steps = privileged(&setup_steps(1000));
    let expected_user = [
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq".to_string(),
        format!(
            "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {missing}"
        ),
        "sudo odbcinst -i -d -r".into(),
        "sudo odbcinst -i -d -r".into(),
        "sudo odbcinst -i -d -r".into(),
    ];
    assert_eq!(steps[..5], expected_user[..], "{steps:#?}");
    assert_eq!(steps.len(), 6, "{steps:#?}");
    assert!(
        steps[5].starts_with("sudo sed -i s/^CommLog=1/CommLog=0/ "),
        "{steps:#?}"
    );

    // Root: the same steps run directly, sudo is never asked for.
    let steps = privileged(&setup_steps(0));
    let expected_root = vec![
        "apt-get update -qq".to_string(),
        format!("apt-get install -y -qq --no-install-recommends {missing}"),
        "odbcinst -i -d -r".into(),
        "odbcinst -i -d -r".into(),
        "odbcinst -i -d -r".into(),
        "(CommLog turned off without sudo)".into(),
    ];
    assert_eq!(steps, expected_root);
}
