//! AMQP inbound over `amqps://` with a CA file and a client certificate, against a private
//! RabbitMQ node whose TLS listener requires one (`verify_peer`, `fail_if_no_peer_cert`):
//! the shared RabbitMQ has no TLS listener and is left alone. The test declares and publishes
//! over the node's plain listener; the bridge only uses the TLS one.

mod common;

use std::path::PathBuf;

use common::{
    Bridge, Config, Db, LIVENESS, RabbitNode, TempTable, Workdir, amqp_route, check_route,
    dlq_list, id_payloads, pki_with_other_ca, terminate_ok, unique, wait_consuming, wait_for_count,
    wait_until,
};
use serde_json::{Value as Json, json};

/// Certificates (`make_pki`, plus an unrelated CA `other_ca`), a private node serving them,
/// a work dir, and a table for route `name`.
struct Setup {
    pki: tempfile::TempDir,
    node: RabbitNode,
    work: Workdir,
    table: TempTable,
    queue: String,
    name: &'static str,
}

impl Setup {
    fn new(name: &'static str) -> Setup {
        let pki = pki_with_other_ca();
        let file = |name: &str| pki.path().join(name);
        let node = RabbitNode::start_tls(&file("ca.pem"), &file("server.pem"), &file("server.key"));
        let columns = "id INTEGER PRIMARY KEY, v TEXT NOT NULL";
        Setup {
            pki,
            node,
            work: Workdir::new("amqps"),
            table: TempTable::create(&Db::Postgres, name, columns),
            queue: unique(name),
            name,
        }
    }

    /// Writes `file`: broker `r` over amqps:// to localhost with CA file `ca` (and the client
    /// certificate if `client_cert`), database `d` (PostgreSQL) and the route.
    fn config(&self, file: &str, ca: &str, client_cert: bool) -> PathBuf {
        let pem = |name: &str| self.pki.path().join(name).display().to_string();
        let mut tls = json!({ "ca_file": pem(ca) });
        if client_cert {
            tls["cert_file"] = pem("client.pem").into();
            tls["key_file"] = pem("client.key").into();
        }
        let url = self.node.amqps_url("localhost");
        let route = amqp_route(self.name, &self.queue, &self.table.name)
            .set("format", "json")
            .lines(&["batch: { max_rows: 50, max_delay: 50ms }"])
            .columns(&[("id", "payload.id"), ("v", "payload.v")]);
        Config::at(self.work.path(file))
            .state(&self.work.store.url())
            .broker("r", &url, json!({ "tls": tls }))
            .database("d", &Db::Postgres.connection_string())
            .inbound(route)
            .write()
    }
}

#[test]
fn amqps_with_client_certificate_run_and_check() {
    // Given a durable queue on the node holding 300 messages, and a config reaching the node
    // by name over amqps:// with the CA file and the client certificate
    let s = Setup::new("amqps");
    let mut client = s.node.client();
    client.declare_durable_queue(&s.queue);
    client.publish_to_queue(&s.queue, id_payloads(0..300));
    let config = s.config("mqdb.yaml", "ca.pem", true);

    // When the bridge runs, and 300 more messages arrive while it consumes
    let mut bridge = Bridge::start(&config);
    wait_consuming(&mut bridge, &s.queue);
    client.publish_to_queue(&s.queue, id_payloads(300..600));

    // Then every message is one row (a primary key, so 600 rows with ids in 0..600 are
    // exactly the ids published), with nothing dead-lettered
    let (db, t) = (&Db::Postgres, &s.table.name);
    wait_for_count(&mut bridge, db, &format!("SELECT COUNT(*) FROM {t}"), 600);
    let sql = format!("SELECT COUNT(*) FROM {t} WHERE id BETWEEN 0 AND 599 AND v = 'm' || id");
    assert_eq!(common::scalar(db, &sql), 600);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());

    // And the node sees the bridge on its TLS listener, authenticated by the client
    // certificate
    let connections = s.node.connections();
    let tls_port = s.node.tls_port.to_string();
    let on_tls: Vec<_> = connections
        .iter()
        .filter(|c| c.get(1) == Some(&tls_port))
        .collect();
    let log = bridge.log();
    let none = format!("none on port {tls_port}: {connections:?}; {log}");
    assert!(!on_tls.is_empty(), "{none}");
    // Each as its user, whether it is TLS, and whether the certificate is the client's
    let seen: Vec<String> = on_tls
        .iter()
        .map(|c| format!("{} {} {}", c[0], c[2], c[3].contains("CN=mqdb-client")))
        .collect();
    let want = vec!["guest true true"; on_tls.len()];
    assert_eq!(seen, want, "{connections:?}");

    // And the bridge stops cleanly, having acknowledged every message, and `check` with the
    // same config prints ok for the route and exits 0
    terminate_ok(&mut bridge);
    let left = client.ready_count(&s.queue);
    assert_eq!(left, 0, "messages left in {}", s.queue);
    check_route(&config, 0, s.name, "ok");
}

#[test]
fn amqps_check_fails_without_client_certificate_or_with_a_wrong_ca() {
    // Given an existing queue and table, and a config with which `check` passes
    let s = Setup::new("amqps_chk");
    let mut client = s.node.client();
    client.declare_durable_queue(&s.queue);
    check_route(&s.config("good.yaml", "ca.pem", true), 0, s.name, "ok");

    // When `check` runs without a client certificate (the CA alone), then it fails for the
    // route naming the broker and that a client certificate is wanted: RabbitMQ closes the
    // socket right after its `certificate_required` alert, so the alert is often lost to a
    // reset, and the bridge says what is wanted either way
    let no_cert = s.config("no_cert.yaml", "ca.pem", false);
    let [fail, _, show] = check_route(&no_cert, 1, s.name, "FAIL");
    assert!(fail.contains("broker r"), "{show}");
    let named = fail.contains("client certificate");
    assert!(named, "no client certificate named:\n{show}");
    // And the node refused the handshake because the certificate was missing
    let refused = || s.node.log().contains("certificate_required");
    wait_until("the node logs certificate_required", LIVENESS, refused);

    // When `check` runs with a CA that did not sign the server's certificate, then it fails
    // for the route naming the broker and the certificate it could not verify
    let wrong_ca = s.config("wrong_ca.yaml", "other_ca.pem", true);
    let [fail, err, show] = check_route(&wrong_ca, 1, s.name, "FAIL");
    let says = ["broker r", "certificate"].iter().all(|n| fail.contains(n))
        && (fail.contains("issuer") || fail.contains("verif"));
    let not = "the FAIL line does not say the server certificate failed verification";
    assert!(says, "{not}:\n{show}");
    assert!(err.contains("failed the check"), "{show}");
}
