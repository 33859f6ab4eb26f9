//! `mqdb run` for inbound routes (MQTT → ODBC): values and types in each database, dead
//! letters beside a committed batch, database and broker outages, SIGKILL and SIGTERM in the
//! middle of a batch. Where a test needs a batch held mid-way, a PostgreSQL lock held by the
//! test makes that deterministic instead of timed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use common::{
    Bridge, Db, NULL, Route, TcpProxy, TempTable, World, dlq_list, letter_id, lock_holder, mqdb_at,
    pairs, parse_bool, parse_ts, publish_retained, temp_sqlite, text_rows, ts, unique,
    wait_dead_letters, wait_for, wait_lock_waiter,
};
use common::{LIVENESS, scalar, seq_messages, terminate_ok, try_scalar, wait_for_count};
use serde_json::Value as Json;

type Messages = Vec<(String, Vec<u8>)>;

/// One `inbound:` list item with broker `b`, database `d`, QoS 1 and JSON, plus `extra`
/// settings (e.g. `on_conflict: ignore`).
fn route(name: &str, topic: &str, table: &str, columns: &[(&str, &str)], extra: &[&str]) -> Route {
    Route::inbound(name, topic, table)
        .columns(columns)
        .lines(extra)
}

/// The table of a [`seq_route`].
const SEQ_COLUMNS: &str = "seq INTEGER PRIMARY KEY, part VARCHAR(10) NOT NULL";

/// A [`seq_route`] that skips a seq already stored.
const IGNORE_DUPLICATES: [&str; 2] = ["on_conflict: ignore", "key: [seq]"];

/// A route of `{"seq":N}` messages on `topic` (with a `{part}` level) into (seq, part), in
/// batches of at most 50 rows.
fn seq_route(name: &str, topic: &str, table: &str, on_conflict: &[&str]) -> Route {
    Route::inbound(name, topic, table)
        .columns(&pairs("seq=payload.seq part=topic.part"))
        .lines(&["batch: { max_rows: 50, max_delay: 50ms }"])
        .lines(on_conflict)
}

/// Asserts that table `t` holds `n` distinct seqs, `second` of them from the `second` part,
/// and that nothing was dead-lettered.
fn assert_every_seq_once(db: &Db, t: &str, config: &Path, n: i64, second: i64) {
    let count = |what: &str| scalar(db, &format!("SELECT COUNT({what}) FROM {t}"));
    assert_eq!(count("DISTINCT seq"), n);
    let parts = format!("SELECT COUNT(*) FROM {t} WHERE part = 'second'");
    assert_eq!(scalar(db, &parts), second);
    assert_eq!(dlq_list(config), Vec::<Json>::new());
}

/// Waits until `sql` returns at least `n` (0 while the database cannot answer).
fn wait_at_least(bridge: &mut Bridge, db: &Db, what: &str, sql: &str, n: i64) {
    wait_for(bridge, what, || Ok(try_scalar(db, sql).unwrap_or(0) >= n));
}

fn parse_f64(text: &str) -> f64 {
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a number: {e}"))
}

