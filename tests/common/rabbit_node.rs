//! A private RabbitMQ node for TLS tests, so the shared broker (127.0.0.1:5672, no TLS
//! listener) is never reconfigured or restarted.
//!
//! [`RabbitNode::start_tls`] runs `/usr/lib/rabbitmq/bin/rabbitmq-server` in the foreground,
//! as the current user (root), in its own process group, with everything in a temp dir: node
//! name `mqdbtls-…@localhost`, mnesia and log dirs, `rabbitmq.conf`, an empty plugins file,
//! an empty `rabbitmq-env.conf` (the system one names the shared node) and `HOME` (its Erlang
//! cookie). It listens on free `127.0.0.1` ports: plain AMQP ([`RabbitNode::amqp_port`], for
//! the test's own client) and TLS ([`RabbitNode::tls_port`]) with `verify_peer` and
//! `fail_if_no_peer_cert`, so only clients with a certificate the given CA signed get in.
//! `guest` may connect from anywhere (`loopback_users = none`).
//!
//! Dropping it stops the node: SIGTERM to its process group (the start script stops the VM
//! gracefully), SIGKILL to the group if that takes more than 30 s. This also happens when the
//! test panics.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

use super::{free_port, unique, wait_child};

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// Liveness deadline for the node to accept connections (it usually takes about 10 s).
const START_DEADLINE: Duration = Duration::from_secs(120);

