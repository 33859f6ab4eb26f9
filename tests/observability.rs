//! What `mqdb run` tells an operator about itself: `GET /metrics` (Prometheus text) and
//! `GET /health` at `http.listen`, `mqdb health`, and the periodic log summary when there is
//! no HTTP endpoint; exact counts after known traffic, outages of the broker and of the
//! database, config and start-up errors, and how the endpoint treats odd clients.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::http;
use common::{
    Bridge, Config, Db, LIVENESS, Rabbit, Ran, Received, Route, TcpProxy, TempTable, Workdir,
    World, dlq_list, free_port, line_of, mqdb_bounded, path_str, terminate_ok, unique, wait_for,
    wait_for_count, wait_queue_drained,
};
use serde_json::{Value as Json, json};

fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn http_at(addr: &str) -> Json {
    json!({ "listen": addr })
}

/// A PostgreSQL table for [`inbound`] routes and [`polling`] routes.
fn id_v_table(prefix: &str) -> TempTable {
    let columns = "id INTEGER PRIMARY KEY, v TEXT NOT NULL";
    TempTable::create(&Db::Postgres, prefix, columns)
}

/// An inbound route from broker `broker` (`source` is its `topic` or `queue`) into `table`
/// of database `d`: JSON `{"id": .., "v": ..}`.
fn inbound(name: &str, broker: &str, source: (&str, &str), table: &str) -> Route {
    Route::named(name)
        .set("broker", broker)
        .set(source.0, source.1)
        .set("database", "d")
        .set("table", table)
        .set("format", "json")
        .set("batch", json!({ "max_rows": 100, "max_delay": "50ms" }))
        .columns(&[("id", "payload.id"), ("v", "payload.v")])
}

/// An outbound route polling `SELECT id, v FROM table WHERE id > ?` on database `d` every
/// 100 ms, for broker `broker`.
fn polling(name: &str, broker: &str, table: &str) -> Route {
    let query = format!("SELECT id, v FROM {table} WHERE id > ? ORDER BY id");
    let route = Route::outbound(name, &query).track("id", 0);
    route.interval("100ms").broker(broker)
}

/// An outbound route publishing each row of `table` to `topic_prefix/{id}` on broker `b`.
fn outbound(name: &str, table: &str, topic_prefix: &str) -> Route {
    polling(name, "b", table)
        .set("topic", format!("{topic_prefix}/{{id}}"))
        .set("qos", 1)
}

/// Broker `r` (RabbitMQ at `url`), database `d` (PostgreSQL) and `http.listen` at `addr`.
fn amqp_config(work: &Workdir, url: &str, addr: &str) -> Config {
    let config = work.bare_config().broker("r", url, Json::Null);
    let config = config.database("d", &Db::Postgres.connection_string());
    config.set("http", http_at(addr))
}

/// A running bridge with inbound route `readings` from its world's broker into a new sink
/// table, and an HTTP endpoint at the address returned that has answered 200.
fn serving(sink_prefix: &str) -> (World, TempTable, String, Bridge) {
    let world = World::new("obs");
    let sink = id_v_table(sink_prefix);
    let addr = free_addr();
    let topic = format!("obs/{}", unique("p"));
    let config = world
        .config(&Db::Postgres)
        .inbound(inbound("readings", "b", ("topic", &topic), &sink.name))
        .set("http", http_at(&addr))
        .write();
    let mut bridge = Bridge::start(&config);
    wait_healthy(&mut bridge, &addr);
    (world, sink, addr, bridge)
}

/// One scrape of `/metrics`: every sample in order, by its series (`name{labels}`).
struct Scrape {
    text: String,
    samples: Vec<(String, f64)>,
}

