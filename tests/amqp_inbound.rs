//! `mqdb run` for AMQP 0.9.1 inbound routes (RabbitMQ → ODBC) against the shared RabbitMQ and
//! the real PostgreSQL, MariaDB and SQLite. Queues and exchanges the bridge declares are
//! adopted by name before it starts, so they are deleted even when a test panics. Where a
//! test needs the bridge stopped in the middle of a batch, a PostgreSQL lock held by the test
//! makes that deterministic instead of timed.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    Bridge, Config, Db, Header, LIVENESS, NULL, Outgoing, Rabbit, Route, TcpProxy, TempTable,
    Workdir, amqp_route, check_route, dlq_list, id_payloads, line_of, lock_holder, mqdb_at, pairs,
    parse_bool, parse_ts, process_stats, scalar, terminate_ok, text_rows, ts, unique,
    wait_consuming, wait_dead_letters, wait_for_count, wait_lock_waiter, wait_queue,
    wait_queue_drained, wait_until,
};
use serde_json::{Value as Json, json};

/// A work dir and a RabbitMQ client that deletes what the test declared or adopted.
struct World {
    work: Workdir,
    rabbit: Rabbit,
}

impl World {
    fn new() -> World {
        World {
            work: Workdir::new("amqp-in"),
            rabbit: Rabbit::connect(),
        }
    }

    /// A world with a durable queue (named from `prefix`) already declared.
    fn with_queue(prefix: &str) -> (World, String) {
        let mut world = World::new();
        let queue = unique(prefix);
        world.rabbit.declare_durable_queue(&queue);
        (world, queue)
    }

    fn yaml(&self, amqp_url: &str, connection_string: &str, route: Route) -> Config {
        let config = self.work.bare_config().broker("r", amqp_url, Json::Null);
        config.database("d", connection_string).inbound(route)
    }

    fn config(&self, amqp_url: &str, connection_string: &str, route: Route) -> PathBuf {
        self.yaml(amqp_url, connection_string, route).write()
    }
}

/// An AMQP inbound route with `extra` settings and `columns` as `column=source` pairs.
fn route(name: &str, queue: &str, table: &str, columns: &str, extra: &[&str]) -> Route {
    amqp_route(name, queue, table)
        .lines(extra)
        .columns(&pairs(columns))
}

/// The table for `{"id":…,"v":…}` messages ([`id_payloads`]) and their redelivered flag.
const ID_COLUMNS: &str = "id INTEGER PRIMARY KEY, v TEXT NOT NULL, re BOOLEAN";

/// A durable queue, an [`ID_COLUMNS`] table and a config with a JSON route `name` between
/// them (`extra` settings), the broker at `amqp_url` and PostgreSQL at `cs`.
fn id_case(name: &str, amqp_url: &str, cs: &str, extra: &[&str]) -> IdCase {
    let (world, queue) = World::with_queue(&format!("mqdb_in_{name}"));
    let table = TempTable::create(&Db::Postgres, &format!("amqp_{name}"), ID_COLUMNS);
    let columns = "id=payload.id v=payload.v re=meta.redelivered";
    let route = route(name, &queue, &table.name, columns, extra).set("format", "json");
    let config = world.config(amqp_url, cs, route);
    (world, queue, table, config)
}

type IdCase = (World, String, TempTable, PathBuf);

/// Each of `n` ids stored once with its own value, and nothing dead-lettered.
fn assert_each_id_once(db: &Db, t: &str, n: i64, config: &Path) {
    let distinct = format!("SELECT COUNT(DISTINCT id) FROM {t}");
    assert_eq!(scalar(db, &distinct), n);
    let own = format!("SELECT COUNT(*) FROM {t} WHERE v = 'm' || id");
    assert_eq!(scalar(db, &own), n, "a row holds another message's value");
    assert_eq!(dlq_list(config), Vec::<Json>::new());
}

