//! Self-tests of the shared harness in `tests/common/` against the real local services.

mod common;

use common::{
    Config, Db, Mosquitto, NULL, Publisher, Received, Route, Subscriber, TcpProxy, TempTable,
    odbc_connect, odbc_query, temp_sqlite, text_rows, unique, wait_until,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

#[test]
fn unique_names_are_distinct_lowercase_identifiers() {
    // Given many names from the same prefix, including characters that are not SQL-safe
    let names: Vec<String> = (0..1000).map(|_| unique("My-Table/X")).collect();

    // Then they are all distinct, start with the sanitized prefix and fit identifier limits
    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len());
    for n in &names {
        assert!(n.starts_with("my_table_x_"), "{n}");
        let safe = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        assert!(n.chars().all(safe), "{n}");
        assert!(n.len() <= 63, "{n} is too long for PostgreSQL");
    }
    // And a prefix that starts with a digit still yields a valid identifier
    assert!(unique("1abc").starts_with('t'));
}

#[test]
fn mosquitto_queues_beyond_default_limit_and_keeps_sessions_across_restart() {
    // Given a private broker, a live subscriber and an offline persistent session
    let mut broker = Mosquitto::start();
    assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{}", broker.port));
    let topic = format!("harness/{}", unique("persist"));
    let session_id = unique("persistent_sub");
    let first = Subscriber::connect_with(broker.port, &session_id, false, &[(&topic, 1)]);
    assert!(!first.session_present, "a fresh client id has no session");
    first.disconnect();
    let live = Subscriber::connect(broker.port, &topic, 1);

    // When more QoS 1 messages than Mosquitto's default queue limit (1000) are published
    let n = 1500;
    let publisher = Publisher::connect(broker.port);
    let msgs = (0..n).map(|i| (topic.clone(), format!("m{i}").into_bytes()));
    publisher.publish_all_confirmed(msgs.collect(), 1);

    // Then every one is PUBACKed and the live subscriber sees all of them
    assert_eq!(publisher.acked(), n as u64);
    let got = live.wait_for(n, Duration::from_secs(60));
    assert_eq!(got.len(), n);
    drop(publisher);
    drop(live);

    // When the broker stops (SIGTERM writes persistence) and starts again on the same port
    broker.stop();
    assert!(!broker.is_running());
    broker.restart();
    assert!(broker.is_running());

    // Then the persistent session resumes with all queued messages, none dropped
    let resumed = Subscriber::connect_with(broker.port, &session_id, false, &[]);
    let lost = format!("session lost over restart; log:\n{}", broker.log());
    assert!(resumed.session_present, "{lost}");
    let got = resumed.wait_for(n, Duration::from_secs(60));
    let payloads: HashSet<&str> = got.iter().map(|m| m.payload_str()).collect();
    assert_eq!(payloads.len(), n, "distinct payloads after restart");
    assert!(payloads.contains("m0") && payloads.contains("m1499"));
    assert!(got.iter().all(|m| m.topic == topic && m.qos == 1));
}

#[test]
fn publisher_confirms_qos2_and_qos0_through_proxy() {
    // Given a private broker reached through a proxy
    let broker = Mosquitto::start();
    let proxy = TcpProxy::start(broker.addr());
    let topic = format!("harness/{}", unique("qos2"));
    let sub = Subscriber::connect(broker.port, &topic, 2);

    // When 200 QoS 2 messages and 50 QoS 0 messages are published via the proxy
    let publisher = Publisher::connect(proxy.port);
    let msgs = |n: usize, tag: &str| -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| (topic.clone(), format!("{tag}{i}").into_bytes()))
            .collect()
    };
    publisher.publish_all_confirmed(msgs(200, "two-"), 2);
    assert_eq!(publisher.acked(), 200, "every QoS 2 publish PUBCOMPed");
    publisher.publish_all_confirmed(msgs(50, "zero-"), 0);

    // Then the subscriber receives the QoS 2 ones exactly once (QoS 0 on loopback: all)
    let got = sub.wait_for(250, Duration::from_secs(60));
    let two = |m: &&Received| m.payload_str().starts_with("two-");
    assert_eq!(got.iter().filter(two).count(), 200);
    assert_eq!(proxy.live_connections(), 1);
}

#[test]
fn tcp_proxy_cuts_and_restores_a_postgres_odbc_connection() {
    // Given an ODBC connection to PostgreSQL through the proxy
    let target: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = TcpProxy::start(target);
    let via = Db::Postgres.connection_string_via(proxy.port);
    assert!(via.contains(&format!("Port={};", proxy.port)));
    let conn = odbc_connect(&via).expect("connect through the proxy");
    let rows = odbc_query(&conn, "SELECT 41 + 1").expect("query through the proxy");
    assert_eq!(rows, vec![vec![Some("42".to_string())]]);
    assert_eq!(proxy.live_connections(), 1);

    // When the proxy goes down
    proxy.set_down(true);

    // Then the live connection fails, and so does a new one
    let err = odbc_query(&conn, "SELECT 1").expect_err("query on a cut connection");
    assert!(!err.is_empty());
    assert!(odbc_connect(&via).is_err(), "new connection while down");
    assert_eq!(proxy.live_connections(), 0);
    drop(conn);

    // When it comes back up, a new connection works again
    proxy.set_down(false);
    let conn = odbc_connect(&via).expect("connect after the proxy is up again");
    let rows = odbc_query(&conn, "SELECT 'up'").expect("query after restore");
    assert_eq!(rows, vec![vec![Some("up".to_string())]]);
}