impl Scrape {
    /// Parses the Prometheus text format strictly: every sample line is `SERIES VALUE` with
    /// a numeric value, and every metric has a `# TYPE` line before its samples.
    fn parse(text: String) -> Scrape {
        let mut typed: Vec<(String, String)> = Vec::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name_kind = rest.split_once(' ');
                let (name, kind) = name_kind.unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
                typed.push((name.to_string(), kind.to_string()));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let sample = line.rsplit_once(' ');
            let no_value = || panic!("sample line without a value: {line:?}\n{text}");
            let (series, value) = sample.unwrap_or_else(no_value);
            let value = number(value, line);
            let name = series.split('{').next().unwrap_or(series);
            let suffixes = ["_bucket", "_sum", "_count"];
            let histogram = suffixes.iter().find_map(|s| name.strip_suffix(s));
            let declared = typed.iter().any(|(t, kind)| {
                name == t || (kind == "histogram" && histogram == Some(t.as_str()))
            });
            assert!(declared, "{name} has no # TYPE line before it:\n{text}");
            samples.push((series.to_string(), value));
        }
        Scrape { text, samples }
    }

    fn try_get(&self, series: &str) -> Option<f64> {
        let sample = self.samples.iter().find(|(s, _)| s == series);
        sample.map(|(_, v)| *v)
    }

    fn get(&self, series: &str) -> f64 {
        self.try_get(series)
            .unwrap_or_else(|| panic!("no sample {series} in /metrics:\n{}", self.text))
    }

    /// `name{route="ROUTE",direction="DIR"}`.
    fn route(&self, name: &str, route: &str, direction: &str) -> f64 {
        self.get(&series(name, route, direction))
    }

    fn up(&self, route: &str, direction: &str, component: &str) -> f64 {
        self.get(&up_series(route, direction, component))
    }

    /// Checks the route's `mqdb_batch_seconds` histogram is well formed (buckets in
    /// increasing `le` order ending with `+Inf`, cumulative counts non-decreasing, `+Inf`
    /// equal to `_count`, a non-negative `_sum`) and returns its count.
    fn histogram_count(&self, route: &str, direction: &str) -> f64 {
        let prefix =
            format!("mqdb_batch_seconds_bucket{{route=\"{route}\",direction=\"{direction}\",le=\"");
        // (`+Inf` parses as infinity)
        let bucket = |(s, v): &(String, f64)| {
            let le = s.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            Some((number(le, s), *v))
        };
        let buckets: Vec<(f64, f64)> = self.samples.iter().filter_map(bucket).collect();
        let (text, last) = (&self.text, buckets.last().copied());
        let two = buckets.len() >= 2;
        assert!(two, "{route}: fewer than two buckets:\n{text}");
        let inf_last = last.map(|b| b.0) == Some(f64::INFINITY);
        assert!(inf_last, "{route}: no +Inf bucket last:\n{text}");
        // Bounds increase, cumulative counts never decrease.
        let ordered = buckets
            .windows(2)
            .all(|p| p[0].0 < p[1].0 && p[0].1 <= p[1].1);
        assert!(ordered, "{route}: buckets out of order: {buckets:?}");
        let count = self.route("mqdb_batch_seconds_count", route, direction);
        let sum = self.route("mqdb_batch_seconds_sum", route, direction);
        let inf = last.map(|b| b.1);
        assert_eq!(inf, Some(count), "{route}: +Inf bucket != _count:\n{text}");
        let sane = sum.is_finite() && sum >= 0.0;
        assert!(sane, "{route}: _sum is {sum}:\n{text}");
        count
    }

    /// Every `mqdb_up` sample.
    fn ups(&self) -> Vec<(String, f64)> {
        let mut ups = self.samples.clone();
        ups.retain(|(s, _)| s.starts_with("mqdb_up{"));
        ups
    }
}

fn number(text: &str, line: &str) -> f64 {
    let value = text.parse();
    value.unwrap_or_else(|e| panic!("{line:?}: {text:?} is not a number: {e}"))
}

fn series(name: &str, route: &str, direction: &str) -> String {
    format!("{name}{{route=\"{route}\",direction=\"{direction}\"}}")
}

fn up_series(route: &str, direction: &str, component: &str) -> String {
    format!("mqdb_up{{route=\"{route}\",direction=\"{direction}\",component=\"{component}\"}}")
}

/// `GET /metrics` (asserting 200), parsed.
fn scrape(addr: &str) -> Scrape {
    metrics(http::get(addr, "/metrics"))
}

fn metrics((status, body): (u16, String)) -> Scrape {
    assert_eq!(status, 200, "GET /metrics: {body}");
    Scrape::parse(body)
}

/// A `/health` answer: the status code and the JSON document (asserted to be JSON).
fn health_doc((status, body): (u16, String)) -> (u16, Json) {
    let doc = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET /health ({status}) is not JSON: {e}: {body:?}"));
    (status, doc)
}

/// The `/health` document with broker `broker`, database `d` and every route (name,
/// direction) up.
fn all_up(broker: &str, routes: &[(&str, &str)]) -> Json {
    let up = |direction| json!({ "direction": direction, "broker": true, "database": true });
    let routes: serde_json::Map<String, Json> =
        routes.iter().map(|(r, d)| (r.to_string(), up(d))).collect();
    let (brokers, databases) = (json!({ broker: true }), json!({ "d": true }));
    // A lone instance holds every outbound route's lease; it runs under the host's name.
    let leases: serde_json::Map<String, Json> = routes
        .iter()
        .filter(|(_, r)| r["direction"] == "outbound")
        .map(|(name, _)| (format!("outbound:{name}"), json!("held")))
        .collect();
    let instance = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    json!({ "status": "ok", "instance": instance.trim(), "brokers": brokers,
            "databases": databases, "routes": routes, "leases": leases })
}

fn health(addr: &str) -> (u16, Json) {
    health_doc(http::get(addr, "/health"))
}

