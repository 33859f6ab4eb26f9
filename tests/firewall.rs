//! Brokers behind a firewall: reached through an HTTP CONNECT proxy (a private Squid with
//! basic authentication and a port ACL) and over WebSockets (RabbitMQ's web MQTT plugin for
//! MQTT 3.1.1, a WebSocket gateway in front of Mosquitto for MQTT 5).
//!
//! The first tests check the harness itself (no mqdb involved); the rest run mqdb through
//! it, and read Squid's access log to see that the traffic went through the proxy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::{
    Access, Bridge, Config, Db, LIVENESS, Mosquitto, Rabbit, RabbitNode, Route, Squid, StateStore,
    TempTable, WS_PATH, World, WsBroker, WsGateway, amqp_route, cases, check_route, dlq_list,
    id_payloads, letter_id, make_pki, scalar, seq_messages, temp_dir, terminate_ok, unique,
    wait_dead_letters, wait_for, wait_for_count, with_mqtt5,
};
use serde_json::{Value as Json, json};

const USER: &str = "mqdb";
const PASSWORD: &str = "tunnel-pass-7";

/// An MQTT 3.1.1 CONNECT (clean session, keep alive 60 s) for `client_id`.
fn mqtt_connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    assert!(body.len() < 128, "one length byte");
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Sends an MQTT CONNECT on `stream` and returns the 4 bytes of the broker's answer.
fn connack(stream: &mut TcpStream) -> [u8; 4] {
    stream
        .write_all(&mqtt_connect(&unique("raw")))
        .expect("send CONNECT");
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).expect("read CONNACK");
    answer
}

