//! Several `mqdb run` processes on one state store (each kind: a SQLite file shared by
//! processes on this host, and PostgreSQL): one instance at a time holds an outbound route
//! and the dead-letter mirror; a survivor takes over from a holder that was killed, that
//! stopped, or that was paused past its lease (and is then fenced); `mqdb status` shows it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    Bridge, Db, Ran, Route, StateStore, Subscriber, TempTable, World, mqdb_env, unique, wait_for,
};
use serde_json::{Value as Json, json};

/// Short, so that takeovers after a crash happen within a few seconds.
const LEASE: &str = "2s";
const MAX_ROWS: usize = 100;

/// How often each id arrived.
type Counts = BTreeMap<i64, usize>;

/// One outbound route (PostgreSQL → MQTT) configured once for several instances; the
/// instance name comes from `MQDB_INSTANCE`.
struct Cluster {
    world: World,
    table: TempTable,
    topic: String,
    config: PathBuf,
}

impl Cluster {
    fn new(store: StateStore, extra: impl FnOnce(common::Config, &str) -> common::Config) -> Self {
        let world = World::new("instances").on_store(store);
        let table = TempTable::create(&Db::Postgres, "out_inst", "id INTEGER PRIMARY KEY, v TEXT");
        let topic = unique("inst");
        let query = format!("SELECT id, v FROM {} WHERE id > ? ORDER BY id", table.name);
        let route = Route::outbound("r", &query)
            .interval("200ms")
            .track("id", 0)
            .broker("b")
            .topic(&format!("{topic}/{{v}}"))
            .qos(1)
            .set("max_rows", MAX_ROWS);
        let config = world
            .config(&Db::Postgres)
            .set("instance", "${MQDB_INSTANCE:-cli}")
            .set("lease", LEASE)
            .outbound(route);
        let config = extra(config, &topic).write();
        Cluster {
            world,
            table,
            topic,
            config,
        }
    }

    /// An instance with a config file (and so a log) of its own.
    fn start(&self, instance: &str) -> Bridge {
        let own = self.config.with_file_name(format!("mqdb-{instance}.yaml"));
        std::fs::copy(&self.config, &own).expect("copy the config");
        Bridge::start_with_env(&own, &[("MQDB_INSTANCE", instance)])
    }

    fn subscribe(&self) -> Subscriber {
        self.world.subscribe(&format!("{}/+", self.topic))
    }

    /// Rows `from..=to`, published to `TOPIC/ok`.
    fn insert(&self, from: i64, to: i64) {
        Db::Postgres.exec(&format!(
            "INSERT INTO {} (id, v) SELECT g, 'ok' FROM generate_series({from}, {to}) g",
            self.table.name
        ));
    }

    fn status(&self) -> Json {
        let ran = self.mqdb(&["status", "--json"]);
        assert_eq!(ran.code, Some(0), "{ran}");
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {ran}"))
    }

    fn mqdb(&self, args: &[&str]) -> Ran {
        mqdb_env(&self.config, args, &[])
    }

    /// The lease's row in `mqdb status`, `null` before anyone took it.
    fn lease(&self, name: &str) -> Json {
        let status = self.status();
        let leases = status["leases"].as_array().cloned().unwrap_or_default();
        leases
            .into_iter()
            .find(|l| l["lease"] == name)
            .unwrap_or(Json::Null)
    }

    /// Waits until `name` is held (unexpired) by one of `instances`; returns its row.
    fn held_by_one_of(&self, name: &str, instances: &[&str], watch: &mut Bridge) -> Json {
        let mut row = Json::Null;
        wait_for(
            watch,
            &format!("lease {name} held by one of {instances:?}"),
            || {
                row = self.lease(name);
                let holder = row["instance"].as_str().unwrap_or_default();
                Ok(row["held"] == true && instances.contains(&holder))
            },
        );
        row
    }
}

