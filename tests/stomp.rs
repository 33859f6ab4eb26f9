//! Publishers that speak STOMP rather than AMQP: RabbitMQ's STOMP plugin (enabled on the
//! shared broker by `scripts/setup.sh`, port 61613) turns each SEND into an AMQP message in
//! the queues an AMQP inbound route consumes. Messages are sent with the Python client
//! stomp.py (installed by `scripts/setup.sh`), as a site's own publisher would.

mod common;

use std::process::{Command, Stdio};

use common::{
    Bridge, Db, NULL, Rabbit, TempTable, Workdir, amqp_route, dlq_list, pairs, scalar,
    terminate_ok, text_rows, unique, wait_consuming, wait_dead_letters, wait_for_count,
    wait_queue_drained,
};
use serde_json::{Value as Json, json};

/// Sends the frames listed in the JSON file `argv[1]` (`destination`, `body`, `headers`) over
/// STOMP 1.2 as guest, each with a receipt, and exits 0 once every receipt came back.
const SEND_SCRIPT: &str = r#"
import json, sys, threading
import stomp

frames = json.load(open(sys.argv[1]))
receipts, errors = set(), []
done = threading.Condition()

class Listener(stomp.ConnectionListener):
    def on_receipt(self, frame):
        with done:
            receipts.add(frame.headers["receipt-id"])
            done.notify_all()

    def on_error(self, frame):
        with done:
            errors.append((frame.headers, frame.body))
            done.notify_all()

# STOMP 1.1+ sends a host header, which RabbitMQ reads as the virtual host.
conn = stomp.Connection12([("127.0.0.1", 61613)], vhost="/")
conn.set_listener("l", Listener())
conn.connect("guest", "guest", wait=True)
for i, f in enumerate(frames):
    headers = dict(f["headers"], receipt="r%d" % i)
    conn.send(f["destination"], f["body"], headers=headers)
with done:
    done.wait_for(lambda: errors or len(receipts) == len(frames), timeout=30)
if errors or len(receipts) != len(frames):
    sys.exit("receipts %s of %d, errors %s" % (sorted(receipts), len(frames), errors))
conn.disconnect()
"#;

