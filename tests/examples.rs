//! The shipped examples (`examples/*.yaml`): each one passes `mqdb check` against the local
//! services once its `.sql` has created its tables; the AMQP CSV, outbox and edge gateway
//! examples also run end to end. [`every_example_is_checked`] fails when an example has no
//! test here. `check` runs in a temporary working directory (where the default
//! `state: sqlite://mqdb-state.db` lands), with every `${VAR}` the example reads cleared
//! unless the test sets it: the defaults are what is checked. A run that touches shared
//! names (queues, exchanges, the outbox table) uses a private copy with those names unique.
//!
//! Also: README.md's configuration blocks load (see `common::readme` for their markers),
//! the systemd unit, and `scripts/setup.sh`'s use of sudo.

mod common;

use common::{
    Bridge, Db, Header, LIVENESS, Mosquitto, NULL, Publisher, Rabbit, RabbitNode, Ran, Squid,
    Subscriber, TempTable, dlq_list_in, make_pki, mqdb_command, odbc_exec, readme, temp_dir,
    terminate_ok, text_rows, unique, wait_for,
};
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// The stems of `examples/*.yaml` that the tests in this file cover.
const COVERED: &[&str] = &[
    "mqtt-json-postgres",
    "postgres-mqtt-alarms",
    "postgres-on-change",
    "amqp-csv-mariadb",
    "outbox-after-publish",
    "tls-broker",
    "sqlite-edge-gateway",
    "behind-proxy",
    "postgres-no-skip",
    "batched-readings",
];

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

/// Runs the statements of `examples/STEM.sql` (`--` comments removed, split on `;` outside
/// `$$` quotes, which hold function bodies) on `db`, with each (from, to) of `renames`
/// applied to their text.
fn create_tables(db: &Db, stem: &str, renames: &[(&str, &str)]) {
    let text = read(&examples_dir().join(format!("{stem}.sql")));
    let mut code = String::new();
    for line in text.lines() {
        code += line.split("--").next().unwrap_or("");
        code += "\n";
    }
    let statements = statements(&code);
    assert!(!statements.is_empty(), "{stem}.sql has no statement");
    for sql in statements {
        db.exec(&renamed(sql.to_owned(), renames));
    }
}