fn ids(sub: &Subscriber) -> Counts {
    let mut counts = Counts::new();
    for m in sub.messages() {
        let row: Json = serde_json::from_slice(&m.payload).expect("a JSON row");
        *counts
            .entry(row["id"].as_i64().expect("an id"))
            .or_default() += 1;
    }
    counts
}

fn wait_ids(watch: &mut Bridge, sub: &Subscriber, to: i64) -> Counts {
    wait_for(watch, &format!("every id up to {to}"), || {
        let counts = ids(sub);
        Ok((1..=to).all(|i| counts.contains_key(&i)))
    });
    ids(sub)
}

fn more_than_once(counts: &Counts, range: std::ops::RangeInclusive<i64>) -> Vec<i64> {
    range
        .filter(|i| counts.get(i).is_some_and(|&n| n > 1))
        .collect()
}

fn position(status: &Json, route: &str) -> Json {
    let positions = status["positions"].as_array().cloned().unwrap_or_default();
    positions
        .into_iter()
        .find(|p| p["route"] == route)
        .map(|p| p["position"].clone())
        .unwrap_or(Json::Null)
}

fn each_store(test: impl Fn(StateStore)) {
    let dir = common::temp_dir("instances-stores");
    for store in StateStore::each_in(dir.path()) {
        test(store);
    }
}