/// `ts_select` selects `ts` as UTC text.
fn json_over_amqp_lands(db: Db, columns: &str, ts_select: &str) {
    // Given a route whose queue and exchange do not exist yet (the bridge declares them and
    // binds with `sensors.#`), mapping payload keys, message metadata and headers
    let mut world = World::new();
    let queue = unique("mqdb_in_q");
    let exchange = unique("mqdb_in_x");
    world.rabbit.adopt_queue(&queue);
    world.rabbit.adopt_exchange(&exchange);
    assert_eq!(Rabbit::queue_info(&queue), None, "the queue exists already");
    let exists = Rabbit::exchange_info(&exchange).is_some();
    assert!(!exists, "the exchange exists already");
    let table = TempTable::create(&db, "amqp_json", columns);
    let t = table.name.clone();
    let sources = "id=payload.id big=payload.big amount=payload.amount label=payload.label \
         ts=payload.ts num=payload.num rk=meta.routing_key ex=meta.exchange re=meta.redelivered \
         q=meta.queue br=meta.broker site=header.x-site seq=header.x-seq nohdr=header.x-missing";
    let bind = format!("bind: {{ exchange: \"{exchange}\", routing_key: \"sensors.#\" }}");
    let extra = [
        bind.as_str(),
        "format: json",
        "batch: { max_rows: 500, max_delay: 100ms }",
        "on_conflict: error",
    ];
    let route = route("amqp_json", &queue, &t, sources, &extra);
    let config = world.config(Rabbit::URL, &db.connection_string(), route);

    // When the bridge starts, then it declares a durable queue and a durable topic exchange
    let mut bridge = Bridge::start(&config);
    wait_consuming(&mut bridge, &queue);
    let declared = Rabbit::queue_info(&queue)
        .unwrap_or_else(|| panic!("no queue {queue}; log:\n{}", bridge.log()));
    assert!(declared.durable, "{declared:?}");
    let x = Rabbit::exchange_info(&exchange)
        .unwrap_or_else(|| panic!("no exchange {exchange}; log:\n{}", bridge.log()));
    assert_eq!((x.kind.as_str(), x.durable), ("topic", true), "{x:?}");

    // When messages with every kind of value and header are published to the exchange (one
    // with a routing key the binding does not match), and one to the queue by the default
    // exchange, without headers
    let h = |site: &str, seq: Header| vec![("x-site", Header::Str(site.into())), ("x-seq", seq)];
    let mut to_exchange: Vec<Outgoing> = vec![
        (
            "sensors.plant1.temp".into(),
            r#"{"id":1,"big":9007199254740993,"amount":12345678901234567890.1234567890,"label":"é 日本 🎉","ts":"2024-05-01T12:00:00+02:00","num":null}"#.into(),
            h("Zürich-1", Header::Int(9_007_199_254_740_993)),
        ),
        (
            "sensors.plant2.hum".into(),
            r#"{"id":2,"big":-42,"amount":"-0.5","label":"it's \"quoted\"","ts":"2024-05-01T23:30:00-05:00","num":5}"#.into(),
            h("south", Header::Int32(-7)),
        ),
        (
            "other.plant1.temp".into(),
            r#"{"id":4,"big":4,"amount":4,"label":"unbound","ts":"2024-05-01T12:00:00Z"}"#.into(),
            h("nowhere", Header::Int(4)),
        ),
    ];
    to_exchange.extend((100..200_i64).map(|id| {
        let big = id * 3;
        let payload = format!(
            r#"{{"id":{id},"big":{big},"amount":"1.5","label":"row {id}","ts":"2024-01-01T00:00:00Z","num":1}}"#
        );
        (format!("sensors.fill.f{id}"), payload.into_bytes(), h("fill", Header::Int(id)))
    }));
    world.rabbit.publish_all(&exchange, to_exchange);
    let direct = br#"{"id":3,"big":0,"amount":0,"label":"","ts":"2024-05-01T12:00:00.250Z"}"#;
    world.rabbit.publish("", &queue, direct, &[]);

    // Then every routed message becomes exactly one row, and the queue is acknowledged empty
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, &db, &count_sql, 103);
    wait_queue_drained(&mut bridge, &queue);
    assert_eq!(scalar(&db, &count_sql), 103);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());

    // Integers are exact beyond 2^53 and decimals keep every digit; text arrives unchanged
    // (non-ASCII, quotes, empty); JSON null is NULL and an absent key leaves the column default
    let first_three = |cols: &str| {
        db.query(&format!(
            "SELECT {cols} FROM {t} WHERE id < 100 ORDER BY id"
        ))
    };
    let values = text_rows(&[
        [
            "1",
            "9007199254740993",
            "12345678901234567890.1234567890",
            "é 日本 🎉",
            NULL,
        ],
        ["2", "-42", "-0.5000000000", "it's \"quoted\"", "5"],
        ["3", "0", "0.0000000000", "", "7"],
    ]);
    assert_eq!(first_three("id, big, amount, label, num"), values);
    // And the routing key, the exchange ("" for the default one), the queue and the broker
    // name are the message's; string and integer headers land in their columns, and without
    // the header the column keeps its default (NULL, or 'none')
    let (q, x) = (queue.as_str(), exchange.as_str());
    let metadata = text_rows(&[
        [
            "sensors.plant1.temp",
            x,
            q,
            "r",
            "Zürich-1",
            "9007199254740993",
            "none",
        ],
        ["sensors.plant2.hum", x, q, "r", "south", "-7", "none"],
        [q, "", q, "r", NULL, NULL, "none"],
    ]);
    assert_eq!(first_three("rk, ex, q, br, site, seq, nohdr"), metadata);
    // And timestamps with offsets are stored as UTC, and nothing was redelivered
    let read = |row: &Vec<Option<String>>| {
        let text = |c: usize| row[c].clone().expect("not NULL");
        (parse_ts(&text(0)), parse_bool(&text(1)))
    };
    let stamps: Vec<_> = first_three(&format!("{ts_select}, re"))
        .iter()
        .map(read)
        .collect();
    let want = [
        "2024-05-01 10:00:00",
        "2024-05-02 04:30:00",
        "2024-05-01 12:00:00.250",
    ];
    assert_eq!(stamps, want.map(|w| (ts(w), false)));
    // And the 100 filler rows carry their values and headers
    let seq_sum = format!("SELECT SUM(seq) FROM {t} WHERE id >= 100");
    assert_eq!(scalar(&db, &seq_sum), (100..200).sum::<i64>());
    let fill = format!(
        "SELECT COUNT(*) FROM {t} WHERE id >= 100 AND seq = id AND big = 3 * id \
         AND site = 'fill' AND q = '{queue}' AND ex = '{exchange}' \
         AND rk = CONCAT('sensors.fill.f', id)"
    );
    assert_eq!(scalar(&db, &fill), 100);
    terminate_ok(&mut bridge);

    // And the queue outlives the bridge (durable, not exclusive or auto-delete)
    let after = Rabbit::queue_info(&queue).expect("the queue still exists after the bridge");
    assert!(after.durable && after.messages == 0, "{after:?}");
}

