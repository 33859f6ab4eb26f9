//! A private Mosquitto and MQTT clients that run their own event loop thread.

use rumqttc::{Client, Connection, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::HashSet;
use std::net::TcpStream;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{LIVENESS, free_port, send_signal, temp_dir, unique, wait_child};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// How long a client waits for its CONNACK and SUBACKs.
const HANDSHAKE: Duration = Duration::from_secs(20);

/// A private mosquitto on a free `127.0.0.1` port.
///
/// Unlike the shared broker on 1883 it never drops QoS 1 messages for slow or offline
/// clients (`max_queued_messages 0`), allows 1000 in-flight messages per client, and persists
/// sessions in its own temp dir, so [`Mosquitto::stop`] + [`Mosquitto::restart`] keeps
/// persistent sessions, their subscriptions and their queued messages.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra_config: String,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with_extra_config("")
    }

    /// Like [`Mosquitto::start`], with `extra` appended verbatim to the generated config (e.g.
    /// a second `listener`); the main listener stays plain MQTT on [`Mosquitto::port`].
    pub fn start_with_extra_config(extra: &str) -> Mosquitto {
        let (dir, child, extra_config) = (temp_dir("mosquitto"), None, extra.to_owned());
        let mut m = Mosquitto {
            port: 0,
            dir,
            child,
            extra_config,
        };
        m.spawn_retrying(5, true);
        m
    }

    /// A private broker with a second listener, on the returned port, that serves the
    /// `server` certificate of `pki` (see `make_pki`) and requires a client certificate
    /// signed by its `ca`.
    pub fn start_tls(pki: &std::path::Path) -> (Mosquitto, u16) {
        let file = |name: &str| pki.join(name).display().to_string();
        let port = free_port();
        let (ca, cert, key) = (file("ca.pem"), file("server.pem"), file("server.key"));
        let broker = Mosquitto::start_with_extra_config(&format!(
            "listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\n"
        ));
        (broker, port)
    }

    /// SIGTERM and wait (mosquitto writes its persistence file on the way out). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), "TERM");
            if wait_child(&mut child, Duration::from_secs(30)).is_none() {
                kill(child);
                panic!("mosquitto on port {} ignored SIGTERM for 30 s", self.port);
            }
        }
    }

    /// Stops the broker and starts it again on the same port, config and persistence.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_retrying(20, false);
    }

    /// Spawns up to `attempts` times, each on a new free port if `new_port` (another process
    /// may take one before mosquitto binds it), else on the same (its old socket may linger).
    fn spawn_retrying(&mut self, attempts: u32, new_port: bool) {
        let mut last = String::new();
        for _ in 0..attempts {
            self.port = if new_port { free_port() } else { self.port };
            match self.spawn() {
                Ok(()) => return,
                Err(log) => last = log,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let port = self.port;
        panic!("mosquitto did not start on port {port} in {attempts} attempts:\n{last}");
    }

    /// Restarts without the persistence file: every session, subscription, queued and
    /// retained message is gone, as if the broker had been replaced.
    pub fn restart_clean(&mut self) {
        self.stop();
        let db = self.dir.path().join("mosquitto.db");
        if let Err(e) = std::fs::remove_file(&db)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            panic!("remove {}: {e}", db.display());
        }
        self.restart();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// Spawns the process and waits until the port accepts. `Err(log)` if it exited.
    fn spawn(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let config = dir.join("mosquitto.conf");
        let (port, extra, log) = (self.port, &self.extra_config, self.log_path());
        let (dir_name, log) = (dir.display(), log.display());
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             max_queued_bytes 0\nmax_inflight_messages 1000\npersistence true\n\
             persistence_location {dir_name}/\nautosave_interval 1800\nlog_dest file {log}\n\
             set_tcp_nodelay true\nuser root\n{extra}\n"
        );
        std::fs::write(&config, text).expect("write mosquitto.conf");
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {MOSQUITTO}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                kill(child);
                let (port, log) = (self.port, self.log());
                panic!("mosquitto on port {port} did not accept within 20 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill(child);
        }
    }
}

/// SIGKILL, and reap.
fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn qos(q: u8) -> QoS {
    let levels = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    *levels
        .get(usize::from(q))
        .unwrap_or_else(|| panic!("invalid MQTT QoS {q}"))
}

fn options(client_id: &str, port: u16, clean_session: bool) -> MqttOptions {
    tuned(
        MqttOptions::new(client_id, "127.0.0.1", port),
        clean_session,
    )
}

/// The settings every test client uses, on options that say where the broker is.
pub(crate) fn tuned(mut o: MqttOptions, clean_session: bool) -> MqttOptions {
    o.set_clean_session(clean_session)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(256 << 20, 256 << 20)
        .set_inflight(100);
    o
}