/// Waits until `/health` answers and `check(status, doc)` holds; returns the last answer.
fn wait_health(
    bridge: &mut Bridge,
    addr: &str,
    what: &str,
    mut check: impl FnMut(u16, &Json) -> bool,
) -> (u16, Json) {
    let mut last = None;
    wait_for(bridge, &format!("/health: {what}"), || {
        last = http::try_get(addr, "/health").map(health_doc);
        Ok(last
            .as_ref()
            .is_some_and(|(status, doc)| check(*status, doc)))
    });
    last.expect("at least one answer")
}

fn wait_healthy(bridge: &mut Bridge, addr: &str) -> Json {
    wait_health(bridge, addr, "200", |status, _| status == 200).1
}

/// Waits until `/health` is 503 with `flag` (e.g. `["routes", "alerts", "broker"]`) false on
/// every route in `routes`; returns the document.
fn wait_degraded(bridge: &mut Bridge, addr: &str, routes: &[&str], flag: &str) -> Json {
    let what = format!("503 with the {flag} of {routes:?} down");
    let (_, doc) = wait_health(bridge, addr, &what, |status, doc| {
        status == 503 && routes.iter().all(|r| doc["routes"][r][flag] == false)
    });
    assert_eq!(doc["status"], "degraded", "{doc}");
    doc
}

/// Waits until `/metrics` answers and `check` accepts it; returns that scrape.
fn wait_scrape(
    bridge: &mut Bridge,
    addr: &str,
    what: &str,
    mut check: impl FnMut(&Scrape) -> Result<bool, String>,
) -> Scrape {
    let mut last = None;
    wait_for(bridge, &format!("/metrics: {what}"), || {
        last = http::try_get(addr, "/metrics").map(metrics);
        match &last {
            Some(s) => check(s).map_err(|e| format!("{e}\n{}", s.text)),
            None => Ok(false),
        }
    });
    last.expect("at least one scrape")
}

/// Asserts `name{route,direction}` is `want` for each `(name, want)`.
fn assert_series(s: &Scrape, route: &str, direction: &str, want: &[(&str, i64)]) {
    for (name, value) in want {
        let got = s.route(name, route, direction);
        assert_eq!(got, *value as f64, "{name} of {route}:\n{}", s.text);
    }
}

/// Asserts the route's well-formed batch histogram counts 1 to `max` batches.
fn assert_batches(s: &Scrape, route: &str, direction: &str, max: i64) {
    let batches = s.histogram_count(route, direction);
    let ok = (1.0..=max as f64).contains(&batches);
    assert!(ok, "{route}: {batches} batches, not 1..={max}");
}

/// The counters of an inbound route that took `n` good and `k` bad messages and has
/// finished them all, with no outage.
fn assert_inbound_counts(s: &Scrape, route: &str, n: i64, k: i64) {
    let want = [
        ("mqdb_messages_received_total", n + k),
        ("mqdb_rows_written_total", n),
        ("mqdb_dead_letters_total", k),
        ("mqdb_retries_total", 0),
        ("mqdb_in_flight", 0),
    ];
    assert_series(s, route, "inbound", &want);
    // Every committed batch has 1..=n rows.
    assert_batches(s, route, "inbound", n);
}

/// Waits until an inbound route has taken `want` messages and finished all of them
/// (`mqdb_in_flight` 0); more than `want` fails at once (duplicates).
fn wait_inbound_settled(bridge: &mut Bridge, addr: &str, route: &str, want: i64) -> Scrape {
    let what = format!("{route} received {want} messages and has none in flight");
    wait_scrape(bridge, addr, &what, |s| {
        let received = s.route("mqdb_messages_received_total", route, "inbound");
        if received > want as f64 {
            return Err(format!("{route} received {received}, more than {want}"));
        }
        Ok(received == want as f64 && s.route("mqdb_in_flight", route, "inbound") == 0.0)
    })
}

/// `mqdb -c CONFIG COMMAND`, bounded by a deadline.
fn mqdb(config: &Path, command: &str) -> Ran {
    let args = ["-c", path_str(config), command];
    mqdb_bounded(&args, &std::env::temp_dir(), LIVENESS)
}

/// Waits until `/health` is 200, and then `mqdb health` says so too.
fn wait_healthy_mqdb(bridge: &mut Bridge, addr: &str, config: &Path) {
    wait_healthy(bridge, addr);
    assert_mqdb_health(config, 0, "ok");
}

/// `mqdb health` exits with `code` and prints the health document with `status`.
fn assert_mqdb_health(config: &Path, code: i32, status: &str) {
    let out = mqdb(config, "health");
    let printed: Json = serde_json::from_str(out.code(code).stdout.trim())
        .unwrap_or_else(|e| panic!("mqdb health printed no JSON ({e}): {out}"));
    assert_eq!(printed["status"], status, "{printed}");
}

