//! Memory bounded in bytes, through the real brokers and databases: a payload over the
//! broker's `max_message_bytes` is a `too_large` dead letter (MQTT 3.1.1, MQTT 5 within the
//! announced packet size, AMQP) while the rest flows, and MQTT 5 brokers discard what is over
//! the announced size instead of sending it; `max_in_flight_bytes` stops a source from taking
//! more while the database holds its messages; a CSV message of many lines is written in
//! batches of `max_rows` as it is read; rows with long values on MariaDB's parameter arrays.
//!
//! How much memory these cost is measured by the benchmark harness (`MQDB_BENCH_ONLY=memory`),
//! not here: these tests assert what happens to each message.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    Bridge, Db, LIVENESS, Mosquitto, Publisher, Rabbit, Subscriber, TempTable, dlq_list, http,
    path_str, terminate_ok, unique, wait_for, wait_until,
};
use serde_json::Value as Json;

/// One bridge's world: a private Mosquitto, a temp dir, an HTTP listener for `/metrics`.
struct World {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    client_id: String,
    http: String,
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::Builder::new()
                .prefix("mqdb-bounds-")
                .tempdir()
                .expect("temp dir"),
            broker: Mosquitto::start(),
            client_id: unique("bounds"),
            http: format!("127.0.0.1:{}", common::free_port()),
        }
    }

    /// `mqdb.yaml` with MQTT broker `b` (its extra `broker` lines), database `d` and `routes`.
    fn config(&self, broker: &str, db: &Db, routes: &str) -> PathBuf {
        let text = format!(
            "state: \"sqlite://{state}\"\nhttp: {{ listen: \"{http}\" }}\n\
             brokers:\n  b:\n    url: \"{url}\"\n    client_id: \"{client}\"\n{broker}\
             \n  r:\n    url: \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
             databases:\n  d:\n    connection_string: \"{cs}\"\n\
             inbound:\n{routes}",
            state = self.dir.path().join("state.db").display(),
            http = self.http,
            url = self.broker.url(),
            client = self.client_id,
            cs = db.connection_string(),
        );
        let path = self.dir.path().join("mqdb.yaml");
        std::fs::write(&path, text).expect("write mqdb.yaml");
        path
    }

    fn persistent_session(&self, filter: &str, mqtt5: bool) {
        if mqtt5 {
            // An MQTT 5 session needs an expiry; the bridge sets its own when it connects.
            return;
        }
        Subscriber::connect_with(self.broker.port, &self.client_id, false, &[(filter, 1)])
            .disconnect();
    }

    /// A value from `/metrics` for route `route`, 0 while absent.
    fn metric(&self, name: &str, route: &str) -> f64 {
        let Ok((200, text)) = http::try_request(&self.http, "GET", "/metrics") else {
            return 0.0;
        };
        let series = format!("{name}{{route=\"{route}\"");
        text.lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

fn route(name: &str, source: &str, table: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    {source}\n    database: d\n    table: {table}\n{extra}",
        source = source.replace('\n', "\n    "),
    )
}

/// A table on `db`, a topic, and a config with one MQTT route `name` from that topic into
/// the table (`broker`: extra lines of broker `b`; `extra`: extra lines of the route).
fn mqtt_route(
    world: &World,
    db: &Db,
    name: &str,
    columns: &str,
    broker: &str,
    extra: &str,
) -> (TempTable, String, PathBuf) {
    let table = TempTable::create(db, name, columns);
    let topic = format!("{}/m", unique(name));
    let source = format!("broker: b\ntopic: \"{topic}\"\nqos: 1");
    let config = world.config(broker, db, &route(name, &source, &table.name, extra));
    (table, topic, config)
}