#[test]
fn one_holder_publishes_and_survivors_take_over_after_sigkill_and_sigterm() {
    each_store(|store| {
        let cluster = Cluster::new(store, |c, _| c);
        let sub = cluster.subscribe();
        let names = ["i1", "i2", "i3"];
        let mut bridges: BTreeMap<&str, Bridge> =
            names.iter().map(|n| (*n, cluster.start(n))).collect();
        cluster.insert(1, 300);
        let watch = bridges.get_mut("i1").unwrap();
        let counts = wait_ids(watch, &sub, 300);
        // Nobody crashed yet: three instances, each row published once.
        assert_eq!(more_than_once(&counts, 1..=300), Vec::<i64>::new());
        let first = cluster.held_by_one_of("outbound:r", &names, watch);
        wait_for(watch, "three instances running", || {
            let status = cluster.status();
            let running = status["instances"].as_array().unwrap().iter();
            Ok(running.filter(|i| i["state"] == "running").count() == 3)
        });
        let holder = first["instance"].as_str().unwrap().to_string();
        for name in names.iter().filter(|n| **n != holder) {
            let log = bridges[name].log();
            assert!(!log.contains("lease taken"), "{name}:\n{log}");
        }

        // The holder dies without a word: a survivor takes over once the lease expires.
        bridges.get_mut(holder.as_str()).unwrap().kill();
        let killed_at = Instant::now();
        cluster.insert(301, 600);
        let survivors: Vec<&str> = names.iter().copied().filter(|n| *n != holder).collect();
        let watch = bridges.get_mut(survivors[0]).unwrap();
        let counts = wait_ids(watch, &sub, 600);
        eprintln!(
            "rows published again {:?} after the SIGKILL",
            killed_at.elapsed()
        );
        let second = cluster.held_by_one_of("outbound:r", &survivors, watch);
        assert!(
            second["epoch"].as_i64() > first["epoch"].as_i64(),
            "{first} then {second}"
        );
        // Only what the holder had published but not yet stored can come again.
        let again = more_than_once(&counts, 1..=600);
        assert!(
            again.len() <= MAX_ROWS,
            "{} published twice: {again:?}",
            again.len()
        );

        // The next holder is stopped: it hands the lease over on its way out, and the last
        // instance publishes on from the stored position without a duplicate.
        let holder = second["instance"].as_str().unwrap().to_string();
        let status = bridges.get_mut(holder.as_str()).unwrap().terminate();
        assert!(status.success(), "{status:?}");
        let last: Vec<&str> = survivors.into_iter().filter(|n| *n != holder).collect();
        cluster.insert(601, 900);
        let watch = bridges.get_mut(last[0]).unwrap();
        let counts = wait_ids(watch, &sub, 900);
        assert_eq!(more_than_once(&counts, 601..=900), Vec::<i64>::new());
        let third = cluster.held_by_one_of("outbound:r", &last, watch);
        assert!(third["epoch"].as_i64() > second["epoch"].as_i64());
        wait_for(watch, "the position at 900", || {
            Ok(position(&cluster.status(), "r") == json!(["900"]))
        });
        let status = cluster.status();
        let stopped = status["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["state"] == "stopped")
            .count();
        assert_eq!(stopped, 1, "{status}");
    });
}

#[test]
fn a_stopped_holder_hands_its_lease_over_at_once() {
    each_store(|store| {
        // A lease far longer than the wait below: only a release lets the other go on.
        let cluster = Cluster::new(store, |c, _| c.set("lease", "1h"));
        let sub = cluster.subscribe();
        let mut a = cluster.start("a");
        cluster.insert(1, 50);
        wait_ids(&mut a, &sub, 50);
        cluster.held_by_one_of("outbound:r", &["a"], &mut a);
        let mut b = cluster.start("b");
        b.wait_for_log("instance", Duration::from_secs(30));
        assert!(a.terminate().success());
        cluster.insert(51, 100);
        let counts = wait_ids(&mut b, &sub, 100);
        assert_eq!(more_than_once(&counts, 1..=100), Vec::<i64>::new());
        cluster.held_by_one_of("outbound:r", &["b"], &mut b);
    });
}

#[test]
fn a_holder_paused_past_its_lease_is_fenced_and_stands_by() {
    each_store(|store| {
        let cluster = Cluster::new(store, |c, _| c);
        let sub = cluster.subscribe();
        let mut a = cluster.start("a");
        cluster.insert(1, 100);
        wait_ids(&mut a, &sub, 100);
        cluster.held_by_one_of("outbound:r", &["a"], &mut a);
        let mut b = cluster.start("b");

        // A frozen VM, a long GC pause: the process stops without losing its connections.
        let pid = a.pid().unwrap();
        common::send_signal(pid, "STOP");
        cluster.insert(101, 200);
        let counts = wait_ids(&mut b, &sub, 200);
        cluster.held_by_one_of("outbound:r", &["b"], &mut b);
        common::send_signal(pid, "CONT");

        // Back, it notices that its lease ran out and publishes nothing more.
        a.wait_for_log("standing by", Duration::from_secs(30));
        cluster.insert(201, 300);
        let counts_after = wait_ids(&mut b, &sub, 300);
        assert_eq!(more_than_once(&counts_after, 201..=300), Vec::<i64>::new());
        assert_eq!(
            more_than_once(&counts, 1..=200).len(),
            more_than_once(&counts_after, 1..=200).len(),
            "rows of before the pause published again after it"
        );
        wait_for(&mut b, "the position at 300", || {
            Ok(position(&cluster.status(), "r") == json!(["300"]))
        });
        let lease = cluster.lease("outbound:r");
        assert_eq!(lease["instance"], "b", "{lease}");
        assert!(a.is_running(), "{}", a.log());
    });
}

#[test]
fn one_instance_mirrors_each_dead_letter_and_status_counts_them() {
    each_store(|store| {
        let mirror_topic = unique("inst_dead");
        let cluster = Cluster::new(store, |c, _| {
            c.set(
                "dead_letter",
                json!({"publish": {"broker": "b", "topic": format!("{mirror_topic}/{{route}}"), "qos": 1}}),
            )
        });
        let copies = cluster.world.subscribe(&format!("{mirror_topic}/#"));
        let sub = cluster.subscribe();
        let mut a = cluster.start("a");
        let mut b = cluster.start("b");
        cluster.held_by_one_of("mirror", &["a", "b"], &mut a);
        // `v` becomes a topic level: `+` cannot be one, so those rows are dead letters.
        Db::Postgres.exec(&format!(
            "INSERT INTO {} (id, v) SELECT g, CASE WHEN g % 10 = 0 THEN 'bad+' ELSE 'ok' END \
             FROM generate_series(1, 200) g",
            cluster.table.name
        ));
        wait_for(&mut b, "20 dead-letter copies", || Ok(copies.count() >= 20));
        wait_for(&mut a, "180 rows", || Ok(ids(&sub).len() >= 180));
        std::thread::sleep(Duration::from_secs(1));
        let mut seen = BTreeMap::<i64, usize>::new();
        for m in copies.messages() {
            let letter: Json = serde_json::from_slice(&m.payload).unwrap();
            *seen.entry(letter["id"].as_i64().unwrap()).or_default() += 1;
        }
        assert_eq!(seen.len(), 20, "{seen:?}");
        assert!(
            seen.values().all(|&n| n == 1),
            "copies mirrored twice: {seen:?}"
        );

        // The route's work: 180 rows published and 20 dead letters, by one holder.
        let mut route = Json::Null;
        wait_for(&mut a, "status counts the route's work", || {
            route = cluster.status()["routes"][0].clone();
            Ok(route["moved"] == 200)
        });
        assert_eq!(
            (&route["route"], &route["direction"], &route["configured"]),
            (&json!("r"), &json!("outbound"), &json!(true)),
            "{route}"
        );
        assert_eq!(route["by_instance"].as_array().unwrap().len(), 1, "{route}");
        let status = cluster.status();
        assert_eq!(status["dead_letters"]["total"], 20, "{status}");
        assert_eq!(
            status["dead_letters"]["by_route"],
            json!([{"route": "r", "error_kind": "topic", "count": 20}])
        );
        let text = cluster.mqdb(&["status"]);
        assert_eq!(text.code, Some(0), "{text}");
        for needle in [
            "instances (2):",
            "routes (1):",
            "moved 200",
            "last work",
            "outbound:r",
            "mirror",
            "dead letters (20):",
            "topic",
        ] {
            assert!(text.stdout.contains(needle), "{needle} missing: {text}");
        }
        let _ = (a.terminate(), b.terminate());
    });
}

#[test]
fn metrics_and_health_show_the_instance_and_its_leases() {
    let store = StateStore::sqlite_in(Path::new(&common::temp_dir("inst-http").keep()));
    let port = common::free_port();
    let cluster = Cluster::new(store, |c, _| {
        c.set("http", json!({"listen": format!("127.0.0.1:{port}")}))
    });
    let mut a = cluster.start("metrics-a");
    cluster.held_by_one_of("outbound:r", &["metrics-a"], &mut a);
    let addr = format!("127.0.0.1:{port}");
    let (_, metrics) = common::http::get(&addr, "/metrics");
    assert!(
        metrics.contains("mqdb_instance_info{instance=\"metrics-a\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("mqdb_lease_held{lease=\"outbound:r\",instance=\"metrics-a\"} 1"),
        "{metrics}"
    );
    let mut health = Json::Null;
    wait_for(&mut a, "/health 200", || {
        let (code, body) = common::http::get(&addr, "/health");
        health = serde_json::from_str(&body).unwrap();
        Ok(code == 200)
    });
    assert_eq!(health["instance"], "metrics-a", "{health}");
    assert_eq!(health["leases"]["outbound:r"], "held", "{health}");
}

/// One inbound route with a shared subscription on the world's Mosquitto, run by several
/// instances on a PostgreSQL state store: `seq` from the payload, `device` from the topic.
struct SharedIntake {
    world: World,
    table: TempTable,
    prefix: String,
    config: PathBuf,
}

impl SharedIntake {
    fn new() -> SharedIntake {
        SharedIntake::with(|c| c)
    }

    /// [`SharedIntake::new`] with more in its configuration.
    fn with(extra: impl FnOnce(common::Config) -> common::Config) -> SharedIntake {
        let world = World::new("shared").on_store(StateStore::postgres());
        let columns = "seq INTEGER PRIMARY KEY, device TEXT, topic TEXT, instance TEXT";
        let table = TempTable::create(&Db::Postgres, "shared_in", columns);
        let prefix = unique("shared");
        let route = Route::inbound("s", &format!("{prefix}/{{device}}/data"), &table.name)
            .set("share", "mqdb")
            .set("on_conflict", "ignore")
            .set("key", json!(["seq"]))
            .columns(&[
                ("seq", "payload.seq"),
                ("device", "topic.device"),
                ("topic", "meta.topic"),
                ("instance", "meta.instance"),
            ]);
        let config = world
            .config(&Db::Postgres)
            .set("instance", "${MQDB_INSTANCE:-cli}")
            .set("lease", LEASE)
            .set("http", json!({"listen": "127.0.0.1:${MQDB_HTTP_PORT:-0}"}))
            .inbound(route);
        let config = extra(config).write();
        SharedIntake {
            world,
            table,
            prefix,
            config,
        }
    }

    /// An instance with its own config file, log and HTTP port; and that port.
    fn start(&self, instance: &str) -> (Bridge, String) {
        let own = self.config.with_file_name(format!("mqdb-{instance}.yaml"));
        std::fs::copy(&self.config, &own).expect("copy the config");
        let port = common::free_port().to_string();
        let env = [
            ("MQDB_INSTANCE", instance),
            ("MQDB_HTTP_PORT", port.as_str()),
        ];
        (
            Bridge::start_with_env(&own, &env),
            format!("127.0.0.1:{port}"),
        )
    }

    fn messages(&self, seqs: std::ops::Range<i64>) -> Vec<(String, Vec<u8>)> {
        common::seq_messages(|s| format!("{}/dev{}/data", self.prefix, s % 7), seqs)
    }

    fn rows(&self) -> i64 {
        self.table.count()
    }

    fn status(&self) -> Json {
        let ran = mqdb_env(&self.config, &["status", "--json"], &[]);
        assert_eq!(ran.code, Some(0), "{ran}");
        serde_json::from_str(&ran.stdout).unwrap()
    }
}

/// How many messages the instance at `addr` took from the broker, from its /metrics.
fn received(addr: &str) -> u64 {
    let (_, metrics) = common::http::get(addr, "/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with("mqdb_messages_received_total{route=\"s\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wait_ready(bridge: &mut Bridge, addr: &str) {
    wait_for(bridge, "/health 200", || {
        Ok(common::http::try_get(addr, "/health").is_some_and(|(code, _)| code == 200))
    });
}

#[test]
fn instances_sharing_a_subscription_split_the_messages_and_keep_topic_captures() {
    let s = SharedIntake::new();
    let (mut a, a_addr) = s.start("a");
    let (mut b, b_addr) = s.start("b");
    wait_ready(&mut a, &a_addr);
    wait_ready(&mut b, &b_addr);
    s.world
        .publisher()
        .publish_all_confirmed(s.messages(1..2001), 1);
    wait_for(&mut a, "2000 rows", || Ok(s.rows() >= 2000));
    assert_eq!(s.rows(), 2000);
    let (from_a, from_b) = (received(&a_addr), received(&b_addr));
    eprintln!("instance a took {from_a} messages, b {from_b}");
    assert_eq!(from_a + from_b, 2000, "each message went to one instance");
    assert!(from_a > 0 && from_b > 0, "both worked: {from_a} / {from_b}");
    // Captures and meta.topic come from the real topic, not `$share/…`.
    let wrong = Db::Postgres.query(&format!(
        "SELECT seq FROM {} WHERE device <> 'dev' || (seq % 7) OR topic <> '{}/' || device || '/data'",
        s.table.name, s.prefix
    ));
    assert!(
        wrong.is_empty(),
        "rows with the wrong topic values: {wrong:?}"
    );
    let slots: Vec<String> = [&a, &b]
        .iter()
        .map(|bridge| {
            let log = bridge.log();
            let at = log
                .find("holding a shared-subscription slot")
                .expect("a slot");
            log[at..].lines().next().unwrap().to_string()
        })
        .collect();
    assert_ne!(slots[0], slots[1]);
    // Status says what each instance stored for the route, and when it last did.
    let mut route = Json::Null;
    wait_for(&mut a, "status counts the route's work", || {
        route = s.status()["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["route"] == "s").cloned())
            .unwrap_or(Json::Null);
        Ok(route["moved"] == 2000)
    });
    assert_eq!(route["direction"], "inbound", "{route}");
    let moved: BTreeMap<String, u64> = route["by_instance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let name = i["instance"].as_str().unwrap().to_string();
            (name, i["moved"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        moved,
        BTreeMap::from([("a".to_string(), from_a), ("b".to_string(), from_b)]),
        "{route}"
    );
    assert!(route["last_work_at"].is_string(), "{route}");
}

#[test]
fn a_shared_member_killed_and_never_restarted_loses_nothing() {
    let s = SharedIntake::new();
    let mut members: Vec<(Bridge, String)> = ["a", "b", "c"].iter().map(|n| s.start(n)).collect();
    for (bridge, addr) in &mut members {
        wait_ready(bridge, addr);
    }
    let total = 3000;
    let publisher = s.world.publisher();
    let first = s.messages(1..1001);
    publisher.publish_all_confirmed(first, 1);
    wait_for(&mut members[0].0, "the first rows", || Ok(s.rows() >= 500));

    // One member dies for good while messages keep coming: the broker keeps handing it
    // its share, in its persistent session.
    let (mut dead, _) = members.remove(1);
    dead.kill();
    let killed_at = Instant::now();
    publisher.publish_all_confirmed(s.messages(1001..total + 1), 1);

    let watch = &mut members[0].0;
    wait_for(watch, &format!("{total} rows"), || Ok(s.rows() >= total));
    eprintln!("every row stored {:?} after the kill", killed_at.elapsed());
    assert_eq!(s.rows(), total);
    let missing = Db::Postgres.query(&format!(
        "SELECT g FROM generate_series(1, {total}) g WHERE g NOT IN (SELECT seq FROM {})",
        s.table.name
    ));
    assert!(missing.is_empty(), "missing: {missing:?}");
    let logs: Vec<PathBuf> = members.iter().map(|(b, _)| b.log_path.clone()).collect();
    let adopted = || {
        logs.iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .find(|log| log.contains("adopted session drained and ended"))
    };
    wait_for(
        &mut members[0].0,
        "a survivor to adopt the dead member's session",
        || Ok(adopted().is_some()),
    );
    let log = adopted().unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("adopted session drained"))
        .unwrap();
    eprintln!("{line}");
    assert_eq!(s.status()["dead_letters"]["total"], 0);

    // Messages published now go to the survivors only: the adopted session was ended.
    publisher.publish_all_confirmed(s.messages(total + 1..total + 301), 1);
    let watch = &mut members[0].0;
    wait_for(watch, "300 more rows", || Ok(s.rows() >= total + 300));
}

fn missing_seqs(table: &str, total: i64) -> Vec<Vec<Option<String>>> {
    Db::Postgres.query(&format!(
        "SELECT g FROM generate_series(1, {total}) g WHERE g NOT IN (SELECT seq FROM {table})"
    ))
}

#[test]
fn three_instances_share_mqtt_and_amqp_intake_through_a_kill_a_restart_and_a_stop() {
    let queue = unique("inst_q");
    let amqp_table = TempTable::create(
        &Db::Postgres,
        "shared_amqp",
        "seq INTEGER PRIMARY KEY, instance TEXT",
    );
    let amqp_route = Route::named("q")
        .set("broker", "r")
        .set("queue", queue.as_str())
        .set("database", "d")
        .set("table", amqp_table.name.as_str())
        .set("format", "json")
        .set("on_conflict", "ignore")
        .set("key", json!(["seq"]))
        .columns(&[("seq", "payload.seq"), ("instance", "meta.instance")]);
    let s = SharedIntake::with(|c| {
        c.broker("r", common::Rabbit::URL, Json::Null)
            .inbound(amqp_route)
    });
    let mut rabbit = common::Rabbit::connect();
    rabbit.declare_durable_queue(&queue);

    let mut members: BTreeMap<&str, (Bridge, String)> = ["a", "b", "c"]
        .into_iter()
        .map(|n| (n, s.start(n)))
        .collect();
    for (bridge, addr) in members.values_mut() {
        wait_ready(bridge, addr);
    }
    let per_protocol: i64 = 15_000;
    let chunk: i64 = 500;
    let publisher = s.world.publisher();
    for i in 0..per_protocol / chunk {
        let seqs = i * chunk + 1..(i + 1) * chunk + 1;
        publisher.publish_all_confirmed(s.messages(seqs.clone()), 1);
        let payloads = seqs
            .map(|n| format!(r#"{{"seq":{n}}}"#).into_bytes())
            .collect();
        rabbit.publish_to_queue(&queue, payloads);
        match i {
            8 => members.get_mut("b").unwrap().0.kill(),
            18 => {
                let restarted = s.start("b");
                members.insert("b", restarted);
            }
            24 => assert!(members.get_mut("c").unwrap().0.terminate().success()),
            _ => {}
        }
    }
    let watch = &mut members.get_mut("a").unwrap().0;
    wait_for(watch, "every message a row", || {
        Ok(s.rows() >= per_protocol && amqp_table.count() >= per_protocol)
    });
    assert_eq!(
        missing_seqs(&s.table.name, per_protocol),
        Vec::<Vec<Option<String>>>::new()
    );
    assert_eq!(
        missing_seqs(&amqp_table.name, per_protocol),
        Vec::<Vec<Option<String>>>::new()
    );
    assert_eq!((s.rows(), amqp_table.count()), (per_protocol, per_protocol));
    assert_eq!(s.status()["dead_letters"]["total"], 0);
    // The table says which instance wrote each row: all three did, on both protocols.
    for table in [&s.table.name, &amqp_table.name] {
        let by_instance = Db::Postgres.query(&format!(
            "SELECT instance, COUNT(*) FROM {table} GROUP BY instance ORDER BY instance"
        ));
        eprintln!("{table}: rows by instance {by_instance:?}");
        let names: Vec<_> = by_instance.iter().filter_map(|r| r[0].clone()).collect();
        assert_eq!(names, ["a", "b", "c"], "{by_instance:?}");
    }
}

#[test]
fn two_instances_ride_out_a_state_store_outage_longer_than_the_lease() {
    // The PostgreSQL state store, reached through a relay that can cut it off.
    let store = StateStore::postgres();
    let relay = common::TcpProxy::start("127.0.0.1:5432".parse().unwrap());
    let url = store
        .url()
        .replace(":5432/", &format!(":{}/", relay.addr().port()));
    let cluster = Cluster::new(store, |c, _| c.state(&url));
    let sub = cluster.subscribe();
    let mut a = cluster.start("a");
    let mut b = cluster.start("b");
    cluster.insert(1, 100);
    wait_ids(&mut a, &sub, 100);

    // Far longer than the lease: whoever held the route cannot renew it, nor store a
    // position, and must stop publishing rather than run on unfenced.
    let peak = |x: &Bridge| common::process_stats(x.pid().unwrap()).0;
    let before = [peak(&a), peak(&b)];
    relay.set_down(true);
    cluster.insert(101, 200);
    std::thread::sleep(Duration::from_secs(20));
    let during = ids(&sub);
    let after = [peak(&a), peak(&b)];
    relay.set_down(false);
    eprintln!("peak RSS (kB) before the outage {before:?}, at its end {after:?}");
    for (before, after) in before.into_iter().zip(after) {
        assert!(
            after <= before + 20 * 1024,
            "RSS grew from {before} kB to {after} kB"
        );
    }

    let counts = wait_ids(&mut b, &sub, 200);
    assert!(a.is_running() && b.is_running(), "{}\n{}", a.log(), b.log());
    let again = more_than_once(&counts, 1..=200);
    assert!(
        again.len() <= MAX_ROWS,
        "{} published twice: {again:?}",
        again.len()
    );
    // Rows of the outage were published by at most one poll before the lease ran out.
    let early = (101..=200).filter(|i| during.contains_key(i)).count();
    assert!(
        early <= MAX_ROWS,
        "{early} rows published while the store was away"
    );
    wait_for(&mut a, "the position at 200", || {
        Ok(position(&cluster.status(), "r") == json!(["200"]))
    });
    let lease = cluster.lease("outbound:r");
    assert!(lease["held"] == true, "{lease}");
    let logs = format!("{}{}", a.log(), b.log());
    assert!(
        logs.contains("stepping down"),
        "no holder stepped down:\n{logs}"
    );
}

#[test]
fn positions_are_listed_set_and_reset_and_a_running_holder_gives_way_only_to_force() {
    each_store(|store| {
        let cluster = Cluster::new(store, |c, _| c);
        let sub = cluster.subscribe();
        let mut a = cluster.start("a");
        cluster.insert(1, 10);
        wait_ids(&mut a, &sub, 10);
        wait_for(&mut a, "the position at 10", || {
            Ok(position(&cluster.status(), "r") == json!(["10"]))
        });
        let listed = cluster.mqdb(&["position", "list", "--json"]);
        assert_eq!(listed.code, Some(0), "{listed}");
        let row: Json = serde_json::from_str(listed.stdout.lines().next().unwrap()).unwrap();
        assert_eq!(
            (
                &row["route"],
                &row["position"],
                &row["start"],
                &row["held_by"]
            ),
            (&json!("r"), &json!(["10"]), &json!(["0"]), &json!("a")),
            "{listed}"
        );

        // Refused while a running instance holds the route, or without a way to confirm.
        let held = cluster.mqdb(&["position", "set", "r", "3", "--yes"]);
        assert_eq!(held.code, Some(2), "{held}");
        assert!(held.stderr.contains("held by running instance a"), "{held}");
        let unconfirmed = cluster.mqdb(&["position", "reset", "r"]);
        assert_eq!(unconfirmed.code, Some(2), "{unconfirmed}");
        assert!(unconfirmed.stderr.contains("--yes"), "{unconfirmed}");
        let arity = cluster.mqdb(&["position", "set", "r", "3", "4", "--yes"]);
        assert!(
            arity.code == Some(2) && arity.stderr.contains("tracks 1 column"),
            "{arity}"
        );
        let unknown = cluster.mqdb(&["position", "reset", "nope", "--yes"]);
        assert!(
            unknown.code == Some(2) && unknown.stderr.contains("routes are: r"),
            "{unknown}"
        );
        assert_eq!(
            ids(&sub).values().sum::<usize>(),
            10,
            "nothing published again yet"
        );

        // Forced: the running holder steps down, reads the new position and republishes.
        let forced = cluster.mqdb(&["position", "set", "r", "3", "--yes", "--force"]);
        assert_eq!(forced.code, Some(0), "{forced}");
        wait_for(&mut a, "rows 4..=10 published again", || {
            let counts = ids(&sub);
            Ok((4..=10).all(|i| counts[&i] == 2))
        });
        let counts = ids(&sub);
        assert!((1..=3).all(|i| counts[&i] == 1), "{counts:?}");

        // Stopped, a reset takes the route back to its start.
        assert!(a.terminate().success());
        let reset = cluster.mqdb(&["position", "reset", "r", "--yes"]);
        assert_eq!(reset.code, Some(0), "{reset}");
        assert_eq!(position(&cluster.status(), "r"), json!(["0"]));
        let mut a = cluster.start("a");
        wait_for(&mut a, "every row published once more", || {
            let counts = ids(&sub);
            Ok((1..=3).all(|i| counts[&i] == 2) && (4..=10).all(|i| counts[&i] == 3))
        });
        assert!(a.terminate().success());
    });
}