/// JSON payloads `{"id":ID,"v":"vID"}` on `topic` for each id.
fn good(topic: &str, ids: impl Iterator<Item = i64>) -> Vec<(String, Vec<u8>)> {
    let json = |id| format!(r#"{{"id":{id},"v":"v{id}"}}"#).into_bytes();
    ids.map(|id| (topic.to_string(), json(id))).collect()
}

/// `n` good messages (ids `first..first+n`) with `k` bad ones (not JSON) spread among them.
fn mixed(topic: &str, first: i64, n: i64, k: i64) -> Vec<(String, Vec<u8>)> {
    let mut msgs = good(topic, first..first + n);
    for j in 0..k {
        let at = ((j + 1) * n / (k + 1) + j) as usize;
        let bad = format!(r#"{{"id":{j},"v":"cut short"#).into_bytes();
        msgs.insert(at.min(msgs.len()), (topic.to_string(), bad));
    }
    msgs
}

fn count_sql(table: &str) -> String {
    format!("SELECT COUNT(*) FROM {table}")
}

#[test]
fn metrics_and_health_report_exactly_what_the_routes_did() {
    const N: i64 = 25; // good inbound messages
    const K: i64 = 3; // malformed inbound messages
    const R: i64 = 7; // rows for the outbound route

    // Given a private broker, an inbound route into one PostgreSQL table and an outbound
    // route reading another one that holds R rows, and an HTTP endpoint
    let db = Db::Postgres;
    let world = World::new("obs");
    let sink = id_v_table("obs_sink");
    let source = id_v_table("obs_src");
    let values: Vec<String> = (1..=R).map(|i| format!("({i}, 'r{i}')")).collect();
    let insert = format!("INSERT INTO {} VALUES {}", source.name, values.join(", "));
    db.exec(&insert);
    let base = unique("obs");
    let (in_topic, out_prefix) = (format!("obs/{base}/in"), format!("obs/{base}/out"));
    let addr = free_addr();
    let config = world
        .config(&db)
        .inbound(inbound("readings", "b", ("topic", &in_topic), &sink.name))
        .outbound(outbound("alerts", &source.name, &out_prefix))
        .set("http", http_at(&addr))
        .write();
    let counter = world.subscribe(&format!("{out_prefix}/#"));

    // When the bridge runs
    let mut bridge = Bridge::start(&config);

    // Then /health turns 200 with every connection up (so the inbound route has subscribed)
    let doc = wait_healthy(&mut bridge, &addr);
    let all_up = all_up("b", &[("readings", "inbound"), ("alerts", "outbound")]);
    assert_eq!(doc, all_up);

    // When N good and K malformed messages are published
    let msgs = mixed(&in_topic, 1, N, K);
    assert_eq!(msgs.len() as i64, N + K);
    world.publisher().publish_all_confirmed(msgs, 1);

    // Then N rows arrive, and once every message is done the counters are exact
    wait_for_count(&mut bridge, &db, &count_sql(&sink.name), N);
    let s = wait_inbound_settled(&mut bridge, &addr, "readings", N + K);
    assert_inbound_counts(&s, "readings", N, K);
    // Inbound routes have no outbound series and vice versa
    for name in ["mqdb_rows_read_total", "mqdb_messages_published_total"] {
        assert_eq!(s.try_get(&series(name, "readings", "inbound")), None);
    }
    for name in ["mqdb_messages_received_total", "mqdb_rows_written_total"] {
        assert_eq!(s.try_get(&series(name, "alerts", "outbound")), None);
    }
    // The dead letters are the K malformed messages
    let letters = dlq_list(&config).into_iter();
    let letters = letters.map(|l| json!([l["error_kind"], l["route"]]));
    let want = vec![json!(["decode", "readings"]); K as usize];
    assert_eq!(letters.collect::<Vec<_>>(), want);

    // And the outbound route published its R rows: the subscriber got exactly R, and the
    // lag is back to 0 once it has caught up
    counter.wait_for(R as usize, LIVENESS);
    wait_scrape(&mut bridge, &addr, "alerts published R", |s| {
        let published = s.route("mqdb_messages_published_total", "alerts", "outbound");
        if published > R as f64 {
            return Err(format!("published {published} > {R}"));
        }
        Ok(published == R as f64)
    });
    wait_scrape(&mut bridge, &addr, "alerts lag back to 0", |s| {
        Ok(s.route("mqdb_outbound_lag_seconds", "alerts", "outbound") == 0.0)
    });
    // Several poll intervals, for messages that must not come.
    std::thread::sleep(Duration::from_millis(800));
    let s = scrape(&addr);
    let got = counter.messages();
    let id = |m: &Received| serde_json::from_slice::<Json>(&m.payload).ok()?["id"].as_i64();
    let mut ids: Vec<Option<i64>> = got.iter().map(id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=R).map(Some).collect::<Vec<_>>(), "{got:?}");
    let want = [
        ("mqdb_rows_read_total", R),
        ("mqdb_messages_published_total", R),
        ("mqdb_dead_letters_total", 0),
        ("mqdb_retries_total", 0),
        ("mqdb_in_flight", 0),
        ("mqdb_outbound_lag_seconds", 0),
        // No `wake`: every poll was the timer's.
        ("mqdb_outbound_wakes_total", 0),
    ];
    assert_series(&s, "alerts", "outbound", &want);
    // Every round with rows counts once.
    assert_batches(&s, "alerts", "outbound", R);
    // The inbound counters have not moved since
    let inbound_totals = [
        ("mqdb_messages_received_total", N + K),
        ("mqdb_rows_written_total", N),
    ];
    assert_series(&s, "readings", "inbound", &inbound_totals);

    // And every connection is up, and only these four: in /metrics and in /health
    let mut ups = s.ups();
    ups.sort_by(|a, b| a.0.cmp(&b.0));
    let routes = [("alerts", "outbound"), ("readings", "inbound")];
    let up = |(r, d): (&str, &str), c| (up_series(r, d, c), 1.0);
    let want = routes.map(|r| [up(r, "broker"), up(r, "database")]);
    assert_eq!(ups, want.concat());
    assert_eq!(health(&addr), (200, all_up));
    assert_eq!(counter.count() as i64, R, "more alerts arrived late");

    terminate_ok(&mut bridge);
}

#[test]
fn health_and_metrics_follow_broker_and_database_outages() {
    const P0: i64 = 5; // before any outage
    const P1: i64 = 5; // after the broker came back
    const M: i64 = 12; // published while the database is cut off

    // Given an inbound and an outbound route on a private broker and on PostgreSQL reached
    // through a proxy, and an HTTP endpoint
    let db = Db::Postgres;
    // `log_type all`: the broker logs each PUBACK it receives (waited for below)
    let mut world = World::with_broker_config("obs", "log_type all");
    let proxy = TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 5432)));
    let sink = id_v_table("obs_out_sink");
    let source = id_v_table("obs_out_src");
    let count = count_sql(&sink.name);
    let base = unique("obs");
    let in_topic = format!("obs/{base}/in");
    let addr = free_addr();
    let config = world
        .config_cs(&db.connection_string_via(proxy.port))
        .inbound(inbound("readings", "b", ("topic", &in_topic), &sink.name))
        .outbound(outbound("alerts", &source.name, &format!("obs/{base}/out")))
        .set("http", http_at(&addr))
        .write();
    let mut bridge = Bridge::start(&config);
    wait_healthy_mqdb(&mut bridge, &addr, &config);
    let publisher = world.publisher();
    publisher.publish_all_confirmed(good(&in_topic, 1..=P0), 1);
    wait_for_count(&mut bridge, &db, &count, P0);
    // The broker must have the bridge's acknowledgements before it stops, or it redelivers
    // those messages after the restart (at least once: they would come back as duplicates)
    let puback = format!("Received PUBACK from {} ", world.client_id);
    wait_for(&mut bridge, &format!("{P0} PUBACKs"), || {
        Ok(world.broker.log().matches(&puback).count() >= P0 as usize)
    });
    let retries_before = scrape(&addr).route("mqdb_retries_total", "readings", "inbound");
    drop(publisher);

    // When the broker stops
    world.broker.stop();

    // Then /health turns 503 with the broker down for both routes, the database still up
    let doc = wait_degraded(&mut bridge, &addr, &["readings", "alerts"], "broker");
    assert_eq!(doc["brokers"]["b"], false, "{doc}");
    assert_eq!(doc["databases"]["d"], true, "{doc}");
    assert_eq!(doc["routes"]["readings"]["database"], true, "{doc}");
    // and `mqdb health` exits 1, printing the degraded document
    assert_mqdb_health(&config, 1, "degraded");
    // and /metrics shows the broker down and counts the lost connection as a retry
    let s = wait_scrape(&mut bridge, &addr, "inbound retries counted", |s| {
        Ok(s.route("mqdb_retries_total", "readings", "inbound") > retries_before)
    });
    assert_eq!(s.up("readings", "inbound", "broker"), 0.0);
    assert_eq!(s.up("readings", "inbound", "database"), 1.0);

    // When the broker comes back
    world.broker.restart();

    // Then /health is 200 again, `mqdb health` exits 0, and messages flow again
    wait_healthy_mqdb(&mut bridge, &addr, &config);
    let publisher = world.publisher();
    publisher.publish_all_confirmed(good(&in_topic, P0 + 1..=P0 + P1), 1);
    wait_for_count(&mut bridge, &db, &count, P0 + P1);
    let s = scrape(&addr);
    let retries_before = s.route("mqdb_retries_total", "readings", "inbound");
    let out_retries_before = s.route("mqdb_retries_total", "alerts", "outbound");

    // When the database connection is cut and M messages arrive meanwhile
    proxy.set_down(true);
    publisher.publish_all_confirmed(good(&in_topic, P0 + P1 + 1..=P0 + P1 + M), 1);

    // Then /health turns 503 with the database down for both routes, the broker up
    let doc = wait_degraded(&mut bridge, &addr, &["readings", "alerts"], "database");
    assert_eq!(doc["databases"]["d"], false, "{doc}");
    assert_eq!(doc["brokers"]["b"], true, "{doc}");
    assert_mqdb_health(&config, 1, "degraded");
    // and the failed writes and polls count as retries
    let s = wait_scrape(&mut bridge, &addr, "retries grow on both routes", |s| {
        let inbound = s.route("mqdb_retries_total", "readings", "inbound") > retries_before;
        Ok(inbound && s.route("mqdb_retries_total", "alerts", "outbound") > out_retries_before)
    });
    assert_eq!(s.up("readings", "inbound", "database"), 0.0);
    assert_eq!(s.up("alerts", "outbound", "database"), 0.0);
    assert_eq!(s.up("readings", "inbound", "broker"), 1.0);
    // and nothing of the outage's messages is in the table yet
    let stored = common::scalar(&db, &count);
    assert_eq!(stored, P0 + P1, "rows committed while cut off");

    // When the connection is restored
    proxy.set_down(false);

    // Then every message published during the outage arrives, /health is 200 again, and the
    // counters add up
    wait_for_count(&mut bridge, &db, &count, P0 + P1 + M);
    wait_healthy_mqdb(&mut bridge, &addr, &config);
    let s = wait_inbound_settled(&mut bridge, &addr, "readings", P0 + P1 + M);
    let totals = [
        ("mqdb_rows_written_total", P0 + P1 + M),
        ("mqdb_dead_letters_total", 0),
    ];
    assert_series(&s, "readings", "inbound", &totals);
    assert!(s.ups().iter().all(|(_, v)| *v == 1.0), "{:?}", s.ups());
    assert!(dlq_list(&config).is_empty());

    terminate_ok(&mut bridge);
}

