//! SIGHUP reads the configuration file again: unchanged routes run on untouched, changed
//! and removed ones drain before they stop or restart, new ones start, and a broker is
//! reconnected only when its own block changed. A file that does not validate is logged
//! and the running configuration stays.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    Bridge, Db, Publisher, Rabbit, Route, Subscriber, TempTable, World, send_signal, unique,
    wait_for,
};
use serde_json::{Value as Json, json};

fn reload(bridge: &Bridge, reloads: &mut usize) {
    send_signal(bridge.pid().expect("running"), "HUP");
    *reloads += 1;
    let want = *reloads;
    let start = std::time::Instant::now();
    while bridge.log().matches("configuration reloaded").count()
        + bridge
            .log()
            .matches("the configuration was not reloaded")
            .count()
        < want
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "reload {want} did not finish:\n{}",
            bridge.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sequence numbers missing from `table`'s `seq` column among 1..=total.
fn missing(table: &str, total: i64) -> Vec<i64> {
    let rows = Db::Postgres.query(&format!(
        "SELECT s FROM generate_series(1, {total}) s WHERE s NOT IN (SELECT seq FROM {table}) ORDER BY s"
    ));
    rows.iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect()
}

/// How many rows each `tag` has.
fn tags(table: &str) -> Vec<(String, i64)> {
    Db::Postgres
        .query(&format!(
            "SELECT tag, COUNT(*) FROM {table} GROUP BY tag ORDER BY tag"
        ))
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].as_deref().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

struct Setup {
    world: World,
    mqtt_table: TempTable,
    kept_table: TempTable,
    amqp_table: TempTable,
    new_table: TempTable,
    prefix: String,
    queue: String,
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let world = World::new("reload");
        let columns = "seq INTEGER PRIMARY KEY, tag TEXT";
        Setup {
            mqtt_table: TempTable::create(&Db::Postgres, "reload_m", columns),
            kept_table: TempTable::create(&Db::Postgres, "reload_k", columns),
            amqp_table: TempTable::create(&Db::Postgres, "reload_q", columns),
            new_table: TempTable::create(&Db::Postgres, "reload_n", columns),
            prefix: unique("reload"),
            queue: unique("reload_q"),
            config: world.path("mqdb.yaml"),
            world,
        }
    }

    /// The configuration in `version`: the MQTT route `m` and the AMQP route `q` take
    /// their `tag` from the payload's field of that name, so each row says which
    /// configuration mapped it; `k` never changes; `n` exists in version 3 only; version 5
    /// changes only the MQTT broker.
    fn write(&self, version: u32, amqp_tag: &str) {
        let route = |name: &str, table: &TempTable, tag: &str| {
            Route::named(name)
                .set("database", "d")
                .set("table", table.name.as_str())
                .set("on_conflict", "ignore")
                .set("key", json!(["seq"]))
                .columns(&[("seq", "payload.seq"), ("tag", tag)])
        };
        let mqtt = |name: &str, table: &TempTable, topic: &str, tag: &str| {
            route(name, table, tag)
                .set("broker", "b")
                .set("topic", format!("{}/{topic}", self.prefix))
                .qos(1)
        };
        let mut config = self
            .world
            .config(&Db::Postgres)
            .broker("r", Rabbit::URL, Json::Null)
            .inbound(mqtt(
                "m",
                &self.mqtt_table,
                "m",
                &format!("payload.v{}", version.min(4)),
            ))
            .inbound(mqtt("k", &self.kept_table, "k", "payload.v1"))
            .inbound(
                route("q", &self.amqp_table, amqp_tag)
                    .set("broker", "r")
                    .set("queue", self.queue.as_str()),
            );
        if version == 3 {
            config = config.inbound(mqtt("n", &self.new_table, "n", "payload.v3"));
        }
        if version == 5 {
            // The broker's own block changes: its source reconnects under the routes.
            let (url, mut settings) = self.world.mqtt(Json::Null);
            settings["keep_alive"] = json!("20s");
            config = config.broker("b", &url, settings);
        }
        config.write_to(&self.config);
    }
}

