//! `mqdb run` for AMQP 0.9.1 inbound routes (RabbitMQ → ODBC) and CSV payloads, against the
//! real local RabbitMQ (127.0.0.1:5672) and the real PostgreSQL, MariaDB and SQLite: values,
//! types, `meta.*` and `header.*` sources; a queue and exchange the bridge declares itself;
//! CSV with several rows per message and a bad line; acknowledgements only after the rows
//! are stored (a database outage holds at most `prefetch` messages); SIGKILL in the middle of
//! the stream; a broker connection cut; `mqdb check`.
//!
//! Every test has its own temp dir (config, state store, log) and unique queue, exchange and
//! table names, and deletes them when it ends, also on panic (queues and exchanges the bridge
//! declared included: the test adopts their names before the bridge starts). The broker's view
//! of a queue (ready and unacknowledged counts, durability) comes from `rabbitmqctl`. Where a
//! test needs the bridge stopped in the middle of a batch, a PostgreSQL lock held by the test
//! makes that deterministic instead of timed. Waits are liveness deadlines, never speed
//! assertions.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDateTime;
use common::{
    Bridge, Db, Header, Outgoing, QueueInfo, Rabbit, Route, TcpProxy, TempTable, Workdir, dlq_list,
    odbc_connect, odbc_exec, parse_ts, path_str, pg_lock_waiters, process_stats, run_mqdb, ts,
    unique, wait_for,
};
use common::{scalar, terminate_ok, try_scalar, wait_for_count};
use serde_json::Value as Json;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// One test's private world: a temp dir for the config, the state store and the bridge log,
/// and a RabbitMQ client that deletes what the test declared or adopted.
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

    /// Writes `mqdb.yaml`: AMQP broker `r` at `amqp_url`, database `d` (`connection_string`)
    /// and the given inbound `routes` (from [`route`]).
    fn config(&self, amqp_url: &str, connection_string: &str, routes: &[Route]) -> PathBuf {
        let config = self
            .work
            .bare_config()
            .broker("r", amqp_url, Json::Null)
            .database("d", connection_string);
        routes
            .iter()
            .fold(config, |config, route| config.inbound(route.clone()))
            .write()
    }
}

/// One `inbound:` list item consuming `queue` from broker `r` into `table` of database `d`,
/// with `columns` (column, source) and `extra` lines (e.g. `format: csv`, `prefetch: 50`) at
/// the route's indentation.
fn route(name: &str, queue: &str, table: &str, columns: &[(&str, &str)], extra: &[&str]) -> Route {
    Route::named(name)
        .set("broker", "r")
        .set("queue", queue)
        .set("database", "d")
        .set("table", table)
        .lines(extra)
        .columns(columns)
}

/// Waits until the bridge logs that it consumes `queue` (a line with `consuming` and
/// `queue=<name>`): from then on its queue (and binding) exist.
fn wait_consuming(bridge: &mut Bridge, queue: &str) {
    let plain = format!("queue={queue}");
    let quoted = format!("queue=\"{queue}\"");
    let log_path = bridge.log_path.clone();
    wait_for(
        bridge,
        &format!("the log line `consuming … {plain}`"),
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            Ok(log.lines().any(|l| {
                l.contains("consuming")
                    && (l.contains(&quoted) || l.split_whitespace().any(|w| w == plain))
            }))
        },
    );
}

/// Waits until `check` accepts the broker's view of `queue` (`Err` fails at once); returns
/// the last view.
fn wait_queue(
    bridge: &mut Bridge,
    queue: &str,
    what: &str,
    mut check: impl FnMut(&QueueInfo) -> Result<bool, String>,
) -> QueueInfo {
    let mut last = None;
    wait_for(bridge, &format!("queue {queue}: {what}"), || {
        let info = Rabbit::queue_info(queue).ok_or_else(|| format!("queue {queue} is gone"))?;
        last = Some(info);
        check(&info).map_err(|e| format!("{e} ({info:?})"))
    });
    last.expect("at least one look at the queue")
}