#[test]
fn an_idle_amqp_outbound_route_is_healthy_again_after_a_connection_cut() {
    // Given an outbound route publishing to RabbitMQ through a proxy, with nothing to
    // publish yet, and an HTTP endpoint
    let db = Db::Postgres;
    let mut rabbit = Rabbit::connect();
    let queue = unique("obs_out_q");
    rabbit.declare_queue(&queue);
    let proxy = TcpProxy::start(Rabbit::addr());
    let source = id_v_table("obs_amqp_src");
    let route = polling("alerts", "r", &source.name).exchange("");
    let work = Workdir::new("obs");
    let addr = free_addr();
    let config = amqp_config(&work, &Rabbit::url_via(proxy.port), &addr)
        .outbound(route.routing_key(&queue))
        .write();
    let mut bridge = Bridge::start(&config);
    wait_healthy(&mut bridge, &addr);

    // When the broker connection is cut, /health turns 503 with the route's broker down
    proxy.set_down(true);
    wait_degraded(&mut bridge, &addr, &["alerts"], "broker");

    // When the broker is reachable again, /health returns to 200 without any row to publish:
    // an idle route is as healthy as a busy one (a container health check must not restart
    // a bridge that would work)
    proxy.set_down(false);
    wait_healthy(&mut bridge, &addr);

    // (And with a row to publish, it publishes it and stays healthy)
    db.exec(&format!("INSERT INTO {} VALUES (1, 'one')", source.name));
    wait_for(&mut bridge, "the row published to the queue", || {
        Ok(Rabbit::queue_info(&queue).is_some_and(|q| q.messages == 1))
    });
    wait_healthy(&mut bridge, &addr);

    terminate_ok(&mut bridge);
}

