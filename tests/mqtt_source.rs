//! The MQTT source of `mqdb run` against a private Mosquitto (which never drops QoS 1
//! messages), with PostgreSQL as the sink: back-pressure with a small `max_in_flight`, QoS 0,
//! 1 and 2 routes with `+`, `#` and `{name}` filters, resubscription when the broker lost the
//! session, large payloads, TLS with client certificates, and MQTT 5 user properties.

mod common;

use std::ops::Range;
use std::path::PathBuf;

use common::{
    Bridge, Config, Db, LIVENESS, Mosquitto, NULL, Route, TempTable, World, check_route, dlq_list,
    make_ca, make_leaf, mqdb_at, pairs, pki_with_other_ca, publish_retained, seq_messages,
    settings, terminate_ok, text_rows, unique, with_mqtt5,
};
use serde_json::Value as Json;

/// Writes `file` in the world's dir: broker `b` at `url` with the world's client id and
/// `extra` settings, database `d` (PostgreSQL) and `routes`.
fn config_at(world: &World, file: &str, url: &str, extra: &[&str], routes: &[Route]) -> PathBuf {
    let (_, client) = world.mqtt(Json::Object(settings(extra)));
    let config = Config::at(world.path(file))
        .state(&world.store.url())
        .broker("b", url, client)
        .database("d", &Db::Postgres.connection_string());
    routes
        .iter()
        .fold(config, |c, r| c.inbound(r.clone()))
        .write()
}

/// `mqdb.yaml` with the world's plain listener.
fn config(world: &World, extra: &[&str], routes: &[Route]) -> PathBuf {
    config_at(world, "mqdb.yaml", &world.broker.url(), extra, routes)
}

/// The route of `{"seq":N}` messages on `ROOT/{part}` that most tests use.
fn part_route(name: &str, root: &str, table: &str) -> Route {
    let columns = [("seq", "payload.seq"), ("part", "topic.part")];
    let batch = "batch: { max_rows: 50, max_delay: 50ms }";
    let topic = format!("{root}/{{part}}");
    Route::inbound(name, &topic, table)
        .columns(&columns)
        .lines(&[batch])
}

/// `SELECT expr FROM t WHERE cond` as an integer.
fn int(t: &str, expr: &str, cond: &str) -> i64 {
    let sql = format!("SELECT {expr} FROM {t} WHERE {cond}");
    common::scalar(&Db::Postgres, &sql)
}

fn rows(sql: &str) -> Vec<Vec<Option<String>>> {
    Db::Postgres.query(sql)
}

fn wait_for_count(bridge: &mut Bridge, count_sql: &str, want: i64) {
    common::wait_for_count(bridge, &Db::Postgres, count_sql, want);
}

/// Asserts `got == want`, reporting the row counts and the first differing row instead of
/// both whole lists.
fn assert_rows<T: std::fmt::Debug + PartialEq>(what: &str, got: &[T], want: &[T]) {
    if got == want {
        return;
    }
    let i = got.iter().zip(want).position(|(g, w)| g != w);
    let i = i.unwrap_or(got.len().min(want.len()));
    let (n, m, g, w) = (got.len(), want.len(), got.get(i), want.get(i));
    panic!(
        "{what}: {n} rows, {m} expected; first difference at row {i}:\n  got:  {g:?}\n  want: {w:?}"
    );
}

/// The bridge log without ANSI colour codes (the text format colours even when stderr is a
/// file).
fn plain_log(bridge: &Bridge) -> String {
    let raw = bridge.log();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
        } else if chars.next() == Some('[') {
            // CSI: ESC [ parameters… final byte in @..~
            chars.by_ref().find(|c| ('@'..='~').contains(c));
        }
    }
    out
}