/// Waits until the broker holds nothing for `queue`: every message was acknowledged.
fn wait_queue_drained(bridge: &mut Bridge, queue: &str) {
    wait_queue(bridge, queue, "every message acknowledged", |q| {
        Ok(q.messages == 0 && q.unacked == 0)
    });
}

/// A boolean read back as text: PostgreSQL and MariaDB spell them differently.
fn parse_bool(text: &str) -> bool {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => true,
        "0" | "f" | "false" => false,
        other => panic!("{other:?} is not a boolean"),
    }
}

/// JSON payloads `{"id":ID,"v":"mID"}`, one per id.
fn id_payloads(ids: std::ops::RangeInclusive<i64>) -> Vec<Vec<u8>> {
    ids.map(|id| format!(r#"{{"id":{id},"v":"m{id}"}}"#).into_bytes())
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. JSON over AMQP: values, types, meta and headers; the bridge declares its queue
// ---------------------------------------------------------------------------------------

/// What differs between the databases in the JSON test.
struct JsonCase {
    db: Db,
    columns: &'static str,
    /// How to select `ts` as UTC text.
    ts_select: &'static str,
}

fn json_over_amqp_lands(case: JsonCase) {
    let JsonCase {
        db,
        columns,
        ts_select,
    } = case;

    // Given a route whose queue and exchange do not exist yet (the bridge declares them and
    // binds with `sensors.#`), mapping payload keys, message metadata and headers
    let mut world = World::new();
    let queue = unique("mqdb_in_q");
    let exchange = unique("mqdb_in_x");
    world.rabbit.adopt_queue(&queue);
    world.rabbit.adopt_exchange(&exchange);
    assert_eq!(Rabbit::queue_info(&queue), None, "the queue exists already");
    assert_eq!(
        Rabbit::exchange_info(&exchange),
        None,
        "the exchange exists already"
    );
    let table = TempTable::create(&db, "amqp_json", columns);
    let t = table.name.clone();
    let config = world.config(
        Rabbit::URL,
        &db.connection_string(),
        &[route(
            "amqp_json",
            &queue,
            &t,
            &[
                ("id", "payload.id"),
                ("big", "payload.big"),
                ("amount", "payload.amount"),
                ("label", "payload.label"),
                ("ts", "payload.ts"),
                ("num", "payload.num"),
                ("rk", "meta.routing_key"),
                ("ex", "meta.exchange"),
                ("re", "meta.redelivered"),
                ("q", "meta.queue"),
                ("br", "meta.broker"),
                ("site", "header.x-site"),
                ("seq", "header.x-seq"),
                ("nohdr", "header.x-missing"),
            ],
            &[
                &format!("bind: {{ exchange: \"{exchange}\", routing_key: \"sensors.#\" }}"),
                "format: json",
                "batch: { max_rows: 500, max_delay: 100ms }",
                "on_conflict: error",
            ],
        )],
    );

    // When the bridge starts
    let mut bridge = Bridge::start(&config);
    wait_consuming(&mut bridge, &queue);

    // Then it declared a durable queue and a durable topic exchange
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
    for id in 100..200_i64 {
        to_exchange.push((
            format!("sensors.fill.f{id}"),
            format!(
                r#"{{"id":{id},"big":{},"amount":"1.5","label":"row {id}","ts":"2024-01-01T00:00:00Z","num":1}}"#,
                id * 3
            )
            .into_bytes(),
            h("fill", Header::Int(id)),
        ));
    }
    world.rabbit.publish_all(&exchange, to_exchange);
    world.rabbit.publish(
        "",
        &queue,
        br#"{"id":3,"big":0,"amount":0,"label":"","ts":"2024-05-01T12:00:00.250Z"}"#,
        &[],
    );

    // Then every routed message becomes exactly one row, and the queue is acknowledged empty
    wait_for_count(&mut bridge, &db, &format!("SELECT COUNT(*) FROM {t}"), 103);
    wait_queue_drained(&mut bridge, &queue);
    assert_eq!(scalar(&db, &format!("SELECT COUNT(*) FROM {t}")), 103);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());

    let rows = db.query(&format!(
        "SELECT id, big, amount, label, {ts_select}, num, rk, ex, re, q, br, site, seq, nohdr \
         FROM {t} WHERE id < 100 ORDER BY id"
    ));
    let ids: Vec<Option<&str>> = rows.iter().map(|r| r[0].as_deref()).collect();
    assert_eq!(ids, [Some("1"), Some("2"), Some("3")], "{rows:?}");
    let col = |c: usize| -> Vec<Option<String>> {
        rows.iter()
            .map(|r| r[c].as_deref().map(|v| v.trim().to_owned()))
            .collect()
    };
    let s = |v: &str| Some(v.to_owned());
    // And integers are exact beyond 2^53, decimals keep every digit
    assert_eq!(col(1), [s("9007199254740993"), s("-42"), s("0")]);
    assert_eq!(
        col(2),
        [
            s("12345678901234567890.1234567890"),
            s("-0.5000000000"),
            s("0.0000000000")
        ]
    );
    // And text arrives unchanged (non-ASCII, quotes, empty)
    let labels: Vec<Option<&str>> = rows.iter().map(|r| r[3].as_deref()).collect();
    assert_eq!(
        labels,
        [Some("é 日本 🎉"), Some("it's \"quoted\""), Some("")]
    );
    // And timestamps with offsets are stored as UTC
    let stamps: Vec<NaiveDateTime> = rows
        .iter()
        .map(|r| parse_ts(r[4].as_deref().expect("ts is not NULL")))
        .collect();
    assert_eq!(
        stamps,
        [
            ts("2024-05-01 10:00:00"),
            ts("2024-05-02 04:30:00"),
            ts("2024-05-01 12:00:00.250"),
        ]
    );
    // And JSON null is NULL, an absent key leaves the column default
    assert_eq!(col(5), [None, s("5"), s("7")]);
    // And the routing key, the exchange ("" for the default one), the redelivered flag, the
    // queue and the broker name are the message's
    assert_eq!(
        col(6),
        [s("sensors.plant1.temp"), s("sensors.plant2.hum"), s(&queue)]
    );
    let exchanges: Vec<Option<&str>> = rows.iter().map(|r| r[7].as_deref()).collect();
    assert_eq!(
        exchanges,
        [Some(exchange.as_str()), Some(exchange.as_str()), Some("")]
    );
    let redelivered: Vec<bool> = rows
        .iter()
        .map(|r| parse_bool(r[8].as_deref().expect("re is not NULL")))
        .collect();
    assert_eq!(redelivered, [false, false, false]);
    assert_eq!(col(9), [s(&queue), s(&queue), s(&queue)]);
    assert_eq!(col(10), [s("r"), s("r"), s("r")]);
    // And string and integer headers land in their columns; without the header the column
    // keeps its default (NULL, or 'none')
    let sites: Vec<Option<&str>> = rows.iter().map(|r| r[11].as_deref()).collect();
    assert_eq!(sites, [Some("Zürich-1"), Some("south"), None]);
    assert_eq!(col(12), [s("9007199254740993"), s("-7"), None]);
    assert_eq!(col(13), [s("none"), s("none"), s("none")]);
    // And the 100 filler rows carry their values and headers
    assert_eq!(
        scalar(&db, &format!("SELECT SUM(seq) FROM {t} WHERE id >= 100")),
        (100..200).sum::<i64>()
    );
    assert_eq!(
        scalar(
            &db,
            &format!(
                "SELECT COUNT(*) FROM {t} WHERE id >= 100 AND seq = id AND big = 3 * id \
                 AND site = 'fill' AND q = '{queue}' AND ex = '{exchange}' \
                 AND rk = CONCAT('sensors.fill.f', id)"
            )
        ),
        100
    );
    terminate_ok(&mut bridge);

    // And the queue outlives the bridge (durable, not exclusive or auto-delete)
    let after = Rabbit::queue_info(&queue).expect("the queue still exists after the bridge");
    assert!(after.durable, "{after:?}");
    assert_eq!(after.messages, 0, "{after:?}");
}

#[test]
fn json_over_amqp_lands_in_postgres() {
    json_over_amqp_lands(JsonCase {
        db: Db::Postgres,
        columns: "id INTEGER PRIMARY KEY, big BIGINT, amount NUMERIC(30,10), label TEXT, \
                  ts TIMESTAMPTZ, num INTEGER DEFAULT 7, rk TEXT, ex TEXT, re BOOLEAN, \
                  q TEXT, br TEXT, site TEXT, seq BIGINT, nohdr TEXT DEFAULT 'none'",
        ts_select: "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
    });
}

#[test]
fn json_over_amqp_lands_in_mariadb() {
    json_over_amqp_lands(JsonCase {
        db: Db::MariaDb,
        columns: "id INT PRIMARY KEY, big BIGINT, amount DECIMAL(30,10), label TEXT, \
                  ts DATETIME(6), num INT DEFAULT 7, rk VARCHAR(255), ex VARCHAR(255), \
                  re BOOLEAN, q VARCHAR(255), br VARCHAR(50), site VARCHAR(100), seq BIGINT, \
                  nohdr VARCHAR(20) DEFAULT 'none'",
        ts_select: "ts",
    });
}

// ---------------------------------------------------------------------------------------
// 2. CSV over AMQP into SQLite, with a bad line
// ---------------------------------------------------------------------------------------

#[test]
fn csv_over_amqp_stores_every_good_line_and_dead_letters_the_bad_one_sqlite() {
    // Given a durable queue with CSV messages waiting in it: several records per message,
    // quoted fields with the delimiter, doubled quotes and a newline, empty fields, CRLF line
    // ends, a BOM, a blank line, a last line without a line end, an empty message, and one
    // record with 3 fields where 4 are expected (line 2 of its message)
    let mut world = World::new();
    let queue = unique("mqdb_in_csv");
    world.rabbit.declare_durable_queue(&queue);
    let db = Db::Sqlite(world.work.dir.path().join("target.db"));
    let table = TempTable::create(
        &db,
        "amqp_csv",
        "id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER, note TEXT, q TEXT",
    );
    let t = table.name.clone();
    let route_name = "csv_items";
    let config = world.config(
        Rabbit::URL,
        &db.connection_string(),
        &[route(
            route_name,
            &queue,
            &t,
            &[
                ("id", "payload.id"),
                ("sku", "payload.sku"),
                ("qty", "payload.2"),
                ("note", "payload.note"),
                ("q", "meta.queue"),
            ],
            &[
                "format: csv",
                "csv: { fields: [id, sku, qty, note] }",
                "prefetch: 10",
                "batch: { max_rows: 100, max_delay: 50ms }",
                "on_conflict: error",
            ],
        )],
    );
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(b"20,mango,7,x\n\n21,\"say \"\"hi\"\"\",8,y");
    world.rabbit.publish_to_queue(
        &queue,
        vec![
            b"1,apple,3,plain\n2,\"pear, green\",5,\"two\nlines\"\n3,plum,,\n".to_vec(),
            b"10,kiwi,1,a\r\n11,lime,2\r\n12,fig,4,b\r\n".to_vec(),
            with_bom,
            Vec::new(),
        ],
    );

    // When the bridge runs
    let mut bridge = Bridge::start(&config);

    // Then the 7 good records are rows, the bad one is one dead letter, and every message
    // (the empty one too) is acknowledged
    wait_for_count(&mut bridge, &db, &format!("SELECT COUNT(*) FROM {t}"), 7);
    wait_for(&mut bridge, "one dead letter", || {
        let n = dlq_list(&config).len();
        if n > 1 {
            return Err(format!("{n} dead letters, expected 1"));
        }
        Ok(n == 1)
    });
    wait_queue_drained(&mut bridge, &queue);
    terminate_ok(&mut bridge);

    let rows = db.query(&format!(
        "SELECT id, sku, qty, note, q FROM {t} ORDER BY id"
    ));
    let s = |v: &str| Some(v.to_owned());
    let q = s(&queue);
    assert_eq!(
        rows,
        vec![
            vec![s("1"), s("apple"), s("3"), s("plain"), q.clone()],
            vec![s("2"), s("pear, green"), s("5"), s("two\nlines"), q.clone()],
            vec![s("3"), s("plum"), None, None, q.clone()],
            vec![s("10"), s("kiwi"), s("1"), s("a"), q.clone()],
            vec![s("12"), s("fig"), s("4"), s("b"), q.clone()],
            vec![s("20"), s("mango"), s("7"), s("x"), q.clone()],
            vec![s("21"), s("say \"hi\""), s("8"), s("y"), q.clone()],
        ]
    );

    // And the dead letter is that record alone: its line, its raw bytes, the queue
    let letters = dlq_list(&config);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = &letters[0];
    let ctx = format!("{letter:#}");
    assert_eq!(letter["route"], route_name, "{ctx}");
    assert_eq!(letter["direction"], "inbound", "{ctx}");
    assert_eq!(letter["source"], queue.as_str(), "{ctx}");
    assert_eq!(letter["error_kind"], "decode", "{ctx}");
    assert_eq!(letter["payload"], "11,lime,2", "{ctx}");
    let error = letter["error"].as_str().unwrap_or("");
    assert!(error.contains("line 2"), "{ctx}");
    assert!(error.contains("3 fields, expected 4"), "{ctx}");
    let headers = &letter["headers"];
    assert_eq!(headers["line"], 2, "{ctx}");
    assert_eq!(headers["queue"], queue.as_str(), "{ctx}");
    assert_eq!(headers["exchange"], "", "{ctx}");
    assert_eq!(headers["routing_key"], queue.as_str(), "{ctx}");
    assert_eq!(headers["broker"], "r", "{ctx}");
}

// ---------------------------------------------------------------------------------------
// 3. Acknowledged only after stored: a database outage
// ---------------------------------------------------------------------------------------

#[test]
fn database_outage_holds_prefetch_unacked_and_catches_up_postgres() {
    // Given a bridge that reaches PostgreSQL through a proxy, consuming with prefetch 50, and
    // a first message stored (the database path works)
    let db = Db::Postgres;
    let mut world = World::new();
    let proxy = TcpProxy::start(([127, 0, 0, 1], 5432).into());
    let queue = unique("mqdb_in_outage");
    world.rabbit.declare_durable_queue(&queue);
    let table = TempTable::create(
        &db,
        "amqp_outage",
        "id INTEGER PRIMARY KEY, v TEXT NOT NULL, re BOOLEAN",
    );
    let t = table.name.clone();
    let prefetch = 50;
    let config = world.config(
        Rabbit::URL,
        &db.connection_string_via(proxy.port),
        &[route(
            "outage",
            &queue,
            &t,
            &[
                ("id", "payload.id"),
                ("v", "payload.v"),
                ("re", "meta.redelivered"),
            ],
            &[
                "format: json",
                &format!("prefetch: {prefetch}"),
                "batch: { max_rows: 100, max_delay: 50ms }",
                "on_conflict: error",
            ],
        )],
    );
    let mut bridge = Bridge::start(&config);
    wait_consuming(&mut bridge, &queue);
    world.rabbit.publish_to_queue(&queue, id_payloads(0..=0));
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, &db, &count_sql, 1);
    wait_queue_drained(&mut bridge, &queue);

    // When the database becomes unreachable and 300 messages arrive
    proxy.set_down(true);
    let n = 300_u64;
    world
        .rabbit
        .publish_to_queue(&queue, id_payloads(1..=n as i64));

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
        assert!(
            q.unacked <= prefetch && q.messages == n && q.ready == n - q.unacked,
            "sample {sample}: {q:?}"
        );
        assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(scalar(&db, &count_sql), 1, "rows appeared past the outage");
    assert_eq!(
        dlq_list(&config),
        Vec::<Json>::new(),
        "an outage is never a dead letter"
    );
    let (rss_kb, _) = process_stats(pid);

    // When the database is back
    proxy.set_down(false);

    // Then every message becomes exactly one row, none redelivered or dead-lettered, and the
    // queue drains
    wait_for_count(&mut bridge, &db, &count_sql, n as i64 + 1);
    wait_queue_drained(&mut bridge, &queue);
    assert_eq!(
        scalar(&db, &format!("SELECT COUNT(*) FROM {t} WHERE re")),
        0,
        "messages were requeued during the outage"
    );
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT COUNT(*) FROM {t} WHERE v = 'm' || id")
        ),
        n as i64 + 1
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    assert!(
        proxy.accepted() >= 2,
        "the bridge never reconnected, so it never saw the outage"
    );
    terminate_ok(&mut bridge);
    eprintln!("mqdb peak RSS during the outage: {rss_kb} kB");
}