#[test]
fn an_amqp_inbound_route_counts_what_it_consumed() {
    const N: i64 = 30;
    const K: i64 = 2;

    // Given an AMQP inbound route on its own queue (the bridge declares it) into PostgreSQL
    let db = Db::Postgres;
    let mut rabbit = Rabbit::connect();
    let queue = unique("obs_q");
    rabbit.adopt_queue(&queue);
    let sink = id_v_table("obs_amqp");
    let work = Workdir::new("obs");
    let addr = free_addr();
    let config = amqp_config(&work, Rabbit::URL, &addr)
        .inbound(inbound("amqp_in", "r", ("queue", &queue), &sink.name))
        .write();
    let mut bridge = Bridge::start(&config);

    // When it consumes (health 200) and N good and K malformed messages are queued
    let doc = wait_healthy(&mut bridge, &addr);
    assert_eq!(doc, all_up("r", &[("amqp_in", "inbound")]));
    let payloads: Vec<Vec<u8>> = mixed(&queue, 1, N, K).into_iter().map(|m| m.1).collect();
    rabbit.publish_to_queue(&queue, payloads);

    // Then the N rows arrive and the counters are exact
    wait_for_count(&mut bridge, &db, &count_sql(&sink.name), N);
    let s = wait_inbound_settled(&mut bridge, &addr, "amqp_in", N + K);
    assert_inbound_counts(&s, "amqp_in", N, K);
    assert_eq!(s.up("amqp_in", "inbound", "broker"), 1.0);
    assert_eq!(s.up("amqp_in", "inbound", "database"), 1.0);
    assert_eq!(dlq_list(&config).len() as i64, K);

    // And the broker agrees: every message was acknowledged
    wait_queue_drained(&mut bridge, &queue);
    assert_eq!(health(&addr).0, 200);

    terminate_ok(&mut bridge);
}

