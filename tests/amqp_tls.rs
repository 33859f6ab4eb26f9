//! AMQP inbound over `amqps://` with a CA file and a client certificate, against a private
//! RabbitMQ node whose TLS listener requires one (`verify_peer`, `fail_if_no_peer_cert`):
//! the shared RabbitMQ has no TLS listener and is left alone. The test declares and publishes
//! over the node's plain listener; the bridge only uses the TLS one.

mod common;

use std::path::PathBuf;

use common::{
    Bridge, Config, Db, RabbitNode, TempTable, Workdir, amqp_route, check_route, dlq_list,
    id_payloads, pki_with_other_ca, terminate_ok, unique, wait_consuming, wait_for_count,
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
        let (table, queue) = (
            TempTable::create(&Db::Postgres, name, columns),
            unique(name),
        );
        let work = Workdir::new("amqps");
        Setup {
            pki,
            node,
            work,
            table,
            queue,
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
        let config = Config::at(self.work.path(file)).state(&self.work.store.url());
        let config = config.broker("r", &url, json!({ "tls": tls }));
        let config = config.database("d", &Db::Postgres.connection_string());
        config.inbound(route).write()
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
    assert!(
        !on_tls.is_empty(),
        "none on port {tls_port}: {connections:?}; {}",
        bridge.log()
    );
    for c in &on_tls {
        assert_eq!(c[0], "guest", "{connections:?}");
        assert_eq!(c[2], "true", "not TLS: {connections:?}");
        assert!(
            c[3].contains("CN=mqdb-client"),
            "not the client's: {connections:?}"
        );
    }

    // And the bridge stops cleanly, having acknowledged every message, and `check` with the
    // same config prints ok for the route and exits 0
    terminate_ok(&mut bridge);
    assert_eq!(
        client.ready_count(&s.queue),
        0,
        "messages left in {}",
        s.queue
    );
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
    assert!(
        fail.contains("client certificate"),
        "no client certificate named:\n{show}"
    );
    // And the node refused the handshake because the certificate was missing
    wait_until(
        "the node logs certificate_required",
        common::LIVENESS,
        || s.node.log().contains("certificate_required"),
    );

    // When `check` runs with a CA that did not sign the server's certificate, then it fails
    // for the route naming the broker and the certificate it could not verify
    let wrong_ca = s.config("wrong_ca.yaml", "other_ca.pem", true);
    let [fail, err, show] = check_route(&wrong_ca, 1, s.name, "FAIL");
    assert!(
        fail.contains("broker r")
            && fail.contains("certificate")
            && (fail.contains("issuer") || fail.contains("verif")),
        "the FAIL line does not say the server certificate failed verification:\n{show}"
    );
    assert!(err.contains("failed the check"), "{show}");
}