/// Waits for the row `id`, then for the one `too_large` dead letter, stored whole
/// (`payload_len` bytes); the table holds that one row only.
fn small_row_and_one_too_large(
    bridge: &mut Bridge,
    db: &Db,
    table: &TempTable,
    config: &std::path::Path,
    id: i64,
    payload_len: usize,
) -> Json {
    wait_for(bridge, "the small row", || {
        Ok(db
            .try_query(&format!("SELECT id FROM {} WHERE id = {id}", table.name))
            .map(|r| r.len() == 1)
            .unwrap_or(false))
    });
    wait_until("the dead letter", LIVENESS, || {
        !letters_of_kind(config, "too_large").is_empty()
    });
    let letters = letters_of_kind(config, "too_large");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["payload"].as_str().unwrap().len(), payload_len);
    assert_eq!(table.count(), 1, "only the small message is a row");
    letters[0].clone()
}

/// The broker connection was never lost (no reconnection loop); then a clean stop.
fn stop_having_stayed_connected(bridge: &mut Bridge) {
    assert!(
        !bridge.log().contains("broker connection lost"),
        "{}",
        bridge.log()
    );
    terminate_ok(bridge);
}

fn letters_of_kind(config: &std::path::Path, kind: &str) -> Vec<Json> {
    dlq_list(config)
        .into_iter()
        .filter(|l| l["error_kind"] == kind)
        .collect()
}

// ---------------------------------------------------------------------------------------
// max_message_bytes
// ---------------------------------------------------------------------------------------

/// Given a limit of 64 KiB, when a 100 KiB message and then a small one arrive over MQTT
/// 3.1.1, then the large one is a `too_large` dead letter with its size, stored whole, and
/// the small one is a row: no reconnection loop.
#[test]
fn an_mqtt_311_message_over_the_limit_is_a_dead_letter_and_the_rest_flows() {
    let world = World::new();
    let db = Db::Postgres;
    let (table, topic, config) = mqtt_route(
        &world,
        &db,
        "toolarge",
        "id BIGINT, note TEXT",
        "    max_message_bytes: 64KiB\n",
        "",
    );
    world.persistent_session(&topic, false);
    let large = format!("{{\"id\": 1, \"note\": \"{}\"}}", "x".repeat(100 * 1024));
    Publisher::connect(world.broker.port).publish_all_confirmed(
        vec![
            (topic.clone(), large.clone().into_bytes()),
            (topic.clone(), br#"{"id": 2, "note": "small"}"#.to_vec()),
        ],
        1,
    );
    let mut bridge = Bridge::start(&config);
    let letter = small_row_and_one_too_large(&mut bridge, &db, &table, &config, 2, large.len());
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains(&large.len().to_string()) && error.contains("64 KiB"),
        "{error}"
    );
    stop_having_stayed_connected(&mut bridge);
}