/// State shared between a client handle and its event loop thread.
struct Shared<S> {
    state: Mutex<S>,
    changed: Condvar,
}

impl<S> Shared<S> {
    fn new(s: S) -> Arc<Self> {
        let (state, changed) = (Mutex::new(s), Condvar::new());
        Arc::new(Shared { state, changed })
    }

    /// Locks, ignoring poison: a test thread that panicked while waiting must not take the
    /// event loop thread down with a second, confusing panic.
    fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        let r = f(&mut self.lock());
        self.changed.notify_all();
        r
    }

    fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.lock())
    }

    /// Waits until `done` holds and returns `done`'s view of the state; panics with `what`
    /// and `describe(state)` when `progress` (a monotonic counter) has not moved for `stall`.
    /// With a constant `progress`, `stall` is a plain deadline.
    fn wait<R>(
        &self,
        what: &str,
        stall: Duration,
        mut done: impl FnMut(&S) -> Option<R>,
        progress: impl Fn(&S) -> u64,
        describe: impl Fn(&S) -> String,
    ) -> R {
        let mut guard = self.lock();
        let mut last = progress(&guard);
        let mut since = Instant::now();
        loop {
            if let Some(r) = done(&guard) {
                return r;
            }
            let p = progress(&guard);
            if p != last {
                (last, since) = (p, Instant::now());
            } else if since.elapsed() >= stall {
                let state = describe(&guard);
                panic!("no progress for {stall:?} waiting for {what}: {state}");
            }
            guard = match self.changed.wait_timeout(guard, Duration::from_millis(100)) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// What a client's event loop has seen.
#[derive(Default)]
struct State {
    /// Packet ids sent (QoS 1/2) and not yet PUBACKed / PUBCOMPed.
    outstanding: HashSet<u16>,
    acked: u64,
    sent_qos0: u64,
    /// Unacked publishes known to be discarded on a reconnect without a session.
    lost: u64,
    messages: Vec<Received>,
    /// `session_present` of each CONNACK.
    connacks: Vec<bool>,
    subacks: u64,
    disconnect_sent: bool,
    connected: bool,
    errors: u64,
    last_error: Option<String>,
}

impl State {
    fn on_event(&mut self, event: Result<&Event, String>) {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.connected = true;
                self.connacks.push(ack.session_present);
                if !ack.session_present {
                    self.lost += self.outstanding.len() as u64;
                    self.outstanding.clear();
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(0))) => self.sent_qos0 += 1,
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                self.outstanding.insert(*pkid);
            }
            Ok(Event::Incoming(Packet::PubAck(rumqttc::PubAck { pkid })))
            | Ok(Event::Incoming(Packet::PubComp(rumqttc::PubComp { pkid }))) => {
                if self.outstanding.remove(pkid) {
                    self.acked += 1;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => self.subacks += 1,
            Ok(Event::Incoming(Packet::Publish(p))) => self.messages.push(Received {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
                qos: p.qos as u8,
                retain: p.retain,
                dup: p.dup,
            }),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => self.disconnect_sent = true,
            Ok(_) => {}
            Err(e) => {
                self.connected = false;
                self.errors += 1;
                self.last_error = Some(e);
            }
        }
    }
}

/// A client connected to `127.0.0.1:port` whose event loop runs on its own thread with its
/// own current-thread tokio runtime, so it never depends on (or blocks) the test's runtime.
/// The loop reconnects after 200 ms on errors and stops when this is dropped.
struct Conn {
    id: String,
    client: Client,
    shared: Arc<Shared<State>>,
    stop: Arc<AtomicBool>,
}

impl Conn {
    /// Connects and waits (up to 20 s) for the CONNACK.
    fn open(port: u16, client_id: &str, clean_session: bool) -> Conn {
        Conn::open_with(options(client_id, port, clean_session))
    }

    /// Like [`Conn::open`] with the broker and transport `options` name.
    fn open_with(options: MqttOptions) -> Conn {
        let client_id = options.client_id();
        let (client_id, where_) = (client_id.as_str(), options.broker_address().0);
        let (client, connection) = Client::new(options.clone(), 1000);
        let Connection { mut eventloop, .. } = connection;
        let shared = Shared::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, halt) = (shared.clone(), stop.clone());
        let run = move || {
            let rt = super::runtime();
            rt.block_on(async move {
                while !halt.load(Ordering::SeqCst) {
                    // A periodic wake-up to check `halt`; the poll future is only cancelled
                    // when stopping.
                    let polled = tokio::select! {
                        r = eventloop.poll() => r,
                        _ = wait_for_flag(&halt) => break,
                    };
                    match polled {
                        Ok(event) => s.update(|st| st.on_event(Ok(&event))),
                        Err(rumqttc::ConnectionError::RequestsDone) => break,
                        Err(e) => {
                            s.update(|st| st.on_event(Err(e.to_string())));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            });
        };
        std::thread::Builder::new()
            .name(format!("mqtt-{client_id}"))
            .spawn(run)
            .expect("spawn MQTT event loop thread");
        let conn = Conn {
            id: client_id.to_owned(),
            client,
            shared,
            stop,
        };
        conn.wait(&format!("CONNACK from {where_}"), |st| {
            (!st.connacks.is_empty()).then_some(())
        });
        conn
    }

    /// Waits up to 20 s for `done`.
    fn wait<R>(&self, what: &str, done: impl FnMut(&State) -> Option<R>) -> R {
        let describe = |st: &State| {
            let (c, s, e) = (&st.connacks, st.subacks, &st.last_error);
            format!("connacks {c:?}, subacks {s}, last error {e:?}")
        };
        let what = format!("{what} for {}", self.id);
        self.shared.wait(&what, HANDSHAKE, done, |_| 0, describe)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn wait_for_flag(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An MQTT publisher (clean session, unique client id, up to 100 QoS 1/2 messages in flight)
/// whose event loop runs on its own thread. Usable from sync and async tests.
///
/// With a clean session rumqttc discards unacknowledged publishes when it reconnects, so a
/// broker restart during [`Publisher::publish_all_confirmed`] makes it panic (reporting the
/// loss) rather than silently lose messages.
pub struct Publisher {
    pub client_id: String,
    conn: Conn,
    queued_qos12: AtomicU64,
    queued_qos0: AtomicU64,
}

impl Publisher {
    /// Connects to `127.0.0.1:port` and waits (up to 20 s) for the CONNACK.
    pub fn connect(port: u16) -> Publisher {
        Publisher::connect_with(options(&unique("pub"), port, true))
    }

    /// Connects as `options` say (e.g. over WebSockets) and waits for the CONNACK.
    pub fn connect_with(options: MqttOptions) -> Publisher {
        let client_id = options.client_id();
        Publisher {
            conn: Conn::open_with(options),
            client_id,
            queued_qos12: AtomicU64::new(0),
            queued_qos0: AtomicU64::new(0),
        }
    }

    /// Queues one publish (blocks only while rumqttc's request channel is full).
    pub fn publish(&self, topic: &str, qos: u8, payload: impl Into<Vec<u8>>) {
        self.send(topic, qos, false, payload.into());
    }

    fn send(&self, topic: &str, qos: u8, retain: bool, payload: Vec<u8>) {
        let counter = match qos {
            0 => &self.queued_qos0,
            _ => &self.queued_qos12,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        let published = self
            .conn
            .client
            .publish(topic, self::qos(qos), retain, payload);
        published.unwrap_or_else(|e| panic!("publish to {topic}: {e}"));
    }

    /// Publishes every message and returns once each is confirmed: PUBACK (QoS 1) or
    /// PUBCOMP (QoS 2), counted by packet id from the event loop; for QoS 0, once each has
    /// been written to the socket. At most 100 are in flight at a time.
    ///
    /// Also waits for anything queued earlier with [`Publisher::publish`]. Panics if the
    /// acknowledgements stop progressing for 30 s or publishes were lost on a reconnect.
    pub fn publish_all_confirmed(&self, msgs: Vec<(String, Vec<u8>)>, qos: u8) {
        for (topic, payload) in msgs {
            self.publish(&topic, qos, payload);
        }
        self.wait_confirmed();
    }

    /// Waits until everything published so far is confirmed.
    pub fn wait_confirmed(&self) {
        let want12 = self.queued_qos12.load(Ordering::SeqCst);
        let want0 = self.queued_qos0.load(Ordering::SeqCst);
        let id = &self.client_id;
        self.conn.shared.wait(
            &format!("publisher {id} confirmations"),
            Duration::from_secs(30),
            |st| {
                if st.lost > 0 {
                    panic!(
                        "publisher {id}: {} unacknowledged publishes were discarded when the \
                         connection was re-established without a session (last error: {:?})",
                        st.lost, st.last_error
                    );
                }
                (st.acked >= want12 && st.sent_qos0 >= want0).then_some(())
            },
            |st| st.acked + st.sent_qos0,
            |st| {
                format!(
                    "acked {}/{want12} (QoS 1/2), sent {}/{want0} (QoS 0), in flight {}, \
                     connected {}, connection errors {}, last error {:?}",
                    st.acked,
                    st.sent_qos0,
                    st.outstanding.len(),
                    st.connected,
                    st.errors,
                    st.last_error
                )
            },
        );
    }

    /// QoS 1/2 publishes confirmed so far.
    pub fn acked(&self) -> u64 {
        self.conn.shared.read(|st| st.acked)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.conn.client.try_disconnect();
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
}

impl Received {
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("UTF-8 payload")
    }
}

/// An MQTT subscriber that records every message it receives (acknowledging automatically)
/// on its own event loop thread.
pub struct Subscriber {
    pub client_id: String,
    /// Whether the broker resumed an existing session on the first CONNACK.
    pub session_present: bool,
    conn: Conn,
}

impl Subscriber {
    /// Clean session with a unique client id, subscribed to `filter` at `qos`.
    pub fn connect(port: u16, filter: &str, qos: u8) -> Subscriber {
        Subscriber::connect_with(port, &unique("sub"), true, &[(filter, qos)])
    }

    /// Connects with `client_id` and `clean_session`, then subscribes to each filter.
    /// Returns after the CONNACK and every SUBACK (each waited for up to 20 s). A persistent
    /// session (`clean_session = false`) that already exists needs no filters.
    pub fn connect_with(
        port: u16,
        client_id: &str,
        clean_session: bool,
        filters: &[(&str, u8)],
    ) -> Subscriber {
        Subscriber::connect_options(options(client_id, port, clean_session), filters)
    }

    /// Connects as `options` say (e.g. over WebSockets), then subscribes to each filter.
    pub fn connect_options(options: MqttOptions, filters: &[(&str, u8)]) -> Subscriber {
        let client_id = options.client_id();
        let conn = Conn::open_with(options);
        for (filter, q) in filters {
            let subscribed = conn.client.subscribe(*filter, qos(*q));
            subscribed.unwrap_or_else(|e| panic!("subscribe {filter}: {e}"));
        }
        let want = filters.len() as u64;
        conn.wait("SUBACKs", |st| (st.subacks >= want).then_some(()));
        let session_present = conn.shared.read(|st| st.connacks[0]);
        Subscriber {
            client_id,
            session_present,
            conn,
        }
    }

    pub fn count(&self) -> usize {
        self.conn.shared.read(|st| st.messages.len())
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        self.conn.shared.read(|st| st.messages.clone())
    }

    /// Waits until at least `n` messages arrived; panics after `timeout` (a liveness deadline).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.conn.shared.wait(
            &format!("{n} messages for subscriber {}", self.client_id),
            timeout,
            |st| (st.messages.len() >= n).then(|| st.messages.clone()),
            |_| 0,
            |st| {
                let (got, e) = (st.messages.len(), &st.last_error);
                format!("got {got} of {n} messages (last error {e:?})")
            },
        )
    }

    /// Sends DISCONNECT (so a persistent session is kept without a will), waits for it to be
    /// written (up to 10 s), then stops the event loop.
    pub fn disconnect(self) {
        let _ = self.conn.client.disconnect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.conn.shared.read(|st| st.disconnect_sent) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs an MQTT 5 client as `client_id` (clean start or not): `f` queues its requests
/// (subscribes, QoS 1 publishes), then the client runs until `answers` SUBACKs and PUBACKs
/// have come, and disconnects.
pub fn with_mqtt5(
    port: u16,
    client_id: &str,
    clean_start: bool,
    answers: usize,
    f: impl FnOnce(&rumqttc::v5::AsyncClient),
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let rt = super::runtime();
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_start(clean_start);
    if !clean_start {
        options.set_session_expiry_interval(Some(3600));
    }
    let (client, mut eventloop) = AsyncClient::new(options, answers + 10);
    f(&client);
    rt.block_on(async {
        let start = Instant::now();
        let mut answered = 0;
        while answered < answers {
            let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
                .await
                .expect("MQTT 5 client: no event within 10 s")
                .expect("MQTT 5 client connection");
            if let Event::Incoming(Packet::SubAck(_) | Packet::PubAck(_)) = event {
                answered += 1;
            }
            assert!(start.elapsed() < LIVENESS, "MQTT 5 client did not finish");
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
    });
}

/// Publishes one retained message at `qos` (1 or 2) and waits for its confirmation, so the
/// next subscriber of a matching filter receives it as soon as its subscription is in place.
pub fn publish_retained(port: u16, topic: &str, qos: u8, payload: &str) {
    assert!(qos > 0, "a retained probe needs QoS 1 or 2, not {qos}");
    let publisher = Publisher::connect(port);
    publisher.send(topic, qos, true, payload.as_bytes().to_vec());
    publisher.wait_confirmed();
}

/// `{"seq":N}` for each N of `seqs`, each on the topic `topic(N)`.
pub fn seq_messages(topic: impl Fn(i64) -> String, seqs: Range<i64>) -> Vec<(String, Vec<u8>)> {
    seqs.map(|seq| (topic(seq), format!(r#"{{"seq":{seq}}}"#).into_bytes()))
        .collect()
}
