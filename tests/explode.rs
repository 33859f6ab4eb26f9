//! `rows:` on inbound JSON routes: one message carries an array, each element is a row.
//! From MQTT and from AMQP, into PostgreSQL, MariaDB and SQLite: elements beside their
//! message's context, an element that fails alone as a dead letter with its `index`, a
//! message without its array as one dead letter, and element letters replayed to the rows
//! they would have made.

mod common;

use std::path::Path;

use common::{
    Bridge, Db, Header, LIVENESS, NULL, Rabbit, Ran, Route, TempTable, Workdir, World, amqp_route,
    letter_id, mqdb_bounded, pairs, path_str, temp_sqlite, terminate_ok, text_rows, unique,
    wait_consuming, wait_dead_letters, wait_for_count, wait_queue_drained,
};
use serde_json::{Value as Json, json};

/// `mqdb dlq ARGS…` on `config`, bounded by [`LIVENESS`].
fn dlq(config: &Path, args: &str) -> Ran {
    let args: Vec<&str> = args.split_whitespace().collect();
    let all = [&["-c", path_str(config), "dlq"][..], &args].concat();
    mqdb_bounded(&all, config.parent().expect("config dir"), LIVENESS)
}

/// `mqdb dlq replay --id ID` of one letter, which succeeds.
fn replay_one(config: &Path, letter: &Json) {
    let ran = dlq(config, &format!("replay --id {}", letter_id(letter)));
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains("replayed 1 of 1"), "{ran}");
}

/// The one letter whose `headers.index` is `index` and whose payload is `payload`.
fn element_letter<'a>(letters: &'a [Json], index: i64, payload: &str) -> &'a Json {
    let found: Vec<&Json> = letters
        .iter()
        .filter(|l| l["headers"]["index"].as_i64() == Some(index) && l["payload"] == payload)
        .collect();
    assert_eq!(found.len(), 1, "element {index} {payload}: {letters:#?}");
    found[0]
}

/// The one letter of a whole message (no `index`) whose payload is `payload`.
fn message_letter<'a>(letters: &'a [Json], payload: &str) -> &'a Json {
    let found: Vec<&Json> = letters.iter().filter(|l| l["payload"] == payload).collect();
    assert_eq!(found.len(), 1, "{payload}: {letters:#?}");
    assert!(found[0]["headers"].get("index").is_none(), "{:#}", found[0]);
    found[0]
}

