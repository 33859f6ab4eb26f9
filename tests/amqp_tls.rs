//! AMQP inbound over `amqps://` with a CA file and a client certificate (`tls: { ca_file,
//! cert_file, key_file }`), against a private RabbitMQ node whose TLS listener requires a
//! client certificate (`verify_peer`, `fail_if_no_peer_cert`): `mqdb run` consumes JSON
//! messages into PostgreSQL and `mqdb check` passes; without a client certificate, or with a
//! CA that did not sign the server's certificate, `check` fails and says why (a missing client
//! certificate often shows only as a reset connection: see that test).
//!
//! The shared RabbitMQ (127.0.0.1:5672) has no TLS listener and is left alone: every test
//! starts its own node ([`RabbitNode`], about ten seconds) on free ports, with its own temp
//! dir, and stops it when the test ends, also on panic. The test publishes and declares over
//! the node's plain listener; the bridge only uses the TLS one. Each test has its own temp
//! dirs (certificates; config, state store, log), unique queue and table names, and drops its
//! table when it ends. Waits are liveness deadlines, never speed assertions.

mod common;

use std::path::{Path, PathBuf};

use common::{
    Bridge, Db, RabbitNode, TempTable, dlq_list, make_ca, make_pki, path_str, run_mqdb, unique,
    wait_for, wait_until,
};
use serde_json::Value as Json;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Certificates in a temp dir: a CA `ca` and an unrelated CA `other_ca`; `server` (CN
/// localhost, SAN localhost and 127.0.0.1) and `client` (CN mqdb-client), both signed by `ca`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("mqdb-amqps-pki-")
            .tempdir()
            .expect("temp dir for certificates");
        let p = dir.path();
        make_pki(p);
        make_ca(p, "other_ca");
        Pki { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A private node whose TLS listener serves `server` and trusts clients signed by `ca`.
    fn start_node(&self) -> RabbitNode {
        RabbitNode::start_tls(
            &self.file("ca.pem"),
            &self.file("server.pem"),
            &self.file("server.key"),
        )
    }

    /// The broker's `tls:` value: CA file `ca`, and the client certificate and key if
    /// `client_cert`.
    fn tls(&self, ca: &str, client_cert: bool) -> String {
        let mut tls = format!("ca_file: \"{}\"", self.file(ca).display());
        if client_cert {
            tls.push_str(&format!(
                ", cert_file: \"{}\", key_file: \"{}\"",
                self.file("client.pem").display(),
                self.file("client.key").display()
            ));
        }
        format!("{{ {tls} }}")
    }
}

/// Writes `dir/file`: AMQP broker `r` at `url` with `tls`, database `d` (PostgreSQL) and one
/// inbound route `name` consuming `queue` into `table` (columns `id`, `v` from the payload).
fn write_config(
    dir: &Path,
    file: &str,
    url: &str,
    tls: &str,
    name: &str,
    queue: &str,
    table: &str,
) -> PathBuf {
    let text = format!(
        "state: \"sqlite://{state}\"\n\
         brokers:\n  r:\n    url: \"{url}\"\n    tls: {tls}\n\
         databases:\n  d:\n    connection_string: \"{cs}\"\n\
         inbound:\n  - name: {name}\n    broker: r\n    queue: \"{queue}\"\n    \
         database: d\n    table: {table}\n    format: json\n    \
         batch: {{ max_rows: 50, max_delay: 50ms }}\n    \
         columns:\n      id: payload.id\n      v: payload.v\n",
        state = dir.join("state.db").display(),
        cs = Db::Postgres.connection_string(),
    );
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// `mqdb -c CONFIG check`: (exit code, stdout, stderr).
fn check(config: &Path) -> (Option<i32>, String, String) {
    let out = run_mqdb(&["-c", path_str(config), "check"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// JSON payloads `{"id":ID,"v":"mID"}`, one per id.
fn id_payloads(ids: std::ops::Range<i64>) -> Vec<Vec<u8>> {
    ids.map(|id| format!(r#"{{"id":{id},"v":"m{id}"}}"#).into_bytes())
        .collect()
}
// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn amqps_with_client_certificate_run_and_check() {
    // Given a private RabbitMQ node whose TLS listener requires a client certificate signed
    // by the test CA, a durable queue on it holding 300 messages, and a table
    let pki = Pki::new();
    let node = pki.start_node();
    let dir = tempfile::Builder::new()
        .prefix("mqdb-amqps-")
        .tempdir()
        .expect("temp dir");
    let queue = unique("mqdb_amqps_q");
    node.declare_durable_queue(&queue);
    node.publish_to_queue(&queue, id_payloads(0..300));
    let table = TempTable::create(
        &Db::Postgres,
        "amqps",
        "id INTEGER PRIMARY KEY, v TEXT NOT NULL",
    );
    let t = table.name.clone();

    // And a bridge config reaching the node by name over amqps:// with the CA file and the
    // client certificate
    let config = write_config(
        dir.path(),
        "mqdb.yaml",
        &node.amqps_url("localhost"),
        &pki.tls("ca.pem", true),
        "amqps_in",
        &queue,
        &t,
    );

    // When the bridge runs, and 300 more messages arrive while it consumes
    let mut bridge = Bridge::start(&config);
    let consuming = format!("queue={queue}");
    let log_path = bridge.log_path.clone();
    wait_for(
        &mut bridge,
        &format!("the log line `consuming … {consuming}`"),
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            Ok(log.lines().any(|l| {
                l.contains("consuming")
                    && (l.contains(&format!("queue=\"{queue}\""))
                        || l.split_whitespace().any(|w| w == consuming))
            }))
        },
    );
    node.publish_to_queue(&queue, id_payloads(300..600));

    // Then every message is one row, with nothing dead-lettered
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for(&mut bridge, &format!("`{count_sql}` = 600"), || {
        let n = common::scalar(&Db::Postgres, &count_sql);
        if n > 600 {
            return Err(format!("{n} rows, more than the 600 published"));
        }
        Ok(n == 600)
    });
    // (a primary key, so 600 rows with ids in 0..600 are exactly the ids published)
    assert_eq!(
        common::scalar(
            &Db::Postgres,
            &format!("SELECT COUNT(*) FROM {t} WHERE id BETWEEN 0 AND 599 AND v = 'm' || id")
        ),
        600
    );
    assert_eq!(dlq_list(&config), Vec::<Json>::new());

    // And the node sees the bridge on its TLS listener, authenticated by the client
    // certificate
    let connections = node.connections();
    let tls_port = node.tls_port.to_string();
    let on_tls: Vec<&Vec<String>> = connections
        .iter()
        .filter(|c| c.get(1) == Some(&tls_port))
        .collect();
    assert!(
        !on_tls.is_empty(),
        "no connection on the TLS port {tls_port}: {connections:?}; mqdb log:\n{}",
        bridge.log()
    );
    for c in &on_tls {
        assert_eq!(c[0], "guest", "{connections:?}");
        assert_eq!(c[2], "true", "not TLS: {connections:?}");
        assert!(
            c[3].contains("CN=mqdb-client"),
            "the peer certificate is not the client's: {connections:?}"
        );
    }

    // And the bridge stops cleanly, having acknowledged every message
    let status = bridge.terminate();
    assert!(
        status.success(),
        "mqdb exited with {status} on SIGTERM; log:\n{}",
        bridge.log()
    );
    assert_eq!(node.ready_count(&queue), 0, "messages left in {queue}");

    // And `check` with the same config prints ok for the route and exits 0
    let (code, out, err) = check(&config);
    assert_eq!(code, Some(0), "check failed:\n{out}{err}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("inbound amqps_in:"))
        .collect();
    assert_eq!(lines.len(), 1, "{out}{err}");
    assert!(lines[0].starts_with("ok"), "{out}{err}");
}

#[test]
fn amqps_check_fails_without_client_certificate_or_with_a_wrong_ca() {
    // Given a private RabbitMQ node whose TLS listener requires a client certificate, an
    // existing queue and table, and a config with which `check` passes
    let pki = Pki::new();
    let node = pki.start_node();
    let dir = tempfile::Builder::new()
        .prefix("mqdb-amqps-check-")
        .tempdir()
        .expect("temp dir");
    let queue = unique("mqdb_amqps_chk");
    node.declare_durable_queue(&queue);
    let table = TempTable::create(
        &Db::Postgres,
        "amqps_chk",
        "id INTEGER PRIMARY KEY, v TEXT NOT NULL",
    );
    let t = table.name.clone();
    let url = node.amqps_url("localhost");
    let config =
        |file: &str, tls: &str| write_config(dir.path(), file, &url, tls, "amqps_chk", &queue, &t);
    let good = config("good.yaml", &pki.tls("ca.pem", true));
    let (code, out, err) = check(&good);
    assert_eq!(
        code,
        Some(0),
        "check with the right CA and certificate:\n{out}{err}"
    );

    // When `check` runs without a client certificate (the CA alone)
    let no_cert = config("no_cert.yaml", &pki.tls("ca.pem", false));
    let (code, out, err) = check(&no_cert);

    // Then it exits 1 with a FAIL line for the route naming the broker and why it could not
    // connect
    let show = format!("{}\n{out}{err}", std::fs::read_to_string(&no_cert).unwrap());
    assert_eq!(code, Some(1), "check without a client certificate:\n{show}");
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("inbound amqps_chk:"))
        .unwrap_or_else(|| panic!("no FAIL line for route amqps_chk:\n{show}"));
    let reason = fail.to_lowercase();
    assert!(reason.contains("broker r"), "{show}");
    // RabbitMQ closes the socket right after its `certificate_required` alert, so the alert
    // is often lost to a reset; either way the bridge says a client certificate is wanted.
    assert!(
        reason.contains("client certificate"),
        "the FAIL line does not say that a client certificate is needed:\n{show}"
    );
    // And the node refused the handshake because the certificate was missing
    wait_until(
        "the node logs that it required a client certificate",
        common::LIVENESS,
        || node.log().contains("certificate_required"),
    );

    // When `check` runs with a CA that did not sign the server's certificate
    let wrong_ca = config("wrong_ca.yaml", &pki.tls("other_ca.pem", true));
    let (code, out, err) = check(&wrong_ca);

    // Then it exits 1 with a FAIL line for the route naming the broker and the certificate it
    // could not verify
    let show = format!(
        "{}\n{out}{err}",
        std::fs::read_to_string(&wrong_ca).unwrap()
    );
    assert_eq!(code, Some(1), "check with a wrong CA:\n{show}");
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("inbound amqps_chk:"))
        .unwrap_or_else(|| panic!("no FAIL line for route amqps_chk:\n{show}"));
    let reason = fail.to_lowercase();
    assert!(
        reason.contains("broker r")
            && reason.contains("certificate")
            && (reason.contains("issuer") || reason.contains("verif")),
        "the FAIL line does not say the server certificate failed verification:\n{show}"
    );
    assert!(err.contains("failed the check"), "{show}");
}