/// Sends `frames` (`[destination, body, headers]`) through RabbitMQ's STOMP listener and
/// returns once the broker has receipted every one of them.
fn stomp_send(work: &Workdir, frames: &[(&str, &str, Json)]) {
    let script = work.path("stomp_send.py");
    std::fs::write(&script, SEND_SCRIPT).expect("write the STOMP script");
    let list: Vec<Json> = frames
        .iter()
        .map(|(d, b, h)| json!({"destination": d, "body": b, "headers": h}))
        .collect();
    let frames_file = work.path("frames.json");
    std::fs::write(&frames_file, Json::Array(list).to_string()).expect("write the frames");
    let out = Command::new("python3")
        .args([&script, &frames_file])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run python3: {e}"));
    assert!(
        out.status.success(),
        "STOMP send failed ({}); is rabbitmq_stomp enabled and stomp.py installed \
         (scripts/setup.sh)?\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_stomp_send_is_an_amqp_message_whose_custom_headers_are_amqp_headers() {
    // Given a durable queue
    let work = Workdir::new("stomp-map");
    let mut rabbit = Rabbit::connect();
    let queue = unique("mqdb_stomp_map");
    rabbit.declare_durable_queue(&queue);

    // When a STOMP client sends to /amq/queue/<queue> with custom headers and the headers
    // STOMP and RabbitMQ define
    let headers = json!({
        "site": "plant-7",
        "x-trace": "abc",
        "content-type": "application/json",
        "persistent": "true",
        "correlation-id": "c-1",
    });
    let destination = format!("/amq/queue/{queue}");
    stomp_send(&work, &[(&destination, r#"{"v":1}"#, headers)]);

    // Then the queue holds one AMQP message, published to the default exchange with the
    // queue's name as routing key, carrying the body unchanged
    let messages = rabbit.take_all(&queue);
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let m = &messages[0];
    assert_eq!(
        (m.exchange.as_str(), m.routing_key.as_str()),
        ("", queue.as_str())
    );
    assert_eq!(m.payload, br#"{"v":1}"#);

    // And every other frame header is a string header: the custom ones, content-length
    // (stomp.py adds it) and receipt; content-type, persistent and correlation-id became AMQP
    // properties instead, and destination is the routing
    let got: Vec<(&str, &str)> = m
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let want = vec![
        ("content-length", "7"),
        ("receipt", "r0"),
        ("site", "plant-7"),
        ("x-trace", "abc"),
    ];
    assert_eq!(got, want, "{m:#?}");
    assert_eq!(
        m.content_type.as_deref(),
        Some("application/json"),
        "{m:#?}"
    );
    assert_eq!(m.delivery_mode, Some(2), "{m:#?}");
}

#[test]
fn stomp_messages_become_rows_with_their_headers() {
    // Given a route whose queue and exchange do not exist yet (the bridge declares them and
    // binds with `sensors.#`), mapping the body's `v`, two custom headers, content-type and
    // where the message came from
    let work = Workdir::new("stomp-in");
    let mut rabbit = Rabbit::connect();
    let queue = unique("mqdb_stomp_q");
    let exchange = unique("mqdb_stomp_x");
    rabbit.adopt_queue(&queue);
    rabbit.adopt_exchange(&exchange);
    let db = Db::Postgres;
    let cols = "n SERIAL, v TEXT, site TEXT, trace TEXT, ct TEXT, ex TEXT, rk TEXT";
    let table = TempTable::create(&db, "stomp_in", cols);
    let t = table.name.clone();
    let sources = "v=payload.v site=header.site trace=header.x-trace ct=header.content-type \
                   ex=meta.exchange rk=meta.routing_key";
    let bind = format!("bind: {{ exchange: \"{exchange}\", routing_key: \"sensors.#\" }}");
    let route = amqp_route("stomp_in", &queue, &t)
        .lines(&[bind.as_str(), "format: json"])
        .columns(&pairs(sources));
    let config = work
        .bare_config()
        .broker("r", Rabbit::URL, Json::Null)
        .database("d", &db.connection_string())
        .inbound(route)
        .write();
    let mut bridge = Bridge::start(&config);
    wait_consuming(&mut bridge, &queue);

    // When a STOMP client sends JSON to the queue by /amq/queue/ and /queue/, and to the
    // exchange by /exchange/<name>/<routing key>, each with its headers
    let h = |site: &str, trace: &str| json!({"site": site, "x-trace": trace, "content-type": "application/json"});
    let (amq_queue, plain_queue) = (format!("/amq/queue/{queue}"), format!("/queue/{queue}"));
    let to_exchange = format!("/exchange/{exchange}/sensors.s1");
    stomp_send(
        &work,
        &[
            (&amq_queue, r#"{"v":"a"}"#, h("plant-7", "abc")),
            (&plain_queue, r#"{"v":"b"}"#, h("plant-8", "def")),
            (&to_exchange, r#"{"v":"c"}"#, h("plant-9", "ghi")),
        ],
    );

    // Then each is one row with its header values; content-type is not a header (RabbitMQ
    // made it the content_type property), so its column keeps its default
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, &db, &count_sql, 3);
    let rows = db.query(&format!(
        "SELECT v, site, trace, ct, ex, rk FROM {t} ORDER BY v"
    ));
    let (q, x) = (queue.as_str(), exchange.as_str());
    let want = text_rows(&[
        ["a", "plant-7", "abc", NULL, "", q],
        ["b", "plant-8", "def", NULL, "", q],
        ["c", "plant-9", "ghi", NULL, x, "sensors.s1"],
    ]);
    assert_eq!(rows, want);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());

    // When a STOMP client sends a body that is not JSON
    stomp_send(&work, &[(&amq_queue, "not json", h("plant-7", "xyz"))]);

    // Then it is a dead letter of kind decode, as from an AMQP publisher, keeping the
    // headers it arrived with; no row is added and the queue is acknowledged empty
    let letters = wait_dead_letters(&mut bridge, &config, 1);
    wait_queue_drained(&mut bridge, &queue);
    terminate_ok(&mut bridge);
    let (letter, ctx) = (&letters[0], format!("{:#}", letters[0]));
    assert_eq!(letter["error_kind"], "decode", "{ctx}");
    assert_eq!(letter["payload"], "not json", "{ctx}");
    assert_eq!(letter["source"], q, "{ctx}");
    // (the whole AMQP headers table: nothing beyond what the first test found)
    let amqp_headers = json!({
        "content-length": "8", "receipt": "r0", "site": "plant-7", "x-trace": "xyz"
    });
    assert_eq!(letter["headers"]["headers"], amqp_headers, "{ctx}");
    assert_eq!(scalar(&db, &count_sql), 3);
}