fn mqtt_elements_are_rows_and_a_bad_one_replays_after_the_fix(db: &Db) {
    // Given a table keyed by id, holding a row that blocks id 999, and a route exploding
    // `payload.readings` with the site from the message, the device from the topic, the
    // element's index and fields, in batches smaller than a message
    let world = World::new("explode");
    let columns = "id INTEGER PRIMARY KEY, site TEXT, device TEXT, i INTEGER, v INTEGER";
    let table = TempTable::create(db, "explode", columns);
    let t = &table.name;
    db.exec(&format!(
        "INSERT INTO {t} (id, site) VALUES (999, 'blocker')"
    ));
    let root = unique("gw");
    let spec = "id=item.id site=payload.site device=topic.device i=meta.index v=item.v";
    let route = Route::inbound("batched", &format!("{root}/{{device}}/batch"), t)
        .set("rows", "payload.readings")
        .columns(&pairs(spec))
        .lines(&["batch: { max_rows: 3, max_delay: 50ms }"]);
    let config = world.config(db).inbound(route).write();
    world.persistent_session(&format!("{root}/+/batch"));

    // When messages of several elements arrive: one element a string for an integer, one
    // a duplicate key; an empty array; an object where the array should be; no array
    let on = |device: &str, payload: &str| (format!("{root}/{device}/batch"), payload.into());
    let m1 = r#"{"site":"p1","readings":[{"id":1,"v":10},{"id":2,"v":"x"},{"id":3,"v":30},{"id":999,"v":40},{"id":4,"v":50}]}"#;
    let m2 = r#"{"site":"p2","readings":[{"id":5,"v":60},{"id":6}]}"#;
    let empty = r#"{"site":"p3","readings":[]}"#;
    let object = r#"{"site":"p4","readings":{"id":7,"v":70}}"#;
    let none = r#"{"site":"p5"}"#;
    let messages = vec![
        on("d1", m1),
        on("d2", m2),
        on("d3", empty),
        on("d4", object),
        on("d5", none),
    ];
    world.publisher().publish_all_confirmed(messages, 1);
    let mut bridge = Bridge::start(&config);
    let count = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, db, &count, 6);
    let letters = wait_dead_letters(&mut bridge, &config, 4);
    terminate_ok(&mut bridge);

    // Then the other elements are rows with their message's site, topic level and index
    let query = format!("SELECT id, site, device, i, v FROM {t} ORDER BY id");
    let mut want = vec![
        ["1", "p1", "d1", "0", "10"],
        ["3", "p1", "d1", "2", "30"],
        ["4", "p1", "d1", "4", "50"],
        ["5", "p2", "d2", "0", "60"],
        ["6", "p2", "d2", "1", NULL],
        ["999", "blocker", NULL, NULL, NULL],
    ];
    assert_eq!(db.query(&query), text_rows(&want));

    // And each failing element is its own letter: the element's JSON, its index, and the
    // message around the array (the route reads payload.site)
    let convert = element_letter(&letters, 1, r#"{"id":2,"v":"x"}"#);
    assert_eq!(convert["error_kind"], "convert", "{convert:#}");
    let error = convert["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("element 1: column v (from item.v)"),
        "{convert:#}"
    );
    assert_eq!(convert["headers"]["message"], json!({"site": "p1"}));
    assert_eq!(convert["source"], format!("{root}/d1/batch"));
    let rejected = element_letter(&letters, 3, r#"{"id":999,"v":40}"#);
    assert_eq!(rejected["error_kind"], "rejected", "{rejected:#}");
    let error = rejected["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("element 3: "), "{rejected:#}");
    // And a message without its array is one decode letter naming the path
    for (payload, words) in [
        (
            object,
            "rows: payload.readings is a JSON object, not a JSON array",
        ),
        (
            none,
            "rows: payload.readings: the payload has nothing at this path",
        ),
    ] {
        let letter = message_letter(&letters, payload);
        assert_eq!(letter["error_kind"], "decode", "{letter:#}");
        assert_eq!(letter["error"], words, "{letter:#}");
    }

    // When the blocking row is gone and the rejected element is replayed
    db.exec(&format!("DELETE FROM {t} WHERE id = 999"));
    replay_one(&config, rejected);

    // Then it is the row it would have been: site, topic level and index included
    want[5] = ["999", "p1", "d1", "3", "40"];
    let rows = db.query(&query);
    assert_eq!(rows, text_rows(&want));
    let left: Vec<i64> = dlq(&config, "list --json")
        .stdout
        .lines()
        .map(|l| letter_id(&serde_json::from_str(l).expect("JSON")))
        .collect();
    assert_eq!(left.len(), 3, "the others stay");
    assert!(!left.contains(&letter_id(rejected)));
}

common::cases! {
    mqtt_elements_are_rows_and_a_bad_one_replays_after_the_fix_postgres:
        mqtt_elements_are_rows_and_a_bad_one_replays_after_the_fix(&Db::Postgres);
    mqtt_elements_are_rows_and_a_bad_one_replays_after_the_fix_mariadb:
        mqtt_elements_are_rows_and_a_bad_one_replays_after_the_fix(&Db::MariaDb);
    mqtt_elements_are_rows_and_a_bad_one_replays_after_the_fix_sqlite:
        mqtt_elements_are_rows_and_a_bad_one_replays_after_the_fix(&temp_sqlite());
}

fn amqp_array_payloads_are_rows_and_a_long_value_replays_after_the_fix(db: &Db) {
    // Given a queue whose messages are JSON arrays, a route without `columns` mapping each
    // element's keys to the columns, and a short text column
    let work = Workdir::new("explode-amqp");
    let mut rabbit = Rabbit::connect();
    let queue = unique("mqdb_explode_q");
    rabbit.adopt_queue(&queue);
    let columns = "id INTEGER PRIMARY KEY, note VARCHAR(5), tags TEXT";
    let table = TempTable::create(db, "explode_amqp", columns);
    let t = &table.name;
    let route = amqp_route("arrays", &queue, t).set("rows", "payload");
    let config = work
        .bare_config()
        .broker("r", Rabbit::URL, Json::Null)
        .database("d", &db.connection_string())
        .inbound(route)
        .write();
    let mut bridge = Bridge::start(&config);
    wait_consuming(&mut bridge, &queue);

    // When two array messages arrive, one element's note too long for its column and one
    // element's tags a nested array, and a message that is an object
    let site = [("x-site", Header::Str("north".into()))];
    let first = r#"[{"id":1,"note":"ok","tags":["a",["b"]]},{"id":2,"note":"far too long"},{"id":3,"note":null}]"#;
    rabbit.publish("", &queue, first.as_bytes(), &site);
    rabbit.publish("", &queue, br#"[{"id":4,"note":"four"}]"#, &site);
    rabbit.publish("", &queue, br#"{"id":5}"#, &site);
    wait_for_count(&mut bridge, db, &format!("SELECT COUNT(*) FROM {t}"), 3);
    let letters = wait_dead_letters(&mut bridge, &config, 2);
    // Then every message is acknowledged, the one with a dead-lettered element too
    wait_queue_drained(&mut bridge, &queue);
    terminate_ok(&mut bridge);

    // And the good elements are rows, a nested array kept as JSON text
    let query = format!("SELECT id, note, tags FROM {t} ORDER BY id");
    let mut want = vec![
        ["1", "ok", r#"["a",["b"]]"#],
        ["3", NULL, NULL],
        ["4", "four", NULL],
    ];
    assert_eq!(db.query(&query), text_rows(&want));
    // And the long note is its element's letter, with the message's AMQP metadata and no
    // `message` (nothing reads the message around the array)
    let long = element_letter(&letters, 1, r#"{"id":2,"note":"far too long"}"#);
    assert_eq!(long["error_kind"], "rejected", "{long:#}");
    assert_eq!(long["source"], queue.as_str(), "{long:#}");
    assert_eq!(long["headers"]["headers"]["x-site"], "north", "{long:#}");
    assert!(long["headers"].get("message").is_none(), "{long:#}");
    let object = message_letter(&letters, r#"{"id":5}"#);
    assert_eq!(object["error_kind"], "decode", "{object:#}");
    assert_eq!(
        object["error"],
        "rows: payload is a JSON object, not a JSON array"
    );

    // When the column is widened and the element is replayed
    let widen = match db {
        Db::MariaDb => format!("ALTER TABLE {t} MODIFY note TEXT"),
        _ => format!("ALTER TABLE {t} ALTER COLUMN note TYPE TEXT"),
    };
    db.exec(&widen);
    replay_one(&config, long);

    // Then it is the row it would have been
    want.insert(1, ["2", "far too long", NULL]);
    assert_eq!(db.query(&query), text_rows(&want));
}

common::cases! {
    amqp_array_payloads_are_rows_and_a_long_value_replays_after_the_fix_postgres:
        amqp_array_payloads_are_rows_and_a_long_value_replays_after_the_fix(&Db::Postgres);
    amqp_array_payloads_are_rows_and_a_long_value_replays_after_the_fix_mariadb:
        amqp_array_payloads_are_rows_and_a_long_value_replays_after_the_fix(&Db::MariaDb);
}