#[test]
fn json_over_amqp_lands_in_postgres() {
    json_over_amqp_lands(
        Db::Postgres,
        "id INTEGER PRIMARY KEY, big BIGINT, amount NUMERIC(30,10), label TEXT, \
         ts TIMESTAMPTZ, num INTEGER DEFAULT 7, rk TEXT, ex TEXT, re BOOLEAN, \
         q TEXT, br TEXT, site TEXT, seq BIGINT, nohdr TEXT DEFAULT 'none'",
        "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
    );
}

#[test]
fn json_over_amqp_lands_in_mariadb() {
    json_over_amqp_lands(
        Db::MariaDb,
        "id INT PRIMARY KEY, big BIGINT, amount DECIMAL(30,10), label TEXT, \
         ts DATETIME(6), num INT DEFAULT 7, rk VARCHAR(255), ex VARCHAR(255), \
         re BOOLEAN, q VARCHAR(255), br VARCHAR(50), site VARCHAR(100), seq BIGINT, \
         nohdr VARCHAR(20) DEFAULT 'none'",
        "ts",
    );
}

#[test]
fn csv_over_amqp_stores_every_good_line_and_dead_letters_the_bad_one_sqlite() {
    // Given a durable queue with CSV messages waiting in it: several records per message,
    // quoted fields with the delimiter, doubled quotes and a newline, empty fields, CRLF line
    // ends, a BOM, a blank line, a last line without a line end, an empty message, and one
    // record with 3 fields where 4 are expected (line 2 of its message)
    let (world, queue) = World::with_queue("mqdb_in_csv");
    let db = Db::Sqlite(world.work.path("target.db"));
    let columns = "id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER, note TEXT, q TEXT";
    let table = TempTable::create(&db, "amqp_csv", columns);
    let t = table.name.clone();
    let sources = "id=payload.id sku=payload.sku qty=payload.2 note=payload.note q=meta.queue";
    let extra = [
        "format: csv",
        "csv: { fields: [id, sku, qty, note] }",
        "prefetch: 10",
        "batch: { max_rows: 100, max_delay: 50ms }",
        "on_conflict: error",
    ];
    let route = route("csv_items", &queue, &t, sources, &extra);
    let config = world.config(Rabbit::URL, &db.connection_string(), route);
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(b"20,mango,7,x\n\n21,\"say \"\"hi\"\"\",8,y");
    let messages = vec![
        b"1,apple,3,plain\n2,\"pear, green\",5,\"two\nlines\"\n3,plum,,\n".to_vec(),
        b"10,kiwi,1,a\r\n11,lime,2\r\n12,fig,4,b\r\n".to_vec(),
        with_bom,
        Vec::new(),
    ];
    world.rabbit.publish_to_queue(&queue, messages);

    // When the bridge runs, then the 7 good records are rows, the bad one is one dead
    // letter, and every message (the empty one too) is acknowledged
    let mut bridge = Bridge::start(&config);
    wait_for_count(&mut bridge, &db, &format!("SELECT COUNT(*) FROM {t}"), 7);
    wait_dead_letters(&mut bridge, &config, 1);
    wait_queue_drained(&mut bridge, &queue);
    terminate_ok(&mut bridge);
    let rows = db.query(&format!(
        "SELECT id, sku, qty, note, q FROM {t} ORDER BY id"
    ));
    let q = queue.as_str();
    let want = text_rows(&[
        ["1", "apple", "3", "plain", q],
        ["2", "pear, green", "5", "two\nlines", q],
        ["3", "plum", NULL, NULL, q],
        ["10", "kiwi", "1", "a", q],
        ["12", "fig", "4", "b", q],
        ["20", "mango", "7", "x", q],
        ["21", "say \"hi\"", "8", "y", q],
    ]);
    assert_eq!(rows, want);

    // And the dead letter is that record alone: its line, its raw bytes, the queue
    let letters = dlq_list(&config);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let (letter, ctx) = (&letters[0], format!("{:#}", letters[0]));
    let pick =
        |from: &Json, keys: &str| -> Json { keys.split(' ').map(|k| from[k].clone()).collect() };
    let about = pick(letter, "route direction source error_kind payload");
    assert_eq!(
        about,
        json!(["csv_items", "inbound", q, "decode", "11,lime,2"]),
        "{ctx}"
    );
    let headers = pick(&letter["headers"], "line queue exchange routing_key broker");
    assert_eq!(headers, json!([2, q, "", q, "r"]), "{ctx}");
    let error = letter["error"].as_str().unwrap_or("");
    assert!(error.contains("line 2"), "{ctx}");
    assert!(error.contains("3 fields, expected 4"), "{ctx}");
}