fn payload(seq: i64) -> Vec<u8> {
    format!(r#"{{"seq":{seq},"v1":"v1","v2":"v2","v3":"v3","v4":"v4"}}"#).into_bytes()
}

#[test]
fn reloads_under_load_restart_only_what_changed_and_lose_nothing() {
    let s = Setup::new();
    let mut rabbit = Rabbit::connect();
    rabbit.declare_durable_queue(&s.queue);
    s.write(1, "payload.v1");
    let mut bridge = Bridge::start(&s.config);
    bridge.wait_for_log("route ready", Duration::from_secs(30));
    // Both MQTT routes subscribed before the stream starts.
    let probe: Publisher = s.world.publisher();
    wait_for(&mut bridge, "the MQTT routes subscribed", || {
        probe.publish(&format!("{}/k", s.prefix), 1, payload(0));
        probe.wait_confirmed();
        Ok(common::try_scalar(
            &Db::Postgres,
            &format!("SELECT COUNT(*) FROM {} WHERE seq = 0", s.kept_table.name),
        ) == Some(1))
    });
    Db::Postgres.exec(&format!("DELETE FROM {} WHERE seq = 0", s.kept_table.name));
    let connections = |b: &Bridge| b.log().matches("broker connected").count();
    let connected_at_start = connections(&bridge);

    let total: i64 = 6_000;
    let chunk: i64 = 500;
    let mut reloads = 0;
    let publisher = s.world.publisher();
    let mut expect: Vec<(&TempTable, &str)> = Vec::new();
    for i in 0..total / chunk {
        let seqs = i * chunk + 1..(i + 1) * chunk + 1;
        for topic in ["m", "k", "n"] {
            let messages = seqs
                .clone()
                .map(|n| (format!("{}/{topic}", s.prefix), payload(n)))
                .collect();
            publisher.publish_all_confirmed(messages, 1);
        }
        rabbit.publish_to_queue(&s.queue, seqs.clone().map(payload).collect());
        // Messages sent after a reload reach the routes it started.
        for (table, tag) in std::mem::take(&mut expect) {
            wait_for(&mut bridge, &format!("a row tagged {tag}"), || {
                Ok(common::try_scalar(
                    &Db::Postgres,
                    &format!("SELECT COUNT(*) FROM {} WHERE tag = '{tag}'", table.name),
                )
                .unwrap_or(0)
                    > 0)
            });
        }
        match i {
            2 => {
                // `m` changes; `q` and `k` do not.
                s.write(2, "payload.v1");
                reload(&bridge, &mut reloads);
                expect = vec![(&s.mqtt_table, "v2")];
            }
            4 => {
                // `m` and `q` change, `n` is new.
                s.write(3, "payload.v3");
                reload(&bridge, &mut reloads);
                expect = vec![(&s.mqtt_table, "v3"), (&s.amqp_table, "v3")];
            }
            6 => {
                // Not valid: the running configuration stays.
                std::fs::write(&s.config, "inbound:\n  - name: m\n    qos: 7\n").unwrap();
                reload(&bridge, &mut reloads);
            }
            8 => {
                // `m` and `q` change again, `n` goes.
                s.write(4, "payload.v4");
                reload(&bridge, &mut reloads);
                expect = vec![(&s.mqtt_table, "v4"), (&s.amqp_table, "v4")];
            }
            10 => {
                // Only the MQTT broker's block changes.
                s.write(5, "payload.v4");
                reload(&bridge, &mut reloads);
            }
            _ => {}
        }
    }
    wait_for(&mut bridge, "every message a row", || {
        Ok([&s.mqtt_table, &s.kept_table, &s.amqp_table]
            .iter()
            .all(|t| t.count() >= total))
    });
    let log = bridge.log();
    for table in [&s.mqtt_table, &s.kept_table, &s.amqp_table] {
        assert_eq!(missing(&table.name, total), Vec::<i64>::new(), "{log}");
        assert_eq!(table.count(), total);
    }
    // Each configuration mapped rows of its own, in order of the reloads.
    let m = tags(&s.mqtt_table.name);
    let names: Vec<&str> = m.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["v1", "v2", "v3", "v4"], "{m:?}");
    let q = tags(&s.amqp_table.name);
    let names: Vec<&str> = q.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["v1", "v3", "v4"], "{q:?}");
    assert_eq!(tags(&s.kept_table.name), [("v1".to_string(), total)]);
    // The new route took what was published while it existed, and only that.
    let n = s.new_table.count();
    assert!(n > 0 && n < total, "route n stored {n} rows");
    assert!(log.contains("mqdb.yaml:3"), "{log}");
    assert!(log.contains("expected 0, 1 or 2"), "{log}");
    // The unchanged route never stopped; its broker reconnected once, when its block
    // changed.
    let stopped = |route: &str| {
        log.lines()
            .filter(|l| l.contains("route stopping") && l.contains(&format!("route={route}")))
            .count()
    };
    assert_eq!(
        (stopped("m"), stopped("q"), stopped("n"), stopped("k")),
        (3, 2, 1, 0),
        "{log}"
    );
    assert_eq!(connections(&bridge), connected_at_start + 1, "{log}");
    // The removed route's filter was unsubscribed.
    assert!(
        log.lines().any(|l| l.contains("unsubscribing a filter")
            && l.contains(&format!("{}/n", s.prefix))),
        "{log}"
    );
    assert_eq!(common::dlq_list(&s.config).len(), 0, "{log}");
    common::terminate_ok(&mut bridge);
}