/// A private RabbitMQ node with a plain and a TLS (client certificate required) listener.
pub struct RabbitNode {
    /// `mqdbtls-…@localhost`
    pub node: String,
    /// Plain AMQP on 127.0.0.1.
    pub amqp_port: u16,
    /// AMQP over TLS on 127.0.0.1; the client must present a certificate.
    pub tls_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RabbitNode {
    /// Starts a node whose TLS listener uses the PEM files `server_cert` / `server_key` and
    /// trusts client certificates signed by `ca`. Retries with other ports if one was taken.
    pub fn start_tls(ca: &Path, server_cert: &Path, server_key: &Path) -> RabbitNode {
        let dir = tempfile::Builder::new()
            .prefix("mqdb-rabbit-node-")
            .tempdir()
            .expect("temp dir for the RabbitMQ node");
        let mut node = RabbitNode {
            node: String::new(),
            amqp_port: 0,
            tls_port: 0,
            dir,
            child: None,
        };
        let mut last = String::new();
        for attempt in 0..3 {
            node.node = format!("{}@localhost", unique("mqdbtls").replace('_', "-"));
            node.amqp_port = free_port();
            node.tls_port = free_port();
            let dist_port = free_port();
            let base = node.dir.path().join(format!("attempt{attempt}"));
            match node.spawn(&base, dist_port, ca, server_cert, server_key) {
                Ok(()) => return node,
                // Most likely a free port was taken in between; try others.
                Err(log) => last = log,
            }
        }
        panic!("the private RabbitMQ node did not start after 3 attempts; last output:\n{last}");
    }

    /// `amqp://guest:guest@127.0.0.1:AMQP_PORT/%2f`
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `amqps://guest:guest@HOST:TLS_PORT/%2f`
    pub fn amqps_url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.tls_port)
    }

    /// The node's log so far (its log file, then the start script's stdout and stderr).
    pub fn log(&self) -> String {
        let mut text = String::new();
        for base in self.attempt_dirs() {
            let log = base.join("log").join(format!("{}.log", self.node));
            text.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        text.push_str(
            &std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default(),
        );
        text
    }

    /// Runs `rabbitmqctl -n NODE -q ARGS --no-table-headers` against this node and returns its
    /// stdout lines split on tabs (about a second per call).
    pub fn ctl_rows(&self, args: &[&str]) -> Vec<Vec<String>> {
        let out = self.ctl(&[&["-q"], args, &["--no-table-headers"]].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?} failed ({}): {stdout}{}",
            self.node,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split('\t').map(|f| f.trim().to_owned()).collect())
            .collect()
    }

    /// The node's AMQP connections: `[user, port, ssl, peer_cert_subject]` per connection,
    /// `port` being the node's listener the client connected to.
    pub fn connections(&self) -> Vec<Vec<String>> {
        self.ctl_rows(&[
            "list_connections",
            "user",
            "port",
            "ssl",
            "peer_cert_subject",
        ])
    }

    /// Declares a durable queue over the plain listener (the queue lives as long as the node).
    pub fn declare_durable_queue(&self, queue: &str) {
        self.with_channel(|channel| async move {
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("declare durable queue {queue}: {e}"));
        });
    }

    /// The number of messages ready in `queue` (a passive declare over the plain listener;
    /// messages a consumer holds unacknowledged are not counted).
    pub fn ready_count(&self, queue: &str) -> u32 {
        self.with_channel(|channel| async move {
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("passive declare of queue {queue}: {e}"))
                .message_count()
        })
    }

    /// Publishes one persistent message per payload to the default exchange, routed to
    /// `queue` by its name, over the plain listener, and waits for every publisher confirm.
    pub fn publish_to_queue(&self, queue: &str, payloads: Vec<Vec<u8>>) {
        self.with_channel(|channel| async move {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirm.select");
            let mut pending = Vec::with_capacity(payloads.len());
            for payload in &payloads {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("publish to queue {queue}: {e}"));
                pending.push(confirm);
            }
            for (i, confirm) in pending.into_iter().enumerate() {
                match confirm.await {
                    Ok(Confirmation::Ack(_)) => {}
                    other => panic!("publish #{i} to {queue} was not confirmed: {other:?}"),
                }
            }
        });
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
            signal_group(group, "KILL");
            let _ = child.wait();
            wait_group_gone(group, Duration::from_secs(10));
        }
    }

    /// Runs `f` with a fresh connection and channel to the plain listener, on a private
    /// runtime, and closes the connection afterwards.
    fn with_channel<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(lapin::Channel) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime for the AMQP test client");
        let url = self.amqp_url();
        rt.block_on(async {
            let conn = Connection::connect(&url, ConnectionProperties::default())
                .await
                .unwrap_or_else(|e| panic!("connect {url}: {e}"));
            let channel = conn.create_channel().await.expect("open an AMQP channel");
            let out = f(channel).await;
            let _ = conn.close(200, "bye".into()).await;
            out
        })
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(RABBITMQCTL)
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .env("HOME", self.dir.path().join("home"))
            .env(
                "RABBITMQ_CONF_ENV_FILE",
                self.dir.path().join("rabbitmq-env.conf"),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {RABBITMQCTL}: {e}"))
    }

    fn attempt_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("attempt"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        dirs
    }

    /// Writes the node's files under `base`, starts it and waits until both listeners accept.
    /// `Err(output)` if it exited first.
    fn spawn(
        &mut self,
        base: &Path,
        dist_port: u16,
        ca: &Path,
        server_cert: &Path,
        server_key: &Path,
    ) -> Result<(), String> {
        let dir = self.dir.path();
        let home = dir.join("home");
        for d in [base.join("mnesia"), base.join("log"), home.clone()] {
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        let config = base.join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 listeners.ssl.default = 127.0.0.1:{tls}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n\
                 loopback_users = none\n",
                amqp = self.amqp_port,
                tls = self.tls_port,
                ca = ca.display(),
                cert = server_cert.display(),
                key = server_key.display(),
            ),
        )
        .expect("write rabbitmq.conf");
        let plugins = dir.join("enabled_plugins");
        std::fs::write(&plugins, "[].\n").expect("write enabled_plugins");
        let env_file = dir.join("rabbitmq-env.conf");
        std::fs::write(&env_file, "").expect("write rabbitmq-env.conf");
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
                signal_group(child.id(), "KILL");
                wait_group_gone(child.id(), Duration::from_secs(10));
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if accepts(self.amqp_port) && accepts(self.tls_port) {
                eprintln!(
                    "private RabbitMQ node {} accepts on {} (AMQP) and {} (TLS) after {:?}",
                    self.node,
                    self.amqp_port,
                    self.tls_port,
                    started.elapsed()
                );
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_DEADLINE {
                signal_group(child.id(), "KILL");
                let _ = child.wait();
                wait_group_gone(child.id(), Duration::from_secs(10));
                panic!(
                    "the private RabbitMQ node {} did not accept on ports {} and {} within \
                     {START_DEADLINE:?}:\n{}",
                    self.node,
                    self.amqp_port,
                    self.tls_port,
                    self.log()
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

/// Sends `signal` to every process of the process group `group` (which this module created
/// with the node's start script as its leader).
fn signal_group(group: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{group}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until no process of `group` is left (`kill -0` fails); false after `timeout`.
fn wait_group_gone(group: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        let alive = Command::new("kill")
            .arg("-0")
            .arg("--")
            .arg(format!("-{group}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !alive {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
