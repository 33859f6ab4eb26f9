//! The MQTT source of `mqdb run` against a real Mosquitto, with PostgreSQL as the sink
//! (SPEC §3 `brokers:`, §4 guarantees): back-pressure with a small `max_in_flight`, QoS 0,
//! 1 and 2 routes with `+`, `#` and `{name}` filters, resubscription when the broker lost
//! the session, payloads far beyond rumqttc's default packet limit, and TLS with client
//! certificates (`run` and `check`).
//!
//! Every test has its own private Mosquitto (which never drops QoS 1 messages), its own temp
//! dir (config, state store, bridge log), unique table, topic and client-id names, and drops
//! its tables when it ends. Waits are liveness deadlines, never speed assertions.

mod common;

use std::path::{Path, PathBuf};

use common::{
    Bridge, Config, Db, LIVENESS, Mosquitto, Route, TempTable, World, dlq_list, make_ca, make_pki,
    path_str, publish_retained, run_mqdb, settings, unique, wait_for, with_mqtt5,
};
use serde_json::Value as Json;

type Messages = Vec<(String, Vec<u8>)>;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Writes `mqdb.yaml` with broker `b` at the world's plain listener plus `broker_extra`
/// settings (e.g. `max_in_flight: 20`), database `d` (PostgreSQL) and the given inbound
/// `routes` (from [`route`]).
fn config(world: &World, broker_extra: &[&str], routes: &[Route]) -> PathBuf {
    write_config(
        world,
        "mqdb.yaml",
        &world.broker.url(),
        broker_extra,
        routes,
    )
}

/// Writes `file` in the world's dir: broker `b` at `url` with the world's client id and
/// `broker_extra` settings, database `d` (PostgreSQL) and `routes`. Every config of one
/// world shares the state store.
fn write_config(
    world: &World,
    file: &str,
    url: &str,
    broker_extra: &[&str],
    routes: &[Route],
) -> PathBuf {
    let (_, client) = world.mqtt(Json::Object(settings(broker_extra)));
    let config = Config::at(world.path(file))
        .state(&world.store.url())
        .broker("b", url, client)
        .database("d", &Db::Postgres.connection_string());
    routes
        .iter()
        .fold(config, |config, route| config.inbound(route.clone()))
        .write()
}

/// One `inbound:` list item with broker `b`, database `d` and JSON, plus `extra` settings
/// (e.g. `batch: …`) written as `key: value` lines.
fn route(
    name: &str,
    topic: &str,
    qos: u8,
    table: &str,
    columns: &[(&str, &str)],
    extra: &[&str],
) -> Route {
    Route::inbound(name, topic, table)
        .set("qos", qos)
        .columns(columns)
        .lines(extra)
}

/// The single integer `sql` returns, or `None` while the database cannot answer.
fn try_scalar(sql: &str) -> Option<i64> {
    let rows = Db::Postgres.try_query(sql).ok()?;
    rows.first()?.first()?.as_deref()?.trim().parse().ok()
}

fn scalar(sql: &str) -> i64 {
    try_scalar(sql).unwrap_or_else(|| panic!("{sql}: no integer"))
}

/// Every row of `sql` with NULL as `None`.
fn rows(sql: &str) -> Vec<Vec<Option<String>>> {
    Db::Postgres.query(sql)
}

/// Asserts `got == want`, reporting the row counts and the first differing row instead of
/// both whole lists.
fn assert_rows<T: std::fmt::Debug + PartialEq>(what: &str, got: &[T], want: &[T]) {
    if got == want {
        return;
    }
    let i = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: {} rows, {} expected; first difference at row {i}:\n  got:  {:?}\n  want: {:?}",
        got.len(),
        want.len(),
        got.get(i),
        want.get(i)
    );
}