// ---------------------------------------------------------------------------------------
// 4. SIGKILL in the middle of the stream
// ---------------------------------------------------------------------------------------

#[test]
fn sigkill_mid_stream_then_restart_stores_every_message_once_postgres() {
    // Given 2000 messages waiting in a durable queue, and a test transaction holding id 1000
    // so the batch containing it cannot commit
    let db = Db::Postgres;
    let mut world = World::new();
    let queue = unique("mqdb_in_kill");
    world.rabbit.declare_durable_queue(&queue);
    let table = TempTable::create(
        &db,
        "amqp_kill",
        "id INTEGER PRIMARY KEY, v TEXT NOT NULL, re BOOLEAN",
    );
    let t = table.name.clone();
    let config = world.config(
        Rabbit::URL,
        &db.connection_string(),
        &[route(
            "kill",
            &queue,
            &t,
            &[
                ("id", "payload.id"),
                ("v", "payload.v"),
                ("re", "meta.redelivered"),
            ],
            &[
                "format: json",
                "prefetch: 300",
                "batch: { max_rows: 100, max_delay: 50ms }",
                "on_conflict: ignore",
                "key: [id]",
            ],
        )],
    );
    let n = 2000_i64;
    world.rabbit.publish_to_queue(&queue, id_payloads(1..=n));
    let blocker = odbc_connect(&db.connection_string()).expect("connect the blocker");
    blocker.set_autocommit(false).expect("autocommit off");
    odbc_exec(
        &blocker,
        &format!("INSERT INTO {t} (id, v) VALUES (1000, 'blocker')"),
    )
    .expect("hold id 1000");

    // When the bridge runs until its batch with id 1000 waits on that lock, and is killed
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "a batch waiting on the held row", || {
        Ok(try_scalar(&db, &pg_lock_waiters(&t)).unwrap_or(0) >= 1)
    });
    bridge.kill();
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    let before_kill = scalar(&db, &count_sql);
    blocker.rollback().expect("release id 1000");
    drop(blocker);

    // Then some but not all rows exist, and the broker took back every unacknowledged
    // message: it still holds at least every message without a row (acks only follow rows)
    assert!(
        (1..1000).contains(&before_kill),
        "{before_kill} rows committed before the kill"
    );
    let mut after_kill = None;
    common::wait_until(
        "the broker requeues the killed bridge's messages",
        common::LIVENESS,
        || {
            let q = Rabbit::queue_info(&queue).expect("the queue exists");
            after_kill = Some(q);
            q.unacked == 0
        },
    );
    let after_kill = after_kill.expect("looked at the queue");
    assert!(
        after_kill.messages as i64 >= n - before_kill,
        "{after_kill:?}: messages were acknowledged without their rows ({before_kill} rows)"
    );

    // And a new bridge with the same config completes the stream: every message exactly
    // once, the held one redelivered
    let mut bridge = Bridge::start(&config);
    wait_for_count(&mut bridge, &db, &count_sql, n);
    wait_queue_drained(&mut bridge, &queue);
    assert_eq!(
        scalar(&db, &format!("SELECT COUNT(DISTINCT id) FROM {t}")),
        n
    );
    assert_eq!(
        scalar(&db, &format!("SELECT MIN(id) + MAX(id) FROM {t}")),
        1 + n
    );
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT COUNT(*) FROM {t} WHERE v = 'm' || id")
        ),
        n,
        "a row holds another message's value (or the blocker's)"
    );
    let flag = |id: i64| {
        let rows = db.query(&format!("SELECT re FROM {t} WHERE id = {id}"));
        parse_bool(rows[0][0].as_deref().expect("re is not NULL"))
    };
    assert!(
        flag(1000),
        "the message held at the kill came back with redelivered = false"
    );
    assert!(!flag(1), "the first message was stored as redelivered");
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
    eprintln!("rows committed before the kill: {before_kill} of {n}");
}

