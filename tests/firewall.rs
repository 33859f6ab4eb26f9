//! Brokers behind a firewall: reached through an HTTP CONNECT proxy (a private Squid with
//! basic authentication and a port ACL) and over WebSockets (RabbitMQ's web MQTT plugin for
//! MQTT 3.1.1, a WebSocket gateway in front of Mosquitto for MQTT 5).
//!
//! The first tests check the harness itself (no mqdb involved); the rest run mqdb through
//! it, and read Squid's access log to see that the traffic went through the proxy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{
    LIVENESS, Mosquitto, RabbitNode, Squid, WS_PATH, WsBroker, WsGateway, base64, make_pki,
    seq_messages, temp_dir, unique,
};

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
    let key = base64(b"0123456789abcdef");
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