/// `code` split on each `;` that no `$$ … $$` encloses, trimmed, empty ones left out.
fn statements(code: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, _) in code.match_indices(['$', ';']) {
        if code[i..].starts_with("$$") && !code[..i].ends_with('$') {
            quoted = !quoted;
        } else if !quoted && code[i..].starts_with(';') {
            out.push(code[start..i].trim());
            start = i + 1;
        }
    }
    out.push(code[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

fn renamed(text: String, renames: &[(&str, &str)]) -> String {
    renames.iter().fold(text, |t, (a, b)| t.replace(a, b))
}

/// A copy of example `stem` in `dir` (where the bridge then runs), with `renames` applied.
fn private_copy(stem: &str, dir: &Path, renames: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(format!("{stem}.yaml"));
    std::fs::write(&path, renamed(read(&example(stem)), renames)).unwrap();
    path
}

/// `mqdb -c CONFIG check` in `dir`, with every `${VAR}` the config reads cleared and then
/// `env` set.
fn check(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Ran {
    let mut cmd = mqdb_command();
    for rest in read(config).split("${").skip(1) {
        let end = rest.find(|c: char| !c.is_ascii_alphanumeric() && c != '_');
        cmd.env_remove(&rest[..end.unwrap_or(rest.len())]);
    }
    cmd.envs(env.iter().copied()).current_dir(dir);
    Ran::of(cmd.arg("-c").arg(config).arg("check"))
}

/// `check` of `config` in `dir` with `env` exits 0 and prints exactly one line per route,
/// each `ok`: `routes` are `inbound NAME` / `outbound NAME`.
fn assert_check_passes(config: &Path, dir: &Path, env: &[(&str, &str)], routes: &[&str]) {
    let out = check(config, dir, env);
    out.code(0);
    for route in routes {
        out.route_is(route, "ok", &[]);
    }
    let lines = out.stdout.lines().filter(|l| !l.trim().is_empty());
    assert_eq!(lines.count(), routes.len(), "one line per route\n{out}");
}

/// Creates the tables of example `stem` on `db`, then checks it (with `env`) in a fresh
/// working directory, which is returned.
fn example_passes_check(db: &Db, stem: &str, env: &[(&str, &str)], routes: &[&str]) -> TempDir {
    create_tables(db, stem, &[]);
    let dir = temp_dir("example");
    assert_check_passes(&example(stem), dir.path(), env, routes);
    dir
}

fn json(payload: &[u8]) -> Json {
    serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("not JSON: {}: {e}", String::from_utf8_lossy(payload)))
}

/// Values for the variables README blocks reference without a default.
const README_VARIABLES: &[(&str, &str)] = &[("MQTT_USER", "mqdb"), ("MQTT_PASSWORD", "secret")];

fn readme_text() -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
}

#[test]
fn every_readme_config_block_loads_and_validates() {
    let blocks = readme::yaml_blocks(&readme_text()).unwrap_or_else(|e| panic!("README.md {e}"));
    let first = blocks.first().expect("README.md has a ```yaml block");
    // The first ```yaml block is the main example and loads on its own.
    let (whole, at) = (first.role == readme::Role::Whole, first.line);
    assert!(whole, "README.md line {at}: not a whole config");
    let dir = temp_dir("readme");
    let mut failures = Vec::new();
    let mut loaded = 0;
    for block in &blocks {
        let text = match block.role {
            readme::Role::Whole => block.text.clone(),
            readme::Role::AddsToFirst => format!("{}\n{}", first.text, block.text),
            readme::Role::Skip => continue,
        };
        let at = format!("README.md line {}", block.line);
        let text =
            readme::with_defaults(&text, README_VARIABLES).unwrap_or_else(|e| panic!("{at}: {e}"));
        let path = dir.path().join(format!("readme-line-{}.yaml", block.line));
        std::fs::write(&path, text).expect("write the block");
        match mqdb::config::load(&path) {
            Ok(_) => loaded += 1,
            Err(e) => failures.push(format!("{at}: {e}")),
        }
    }
    let failures = failures.join("\n");
    let all_load = failures.is_empty();
    assert!(all_load, "README blocks not loading:\n{failures}");
    assert!(loaded >= 1, "no README block was loaded");
}

#[test]
fn readme_markers_are_read_and_a_typo_is_refused() {
    let text = "```yaml\na: 1\n```\n<!-- config-test: adds to the first example -->\n```yaml\nb: 2\n```\n\
                <!-- config-test: skip -->\n  ```yaml\n  c: 3\n  ```\n";
    let blocks = readme::yaml_blocks(text).unwrap();
    let got = blocks.iter().map(|b| (b.line, b.role, b.text.as_str()));
    let want = [
        (1, readme::Role::Whole, "a: 1\n"),
        (5, readme::Role::AddsToFirst, "b: 2\n"),
        (9, readme::Role::Skip, "c: 3\n"),
    ];
    assert_eq!(got.collect::<Vec<_>>(), want);
    let typo = "<!-- config-test: skp -->\n```yaml\na: 1\n```\n";
    let e = readme::yaml_blocks(typo).unwrap_err();
    assert!(e.contains("line 2") && e.contains("skp"), "{e}");
    let with_defaults = |text: &str| readme::with_defaults(text, README_VARIABLES);
    let got = with_defaults("u: ${MQTT_USER}\np: ${X:-d}\nq: $${Y}\n").unwrap();
    assert_eq!(got, "u: ${MQTT_USER:-mqdb}\np: ${X:-d}\nq: $${Y}\n");
    assert!(with_defaults("u: ${NOPE}").unwrap_err().contains("NOPE"));
}

#[test]
fn every_example_is_checked() {
    let stems: BTreeSet<String> = std::fs::read_dir(examples_dir())
        .expect("read examples/")
        .map(|entry| entry.expect("examples/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .expect("UTF-8")
                .into()
        })
        .collect();
    let covered: BTreeSet<String> = COVERED.iter().map(|s| s.to_string()).collect();
    // Left: the examples; right: those with a test in tests/examples.rs (`COVERED`).
    assert_eq!(stems, covered, "an example or a test without the other");
}

common::cases! {
    // mqtt-json-postgres: MQTT JSON → PostgreSQL, on the shared Mosquitto.
    the_postgres_example_passes_check:
        example_passes_check(&Db::Postgres, "mqtt-json-postgres", &[], &["inbound temperatures"]);
    // postgres-mqtt-alarms: PostgreSQL → MQTT with `track: id` and `after_publish`.
    the_alarms_example_passes_check:
        example_passes_check(&Db::Postgres, "postgres-mqtt-alarms", &[], &["outbound alarms"]);
}

#[test]
fn sql_files_split_on_semicolons_outside_dollar_quotes() {
    let code = "CREATE TABLE t (a int);\nCREATE FUNCTION f() AS $$ BEGIN x; y; END $$;\n;";
    assert_eq!(
        statements(code),
        [
            "CREATE TABLE t (a int)",
            "CREATE FUNCTION f() AS $$ BEGIN x; y; END $$"
        ]
    );
}

/// postgres-on-change: passes `check`, and run, an order is published as soon as it is
/// inserted: the trigger's notification wakes the route long before its one-minute interval.
#[test]
fn the_on_change_example_passes_check_and_publishes_on_insert() {
    let stem = "postgres-on-change";
    let dir = example_passes_check(&Db::Postgres, stem, &[], &["outbound orders"]);

    // A private table, channel and topic, so no other bridge polls or listens on them.
    let t = unique("mqdb_example_new_orders");
    let _table = TempTable {
        db: Db::Postgres,
        name: t.clone(),
    };
    let topic = unique("orders");
    let topic_line = format!("topic: {topic}/{{customer}}");
    let renames = [
        ("mqdb_example_new_orders", t.as_str()),
        ("topic: orders/{customer}", topic_line.as_str()),
    ];
    create_tables(&Db::Postgres, stem, &renames);
    let config = private_copy(stem, dir.path(), &renames);
    let subscriber = Subscriber::connect(1883, &format!("{topic}/#"), 1);
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log("wake listener connected", LIVENESS);
    // The first poll at start and the one after connecting have run on an empty table.
    bridge.wait_for_log("outbound route started", LIVENESS);

    Db::Postgres.exec(&format!(
        "INSERT INTO {t} (customer, total) VALUES ('acme', 12.50)"
    ));
    let got = subscriber.wait_for(1, LIVENESS);
    terminate_ok(&mut bridge);

    assert_eq!(got[0].topic, format!("{topic}/acme"));
    let body = json(&got[0].payload);
    assert_eq!(body["customer"], "acme", "{body}");
    assert_eq!(body["total"].as_f64(), Some(12.5), "{body}");
    let unsent = format!("SELECT COUNT(*) FROM {t} WHERE sent_at IS NULL");
    assert_eq!(common::try_scalar(&Db::Postgres, &unsent), Some(0));
}

/// amqp-csv-mariadb: passes `check` against the local RabbitMQ and MariaDB once its table
/// exists, and a message in its documented shape lands as rows.
#[test]
fn the_amqp_csv_example_passes_check_and_runs() {
    // `check` only looks at the queue (it does not declare it, nor the exchange).
    let routes = ["inbound movements"];
    let dir = example_passes_check(&Db::MariaDb, "amqp-csv-mariadb", &[], &routes);

    // A private copy, so this test's queue, exchange and state are its own.
    let queue = unique("mqdb_example_movements");
    let exchange = unique("warehouse");
    let exchange_line = format!("exchange: {exchange}");
    let renames = [
        ("mqdb.example.movements", &*queue),
        ("exchange: warehouse", &exchange_line),
    ];
    let config = private_copy("amqp-csv-mariadb", dir.path(), &renames);
    let mut rabbit = Rabbit::connect();
    rabbit.adopt_queue(&queue);
    rabbit.adopt_exchange(&exchange);
    assert_check_passes(&config, dir.path(), &[], &routes);

    let sku = unique("A");
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log("consuming", LIVENESS);
    let payload = format!(
        "sku;qty;moved_at;note\r\n{sku};12;2024-05-01T08:00:00+02:00;\"inbound; pallet 7\"\r\n{sku};-3;2024-05-01T08:01:30+02:00;\r\n"
    );
    let headers = [("warehouse", Header::Str("north".into()))];
    rabbit.publish(&exchange, "movements.north", payload.as_bytes(), &headers);
    let query = format!(
        "SELECT qty, DATE_FORMAT(moved_at, '%H:%i:%s'), note, warehouse, routing_key FROM mqdb_example_movements WHERE sku = '{sku}' ORDER BY moved_at"
    );
    wait_for(&mut bridge, "the example's two rows", || {
        Ok(Db::MariaDb.query(&query).len() == 2)
    });
    let rows = text_rows(&[
        [
            "12",
            "06:00:00",
            "inbound; pallet 7",
            "north",
            "movements.north",
        ],
        ["-3", "06:01:30", NULL, "north", "movements.north"],
    ]);
    assert_eq!(Db::MariaDb.query(&query), rows);
    terminate_ok(&mut bridge);
    let delete = format!("DELETE FROM mqdb_example_movements WHERE sku = '{sku}'");
    Db::MariaDb.exec(&delete);
}

/// postgres-no-skip: passes `check`; run, a row whose transaction took its id first but
/// committed after a higher id is published, and before that higher id.
#[test]
fn the_no_skip_example_publishes_a_row_committed_after_a_higher_id() {
    let stem = "postgres-no-skip";
    let dir = example_passes_check(&Db::Postgres, stem, &[], &["outbound orders"]);
    // A private table and broker, so no other bridge polls or publishes these rows.
    let t = unique("mqdb_example_orders");
    let _table = TempTable {
        db: Db::Postgres,
        name: t.clone(),
    };
    let renames = [("mqdb_example_orders", t.as_str())];
    create_tables(&Db::Postgres, stem, &renames);
    let config = private_copy(stem, dir.path(), &renames);
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "orders/#", 1);
    let mut bridge = Bridge::start_with_env(&config, &[("MQTT_URL", &broker.url())]);
    bridge.wait_for_log("outbound route started", LIVENESS);

    // Given ada's order taking id 1 in a transaction that stays open, and bob's order
    // committing id 2 meanwhile, for a few of the route's polls
    let insert = |customer: &str, total: &str| {
        format!("INSERT INTO {t} (customer, total) VALUES ('{customer}', {total})")
    };
    let open = Db::Postgres.connect();
    open.set_autocommit(false).expect("autocommit off");
    odbc_exec(&open, &insert("ada", "12.50")).unwrap();
    Db::Postgres.exec(&insert("bob", "3.00"));
    std::thread::sleep(std::time::Duration::from_secs(1));

    // When ada's transaction commits
    open.commit().expect("commit");

    // Then both orders are published, ada's first
    let messages = sub.wait_for(2, LIVENESS);
    terminate_ok(&mut bridge);
    let got: Vec<(String, i64, String)> = messages
        .iter()
        .map(|m| {
            let body = json(&m.payload);
            let id = body["id"].as_i64().expect("id");
            (m.topic.clone(), id, body["total"].to_string())
        })
        .collect();
    let want = [("orders/ada", 1, "12.50"), ("orders/bob", 2, "3.00")];
    let want: Vec<(String, i64, String)> = want
        .iter()
        .map(|(topic, id, total)| (topic.to_string(), *id, total.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// outbox-after-publish: passes `check` with its exchange present and fails it without;
/// run, every unsent row is published to the exchange and then marked sent, also a row
/// that appears behind one already sent.
#[test]
fn the_outbox_example_passes_check_and_never_skips_a_row() {
    let stem = "outbox-after-publish";
    let mut rabbit = Rabbit::connect();
    let exchange = unique("mqdb_example_outbox");
    rabbit.declare_exchange(&exchange, "topic");
    let queue = unique("outbox_events");
    rabbit.declare_bound_queue(&queue, &exchange, "#");
    let env = [("OUTBOX_EXCHANGE", exchange.as_str())];
    let dir = example_passes_check(&Db::MariaDb, stem, &env, &["outbound outbox"]);

    // Without its exchange the route fails the check, naming it.
    let missing = unique("no_such_exchange");
    let out = check(&example(stem), dir.path(), &[("OUTBOX_EXCHANGE", &missing)]);
    out.fails("outbound outbox", &[&missing]);

    // The run uses a private outbox table, so no other bridge polls it.
    let t = unique("mqdb_example_outbox");
    let _table = TempTable {
        db: Db::MariaDb,
        name: t.clone(),
    };
    let renames = [("mqdb_example_outbox", t.as_str())];
    create_tables(&Db::MariaDb, stem, &renames);
    let config = private_copy(stem, dir.path(), &renames);
    let insert = |values: &str| {
        let columns = "id, event_type, aggregate_id, payload";
        Db::MariaDb.exec(&format!("INSERT INTO {t} ({columns}) VALUES {values}"));
    };
    insert(
        "(1, 'order.created', 'A-1', '{\"total\": 12.5}'), (2, 'order.paid', 'A-1', '{}'), \
         (10, 'order.shipped', 'A-1', '{}')",
    );
    let mut bridge = Bridge::start_with_env(&config, &env);
    // Every row of the table, `n` of them, is marked sent.
    let all_sent = |n: i64| {
        let total = format!("SELECT COUNT(*) FROM {t}");
        let unsent = format!("SELECT COUNT(*) FROM {t} WHERE sent_at IS NULL");
        let count = |sql: &str| common::try_scalar(&Db::MariaDb, sql);
        move || Ok(count(&total) == Some(n) && count(&unsent) == Some(0))
    };
    wait_for(&mut bridge, "the three rows marked sent", all_sent(3));
    let first = rabbit.take_all(&queue);

    // A row committed late, behind the highest id already sent: still published.
    insert("(5, 'order.cancelled', 'A-2', '{}')");
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
    let key = |id: i64, event: &str| (id, event.to_string());
    let created = key(1, "order.created");
    let sent_first = [created, key(2, "order.paid"), key(10, "order.shipped")];
    assert_eq!(keys(&first), sent_first);
    assert_eq!(keys(&second), [key(5, "order.cancelled")]);
    let body = json(&first[0].payload);
    let names = body.as_object().expect("a JSON object").keys();
    let want = ["id", "event_type", "aggregate_id", "payload", "created_at"];
    assert_eq!(names.map(String::as_str).collect::<Vec<_>>(), want);
    assert_eq!(body["aggregate_id"].as_str(), Some("A-1"));
    assert_eq!(body["payload"].as_str(), Some("{\"total\": 12.5}"));
    let created_at = body["created_at"].as_str();
    assert!(created_at.is_some_and(|s| s.ends_with('Z')), "{body}");
    assert_eq!(dlq_list_in(&config, dir.path()), Vec::<Json>::new());
}

/// tls-broker: passes `check` against a private Mosquitto whose TLS listener requires a
/// client certificate, with the URL and the PEM files from the environment.
#[test]
fn the_tls_example_passes_check() {
    let pki = temp_dir("example-pki");
    make_pki(pki.path());
    let file = |name: &str| pki.path().join(name).display().to_string();
    let (_broker, tls_port) = Mosquitto::start_tls(pki.path());
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let env = [
        ("MQTT_TLS_URL", url.as_str()),
        ("MQTT_TLS_CA", ca.as_str()),
        ("MQTT_TLS_CERT", cert.as_str()),
        ("MQTT_TLS_KEY", key.as_str()),
    ];
    let routes = ["inbound secure_readings"];
    example_passes_check(&Db::Postgres, "tls-broker", &env, &routes);
}

/// behind-proxy: passes `check` with MQTT over wss and AMQP over TLS, both through a
/// private Squid that requires a password (read from a file) and allows CONNECT only to the
/// two broker ports; the proxy's access log shows both tunnels.
#[test]
fn the_behind_proxy_example_passes_check_through_the_proxy() {
    let pki = temp_dir("example-pki");
    make_pki(pki.path());
    let node = RabbitNode::start_web_mqtt(pki.path());
    let squid = Squid::start("mqdb", "proxy-secret", &[node.wss_port, node.tls_port]);
    let password_file = pki.path().join("proxy_password");
    std::fs::write(&password_file, "proxy-secret\n").expect("write the proxy password");
    let (wss, amqps) = (node.wss_url("localhost"), node.amqps_url("localhost"));
    let (proxy, ca) = (squid.url_without_password(), pki.path().join("ca.pem"));
    let (password_file, ca) = (
        password_file.display().to_string(),
        ca.display().to_string(),
    );
    let env = [
        ("MQTT_WSS_URL", wss.as_str()),
        ("AMQPS_URL", amqps.as_str()),
        ("PROXY_URL", proxy.as_str()),
        ("PROXY_PASSWORD_FILE", password_file.as_str()),
        ("BROKER_CA", ca.as_str()),
        ("TLS_SERVER_NAME", "localhost"),
    ];
    let routes = [
        "inbound cloud_readings",
        "inbound lab_results",
        "outbound alarms",
    ];
    example_passes_check(&Db::Postgres, "behind-proxy", &env, &routes);
    for port in [node.wss_port, node.tls_port] {
        let target = format!("localhost:{port}");
        squid.wait_connect(&target, "TCP_TUNNEL/200", LIVENESS);
    }
}

/// sqlite-edge-gateway: passes `check` with its defaults (the SQLite file in the working
/// directory, both brokers on the local Mosquitto); run on a private Mosquitto, readings
/// are stored once each and forwarded upstream, and marked forwarded.
#[test]
fn the_edge_gateway_example_passes_check_and_forwards() {
    let dir = temp_dir("example");
    let edge = Db::Sqlite(dir.path().join("mqdb-edge.db"));
    create_tables(&edge, "sqlite-edge-gateway", &[]);
    let routes = ["inbound capture", "outbound forward"];
    assert_check_passes(&example("sqlite-edge-gateway"), dir.path(), &[], &routes);

    // The run: a verbatim copy next to the SQLite file (the bridge runs in its config's
    // directory), on a private broker standing for both the local and the upstream one.
    let broker = Mosquitto::start();
    let config = private_copy("sqlite-edge-gateway", dir.path(), &[]);
    // The bridge's persistent session exists before it starts, so readings published now
    // are queued for it, as they would be while the gateway restarts.
    Subscriber::connect_with(broker.port, "mqdb-example-edge", false, &[("edge/+/+", 1)])
        .disconnect();
    let upstream = Subscriber::connect(broker.port, "plant/#", 1);
    let reading = |device: &str, value: &str, ts: &str| {
        let payload = format!("{{\"value\": {value}, \"ts\": \"{ts}\"}}");
        (format!("edge/{device}/temperature"), payload.into_bytes())
    };
    let readings = vec![
        reading("press3", "71.5", "2024-05-01T12:00:00+02:00"),
        // The same reading again (a sensor resending): stored and forwarded once.
        reading("press3", "71.5", "2024-05-01T12:00:00+02:00"),
        reading("press4", "3", "2024-05-01T10:00:01Z"),
    ];
    Publisher::connect(broker.port).publish_all_confirmed(readings, 1);
    let url = broker.url();
    let env = [
        ("EDGE_MQTT_URL", url.as_str()),
        ("UPSTREAM_MQTT_URL", url.as_str()),
        ("GATEWAY_ID", "gw-test"),
    ];
    let mut bridge = Bridge::start_with_env(&config, &env);
    let forwarded =
        "SELECT COUNT(*) FROM mqdb_example_edge_readings WHERE forwarded_at IS NOT NULL";
    wait_for(&mut bridge, "both readings forwarded and marked", || {
        Ok(common::try_scalar(&edge, forwarded) == Some(2))
    });
    upstream.wait_for(2, LIVENESS);
    terminate_ok(&mut bridge);

    assert_eq!(edge.count("mqdb_example_edge_readings"), 2);
    let got: Vec<(String, String, f64, String)> = upstream
        .messages()
        .iter()
        .map(|m| {
            let body = json(&m.payload);
            let text = |key: &str| body[key].as_str().expect(key).to_owned();
            let value = body["value"].as_f64().expect("value");
            (m.topic.clone(), text("device"), value, text("measured_at"))
        })
        .collect();
    let forward = |device: &str, value: f64, at: &str| {
        let topic = format!("plant/gw-test/{device}/temperature");
        (topic, device.to_string(), value, at.to_string())
    };
    let want = [
        forward("press3", 71.5, "2024-05-01T10:00:00Z"),
        forward("press4", 3.0, "2024-05-01T10:00:01Z"),
    ];
    assert_eq!(got, want);
    assert_eq!(dlq_list_in(&config, dir.path()), Vec::<Json>::new());
}

/// batched-readings: passes `check` with its defaults once its table exists; run on a
/// private Mosquitto, each reading of a batch is a row beside its message's site and its
/// topic's device, and a reading that does not convert is its own dead letter.
#[test]
fn the_batched_readings_example_passes_check_and_runs() {
    let stem = "batched-readings";
    let dir = example_passes_check(&Db::Postgres, stem, &[], &["inbound batched"]);

    let broker = Mosquitto::start();
    let config = private_copy(stem, dir.path(), &[]);
    let filters = [("gw/+/batch", 1)];
    Subscriber::connect_with(broker.port, "mqdb-example-gateways", false, &filters).disconnect();
    let device = unique("dev");
    let batch = r#"{"site": "p1", "readings": [{"ts": 1714557600, "v": 21.5},
        {"ts": "2024-05-01T12:00:01+02:00", "v": 21.75}, {"ts": 1714557602, "v": "warm"}]}"#;
    let message = (format!("gw/{device}/batch"), batch.as_bytes().to_vec());
    Publisher::connect(broker.port).publish_all_confirmed(vec![message], 1);
    let url = broker.url();
    let mut bridge = Bridge::start_with_env(&config, &[("MQTT_URL", url.as_str())]);
    let table = "mqdb_example_batched_readings";
    let count = format!("SELECT COUNT(*) FROM {table} WHERE device = '{device}'");
    let mut letters = Vec::new();
    wait_for(&mut bridge, "two rows and a dead letter", || {
        letters = dlq_list_in(&config, dir.path());
        Ok(common::try_scalar(&Db::Postgres, &count) == Some(2) && letters.len() == 1)
    });
    terminate_ok(&mut bridge);

    let query = format!(
        "SELECT site, seq, to_char(measured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
         value FROM {table} WHERE device = '{device}' ORDER BY seq"
    );
    let want = text_rows(&[
        ["p1", "0", "2024-05-01 10:00:00", "21.50"],
        ["p1", "1", "2024-05-01 10:00:01", "21.75"],
    ]);
    assert_eq!(Db::Postgres.query(&query), want);
    let letter = &letters[0];
    assert_eq!(letter["error_kind"], "convert", "{letter:#}");
    assert_eq!(letter["headers"]["index"], 2, "{letter:#}");
    assert_eq!(letter["headers"]["message"]["site"], "p1", "{letter:#}");
    assert_eq!(
        json(letter["payload"].as_str().unwrap_or("").as_bytes())["v"],
        "warm"
    );
    Db::Postgres.exec(&format!("DELETE FROM {table} WHERE device = '{device}'"));
}

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
        out.push((section.clone(), key.trim().into(), value.trim().into()));
    }
    out
}