/// `ts_select` selects `ts` as UTC text; `exact_decimals`: numeric(30,10) keeps every digit
/// (PostgreSQL, MariaDB), where SQLite's NUMERIC affinity keeps about 15 significant digits.
fn values_and_types_land(db: &Db, columns: &str, ts_select: &str, exact_decimals: bool) {
    // Given a table with one column per type and a route that maps topic levels, payload
    // keys, the whole payload and the receive time to it
    let world = World::new("inbound");
    let table = TempTable::create(db, "vals", columns);
    let t = table.name.clone();
    let root = unique("vals");
    let columns = pairs(
        "id=payload.id site=topic.site device=topic.device big=payload.big \
         amount=payload.amount ratio=payload.ratio flag=payload.flag label=payload.label \
         ts=payload.ts dt=payload.dt num=payload.num dflt=payload.dflt raw=payload \
         at=meta.received_at",
    );
    let batch = "batch: { max_rows: 500, max_delay: 100ms }";
    let extra = [batch, "on_conflict: error"];
    let topic = format!("{root}/{{site}}/{{device}}");
    let route = route("values", &topic, &t, &columns, &extra);
    let config = world.config(db).inbound(route).write();
    world.persistent_session(&format!("{root}/+/+"));
    let injection = format!("x'); DROP TABLE {t}; --");
    // SQLite keeps a decimal that is not an integer to 15 significant digits; longer ones
    // are dead letters (tests/fidelity).
    let first_amount = if exact_decimals {
        "12345678901234567890.1234567890"
    } else {
        "1234567890.12345"
    };

    // When messages on several topics, with every kind of value, are published
    let payloads = [
        r#"{"id":1,"big":9007199254740993,"amount":AMOUNT,"ratio":1.5,"flag":true,"label":"é 日本 🎉","ts":"2024-05-01T12:00:00+02:00","dt":"2024-02-29","num":null}"#
            .replace("AMOUNT", first_amount),
        r#"{"id":2,"big":-42,"amount":"-0.5","ratio":-0.25,"flag":false,"label":"plain ascii","ts":1714564800,"dt":"2024-12-31","dflt":"given"}"#.into(),
        r#"{"id":3,"big":"77","amount":3.25,"ratio":"2.5","flag":1,"label":"it's \"quoted\" \\ back","ts":1714564800123,"dt":"2000-01-01","num":5}"#.into(),
        r#"{"id":4,"big":9223372036854775807,"amount":0,"ratio":6.02214076e23,"flag":false,"label":"","ts":"2024-05-01T12:00:00.250Z","dt":"1999-12-31","num":-1}"#.into(),
    ];
    let levels = [
        "north/d1",
        "south/d-2",
        &format!("north/{injection}"),
        "east/d4",
    ];
    let special = |(level, payload): (&&str, &String)| {
        (format!("{root}/{level}"), payload.as_bytes().to_vec())
    };
    let mut messages: Messages = levels.iter().zip(&payloads).map(special).collect();
    messages.extend((100..300).map(|id| {
        let (big, ts) = (id * 3, 1_714_564_800 + id);
        let payload = format!(
            r#"{{"id":{id},"big":{big},"amount":"1.5","ratio":0.5,"flag":true,"label":"row {id}","ts":{ts},"dt":"2024-01-01"}}"#
        );
        (format!("{root}/fill/f{id}"), payload.into_bytes())
    }));
    let before = Utc::now().naive_utc();
    world.publisher().publish_all_confirmed(messages.clone(), 1);
    let mut bridge = Bridge::start(&config);

    // Then every message becomes exactly one row
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, db, &count_sql, messages.len() as i64);
    let after = Utc::now().naive_utc();
    let rows = db.query(&format!(
        "SELECT id, site, device, big, amount, ratio, flag, label, {ts_select}, dt, num, dflt, \
         raw, at FROM {t} WHERE id < 100 ORDER BY id"
    ));
    let get = |c: usize| -> Vec<Option<&str>> { rows.iter().map(|r| r[c].as_deref()).collect() };
    let column = |c: usize| -> Vec<&str> {
        let text = |r: usize| rows[r][c].as_deref();
        let text = |r| text(r).unwrap_or_else(|| panic!("NULL in {c}: {:?}", rows[r]));
        (0..rows.len()).map(text).collect()
    };
    let trimmed = |c: usize| -> Vec<&str> { column(c).into_iter().map(str::trim).collect() };

    // And topic captures became columns, the injection-shaped level stored verbatim
    assert_eq!(column(1), ["north", "south", "north", "east"]);
    assert_eq!(column(2), ["d1", "d-2", injection.as_str(), "d4"]);
    // And integers are exact, also beyond 2^53 and at i64::MAX, also from a JSON string
    let bigs = ["9007199254740993", "-42", "77", "9223372036854775807"];
    assert_eq!(trimmed(3), bigs);
    // And decimals keep every digit where the column can hold them
    if exact_decimals {
        assert_eq!(trimmed(4)[0], "12345678901234567890.1234567890");
        let amounts = ["-0.5000000000", "3.2500000000", "0.0000000000"];
        assert_eq!(trimmed(4)[1..], amounts);
    } else {
        let amounts: Vec<f64> = column(4).into_iter().map(parse_f64).collect();
        assert_eq!(amounts, [1_234_567_890.123_45_f64, -0.5, 3.25, 0.0]);
    }
    // And floats, booleans and text (non-ASCII, quotes, empty) arrive unchanged
    let ratios: Vec<f64> = column(5).into_iter().map(parse_f64).collect();
    assert_eq!(ratios, [1.5, -0.25, 2.5, 6.02214076e23]);
    let flags: Vec<bool> = column(6).into_iter().map(parse_bool).collect();
    assert_eq!(flags, [true, false, true, false]);
    let labels = ["é 日本 🎉", "plain ascii", "it's \"quoted\" \\ back", ""];
    assert_eq!(column(7), labels);
    // And timestamps with offsets, epoch seconds and epoch millis are stored as UTC
    let stamps: Vec<NaiveDateTime> = column(8).into_iter().map(parse_ts).collect();
    let utc = ["10:00:00", "12:00:00", "12:00:00.123", "12:00:00.250"];
    assert_eq!(stamps, utc.map(|t| ts(&format!("2024-05-01 {t}"))));
    let dates = ["2024-02-29", "2024-12-31", "2000-01-01", "1999-12-31"];
    assert_eq!(trimmed(9), dates);
    // And JSON null is NULL (not the default), an absent key leaves the column's default
    let nums: Vec<Option<&str>> = get(10).into_iter().map(|v| v.map(str::trim)).collect();
    assert_eq!(nums, [None, Some("7"), Some("5"), Some("-1")]);
    assert_eq!(column(11), ["dflt", "given", "dflt", "dflt"]);
    // And the whole payload is stored as text, byte for byte
    assert_eq!(column(12), payloads, "raw payloads");
    // And meta.received_at is the (UTC) time the bridge received the message
    for (r, at) in column(13).into_iter().map(parse_ts).enumerate() {
        let slack = chrono::Duration::seconds(2);
        assert!(
            at >= before - slack && at <= after + slack,
            "row {r}: received_at {at} is not between {before} and {after} (UTC)"
        );
    }
    // And the 200 filler rows carry their values and the column defaults
    let sum = format!("SELECT SUM(big) FROM {t} WHERE id >= 100");
    assert_eq!(scalar(db, &sum), 3 * (100..300).sum::<i64>());
    let filler = "id >= 100 AND site = 'fill' AND num = 7 AND dflt = 'dflt'";
    assert_eq!(scalar(db, &format!("{count_sql} WHERE {filler}")), 200);
    // And nothing was dead-lettered
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn values_and_types_land_in_postgres() {
    let columns = "id INTEGER PRIMARY KEY, site VARCHAR(100), device VARCHAR(200), big BIGINT, \
                   amount NUMERIC(30,10), ratio DOUBLE PRECISION, flag BOOLEAN, label TEXT, \
                   ts TIMESTAMPTZ, dt DATE, num INTEGER DEFAULT 7, \
                   dflt VARCHAR(20) DEFAULT 'dflt', raw TEXT, at TIMESTAMP";
    let ts_select = "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')";
    values_and_types_land(&Db::Postgres, columns, ts_select, true);
}