/// The `key=value` fields of every `summary:` line in `log`.
fn summaries(log: &str) -> Vec<BTreeMap<String, String>> {
    let pair = |w: &str| {
        w.split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
    };
    let fields = |(_, rest): (&str, &str)| rest.split_whitespace().filter_map(pair).collect();
    log.lines()
        .filter_map(|l| l.split_once("summary: "))
        .map(fields)
        .collect()
}

fn field(line: &BTreeMap<String, String>, key: &str) -> u64 {
    let text = line.get(key);
    let text = text.unwrap_or_else(|| panic!("summary line without {key}=: {line:?}"));
    text.parse()
        .unwrap_or_else(|e| panic!("{key} in {line:?}: {e}"))
}

#[test]
fn without_http_the_log_summary_adds_up_to_what_happened() {
    const M: i64 = 40;
    const K: i64 = 3;

    // Given an inbound route with no HTTP endpoint and `log_summary: 1s`, whose persistent
    // session already holds M good and K malformed messages
    let db = Db::Postgres;
    let world = World::new("obs");
    let sink = id_v_table("obs_log");
    let topic = format!("obs/{}/in", unique("obs"));
    world.persistent_session(&topic);
    world
        .publisher()
        .publish_all_confirmed(mixed(&topic, 1, M, K), 1);
    let config = world
        .config(&db)
        .inbound(inbound("readings", "b", ("topic", &topic), &sink.name))
        .set("log_summary", "1s")
        .write();

    // When the bridge runs
    let mut bridge = Bridge::start(&config);
    wait_for_count(&mut bridge, &db, &count_sql(&sink.name), M);

    // Then the summary lines' increments add up to M+K received, M written, K dead letters
    let log_path = bridge.log_path.clone();
    let logged = || summaries(&std::fs::read_to_string(&log_path).unwrap_or_default());
    let mut seen = 0;
    wait_for(&mut bridge, "summary lines adding up", || {
        let lines = logged();
        seen = lines.len();
        let sum = |key: &str| lines.iter().map(|l| field(l, key)).sum::<u64>();
        let (received, written, dead) = (sum("received"), sum("written"), sum("dead_letters"));
        if received > (M + K) as u64 || written > M as u64 || dead > K as u64 {
            return Err(format!(
                "the summaries add up to more than happened: received={received} \
                 written={written} dead_letters={dead}"
            ));
        }
        Ok(received == (M + K) as u64 && written == M as u64 && dead == K as u64)
    });
    let log = bridge.log();
    let lines = summaries(&log);
    let last = lines.last().expect("summary lines");
    let routes_down = |line: &BTreeMap<String, String>| line.get("routes_down").cloned();
    assert_eq!(routes_down(last).as_deref(), Some("none"), "{log}");
    for line in log.lines().filter(|l| l.contains("summary: ")) {
        assert!(line.contains("INFO"), "not an INFO line: {line}");
    }
    for line in &lines {
        for key in ["read", "published", "retries"] {
            assert_eq!(field(line, key), 0, "{line:?}");
        }
    }
    // and the next line, with nothing new, reports zero increments
    wait_for(&mut bridge, "one more summary line", || {
        Ok(logged().len() > seen)
    });
    let lines = logged();
    let next = &lines[seen];
    for key in ["received", "written", "dead_letters", "retries"] {
        assert_eq!(field(next, key), 0, "{next:?}");
    }
    assert_eq!(routes_down(next).as_deref(), Some("none"));
    let served = bridge.log().contains("serving /health");
    assert!(!served, "an HTTP endpoint started without `http`");

    terminate_ok(&mut bridge);
}