/// MQTT 5: the bridge announces the limit (plus room for the topic) as its Maximum Packet
/// Size. A message a little over the limit still arrives and is a dead letter; one far over
/// the announced size is discarded by the broker and never reaches the bridge; the rest
/// flows without a reconnection.
#[test]
fn an_mqtt_5_subscriber_announces_its_limit_and_dead_letters_what_still_arrives() {
    let world = World::new();
    let db = Db::Postgres;
    let (table, topic, config) = mqtt_route(
        &world,
        &db,
        "toolarge5",
        "id BIGINT, note TEXT",
        "    max_message_bytes: 64KiB\n    mqtt_version: 5\n",
        "",
    );
    let mut bridge = Bridge::start(&config);
    wait_until("the route to be up", LIVENESS, || {
        world.metric("mqdb_up", "toolarge5") == 1.0
    });
    let over = |n: usize| format!("{{\"id\": 1, \"note\": \"{}\"}}", "y".repeat(n));
    let slightly = over(70 * 1024);
    Publisher::connect(world.broker.port).publish_all_confirmed(
        vec![
            (topic.clone(), over(1024 * 1024).into_bytes()),
            (topic.clone(), slightly.clone().into_bytes()),
            (topic.clone(), br#"{"id": 3, "note": "small"}"#.to_vec()),
        ],
        1,
    );
    // Only the 70 KiB message arrives: the 1 MiB one is over the announced size.
    small_row_and_one_too_large(&mut bridge, &db, &table, &config, 3, slightly.len());
    stop_having_stayed_connected(&mut bridge);
}

/// AMQP brokers send whole bodies: an oversized one is a dead letter, acknowledged, and the
/// queue keeps flowing.
#[test]
fn an_amqp_message_over_the_limit_is_a_dead_letter_and_the_rest_flows() {
    let world = World::new();
    let db = Db::Postgres;
    let table = TempTable::create(&db, "toolargeq", "id BIGINT, note TEXT");
    let queue = unique("bigq");
    let mut rabbit = Rabbit::connect();
    rabbit.declare_durable_queue(&queue);
    let config = world.config(
        "",
        &db,
        &route(
            "bigq",
            &format!("broker: r\nqueue: \"{queue}\""),
            &table.name,
            "",
        ),
    );
    // The AMQP broker's limit is its own block's: set it on `r`.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("%2f\"\n", "%2f\"\n    max_message_bytes: 64KiB\n");
    std::fs::write(&config, text).unwrap();
    let large = format!("{{\"id\": 1, \"note\": \"{}\"}}", "z".repeat(200 * 1024));
    rabbit.publish_to_queue(
        &queue,
        vec![
            large.clone().into_bytes(),
            br#"{"id": 2, "note": "small"}"#.to_vec(),
        ],
    );
    let mut bridge = Bridge::start(&config);
    small_row_and_one_too_large(&mut bridge, &db, &table, &config, 2, large.len());
    terminate_ok(&mut bridge);
    wait_until("the queue to be drained and acknowledged", LIVENESS, || {
        Rabbit::queue_info(&queue).is_some_and(|q| q.messages == 0)
    });
}

#[test]
fn sizes_that_cannot_work_are_configuration_errors() {
    let world = World::new();
    let db = Db::Postgres;
    for (broker, says) in [
        (
            "    max_message_bytes: 1MiB\n    max_in_flight_bytes: 512KiB\n",
            "max_in_flight_bytes (512 KiB) must be at least max_message_bytes (1 MiB)",
        ),
        (
            "    max_message_bytes: 1GiB\n",
            "max_message_bytes must be between",
        ),
        (
            "    max_message_bytes: 16 parsecs\n",
            "unknown size unit `parsecs`",
        ),
    ] {
        let config = world.config(
            broker,
            &db,
            &route("r1", "broker: b\ntopic: \"t/+\"", "t1", ""),
        );
        let out = common::run_mqdb(&["-c", path_str(&config), "check"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{broker}: {stderr}");
        assert!(stderr.contains(says), "{broker}: {stderr}");
        assert!(
            stderr.contains("mqdb.yaml:"),
            "names the file and line: {stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// max_in_flight_bytes
// ---------------------------------------------------------------------------------------

/// Holds an exclusive lock on `table` until dropped: the bridge's inserts wait on it.
struct Locked {
    conn: odbc_api::Connection<'static>,
}

impl Locked {
    fn new(db: &Db, table: &str) -> Locked {
        let conn = db.connect();
        conn.set_autocommit(false).unwrap();
        common::odbc_exec(
            &conn,
            &format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"),
        )
        .unwrap();
        Locked { conn }
    }

    fn release(self) {
        self.conn.commit().unwrap();
    }
}

/// Given a byte budget of 1 MiB and a database that does not answer, when 20 messages of
/// 200 KiB arrive, the bridge holds only the five that fit the budget (not its 10,000
/// message window); once the database answers, all 20 are rows.
fn the_byte_budget_bounds_what_is_held(amqp: bool) {
    let world = World::new();
    let db = Db::Postgres;
    let table = TempTable::create(&db, "budget", "id BIGINT, note TEXT");
    let name = if amqp { "budgetq" } else { "budgetm" };
    let topic = format!("{}/m", unique("budget"));
    let queue = unique("budgetq");
    let mut rabbit = Rabbit::connect();
    let limits = "    max_message_bytes: 256KiB\n    max_in_flight_bytes: 1MiB\n";
    let (mqtt_limits, source) = if amqp {
        rabbit.declare_durable_queue(&queue);
        // A prefetch far above what the bytes allow.
        ("", format!("broker: r\nqueue: \"{queue}\"\nprefetch: 100"))
    } else {
        (limits, format!("broker: b\ntopic: \"{topic}\"\nqos: 1"))
    };
    let config = world.config(
        mqtt_limits,
        &db,
        &route(name, &source, &table.name, "    batch: { max_rows: 100 }\n"),
    );
    if amqp {
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("%2f\"\n", &format!("%2f\"\n{limits}"));
        std::fs::write(&config, text).unwrap();
    }
    world.persistent_session(&topic, false);
    let lock = Locked::new(&db, &table.name);
    let payloads: Vec<Vec<u8>> = (1..=20)
        .map(|id| {
            format!("{{\"id\": {id}, \"note\": \"{}\"}}", "n".repeat(200 * 1024)).into_bytes()
        })
        .collect();
    if amqp {
        rabbit.publish_to_queue(&queue, payloads);
    } else {
        Publisher::connect(world.broker.port).publish_all_confirmed(
            payloads.into_iter().map(|p| (topic.clone(), p)).collect(),
            1,
        );
    }
    let mut bridge = Bridge::start(&config);
    wait_until("the bridge to hold what fits", LIVENESS, || {
        world.metric("mqdb_in_flight", name) >= 5.0
    });
    // Give it every chance to take more than it may.
    std::thread::sleep(Duration::from_secs(2));
    let held = world.metric("mqdb_in_flight", name);
    assert_eq!(held, 5.0, "5 × 200 KiB fit 1 MiB; held {held}");
    lock.release();
    wait_for(&mut bridge, "all 20 rows", || Ok(table.count() == 20));
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn the_byte_budget_bounds_what_an_mqtt_broker_hands_over() {
    the_byte_budget_bounds_what_is_held(false);
}

#[test]
fn the_byte_budget_bounds_what_an_amqp_broker_hands_over() {
    the_byte_budget_bounds_what_is_held(true);
}

// ---------------------------------------------------------------------------------------
// Large CSV messages, long values
// ---------------------------------------------------------------------------------------

/// Given `max_rows: 100`, when one CSV message carries 5,000 lines (two of them bad), then
/// it is written in batches of at most 100 rows as it is read (the batch counter shows at
/// least 50 batches, where the whole message used to be one), the bad lines are dead letters
/// with their line numbers, and the message is acknowledged once: a restart brings nothing
/// back.
#[test]
fn a_long_csv_message_is_written_in_batches_as_it_is_read() {
    let world = World::new();
    let db = Db::Postgres;
    let (table, topic, config) = mqtt_route(
        &world,
        &db,
        "parts",
        "id BIGINT PRIMARY KEY, v BIGINT",
        "",
        "    format: csv\n    batch: { max_rows: 100 }\n",
    );
    world.persistent_session(&topic, false);
    let mut csv = String::new();
    for id in 1..=5000 {
        match id {
            1234 => csv.push_str("1234,not a number\n"),
            4321 => csv.push_str("4321\n"),
            _ => csv.push_str(&format!("{id},{}\n", id * 2)),
        }
    }
    Publisher::connect(world.broker.port)
        .publish_all_confirmed(vec![(topic.clone(), csv.into_bytes())], 1);
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "4998 rows", || Ok(table.count() == 4998));
    wait_until("two dead letters", LIVENESS, || {
        dlq_list(&config).len() == 2
    });
    let mut lines: Vec<i64> = dlq_list(&config)
        .iter()
        .map(|l| l["headers"]["line"].as_i64().unwrap())
        .collect();
    lines.sort();
    assert_eq!(lines, vec![1234, 4321]);
    let sum: i64 = db.query(&format!("SELECT SUM(v) FROM {}", table.name))[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sum, (1..=5000i64).sum::<i64>() * 2 - 2 * (1234 + 4321));
    let batches = world.metric("mqdb_batch_seconds_count", "parts");
    assert!(batches >= 50.0, "{batches} batches for 5000 lines of 100");
    terminate_ok(&mut bridge);
    // Acknowledged: the broker does not deliver it again.
    let mut bridge = Bridge::start(&config);
    wait_until("the route to be up again", LIVENESS, || {
        world.metric("mqdb_up", "parts") == 1.0
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(world.metric("mqdb_messages_received_total", "parts"), 0.0);
    assert_eq!(dlq_list(&config).len(), 2);
    terminate_ok(&mut bridge);
}

/// MariaDB's parameter arrays reserve the longest value for every row: rows with long
/// values go alone, and every value arrives exactly, in a batch that mixes both.
#[test]
fn long_and_short_values_in_one_mariadb_batch_arrive_exactly() {
    let world = World::new();
    let db = Db::MariaDb;
    let (table, topic, config) = mqtt_route(
        &world,
        &db,
        "longvals",
        "id BIGINT PRIMARY KEY, note LONGTEXT",
        "",
        "",
    );
    world.persistent_session(&topic, false);
    let note = |id: usize| -> String {
        let len = if id.is_multiple_of(10) {
            3 << 20
        } else {
            10 + id
        };
        (0..len)
            .map(|i| char::from(b'a' + ((i + id) % 26) as u8))
            .collect()
    };
    let messages: Vec<(String, Vec<u8>)> = (1..=40)
        .map(|id| {
            (
                topic.clone(),
                serde_json::json!({"id": id, "note": note(id)})
                    .to_string()
                    .into_bytes(),
            )
        })
        .collect();
    Publisher::connect(world.broker.port).publish_all_confirmed(messages, 1);
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "40 rows", || Ok(table.count() == 40));
    for id in [1usize, 9, 10, 11, 30, 40] {
        let want = note(id);
        let middle = want.len() / 2;
        let got = db.query(&format!(
            "SELECT LENGTH(note), SUBSTRING(note, 1, 40), SUBSTRING(note, {}, 40), \
             RIGHT(note, 40) FROM {} WHERE id = {id}",
            middle + 1,
            table.name
        ));
        let piece = |from: usize| want[from..(from + 40).min(want.len())].to_string();
        assert_eq!(
            got[0],
            vec![
                Some(want.len().to_string()),
                Some(piece(0)),
                Some(piece(middle)),
                Some(want[want.len().saturating_sub(40)..].to_string()),
            ],
            "id {id}"
        );
    }
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

/// Given a PostgreSQL route, when a batch carries 16 MiB or more of values, the sink renews
/// its connection after the commit (libpq keeps a send buffer as large as the largest
/// statement for the life of a connection), and the route goes on on the new one.
#[test]
fn a_postgresql_connection_is_renewed_after_a_batch_of_large_values() {
    let world = World::new();
    let db = Db::Postgres;
    let (table, topic, config) = mqtt_route(
        &world,
        &db,
        "renewed",
        "id BIGINT, note TEXT",
        "    max_message_bytes: 32MiB\n",
        "",
    );
    world.persistent_session(&topic, false);
    let note = "r".repeat(17 << 20);
    let publisher = Publisher::connect(world.broker.port);
    publisher.publish_all_confirmed(
        vec![(
            topic.clone(),
            format!("{{\"id\": 1, \"note\": \"{note}\"}}").into_bytes(),
        )],
        1,
    );
    let mut bridge = Bridge::start_with_env(&config, &[("RUST_LOG", "warn,mqdb=debug")]);
    wait_for(&mut bridge, "the large row", || Ok(table.count() == 1));
    bridge.wait_for_log("reconnecting to give back the driver's buffers", LIVENESS);
    publisher.publish_all_confirmed(
        vec![(topic.clone(), br#"{"id": 2, "note": "after"}"#.to_vec())],
        1,
    );
    wait_for(&mut bridge, "the row after", || Ok(table.count() == 2));
    assert_eq!(
        db.query(&format!(
            "SELECT id, LENGTH(note) FROM {} ORDER BY id",
            table.name
        )),
        vec![
            vec![Some("1".to_string()), Some(note.len().to_string())],
            vec![Some("2".to_string()), Some("5".to_string())],
        ]
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}