#[test]
fn an_outbound_route_changed_by_a_reload_resumes_from_its_position_on_its_new_topic() {
    let world = World::new("reload_out");
    let source = TempTable::create(&Db::Postgres, "reload_o", "id INTEGER PRIMARY KEY");
    let prefix = unique("reload_o");
    let query = format!("SELECT id FROM {} WHERE id > ? ORDER BY id", source.name);
    let config = world.path("mqdb.yaml");
    let write = |topic: &str| {
        world
            .config(&Db::Postgres)
            .outbound(
                Route::outbound("o", &query)
                    .interval("100ms")
                    .track("id", 0)
                    .broker("b")
                    .topic(&format!("{prefix}/{topic}/{{id}}"))
                    .qos(1),
            )
            .write_to(&config);
    };
    let insert = |from: i64, to: i64| {
        Db::Postgres.exec(&format!(
            "INSERT INTO {} SELECT generate_series({from}, {to})",
            source.name
        ))
    };
    write("one");
    let sub = Subscriber::connect(world.broker.port, &format!("{prefix}/#"), 1);
    let mut bridge = Bridge::start(&config);
    let mut reloads = 0;
    insert(1, 50);
    wait_for(&mut bridge, "50 rows published", || Ok(sub.count() >= 50));
    write("two");
    reload(&bridge, &mut reloads);
    insert(51, 100);
    wait_for(&mut bridge, "100 rows published", || Ok(sub.count() >= 100));
    let topics: Vec<String> = sub.messages().into_iter().map(|m| m.topic).collect();
    let on = |t: &str| {
        topics
            .iter()
            .filter(|x| x.contains(&format!("/{t}/")))
            .count()
    };
    // The position carried over: the new topic has exactly the new rows.
    assert_eq!((on("one"), on("two")), (50, 50), "{topics:?}");
    // The same file again changes nothing.
    reload(&bridge, &mut reloads);
    let stops = bridge
        .log()
        .matches("route stopping for the reload")
        .count();
    assert_eq!(stops, 1, "{}", bridge.log());
    common::terminate_ok(&mut bridge);
}

