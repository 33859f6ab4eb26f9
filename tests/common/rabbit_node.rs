//! A private RabbitMQ node for TLS and WebSocket tests, so the shared broker (127.0.0.1:5672,
//! no TLS listener, no plugin but STOMP) is never reconfigured or restarted.
//!
//! It runs `rabbitmq-server` in the foreground in its own process group, with everything in a
//! temp dir (node name, mnesia and log dirs, config, an empty plugins file, an empty
//! `rabbitmq-env.conf` since the system one names the shared node, and `HOME` for its Erlang
//! cookie). Dropping it stops the node: SIGTERM to its process group, SIGKILL if that takes
//! more than 30 s.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::rabbit::ctl_rows;
use super::{Rabbit, free_port, temp_dir, unique, wait_child};

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// Liveness deadline for the node to accept connections (it usually takes about 10 s).
const START_DEADLINE: Duration = Duration::from_secs(120);

/// A private RabbitMQ node with a plain AMQP listener and either an AMQP TLS listener
/// ([`RabbitNode::start_tls`]) or MQTT over WebSockets ([`RabbitNode::start_web_mqtt`]).
pub struct RabbitNode {
    pub node: String,
    pub amqp_port: u16,
    /// The client must present a certificate (`start_tls` only, else 0).
    pub tls_port: u16,
    /// MQTT 3.1.1 over `ws://` on [`WEB_MQTT_PATH`] (`start_web_mqtt` only, else 0).
    pub ws_port: u16,
    /// MQTT 3.1.1 over `wss://` (`start_web_mqtt` only, else 0); no client certificate.
    pub wss_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Where the node's web MQTT listeners serve MQTT.
pub const WEB_MQTT_PATH: &str = "/ws";

/// The listeners a node opens besides plain AMQP.
#[derive(Clone, Copy)]
enum Flavor {
    AmqpTls,
    WebMqtt,
}

/// The PEM files a node's TLS listener serves and trusts.
struct Pem<'a> {
    ca: &'a Path,
    cert: &'a Path,
    key: &'a Path,
}

impl RabbitNode {
    /// Starts a node whose TLS listener uses the PEM files `server_cert` / `server_key` and
    /// trusts client certificates signed by `ca`. Retries with other ports if one was taken.
    pub fn start_tls(ca: &Path, server_cert: &Path, server_key: &Path) -> RabbitNode {
        let pem = Pem {
            ca,
            cert: server_cert,
            key: server_key,
        };
        RabbitNode::start(Flavor::AmqpTls, &pem)
    }

    /// Starts a node with the `rabbitmq_web_mqtt` plugin: MQTT over `ws://` and over `wss://`
    /// (serving `server.pem` / `server.key` of `pki`, see `make_pki`), AMQP over TLS without
    /// client certificates on `tls_port`, no MQTT TCP listener,
    /// user guest/guest allowed from loopback. RabbitMQ 3.10 speaks MQTT 3.1.1 only.
    pub fn start_web_mqtt(pki: &Path) -> RabbitNode {
        let (ca, cert, key) = (
            pki.join("ca.pem"),
            pki.join("server.pem"),
            pki.join("server.key"),
        );
        let pem = Pem {
            ca: &ca,
            cert: &cert,
            key: &key,
        };
        RabbitNode::start(Flavor::WebMqtt, &pem)
    }