/// 1500 messages queued by the broker before the bridge starts (mosquitto pushes up to 1000
/// unacknowledged ones at once, far beyond `max_in_flight`), then 1500 more published while
/// it runs: every one becomes exactly one row, nothing is dead-lettered, and the connection
/// is never dropped to get out of a stall.
fn back_pressure_delivers_everything(max_in_flight: usize) {
    // Given a bridge whose broker allows only `max_in_flight` unacknowledged messages, and
    // batches of 7 rows, and a table without a key (a redelivery would be a second row)
    let world = World::new("mqtt-source");
    let columns = "seq INTEGER NOT NULL, part VARCHAR(10) NOT NULL";
    let table = TempTable::create(&Db::Postgres, "bp", columns);
    let t = table.name.clone();
    let root = unique("bp");
    let batch = "batch: { max_rows: 7, max_delay: 50ms }";
    let route = part_route("bp", &root, &t).lines(&[batch]);
    let max_in_flight = format!("max_in_flight: {max_in_flight}");
    let config = config(&world, &[&max_in_flight], &[route]);
    world.persistent_session(&format!("{root}/+"));
    let publisher = world.publisher();
    publisher.publish_all_confirmed(seq_messages(|_| format!("{root}/queued"), 0..1500), 1);

    // When the bridge starts on that backlog and 1500 more arrive while it runs
    let mut bridge = Bridge::start(&config);
    publisher.publish_all_confirmed(seq_messages(|_| format!("{root}/live"), 1500..3000), 1);

    // Then every message is exactly one row
    wait_for_count(&mut bridge, &format!("SELECT COUNT(*) FROM {t}"), 3000);
    assert_eq!(int(&t, "COUNT(DISTINCT seq)", "TRUE"), 3000);
    assert_eq!(int(&t, "MIN(seq) + MAX(seq)", "TRUE"), 2999);
    let cond = "(part = 'queued' AND seq < 1500) OR (part = 'live' AND seq >= 1500)";
    assert_eq!(int(&t, "COUNT(*)", cond), 3000);
    // And nothing was dead-lettered, and the broker connection never had to be re-made
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
    let log = plain_log(&bridge);
    let connects = log.matches("broker connected").count();
    assert_eq!(connects, 1, "the bridge reconnected; log:\n{log}");
    let lost = log.contains("broker connection lost");
    assert!(!lost, "the bridge lost its connection; log:\n{log}");
}

common::cases! {
    back_pressure_max_in_flight_20_delivers_every_message: back_pressure_delivers_everything(20);
    back_pressure_max_in_flight_1_delivers_every_message: back_pressure_delivers_everything(1);
}

/// Messages of the QoS test: the route (index) they match, the QoS they are published at,
/// their seqs, and the topic under the root for a seq.
type Group = (usize, u8, Range<i64>, fn(i64) -> String);