#[test]
fn database_outage_holds_prefetch_unacked_and_catches_up_postgres() {
    // Given a bridge that reaches PostgreSQL through a proxy, consuming with prefetch 50, and
    // a first message stored (the database path works)
    let db = Db::Postgres;
    let proxy = TcpProxy::start(([127, 0, 0, 1], 5432).into());
    let prefetch = 50;
    let extra = [
        &format!("prefetch: {prefetch}"),
        "batch: { max_rows: 100, max_delay: 50ms }",
        "on_conflict: error",
    ];
    let cs = db.connection_string_via(proxy.port);
    let (world, queue, table, config) = id_case("outage", Rabbit::URL, &cs, &extra);
    let (t, rabbit) = (&table.name, &world.rabbit);
    let mut bridge = Bridge::start(&config);
    wait_consuming(&mut bridge, &queue);
    rabbit.publish_to_queue(&queue, id_payloads(0..1));
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, &db, &count_sql, 1);
    wait_queue_drained(&mut bridge, &queue);

    // When the database becomes unreachable and 300 messages arrive
    proxy.set_down(true);
    let n = 300_u64;
    rabbit.publish_to_queue(&queue, id_payloads(1..=n as i64));

    // Then the bridge holds exactly `prefetch` of them unacknowledged, and the broker keeps
    // all 300: nothing is acknowledged, dropped or dead-lettered
    wait_queue(&mut bridge, &queue, "prefetch unacked, all 300 kept", |q| {
        if q.unacked > prefetch {
            return Err(format!("more than prefetch {prefetch} unacknowledged"));
        }
        Ok(q.unacked == prefetch && q.messages == n)
    });
    // And it stays so (held, not nacked and redelivered, not acknowledged): a few samples
    let pid = bridge.pid().expect("running");
    for sample in 0..4 {
        let q = Rabbit::queue_info(&queue).expect("the queue exists");
        let held = q.unacked <= prefetch && q.messages == n && q.ready == n - q.unacked;
        assert!(held, "sample {sample}: {q:?}");
        assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(scalar(&db, &count_sql), 1, "rows appeared past the outage");
    let letters = dlq_list(&config);
    assert!(letters.is_empty(), "outage dead letters: {letters:?}");
    let (rss_kb, _) = process_stats(pid);

    // When the database is back, then every message becomes exactly one row, none redelivered
    // or dead-lettered, and the queue drains
    proxy.set_down(false);
    wait_for_count(&mut bridge, &db, &count_sql, n as i64 + 1);
    wait_queue_drained(&mut bridge, &queue);
    let requeued = scalar(&db, &format!("SELECT COUNT(*) FROM {t} WHERE re"));
    assert_eq!(requeued, 0, "messages were requeued during the outage");
    assert_each_id_once(&db, t, n as i64 + 1, &config);
    // (Had it never reconnected, it would never have seen the outage.)
    assert!(proxy.accepted() >= 2, "the bridge never reconnected");
    terminate_ok(&mut bridge);
    eprintln!("mqdb peak RSS during the outage: {rss_kb} kB");
}