#[test]
fn a_bad_http_listen_is_a_config_error_naming_file_and_line() {
    // Given a config whose http.listen is not an address
    let sink = id_v_table("obs_cfg");
    let work = Workdir::new("obs");
    let client_id = json!({ "client_id": unique("mqdb_obs") });
    let config = work
        .bare_config()
        .broker("b", "mqtt://127.0.0.1:1883", client_id)
        .database("d", &Db::Postgres.connection_string())
        .inbound(inbound("readings", "b", ("topic", "obs/cfg"), &sink.name))
        .set("http", http_at("not-an-address"));
    let path = config.write();
    let located = format!("{}:{}:", path.display(), line_of(&config.yaml(), "listen:"));

    // Then run, check and health refuse it with exit 2, naming file:line and the key
    for command in ["run", "check", "health"] {
        let needles = [located.as_str(), "http.listen", "not-an-address"];
        mqdb(&path, command).code(2).stderr_has(&needles);
    }
}

#[test]
fn a_taken_http_port_stops_run_with_exit_1() {
    // Given a config whose http.listen port is already taken
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("local_addr").to_string();
    let world = World::new("obs");
    let sink = id_v_table("obs_port");
    let path = world
        .config(&Db::Postgres)
        .inbound(inbound("readings", "b", ("topic", "obs/port"), &sink.name))
        .set("http", http_at(&addr))
        .write();

    // Then `run` exits 1 saying which setting failed
    let named = format!("http.listen {addr}");
    mqdb(&path, "run").code(1).stderr_has(&[&named]);
    drop(taken);
}

#[test]
fn mqdb_health_needs_http_and_a_listener() {
    // Given a config without http, `mqdb health` is a usage error (exit 2)
    let work = Workdir::new("obs");
    let out = mqdb(&work.bare_config().write(), "health");
    out.code(2).stderr_has(&["http.listen"]);

    // Given http.listen on a port where nothing listens, it exits 1
    let addr = free_addr();
    let path = work.bare_config().set("http", http_at(&addr)).write();
    mqdb(&path, "health").code(1).stderr_has(&[&addr]);
}

#[test]
fn unknown_paths_are_404_and_other_methods_405() {
    let (_world, _sink, addr, mut bridge) = serving("obs_http");

    // Then unknown paths are 404
    for path in ["/", "/nope", "/metrics/extra", "/healthz"] {
        let (status, body) = http::get(&addr, path);
        assert_eq!(status, 404, "GET {path}: {body}");
    }
    // and anything but GET and HEAD is 405, on known and unknown paths
    let refused = [
        "POST /health",
        "POST /metrics",
        "PUT /metrics",
        "DELETE /health",
        "POST /nope",
    ];
    for request in refused {
        let (method, path) = request.split_once(' ').expect("METHOD PATH");
        let (status, body) = http::request(&addr, method, path);
        assert_eq!(status, 405, "{method} {path}: {body}");
    }
    // while GET (with a query string too) and HEAD work
    assert_eq!(http::get(&addr, "/metrics?x=1").0, 200);
    let (status, body) = http::request(&addr, "HEAD", "/health");
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(health(&addr).0, 200);

    terminate_ok(&mut bridge);
}

/// Opens a connection to `addr`; with `first_bytes`, sends them and nothing more.
fn hold_connection(addr: &str, first_bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.write_all(first_bytes).expect("send the first bytes");
    stream
}

/// Whether the server has closed `stream` (or answered on it) without waiting: an open
/// connection that was sent nothing has nothing to read yet.
fn closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let peeked = stream.peek(&mut [0u8; 1]);
    let open = matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).expect("blocking");
    !open
}

/// Waits until the server closes `stream` (EOF or reset); panics at `deadline`.
fn wait_closed_by_server(stream: &mut TcpStream, deadline: Instant, which: &str) {
    let mut sink = Vec::new();
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .expect("read timeout");
    match stream.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{which} was not closed by the server within {LIVENESS:?}: {e}"),
    }
}

#[test]
fn health_answers_while_idle_and_slow_connections_are_open() {
    let (_world, _sink, addr, mut bridge) = serving("obs_idle");

    // When 100 clients connect and send nothing, and 10 send half a request line
    let mut held: Vec<TcpStream> = (0..100).map(|_| hold_connection(&addr, b"")).collect();
    held.extend((0..10).map(|_| hold_connection(&addr, b"GET /hea")));

    // Then /health answers while every one of them is still open
    assert_eq!(health(&addr).0, 200);
    let closed = held.iter().filter(|s| closed_by_server(s)).count();
    assert_eq!(
        closed, 0,
        "/health answered only after held connections were closed"
    );

    // and with more held connections than the listener keeps, the oldest make room, so
    // /health still answers
    held.extend((0..60).map(|_| hold_connection(&addr, b"")));
    assert_eq!(health(&addr).0, 200);

    // and the server closes every idle and slow connection after the header timeout
    let deadline = Instant::now() + LIVENESS;
    for (i, stream) in held.iter_mut().enumerate() {
        wait_closed_by_server(stream, deadline, &format!("held connection {i}"));
    }
    assert_eq!(health(&addr).0, 200);
    terminate_ok(&mut bridge);
}