#[test]
fn values_and_types_land_in_mariadb() {
    let columns = "id INT PRIMARY KEY, site VARCHAR(100), device VARCHAR(200), big BIGINT, \
                   amount DECIMAL(30,10), ratio DOUBLE, flag BOOLEAN, label TEXT, \
                   ts DATETIME(6), dt DATE, num INT DEFAULT 7, \
                   dflt VARCHAR(20) DEFAULT 'dflt', raw TEXT, at DATETIME(6)";
    values_and_types_land(&Db::MariaDb, columns, "ts", true);
}

#[test]
fn values_and_types_land_in_sqlite() {
    let columns = "id INTEGER PRIMARY KEY, site VARCHAR(100), device VARCHAR(200), big BIGINT, \
                   amount NUMERIC(30,10), ratio DOUBLE, flag BOOLEAN, label TEXT, \
                   ts TIMESTAMP, dt DATE, num INTEGER DEFAULT 7, \
                   dflt VARCHAR(20) DEFAULT 'dflt', raw TEXT, at TIMESTAMP";
    values_and_types_land(&temp_sqlite(), columns, "ts", false);
}

#[test]
fn json_keys_map_to_same_named_columns_without_a_columns_block() {
    // Given a route without `columns:` and a table with defaults
    let db = Db::Postgres;
    let world = World::new("inbound");
    let layout =
        "id INTEGER PRIMARY KEY, name TEXT, qty INTEGER DEFAULT 5, note TEXT DEFAULT 'none'";
    let table = TempTable::create(&db, "keys", layout);
    let t = table.name.clone();
    let topic = format!("{}/items", unique("keys"));
    let route = route("keys", &topic, &t, &[], &[]);
    let config = world.config(&db).inbound(route).write();
    world.persistent_session(&topic);

    // When objects with all, some and null keys arrive
    let payloads = [
        r#"{"id":1,"name":"all","qty":2,"note":"x"}"#,
        r#"{"id":2,"name":"some"}"#,
        r#"{"qty":null,"id":3}"#,
    ];
    let messages = payloads.map(|p| (topic.clone(), p.as_bytes().to_vec()));
    world.publisher().publish_all_confirmed(messages.into(), 1);
    let mut bridge = Bridge::start(&config);
    wait_for_count(&mut bridge, &db, &format!("SELECT COUNT(*) FROM {t}"), 3);

    // Then keys land in the same-named columns; absent keys keep the defaults
    let want = text_rows(&[
        ["1", "all", "2", "x"],
        ["2", "some", "5", "none"],
        ["3", NULL, NULL, "none"],
    ]);
    assert_eq!(db.query(&format!("SELECT * FROM {t} ORDER BY id")), want);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

/// Rows with the same key in one batch and across batches: the last message wins.
fn on_conflict_update_keeps_the_last_message(db: &Db) {
    // Given a route with on_conflict: update on key id
    let world = World::new("inbound");
    let layout = "id INTEGER PRIMARY KEY, v VARCHAR(10), rev INTEGER";
    let table = TempTable::create(db, "upsert", layout);
    let t = table.name.clone();
    let topic = format!("{}/state", unique("upsert"));
    let columns = pairs("id=payload.id v=payload.v rev=payload.rev");
    let batch = "batch: { max_rows: 500, max_delay: 200ms }";
    let extra = [batch, "on_conflict: update", "key: [id]"];
    let route = route("upsert", &topic, &t, &columns, &extra);
    let config = world.config(db).inbound(route).write();
    world.persistent_session(&topic);
    let msg = |id: i64, v: &str, rev: i64| {
        let payload = format!(r#"{{"id":{id},"v":"{v}","rev":{rev}}}"#);
        (topic.clone(), payload.into_bytes())
    };
    let rows_sql = format!("SELECT id, v, rev FROM {t} ORDER BY id");

    // When several messages per key are queued (so they meet in one batch) ...
    let publisher = world.publisher();
    let first = [
        (1, "a", 1),
        (2, "b", 1),
        (1, "c", 2),
        (3, "d", 1),
        (1, "e", 3),
        (2, "f", 2),
    ];
    publisher.publish_all_confirmed(first.map(|(i, v, r)| msg(i, v, r)).into(), 1);
    let mut bridge = Bridge::start(&config);
    let last = text_rows(&[["1", "e", "3"], ["2", "f", "2"], ["3", "d", "1"]]);
    let holds = |want: &Vec<_>| db.try_query(&rows_sql).unwrap_or_default() == *want;
    wait_for(&mut bridge, "the last value of every key", || {
        Ok(holds(&last))
    });

    // ... and one more arrives for an existing key in a later batch
    publisher.publish_all_confirmed(vec![msg(3, "g", 2)], 1);
    let updated = text_rows(&[["1", "e", "3"], ["2", "f", "2"], ["3", "g", "2"]]);
    wait_for(&mut bridge, "the later update", || Ok(holds(&updated)));

    // Then each key holds its last message, and nothing was dead-lettered
    assert_eq!(db.query(&rows_sql), updated);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

common::cases! {
    on_conflict_update_keeps_the_last_message_postgres:
        on_conflict_update_keeps_the_last_message(&Db::Postgres);
    on_conflict_update_keeps_the_last_message_mariadb:
        on_conflict_update_keeps_the_last_message(&Db::MariaDb);
    on_conflict_update_keeps_the_last_message_sqlite:
        on_conflict_update_keeps_the_last_message(&temp_sqlite());
}

/// Invalid UTF-8 (and base64 "//57fQ==").
const NOT_UTF8: [u8; 4] = [0xff, 0xfe, b'{', b'}'];

/// `states`: the SQLSTATEs the database reports for NOT NULL, CHECK, duplicate key and
/// numeric overflow.
fn dead_letters_beside_committed_rows(db: Db, states: [&str; 4]) {
    // Given a table with constraints and a route with on_conflict: error
    let world = World::new("inbound");
    let columns = "id INTEGER PRIMARY KEY, v INTEGER NOT NULL, \
        pct INTEGER CHECK (pct BETWEEN 0 AND 100), amount DECIMAL(5,2), kind VARCHAR(40)";
    let table = TempTable::create(&db, "dlq", columns);
    let t = table.name.clone();
    let root = unique("dlq");
    let route_name = format!("dl_{}", db.label());
    let columns =
        pairs("id=payload.id v=payload.v pct=payload.pct amount=payload.amount kind=topic.kind");
    let batch = "batch: { max_rows: 500, max_delay: 200ms }";
    let extra = [batch, "on_conflict: error"];
    let topic = format!("{root}/{{kind}}");
    let route = route(&route_name, &topic, &t, &columns, &extra);
    let config = world.config(&db).inbound(route).write();
    world.persistent_session(&format!("{root}/+"));

    // When 60 valid messages are published with bad ones in between: each kind of failure
    // on its own topic level
    let [not_null, check, duplicate, overflow] = states.map(Some);
    let bad: [(&str, &[u8], &str, Option<&str>); 7] = [
        ("bad_json", br#"{"id": 1001, "v": "#, "decode", None),
        ("bad_utf8", &NOT_UTF8, "decode", None),
        ("convert", br#"{"id":1002,"v":"abc"}"#, "convert", None),
        ("not_null", br#"{"id":1003,"v":null}"#, "rejected", not_null),
        (
            "check",
            br#"{"id":1004,"v":1,"pct":150}"#,
            "rejected",
            check,
        ),
        ("duplicate", br#"{"id":1,"v":999}"#, "rejected", duplicate),
        (
            "overflow",
            br#"{"id":1005,"v":1,"amount":123456.78}"#,
            "rejected",
            overflow,
        ),
    ];
    let mut messages: Messages = Vec::new();
    let mut next_bad = bad.iter();
    for id in 1..=60 {
        let (v, pct) = (id * 10, id % 101);
        let payload = format!(r#"{{"id":{id},"v":{v},"pct":{pct},"amount":"12.34"}}"#);
        messages.push((format!("{root}/ok"), payload.into_bytes()));
        if id % 8 == 0
            && let Some((kind, payload, _, _)) = next_bad.next()
        {
            messages.push((format!("{root}/{kind}"), payload.to_vec()));
        }
    }
    let all_sent = next_bad.next().is_none();
    assert!(all_sent, "every bad message is interleaved");
    world.publisher().publish_all_confirmed(messages, 1);
    let mut bridge = Bridge::start(&config);

    // Then every valid row is committed, and exactly the bad messages are dead letters
    wait_for_count(&mut bridge, &db, &format!("SELECT COUNT(*) FROM {t}"), 60);
    wait_dead_letters(&mut bridge, &config, bad.len());
    assert_eq!(
        scalar(&db, &format!("SELECT SUM(v) FROM {t}")),
        (1..=60).map(|id| id * 10).sum::<i64>(),
        "the duplicate did not overwrite row 1 and no bad row slipped in"
    );
    assert_eq!(scalar(&db, &format!("SELECT v FROM {t} WHERE id = 1")), 10);
    let misrouted = format!("SELECT COUNT(*) FROM {t} WHERE kind <> 'ok'");
    assert_eq!(scalar(&db, &misrouted), 0);

    let letters = dlq_list(&config);
    let mut by_source: BTreeMap<String, Json> = BTreeMap::new();
    for letter in &letters {
        let source = letter["source"].as_str().expect("source is text");
        let earlier = by_source.insert(source.to_string(), letter.clone());
        assert!(
            earlier.is_none(),
            "two dead letters from {source}: {letters:#?}"
        );
    }
    for (kind, payload, error_kind, sqlstate) in &bad {
        let source = format!("{root}/{kind}");
        let letter = by_source
            .get(&source)
            .unwrap_or_else(|| panic!("no dead letter from {source}: {letters:#?}"));
        let ctx = format!("{kind}: {letter:#}");
        assert_eq!(letter["route"], route_name.as_str(), "{ctx}");
        assert_eq!(letter["direction"], "inbound", "{ctx}");
        assert_eq!(letter["error_kind"], *error_kind, "{ctx}");
        assert_eq!(letter["attempts"], 1, "{ctx}");
        assert!(letter["id"].as_i64().is_some(), "{ctx}");
        let error = letter["error"].as_str().unwrap_or("");
        assert!(!error.trim().is_empty(), "{ctx}");
        for at in ["first_failed_at", "last_failed_at"] {
            let text = letter[at].as_str().unwrap_or_else(|| panic!("{at}: {ctx}"));
            let parsed = DateTime::parse_from_rfc3339(text)
                .unwrap_or_else(|e| panic!("{at} {text:?} is not RFC 3339 ({e}): {ctx}"));
            assert_eq!(parsed.offset().local_minus_utc(), 0, "{at} in UTC: {ctx}");
        }
        let (text, base64) = match std::str::from_utf8(payload) {
            Ok(text) => (Some(Json::from(text)), None),
            Err(_) => (None, Some(Json::from("//57fQ=="))),
        };
        assert_eq!(letter.get("payload"), text.as_ref(), "{ctx}");
        assert_eq!(letter.get("payload_base64"), base64.as_ref(), "{ctx}");
        match sqlstate {
            Some(state) => assert_eq!(letter["sqlstate"], *state, "{ctx}"),
            None => assert!(letter.get("sqlstate").is_none_or(Json::is_null), "{ctx}"),
        }
        if *kind == "convert" {
            assert!(error.contains("abc"), "the error names the value: {ctx}");
        }
    }

    // And `dlq show` prints the error and the payload, in hex when it is binary
    let show = |kind: &str| -> String {
        let letter = &by_source[&format!("{root}/{kind}")];
        let id = letter_id(letter).to_string();
        let ran = mqdb_at(&config, &["dlq", "show", &id]);
        let shown = ran.code(0).stdout.clone();
        let error = letter["error"].as_str().expect("error");
        assert!(shown.contains(error), "{shown}");
        shown
    };
    let shown = show("bad_utf8");
    let compact: String = shown.split_whitespace().collect();
    let hex = compact.to_ascii_lowercase().contains("fffe7b7d");
    assert!(hex, "hex payload: {shown}");
    let shown = show("duplicate");
    assert!(shown.contains(r#"{"id":1,"v":999}"#), "{shown}");
    assert!(shown.contains(states[2]), "{shown}");
    terminate_ok(&mut bridge);
}

common::cases! {
    dead_letters_beside_committed_rows_postgres:
        dead_letters_beside_committed_rows(Db::Postgres, ["23502", "23514", "23505", "22003"]);
    dead_letters_beside_committed_rows_mariadb:
        dead_letters_beside_committed_rows(Db::MariaDb, ["23000", "23000", "23000", "22003"]);
}

#[test]
fn a_commit_lost_to_an_outage_is_not_written_twice() {
    // Given a table whose commit of one marked row takes two seconds (a deferred trigger
    // sleeps), reached through a proxy, and a route that dead-letters duplicates
    let db = Db::Postgres;
    let world = World::new("inbound");
    let proxy = TcpProxy::start(([127, 0, 0, 1], 5432).into());
    let table = TempTable::create(&db, "lost_commit", "seq INTEGER PRIMARY KEY, part TEXT");
    let t = table.name.clone();
    let slow = format!("{t}_slow");
    db.exec(&format!(
        "CREATE FUNCTION {slow}() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN IF NEW.seq = 7 THEN PERFORM pg_sleep(2); END IF; RETURN NULL; END $$"
    ));
    db.exec(&format!(
        "CREATE CONSTRAINT TRIGGER {slow} AFTER INSERT ON {t} DEFERRABLE INITIALLY DEFERRED \
         FOR EACH ROW EXECUTE FUNCTION {slow}()"
    ));
    let topic = format!("{}/{{part}}", unique("lost"));
    let base = world.config_cs(&db.connection_string_via(proxy.port));
    let route = seq_route("lost", &topic, &t, &["on_conflict: error"]);
    let config = base.inbound(route).write();
    world.persistent_session(&topic.replace("{part}", "+"));
    let publisher = world.publisher();
    let part = |part: &str| topic.replace("{part}", part);
    publisher.publish_all_confirmed(seq_messages(|_| part("first"), 0..20), 1);
    let mut bridge = Bridge::start(&config);

    // When the connection is cut while the server is committing the batch with row 7
    let sleeping = "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'";
    let what = "the commit of row 7 under way";
    wait_at_least(&mut bridge, &db, what, sleeping, 1);
    proxy.set_down(true);
    wait_for(&mut bridge, "the server to finish that commit", || {
        Ok(try_scalar(&db, sleeping).unwrap_or(1) == 0)
    });
    let committed = scalar(&db, &format!("SELECT COUNT(*) FROM {t} WHERE seq = 7"));
    proxy.set_down(false);
    publisher.publish_all_confirmed(seq_messages(|_| part("second"), 20..40), 1);

    // Then every message is one row and nothing was dead-lettered: the bridge asked the
    // server whether the lost commit happened instead of writing the batch again
    wait_for_count(&mut bridge, &db, &format!("SELECT COUNT(*) FROM {t}"), 40);
    assert_eq!(committed, 1, "the cut came after the server committed");
    assert_every_seq_once(&db, &t, &config, 40, 20);
    let log = bridge.log();
    let noticed = log.contains("committed before the outage");
    assert!(noticed, "the lost commit was not noticed:\n{log}");
    terminate_ok(&mut bridge);
    db.exec(&format!("DROP TABLE {t}"));
    db.exec(&format!("DROP FUNCTION {slow}()"));
}

/// The rows of `t` while a connection is cut, asserted to be at most the `published` ones
/// and the bridge still running.
fn rows_during_cut(db: &Db, t: &str, bridge: &mut Bridge, published: i64) -> i64 {
    assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());
    let during = scalar(db, &format!("SELECT COUNT(*) FROM {t}"));
    let at_most = format!("{during} rows, but only {published} were published before the cut");
    assert!(during <= published, "{at_most}");
    during
}

fn database_outage_loses_nothing(db: Db, port: u16) {
    // Given a bridge that reaches the database through a proxy
    let world = World::new("inbound");
    let proxy = TcpProxy::start(([127, 0, 0, 1], port).into());
    let table = TempTable::create(&db, "outage", SEQ_COLUMNS);
    let t = table.name.clone();
    let topic = format!("{}/{{part}}", unique("outage"));
    let base = world.config_cs(&db.connection_string_via(proxy.port));
    let route = seq_route("outage", &topic, &t, &IGNORE_DUPLICATES);
    let config = base.inbound(route).write();
    world.persistent_session(&topic.replace("{part}", "+"));
    let publisher = world.publisher();
    let part = |part: &str| topic.replace("{part}", part);
    publisher.publish_all_confirmed(seq_messages(|_| part("first"), 0..600), 1);
    let mut bridge = Bridge::start(&config);
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_at_least(&mut bridge, &db, "the first rows", &count_sql, 100);

    // When the database becomes unreachable while more messages arrive
    proxy.set_down(true);
    publisher.publish_all_confirmed(seq_messages(|_| part("second"), 600..1200), 1);
    std::thread::sleep(Duration::from_secs(4));
    let letters = dlq_list(&config);
    assert!(
        letters.is_empty(),
        "an outage is never a dead letter: {letters:#?}"
    );
    let during = rows_during_cut(&db, &t, &mut bridge, 600);

    // Then, once it is back, every message becomes exactly one row, none dead-lettered
    proxy.set_down(false);
    wait_for_count(&mut bridge, &db, &count_sql, 1200);
    assert_every_seq_once(&db, &t, &config, 1200, 600);
    assert!(
        proxy.accepted() >= 2,
        "the bridge never reconnected, so it never saw the outage"
    );
    terminate_ok(&mut bridge);
    eprintln!("rows before the database came back: {during}");
}

common::cases! {
    database_outage_loses_nothing_postgres: database_outage_loses_nothing(Db::Postgres, 5432);
    database_outage_loses_nothing_mariadb: database_outage_loses_nothing(Db::MariaDb, 3306);
}

#[test]
fn broker_connection_cut_loses_nothing() {
    // Given a bridge that reaches its broker through a proxy
    let db = Db::Postgres;
    let world = World::new("inbound");
    let proxy = TcpProxy::start(world.broker.addr());
    let table = TempTable::create(&db, "bcut", SEQ_COLUMNS);
    let t = table.name.clone();
    let topic = format!("{}/{{part}}", unique("bcut"));
    let (_, settings) = world.mqtt(Json::Null);
    let config = world
        .config(&db)
        .broker("b", &format!("mqtt://127.0.0.1:{}", proxy.port), settings)
        .inbound(seq_route("bcut", &topic, &t, &IGNORE_DUPLICATES))
        .write();
    world.persistent_session(&topic.replace("{part}", "+"));
    // And a test transaction that locks the table, so received messages stay uncommitted
    // and unacknowledged
    let locker = lock_holder(&db, &format!("LOCK TABLE {t} IN SHARE MODE"));
    let publisher = world.publisher();
    let part = |part: &str| topic.replace("{part}", part);
    publisher.publish_all_confirmed(seq_messages(|_| part("first"), 0..1000), 1);
    let mut bridge = Bridge::start(&config);
    wait_lock_waiter(&mut bridge, &t);

    // When the broker connection is cut, the held batches commit meanwhile (their
    // acknowledgements cannot reach the broker) and more messages are published
    proxy.set_down(true);
    locker.rollback().expect("release the lock");
    drop(locker);
    publisher.publish_all_confirmed(seq_messages(|_| part("second"), 1000..2000), 1);
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_at_least(&mut bridge, &db, "the held rows to commit", &count_sql, 1);
    std::thread::sleep(Duration::from_secs(2));
    let during = rows_during_cut(&db, &t, &mut bridge, 1000);

    // Then, once the broker is reachable again, every message becomes exactly one row
    proxy.set_down(false);
    wait_for_count(&mut bridge, &db, &count_sql, 2000);
    assert_every_seq_once(&db, &t, &config, 2000, 1000);
    assert!(proxy.accepted() >= 2, "the bridge never reconnected");
    terminate_ok(&mut bridge);
    eprintln!("rows before the broker came back: {during}");
}

#[test]
fn a_broker_path_that_goes_silent_is_noticed_by_the_keep_alive_and_loses_nothing() {
    // Given a bridge that reaches its broker through a relay, with a 2 s keep-alive and
    // connect timeout, and 1000 messages stored
    let db = Db::Postgres;
    let world = World::new("inbound");
    let relay = TcpProxy::start(world.broker.addr());
    let table = TempTable::create(&db, "bfreeze", SEQ_COLUMNS);
    let t = table.name.clone();
    let topic = format!("{}/{{part}}", unique("bfreeze"));
    let (_, settings) =
        world.mqtt(serde_json::json!({ "keep_alive": "2s", "connect_timeout": "2s" }));
    let config = world
        .config(&db)
        .broker("b", &format!("mqtt://127.0.0.1:{}", relay.port), settings)
        .inbound(seq_route("bfreeze", &topic, &t, &IGNORE_DUPLICATES))
        .write();
    world.persistent_session(&topic.replace("{part}", "+"));
    let publisher = world.publisher();
    let part = |part: &str| topic.replace("{part}", part);
    publisher.publish_all_confirmed(seq_messages(|_| part("first"), 0..1000), 1);
    let mut bridge = Bridge::start(&config);
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, &db, &count_sql, 1000);

    // When the path goes silent (nothing forwarded, nothing closed) and 1000 more messages
    // are published
    relay.freeze(true);
    publisher.publish_all_confirmed(seq_messages(|_| part("second"), 1000..2000), 1);

    // Then the keep-alive notices, and reconnecting through the silent path times out
    bridge.wait_for_log("broker connection lost", LIVENESS);
    bridge.wait_for_log("did not complete within 2s (connect_timeout)", LIVENESS);
    assert!(bridge.is_running(), "mqdb died:\n{}", bridge.log());

    // And once the path answers again, every message is exactly one row
    relay.freeze(false);
    wait_for_count(&mut bridge, &db, &count_sql, 2000);
    assert_every_seq_once(&db, &t, &config, 2000, 1000);
    terminate_ok(&mut bridge);
}

#[test]
fn sigkill_mid_batch_then_restart_loses_and_duplicates_nothing() {
    // Given 3000 messages queued by the broker for the bridge's persistent session, and a
    // test transaction holding seq 1500 so the batch containing it cannot commit
    let db = Db::Postgres;
    let world = World::new("inbound");
    let table = TempTable::create(&db, "kill", "seq INTEGER PRIMARY KEY, v TEXT NOT NULL");
    let t = table.name.clone();
    let topic = format!("{}/data", unique("kill"));
    let columns = pairs("seq=payload.seq v=payload.v");
    let batch = "batch: { max_rows: 100, max_delay: 50ms }";
    let extra = [batch, "on_conflict: ignore", "key: [seq]"];
    let route = route("kill", &topic, &t, &columns, &extra);
    let config = world.config(&db).inbound(route).write();
    world.persistent_session(&topic);
    let n = 3000;
    let message = |seq| {
        let payload = format!(r#"{{"seq":{seq},"v":"m{seq}"}}"#);
        (topic.clone(), payload.into_bytes())
    };
    let messages: Messages = (1..=n).map(message).collect();
    world.publisher().publish_all_confirmed(messages, 1);
    let blocker = format!("INSERT INTO {t} (seq, v) VALUES (1500, 'blocker')");
    let blocker = lock_holder(&db, &blocker);

    // When the bridge runs until its batch with seq 1500 waits on that lock, and is killed
    let mut bridge = Bridge::start(&config);
    wait_lock_waiter(&mut bridge, &t);
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    let before_kill = scalar(&db, &count_sql);
    bridge.kill();
    blocker.rollback().expect("release seq 1500");
    drop(blocker);

    // Then some but not all rows exist: every batch before the blocked one, none after
    let some = (1..1500).contains(&before_kill);
    assert!(some, "{before_kill} rows committed before the kill");
    // And a new bridge with the same config resumes the session and completes the stream
    let mut bridge = Bridge::start(&config);
    wait_for_count(&mut bridge, &db, &count_sql, n);
    let select = |what: &str| scalar(&db, &format!("SELECT {what} FROM {t}"));
    assert_eq!(select("COUNT(DISTINCT seq)"), n);
    assert_eq!(select("MIN(seq) + MAX(seq)"), 1 + n);
    assert_eq!(scalar(&db, &format!("{count_sql} WHERE v = 'blocker'")), 0);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn sigterm_mid_batch_exits_zero_and_a_restart_completes_without_duplicates() {
    // Given a fresh bridge (it subscribes itself) and a table without a unique key, so a
    // redelivered committed message would show up as a second row
    let db = Db::Postgres;
    let world = World::new("inbound");
    let table = TempTable::create(&db, "term", "seq INTEGER NOT NULL, kind VARCHAR(10)");
    let t = table.name.clone();
    let root = unique("term");
    let columns = pairs("seq=payload.seq kind=topic.kind");
    let batch = ["batch: { max_rows: 100, max_delay: 50ms }"];
    let topic = format!("{root}/{{kind}}");
    let route = route("term", &topic, &t, &columns, &batch);
    let config = world.config(&db).inbound(route).write();
    // A retained probe reaches the bridge as soon as its subscription is in place
    let port = world.broker.port;
    publish_retained(port, &format!("{root}/probe"), 1, r#"{"seq":0}"#);
    let mut bridge = Bridge::start(&config);
    let probe = format!("SELECT COUNT(*) FROM {t} WHERE seq = 0");
    wait_at_least(&mut bridge, &db, "the retained probe row", &probe, 1);

    // When 2000 messages arrive while a test transaction locks the table against inserts,
    // and SIGTERM comes while the bridge's batch waits on that lock
    let locker = lock_holder(&db, &format!("LOCK TABLE {t} IN SHARE MODE"));
    let n = 2000;
    let data = format!("{root}/data");
    world
        .publisher()
        .publish_all_confirmed(seq_messages(|_| data.clone(), 1..n + 1), 1);
    wait_lock_waiter(&mut bridge, &t);
    let data_sql = format!("SELECT COUNT(*) FROM {t} WHERE seq > 0");
    assert_eq!(scalar(&db, &data_sql), 0, "nothing committed past the lock");
    let log_before = bridge.log().len();
    common::send_signal(bridge.pid().expect("running"), "TERM");
    wait_for(&mut bridge, "the log to mention stopping", || {
        let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
        let since = log.get(log_before..).unwrap_or("");
        Ok(since.to_lowercase().contains("stop"))
    });
    locker.rollback().expect("release the lock");
    drop(locker);

    // Then it exits 0, having said it stopped, and what it committed has no duplicates
    terminate_ok(&mut bridge);
    let distinct_sql = format!("SELECT COUNT(DISTINCT seq) FROM {t} WHERE seq > 0");
    let first = scalar(&db, &data_sql);
    assert!(first <= n, "{first} rows after SIGTERM");
    let distinct = scalar(&db, &distinct_sql);
    assert_eq!(distinct, first, "duplicates after SIGTERM");

    // And a restart delivers the rest: every message exactly once
    let mut bridge = Bridge::start(&config);
    wait_for_count(&mut bridge, &db, &data_sql, n);
    assert_eq!(scalar(&db, &distinct_sql), n);
    terminate_ok(&mut bridge);
    assert_eq!(scalar(&db, &data_sql), n, "rows added while draining");
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    eprintln!("rows committed by the SIGTERMed bridge: {first} of {n}");
}