#[test]
fn sigkill_mid_stream_then_restart_stores_every_message_once_postgres() {
    // Given 2000 messages waiting in a durable queue, and a test transaction holding id 1000
    // so the batch containing it cannot commit
    let db = Db::Postgres;
    let extra = [
        "prefetch: 300",
        "batch: { max_rows: 100, max_delay: 50ms }",
        "on_conflict: ignore",
        "key: [id]",
    ];
    let (world, queue, table, config) =
        id_case("kill", Rabbit::URL, &db.connection_string(), &extra);
    let t = &table.name;
    let n = 2000_i64;
    world.rabbit.publish_to_queue(&queue, id_payloads(1..=n));
    let blocker = lock_holder(
        &db,
        &format!("INSERT INTO {t} (id, v) VALUES (1000, 'blocker')"),
    );

    // When the bridge runs until its batch with id 1000 waits on that lock, and is killed
    let mut bridge = Bridge::start(&config);
    wait_lock_waiter(&mut bridge, t);
    bridge.kill();
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    let before_kill = scalar(&db, &count_sql);
    blocker.rollback().expect("release id 1000");
    drop(blocker);

    // Then some but not all rows exist, and the broker took back every unacknowledged
    // message: it still holds at least every message without a row (acks only follow rows)
    let committed = (1..1000).contains(&before_kill);
    assert!(committed, "{before_kill} rows committed before the kill");
    let mut after_kill = None;
    let requeued = "the broker requeues the killed bridge's messages";
    wait_until(requeued, LIVENESS, || {
        let q = Rabbit::queue_info(&queue).expect("the queue exists");
        after_kill = Some(q);
        q.unacked == 0
    });
    let after_kill = after_kill.expect("looked at the queue");
    // Fewer would mean messages acknowledged without their rows.
    let kept = after_kill.messages as i64 >= n - before_kill;
    assert!(kept, "{after_kill:?} with {before_kill} rows");

    // And a new bridge with the same config completes the stream: every message exactly
    // once, the held one redelivered
    let mut bridge = Bridge::start(&config);
    wait_for_count(&mut bridge, &db, &count_sql, n);
    wait_queue_drained(&mut bridge, &queue);
    let ends = scalar(&db, &format!("SELECT MIN(id) + MAX(id) FROM {t}"));
    assert_eq!(ends, 1 + n);
    assert_each_id_once(&db, t, n, &config);
    let flag = |id: i64| {
        let rows = db.query(&format!("SELECT re FROM {t} WHERE id = {id}"));
        parse_bool(rows[0][0].as_deref().expect("re is not NULL"))
    };
    assert!(flag(1000), "the one held at the kill: not redelivered");
    assert!(!flag(1), "the first message was stored as redelivered");
    terminate_ok(&mut bridge);
    eprintln!("rows committed before the kill: {before_kill} of {n}");
}