// ---------------------------------------------------------------------------------------
// 5. The broker connection is cut
// ---------------------------------------------------------------------------------------

#[test]
fn broker_connection_cut_loses_and_duplicates_nothing_postgres() {
    // Given a bridge that reaches RabbitMQ through a proxy, 1000 messages in its durable
    // queue, and a test transaction that locks the table, so received messages stay
    // uncommitted and unacknowledged
    let db = Db::Postgres;
    let mut world = World::new();
    let proxy = TcpProxy::start(Rabbit::addr());
    let queue = unique("mqdb_in_bcut");
    world.rabbit.declare_durable_queue(&queue);
    let table = TempTable::create(&db, "amqp_bcut", "id INTEGER PRIMARY KEY, v TEXT NOT NULL");
    let t = table.name.clone();
    let config = world.config(
        &Rabbit::url_via(proxy.port),
        &db.connection_string(),
        &[route(
            "bcut",
            &queue,
            &t,
            &[("id", "payload.id"), ("v", "payload.v")],
            &[
                "format: json",
                "prefetch: 200",
                "batch: { max_rows: 50, max_delay: 50ms }",
                "on_conflict: ignore",
                "key: [id]",
            ],
        )],
    );
    let locker = odbc_connect(&db.connection_string()).expect("connect the locker");
    locker.set_autocommit(false).expect("autocommit off");
    odbc_exec(&locker, &format!("LOCK TABLE {t} IN SHARE MODE")).expect("lock the table");
    world.rabbit.publish_to_queue(&queue, id_payloads(1..=1000));
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "a batch waiting on the table lock", || {
        Ok(try_scalar(&db, &pg_lock_waiters(&t)).unwrap_or(0) >= 1)
    });

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
    assert!(
        during <= 1000,
        "{during} rows, but only 1000 were published before the cut"
    );
    assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());

    // When the broker is reachable again
    proxy.set_down(false);

    // Then every message becomes exactly one row, nothing is dead-lettered, the queue drains
    wait_for_count(&mut bridge, &db, &count_sql, 2000);
    wait_queue_drained(&mut bridge, &queue);
    assert_eq!(
        scalar(&db, &format!("SELECT COUNT(DISTINCT id) FROM {t}")),
        2000
    );
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT COUNT(*) FROM {t} WHERE v = 'm' || id")
        ),
        2000
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    assert!(proxy.accepted() >= 2, "the bridge never reconnected");
    terminate_ok(&mut bridge);
    eprintln!("rows before the broker came back: {during}");
}