    fn start(flavor: Flavor, pem: &Pem<'_>) -> RabbitNode {
        let dir = temp_dir("rabbit-node");
        let mut node = RabbitNode {
            node: String::new(),
            amqp_port: 0,
            tls_port: 0,
            ws_port: 0,
            wss_port: 0,
            dir,
            child: None,
        };
        let mut last = String::new();
        for attempt in 0..3 {
            node.node = format!("{}@localhost", unique("mqdbtls").replace('_', "-"));
            node.amqp_port = free_port();
            match flavor {
                Flavor::AmqpTls => node.tls_port = free_port(),
                Flavor::WebMqtt => {
                    (node.ws_port, node.wss_port) = (free_port(), free_port());
                    node.tls_port = free_port();
                }
            }
            let dist_port = free_port();
            let base = node.dir.path().join(format!("attempt{attempt}"));
            match node.spawn(&base, dist_port, flavor, pem) {
                Ok(()) => return node,
                // Most likely a free port was taken in between; try others.
                Err(log) => last = log,
            }
        }
        panic!("the private RabbitMQ node did not start after 3 attempts; last output:\n{last}");
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}{WEB_MQTT_PATH}", self.ws_port)
    }

    /// `wss://HOST:PORT/ws`.
    pub fn wss_url(&self, host: &str) -> String {
        format!("wss://{host}:{}{WEB_MQTT_PATH}", self.wss_port)
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn amqps_url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.tls_port)
    }

    /// The node's log so far (its log files, then the start script's stdout and stderr).
    pub fn log(&self) -> String {
        let mut text = String::new();
        for attempt in 0..3 {
            let base = self.dir.path().join(format!("attempt{attempt}"));
            let log = base.join("log").join(format!("{}.log", self.node));
            text.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        let out = self.dir.path().join("server.out");
        text + &std::fs::read_to_string(out).unwrap_or_default()
    }

    /// Runs `rabbitmqctl -n NODE -q ARGS --no-table-headers` against this node and returns its
    /// stdout lines split on tabs (about a second per call).
    pub fn ctl_rows(&self, args: &[&str]) -> Vec<Vec<String>> {
        let mut cmd = Command::new(RABBITMQCTL);
        let dir = self.dir.path();
        cmd.arg("-n").arg(&self.node).env("HOME", dir.join("home"));
        cmd.env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"));
        ctl_rows(cmd, args)
    }

    /// The node's AMQP connections: `[user, port, ssl, peer_cert_subject]` per connection,
    /// `port` being the node's listener the client connected to.
    pub fn connections(&self) -> Vec<Vec<String>> {
        let list = "list_connections user port ssl peer_cert_subject";
        self.ctl_rows(&list.split(' ').collect::<Vec<_>>())
    }

    /// A client of the plain listener.
    pub fn client(&self) -> Rabbit {
        Rabbit::connect_to(&self.amqp_url())
    }

    /// Stops the node and waits until its processes are gone. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = child.id();
        signal_group(group, "TERM");
        let stopped = wait_child(&mut child, Duration::from_secs(30)).is_some()
            && wait_group_gone(group, Duration::from_secs(10));
        if !stopped {
            kill_group(&mut child);
        }
    }

    /// The `rabbitmq.conf` and `enabled_plugins` text for `flavor`.
    fn config_text(&self, flavor: Flavor, pem: &Pem<'_>) -> (String, &'static str) {
        let (ca, cert, key) = (pem.ca.display(), pem.cert.display(), pem.key.display());
        let amqp = self.amqp_port;
        let common = format!("listeners.tcp.default = 127.0.0.1:{amqp}\nloopback_users = none\n");
        match flavor {
            Flavor::AmqpTls => {
                let tls = self.tls_port;
                let text = format!(
                    "{common}listeners.ssl.default = 127.0.0.1:{tls}\n\
                     ssl_options.cacertfile = {ca}\n\
                     ssl_options.certfile = {cert}\n\
                     ssl_options.keyfile = {key}\n\
                     ssl_options.verify = verify_peer\n\
                     ssl_options.fail_if_no_peer_cert = true\n"
                );
                (text, "[].\n")
            }
            Flavor::WebMqtt => {
                let (ws, wss, tls) = (self.ws_port, self.wss_port, self.tls_port);
                // No MQTT TCP listener: the shared broker owns 1883. The MQTT prefetch (10 by
                // default) caps the messages a subscriber holds unacknowledged, as Mosquitto's
                // max_inflight_messages does; mqdb acknowledges after the commit and needs more.
                let text = format!(
                    "{common}mqtt.listeners.tcp = none\n\
                     mqtt.listeners.ssl = none\n\
                     mqtt.prefetch = 2000\n\
                     listeners.ssl.default = 127.0.0.1:{tls}\n\
                     ssl_options.cacertfile = {ca}\n\
                     ssl_options.certfile = {cert}\n\
                     ssl_options.keyfile = {key}\n\
                     ssl_options.verify = verify_none\n\
                     ssl_options.fail_if_no_peer_cert = false\n\
                     web_mqtt.ws_path = {WEB_MQTT_PATH}\n\
                     web_mqtt.tcp.ip = 127.0.0.1\n\
                     web_mqtt.tcp.port = {ws}\n\
                     web_mqtt.ssl.ip = 127.0.0.1\n\
                     web_mqtt.ssl.port = {wss}\n\
                     web_mqtt.ssl.cacertfile = {ca}\n\
                     web_mqtt.ssl.certfile = {cert}\n\
                     web_mqtt.ssl.keyfile = {key}\n"
                );
                (text, "[rabbitmq_web_mqtt].\n")
            }
        }
    }

    /// The ports that must accept before the node counts as started.
    fn ports(&self) -> Vec<u16> {
        let all = [self.amqp_port, self.tls_port, self.ws_port, self.wss_port];
        all.into_iter().filter(|p| *p != 0).collect()
    }

    /// Writes the node's files under `base`, starts it and waits until its listeners accept.
    /// `Err(output)` if it exited first.
    fn spawn(
        &mut self,
        base: &Path,
        dist_port: u16,
        flavor: Flavor,
        pem: &Pem<'_>,
    ) -> Result<(), String> {
        let dir = self.dir.path();
        let home = dir.join("home");
        for d in [base.join("mnesia"), base.join("log"), home.clone()] {
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()))
        };
        let config = base.join("rabbitmq.conf");
        let (text, plugins_text) = self.config_text(flavor, pem);
        write(&config, &text);
        let (plugins, env_file) = (dir.join("enabled_plugins"), dir.join("rabbitmq-env.conf"));
        write(&plugins, plugins_text);
        write(&env_file, "");
        let out_path = dir.join("server.out");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", out_path.display()));
        let err = out.try_clone().expect("clone the output file handle");
        let mut child = Command::new(RABBITMQ_SERVER)
            .env("HOME", &home)
            .env("RABBITMQ_CONF_ENV_FILE", &env_file)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .current_dir(dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {RABBITMQ_SERVER}: {e}"));
        let started = Instant::now();
        let accepts = |port: u16| TcpStream::connect(("127.0.0.1", port)).is_ok();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // The VM may outlive the start script for a moment.
                kill_group(&mut child);
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            let (node, ports) = (&self.node, self.ports());
            if ports.iter().all(|p| accepts(*p)) {
                let after = started.elapsed();
                eprintln!("private RabbitMQ node {node} accepts on {ports:?} after {after:?}");
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_DEADLINE {
                kill_group(&mut child);
                let log = self.log();
                panic!(
                    "the private RabbitMQ node {node} did not accept on ports {ports:?} \
                     within {START_DEADLINE:?}:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `kill -SIGNAL -- -GROUP` for the process group this module created with the node's
/// start script as its leader; whether it succeeded (with signal `0`: whether any is left).
fn signal_group(group: u32, signal: &str) -> bool {
    let kill = Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{group}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    kill.is_ok_and(|s| s.success())
}

/// Waits until no process of `group` is left; false after `timeout`.
fn wait_group_gone(group: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while signal_group(group, "0") {
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// SIGKILL to the whole group, and waits for it.
fn kill_group(child: &mut Child) {
    signal_group(child.id(), "KILL");
    let _ = child.wait();
    wait_group_gone(child.id(), Duration::from_secs(10));
}