#[test]
fn a_broker_path_that_goes_silent_is_noticed_by_the_heartbeat_and_loses_nothing() {
    // Given a bridge that reaches RabbitMQ through a relay with a 2 s heartbeat, and 500
    // messages stored
    let db = Db::Postgres;
    let relay = TcpProxy::start(Rabbit::addr());
    let extra = [
        "batch: { max_rows: 50, max_delay: 50ms }",
        "on_conflict: ignore",
        "key: [id]",
    ];
    let url = format!("{}?heartbeat=2", Rabbit::url_via(relay.port));
    let (world, queue, table, config) = id_case("hbeat", &url, &db.connection_string(), &extra);
    let t = &table.name;
    world.rabbit.publish_to_queue(&queue, id_payloads(1..=500));
    let mut bridge = Bridge::start(&config);
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, &db, &count_sql, 500);

    // When the path goes silent (nothing forwarded, nothing closed) and 500 more arrive
    relay.freeze(true);
    world
        .rabbit
        .publish_to_queue(&queue, id_payloads(501..=1000));

    // Then the missing heartbeats end the connection, and mqdb keeps retrying
    bridge.wait_for_log("broker connection lost", LIVENESS);
    assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());

    // And once the path answers again, every message is exactly one row
    relay.freeze(false);
    wait_for_count(&mut bridge, &db, &count_sql, 1000);
    wait_queue_drained(&mut bridge, &queue);
    assert_each_id_once(&db, t, 1000, &config);
    terminate_ok(&mut bridge);
}