#[test]
fn the_systemd_unit_matches_the_readme_and_verifies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = read(&root.join(UNIT));
    let settings = unit_settings(&text);
    let one = |key: &str| -> &str {
        let service = settings
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key);
        let values: Vec<&str> = service.map(|(_, _, v)| v.as_str()).collect();
        match values.as_slice() {
            [v] => v,
            other => panic!("{UNIT}: expected one {key}=, found {other:?}"),
        }
    };

    // The binary where the README and the Dockerfile install it, running `run`.
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(exec, ["/usr/local/bin/mqdb", "run"], "{UNIT}: ExecStart");
    // `systemctl reload` is the SIGHUP that `run` reloads its configuration on.
    assert_eq!(
        one("ExecReload"),
        "/bin/kill -HUP $MAINPID",
        "{UNIT}: ExecReload"
    );
    let dockerfile = read(&root.join("Dockerfile"));
    let docker_installs = dockerfile.contains(" /usr/local/bin/mqdb\n");
    assert!(docker_installs, "Dockerfile installs elsewhere");
    let readme = readme_text();
    let install = "install -m 0755 target/release/mqdb /usr/local/bin/mqdb";
    let same_path = readme.contains(install);
    assert!(same_path, "the README's install step names another path");

    // A non-root user, its state in the state directory the README's config names.
    let user = one("User");
    assert!(!["", "root", "0"].contains(&user), "User={user}");
    let state_dir = format!("/var/lib/{}", one("StateDirectory"));
    assert_eq!(one("WorkingDirectory"), state_dir);
    let state = format!("state: sqlite://{state_dir}/state.db");
    let configured = readme.contains(&state);
    assert!(configured, "README.md does not configure `{state}`");
    let volume = dockerfile.contains(&format!("VOLUME [\"{state_dir}\"]"));
    assert!(volume, "the Dockerfile's volume is not {state_dir}");
    assert_eq!(one("Environment"), "MQDB_CONFIG=/etc/mqdb/mqdb.yaml");
    assert!(readme.contains("/etc/mqdb/mqdb.yaml"));

    // Restarted after a failure, but not for a configuration error (exit 2).
    for (key, value) in [
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(one(key), value, "{UNIT}: {key}");
    }

    // systemd's own check, with ExecStart pointing at the binary under test (verify
    // requires it to exist). Warnings (an unknown key, a bad value) fail it too.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut on_path = std::env::split_paths(&path).map(|dir| dir.join("systemd-analyze"));
    let Some(analyze) = on_path.find(|p| p.is_file()) else {
        eprintln!("systemd-analyze is not installed: {UNIT} was only parsed");
        return;
    };
    let dir = temp_dir("unit");
    let unit = dir.path().join("mqdb.service");
    let bin = common::mqdb_bin().display().to_string();
    std::fs::write(&unit, text.replace("/usr/local/bin/mqdb", &bin)).unwrap();
    let out = Ran::of(Command::new(analyze).arg("verify").arg(&unit));
    let clean = out.code == Some(0) && out.stdout.is_empty() && out.stderr.is_empty();
    assert!(clean, "systemd-analyze verify {UNIT}\n{out}");
}

