//! What each route has done and whether its broker and database are reachable: counters
//! the routes bump as they work, read by `/metrics`, `/health` and the log summary.
//!
//! Everything is an atomic so the hot path never takes a lock; readers see each value
//! at some instant, not one consistent snapshot, which is what Prometheus expects.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value as Json, json};

/// Upper bounds (seconds) of the batch latency histogram: a database commit takes from a
/// millisecond on loopback to seconds on a loaded server.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Inbound,
    Outbound,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Inbound => "inbound",
            Kind::Outbound => "outbound",
        }
    }
}

/// Every route's metrics, in the order the routes were registered.
pub struct Metrics {
    routes: Mutex<Vec<Arc<RouteMetrics>>>,
    epoch: Instant,
    /// The `instance:` name this process runs as; empty until `run` sets it.
    instance: Mutex<String>,
    /// Each lease this process keeps: its epoch while held, 0 while standing by.
    leases: Mutex<std::collections::BTreeMap<String, Arc<AtomicI64>>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics {
            routes: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            instance: Mutex::new(String::new()),
            leases: Mutex::new(Default::default()),
        })
    }

    pub fn set_instance(&self, name: &str) {
        *self.instance.lock().expect("metrics lock") = name.to_string();
    }

    fn instance(&self) -> String {
        self.instance.lock().expect("metrics lock").clone()
    }

    /// The gauge of lease `name`: the epoch while this process holds it, else 0.
    pub fn lease(&self, name: &str) -> Arc<AtomicI64> {
        self.leases
            .lock()
            .expect("metrics lock")
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn lease_epochs(&self) -> Vec<(String, i64)> {
        let leases = self.leases.lock().expect("metrics lock");
        leases
            .iter()
            .map(|(name, epoch)| (name.clone(), epoch.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn route(&self, name: &str, kind: Kind, broker: &str, database: &str) -> Arc<RouteMetrics> {
        let route = Arc::new(RouteMetrics {
            name: name.to_string(),
            kind,
            broker: broker.to_string(),
            database: database.to_string(),
            epoch: self.epoch,
            received: AtomicU64::new(0),
            written: AtomicU64::new(0),
            published: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            wakes: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            batch: Histogram::default(),
            broker_up: AtomicBool::new(false),
            database_up: AtomicBool::new(false),
            standby: AtomicBool::new(false),
            behind_since_ms: AtomicU64::new(0),
            visibility_wait_ms: AtomicU64::new(0),
        });
        self.routes
            .lock()
            .expect("metrics lock")
            .push(route.clone());
        route
    }

    /// Drops a route that a reload stopped from what is reported.
    pub fn retire(&self, route: &Arc<RouteMetrics>) {
        self.routes
            .lock()
            .expect("metrics lock")
            .retain(|r| !Arc::ptr_eq(r, route));
    }

    pub fn routes(&self) -> Vec<Arc<RouteMetrics>> {
        self.routes.lock().expect("metrics lock").clone()
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let routes = self.routes();
        let mut out = String::with_capacity(4096);
        type Counter = fn(&RouteMetrics) -> &AtomicU64;
        let counters: [(&str, &str, Option<Kind>, Counter); 7] = [
            (
                "mqdb_messages_received_total",
                "Messages taken from the broker (inbound).",
                Some(Kind::Inbound),
                |r| &r.received,
            ),
            (
                "mqdb_rows_written_total",
                "Rows committed to the database (inbound).",
                Some(Kind::Inbound),
                |r| &r.written,
            ),
            (
                "mqdb_rows_read_total",
                "Rows returned by the route's query (outbound).",
                Some(Kind::Outbound),
                |r| &r.received,
            ),
            (
                "mqdb_messages_published_total",
                "Messages the broker confirmed (outbound).",
                Some(Kind::Outbound),
                |r| &r.published,
            ),
            (
                "mqdb_outbound_wakes_total",
                "Polls a PostgreSQL notification started before the interval was over (outbound `wake`).",
                Some(Kind::Outbound),
                |r| &r.wakes,
            ),
            (
                "mqdb_dead_letters_total",
                "Dead letters stored.",
                None,
                |r| &r.dead_letters,
            ),
            (
                "mqdb_retries_total",
                "Retries after a broker or database outage.",
                None,
                |r| &r.retries,
            ),
        ];
        for (name, help, kind, counter) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for r in routes.iter().filter(|r| kind.is_none_or(|k| r.kind == k)) {
                let value = counter(r).load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{{}}} {value}", r.labels());
            }
        }
        let _ = writeln!(
            out,
            "# HELP mqdb_in_flight Messages received but not yet acknowledged (inbound), or published but not yet confirmed (outbound).\n# TYPE mqdb_in_flight gauge"
        );
        for r in &routes {
            let _ = writeln!(out, "mqdb_in_flight{{{}}} {}", r.labels(), r.in_flight());
        }
        let _ = writeln!(
            out,
            "# HELP mqdb_outbound_lag_seconds Time since the route's stored position last caught up with its query; 0 when caught up.\n# TYPE mqdb_outbound_lag_seconds gauge"
        );
        for r in routes.iter().filter(|r| r.kind == Kind::Outbound) {
            let _ = writeln!(
                out,
                "mqdb_outbound_lag_seconds{{{}}} {:.3}",
                r.labels(),
                r.lag().as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "# HELP mqdb_outbound_visibility_wait_seconds visibility: snapshot: how long the route has waited for transactions that were running when it read rows it holds back; 0 when it waits for none.\n# TYPE mqdb_outbound_visibility_wait_seconds gauge"
        );
        for r in routes.iter().filter(|r| r.kind == Kind::Outbound) {
            let _ = writeln!(
                out,
                "mqdb_outbound_visibility_wait_seconds{{{}}} {:.3}",
                r.labels(),
                r.visibility_wait().as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "# HELP mqdb_up Whether the route's broker or database connection is up.\n# TYPE mqdb_up gauge"
        );
        for r in &routes {
            for (component, up) in [("broker", r.broker_up()), ("database", r.database_up())] {
                let _ = writeln!(
                    out,
                    "mqdb_up{{{},component=\"{component}\"}} {}",
                    r.labels(),
                    u8::from(up)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mqdb_batch_seconds Time to write one batch (inbound) or to poll and publish one round (outbound).\n# TYPE mqdb_batch_seconds histogram"
        );
        for r in &routes {
            r.batch.render(&mut out, "mqdb_batch_seconds", &r.labels());
        }
        let instance = escape_label(&self.instance());
        let _ = writeln!(
            out,
            "# HELP mqdb_instance_info The instance this process runs as.\n# TYPE mqdb_instance_info gauge\nmqdb_instance_info{{instance=\"{instance}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let leases = self.lease_epochs();
        let _ = writeln!(
            out,
            "# HELP mqdb_lease_held Whether this instance holds the lease (an outbound route's or the dead-letter mirror's) or stands by.\n# TYPE mqdb_lease_held gauge"
        );
        for (name, epoch) in &leases {
            let _ = writeln!(
                out,
                "mqdb_lease_held{{lease=\"{}\",instance=\"{instance}\"}} {}",
                escape_label(name),
                u8::from(*epoch > 0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mqdb_lease_epoch The fencing epoch of a lease this instance holds; 0 while standing by.\n# TYPE mqdb_lease_epoch gauge"
        );
        for (name, epoch) in &leases {
            let _ = writeln!(
                out,
                "mqdb_lease_epoch{{lease=\"{}\",instance=\"{instance}\"}} {epoch}",
                escape_label(name)
            );
        }
        out
    }

    /// The `/health` document, and whether every route's connections are up.
    pub fn health(&self) -> (bool, Json) {
        let mut routes = Map::new();
        let mut brokers: Map<String, Json> = Map::new();
        let mut databases: Map<String, Json> = Map::new();
        let mut healthy = true;
        for r in self.routes() {
            let (b, d) = (r.broker_up(), r.database_up());
            if r.standby() {
                // Another instance does this route's work; its connections are not in use.
                routes.insert(
                    r.name.clone(),
                    json!({"direction": r.kind.as_str(), "standby": true}),
                );
                continue;
            }
            healthy &= b && d;
            routes.insert(
                r.name.clone(),
                json!({"direction": r.kind.as_str(), "broker": b, "database": d}),
            );
            // A broker or database is connected only if every route using it is.
            for (map, name, up) in [
                (&mut brokers, &r.broker, b),
                (&mut databases, &r.database, d),
            ] {
                let all = map.get(name).and_then(Json::as_bool).unwrap_or(true) && up;
                map.insert(name.clone(), Json::Bool(all));
            }
        }
        let status = if healthy { "ok" } else { "degraded" };
        // Standing by is healthy: the lease says who works, not whether this one can.
        let leases: Map<String, Json> = self
            .lease_epochs()
            .into_iter()
            .map(|(name, epoch)| (name, Json::from(if epoch > 0 { "held" } else { "standby" })))
            .collect();
        (
            healthy,
            json!({"status": status, "instance": self.instance(), "brokers": brokers, "databases": databases, "routes": routes, "leases": leases}),
        )
    }

    /// The totals of every counter, for the log summary.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for r in self.routes() {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            match r.kind {
                Kind::Inbound => {
                    t.received += get(&r.received);
                    t.written += get(&r.written);
                }
                Kind::Outbound => {
                    t.read += get(&r.received);
                    t.published += get(&r.published);
                }
            }
            t.dead_letters += get(&r.dead_letters);
            t.retries += get(&r.retries);
            if !(r.standby() || r.broker_up() && r.database_up()) {
                t.down.push(r.name.clone());
            }
        }
        t
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub received: u64,
    pub written: u64,
    pub read: u64,
    pub published: u64,
    pub dead_letters: u64,
    pub retries: u64,
    /// Routes whose broker or database is not connected.
    pub down: Vec<String>,
}

impl Totals {
    /// One log line: what happened since `before`, and which routes are down.
    pub fn summary_since(&self, before: &Totals) -> String {
        let down = if self.down.is_empty() {
            "none".to_string()
        } else {
            self.down.join(",")
        };
        format!(
            "received={} written={} read={} published={} dead_letters={} retries={} routes_down={down}",
            self.received - before.received,
            self.written - before.written,
            self.read - before.read,
            self.published - before.published,
            self.dead_letters - before.dead_letters,
            self.retries - before.retries,
        )
    }
}

/// One route's counters. Inbound routes count `received` messages and `written` rows;
/// outbound routes count `received` rows read and `published` messages.
pub struct RouteMetrics {
    pub name: String,
    pub kind: Kind,
    broker: String,
    database: String,
    epoch: Instant,
    pub received: AtomicU64,
    pub written: AtomicU64,
    pub published: AtomicU64,
    pub dead_letters: AtomicU64,
    pub retries: AtomicU64,
    /// Polls a PostgreSQL notification started before the interval was over (outbound).
    pub wakes: AtomicU64,
    in_flight: AtomicI64,
    pub batch: Histogram,
    broker_up: AtomicBool,
    database_up: AtomicBool,
    /// An outbound route another instance holds: it neither polls nor publishes here.
    standby: AtomicBool,
    /// Milliseconds after `epoch` (plus one, so 0 means caught up) since which the route
    /// has been behind its query.
    behind_since_ms: AtomicU64,
    /// `visibility: snapshot`: how long the route has waited for the transactions that
    /// were running when it read the rows it holds back.
    visibility_wait_ms: AtomicU64,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    fn labels(&self) -> String {
        format!(
            "route=\"{}\",direction=\"{}\"",
            escape_label(&self.name),
            self.kind.as_str()
        )
    }

    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn enter(&self, n: usize) {
        self.in_flight.fetch_add(n as i64, Ordering::Relaxed);
    }

    pub fn leave(&self, n: usize) {
        self.in_flight.fetch_sub(n as i64, Ordering::Relaxed);
    }

    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
    }

    pub fn set_database_up(&self, up: bool) {
        self.database_up.store(up, Ordering::Relaxed);
    }

    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Relaxed);
    }

    pub fn standby(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }

    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    pub fn database_up(&self) -> bool {
        self.database_up.load(Ordering::Relaxed)
    }

    pub fn set_visibility_wait(&self, waited: Duration) {
        self.visibility_wait_ms
            .store(waited.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn visibility_wait(&self) -> Duration {
        Duration::from_millis(self.visibility_wait_ms.load(Ordering::Relaxed))
    }

    /// The route has rows it has not yet published; the lag counts from the first time.
    pub fn behind(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let _ = self
            .behind_since_ms
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn caught_up(&self) {
        self.behind_since_ms.store(0, Ordering::Relaxed);
    }

    pub fn lag(&self) -> Duration {
        match self.behind_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => {
                let now = self.epoch.elapsed().as_millis() as u64 + 1;
                Duration::from_millis(now.saturating_sub(since))
            }
        }
    }
}

/// A Prometheus histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&le| seconds <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (le, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum:.6}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Label values escape backslash, quote and line feed.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn counters_render_per_route_with_their_direction() {
        let m = Metrics::new();
        let a = m.route("a", Kind::Inbound, "b1", "d1");
        let o = m.route("o", Kind::Outbound, "b1", "d1");
        RouteMetrics::add(&a.received, 7);
        RouteMetrics::add(&a.written, 5);
        RouteMetrics::add(&a.dead_letters, 2);
        RouteMetrics::add(&o.received, 3);
        RouteMetrics::add(&o.published, 3);
        let text = m.render();
        let inbound = "{route=\"a\",direction=\"inbound\"}";
        let outbound = "{route=\"o\",direction=\"outbound\"}";
        assert_eq!(
            sample(&text, &format!("mqdb_messages_received_total{inbound}")),
            7.0
        );
        assert_eq!(
            sample(&text, &format!("mqdb_rows_written_total{inbound}")),
            5.0
        );
        assert_eq!(
            sample(&text, &format!("mqdb_dead_letters_total{inbound}")),
            2.0
        );
        assert_eq!(
            sample(&text, &format!("mqdb_messages_published_total{outbound}")),
            3.0
        );
        assert!(
            !text.contains("mqdb_rows_written_total{route=\"o\""),
            "{text}"
        );
        assert!(
            !text.contains("mqdb_messages_published_total{route=\"a\""),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        let a = m.route("a", Kind::Inbound, "b", "d");
        for ms in [1, 3, 3, 40, 20_000] {
            a.batch.observe(Duration::from_millis(ms));
        }
        let text = m.render();
        let l = "route=\"a\",direction=\"inbound\"";
        assert_eq!(
            sample(
                &text,
                &format!("mqdb_batch_seconds_bucket{{{l},le=\"0.001\"}}")
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                &format!("mqdb_batch_seconds_bucket{{{l},le=\"0.005\"}}")
            ),
            3.0
        );
        assert_eq!(
            sample(
                &text,
                &format!("mqdb_batch_seconds_bucket{{{l},le=\"0.05\"}}")
            ),
            4.0
        );
        assert_eq!(
            sample(
                &text,
                &format!("mqdb_batch_seconds_bucket{{{l},le=\"10\"}}")
            ),
            4.0
        );
        assert_eq!(
            sample(
                &text,
                &format!("mqdb_batch_seconds_bucket{{{l},le=\"+Inf\"}}")
            ),
            5.0
        );
        assert_eq!(
            sample(&text, &format!("mqdb_batch_seconds_count{{{l}}}")),
            5.0
        );
        assert!((sample(&text, &format!("mqdb_batch_seconds_sum{{{l}}}")) - 20.047).abs() < 1e-9);
    }

    #[test]
    fn health_is_ok_only_when_every_connection_is_up() {
        let m = Metrics::new();
        let a = m.route("a", Kind::Inbound, "plant", "db");
        let b = m.route("b", Kind::Outbound, "plant", "db");
        assert!(!m.health().0);
        for r in [&a, &b] {
            r.set_broker_up(true);
            r.set_database_up(true);
        }
        let (ok, doc) = m.health();
        assert!(ok);
        assert_eq!(doc["status"], "ok");
        b.set_broker_up(false);
        let (ok, doc) = m.health();
        assert!(!ok);
        assert_eq!(doc["brokers"]["plant"], false);
        assert_eq!(doc["databases"]["db"], true);
        assert_eq!(doc["routes"]["a"]["broker"], true);
        assert_eq!(doc["routes"]["b"]["broker"], false);
        assert_eq!(m.totals().down, vec!["b".to_string()]);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.route("we\"ird\\name", Kind::Inbound, "b", "d");
        assert!(m.render().contains("route=\"we\\\"ird\\\\name\""));
    }

    #[test]
    fn lag_counts_from_the_first_time_behind() {
        let m = Metrics::new();
        let o = m.route("o", Kind::Outbound, "b", "d");
        assert_eq!(o.lag(), Duration::ZERO);
        o.behind();
        std::thread::sleep(Duration::from_millis(20));
        o.behind();
        assert!(o.lag() >= Duration::from_millis(20));
        o.caught_up();
        assert_eq!(o.lag(), Duration::ZERO);
    }

    #[test]
    fn summary_reports_the_difference() {
        let before = Totals {
            received: 10,
            written: 9,
            ..Totals::default()
        };
        let now = Totals {
            received: 15,
            written: 13,
            dead_letters: 1,
            down: vec!["x".into()],
            ..Totals::default()
        };
        assert_eq!(
            now.summary_since(&before),
            "received=5 written=4 read=0 published=0 dead_letters=1 retries=0 routes_down=x"
        );
    }
}
