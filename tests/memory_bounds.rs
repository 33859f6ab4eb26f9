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
    Bridge, Db, LIVENESS, Rabbit, Route, TempTable, World, amqp_route, dlq_list, http, lock_holder,
    mqdb_at, terminate_ok, unique, wait_for, wait_until,
};
use serde_json::{Value as Json, json};

/// A private world whose bridge serves `/metrics` on `http`.
struct Bounds {
    world: World,
    http: String,
}

impl Bounds {
    fn new() -> Bounds {
        let http = format!("127.0.0.1:{}", common::free_port());
        let world = World::new("bounds");
        Bounds { world, http }
    }

    /// `mqdb.yaml` with MQTT broker `b` and AMQP broker `r` (each with its extra settings, a
    /// JSON object or `null`), database `d` and one inbound `route`.
    fn config(&self, db: &Db, mqtt: Json, amqp: Json, route: Route) -> PathBuf {
        let (url, settings) = self.world.mqtt(mqtt);
        let config = self.world.config(db).broker("b", &url, settings);
        let config = config.broker("r", Rabbit::URL, amqp).inbound(route);
        config.set("http", json!({ "listen": self.http })).write()
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

    /// Publishes `payloads` to `topic` at QoS 1 and waits for the broker's PUBACKs.
    fn publish(&self, topic: &str, payloads: Vec<Vec<u8>>) {
        let messages = payloads.into_iter().map(|p| (topic.to_owned(), p));
        let publisher = self.world.publisher();
        publisher.publish_all_confirmed(messages.collect(), 1);
    }

    /// Waits for the row `id`, then for the one `too_large` dead letter, stored whole
    /// (`len` bytes); the table holds that one row only.
    fn one_too_large(&self, bridge: &mut Bridge, table: &TempTable, id: i64, len: usize) -> Json {
        let sql = format!("SELECT id FROM {} WHERE id = {id}", table.name);
        wait_for(bridge, "the small row", || {
            Ok(table.db.try_query(&sql).is_ok_and(|r| r.len() == 1))
        });
        let config = self.world.path("mqdb.yaml");
        let too_large = || -> Vec<Json> {
            let letters = dlq_list(&config).into_iter();
            letters.filter(|l| l["error_kind"] == "too_large").collect()
        };
        wait_until("the dead letter", LIVENESS, || !too_large().is_empty());
        let letters = too_large();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0]["payload"].as_str().unwrap().len(), len);
        assert_eq!(table.count(), 1, "only the small message is a row");
        letters[0].clone()
    }
}

/// A table on `db`, a topic, and route `name` from that topic into the table, whose
/// persistent session already queues what is published.
fn mqtt_route(w: &Bounds, db: &Db, name: &str, columns: &str) -> (TempTable, String, Route) {
    let table = TempTable::create(db, name, columns);
    let topic = format!("{}/m", unique(name));
    w.world.persistent_session(&topic);
    let route = Route::inbound(name, &topic, &table.name);
    (table, topic, route)
}

fn note(id: i64, note: &str) -> Vec<u8> {
    json!({ "id": id, "note": note }).to_string().into_bytes()
}

/// The broker connection was never lost (no reconnection loop); then a clean stop.
fn stop_having_stayed_connected(bridge: &mut Bridge) {
    let log = bridge.log();
    assert!(!log.contains("broker connection lost"), "{log}");
    terminate_ok(bridge);
}

/// Given a limit of 64 KiB, when a 100 KiB message and then a small one arrive over MQTT
/// 3.1.1, then the large one is a `too_large` dead letter with its size, stored whole, and
/// the small one is a row: no reconnection loop.
#[test]
fn an_mqtt_311_message_over_the_limit_is_a_dead_letter_and_the_rest_flows() {
    let w = Bounds::new();
    let (table, topic, route) = mqtt_route(&w, &Db::Postgres, "toolarge", "id BIGINT, note TEXT");
    let limit = json!({ "max_message_bytes": "64KiB" });
    let config = w.config(&Db::Postgres, limit, Json::Null, route);
    let large = note(1, &"x".repeat(100 * 1024));
    w.publish(&topic, vec![large.clone(), note(2, "small")]);
    let mut bridge = Bridge::start(&config);
    let letter = w.one_too_large(&mut bridge, &table, 2, large.len());
    let error = letter["error"].as_str().unwrap();
    let says = error.contains(&large.len().to_string()) && error.contains("64 KiB");
    assert!(says, "{error}");
    stop_having_stayed_connected(&mut bridge);
}