// ---------------------------------------------------------------------------------------
// 6. mqdb check
// ---------------------------------------------------------------------------------------

/// The 1-based number of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
        + 1
}

/// `mqdb -c PATH check` on `text` written to `dir`: exit code, stdout, stderr.
fn check(dir: &Path, text: &str) -> (Option<i32>, String, String, PathBuf) {
    let path = dir.join("check.yaml");
    std::fs::write(&path, text).expect("write check.yaml");
    let out = run_mqdb(&["-c", path_str(&path), "check"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
    )
}

#[test]
fn check_accepts_an_amqp_inbound_route_and_rejects_mqtt_only_keys() {
    // Given an AMQP inbound route to an existing queue, mapping metadata and headers
    let mut world = World::new();
    let queue = unique("mqdb_in_check");
    world.rabbit.declare_durable_queue(&queue);
    let table = TempTable::create(
        &Db::Postgres,
        "amqp_check",
        "id INTEGER PRIMARY KEY, rk TEXT, site TEXT",
    );
    let t = table.name.clone();
    let good_route = route(
        "amqp_good",
        &queue,
        &t,
        &[
            ("id", "payload.id"),
            ("rk", "meta.routing_key"),
            ("site", "header.x-site"),
        ],
        &["format: json", "prefetch: 20"],
    );
    let config = world.config(
        Rabbit::URL,
        &Db::Postgres.connection_string(),
        &[good_route],
    );

    // When check runs, then it prints one ok line for it and exits 0
    let out = run_mqdb(&["-c", path_str(&config), "check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let show = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{show}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("inbound amqp_good:"))
        .collect();
    assert_eq!(lines.len(), 1, "{show}");
    assert!(lines[0].starts_with("ok"), "{show}");

    // Given the same route with `topic:` (an MQTT key), then check rejects the file (exit 2)
    // naming the line of `topic:`
    let text = std::fs::read_to_string(&config).expect("read the config");
    let with_topic = text.replace(
        "    database: \"d\"\n",
        "    topic: \"sensors/+/temp\"\n    database: \"d\"\n",
    );
    assert_ne!(with_topic, text);
    let (code, stdout, stderr, path) = check(world.work.dir.path(), &with_topic);
    let show = format!("{with_topic}\n{stdout}{stderr}");
    assert_eq!(code, Some(2), "{show}");
    let located = format!("{}:{}:", path.display(), line_of(&with_topic, "topic:"));
    assert!(stderr.contains(&located), "expected {located:?}\n{show}");
    assert!(stderr.contains("topic"), "{show}");
    assert!(stdout.trim().is_empty(), "no check lines: {show}");

    // Given the same route with a `meta.topic` source, then check rejects it at that line
    let with_meta_topic = text.replace(
        "      rk: \"meta.routing_key\"\n",
        "      rk: \"meta.topic\"\n",
    );
    assert_ne!(with_meta_topic, text);
    let (code, stdout, stderr, path) = check(world.work.dir.path(), &with_meta_topic);
    let show = format!("{with_meta_topic}\n{stdout}{stderr}");
    assert_eq!(code, Some(2), "{show}");
    let located = format!(
        "{}:{}:",
        path.display(),
        line_of(&with_meta_topic, "meta.topic")
    );
    assert!(stderr.contains(&located), "expected {located:?}\n{show}");
    assert!(stderr.contains("meta.topic"), "{show}");

    // Given an MQTT route with `queue:` (an AMQP key), then check rejects it too, at that line
    let mqtt = format!(
        "state: \"sqlite://{state}\"\n\
         brokers:\n  m:\n    url: \"mqtt://127.0.0.1:1883\"\n    client_id: \"{cid}\"\n\
         databases:\n  d:\n    connection_string: \"{cs}\"\n\
         inbound:\n  - name: mqtt_with_queue\n    broker: m\n    topic: \"a/b\"\n    \
         queue: \"{queue}\"\n    database: d\n    table: {t}\n",
        state = world.work.dir.path().join("state.db").display(),
        cid = unique("mqdb_chk"),
        cs = Db::Postgres.connection_string(),
    );
    let (code, stdout, stderr, path) = check(world.work.dir.path(), &mqtt);
    let show = format!("{mqtt}\n{stdout}{stderr}");
    assert_eq!(code, Some(2), "{show}");
    let located = format!("{}:{}:", path.display(), line_of(&mqtt, "queue:"));
    assert!(stderr.contains(&located), "expected {located:?}\n{show}");
    assert!(stderr.contains("queue"), "{show}");
}