/// Runs `scripts/setup.sh --packages` as user id `uid` with every package missing, every
/// driver unregistered and CommLog on, on stand-ins for the system commands (`id`, `sudo`,
/// `dpkg-query`, `apt-get`, `odbcinst`) that log what they were asked to do instead of
/// doing it, and returns that log. `sudo` logs its command and does not run it.
fn setup_steps(uid: u32) -> Vec<String> {
    let dir = temp_dir("setup");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("log");
    let logs = r#"echo "$(basename "$0") $*" >> "$FAKE_LOG""#;
    let odbcinst = format!("{logs}\n[ \"$1\" = -q ] && exit 1\ncat >/dev/null");
    let id = r#"[ "$1" = -u ] && echo "$FAKE_UID" || exec /usr/bin/id "$@""#;
    for (name, body) in [
        ("id", id),
        ("sudo", logs),
        ("dpkg-query", "exit 1"),
        ("apt-get", logs),
        ("odbcinst", &odbcinst),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ini = dir.path().join("odbcinst.ini");
    std::fs::write(&ini, "[PostgreSQL Unicode]\nCommLog=1\n").unwrap();

    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg("--packages")
        .env("PATH", path)
        .env("FAKE_LOG", &log);
    cmd.env("FAKE_UID", uid.to_string())
        .env("ODBCSYSINI", dir.path());
    let out = Ran::of(&mut cmd);
    assert_eq!(out.code, Some(0), "setup.sh as uid {uid}\n{out}");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    // The registrations' queries (`odbcinst -q`) are not privileged steps.
    let mut steps: Vec<String> = logged
        .lines()
        .filter(|s| !s.starts_with("odbcinst -q"))
        .map(str::to_owned)
        .collect();
    if read(&ini).contains("CommLog=0") {
        steps.push("(CommLog turned off without sudo)".into());
    }
    steps
}

#[test]
fn setup_uses_sudo_for_every_privileged_step_unless_root() {
    let missing = "unixodbc unixodbc-dev odbc-postgresql odbc-mariadb libsqliteodbc";
    let expected = |apt: &str, odbcinst: &str| {
        let mut steps = vec![
            format!("{apt}update -qq"),
            format!("{apt}install -y -qq --no-install-recommends {missing}"),
        ];
        steps.extend(std::iter::repeat_n(format!("{odbcinst} -i -d -r"), 3));
        steps
    };

    // Not root: apt-get, the driver registrations and the CommLog fix all go through sudo.
    let steps = setup_steps(1000);
    let sudo_apt = "sudo env DEBIAN_FRONTEND=noninteractive apt-get ";
    let with_sudo = expected(sudo_apt, "sudo odbcinst");
    assert_eq!(steps[..5], with_sudo[..], "{steps:#?}");
    assert_eq!(steps.len(), 6, "{steps:#?}");
    let sed = steps[5].starts_with("sudo sed -i s/^CommLog=1/CommLog=0/ ");
    assert!(sed, "{steps:#?}");

    // Root: the same steps run directly, sudo is never asked for.
    let mut expected_root = expected("apt-get ", "odbcinst");
    expected_root.push("(CommLog turned off without sudo)".into());
    assert_eq!(setup_steps(0), expected_root);
}