/// MQTT 5: the bridge announces the limit (plus room for the topic) as its Maximum Packet
/// Size. A message a little over the limit still arrives and is a dead letter; one far over
/// the announced size is discarded by the broker and never reaches the bridge; the rest
/// flows without a reconnection.
#[test]
fn an_mqtt_5_subscriber_announces_its_limit_and_dead_letters_what_still_arrives() {
    let w = Bounds::new();
    let db = Db::Postgres;
    // No persistent session beforehand: an MQTT 5 session needs an expiry, which the bridge
    // sets itself when it connects.
    let table = TempTable::create(&db, "toolarge5", "id BIGINT, note TEXT");
    let topic = format!("{}/m", unique("toolarge5"));
    let limit = json!({ "max_message_bytes": "64KiB", "mqtt_version": 5 });
    let route = Route::inbound("toolarge5", &topic, &table.name);
    let config = w.config(&db, limit, Json::Null, route);
    let mut bridge = Bridge::start(&config);
    let up = || w.metric("mqdb_up", "toolarge5") == 1.0;
    wait_until("the route to be up", LIVENESS, up);
    let slightly = note(1, &"y".repeat(70 * 1024));
    let far = note(1, &"y".repeat(1024 * 1024));
    w.publish(&topic, vec![far, slightly.clone(), note(3, "small")]);
    // Only the 70 KiB message arrives: the 1 MiB one is over the announced size.
    w.one_too_large(&mut bridge, &table, 3, slightly.len());
    stop_having_stayed_connected(&mut bridge);
}

/// AMQP brokers send whole bodies: an oversized one is a dead letter, acknowledged, and the
/// queue keeps flowing.
#[test]
fn an_amqp_message_over_the_limit_is_a_dead_letter_and_the_rest_flows() {
    let w = Bounds::new();
    let table = TempTable::create(&Db::Postgres, "toolargeq", "id BIGINT, note TEXT");
    let queue = unique("bigq");
    let mut rabbit = Rabbit::connect();
    rabbit.declare_durable_queue(&queue);
    // The AMQP broker's limit is its own block's: set on `r`.
    let limit = json!({ "max_message_bytes": "64KiB" });
    let route = amqp_route("bigq", &queue, &table.name);
    let config = w.config(&Db::Postgres, Json::Null, limit, route);
    let large = note(1, &"z".repeat(200 * 1024));
    rabbit.publish_to_queue(&queue, vec![large.clone(), note(2, "small")]);
    let mut bridge = Bridge::start(&config);
    w.one_too_large(&mut bridge, &table, 2, large.len());
    terminate_ok(&mut bridge);
    wait_until("the queue to be drained and acknowledged", LIVENESS, || {
        Rabbit::queue_info(&queue).is_some_and(|q| q.messages == 0)
    });
}

#[test]
fn sizes_that_cannot_work_are_configuration_errors() {
    let w = Bounds::new();
    let cases = [
        (
            json!({ "max_message_bytes": "1MiB", "max_in_flight_bytes": "512KiB" }),
            "max_in_flight_bytes (512 KiB) must be at least max_message_bytes (1 MiB)",
        ),
        (
            json!({ "max_message_bytes": "1GiB" }),
            "max_message_bytes must be between",
        ),
        (
            json!({ "max_message_bytes": "16 parsecs" }),
            "unknown size unit `parsecs`",
        ),
    ];
    for (limits, says) in cases {
        let route = Route::named("r1").broker("b").topic("t/+");
        let route = route.set("database", "d").set("table", "t1");
        let config = w.config(&Db::Postgres, limits, Json::Null, route);
        // It names the file and line.
        mqdb_at(&config, &["check"])
            .code(2)
            .stderr_has(&[says, "mqdb.yaml:"]);
    }
}