/// The status code of a WebSocket upgrade request for `path` on `127.0.0.1:port`, offering
/// `protocol` as the subprotocol if given.
fn upgrade_status(port: u16, path: &str, protocol: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    let timeout = Some(Duration::from_secs(20));
    stream.set_read_timeout(timeout).expect("read timeout");
    let protocol = protocol.map_or(String::new(), |p| {
        format!("Sec-WebSocket-Protocol: {p}\r\n")
    });
    let key = mqdb::dlq::base64(b"0123456789abcdef");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
         {protocol}\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .expect("send the upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    code.unwrap_or_else(|| panic!("not an HTTP response: {head:?}"))
}

#[test]
fn squid_tunnels_authenticated_connects_to_allowed_ports_only() {
    // Given a private Mosquitto and a proxy that allows CONNECT to its port only
    let broker = Mosquitto::start();
    let squid = Squid::start(USER, PASSWORD, &[broker.port]);
    let (target, other) = (format!("127.0.0.1:{}", broker.port), "127.0.0.1:5432");

    // When a client tunnels to the broker with the right password, then squid answers 200
    // and the broker's CONNACK (accepted) comes through the tunnel
    let (status, mut tunnel) = squid.connect(&target, USER, PASSWORD);
    assert_eq!(status, 200, "{}", squid.cache_log());
    assert_eq!(connack(&mut tunnel), [0x20, 2, 0, 0]);
    drop(tunnel);

    // When it tries a wrong password, then 407; a port outside the ACL, then 403
    let (status, _) = squid.connect(&target, USER, "wrong");
    assert_eq!(status, 407);
    let (status, _) = squid.connect(other, USER, PASSWORD);
    assert_eq!(status, 403);

    // And the access log shows each, with the user
    squid.wait_connect(&target, "TCP_TUNNEL/200", LIVENESS);
    squid.wait_connect(&target, "TCP_DENIED/407", LIVENESS);
    squid.wait_connect(other, "TCP_DENIED/403", LIVENESS);
    let log = squid.access_log();
    assert_eq!(log.len(), 3, "{}", squid.access_log_text());
    assert!(log.iter().all(|a| a.user == USER), "{log:?}");
}

#[test]
fn rabbitmq_web_mqtt_carries_mqtt_over_ws_and_wss() {
    // Given a private node with the web MQTT plugin and the test PKI
    let pki = temp_dir("pki");
    make_pki(pki.path());
    let node = RabbitNode::start_web_mqtt(pki.path());
    let ws = WsBroker::new(&node.ws_url()).login("guest", "guest");
    let wss = WsBroker::new(&node.wss_url("127.0.0.1"))
        .login("guest", "guest")
        .ca(&pki.path().join("ca.pem"));
    let topic = format!("{}/ws", unique("web"));

    // When a client subscribed over ws and another publishes over wss
    let sub = ws.subscribe(&topic);
    let messages = seq_messages(|_| topic.clone(), 0..10);
    wss.publisher().publish_all_confirmed(messages, 1);

    // Then the subscriber receives every message, in order
    let got = sub.wait_for(10, LIVENESS);
    let seqs: Vec<String> = got.iter().map(|m| m.payload_str().to_owned()).collect();
    let want: Vec<String> = (0..10).map(|n| format!(r#"{{"seq":{n}}}"#)).collect();
    assert_eq!(seqs, want);
}

#[test]
fn ws_gateway_relays_mqtt_to_mosquitto_over_ws_and_wss() {
    // Given a private Mosquitto with a ws and a wss gateway in front of it
    let pki = temp_dir("pki");
    make_pki(pki.path());
    let broker = Mosquitto::start();
    let ws = WsGateway::start(broker.addr());
    let wss = WsGateway::start_tls(broker.addr(), pki.path());
    let topic = format!("{}/gw", unique("gateway"));

    // When a client subscribed over ws and another publishes over wss
    let sub = WsBroker::new(&ws.url()).subscribe(&topic);
    let wss_client = WsBroker::new(&wss.url()).ca(&pki.path().join("ca.pem"));
    let messages = seq_messages(|_| topic.clone(), 0..10);
    wss_client.publisher().publish_all_confirmed(messages, 1);

    // Then the subscriber receives every message, through Mosquitto
    assert_eq!(sub.wait_for(10, LIVENESS).len(), 10);
    assert!(ws.upgrades() >= 1 && wss.upgrades() >= 1);

    // And an upgrade on another path is refused (404), and one without the mqtt
    // subprotocol (400), while the right one is accepted (101)
    assert_eq!(upgrade_status(ws.port, "/nope", Some("mqtt")), 404);
    assert_eq!(upgrade_status(ws.port, WS_PATH, None), 400);
    assert_eq!(
        upgrade_status(ws.port, WS_PATH, Some("mqttv3.1, mqtt")),
        101
    );
    assert_eq!(ws.refused(), 2);
}

// mqdb through the proxy.

/// The table every inbound case fills: one row per `{"id":N,"v":"mN"}` message; `via` is
/// an MQTT 5 user property where the case sends one.
const COLUMNS: &str = "id INTEGER PRIMARY KEY, v TEXT NOT NULL, via TEXT";

/// A broker an inbound case reads through the proxy, with its own way to queue messages for
/// the bridge and to publish them.
trait Source {
    /// The broker's `url` for mqdb and its settings other than the proxy.
    fn broker(&self) -> (String, Json);
    /// The port the proxy must tunnel to.
    fn port(&self) -> u16;
    /// Makes the broker keep what is published to `topic` (or queue) for the bridge from now
    /// on, before the bridge first connects.
    fn prepare(&self, topic: &str);
    fn route(&self, topic: &str, table: &str) -> Route {
        let columns = [("id", "payload.id"), ("v", "payload.v")];
        Route::inbound("fw", topic, table).columns(&columns)
    }
    fn publish(&self, topic: &str, ids: Range<i64>);
    /// The `via` value each row must carry (MQTT 5 only).
    fn via(&self) -> Option<&str> {
        None
    }
}

/// The bridge's settings for a Mosquitto-backed source: its client id and `extra`.
fn with_client_id(world: &World, extra: Json) -> Json {
    world.mqtt(extra).1
}

fn publish_ids(world: &World, topic: &str, ids: Range<i64>) {
    let messages = id_payloads(ids).into_iter().map(|p| (topic.to_owned(), p));
    world
        .publisher()
        .publish_all_confirmed(messages.collect(), 1);
}

/// `mqtt://` to a private Mosquitto.
struct MqttTcp(World);

impl Source for MqttTcp {
    fn broker(&self) -> (String, Json) {
        (self.0.broker.url(), with_client_id(&self.0, Json::Null))
    }
    fn port(&self) -> u16 {
        self.0.broker.port
    }
    fn prepare(&self, topic: &str) {
        self.0.persistent_session(topic);
    }
    fn publish(&self, topic: &str, ids: Range<i64>) {
        publish_ids(&self.0, topic, ids);
    }
}

/// `mqtts://` to a private Mosquitto's TLS listener (client certificate required).
struct MqttTls {
    world: World,
    tls_port: u16,
    pki: tempfile::TempDir,
}

impl MqttTls {
    fn start() -> MqttTls {
        let pki = temp_dir("pki");
        make_pki(pki.path());
        let (broker, tls_port) = Mosquitto::start_tls(pki.path());
        let world = World::with_broker("fw-tls", broker);
        MqttTls {
            world,
            tls_port,
            pki,
        }
    }
}

impl Source for MqttTls {
    fn broker(&self) -> (String, Json) {
        let pem = |name: &str| self.pki.path().join(name).display().to_string();
        let (ca, cert, key) = (pem("ca.pem"), pem("client.pem"), pem("client.key"));
        let tls = json!({ "ca_file": ca, "cert_file": cert, "key_file": key });
        let url = format!("mqtts://127.0.0.1:{}", self.tls_port);
        (url, with_client_id(&self.world, json!({ "tls": tls })))
    }
    fn port(&self) -> u16 {
        self.tls_port
    }
    fn prepare(&self, topic: &str) {
        self.world.persistent_session(topic);
    }
    fn publish(&self, topic: &str, ids: Range<i64>) {
        publish_ids(&self.world, topic, ids);
    }
}

/// MQTT 3.1.1 over `ws://` or `wss://` to a private RabbitMQ node's web MQTT listeners.
struct RabbitWs {
    node: RabbitNode,
    pki: tempfile::TempDir,
    secure: bool,
    client_id: String,
}

impl RabbitWs {
    fn start(secure: bool) -> RabbitWs {
        let pki = temp_dir("pki");
        make_pki(pki.path());
        let node = RabbitNode::start_web_mqtt(pki.path());
        let client_id = unique("mqdb_fw_ws");
        RabbitWs {
            node,
            pki,
            secure,
            client_id,
        }
    }

    fn url(&self) -> String {
        match self.secure {
            true => self.node.wss_url("127.0.0.1"),
            false => self.node.ws_url(),
        }
    }

    /// A test client of the same listener.
    fn client(&self) -> WsBroker {
        let client = WsBroker::new(&self.url()).login("guest", "guest");
        client.ca(&self.pki.path().join("ca.pem"))
    }
}

impl Source for RabbitWs {
    fn broker(&self) -> (String, Json) {
        let mut settings = json!({
            "client_id": self.client_id,
            "username": "guest",
            "password": "guest",
        });
        if self.secure {
            let ca = self.pki.path().join("ca.pem").display().to_string();
            settings["tls"] = json!({ "ca_file": ca });
        }
        (self.url(), settings)
    }
    fn port(&self) -> u16 {
        match self.secure {
            true => self.node.wss_port,
            false => self.node.ws_port,
        }
    }
    fn prepare(&self, topic: &str) {
        self.client().persistent_session(&self.client_id, topic);
    }
    fn publish(&self, topic: &str, ids: Range<i64>) {
        let messages = id_payloads(ids).into_iter().map(|p| (topic.to_owned(), p));
        self.client()
            .publisher()
            .publish_all_confirmed(messages.collect(), 1);
    }
}

/// MQTT 5 over `ws://` through the gateway to a private Mosquitto; every message carries
/// the user property `via=gateway`.
struct Mqtt5Ws {
    world: World,
    gateway: WsGateway,
}

impl Mqtt5Ws {
    fn start() -> Mqtt5Ws {
        let world = World::new("fw-mqtt5");
        let gateway = WsGateway::start(world.broker.addr());
        Mqtt5Ws { world, gateway }
    }
}

impl Source for Mqtt5Ws {
    fn broker(&self) -> (String, Json) {
        let settings = with_client_id(&self.world, json!({ "mqtt_version": 5 }));
        (self.gateway.url(), settings)
    }
    fn port(&self) -> u16 {
        self.gateway.port
    }
    fn prepare(&self, topic: &str) {
        // The bridge's session, persistent beforehand (MQTT 5 needs an expiry).
        let (port, id) = (self.world.broker.port, &self.world.client_id);
        with_mqtt5(port, id, false, 1, |client| {
            let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
            client
                .try_subscribe(topic, qos)
                .expect("queue the subscribe");
        });
    }
    fn route(&self, topic: &str, table: &str) -> Route {
        let columns = [
            ("id", "payload.id"),
            ("v", "payload.v"),
            ("via", "header.via"),
        ];
        Route::inbound("fw", topic, table).columns(&columns)
    }
    fn publish(&self, topic: &str, ids: Range<i64>) {
        use rumqttc::v5::mqttbytes::{QoS, v5::PublishProperties};
        let payloads = id_payloads(ids);
        let port = self.world.broker.port;
        with_mqtt5(port, &unique("pub5"), true, payloads.len(), |client| {
            for payload in payloads {
                let props = PublishProperties {
                    user_properties: vec![("via".into(), "gateway".into())],
                    ..Default::default()
                };
                let published = client.try_publish_with_properties(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    payload,
                    props,
                );
                published.expect("queue the MQTT 5 publish");
            }
        });
    }
    fn via(&self) -> Option<&str> {
        Some("gateway")
    }
}

/// AMQP to the shared RabbitMQ, reading a durable queue.
struct Amqp(Mutex<Rabbit>);

impl Source for Amqp {
    fn broker(&self) -> (String, Json) {
        (Rabbit::URL.to_owned(), Json::Null)
    }
    fn port(&self) -> u16 {
        Rabbit::addr().port()
    }
    fn prepare(&self, queue: &str) {
        self.0.lock().unwrap().declare_durable_queue(queue);
    }
    fn route(&self, queue: &str, table: &str) -> Route {
        let columns = [("id", "payload.id"), ("v", "payload.v")];
        amqp_route("fw", queue, table)
            .broker("b")
            .format("json")
            .columns(&columns)
    }
    fn publish(&self, queue: &str, ids: Range<i64>) {
        self.0
            .lock()
            .unwrap()
            .publish_to_queue(queue, id_payloads(ids));
    }
}

/// `mqdb.yaml` in `dir`: broker `b` of `source` with `proxy` settings (a JSON object), and
/// `route` into PostgreSQL.
fn config_in(dir: &Path, file: &str, source: &dyn Source, proxy: Json, route: Route) -> PathBuf {
    let (url, mut settings) = source.broker();
    if settings.is_null() {
        settings = json!({});
    }
    if let (Some(s), Json::Object(p)) = (settings.as_object_mut(), proxy) {
        s.extend(p);
    }
    Config::at(dir.join(file))
        .state(&StateStore::sqlite_in(dir).url())
        .broker("b", &url, settings)
        .database("d", &Db::Postgres.connection_string())
        .inbound(route)
        .write()
}

/// Counts the rows of `table` and waits for `want`.
fn wait_rows(bridge: &mut Bridge, table: &TempTable, want: i64) {
    let count = format!("SELECT COUNT(*) FROM {}", table.name);
    wait_for_count(bridge, &Db::Postgres, &count, want);
}

/// Asserts the table holds exactly the ids `0..n`, each with its own `v` (and `via`).
fn assert_rows(table: &TempTable, n: i64, via: Option<&str>) {
    let via = via.map_or("via IS NULL".to_owned(), |v| format!("via = '{v}'"));
    let t = &table.name;
    let sql = format!(
        "SELECT COUNT(*) FROM {t} WHERE id BETWEEN 0 AND {n} - 1 AND v = 'm' || id AND {via}"
    );
    assert_eq!(scalar(&Db::Postgres, &sql), n, "rows of {t}");
}

/// Asserts the bridge log names the proxy (`127.0.0.1:PORT`) and never a password.
fn assert_log_names_proxy(bridge: &Bridge, squid: &Squid, secrets: &[&str]) {
    let log = bridge.log();
    assert!(
        log.contains(&squid.addr()),
        "the proxy is not named in the log:\n{log}"
    );
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "the log shows the password {secret:?}:\n{log}"
        );
    }
}

/// Asserts that every access-log entry is a tunnel to `target` that squid let through, and
/// that there is one.
fn assert_only_tunnels(squid: &Squid, target: &str) {
    squid.wait_connect(target, "TCP_TUNNEL/200", LIVENESS);
    let log = squid.access_log();
    let other = |a: &&Access| a.target != target || a.status != "TCP_TUNNEL/200";
    let others: Vec<&Access> = log.iter().filter(other).collect();
    assert!(others.is_empty(), "{}", squid.access_log_text());
}

/// Messages published before the bridge starts (queued for it) and while it runs all become
/// rows, through the proxy; the bridge names the proxy in its log, never its password; and
/// squid's access log shows the tunnel to the broker (logged once the tunnel closes).
fn inbound_through_squid(source: &dyn Source) {
    let dir = temp_dir("firewall");
    let table = TempTable::create(&Db::Postgres, "fw", COLUMNS);
    let squid = Squid::start(USER, PASSWORD, &[source.port()]);
    let topic = unique("fw");
    source.prepare(&topic);
    let proxy = json!({ "proxy": squid.url() });
    let route = source.route(&topic, &table.name);
    let config = config_in(dir.path(), "mqdb.yaml", source, proxy, route);

    // When 50 messages wait for the bridge and 50 more come while it runs
    source.publish(&topic, 0..50);
    let mut bridge = Bridge::start(&config);
    wait_rows(&mut bridge, &table, 50);
    source.publish(&topic, 50..100);

    // Then each is one row, with nothing dead-lettered
    wait_rows(&mut bridge, &table, 100);
    assert_rows(&table, 100, source.via());
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    assert_log_names_proxy(&bridge, &squid, &[PASSWORD]);

    // And once the bridge stopped, squid's log shows its tunnel to the broker, and nothing
    // else
    terminate_ok(&mut bridge);
    assert_only_tunnels(&squid, &format!("127.0.0.1:{}", source.port()));
}

cases! {
    inbound_mqtt_through_the_proxy: inbound_through_squid(&MqttTcp(World::new("fw-mqtt")));
    inbound_mqtts_through_the_proxy: inbound_through_squid(&MqttTls::start());
    inbound_mqtt_over_ws_through_the_proxy: inbound_through_squid(&RabbitWs::start(false));
    inbound_mqtt_over_wss_through_the_proxy: inbound_through_squid(&RabbitWs::start(true));
    inbound_mqtt5_over_ws_through_the_proxy: inbound_through_squid(&Mqtt5Ws::start());
    inbound_amqp_through_the_proxy: inbound_through_squid(&Amqp(Mutex::new(Rabbit::connect())));
}

/// A private Mosquitto with a `ws://` gateway in front and a proxy that tunnels only to the
/// gateway: broker `b` of [`WsBehindSquid::config`] is MQTT over ws through the proxy.
struct WsBehindSquid {
    world: World,
    gateway: WsGateway,
    squid: Squid,
}

impl WsBehindSquid {
    fn start(label: &str) -> WsBehindSquid {
        let world = World::new(label);
        let gateway = WsGateway::start(world.broker.addr());
        let squid = Squid::start(USER, PASSWORD, &[gateway.port]);
        WsBehindSquid {
            world,
            gateway,
            squid,
        }
    }

    /// Broker `b` (the gateway, through the proxy) and database `d` (PostgreSQL).
    fn config(&self) -> Config {
        let (_, settings) = self.world.mqtt(json!({ "proxy": self.squid.url() }));
        let pg = Db::Postgres.connection_string();
        let config = self.world.bare_config();
        config
            .broker("b", &self.gateway.url(), settings)
            .database("d", &pg)
    }

    /// Stops the bridge and asserts that everything went through the proxy to the gateway.
    fn finish(&self, bridge: &mut Bridge) {
        assert_log_names_proxy(bridge, &self.squid, &[PASSWORD]);
        terminate_ok(bridge);
        assert_only_tunnels(&self.squid, &format!("127.0.0.1:{}", self.gateway.port));
        assert!(
            self.gateway.upgrades() >= 1,
            "no WebSocket reached the gateway"
        );
    }
}

#[test]
fn outbound_over_ws_through_the_proxy() {
    // Given 20 rows, and a route publishing each on its own topic over ws through the proxy
    let net = WsBehindSquid::start("fw-out");
    let table = TempTable::create(&Db::Postgres, "fw_out", "id INTEGER PRIMARY KEY, v TEXT");
    let t = &table.name;
    Db::Postgres.exec(&format!(
        "INSERT INTO {t} SELECT g, 'm' || g FROM generate_series(1, 20) g"
    ));
    let topic = unique("fw_out");
    let sub = net.world.subscribe(&format!("{topic}/#"));
    let query = format!("SELECT id, v FROM {t} WHERE id > ? ORDER BY id");
    let route = Route::outbound("out", &query)
        .track("id", 0)
        .interval("100ms")
        .broker("b")
        .topic(&format!("{topic}/{{id}}"))
        .qos(1);
    let config = net.config().outbound(route).write();

    // When the bridge runs, then each row arrives once, as JSON, on its topic
    let mut bridge = Bridge::start(&config);
    let got = sub.wait_for(20, LIVENESS);
    let mut seen: Vec<(String, i64, String)> = got
        .iter()
        .map(|m| {
            let row: Json = serde_json::from_slice(&m.payload).expect("a JSON row");
            let id = row["id"].as_i64().expect("an integer id");
            (
                m.topic.clone(),
                id,
                row["v"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    seen.sort_by_key(|(_, id, _)| *id);
    let want: Vec<(String, i64, String)> = (1..=20)
        .map(|id| (format!("{topic}/{id}"), id, format!("m{id}")))
        .collect();
    assert_eq!(seen, want);

    // And the traffic went through the proxy and the gateway only
    net.finish(&mut bridge);
}

#[test]
fn dead_letters_mirrored_over_ws_through_the_proxy() {
    // Given a route and the dead-letter mirror on the same broker, over ws through the proxy
    let net = WsBehindSquid::start("fw-dlq");
    let table = TempTable::create(
        &Db::Postgres,
        "fw_dlq",
        "id INTEGER PRIMARY KEY, v TEXT NOT NULL",
    );
    let (topic, dead) = (unique("fw_in"), unique("fw_dead"));
    let watcher = net.world.subscribe(&format!("{dead}/#"));
    let columns = [("id", "payload.id"), ("v", "payload.v")];
    let route = Route::inbound("fw", &topic, &table.name).columns(&columns);
    let mirror =
        json!({ "broker": "b", "topic": format!("{dead}/{{route}}/{{error_kind}}"), "qos": 1 });
    let config = net
        .config()
        .inbound(route)
        .set("dead_letter", json!({ "publish": mirror }))
        .write();
    net.world.persistent_session(&topic);

    // When 10 good messages come with one that is not JSON and one with a NULL value
    let mut messages: Vec<(String, Vec<u8>)> = id_payloads(0..10)
        .into_iter()
        .map(|p| (topic.clone(), p))
        .collect();
    messages.push((topic.clone(), b"not json".to_vec()));
    messages.push((topic.clone(), br#"{"id":100,"v":null}"#.to_vec()));
    net.world.publisher().publish_all_confirmed(messages, 1);
    let mut bridge = Bridge::start(&config);

    // Then the good ones are rows and the two others dead letters, each mirrored once, as
    // its list object, on the topic of its kind
    wait_rows(&mut bridge, &table, 10);
    let letters = wait_dead_letters(&mut bridge, &config, 2);
    let copy = |m: &common::Received| {
        let letter: Json = serde_json::from_slice(&m.payload).expect("a JSON dead letter");
        (m.topic.clone(), letter)
    };
    let mut mirrored: Vec<(String, Json)> =
        watcher.wait_for(2, LIVENESS).iter().map(copy).collect();
    let at_its_topic = |l: &Json| {
        let kind = l["error_kind"].as_str().expect("an error kind");
        (format!("{dead}/fw/{kind}"), l.clone())
    };
    let mut want: Vec<(String, Json)> = letters.iter().map(at_its_topic).collect();
    mirrored.sort_by_key(|(_, l)| letter_id(l));
    want.sort_by_key(|(_, l)| letter_id(l));
    assert_eq!(mirrored, want);

    // And the traffic went through the proxy and the gateway only
    net.finish(&mut bridge);
}

/// Whether `text` has `word` as a whole word (digits and letters around it do not count).
fn names(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == word)
}

/// Waits until the bridge logs a line that names the proxy and `answer` (e.g. `407`), and
/// squid has refused it twice with `status` (it retries); then asserts it is still running,
/// with no dead letter.
fn wait_refused(bridge: &mut Bridge, squid: &Squid, target: &str, answer: &str, status: &str) {
    let (log_path, proxy) = (bridge.log_path.clone(), squid.addr());
    let what = format!("a log line naming the proxy {proxy} and {answer}");
    wait_for(bridge, &what, || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        // Without the addresses, whose ports could contain the answer's digits.
        let answers = |l: &str| names(&l.replace(&proxy, "").replace(target, ""), answer);
        Ok(log.lines().any(|l| l.contains(&proxy) && answers(l)))
    });
    wait_for(bridge, &format!("two {status} in squid's log"), || {
        let refused = squid.connects_to(target).into_iter();
        Ok(refused.filter(|a| a.status == status).count() >= 2)
    });
    assert!(bridge.is_running(), "{}", bridge.log());
    assert_eq!(dlq_list(&bridge.config), Vec::<Json>::new());
}

#[test]
fn a_wrong_proxy_password_is_an_outage_until_it_is_fixed() {
    // Given a persistent session holding the bridge's messages, and a config whose proxy
    // URL has a wrong password
    let dir = temp_dir("firewall");
    let source = MqttTcp(World::new("fw-407"));
    let squid = Squid::start(USER, PASSWORD, &[source.port()]);
    let target = format!("127.0.0.1:{}", source.port());
    let table = TempTable::create(&Db::Postgres, "fw_407", COLUMNS);
    let topic = unique("fw_407");
    source.prepare(&topic);
    let route = source.route(&topic, &table.name);
    let wrong = "wrong-pass-3";
    let proxy = json!({ "proxy": squid.url_with(wrong) });
    let config = config_in(dir.path(), "mqdb.yaml", &source, proxy, route.clone());
    source.publish(&topic, 0..30);

    // When the bridge runs, then it logs the proxy's 407 and keeps retrying: an outage, not
    // a crash and not a dead letter, and it never shows a password
    let mut bridge = Bridge::start(&config);
    wait_refused(&mut bridge, &squid, &target, "407", "TCP_DENIED/407");
    assert_eq!(table.count(), 0);
    assert_log_names_proxy(&bridge, &squid, &[wrong, PASSWORD]);
    terminate_ok(&mut bridge);

    // When the password is fixed (now in a password file) and the bridge restarted, then
    // everything published meanwhile arrives
    source.publish(&topic, 30..60);
    let file = dir.path().join("proxy_password");
    std::fs::write(&file, PASSWORD).expect("write the password file");
    let proxy = json!({
        "proxy": squid.url_without_password(),
        "proxy_password_file": file.display().to_string(),
    });
    config_in(dir.path(), "mqdb.yaml", &source, proxy, route);
    let mut bridge = Bridge::start(&config);
    wait_rows(&mut bridge, &table, 60);
    assert_rows(&table, 60, None);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    assert_log_names_proxy(&bridge, &squid, &[wrong, PASSWORD]);
    terminate_ok(&mut bridge);
    squid.wait_connect(&target, "TCP_TUNNEL/200", LIVENESS);
}

#[test]
fn a_proxy_that_denies_the_broker_port_is_an_outage_with_403() {
    // Given a proxy whose ACL allows another port than the broker's
    let dir = temp_dir("firewall");
    let source = MqttTcp(World::new("fw-403"));
    let other_port = source.port() ^ 1;
    let squid = Squid::start(USER, PASSWORD, &[other_port]);
    let target = format!("127.0.0.1:{}", source.port());
    let table = TempTable::create(&Db::Postgres, "fw_403", COLUMNS);
    let topic = unique("fw_403");
    let route = source.route(&topic, &table.name);
    let proxy = json!({ "proxy": squid.url() });
    let config = config_in(dir.path(), "mqdb.yaml", &source, proxy, route);

    // When the bridge runs, then it logs the proxy's 403 and keeps retrying
    let mut bridge = Bridge::start(&config);
    wait_refused(&mut bridge, &squid, &target, "403", "TCP_DENIED/403");
    terminate_ok(&mut bridge);
}

const MQTTS: bool = true;
const MQTT: bool = false;
const THROUGH: bool = true;
const DIRECT: bool = false;

/// A bridge on mqtts:// if `tls`, else mqtt://, with the environment `env` (`NAME=VALUE`
/// words; `{proxy}` stands for the proxy's URL) and `proxy` in its config if given: its
/// messages arrive, and squid's access log shows the tunnel if `through`, else nothing.
fn via_env(tls: bool, env: &str, proxy: Option<&str>, through: bool) {
    let source: Box<dyn Source> = match tls {
        true => Box::new(MqttTls::start()),
        false => Box::new(MqttTcp(World::new("fw-env"))),
    };
    let dir = temp_dir("firewall");
    let squid = Squid::start(USER, PASSWORD, &[source.port()]);
    let table = TempTable::create(&Db::Postgres, "fw_env", COLUMNS);
    let topic = unique("fw_env");
    source.prepare(&topic);
    let route = source.route(&topic, &table.name);
    let setting = proxy.map_or(Json::Null, |p| json!({ "proxy": p }));
    let config = config_in(dir.path(), "mqdb.yaml", source.as_ref(), setting, route);
    source.publish(&topic, 0..20);

    let env = env.replace("{proxy}", &squid.url());
    let env: Vec<(&str, &str)> = env.split(' ').filter_map(|w| w.split_once('=')).collect();
    let mut bridge = Bridge::start_with_env(&config, &env);
    wait_rows(&mut bridge, &table, 20);
    assert_rows(&table, 20, None);
    terminate_ok(&mut bridge);

    let target = format!("127.0.0.1:{}", source.port());
    if through {
        assert_only_tunnels(&squid, &target);
        assert_log_names_proxy(&bridge, &squid, &[PASSWORD]);
    } else {
        // A tunnel is logged when it closes: the bridge has stopped, so none was opened.
        assert_eq!(squid.access_log_text(), "", "{}", bridge.log());
    }
}

cases! {
    https_proxy_carries_mqtts: via_env(MQTTS, "HTTPS_PROXY={proxy}", None, THROUGH);
    lower_case_https_proxy_carries_mqtts: via_env(MQTTS, "https_proxy={proxy}", None, THROUGH);
    all_proxy_carries_mqtts: via_env(MQTTS, "ALL_PROXY={proxy}", None, THROUGH);
    http_proxy_is_not_for_mqtts: via_env(MQTTS, "HTTP_PROXY={proxy}", None, DIRECT);
    http_proxy_carries_mqtt: via_env(MQTT, "HTTP_PROXY={proxy}", None, THROUGH);
    https_proxy_is_not_for_mqtt: via_env(MQTT, "HTTPS_PROXY={proxy}", None, DIRECT);
    no_proxy_bypasses_it: via_env(MQTTS, "HTTPS_PROXY={proxy} NO_PROXY=127.0.0.1", None, DIRECT);
    no_proxy_star_bypasses_any_proxy: via_env(MQTTS, "ALL_PROXY={proxy} no_proxy=*", None, DIRECT);
    proxy_none_overrides_the_env: via_env(MQTTS, "HTTPS_PROXY={proxy}", Some("none"), DIRECT);
}

#[test]
fn check_names_the_proxy_hop_when_the_proxy_refuses_the_password() {
    // Given a route on a broker behind the proxy, for which `check` passes
    let dir = temp_dir("firewall");
    let source = MqttTcp(World::new("fw-chk"));
    let squid = Squid::start(USER, PASSWORD, &[source.port()]);
    let table = TempTable::create(&Db::Postgres, "fw_chk", COLUMNS);
    let route = source.route(&unique("fw_chk"), &table.name);
    let good = json!({ "proxy": squid.url() });
    let good = config_in(dir.path(), "good.yaml", &source, good, route.clone());
    check_route(&good, 0, "fw", "ok");

    // When `check` runs with a wrong proxy password, then the route fails naming the proxy
    // and its 407
    let bad = json!({ "proxy": squid.url_with("wrong-pass-3") });
    let bad = config_in(dir.path(), "bad.yaml", &source, bad, route);
    let [fail, err, show] = check_route(&bad, 1, "fw", "FAIL");
    let target = format!("127.0.0.1:{}", source.port());
    let line = fail.replace(&squid.addr(), "").replace(&target, "");
    let named = fail.contains("proxy") && names(&line, "407");
    assert!(
        named,
        "the FAIL line does not name the proxy and 407:\n{show}"
    );
    assert!(
        !fail.contains("wrong-pass-3") && !err.contains("wrong-pass-3"),
        "{show}"
    );
    squid.wait_connect(&target, "TCP_DENIED/407", LIVENESS);
}

/// `file` in `dir`: route `fw` into `table` from broker `b` at `url` (the world's client
/// id, through `squid`, with `tls` settings unless null).
fn check_config(
    world: &World,
    squid: &Squid,
    file: &str,
    url: &str,
    tls: Json,
    table: &str,
) -> PathBuf {
    let mut extra = json!({ "proxy": squid.url() });
    if !tls.is_null() {
        extra["tls"] = tls;
    }
    let (_, settings) = world.mqtt(extra);
    let route = Route::inbound("fw", &unique("fw_chk"), table);
    Config::at(world.path(file))
        .state(&world.store.url())
        .broker("b", url, settings)
        .database("d", &Db::Postgres.connection_string())
        .inbound(route)
        .write()
}

#[test]
fn check_names_the_tls_hop_for_a_wrong_server_name() {
    // Given a route on a wss:// broker behind the proxy, for which `check` passes
    let pki = temp_dir("pki");
    make_pki(pki.path());
    let world = World::new("fw-chk-tls");
    let gateway = WsGateway::start_tls(world.broker.addr(), pki.path());
    let squid = Squid::start(USER, PASSWORD, &[gateway.port]);
    let table = TempTable::create(&Db::Postgres, "fw_chk", COLUMNS);
    let ca = pki.path().join("ca.pem").display().to_string();
    let (url, t) = (gateway.url(), &table.name);
    let good = check_config(
        &world,
        &squid,
        "good.yaml",
        &url,
        json!({ "ca_file": ca }),
        t,
    );
    check_route(&good, 0, "fw", "ok");

    // When `check` runs with a server name the certificate is not for, then the route fails
    // naming the TLS hop, not the proxy's answer
    let tls = json!({ "ca_file": ca, "server_name": "wrong.example" });
    let bad = check_config(&world, &squid, "bad.yaml", &url, tls, t);
    let [fail, _, show] = check_route(&bad, 1, "fw", "FAIL");
    assert!(
        fail.contains("tls"),
        "the FAIL line does not name the TLS hop:\n{show}"
    );
    assert!(!names(&fail, "407") && !names(&fail, "403"), "{show}");
    // And squid did let the tunnel through
    let target = format!("127.0.0.1:{}", gateway.port);
    squid.wait_connect(&target, "TCP_TUNNEL/200", LIVENESS);
}

#[test]
fn check_names_the_websocket_upgrade_for_a_wrong_path() {
    // Given a route on a ws:// broker behind the proxy, for which `check` passes
    let world = World::new("fw-chk-ws");
    let gateway = WsGateway::start(world.broker.addr());
    let squid = Squid::start(USER, PASSWORD, &[gateway.port]);
    let table = TempTable::create(&Db::Postgres, "fw_chk", COLUMNS);
    let t = &table.name;
    let good = check_config(&world, &squid, "good.yaml", &gateway.url(), Json::Null, t);
    check_route(&good, 0, "fw", "ok");

    // When `check` runs with a path the server does not serve, then the route fails naming
    // the WebSocket upgrade, which the gateway refused
    let url = gateway.url_with_path("/nope");
    let bad = check_config(&world, &squid, "bad.yaml", &url, Json::Null, t);
    let [fail, _, show] = check_route(&bad, 1, "fw", "FAIL");
    let named = fail.contains("websocket");
    assert!(
        named,
        "the FAIL line does not name the WebSocket upgrade:\n{show}"
    );
    assert!(
        gateway.refused() >= 1,
        "the upgrade never reached the gateway:\n{show}"
    );
}

/// `check` on one route whose broker `b` is at `url` with `extra` broker settings: the
/// lower-cased FAIL line and the whole output.
fn check_fails(world: &World, file: &str, url: &str, extra: Json, amqp: bool) -> (String, String) {
    let table = unique("fw_unreached");
    let (_, mut settings) = world.mqtt(extra);
    let route = if amqp {
        if let Some(s) = settings.as_object_mut() {
            s.remove("client_id");
        }
        amqp_route("fw", &unique("fw_q"), &table).set("broker", "b")
    } else {
        Route::inbound("fw", &unique("fw_chk"), &table)
    };
    let config = Config::at(world.path(file))
        .state(&world.store.url())
        .broker("b", url, settings)
        .database("d", &Db::Postgres.connection_string())
        .inbound(route)
        .write();
    let [fail, _, show] = check_route(&config, 1, "fw", "FAIL");
    (fail, show)
}

#[test]
fn check_names_name_resolution_and_a_broker_or_proxy_that_never_answers() {
    let world = World::new("fw-chk-silent");
    let short = json!({ "connect_timeout": "2s" });

    // A broker name that does not resolve, and a proxy name that does not resolve
    let (fail, show) = check_fails(
        &world,
        "dns.yaml",
        "mqtt://mqdb-nowhere.invalid:1883",
        short.clone(),
        false,
    );
    assert!(
        fail.contains("cannot resolve") && fail.contains("mqdb-nowhere.invalid"),
        "{show}"
    );
    let via = json!({ "connect_timeout": "2s", "proxy": "http://u:p@mqdb-no-proxy.invalid:3128" });
    let (fail, show) = check_fails(&world, "dns-proxy.yaml", &world.broker.url(), via, false);
    let named = fail.contains("resolve") && fail.contains("proxy") && !fail.contains(":p@");
    assert!(named, "not naming the proxy's name resolution:\n{show}");

    // A listener that accepts connections (the kernel completes them) but never answers:
    // the MQTT CONNACK, the AMQP handshake and a proxy's answer to CONNECT all time out,
    // each named with its host
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let at = silent.local_addr().expect("its address");
    let (fail, show) = check_fails(
        &world,
        "mqtt.yaml",
        &format!("mqtt://{at}"),
        short.clone(),
        false,
    );
    let timed_out = fail.contains("did not complete within 2s") && fail.contains(&at.to_string());
    assert!(timed_out, "not a timeout naming {at}:\n{show}");
    let amqp = format!("amqp://guest:guest@{at}/%2f");
    let (fail, show) = check_fails(&world, "amqp.yaml", &amqp, short, true);
    let timed_out = fail.contains("did not complete within 2s") && fail.contains(&at.to_string());
    assert!(timed_out, "not a timeout naming {at}:\n{show}");
    let via = json!({ "connect_timeout": "2s", "proxy": format!("http://{at}") });
    let (fail, show) = check_fails(&world, "proxy.yaml", &amqp, via, true);
    let at_proxy = fail.contains("did not complete within 2s") && fail.contains("proxy");
    assert!(at_proxy, "not a timeout at the proxy:\n{show}");
    drop(silent);
}