/// Create, insert (NULL, non-ASCII, a value larger than the first text buffer), read back,
/// count, and drop a unique table.
fn db_roundtrip(db: &Db, text_type: &str) {
    if let Db::Sqlite(_) = db {
        assert!(db.connection_string().contains("test.db"));
    }
    // Given a unique table
    let long = "x".repeat(20_000);
    let columns = format!("id INTEGER PRIMARY KEY, name VARCHAR(50), body {text_type}");
    let table = TempTable::create(db, "harness", &columns);
    let name = table.name.clone();
    assert_eq!(table.count(), 0);

    // When rows are inserted
    db.exec(&format!(
        "INSERT INTO {name} (id, name, body) VALUES (1, 'Grüße', 'short'), (2, NULL, '{long}'), (3, 'c', NULL)"
    ));

    // Then they read back as text, NULL as None, the long value untruncated
    let rows = db.query(&format!("SELECT id, name, body FROM {name} ORDER BY id"));
    let want = [
        ["1", "Grüße", "short"],
        ["2", NULL, &long],
        ["3", "c", NULL],
    ];
    assert_eq!(rows, text_rows(&want));
    assert_eq!(db.count(&name), 3);

    // And a failing statement is reported with its SQL
    let duplicate = db.try_exec(&format!("INSERT INTO {name} (id) VALUES (1)"));
    let err = duplicate.expect_err("duplicate key");
    assert!(err.contains(&name), "{err}");

    // And the table is gone once the guard drops
    drop(table);
    let gone = db.try_query(&format!("SELECT COUNT(*) FROM {name}"));
    assert!(gone.is_err());
}

common::cases! {
    db_roundtrip_postgres: db_roundtrip(&Db::Postgres, "TEXT");
    db_roundtrip_mariadb: db_roundtrip(&Db::MariaDb, "LONGTEXT");
    db_roundtrip_sqlite: db_roundtrip(&temp_sqlite(), "TEXT");
}

#[test]
fn wait_until_returns_when_true_and_panics_with_its_description() {
    let mut calls = 0;
    wait_until("third call", Duration::from_secs(5), || {
        calls += 1;
        calls >= 3
    });
    assert_eq!(calls, 3);

    let panic = std::panic::catch_unwind(|| {
        wait_until("never", Duration::from_millis(200), || false);
    })
    .expect_err("must time out");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("never"), "{msg}");
}

#[test]
fn config_builder_writes_block_yaml_with_typed_values() {
    // Given a config with a broker, a database and two routes
    let client_id = serde_json::json!({ "client_id": "c" });
    let r = Route::inbound("r", "t/#", "tbl")
        .columns(&[("id", "payload.id")])
        .lines(&["batch: { max_rows: 5, max_delay: 100ms }", "start: 0"]);
    let o = Route::outbound("o", "SELECT 1")
        .track("id", 0)
        .interval("1s");
    let p = Route::named("p")
        .broker("b")
        .topic("x/{id}")
        .qos(0)
        .format("csv")
        .batch(5, "1s")
        .max_rows(7)
        .on_conflict("ignore", &["id"]);
    let config = Config::at("/tmp/unused.yaml")
        .state("sqlite:///tmp/x/state.db")
        .broker("b", "mqtt://127.0.0.1:1883", client_id)
        .database("d", "Driver={SQLite3};Database=/tmp/x/t.db")
        .inbound(r)
        .outbound(o)
        .outbound(p);

    // Then its YAML has one setting a line, numbers unquoted and strings quoted
    assert_eq!(
        config.yaml(),
        "state: \"sqlite:///tmp/x/state.db\"\n\
         brokers:\n  b:\n    url: \"mqtt://127.0.0.1:1883\"\n    client_id: \"c\"\n\
         databases:\n  d:\n    connection_string: \"Driver={SQLite3};Database=/tmp/x/t.db\"\n\
         inbound:\n  - name: \"r\"\n    broker: \"b\"\n    topic: \"t/#\"\n    qos: 1\n    \
         database: \"d\"\n    table: \"tbl\"\n    format: \"json\"\n    columns:\n      \
         id: \"payload.id\"\n    batch:\n      max_rows: 5\n      max_delay: \"100ms\"\n    \
         start: 0\n\
         outbound:\n  - name: \"o\"\n    database: \"d\"\n    query: \"SELECT 1\"\n    \
         track: \"id\"\n    start: 0\n    interval: \"1s\"\n  - name: \"p\"\n    \
         broker: \"b\"\n    topic: \"x/{id}\"\n    qos: 0\n    format: \"csv\"\n    \
         batch:\n      max_rows: 7\n      max_delay: \"1s\"\n    on_conflict: \"ignore\"\n    \
         key:\n      - \"id\"\n"
    );
}