#[test]
fn qos_0_1_2_routes_with_wildcards_and_captures() {
    // Given three routes on one broker, route `rN` at QoS N, each with its own table:
    // QoS 0: a capture, then `+` read by index (level 3), then a literal; QoS 1: a capture,
    // then `#` (which also matches its parent level), the first level under `#` by index;
    // QoS 2: `+` by index, then a capture
    let world = World::new("mqtt-source");
    let root = unique("qos");
    let specs = [
        ("q0/{site}/+/temp", "topic.site", "topic.3"),
        ("q1/{line}/#", "topic.line", "topic.3"),
        ("q2/+/{device}", "topic.2", "topic.device"),
    ];
    let columns = "seq INTEGER NOT NULL, a VARCHAR(60), b VARCHAR(60), qos INTEGER NOT NULL, \
                   topic VARCHAR(200) NOT NULL";
    let tables: Vec<TempTable> = (0..3)
        .map(|n| TempTable::create(&Db::Postgres, &format!("q{n}"), columns))
        .collect();
    let routes: Vec<Route> = (0..3)
        .map(|n| {
            let (filter, a, b) = specs[n];
            let sources = pairs("seq=payload.seq qos=meta.qos topic=meta.topic");
            let batch = "batch: { max_rows: 50, max_delay: 50ms }";
            let topic = format!("{root}/{filter}");
            let route = Route::inbound(&format!("r{n}"), &topic, &tables[n].name).set("qos", n);
            route
                .columns(&[&sources[..], &[("a", a), ("b", b)]].concat())
                .lines(&[batch])
        })
        .collect();
    let config = config(&world, &[], &routes);

    // And a bridge that subscribed by itself: a retained probe on route r1 proves its
    // subscriptions (one SUBSCRIBE for all three) are in place before anything QoS 0 is sent
    let port = world.broker.port;
    publish_retained(port, &format!("{root}/q1/probe/ready"), 1, r#"{"seq":-1}"#);
    let mut bridge = Bridge::start(&config);
    let probe = format!("SELECT COUNT(*) FROM {} WHERE seq = -1", tables[1].name);
    wait_for_count(&mut bridge, &probe, 1);

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
    let strays = seq_messages(|seq| strays[seq as usize - 9000].clone(), 9000..9008);
    publisher.publish_all_confirmed(strays, 1);
    // …then 100 per route at the route's QoS, and 10 for r0 and r1 at QoS 2, which the broker
    // must downgrade to the route's
    let groups: [Group; 5] = [
        (0, 0, 0..100, |i| format!("q0/site{}/dev{i}/temp", i % 3)),
        (1, 1, 100..200, |i| match i % 3 {
            0 => format!("q1/line{}/m{i}", i % 4),
            1 => format!("q1/line{}/m{i}/x/y", i % 4),
            _ => format!("q1/line{}", i % 4),
        }),
        (2, 2, 200..300, |i| format!("q2/area{}/dev{i}", i % 2)),
        (0, 2, 300..310, |i| format!("q0/siteD/dev{i}/temp")),
        (1, 2, 310..320, |i| format!("q1/lineD/m{i}")),
    ];
    for (_, qos, seqs, at) in &groups {
        let messages = seq_messages(|i| format!("{root}/{}", at(i)), seqs.clone());
        publisher.publish_all_confirmed(messages, *qos);
    }

    // Then every matching message is one row in its route's table, the captured levels (the
    // two under the route's first) are right, and each arrived at its route's QoS
    // (Rows as text: seq, a, b, qos, topic.)
    for (n, t) in tables.iter().enumerate() {
        let want: Vec<Vec<Option<String>>> = groups
            .iter()
            .filter(|g| g.0 == n)
            .flat_map(|(_, _, seqs, at)| seqs.clone().map(move |i| (i, at(i))))
            .map(|(i, topic)| {
                let level = |l: usize| topic.split('/').nth(l).map(str::to_owned);
                let (seq, qos, topic) = (i.to_string(), n.to_string(), format!("{root}/{topic}"));
                vec![Some(seq), level(1), level(2), Some(qos), Some(topic)]
            })
            .collect();
        let probes = if n == 1 { 1 } else { 0 };
        let count_sql = format!("SELECT COUNT(*) FROM {}", t.name);
        wait_for_count(&mut bridge, &count_sql, want.len() as i64 + probes);
        let select = "SELECT seq, a, b, qos, topic FROM";
        let got = rows(&format!("{select} {} WHERE seq >= 0 ORDER BY seq", t.name));
        assert_rows(&format!("route r{n}"), &got, &want);
    }
    // And no message that matched no route was stored anywhere. They were published (and
    // confirmed) before every matching message on the same connection, so the broker would
    // have delivered them first, and each route commits in receive order.
    for t in &tables {
        let strays = int(&t.name, "COUNT(*)", "seq >= 9000");
        assert_eq!(strays, 0, "a stray message landed in {}", t.name);
    }
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn resubscribes_when_the_broker_lost_the_session() {
    // Given a bridge that subscribed by itself and is receiving
    let mut world = World::new("mqtt-source");
    let columns = "seq INTEGER NOT NULL, part VARCHAR(20) NOT NULL";
    let table = TempTable::create(&Db::Postgres, "resub", columns);
    let t = table.name.clone();
    let root = unique("resub");
    let config = config(&world, &[], &[part_route("resub", &root, &t)]);
    let probe = |world: &World, n: i64| {
        let topic = format!("{root}/probe{n}");
        publish_retained(world.broker.port, &topic, 1, &format!(r#"{{"seq":-{n}}}"#));
    };
    probe(&world, 1);
    let mut bridge = Bridge::start(&config);
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, &count_sql, 1);
    let before = seq_messages(|_| format!("{root}/before"), 0..200);
    world.publisher().publish_all_confirmed(before, 1);
    wait_for_count(&mut bridge, &count_sql, 201);
    let log_before_restart = plain_log(&bridge).len();

    // When the broker restarts with its persistence wiped: the session, its subscription and
    // the retained probe are gone
    world.broker.restart_clean();

    // Then the bridge reconnects by itself, finds no session and subscribes again: a
    // retained probe published on the new broker reaches it once the subscription is back
    probe(&world, 2);
    wait_for_count(&mut bridge, &count_sql, 202);
    // And messages published after the restart land as rows, each exactly once
    let after = seq_messages(|_| format!("{root}/after"), 1000..1500);
    world.publisher().publish_all_confirmed(after, 1);
    wait_for_count(&mut bridge, &count_sql, 702);
    let after = int(&t, "COUNT(DISTINCT seq)", "part = 'after' AND seq >= 1000");
    assert_eq!(after, 500);
    assert_eq!(int(&t, "COUNT(*)", "part = 'before'"), 200);
    let probes = format!("SELECT part FROM {t} WHERE seq < 0 ORDER BY seq DESC");
    assert_eq!(rows(&probes), text_rows(&[["probe1"], ["probe2"]]));
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);

    // And the log tells the story: connected, connection lost, connected again without a
    // session
    let log = plain_log(&bridge);
    let (before, after) = log.split_at(log_before_restart);
    let find = |text: &str, what: &str| {
        let at = text.find(what);
        at.unwrap_or_else(|| panic!("no {what:?} where expected; log:\n{log}"))
    };
    find(before, "broker connected");
    let lost = find(after, "broker connection lost");
    let reconnected = lost + find(&after[lost..], "broker connected");
    let line = after[reconnected..].lines().next().unwrap_or("");
    let lost_session = line.contains("session_present=false");
    assert!(lost_session, "no lost session reported: {line}");
}

/// A deterministic string of exactly `bytes` UTF-8 bytes mixing ASCII, characters JSON must
/// escape, and 2-, 3- and 4-byte characters.
fn big_text(bytes: usize, salt: u64) -> String {
    const PIECES: &[&str] = &[
        "a", "b", "Z", "0", "9", " ", "\"", "\\", "/", "\n", "\t", "é", "ß", "€", "漢", "𝄞", "{",
        "}", ",", ":",
    ];
    let mut s = String::with_capacity(bytes);
    let step = |x: u64| {
        x.wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
    };
    let mut x = step(salt);
    while s.len() < bytes {
        x = step(x);
        let piece = PIECES[((x >> 33) % PIECES.len() as u64) as usize];
        let fits = s.len() + piece.len() <= bytes;
        s.push_str(if fits { piece } else { "." });
    }
    s
}

#[test]
fn large_payloads_land_intact() {
    // Given a route into a PostgreSQL text column, and the bridge's persistent session
    let world = World::new("mqtt-source");
    let columns = "seq INTEGER PRIMARY KEY, v TEXT NOT NULL";
    let table = TempTable::create(&Db::Postgres, "big", columns);
    let t = table.name.clone();
    let topic = format!("{}/big", unique("big"));
    let sources = [("seq", "payload.seq"), ("v", "payload.v")];
    let route = Route::inbound("big", &topic, &t).columns(&sources);
    let config = config(&world, &[], &[route]);
    world.persistent_session(&topic);

    // When a 1 MiB and a 5 MiB string value arrive (each payload slightly larger, escaped),
    // plus a small message after them
    let (one, five) = (big_text(1 << 20, 1), big_text(5 << 20, 5));
    let payload = |seq: i64, v: &str| serde_json::json!({ "seq": seq, "v": v }).to_string();
    let (p1, p5) = (payload(1, &one), payload(5, &five));
    assert!(p1.len() > 1 << 20 && p5.len() > 5 << 20);
    let messages = [p1, p5, payload(6, "small")];
    let messages = messages.map(|p| (topic.clone(), p.into_bytes()));
    world.publisher().publish_all_confirmed(messages.into(), 1);
    let mut bridge = Bridge::start(&config);

    // Then each value is stored byte for byte
    wait_for_count(&mut bridge, &format!("SELECT COUNT(*) FROM {t}"), 3);
    for (seq, want) in [(1, &one), (5, &five)] {
        let got = rows(&format!(
            "SELECT octet_length(v), left(v, 100), right(v, 100), v FROM {t} WHERE seq = {seq}"
        ));
        let row = &got[0];
        let len = want.len().to_string();
        let octets = row[0].as_deref().map(str::trim);
        assert_eq!(octets, Some(len.as_str()), "octet_length of seq {seq}");
        let prefix: String = want.chars().take(100).collect();
        let suffix: String = want.chars().skip(want.chars().count() - 100).collect();
        assert_eq!(row[1].as_deref(), Some(prefix.as_str()), "prefix of {seq}");
        assert_eq!(row[2].as_deref(), Some(suffix.as_str()), "suffix of {seq}");
        let text = row[3].as_deref().expect("v");
        if text != want.as_str() {
            let at = text.bytes().zip(want.bytes()).position(|(a, b)| a != b);
            let at = at.unwrap_or(text.len().min(want.len()));
            let (n, m) = (text.len(), want.len());
            panic!("seq {seq}: stored value differs from byte {at} on ({n} vs {m} bytes)");
        }
    }
    let small = rows(&format!("SELECT v FROM {t} WHERE seq = 6"));
    assert_eq!(small, text_rows(&[["small"]]));
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    terminate_ok(&mut bridge);
}

#[test]
fn tls_with_client_certificates_run_and_check() {
    // Given a CA, a server certificate for localhost and 127.0.0.1, a client certificate,
    // an unrelated second CA, and a private mosquitto with a second listener that requires a
    // client certificate
    let pki = pki_with_other_ca();
    let p = pki.path();
    let file = |name: &str| p.join(name).display().to_string();
    let (broker, tls_port) = Mosquitto::start_tls(p);
    let world = World::with_broker("mqtt-source", broker);
    let columns = "seq INTEGER NOT NULL, part VARCHAR(20) NOT NULL";
    let table = TempTable::create(&Db::Postgres, "tls", columns);
    let t = table.name.clone();
    let root = unique("tls");
    let routes = [part_route("tls", &root, &t)];
    // A config reaching `host` over TLS with CA file `ca`, and the client certificate if
    // `client_cert`
    let config = |file_name: &str, host: &str, ca: &str, client_cert: bool| {
        let (cert, key) = (file("client.pem"), file("client.key"));
        let cert = format!(", cert_file: \"{cert}\", key_file: \"{key}\"");
        let cert = if client_cert { cert.as_str() } else { "" };
        let tls = format!("tls: {{ ca_file: \"{}\"{cert} }}", file(ca));
        let url = format!("mqtts://{host}:{tls_port}");
        config_at(&world, file_name, &url, &[&tls], &routes)
    };
    let good = config("mqdb.yaml", "localhost", "ca.pem", true);

    // When messages are queued over the plain listener for the bridge's session, and the
    // bridge connects over TLS, and more arrive while it runs
    world.persistent_session(&format!("{root}/+"));
    let publisher = world.publisher();
    publisher.publish_all_confirmed(seq_messages(|_| format!("{root}/queued"), 0..300), 1);
    let mut bridge = Bridge::start(&good);
    bridge.wait_for_log("broker connected", LIVENESS);
    publisher.publish_all_confirmed(seq_messages(|_| format!("{root}/live"), 300..600), 1);

    // Then every message is one row
    wait_for_count(&mut bridge, &format!("SELECT COUNT(*) FROM {t}"), 600);
    assert_eq!(int(&t, "COUNT(DISTINCT seq)", "TRUE"), 600);
    assert_eq!(int(&t, "COUNT(*)", "part = 'live'"), 300);
    assert_eq!(dlq_list(&good), Vec::<Json>::new());
    terminate_ok(&mut bridge);
    let log = plain_log(&bridge);
    let over_tls = log.contains(&format!("endpoint=localhost:{tls_port}"));
    assert!(over_tls, "not over the TLS listener; log:\n{log}");

    // And `check` with the same config passes, also by IP address (the IP SAN)
    check_route(&good, 0, "tls", "ok");
    let by_ip = config("by_ip.yaml", "127.0.0.1", "ca.pem", true);
    check_route(&by_ip, 0, "tls", "ok");

    // And `check` with an unrelated CA fails, naming the broker, and so does one without a
    // client certificate, which the broker refuses
    let wrong_ca = config("wrong_ca.yaml", "localhost", "other_ca.pem", true);
    let no_cert = config("no_cert.yaml", "localhost", "ca.pem", false);
    for config in [wrong_ca, no_cert] {
        let [fail, _, show] = check_route(&config, 1, "tls", "FAIL");
        let named = fail.contains("broker b") && fail.contains("certificate");
        assert!(named, "not naming broker b and the certificate:\n{show}");
    }
}

#[test]
fn tls_server_name_verifies_another_name_than_the_dialled_one_and_alpn_is_offered() {
    // Given a CA, a broker certificate that names only broker.internal (no IP, no
    // localhost), a client certificate, and a private mosquitto with a TLS listener
    let dir = common::temp_dir("pki-named");
    let p = dir.path();
    make_ca(p, "ca");
    let named = "subjectAltName = DNS:broker.internal\nextendedKeyUsage = serverAuth";
    make_leaf(p, "ca", "server", "broker.internal", named, 1001);
    make_leaf(
        p,
        "ca",
        "client",
        "mqdb-client",
        "extendedKeyUsage = clientAuth",
        1002,
    );
    let file = |name: &str| p.join(name).display().to_string();
    let (broker, tls_port) = Mosquitto::start_tls(p);
    let world = World::with_broker("mqtt-source", broker);
    let columns = "seq INTEGER NOT NULL, part VARCHAR(20) NOT NULL";
    let table = TempTable::create(&Db::Postgres, "named", columns);
    let t = table.name.clone();
    let root = unique("named");
    let routes = [part_route("named", &root, &t)];
    let config = |file_name: &str, port: u16, extra: &str| {
        let tls = format!(
            "tls: {{ ca_file: \"{}\", cert_file: \"{}\", key_file: \"{}\"{extra} }}",
            file("ca.pem"),
            file("client.pem"),
            file("client.key")
        );
        let url = format!("mqtts://127.0.0.1:{port}");
        config_at(
            &world,
            file_name,
            &url,
            &[&tls, "connect_timeout: 5s"],
            &routes,
        )
    };

    // When mqdb dials the IP address without tls.server_name, then `check` fails at the TLS
    // hop, because the certificate does not name 127.0.0.1
    let unnamed = config("unnamed.yaml", tls_port, "");
    let [fail, _, show] = check_route(&unnamed, 1, "named", "FAIL");
    let at_tls = fail.contains("tls handshake") && fail.contains("certificate");
    assert!(
        at_tls,
        "not naming the TLS handshake and the certificate:\n{show}"
    );

    // And with tls.server_name: broker.internal, `check` passes and messages become rows
    let good = config("named.yaml", tls_port, ", server_name: broker.internal");
    check_route(&good, 0, "named", "ok");
    let mut bridge = Bridge::start(&good);
    bridge.wait_for_log("broker connected", LIVENESS);
    let publisher = world.publisher();
    publisher.publish_all_confirmed(seq_messages(|_| format!("{root}/live"), 0..50), 1);
    wait_for_count(&mut bridge, &format!("SELECT COUNT(*) FROM {t}"), 50);
    terminate_ok(&mut bridge);

    // And a TLS server that logs what the client offers sees ALPN `mqtt` from
    // tls.alpn: [mqtt] (openssl s_server speaks no MQTT, so `check` fails after the
    // handshake, at the broker's answer)
    let alpn_port = common::free_port();
    let out = p.join("s_server.out");
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{alpn_port}")])
        .args(["-cert", &file("server.pem"), "-key", &file("server.key")])
        .args(["-alpn", "mqtt"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&out).expect("create the s_server output"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn openssl s_server");
    common::wait_until("openssl s_server to listen", LIVENESS, || {
        std::net::TcpStream::connect(("127.0.0.1", alpn_port)).is_ok()
    });
    let alpn = config(
        "alpn.yaml",
        alpn_port,
        ", server_name: broker.internal, alpn: [mqtt]",
    );
    let [fail, _, show] = check_route(&alpn, 1, "named", "FAIL");
    let _ = server.kill();
    let _ = server.wait();
    let offered = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        offered.contains("ALPN protocols advertised by the client: mqtt"),
        "s_server did not see ALPN mqtt:\n{offered}\n{show}"
    );
    assert!(
        !fail.contains("tls handshake"),
        "the handshake itself failed:\n{show}"
    );
}

fn publish_with_properties(port: u16, topic: &str, payload: &str, properties: &[(&str, &str)]) {
    use rumqttc::v5::mqttbytes::{QoS, v5::PublishProperties};
    let owned = |(k, v): &(&str, &str)| (k.to_string(), v.to_string());
    let props = PublishProperties {
        user_properties: properties.iter().map(owned).collect(),
        ..Default::default()
    };
    with_mqtt5(port, &unique("mqdb_pub5"), true, 1, |client| {
        let payload = payload.as_bytes().to_vec();
        client
            .try_publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
            .expect("queue the MQTT 5 publish");
    });
}

#[test]
fn mqtt5_user_properties_map_to_columns_and_the_session_outlives_the_bridge() {
    let world = World::new("mqtt-source");
    let columns = "id INTEGER PRIMARY KEY, site TEXT, line INTEGER, qos INTEGER";
    let table = TempTable::create(&Db::Postgres, "mqdb_m5", columns);
    let topic = format!("{}/m5", unique("plant"));
    let port = world.broker.port;
    // The bridge's own session, made persistent beforehand (MQTT 5 needs an expiry).
    with_mqtt5(port, &world.client_id, false, 1, |client| {
        let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
        client
            .try_subscribe(topic.as_str(), qos)
            .expect("queue the subscribe");
    });
    let properties = [("site", "north"), ("line", "7")];
    publish_with_properties(port, &topic, r#"{"id": 1}"#, &properties);
    publish_with_properties(port, &topic, r#"{"id": 2}"#, &[]);
    let sources = pairs("id=payload.id site=header.site line=header.LINE qos=meta.qos");
    let route = Route::inbound("m5", &topic, &table.name).columns(&sources);
    let config = config(&world, &["mqtt_version: 5"], &[route]);
    let mut bridge = Bridge::start(&config);
    let count = format!("SELECT COUNT(*) FROM {}", table.name);
    wait_for_count(&mut bridge, &count, 2);
    terminate_ok(&mut bridge);

    // Published while the bridge is away: only a session that survived its disconnect
    // (a session expiry set by the bridge) keeps this message for it.
    publish_with_properties(port, &topic, r#"{"id": 3}"#, &[("site", "south")]);
    let mut bridge = Bridge::start(&config);
    wait_for_count(&mut bridge, &count, 3);
    terminate_ok(&mut bridge);

    let got = rows(&format!(
        "SELECT id, site, line, qos FROM {} ORDER BY id",
        table.name
    ));
    let want = text_rows(&[
        ["1", "north", "7", "1"],
        ["2", NULL, NULL, "1"],
        ["3", "south", NULL, "1"],
    ]);
    assert_rows("rows with user properties", &got, &want);
    assert!(dlq_list(&config).is_empty(), "no dead letters expected");
}

#[test]
fn header_sources_on_mqtt_need_mqtt_version_5() {
    let world = World::new("mqtt-source");
    let route = Route::inbound("h", "a/b", "t").columns(&[("site", "header.site")]);
    let config = config(&world, &[], &[route]);
    // The error names the file and line.
    let out = mqdb_at(&config, &["check"]);
    out.code(2).stderr_has(&["mqtt_version: 5", "mqdb.yaml:"]);
}