#[test]
fn a_reloaded_route_that_cannot_start_leaves_the_running_one_in_place() {
    let world = World::new("reload_bad");
    let table = TempTable::create(&Db::Postgres, "reload_b", "seq INTEGER PRIMARY KEY");
    let prefix = unique("reload_b");
    let config = world.path("mqdb.yaml");
    let write = |table: &str| {
        world
            .config(&Db::Postgres)
            .inbound(
                Route::inbound("r", &format!("{prefix}/#"), table)
                    .qos(1)
                    .columns(&[("seq", "payload.seq")]),
            )
            .write_to(&config);
    };
    write(&table.name);
    let mut bridge = Bridge::start(&config);
    // A SIGHUP before the routes are up is a reload and not the end.
    bridge.wait_for_log("instance", Duration::from_secs(30));
    let mut reloads = 0;
    reload(&bridge, &mut reloads);
    bridge.wait_for_log("route ready", Duration::from_secs(30));
    let publisher = world.publisher();
    let send = |seqs: std::ops::Range<i64>| {
        publisher.publish_all_confirmed(common::seq_messages(|_| format!("{prefix}/x"), seqs), 1)
    };
    send(1..101);
    common::wait_for_count(
        &mut bridge,
        &Db::Postgres,
        &format!("SELECT COUNT(*) FROM {}", table.name),
        100,
    );
    write("no_such_table_here");
    reload(&bridge, &mut reloads);
    let log = bridge.log();
    assert!(
        log.contains("the reloaded route cannot start") && log.contains("no_such_table_here"),
        "{log}"
    );
    send(101..201);
    common::wait_for_count(
        &mut bridge,
        &Db::Postgres,
        &format!("SELECT COUNT(*) FROM {}", table.name),
        200,
    );
    assert!(!bridge.log().contains("route stopping"), "{}", bridge.log());
    common::terminate_ok(&mut bridge);
}

#[test]
fn a_shared_subscription_route_changed_by_a_reload_loses_nothing() {
    let world = World::new("reload_share");
    let table = TempTable::create(
        &Db::Postgres,
        "reload_s",
        "seq INTEGER PRIMARY KEY, tag TEXT",
    );
    let prefix = unique("reload_s");
    let config = world.path("mqdb.yaml");
    let write = |tag: &str| {
        world
            .config(&Db::Postgres)
            .inbound(
                Route::inbound("s", &format!("{prefix}/+/data"), &table.name)
                    .set("share", "mqdb")
                    .qos(1)
                    .set("on_conflict", "ignore")
                    .set("key", json!(["seq"]))
                    .columns(&[("seq", "payload.seq"), ("tag", tag)]),
            )
            .write_to(&config);
    };
    write("payload.v1");
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log(
        "holding a shared-subscription slot",
        Duration::from_secs(30),
    );
    let probe = world.publisher();
    wait_for(&mut bridge, "the shared route subscribed", || {
        probe.publish(&format!("{prefix}/x/data"), 1, payload(0));
        probe.wait_confirmed();
        Ok(table.count() > 0)
    });
    let publisher = world.publisher();
    let total: i64 = 3_000;
    let mut reloads = 0;
    for i in 0..6 {
        let seqs = i * 500 + 1..(i + 1) * 500 + 1;
        publisher.publish_all_confirmed(
            seqs.map(|n| (format!("{prefix}/d{}/data", n % 3), payload(n)))
                .collect(),
            1,
        );
        if i == 2 {
            write("payload.v2");
            reload(&bridge, &mut reloads);
        }
    }
    wait_for(&mut bridge, "every message a row", || {
        Ok(table.count() > total)
    });
    assert_eq!(missing(&table.name, total), Vec::<i64>::new());
    let tags = tags(&table.name);
    let names: Vec<&str> = tags.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["v1", "v2"], "{tags:?}");
    assert_eq!(
        bridge.log().matches("broker connected").count(),
        1,
        "{}",
        bridge.log()
    );
    common::terminate_ok(&mut bridge);
}
