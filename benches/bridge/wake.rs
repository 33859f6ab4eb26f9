//! Outbound latency: from an INSERT's commit to a subscriber receiving the row, for a route
//! polling every 5 s with `wake` (PostgreSQL LISTEN/NOTIFY from a trigger) and without, both
//! routes in the same mqdb process and the same run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::clients;
use crate::common::{Db, Mosquitto, TempTable, unique};
use crate::running::Running;

/// Inserts per route.
pub const ROWS: usize = 200;
/// Both routes' poll interval.
const INTERVAL: &str = "5s";

/// The latencies of one route, sorted.
pub struct Latencies {
    pub label: String,
    pub sorted: Vec<Duration>,
}

impl Latencies {
    /// The `q`-quantile (nearest rank).
    pub fn quantile(&self, q: f64) -> Duration {
        let rank = ((q * self.sorted.len() as f64).ceil() as usize).clamp(1, self.sorted.len());
        self.sorted[rank - 1]
    }
}

/// Inserts `rows` single rows into `table`, spaced `spacing` ms apart at random (min,
/// max), and returns, sorted, the time from each INSERT's return (autocommit: its commit)
/// to `topic`'s subscriber receiving the row.
pub fn insert_and_time(
    db: &Db,
    table: &str,
    arrivals: &Arrivals,
    topic: &str,
    rows: usize,
    spacing: (u64, u64),
    random: &mut XorShift,
) -> Vec<Duration> {
    let mut committed = HashMap::with_capacity(rows);
    for id in 1..=rows as i64 {
        let (low, high) = spacing;
        std::thread::sleep(Duration::from_millis(
            low + random.next() % (high - low + 1),
        ));
        db.exec(&format!("INSERT INTO {table} VALUES ({id}, 'r')"));
        committed.insert(id, Instant::now());
    }
    let arrived = arrivals.wait(topic, rows, Duration::from_secs(60));
    let mut sorted: Vec<Duration> = committed
        .iter()
        .map(|(id, at)| {
            let got = arrived
                .get(id)
                .unwrap_or_else(|| panic!("row {id} not received"));
            got.saturating_duration_since(*at)
        })
        .collect();
    sorted.sort();
    sorted
}

/// Runs the two routes (the woken one named `bench`, whose counters [`Running`] reads) and returns their latencies: with `wake` first, then without.
pub fn run(broker: &Mosquitto) -> [Latencies; 2] {
    let db = Db::Postgres;
    let columns = "id INTEGER PRIMARY KEY, v TEXT";
    let woken = TempTable::create(&db, "bench_wake", columns);
    let timed = TempTable::create(&db, "bench_timed", columns);
    let channel = unique("bench_wake");
    let function = format!("{}_notify", woken.name);
    db.exec(&format!(
        "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS \
         'BEGIN PERFORM pg_notify(TG_ARGV[0], ''''); RETURN NULL; END'"
    ));
    db.exec(&format!(
        "CREATE TRIGGER {t}_inserted AFTER INSERT ON {t} \
         FOR EACH STATEMENT EXECUTE FUNCTION {function}('{channel}')",
        t = woken.name
    ));
    let prefix = unique("latency");
    let arrivals = Arrivals::start(broker.port, &format!("{prefix}/#"));
    let route = |name: &str, table: &str, extra: &str| {
        format!(
            r#"  - name: {name}
    database: pg
    query: SELECT id, v FROM {table} WHERE id > ? ORDER BY id
    track: id
    start: 0
    interval: {INTERVAL}
    broker: mosquitto
    topic: {prefix}/{name}
    qos: 1
{extra}"#
        )
    };
    let running = Running::start(&format!(
        "brokers:\n  mosquitto: {{ url: \"{url}\", client_id: \"{client}\" }}\n\
         databases:\n  pg: {{ connection_string: \"{cs}\" }}\noutbound:\n{woken_route}{timed_route}",
        url = broker.url(),
        client = unique("mqdb"),
        cs = db.connection_string(),
        woken_route = route(
            "bench",
            &woken.name,
            &format!("    wake: {{ listen: {channel} }}\n")
        ),
        timed_route = route("timed", &timed.name, ""),
    ));
    running
        .bridge
        .wait_for_log("wake listener connected", Duration::from_secs(60));

    let mut result = Vec::new();
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    for (name, table, label) in [
        (
            "bench",
            &woken.name,
            "with wake (LISTEN/NOTIFY), interval 5 s",
        ),
        ("timed", &timed.name, "without wake, interval 5 s"),
    ] {
        let topic = format!("{prefix}/{name}");
        let sorted = insert_and_time(&db, table, &arrivals, &topic, ROWS, (10, 100), &mut random);
        result.push(Latencies {
            label: label.to_string(),
            sorted,
        });
    }
    assert_eq!(running.dead_letters(), 0, "unexpected dead letters");
    let wakes = running.counter("mqdb_outbound_wakes_total");
    println!("  woken polls: {wakes}");
    running.stop();
    let _ = db.try_exec(&format!("DROP FUNCTION IF EXISTS {function} CASCADE"));
    let [a, b]: [Latencies; 2] = result.try_into().ok().expect("two routes");
    [a, b]
}

/// Small deterministic pseudo-random numbers for the spacing of inserts.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A QoS 1 subscriber noting when each message arrived, by topic and the payload's `id`.
pub struct Arrivals {
    seen: Arc<Mutex<HashMap<String, HashMap<i64, Instant>>>>,
    stop: Arc<AtomicBool>,
}

impl Arrivals {
    pub fn start(port: u16, filter: &str) -> Arrivals {
        let seen = Arc::new(Mutex::new(HashMap::<String, HashMap<i64, Instant>>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let (s, st, r, filter) = (
            seen.clone(),
            stop.clone(),
            ready.clone(),
            filter.to_string(),
        );
        let mut options = MqttOptions::new(unique("arrivals"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        std::thread::spawn(move || {
            clients::runtime().block_on(async move {
                let (client, mut eventloop) = AsyncClient::new(options, 100);
                client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
                while !st.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            let at = Instant::now();
                            let row: serde_json::Value =
                                serde_json::from_slice(&p.payload).expect("JSON row");
                            let id = row["id"].as_i64().expect("id");
                            let mut seen = s.lock().unwrap();
                            seen.entry(p.topic.clone())
                                .or_default()
                                .entry(id)
                                .or_insert(at);
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            r.store(true, Ordering::Relaxed)
                        }
                        Ok(Ok(_)) | Err(_) => {}
                        Ok(Err(_)) if st.load(Ordering::Relaxed) => break,
                        Ok(Err(e)) => panic!("latency subscriber: {e}"),
                    }
                }
                let _ = client.disconnect().await;
            })
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "no SUBACK in 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        Arrivals { seen, stop }
    }

    /// The arrival times on `topic` once `n` rows arrived there.
    pub fn wait(&self, topic: &str, n: usize, timeout: Duration) -> HashMap<i64, Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self
                .seen
                .lock()
                .unwrap()
                .get(topic)
                .cloned()
                .unwrap_or_default();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} rows on {topic} after {timeout:?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