/// Given a byte budget of 1 MiB and a database that does not answer, when 20 messages of
/// 200 KiB arrive, the bridge holds only the five that fit the budget (not its 10,000
/// message window); once the database answers, all 20 are rows.
fn the_byte_budget_bounds_what_is_held(amqp: bool) {
    let w = Bounds::new();
    let db = Db::Postgres;
    let limits = json!({ "max_message_bytes": "256KiB", "max_in_flight_bytes": "1MiB" });
    let payloads: Vec<Vec<u8>> = (1..=20)
        .map(|id| note(id, &"n".repeat(200 * 1024)))
        .collect();
    let mut rabbit = Rabbit::connect();
    let (name, table, config);
    if amqp {
        name = "budgetq";
        table = TempTable::create(&db, "budget", "id BIGINT, note TEXT");
        let queue = unique("budgetq");
        rabbit.declare_durable_queue(&queue);
        // A prefetch far above what the bytes allow.
        let route = amqp_route(name, &queue, &table.name).prefetch(100);
        config = w.config(&db, Json::Null, limits, route.max_rows(100));
        rabbit.publish_to_queue(&queue, payloads);
    } else {
        name = "budgetm";
        let (t, topic, route) = mqtt_route(&w, &db, "budget", "id BIGINT, note TEXT");
        let route = route.set("name", name).max_rows(100);
        config = w.config(&db, limits, Json::Null, route);
        w.publish(&topic, payloads);
        table = t;
    }
    // The bridge's inserts wait on this lock until it is released.
    let lock = format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", table.name);
    let lock = lock_holder(&db, &lock);
    let mut bridge = Bridge::start(&config);
    wait_until("the bridge to hold what fits", LIVENESS, || {
        w.metric("mqdb_in_flight", name) >= 5.0
    });
    // Give it every chance to take more than it may.
    std::thread::sleep(Duration::from_secs(2));
    let held = w.metric("mqdb_in_flight", name);
    assert_eq!(held, 5.0, "5 × 200 KiB fit 1 MiB; held {held}");
    lock.commit().expect("release the lock");
    wait_for(&mut bridge, "all 20 rows", || Ok(table.count() == 20));
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

common::cases! {
    the_byte_budget_bounds_what_an_mqtt_broker_hands_over:
        the_byte_budget_bounds_what_is_held(false);
    the_byte_budget_bounds_what_an_amqp_broker_hands_over:
        the_byte_budget_bounds_what_is_held(true);
}

/// Given `max_rows: 100`, when one CSV message carries 5,000 lines (two of them bad), then
/// it is written in batches of at most 100 rows as it is read (the batch counter shows at
/// least 50 batches, where the whole message used to be one), the bad lines are dead letters
/// with their line numbers, and the message is acknowledged once: a restart brings nothing
/// back.
#[test]
fn a_long_csv_message_is_written_in_batches_as_it_is_read() {
    let w = Bounds::new();
    let db = Db::Postgres;
    let (table, topic, route) = mqtt_route(&w, &db, "parts", "id BIGINT PRIMARY KEY, v BIGINT");
    let route = route.format("csv").max_rows(100);
    let config = w.config(&db, Json::Null, Json::Null, route);
    let csv: String = (1..=5000)
        .map(|id| match id {
            1234 => "1234,not a number\n".to_string(),
            4321 => "4321\n".to_string(),
            _ => format!("{id},{}\n", id * 2),
        })
        .collect();
    w.publish(&topic, vec![csv.into_bytes()]);
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "4998 rows", || Ok(table.count() == 4998));
    let two = || dlq_list(&config).len() == 2;
    wait_until("two dead letters", LIVENESS, two);
    let line = |l: &Json| l["headers"]["line"].as_i64().unwrap();
    let mut lines: Vec<i64> = dlq_list(&config).iter().map(line).collect();
    lines.sort();
    assert_eq!(lines, vec![1234, 4321]);
    let sum = common::scalar(&db, &format!("SELECT SUM(v) FROM {}", table.name));
    assert_eq!(sum, (1..=5000i64).sum::<i64>() * 2 - 2 * (1234 + 4321));
    let batches = w.metric("mqdb_batch_seconds_count", "parts");
    assert!(batches >= 50.0, "{batches} batches for 5000 lines of 100");
    terminate_ok(&mut bridge);
    // Acknowledged: the broker does not deliver it again.
    let mut bridge = Bridge::start(&config);
    let up = || w.metric("mqdb_up", "parts") == 1.0;
    wait_until("the route to be up again", LIVENESS, up);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(w.metric("mqdb_messages_received_total", "parts"), 0.0);
    assert_eq!(dlq_list(&config).len(), 2);
    terminate_ok(&mut bridge);
}