#[test]
fn broker_connection_cut_loses_and_duplicates_nothing_postgres() {
    // Given a bridge that reaches RabbitMQ through a proxy, 1000 messages in its durable
    // queue, and a test transaction that locks the table, so received messages stay
    // uncommitted and unacknowledged
    let db = Db::Postgres;
    let proxy = TcpProxy::start(Rabbit::addr());
    let extra = [
        "prefetch: 200",
        "batch: { max_rows: 50, max_delay: 50ms }",
        "on_conflict: ignore",
        "key: [id]",
    ];
    let url = Rabbit::url_via(proxy.port);
    let (world, queue, table, config) = id_case("bcut", &url, &db.connection_string(), &extra);
    let t = &table.name;
    let locker = lock_holder(&db, &format!("LOCK TABLE {t} IN SHARE MODE"));
    world.rabbit.publish_to_queue(&queue, id_payloads(1..=1000));
    let mut bridge = Bridge::start(&config);
    wait_lock_waiter(&mut bridge, t);

    // When the broker connection is cut, the lock is released (the held batch may commit,
    // but its acknowledgements cannot reach the broker) and 1000 more messages arrive
    proxy.set_down(true);
    locker.rollback().expect("release the lock");
    drop(locker);
    world
        .rabbit
        .publish_to_queue(&queue, id_payloads(1001..=2000));

    // Then the broker took back what the bridge held and keeps all 2000: none was
    // acknowledged before the cut, none could be after
    wait_queue(&mut bridge, &queue, "all 2000 back in the queue", |q| {
        if q.messages < 2000 {
            return Err("messages acknowledged while the broker was unreachable".into());
        }
        Ok(q.unacked == 0 && q.ready == 2000)
    });
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    let during = scalar(&db, &count_sql);
    let within = during <= 1000;
    assert!(within, "{during} rows, only 1000 sent before the cut");
    assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());

    // When the broker is reachable again, then every message becomes exactly one row,
    // nothing is dead-lettered, the queue drains
    proxy.set_down(false);
    wait_for_count(&mut bridge, &db, &count_sql, 2000);
    wait_queue_drained(&mut bridge, &queue);
    assert_each_id_once(&db, t, 2000, &config);
    assert!(proxy.accepted() >= 2, "the bridge never reconnected");
    terminate_ok(&mut bridge);
    eprintln!("rows before the broker came back: {during}");
}

/// `check` rejects `text` (written to `dir`) with exit 2, naming `word` at the line of
/// `needle`; returns its stdout.
fn assert_rejected_at(dir: &Path, text: &str, needle: &str, word: &str) -> String {
    let path = dir.join("check.yaml");
    std::fs::write(&path, text).expect("write check.yaml");
    let ran = mqdb_at(&path, &["check"]);
    let located = format!("{}:{}:", path.display(), line_of(text, needle));
    ran.code(2).stderr_has(&[&located, word]);
    ran.stdout
}

#[test]
fn check_accepts_an_amqp_inbound_route_and_rejects_mqtt_only_keys() {
    // Given an AMQP inbound route to an existing queue, mapping metadata and headers
    let (world, queue) = World::with_queue("mqdb_in_check");
    let columns = "id INTEGER PRIMARY KEY, rk TEXT, site TEXT";
    let table = TempTable::create(&Db::Postgres, "amqp_check", columns);
    let t = table.name.clone();
    let sources = "id=payload.id rk=meta.routing_key site=header.x-site";
    let extra = ["format: json", "prefetch: 20"];
    let good = route("amqp_good", &queue, &t, sources, &extra);
    let cs = Db::Postgres.connection_string();
    let config = world.config(Rabbit::URL, &cs, good.clone());

    // When check runs, then it prints one ok line for it and exits 0
    check_route(&config, 0, "amqp_good", "ok");

    // Given the same route with `topic:` (an MQTT key), then check rejects the file (exit 2)
    // naming the line of `topic:`
    let dir = world.work.dir.path();
    let with_topic = good.clone().topic("sensors/+/temp");
    let with_topic = world.yaml(Rabbit::URL, &cs, with_topic).yaml();
    let stdout = assert_rejected_at(dir, &with_topic, "topic:", "topic");
    assert!(stdout.trim().is_empty(), "no check lines: {stdout}");

    // Given the same route with a `meta.topic` source, then check rejects it at that line
    let meta_topic = pairs("id=payload.id rk=meta.topic site=header.x-site");
    let with_meta_topic = world
        .yaml(Rabbit::URL, &cs, good.columns(&meta_topic))
        .yaml();
    assert_rejected_at(dir, &with_meta_topic, "meta.topic", "meta.topic");

    // Given an MQTT route with `queue:` (an AMQP key), then check rejects it too, at that line
    let mqtt = Route::inbound("mqtt_with_queue", "a/b", &t).set("queue", queue.as_str());
    let client = json!({ "client_id": unique("mqdb_chk") });
    let config = world
        .work
        .bare_config()
        .broker("b", "mqtt://127.0.0.1:1883", client);
    let mqtt = config.database("d", &cs).inbound(mqtt).yaml();
    assert_rejected_at(dir, &mqtt, "queue:", "queue");
}