/// Waits until `count_sql` returns exactly `want`; a larger value fails at once (it can only
/// mean duplicate or misrouted rows).
fn wait_for_count(bridge: &mut Bridge, count_sql: &str, want: i64) {
    wait_for(
        bridge,
        &format!("`{count_sql}` = {want}"),
        || match try_scalar(count_sql) {
            Some(n) if n > want => Err(format!("{n} rows, more than the {want} expected")),
            Some(n) => Ok(n == want),
            None => Ok(false),
        },
    );
}

/// The bridge log without ANSI colour codes (the text format colours even when stderr is a
/// file).
fn plain_log(bridge: &Bridge) -> String {
    let raw = bridge.log();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Stops the bridge with SIGTERM and asserts it exits with status 0.
fn terminate_ok(bridge: &mut Bridge) {
    let status = bridge.terminate();
    assert!(
        status.success(),
        "mqdb exited with {status} on SIGTERM; log:\n{}",
        bridge.log()
    );
}

/// `{"seq":N}` on `topic` for each `seq`.
fn seq_messages(topic: impl Fn(i64) -> String, seqs: std::ops::Range<i64>) -> Messages {
    seqs.map(|seq| (topic(seq), format!(r#"{{"seq":{seq}}}"#).into_bytes()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Back-pressure: more messages than max_in_flight
// ---------------------------------------------------------------------------------------

/// 1500 messages queued by the broker before the bridge starts (mosquitto pushes up to 1000
/// unacknowledged ones at once, far beyond `max_in_flight`), then 1500 more published while
/// it runs: every one becomes exactly one row, nothing is dead-lettered, and the connection
/// is never dropped to get out of a stall.
fn back_pressure_delivers_everything(max_in_flight: usize) {
    // Given a bridge whose broker allows only `max_in_flight` unacknowledged messages, and
    // batches of 7 rows, and a table without a key (a redelivery would be a second row)
    let world = World::new("mqtt-source");
    let table = TempTable::create(
        &Db::Postgres,
        "bp",
        "seq INTEGER NOT NULL, part VARCHAR(10) NOT NULL",
    );
    let t = table.name.clone();
    let root = unique("bp");
    let config = config(
        &world,
        &[&format!("max_in_flight: {max_in_flight}")],
        &[route(
            "bp",
            &format!("{root}/{{part}}"),
            1,
            &t,
            &[("seq", "payload.seq"), ("part", "topic.part")],
            &["batch: { max_rows: 7, max_delay: 50ms }"],
        )],
    );
    world.persistent_session(&format!("{root}/+"));
    let publisher = world.publisher();
    publisher.publish_all_confirmed(seq_messages(|_| format!("{root}/queued"), 0..1500), 1);

    // When the bridge starts on that backlog and 1500 more arrive while it runs
    let mut bridge = Bridge::start(&config);
    publisher.publish_all_confirmed(seq_messages(|_| format!("{root}/live"), 1500..3000), 1);

    // Then every message is exactly one row
    wait_for_count(&mut bridge, &format!("SELECT COUNT(*) FROM {t}"), 3000);
    assert_eq!(
        scalar(&format!("SELECT COUNT(DISTINCT seq) FROM {t}")),
        3000
    );
    assert_eq!(
        scalar(&format!("SELECT MIN(seq) + MAX(seq) FROM {t}")),
        2999
    );
    assert_eq!(
        scalar(&format!(
            "SELECT COUNT(*) FROM {t} WHERE (part = 'queued' AND seq < 1500) \
             OR (part = 'live' AND seq >= 1500)"
        )),
        3000
    );
    // And nothing was dead-lettered, and the broker connection never had to be re-made
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
    let log = plain_log(&bridge);
    assert_eq!(
        log.matches("broker connected").count(),
        1,
        "the bridge reconnected during the run; log:\n{log}"
    );
    assert!(
        !log.contains("broker connection lost"),
        "the bridge lost its connection; log:\n{log}"
    );
}

#[test]
fn back_pressure_max_in_flight_20_delivers_every_message() {
    back_pressure_delivers_everything(20);
}

#[test]
fn back_pressure_max_in_flight_1_delivers_every_message() {
    back_pressure_delivers_everything(1);
}

// ---------------------------------------------------------------------------------------
// 2. QoS 0, 1 and 2 routes with wildcard filters
// ---------------------------------------------------------------------------------------

/// `(seq, a, b, qos, topic)` as stored by the routes of the QoS test.
type RouteRow = (i64, Option<String>, Option<String>, i64, String);

#[test]
fn qos_0_1_2_routes_with_wildcards_and_captures() {
    // Given three routes on one broker, one per QoS, each with its own table
    let world = World::new("mqtt-source");
    let columns = "seq INTEGER NOT NULL, a VARCHAR(60), b VARCHAR(60), qos INTEGER NOT NULL, \
                   topic VARCHAR(200) NOT NULL";
    let t0 = TempTable::create(&Db::Postgres, "q0", columns);
    let t1 = TempTable::create(&Db::Postgres, "q1", columns);
    let t2 = TempTable::create(&Db::Postgres, "q2", columns);
    let root = unique("qos");
    let meta = [
        ("seq", "payload.seq"),
        ("qos", "meta.qos"),
        ("topic", "meta.topic"),
    ];
    let with = |a: &'static str, b: &'static str| {
        let mut c = meta.to_vec();
        c.push(("a", a));
        c.push(("b", b));
        c
    };
    let batch = "batch: { max_rows: 50, max_delay: 50ms }";
    // QoS 0: a capture, then `+` read by index (level 3), then a literal
    let r0 = route(
        "r0",
        &format!("{root}/q0/{{site}}/+/temp"),
        0,
        &t0.name,
        &with("topic.site", "topic.3"),
        &[batch],
    );
    // QoS 1: a capture, then `#` (which also matches its parent level); the first level
    // under `#` by index
    let r1 = route(
        "r1",
        &format!("{root}/q1/{{line}}/#"),
        1,
        &t1.name,
        &with("topic.line", "topic.3"),
        &[batch],
    );
    // QoS 2: `+` by index, then a capture
    let r2 = route(
        "r2",
        &format!("{root}/q2/+/{{device}}"),
        2,
        &t2.name,
        &with("topic.2", "topic.device"),
        &[batch],
    );
    let config = config(&world, &[], &[r0, r1, r2]);

    // And a bridge that subscribed by itself: a retained probe on route r1 proves its
    // subscriptions (one SUBSCRIBE for all three) are in place before anything QoS 0 is sent
    publish_retained(
        world.broker.port,
        &format!("{root}/q1/probe/ready"),
        1,
        r#"{"seq":-1}"#,
    );
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "the retained probe row", || {
        Ok(
            try_scalar(&format!("SELECT COUNT(*) FROM {} WHERE seq = -1", t1.name)).unwrap_or(0)
                == 1,
        )
    });

    // When messages that match no route are published first (seq 9000+)…
    let publisher = world.publisher();
    let strays = [
        format!("{root}/q0/siteX/devX/humidity"),
        format!("{root}/q0/siteX/temp"),
        format!("{root}/q0/siteX/devX/temp/extra"),
        format!("{root}/Q1/lineX/m"),
        format!("{root}/q2/areaX"),
        format!("{root}/q2/areaX/devX/extra"),
        format!("{root}x/q1/lineX/m"),
        format!("{root}/other/x"),
    ];
    let stray_msgs: Messages = strays
        .iter()
        .enumerate()
        .map(|(i, topic)| {
            (
                topic.clone(),
                format!(r#"{{"seq":{}}}"#, 9000 + i).into_bytes(),
            )
        })
        .collect();
    publisher.publish_all_confirmed(stray_msgs, 1);
    // …then 100 per route at the route's QoS…
    publisher.publish_all_confirmed(
        seq_messages(|i| format!("{root}/q0/site{}/dev{i}/temp", i % 3), 0..100),
        0,
    );
    publisher.publish_all_confirmed(
        seq_messages(
            |i| match i % 3 {
                0 => format!("{root}/q1/line{}/m{i}", i % 4),
                1 => format!("{root}/q1/line{}/m{i}/x/y", i % 4),
                _ => format!("{root}/q1/line{}", i % 4),
            },
            100..200,
        ),
        1,
    );
    publisher.publish_all_confirmed(
        seq_messages(|i| format!("{root}/q2/area{}/dev{i}", i % 2), 200..300),
        2,
    );
    // …and 10 per route above the route's QoS, which the broker must downgrade to it
    publisher.publish_all_confirmed(
        seq_messages(|i| format!("{root}/q0/siteD/dev{i}/temp"), 300..310),
        2,
    );
    publisher.publish_all_confirmed(
        seq_messages(|i| format!("{root}/q1/lineD/m{i}"), 310..320),
        2,
    );

    // Then every matching message is one row in its route's table
    wait_for_count(
        &mut bridge,
        &format!("SELECT COUNT(*) FROM {}", t0.name),
        110,
    );
    wait_for_count(
        &mut bridge,
        &format!("SELECT COUNT(*) FROM {}", t1.name),
        111,
    );
    wait_for_count(
        &mut bridge,
        &format!("SELECT COUNT(*) FROM {}", t2.name),
        100,
    );
    let read = |t: &TempTable| -> Vec<RouteRow> {
        rows(&format!(
            "SELECT seq, a, b, qos, topic FROM {} WHERE seq >= 0 ORDER BY seq",
            t.name
        ))
        .into_iter()
        .map(|r| {
            (
                r[0].as_deref().expect("seq").parse().expect("seq number"),
                r[1].clone(),
                r[2].clone(),
                r[3].as_deref().expect("qos").parse().expect("qos number"),
                r[4].clone().expect("topic"),
            )
        })
        .collect()
    };
    // And the captured levels are right, and each arrived at its route's QoS
    let want0: Vec<_> = (0..100)
        .map(|i| {
            let site = format!("site{}", i % 3);
            let dev = format!("dev{i}");
            let topic = format!("{root}/q0/{site}/{dev}/temp");
            (i, Some(site), Some(dev), 0, topic)
        })
        .chain((300..310).map(|i| {
            let topic = format!("{root}/q0/siteD/dev{i}/temp");
            (i, Some("siteD".into()), Some(format!("dev{i}")), 0, topic)
        }))
        .collect();
    assert_rows("route r0", &read(&t0), &want0);
    let want1: Vec<_> = (100..200)
        .map(|i| {
            let line = format!("line{}", i % 4);
            match i % 3 {
                0 => (
                    i,
                    Some(line.clone()),
                    Some(format!("m{i}")),
                    1,
                    format!("{root}/q1/{line}/m{i}"),
                ),
                1 => (
                    i,
                    Some(line.clone()),
                    Some(format!("m{i}")),
                    1,
                    format!("{root}/q1/{line}/m{i}/x/y"),
                ),
                _ => (i, Some(line.clone()), None, 1, format!("{root}/q1/{line}")),
            }
        })
        .chain((310..320).map(|i| {
            let topic = format!("{root}/q1/lineD/m{i}");
            (i, Some("lineD".into()), Some(format!("m{i}")), 1, topic)
        }))
        .collect();
    assert_rows("route r1", &read(&t1), &want1);
    let want2: Vec<_> = (200..300)
        .map(|i| {
            let area = format!("area{}", i % 2);
            let dev = format!("dev{i}");
            let topic = format!("{root}/q2/{area}/{dev}");
            (i, Some(area), Some(dev), 2, topic)
        })
        .collect();
    assert_rows("route r2", &read(&t2), &want2);
    // And no message that matched no route was stored anywhere. They were published (and
    // confirmed) before every matching message on the same connection, so the broker would
    // have delivered them first, and each route commits in receive order.
    for t in [&t0, &t1, &t2] {
        assert_eq!(
            scalar(&format!(
                "SELECT COUNT(*) FROM {} WHERE seq >= 9000",
                t.name
            )),
            0,
            "a stray message landed in {}",
            t.name
        );
    }
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

// ---------------------------------------------------------------------------------------
// 3. Resubscription after the broker lost the session
// ---------------------------------------------------------------------------------------

#[test]
fn resubscribes_when_the_broker_lost_the_session() {
    // Given a bridge that subscribed by itself and is receiving
    let mut world = World::new("mqtt-source");
    let table = TempTable::create(
        &Db::Postgres,
        "resub",
        "seq INTEGER NOT NULL, part VARCHAR(20) NOT NULL",
    );
    let t = table.name.clone();
    let root = unique("resub");
    let config = config(
        &world,
        &[],
        &[route(
            "resub",
            &format!("{root}/{{part}}"),
            1,
            &t,
            &[("seq", "payload.seq"), ("part", "topic.part")],
            &["batch: { max_rows: 50, max_delay: 50ms }"],
        )],
    );
    publish_retained(
        world.broker.port,
        &format!("{root}/probe1"),
        1,
        r#"{"seq":-1}"#,
    );
    let mut bridge = Bridge::start(&config);
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, &count_sql, 1);
    world
        .publisher()
        .publish_all_confirmed(seq_messages(|_| format!("{root}/before"), 0..200), 1);
    wait_for_count(&mut bridge, &count_sql, 201);
    let log_before_restart = plain_log(&bridge).len();

    // When the broker restarts with its persistence wiped: the session, its subscription and
    // the retained probe are gone
    world.broker.restart_clean();

    // Then the bridge reconnects by itself, finds no session and subscribes again: a
    // retained probe published on the new broker reaches it once the subscription is back
    publish_retained(
        world.broker.port,
        &format!("{root}/probe2"),
        1,
        r#"{"seq":-2}"#,
    );
    wait_for_count(&mut bridge, &count_sql, 202);
    // And messages published after the restart land as rows, each exactly once
    world
        .publisher()
        .publish_all_confirmed(seq_messages(|_| format!("{root}/after"), 1000..1500), 1);
    wait_for_count(&mut bridge, &count_sql, 702);
    assert_eq!(
        scalar(&format!(
            "SELECT COUNT(DISTINCT seq) FROM {t} WHERE part = 'after' AND seq >= 1000"
        )),
        500
    );
    assert_eq!(
        scalar(&format!("SELECT COUNT(*) FROM {t} WHERE part = 'before'")),
        200
    );
    assert_eq!(
        rows(&format!(
            "SELECT part FROM {t} WHERE seq < 0 ORDER BY seq DESC"
        )),
        vec![
            vec![Some("probe1".to_string())],
            vec![Some("probe2".to_string())]
        ]
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);

    // And the log tells the story: connected, connection lost, connected again without a
    // session
    let log = plain_log(&bridge);
    let after = &log[log_before_restart..];
    let lost = after
        .find("broker connection lost")
        .unwrap_or_else(|| panic!("no \"broker connection lost\" after the restart; log:\n{log}"));
    let reconnected = after[lost..]
        .find("broker connected")
        .unwrap_or_else(|| panic!("no \"broker connected\" after the loss; log:\n{log}"));
    assert!(
        log[..log_before_restart].contains("broker connected"),
        "no first \"broker connected\"; log:\n{log}"
    );
    let line = after[lost + reconnected..].lines().next().unwrap_or("");
    assert!(
        line.contains("session_present=false"),
        "the reconnect should report a lost session: {line}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Large payloads
// ---------------------------------------------------------------------------------------

/// A deterministic string of exactly `bytes` UTF-8 bytes mixing ASCII, characters JSON must
/// escape, and 2-, 3- and 4-byte characters.
fn big_text(bytes: usize, salt: u64) -> String {
    const PIECES: &[&str] = &[
        "a", "b", "Z", "0", "9", " ", "\"", "\\", "/", "\n", "\t", "é", "ß", "€", "漢", "𝄞", "{",
        "}", ",", ":",
    ];
    let mut s = String::with_capacity(bytes);
    let mut x = salt
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    while s.len() < bytes {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let piece = PIECES[((x >> 33) % PIECES.len() as u64) as usize];
        if s.len() + piece.len() <= bytes {
            s.push_str(piece);
        } else {
            s.push('.');
        }
    }
    s
}

#[test]
fn large_payloads_land_intact() {
    // Given a route into a PostgreSQL text column, and the bridge's persistent session
    let world = World::new("mqtt-source");
    let table = TempTable::create(
        &Db::Postgres,
        "big",
        "seq INTEGER PRIMARY KEY, v TEXT NOT NULL",
    );
    let t = table.name.clone();
    let topic = format!("{}/big", unique("big"));
    let config = config(
        &world,
        &[],
        &[route(
            "big",
            &topic,
            1,
            &t,
            &[("seq", "payload.seq"), ("v", "payload.v")],
            &[],
        )],
    );
    world.persistent_session(&topic);

    // When a 1 MiB and a 5 MiB string value arrive (each payload slightly larger, escaped),
    // plus a small message after them
    let one = big_text(1 << 20, 1);
    let five = big_text(5 << 20, 5);
    let payload = |seq: i64, v: &str| serde_json::json!({ "seq": seq, "v": v }).to_string();
    let p1 = payload(1, &one);
    let p5 = payload(5, &five);
    assert!(p1.len() > 1 << 20 && p5.len() > 5 << 20);
    world.publisher().publish_all_confirmed(
        vec![
            (topic.clone(), p1.into_bytes()),
            (topic.clone(), p5.into_bytes()),
            (topic.clone(), payload(6, "small").into_bytes()),
        ],
        1,
    );
    let mut bridge = Bridge::start(&config);

    // Then each value is stored byte for byte
    wait_for_count(&mut bridge, &format!("SELECT COUNT(*) FROM {t}"), 3);
    for (seq, want) in [(1, &one), (5, &five)] {
        let got = rows(&format!(
            "SELECT octet_length(v), left(v, 100), right(v, 100), v FROM {t} WHERE seq = {seq}"
        ));
        let row = &got[0];
        let text = row[3].as_deref().expect("v");
        assert_eq!(
            row[0].as_deref().map(str::trim),
            Some(want.len().to_string().as_str()),
            "octet_length of seq {seq}"
        );
        let prefix: String = want.chars().take(100).collect();
        let suffix: String = {
            let tail: Vec<char> = want.chars().rev().take(100).collect();
            tail.into_iter().rev().collect()
        };
        assert_eq!(row[1].as_deref(), Some(prefix.as_str()), "prefix of {seq}");
        assert_eq!(row[2].as_deref(), Some(suffix.as_str()), "suffix of {seq}");
        if text != want.as_str() {
            let at = text
                .bytes()
                .zip(want.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(text.len().min(want.len()));
            panic!(
                "seq {seq}: stored value differs from byte {at} on ({} vs {} bytes)",
                text.len(),
                want.len()
            );
        }
    }
    assert_eq!(
        rows(&format!("SELECT v FROM {t} WHERE seq = 6")),
        vec![vec![Some("small".to_string())]]
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

// ---------------------------------------------------------------------------------------
// 5. TLS with client certificates
// ---------------------------------------------------------------------------------------

/// `mqdb -c CONFIG check`: (exit code, stdout, stderr).
fn check(config: &Path) -> (Option<i32>, String, String) {
    let out = run_mqdb(&["-c", path_str(config), "check"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_with_client_certificates_run_and_check() {
    // Given a CA, a server certificate for localhost and 127.0.0.1, a client certificate,
    // and an unrelated second CA
    let pki = tempfile::Builder::new()
        .prefix("mqdb-pki-")
        .tempdir()
        .expect("temp dir for certificates");
    let p = pki.path();
    make_pki(p);
    make_ca(p, "other_ca");
    let file = |name: &str| p.join(name).display().to_string();

    // And a private mosquitto with a second listener that requires a client certificate
    let (broker, tls_port) = Mosquitto::start_tls(p);
    let world = World::with_broker("mqtt-source", broker);
    let table = TempTable::create(
        &Db::Postgres,
        "tls",
        "seq INTEGER NOT NULL, part VARCHAR(20) NOT NULL",
    );
    let t = table.name.clone();
    let root = unique("tls");
    let routes = [route(
        "tls",
        &format!("{root}/{{part}}"),
        1,
        &t,
        &[("seq", "payload.seq"), ("part", "topic.part")],
        &["batch: { max_rows: 50, max_delay: 50ms }"],
    )];
    let tls = |ca: &str| {
        format!(
            "tls: {{ ca_file: \"{}\", cert_file: \"{}\", key_file: \"{}\" }}",
            file(ca),
            file("client.pem"),
            file("client.key")
        )
    };
    let good_tls = tls("ca.pem");
    let config = write_config(
        &world,
        "mqdb.yaml",
        &format!("mqtts://localhost:{tls_port}"),
        &[&good_tls],
        &routes,
    );

    // When messages are queued over the plain listener for the bridge's session, and the
    // bridge connects over TLS, and more arrive while it runs
    world.persistent_session(&format!("{root}/+"));
    let publisher = world.publisher();
    publisher.publish_all_confirmed(seq_messages(|_| format!("{root}/queued"), 0..300), 1);
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log("broker connected", LIVENESS);
    publisher.publish_all_confirmed(seq_messages(|_| format!("{root}/live"), 300..600), 1);

    // Then every message is one row
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, &count_sql, 600);
    assert_eq!(scalar(&format!("SELECT COUNT(DISTINCT seq) FROM {t}")), 600);
    assert_eq!(
        scalar(&format!("SELECT COUNT(*) FROM {t} WHERE part = 'live'")),
        300
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
    let log = plain_log(&bridge);
    assert!(
        log.contains(&format!("endpoint=localhost:{tls_port}")),
        "the bridge did not use the TLS listener; log:\n{log}"
    );

    // And `check` with the same config passes, also by IP address (the IP SAN)
    let (code, out, err) = check(&config);
    assert_eq!(code, Some(0), "check failed:\n{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("inbound tls")),
        "no ok line for route tls:\n{out}{err}"
    );
    let by_ip = write_config(
        &world,
        "by_ip.yaml",
        &format!("mqtts://127.0.0.1:{tls_port}"),
        &[&good_tls],
        &routes,
    );
    let (code, out, err) = check(&by_ip);
    assert_eq!(code, Some(0), "check by IP failed:\n{out}{err}");

    // And `check` with an unrelated CA fails, naming the broker
    let other_tls = tls("other_ca.pem");
    let wrong_ca = write_config(
        &world,
        "wrong_ca.yaml",
        &format!("mqtts://localhost:{tls_port}"),
        &[&other_tls],
        &routes,
    );
    let (code, out, err) = check(&wrong_ca);
    assert_eq!(code, Some(1), "check with a wrong CA:\n{out}{err}");
    assert!(
        out.lines().any(|l| l.starts_with("FAIL")
            && l.contains("broker b")
            && l.to_lowercase().contains("certificate")),
        "no FAIL line naming broker b and the certificate problem:\n{out}{err}"
    );

    // And without a client certificate the broker refuses the bridge
    let no_cert_tls = format!("tls: {{ ca_file: \"{}\" }}", file("ca.pem"));
    let no_cert = write_config(
        &world,
        "no_cert.yaml",
        &format!("mqtts://localhost:{tls_port}"),
        &[&no_cert_tls],
        &routes,
    );
    let (code, out, err) = check(&no_cert);
    assert_eq!(
        code,
        Some(1),
        "check without a client certificate:\n{out}{err}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("FAIL")
            && l.contains("broker b")
            && l.to_lowercase().contains("certificate")),
        "no FAIL line naming broker b and the certificate problem:\n{out}{err}"
    );
}

// ---------------------------------------------------------------------------------------
// MQTT 5: user properties as `header.NAME`, and a session that outlives the bridge
// ---------------------------------------------------------------------------------------

fn publish_with_properties(port: u16, topic: &str, payload: &str, properties: &[(&str, &str)]) {
    use rumqttc::v5::mqttbytes::{QoS, v5::PublishProperties};
    let props = PublishProperties {
        user_properties: properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    with_mqtt5(port, &unique("mqdb_pub5"), true, 1, |client| {
        client
            .try_publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
                props,
            )
            .expect("queue the MQTT 5 publish");
    });
}

#[test]
fn mqtt5_user_properties_map_to_columns_and_the_session_outlives_the_bridge() {
    let world = World::new("mqtt-source");
    let table = TempTable::create(
        &Db::Postgres,
        "mqdb_m5",
        "id INTEGER PRIMARY KEY, site TEXT, line INTEGER, qos INTEGER",
    );
    let topic = format!("{}/m5", unique("plant"));
    // The bridge's own session, made persistent beforehand (MQTT 5 needs an expiry).
    with_mqtt5(world.broker.port, &world.client_id, false, 1, |client| {
        client
            .try_subscribe(topic.as_str(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .expect("queue the subscribe");
    });
    publish_with_properties(
        world.broker.port,
        &topic,
        r#"{"id": 1}"#,
        &[("site", "north"), ("line", "7")],
    );
    publish_with_properties(world.broker.port, &topic, r#"{"id": 2}"#, &[]);
    let config = config(
        &world,
        &["mqtt_version: 5"],
        &[route(
            "m5",
            &topic,
            1,
            &table.name,
            &[
                ("id", "payload.id"),
                ("site", "header.site"),
                ("line", "header.LINE"),
                ("qos", "meta.qos"),
            ],
            &[],
        )],
    );
    let mut bridge = Bridge::start(&config);
    let count = format!("SELECT COUNT(*) FROM {}", table.name);
    wait_for_count(&mut bridge, &count, 2);
    terminate_ok(&mut bridge);

    // Published while the bridge is away: only a session that survived its disconnect
    // (a session expiry set by the bridge) keeps this message for it.
    publish_with_properties(
        world.broker.port,
        &topic,
        r#"{"id": 3}"#,
        &[("site", "south")],
    );
    let mut bridge = Bridge::start(&config);
    wait_for_count(&mut bridge, &count, 3);
    terminate_ok(&mut bridge);

    let got = rows(&format!(
        "SELECT id, site, line, qos FROM {} ORDER BY id",
        table.name
    ));
    let s = |v: &str| Some(v.to_string());
    assert_rows(
        "rows with user properties",
        &got,
        &[
            vec![s("1"), s("north"), s("7"), s("1")],
            vec![s("2"), None, None, s("1")],
            vec![s("3"), s("south"), None, s("1")],
        ],
    );
    assert!(dlq_list(&config).is_empty(), "no dead letters expected");
}

#[test]
fn header_sources_on_mqtt_need_mqtt_version_5() {
    let world = World::new("mqtt-source");
    let config = config(
        &world,
        &[],
        &[route("h", "a/b", 1, "t", &[("site", "header.site")], &[])],
    );
    let out = run_mqdb(&["-c", path_str(&config), "check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mqtt_version: 5"), "{stderr}");
    assert!(
        stderr.contains("mqdb.yaml:"),
        "the error names the file and line: {stderr}"
    );
}