/// MariaDB's parameter arrays reserve the longest value for every row: rows with long
/// values go alone, and every value arrives exactly, in a batch that mixes both.
#[test]
fn long_and_short_values_in_one_mariadb_batch_arrive_exactly() {
    let w = Bounds::new();
    let db = Db::MariaDb;
    let columns = "id BIGINT PRIMARY KEY, note LONGTEXT";
    let (table, topic, route) = mqtt_route(&w, &db, "longvals", columns);
    let config = w.config(&db, Json::Null, Json::Null, route);
    let text = |id: usize| -> String {
        let len = match id % 10 {
            0 => 3 << 20,
            _ => 10 + id,
        };
        let letter = |i: usize| char::from(b'a' + ((i + id) % 26) as u8);
        (0..len).map(letter).collect()
    };
    let notes = (1..=40).map(|id| note(id as i64, &text(id)));
    w.publish(&topic, notes.collect());
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "40 rows", || Ok(table.count() == 40));
    for id in [1usize, 9, 10, 11, 30, 40] {
        let want = text(id);
        let middle = want.len() / 2;
        let (t, from) = (&table.name, middle + 1);
        let got = db.query(&format!(
            "SELECT LENGTH(note), SUBSTRING(note, 1, 40), SUBSTRING(note, {from}, 40), \
             RIGHT(note, 40) FROM {t} WHERE id = {id}"
        ));
        let piece = |from: usize| Some(want[from..(from + 40).min(want.len())].to_string());
        let tail = Some(want[want.len().saturating_sub(40)..].to_string());
        let whole = vec![Some(want.len().to_string()), piece(0), piece(middle), tail];
        assert_eq!(got[0], whole, "id {id}");
    }
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

/// Given a PostgreSQL route, when a batch carries 16 MiB or more of values, the sink renews
/// its connection after the commit (libpq keeps a send buffer as large as the largest
/// statement for the life of a connection), and the route goes on on the new one.
#[test]
fn a_postgresql_connection_is_renewed_after_a_batch_of_large_values() {
    let w = Bounds::new();
    let db = Db::Postgres;
    let (table, topic, route) = mqtt_route(&w, &db, "renewed", "id BIGINT, note TEXT");
    let limit = json!({ "max_message_bytes": "32MiB" });
    let config = w.config(&db, limit, Json::Null, route);
    let large = "r".repeat(17 << 20);
    w.publish(&topic, vec![note(1, &large)]);
    let mut bridge = Bridge::start_with_env(&config, &[("RUST_LOG", "warn,mqdb=debug")]);
    wait_for(&mut bridge, "the large row", || Ok(table.count() == 1));
    bridge.wait_for_log("reconnecting to give back the driver's buffers", LIVENESS);
    w.publish(&topic, vec![note(2, "after")]);
    wait_for(&mut bridge, "the row after", || Ok(table.count() == 2));
    let sql = format!("SELECT id, LENGTH(note) FROM {} ORDER BY id", table.name);
    let s = |v: usize| Some(v.to_string());
    let want = vec![vec![s(1), s(large.len())], vec![s(2), s(5)]];
    assert_eq!(db.query(&sql), want);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}
