//! Dead-letter operations against the real services: the `dead_letter.publish` mirror (to a
//! private Mosquitto, to a RabbitMQ exchange, and across an outage of the mirror's broker),
//! `mqdb dlq replay` interrupted with SIGINT, a replay beside a running `mqdb run` on the
//! same state store, two replays at once, a replay after one that was killed, and the
//! mirror's configuration errors.
//!
//! Dead letters are produced the way production produces them: a running bridge and a table
//! that rejects the rows (a CHECK constraint the test drops afterwards to make them
//! replayable). Where a test needs a replay to be in the middle of its work at a given
//! moment, the test holds an uncommitted PostgreSQL row with the primary key of one of the
//! replay's rows, so the replay's insert waits on it: deterministic, never timed.
//!
//! Every test has its own temp dir (config, state store, logs), its own private Mosquitto,
//! unique table, topic, client-id, queue and exchange names, and drops what it created when
//! it ends. Waits are liveness deadlines, never speed assertions.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    Bridge, Db, LIVENESS, Mosquitto, Rabbit, Route, Subscriber, TcpProxy, TempTable, World,
    dlq_list, mqdb_command, odbc_connect, odbc_exec, path_str, pg_lock_waiters, run_mqdb, unique,
    wait_for,
};
use common::{scalar, terminate_ok, try_scalar, wait_for_count};
use serde_json::{Value as Json, json};

type Messages = Vec<(String, Vec<u8>)>;

/// A hang detector for a whole replay of a few thousand entries (never a speed assertion).
const REPLAY_DEADLINE: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// One `inbound:` list item with broker `b`, database `d`, QoS 1, JSON, `id` and `v` from
/// the payload, `on_conflict: error` and 500-row batches.
fn route(name: &str, topic: &str, table: &str) -> Route {
    Route::inbound(name, topic, table)
        .columns(&[("id", "payload.id"), ("v", "payload.v")])
        .set("on_conflict", "error")
        .set("batch", json!({ "max_rows": 500, "max_delay": "100ms" }))
}

/// `good` messages `{"id":N,"v":N}` on `<root>/<route_of(N)>`, with the `bad` ones spread
/// evenly among them (one after every `good / bad.len()` good ones).
fn good_among_bad(
    root: &str,
    good: i64,
    route_of: impl Fn(i64) -> &'static str,
    bad: &Messages,
) -> Messages {
    let every = good / bad.len() as i64;
    let mut messages: Messages = Vec::new();
    for id in 1..=good {
        messages.push((
            format!("{root}/{}", route_of(id)),
            format!(r#"{{"id":{id},"v":{id}}}"#).into_bytes(),
        ));
        if id % every == 0 {
            messages.push(bad[(id / every - 1) as usize].clone());
        }
    }
    messages
}

/// Waits until `dlq list` holds exactly `want` entries; more fails at once.
fn wait_for_dead_letters(bridge: &mut Bridge, config: &Path, want: usize) {
    wait_for(bridge, &format!("{want} dead letters"), || {
        let n = dlq_list(config).len();
        if n > want {
            return Err(format!("{n} dead letters, expected {want}"));
        }
        Ok(n == want)
    });
}

fn id_of(letter: &Json) -> i64 {
    letter["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id: {letter}"))
}

fn text<'a>(letter: &'a Json, key: &str) -> &'a str {
    letter[key]
        .as_str()
        .unwrap_or_else(|| panic!("no text {key}: {letter}"))
}

/// The `id` inside a dead letter's JSON payload (the row's primary key).
fn payload_id(letter: &Json) -> i64 {
    let payload: Json = serde_json::from_str(text(letter, "payload"))
        .unwrap_or_else(|e| panic!("payload is not JSON ({e}): {letter}"));
    payload["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("payload without an integer id: {letter}"))
}

/// Every mirrored copy, in arrival order (address, envelope), is exactly the `dlq list
/// --json` object of the dead letter with the same id, at the address `address` builds from
/// it; one copy per dead letter, none missing, none twice, in id order.
fn assert_mirrored(letters: &[Json], copies: &[(String, Json)], address: impl Fn(&Json) -> String) {
    let listed: Vec<i64> = letters.iter().map(id_of).collect();
    let copied: Vec<i64> = copies.iter().map(|(_, c)| id_of(c)).collect();
    assert_eq!(
        copied, listed,
        "the mirrored ids (arrival order) are not the stored ids (id order)"
    );
    for ((to, copy), letter) in copies.iter().zip(letters) {
        assert_eq!(
            copy, letter,
            "the envelope is not the `dlq list --json` object"
        );
        assert_eq!(*to, address(letter), "address of {letter}");
    }
}

/// `(route, error_kind)` → how many of `letters` have it.
fn kinds(letters: &[Json]) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for l in letters {
        *out.entry((
            text(l, "route").to_owned(),
            text(l, "error_kind").to_owned(),
        ))
        .or_default() += 1;
    }
    out
}

/// The primary keys of every row of `table`.
fn row_ids(db: &Db, table: &str) -> Vec<i64> {
    db.query(&format!("SELECT id FROM {table} ORDER BY id"))
        .into_iter()
        .map(|r| {
            r[0].as_deref()
                .expect("id is not NULL")
                .trim()
                .parse()
                .expect("integer id")
        })
        .collect()
}

/// A `mqdb dlq replay` child process; stdout and stderr go to files in the test's dir.
struct Replay {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

/// What a finished replay printed and how it exited.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    summary: Summary,
}

impl Replay {
    /// Starts `mqdb -c CONFIG dlq replay ARGS…` (stdin closed, not a terminal).
    fn start(config: &Path, args: &[&str], label: &str) -> Replay {
        let dir = config.parent().expect("config dir");
        let out = dir.join(format!("{label}.out"));
        let err = dir.join(format!("{label}.err"));
        let child = mqdb_command()
            .arg("-c")
            .arg(config)
            .args(["dlq", "replay"])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("create replay stdout"))
            .stderr(File::create(&err).expect("create replay stderr"))
            .spawn()
            .expect("spawn mqdb dlq replay");
        Replay {
            child: Some(child),
            out,
            err,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("replay not reaped").id()
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Polls `check` every 50 ms until it is true; panics with the replay's output if the
    /// replay exits first or after [`LIVENESS`].
    fn wait_until(&mut self, what: &str, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if check() {
                return;
            }
            let child = self.child.as_mut().expect("replay not reaped");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the replay exited ({status}) while waiting for {what}; {}",
                    self.output()
                );
            }
            if start.elapsed() >= LIVENESS {
                panic!(
                    "timed out after {LIVENESS:?} waiting for {what}; replay {}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit (a [`REPLAY_DEADLINE`] hang detector), without a summary.
    fn finish_status(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("replay not reaped");
        common::wait_child(&mut child, REPLAY_DEADLINE).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the replay did not exit within {REPLAY_DEADLINE:?}; {}",
                self.output()
            )
        })
    }

    /// Waits for the exit (a [`REPLAY_DEADLINE`] hang detector) and parses the summary.
    fn finish(&mut self) -> Finished {
        let mut child = self.child.take().expect("replay not reaped");
        let Some(status) = common::wait_child(&mut child, REPLAY_DEADLINE) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the replay did not finish within {REPLAY_DEADLINE:?}; {}",
                self.output()
            );
        };
        let stdout = std::fs::read_to_string(&self.out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.err).unwrap_or_default();
        let summary = Summary::parse(&stdout)
            .unwrap_or_else(|| panic!("no summary line ({status}); {}", self.output()));
        Finished {
            status,
            stdout,
            stderr,
            summary,
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The replay's summary line: `replayed N of M[, failed F (kind: n, …)][, H held by
/// another replay (…)][, G no longer in the queue (…)][, K not attempted][; interrupted…]
/// [; stopped by an outage…]`.
#[derive(Debug)]
struct Summary {
    line: String,
    replayed: u64,
    total: u64,
    failed: BTreeMap<String, u64>,
    held: u64,
    gone: u64,
}

impl Summary {
    fn parse(stdout: &str) -> Option<Summary> {
        let line = stdout.lines().rev().find(|l| l.starts_with("replayed "))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |w: &str| w.trim_end_matches([',', ';']).parse::<u64>().ok();
        if words.get(2) != Some(&"of") {
            return None;
        }
        let replayed = num(words.get(1)?)?;
        let total = num(words.get(3)?)?;
        let mut failed = BTreeMap::new();
        if let Some(at) = line.find(", failed ") {
            let rest = &line[at..];
            let inner = &rest[rest.find('(')? + 1..rest.find(')')?];
            for part in inner.split(", ") {
                let (kind, n) = part.split_once(": ")?;
                failed.insert(kind.to_owned(), n.parse().ok()?);
            }
        }
        // The count just before `phrase`, or 0 when the phrase is absent.
        let count_before = |phrase: &str| -> u64 {
            line.find(phrase)
                .and_then(|at| line[..at].split_whitespace().last())
                .and_then(|w| w.parse().ok())
                .unwrap_or(0)
        };
        Some(Summary {
            line: line.to_owned(),
            replayed,
            total,
            failed,
            held: count_before(" held by another replay"),
            gone: count_before(" no longer in the queue"),
        })
    }

    /// Every selected entry is accounted for once.
    fn adds_up(&self) -> bool {
        self.replayed + self.failures() + self.held + self.gone == self.total
    }

    fn failures(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// Produces `n` rejected dead letters on route `load` (topic `{root}/data`, payload ids
/// `1..=n`, `v = id`) with a bridge and a table whose CHECK (`v < 0`) rejects every row;
/// stops the bridge and drops the constraint so the entries become replayable. Returns the
/// config, the table and the dead letters (id order).
fn replayable_dead_letters(world: &World, n: i64) -> (PathBuf, TempTable, Vec<Json>) {
    let db = Db::Postgres;
    let table = TempTable::create(
        &db,
        "replay",
        "id INTEGER PRIMARY KEY, v INTEGER NOT NULL, CONSTRAINT v_negative CHECK (v < 0)",
    );
    let root = unique("replay");
    let config = world
        .config(&Db::Postgres)
        .inbound(route("load", &format!("{root}/data"), &table.name))
        .write();
    world.persistent_session(&format!("{root}/data"));
    world.publisher().publish_all_confirmed(
        (1..=n)
            .map(|id| {
                (
                    format!("{root}/data"),
                    format!(r#"{{"id":{id},"v":{id}}}"#).into_bytes(),
                )
            })
            .collect(),
        1,
    );
    let mut bridge = Bridge::start(&config);
    wait_for_dead_letters(&mut bridge, &config, n as usize);
    terminate_ok(&mut bridge);
    assert_eq!(table.count(), 0, "the CHECK constraint rejected every row");
    db.exec(&format!(
        "ALTER TABLE {} DROP CONSTRAINT v_negative",
        table.name
    ));
    let letters = dlq_list(&config);
    assert_eq!(letters.len() as i64, n);
    for l in &letters {
        assert_eq!(l["error_kind"], "rejected", "{l}");
        assert_eq!(l["sqlstate"], "23514", "{l}");
    }
    (config, table, letters)
}

/// An open transaction that holds an uncommitted row with primary key `id` in `table`: a
/// replay inserting that id waits on it until [`Blocker::release`] rolls it back.
struct Blocker {
    conn: odbc_api::Connection<'static>,
}

impl Blocker {
    fn hold(db: &Db, table: &str, id: i64) -> Blocker {
        let conn = odbc_connect(&db.connection_string()).expect("connect the blocker");
        conn.set_autocommit(false).expect("autocommit off");
        odbc_exec(
            &conn,
            &format!("INSERT INTO {table} (id, v) VALUES ({id}, -1)"),
        )
        .expect("hold the row");
        Blocker { conn }
    }

    fn release(self) {
        self.conn.rollback().expect("release the held row");
    }
}

// ---------------------------------------------------------------------------------------
// 1. The mirror to MQTT
// ---------------------------------------------------------------------------------------

#[test]
fn mirror_to_mqtt_publishes_each_dead_letter_once_as_its_list_object() {
    // Given two routes into a table that rejects NULL values, and a mirror to the same
    // broker on a topic built from the route and the kind of error
    let db = Db::Postgres;
    let world = World::new("dlq-ops");
    let table = TempTable::create(
        &db,
        "mirror_mqtt",
        "id INTEGER PRIMARY KEY, v INTEGER NOT NULL",
    );
    let t = table.name.clone();
    let root = unique("mm");
    let config = world
        .config(&db)
        .inbound(route("alpha", &format!("{root}/alpha"), &t))
        .inbound(route("beta", &format!("{root}/beta"), &t))
        .set(
            "dead_letter",
            json!({ "publish": { "broker": "b", "topic": "mqdb/dead/{route}/{error_kind}", "qos": 1 } }),
        )
        .write();
    let watcher = Subscriber::connect(world.broker.port, "mqdb/dead/#", 1);
    world.persistent_session(&format!("{root}/+"));
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log("mirroring dead letters", LIVENESS);

    // When 40 good messages flow with 5 bad ones of three kinds among them
    let bad: Messages = vec![
        (format!("{root}/alpha"), br#"{"id": 9001, "v": "#.to_vec()),
        (format!("{root}/alpha"), br#"{"id":9002,"v":null}"#.to_vec()),
        (format!("{root}/beta"), br#"{"id":9003,"v":"abc"}"#.to_vec()),
        (format!("{root}/beta"), b"not json".to_vec()),
        (format!("{root}/beta"), br#"{"id":9005,"v":null}"#.to_vec()),
    ];
    let route_of = |id: i64| if id % 2 == 0 { "alpha" } else { "beta" };
    let messages = good_among_bad(&root, 40, route_of, &bad);
    let publisher = world.publisher();
    publisher.publish_all_confirmed(messages, 1);

    // Then the good rows land, the bad ones are stored, and each is mirrored
    wait_for_count(&mut bridge, &db, &format!("SELECT COUNT(*) FROM {t}"), 40);
    wait_for_dead_letters(&mut bridge, &config, 5);
    wait_for(&mut bridge, "5 mirrored dead letters", || {
        Ok(watcher.count() >= 5)
    });
    // And once one more dead letter is mirrored after them, nothing was mirrored twice
    publisher.publish_all_confirmed(
        vec![(format!("{root}/alpha"), br#"{"id":9006,"v":null}"#.to_vec())],
        1,
    );
    wait_for_dead_letters(&mut bridge, &config, 6);
    wait_for(&mut bridge, "the 6th mirrored dead letter", || {
        Ok(watcher.count() >= 6)
    });

    let letters = dlq_list(&config);
    let expected: BTreeMap<(String, String), usize> = [
        (("alpha", "decode"), 1),
        (("alpha", "rejected"), 2),
        (("beta", "convert"), 1),
        (("beta", "decode"), 1),
        (("beta", "rejected"), 1),
    ]
    .into_iter()
    .map(|((r, k), n)| ((r.to_owned(), k.to_owned()), n))
    .collect();
    assert_eq!(kinds(&letters), expected, "{letters:#?}");
    let received = watcher.messages();
    for m in &received {
        assert_eq!(m.qos, 1, "published at the configured QoS 1: {m:?}");
        assert!(!m.retain, "{m:?}");
    }
    let copies: Vec<(String, Json)> = received
        .iter()
        .map(|m| {
            let copy = serde_json::from_slice(&m.payload)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", m.payload_str()));
            (m.topic.clone(), copy)
        })
        .collect();
    assert_mirrored(&letters, &copies, |l| {
        format!("mqdb/dead/{}/{}", text(l, "route"), text(l, "error_kind"))
    });
    // And the local store keeps them all
    assert_eq!(dlq_list(&config), letters);
    terminate_ok(&mut bridge);
}

// ---------------------------------------------------------------------------------------
// 2. The mirror to AMQP
// ---------------------------------------------------------------------------------------

#[test]
fn mirror_to_amqp_publishes_each_dead_letter_once_to_the_exchange() {
    // Given a topic exchange with a bound queue, and a mirror to it with a routing key
    // built from the route and the kind of error
    let db = Db::Postgres;
    let world = World::new("dlq-ops");
    let mut rabbit = Rabbit::connect();
    let exchange = unique("mqdb_dead_x");
    let queue = unique("mqdb_dead_q");
    rabbit.declare_exchange(&exchange, "topic");
    rabbit.declare_bound_queue(&queue, &exchange, "#");
    let table = TempTable::create(
        &db,
        "mirror_amqp",
        "id INTEGER PRIMARY KEY, v INTEGER NOT NULL",
    );
    let t = table.name.clone();
    let root = unique("ma");
    let config = world
        .config(&db)
        .broker("r", Rabbit::URL, Json::Null)
        .inbound(route("gamma", &format!("{root}/gamma"), &t))
        .inbound(route("delta", &format!("{root}/delta"), &t))
        .set(
            "dead_letter",
            json!({ "publish": { "broker": "r", "exchange": exchange, "routing_key": "{route}.{error_kind}" } }),
        )
        .write();
    world.persistent_session(&format!("{root}/+"));
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log("mirroring dead letters", LIVENESS);

    // When 30 good messages flow with 5 bad ones among them
    let bad: Messages = vec![
        (format!("{root}/gamma"), b"{".to_vec()),
        (format!("{root}/delta"), br#"{"id":9002,"v":null}"#.to_vec()),
        (format!("{root}/gamma"), br#"{"id":9003,"v":"x"}"#.to_vec()),
        (format!("{root}/gamma"), br#"{"id":9004,"v":null}"#.to_vec()),
        (format!("{root}/delta"), b"[1,".to_vec()),
    ];
    let route_of = |id: i64| if id % 3 == 0 { "gamma" } else { "delta" };
    let messages = good_among_bad(&root, 30, route_of, &bad);
    let publisher = world.publisher();
    publisher.publish_all_confirmed(messages, 1);

    // Then the queue receives one persistent envelope per stored dead letter
    wait_for_count(&mut bridge, &db, &format!("SELECT COUNT(*) FROM {t}"), 30);
    wait_for_dead_letters(&mut bridge, &config, 5);
    let mut taken = Vec::new();
    wait_for(&mut bridge, "5 mirrored dead letters in the queue", || {
        taken.extend(rabbit.take_up_to(&queue, 100));
        Ok(taken.len() >= 5)
    });
    // And after one more, nothing arrived twice
    publisher.publish_all_confirmed(
        vec![(format!("{root}/delta"), br#"{"id":9006,"v":null}"#.to_vec())],
        1,
    );
    wait_for_dead_letters(&mut bridge, &config, 6);
    wait_for(&mut bridge, "the 6th mirrored dead letter", || {
        taken.extend(rabbit.take_up_to(&queue, 100));
        Ok(taken.len() >= 6)
    });

    let letters = dlq_list(&config);
    let expected: BTreeMap<(String, String), usize> = [
        (("delta", "decode"), 1),
        (("delta", "rejected"), 2),
        (("gamma", "convert"), 1),
        (("gamma", "decode"), 1),
        (("gamma", "rejected"), 1),
    ]
    .into_iter()
    .map(|((r, k), n)| ((r.to_owned(), k.to_owned()), n))
    .collect();
    assert_eq!(kinds(&letters), expected, "{letters:#?}");
    for m in &taken {
        assert_eq!(m.exchange, exchange, "{m:?}");
        assert_eq!(m.delivery_mode, Some(2), "persistent: {m:?}");
        // And says it is JSON, with the dead letter's id as its message id
        assert_eq!(m.content_type.as_deref(), Some("application/json"), "{m:?}");
        let copy: Json = serde_json::from_slice(&m.payload).expect("a JSON envelope");
        let id = copy["id"].as_i64().expect("an id").to_string();
        assert_eq!(m.message_id.as_deref(), Some(id.as_str()), "{m:?}");
    }
    let copies: Vec<(String, Json)> = taken
        .iter()
        .map(|m| {
            let copy = serde_json::from_slice(&m.payload).unwrap_or_else(|e| {
                panic!("not JSON ({e}): {}", String::from_utf8_lossy(&m.payload))
            });
            (m.routing_key.clone(), copy)
        })
        .collect();
    assert_mirrored(&letters, &copies, |l| {
        format!("{}.{}", text(l, "route"), text(l, "error_kind"))
    });
    assert_eq!(dlq_list(&config), letters, "mirroring removes nothing");
    terminate_ok(&mut bridge);
}

// ---------------------------------------------------------------------------------------
// 3. A mirror outage
// ---------------------------------------------------------------------------------------

#[test]
fn mirror_outage_never_blocks_the_data_path_and_catches_up_in_order() {
    // Given a mirror to a second private Mosquitto reached through a proxy
    let db = Db::Postgres;
    let world = World::new("dlq-ops");
    let mirror_broker = Mosquitto::start();
    let proxy = TcpProxy::start(mirror_broker.addr());
    let table = TempTable::create(
        &db,
        "mirror_out",
        "id INTEGER PRIMARY KEY, v INTEGER NOT NULL",
    );
    let t = table.name.clone();
    let root = unique("mo");
    let config = world
        .config(&db)
        .broker(
            "m",
            &format!("mqtt://127.0.0.1:{}", proxy.port),
            json!({ "client_id": unique("mqdb_mirror") }),
        )
        .inbound(route("omega", &format!("{root}/omega"), &t))
        .set(
            "dead_letter",
            json!({ "publish": { "broker": "m", "topic": "mqdb/dead/{route}/{error_kind}" } }),
        )
        .write();
    let watcher = Subscriber::connect(mirror_broker.port, "mqdb/dead/#", 1);
    world.persistent_session(&format!("{root}/+"));
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log("mirroring dead letters", LIVENESS);
    let topic = format!("{root}/omega");
    let good = |ids: std::ops::RangeInclusive<i64>| -> Messages {
        ids.map(|id| {
            (
                topic.clone(),
                format!(r#"{{"id":{id},"v":{id}}}"#).into_bytes(),
            )
        })
        .collect()
    };
    let bad = |n: i64| -> (String, Vec<u8>) {
        let payload = match n % 3 {
            0 => format!(r#"{{"id":{},"v":null}}"#, 10_000 + n),
            1 => format!(r#"{{"id":{},"v":"#, 10_000 + n),
            _ => format!(r#"{{"id":{},"v":"nope"}}"#, 10_000 + n),
        };
        (topic.clone(), payload.into_bytes())
    };
    let publisher = world.publisher();
    let mut first = good(1..=10);
    first.push(bad(0));
    first.push(bad(1));
    publisher.publish_all_confirmed(first, 1);
    let count_sql = format!("SELECT COUNT(*) FROM {t}");
    wait_for_count(&mut bridge, &db, &count_sql, 10);
    wait_for_dead_letters(&mut bridge, &config, 2);
    wait_for(&mut bridge, "the first 2 mirrored", || {
        Ok(watcher.count() >= 2)
    });
    // (the mirror stored its position past them: nothing of it is in flight at the cut)
    let last_id = dlq_list(&config)
        .iter()
        .map(id_of)
        .max()
        .expect("2 letters");
    let state = world.store.reader();
    wait_for(&mut bridge, "the mirror position past the first 2", || {
        Ok(try_scalar(&state, "SELECT MAX(last_id) FROM mirror_position") == Some(last_id))
    });

    // When the mirror's broker is unreachable while good and bad messages keep flowing, in
    // four waves, each after the mirror has tried (and failed) to reconnect once more, so
    // the mirror has long been stuck on what it could not publish
    proxy.set_down(true);
    let mut attempts = proxy.accepted();
    for wave in 0..4_i64 {
        wait_for(&mut bridge, "another refused mirror connection", || {
            Ok(proxy.accepted() > attempts)
        });
        attempts = proxy.accepted();
        let mut msgs = Vec::new();
        for id in 11 + wave * 75..11 + (wave + 1) * 75 {
            msgs.extend(good(id..=id));
            if id % 15 == 0 {
                msgs.push(bad(id));
            }
        }
        publisher.publish_all_confirmed(msgs, 1);

        // Then the good rows keep landing and the dead letters are stored meanwhile
        wait_for_count(&mut bridge, &db, &count_sql, 10 + (wave + 1) * 75);
        let stored = 2 + (11..11 + (wave + 1) * 75).filter(|id| id % 15 == 0).count();
        wait_for_dead_letters(&mut bridge, &config, stored);
    }
    assert_eq!(dlq_list(&config).len(), 22);
    assert_eq!(
        watcher.count(),
        2,
        "nothing was mirrored through the cut proxy (the test's own premise)"
    );

    // And once it is back, every dead letter is mirrored, in id order, none missing
    proxy.set_down(false);
    wait_for(&mut bridge, "22 mirrored dead letters", || {
        Ok(watcher.count() >= 22)
    });
    publisher.publish_all_confirmed(vec![bad(1000)], 1);
    wait_for_dead_letters(&mut bridge, &config, 23);
    wait_for(&mut bridge, "the 23rd mirrored dead letter", || {
        Ok(watcher.count() >= 23)
    });
    let letters = dlq_list(&config);
    let copies: Vec<(String, Json)> = watcher
        .messages()
        .iter()
        .map(|m| {
            let copy = serde_json::from_slice(&m.payload)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", m.payload_str()));
            (m.topic.clone(), copy)
        })
        .collect();
    assert_mirrored(&letters, &copies, |l| {
        format!("mqdb/dead/{}/{}", text(l, "route"), text(l, "error_kind"))
    });
    assert!(
        proxy.accepted() >= 2,
        "the mirror never reconnected, so it never saw the outage"
    );
    terminate_ok(&mut bridge);
}

// ---------------------------------------------------------------------------------------
// 4. A replay interrupted with SIGINT
// ---------------------------------------------------------------------------------------

#[test]
fn replay_interrupted_by_sigint_leaves_every_entry_in_exactly_one_place() {
    // Given 4000 inbound dead letters whose table accepts them now
    let db = Db::Postgres;
    let world = World::new("dlq-ops");
    let n: i64 = 4000;
    let (config, table, letters) = replayable_dead_letters(&world, n);
    let t = table.name.clone();
    let originals: BTreeMap<i64, i64> = letters.iter().map(|l| (id_of(l), payload_id(l))).collect();

    // When a replay of all of them is in its second batch (held on a row of it) and gets
    // SIGINT once its first rows are in the table
    let held = payload_id(&letters[750]);
    let blocker = Blocker::hold(&db, &t, held);
    let mut replay = Replay::start(&config, &["--all"], "replay1");
    let waiting = pg_lock_waiters(&t);
    replay.wait_until("the replay's batch waiting on the held row", || {
        try_scalar(&db, &waiting).unwrap_or(0) >= 1
    });
    let before = table.count();
    assert!(before > 0, "rows appeared before the interrupt");
    common::send_signal(replay.pid(), "INT");
    blocker.release();
    let first = replay.finish();
    eprintln!("interrupted replay: {}", first.summary.line);

    // Then it exits 1 and says it was interrupted
    let ctx = format!("{}\n{}", first.stdout, first.stderr);
    assert_eq!(first.status.code(), Some(1), "{ctx}");
    assert!(first.summary.line.contains("interrupted"), "{ctx}");
    assert_eq!(first.summary.total, n as u64, "{ctx}");
    assert_eq!(first.summary.failures(), 0, "{ctx}");
    assert!(
        first.summary.replayed > 0 && first.summary.replayed < n as u64,
        "{ctx}"
    );
    // And the batch at hand finished: the held row's entry is in the table
    let rows: BTreeSet<i64> = row_ids(&db, &t).into_iter().collect();
    assert!(
        rows.contains(&held),
        "the batch at hand was not finished; {ctx}"
    );
    assert_eq!(rows.len() as u64, first.summary.replayed, "{ctx}");
    // And every entry is either a row (and gone from the queue) or still queued (and not a
    // row), untouched: never both, never neither
    let left = dlq_list(&config);
    let listed: BTreeMap<i64, &Json> = left.iter().map(|l| (id_of(l), l)).collect();
    for (id, key) in &originals {
        let in_table = rows.contains(key);
        let queued = listed.contains_key(id);
        assert!(
            in_table != queued,
            "dead letter {id} (row {key}): in the table {in_table}, still queued {queued}; {ctx}"
        );
    }
    assert!(
        listed.keys().all(|id| originals.contains_key(id)),
        "no new entries"
    );
    for l in &left {
        assert_eq!(l["attempts"], 1, "an untouched entry: {l}");
        assert_eq!(l["sqlstate"], "23514", "an untouched entry: {l}");
    }

    // When the replay runs again
    let mut again = Replay::start(&config, &["--all"], "replay2");
    let second = again.finish();
    eprintln!("second replay: {}", second.summary.line);

    // Then it finishes the rest, and the counts add up exactly
    let ctx = format!("{}\n{}", second.stdout, second.stderr);
    assert_eq!(second.status.code(), Some(0), "{ctx}");
    assert_eq!(second.summary.total, left.len() as u64, "{ctx}");
    assert_eq!(second.summary.replayed, left.len() as u64, "{ctx}");
    assert_eq!(first.summary.replayed + second.summary.replayed, n as u64);
    assert_eq!(dlq_list(&config), Vec::<Json>::new());
    assert_eq!(table.count(), n);
    assert_eq!(
        row_ids(&db, &t),
        (1..=n).collect::<Vec<_>>(),
        "every entry is one row"
    );
    assert_eq!(
        scalar(&db, &format!("SELECT SUM(v) FROM {t}")),
        n * (n + 1) / 2
    );
}

// ---------------------------------------------------------------------------------------
// 5. A replay beside `mqdb run`
// ---------------------------------------------------------------------------------------

#[test]
fn replay_beside_a_running_bridge_replays_each_entry_once_and_loses_none() {
    // Given 1500 rejected dead letters whose table accepts them now, 15 undecodable ones
    // among them (they fail again, in the same batches as the others), and a bridge that
    // keeps running on the same state store
    let db = Db::Postgres;
    let world = World::new("dlq-ops");
    let table = TempTable::create(
        &db,
        "beside",
        "id INTEGER PRIMARY KEY, v INTEGER NOT NULL, CONSTRAINT v_small CHECK (v < 1000000)",
    );
    let t = table.name.clone();
    let root = unique("beside");
    let topic = format!("{root}/data");
    let config = world
        .config(&db)
        .inbound(route("beside", &topic, &t))
        .write();
    world.persistent_session(&topic);
    let publisher = world.publisher();
    let n: i64 = 1500;
    let mut first: Messages = Vec::new();
    for id in 1..=n {
        first.push((
            topic.clone(),
            format!(r#"{{"id":{id},"v":{}}}"#, 1_000_000 + id).into_bytes(),
        ));
        if id % 100 == 50 {
            first.push((
                topic.clone(),
                format!(r#"{{"id":{}"#, 50_000 + id).into_bytes(),
            ));
        }
    }
    let hopeless_count = (n / 100) as usize;
    publisher.publish_all_confirmed(first, 1);
    let mut bridge = Bridge::start(&config);
    wait_for_dead_letters(&mut bridge, &config, n as usize + hopeless_count);
    assert_eq!(table.count(), 0);
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT v_small"));
    let letters = dlq_list(&config);
    // dead-letter id -> row id, for the replayable ones; the ids of the undecodable ones
    let replayable: BTreeMap<i64, i64> = letters
        .iter()
        .filter(|l| l["error_kind"] == "rejected")
        .map(|l| (id_of(l), payload_id(l)))
        .collect();
    let hopeless: BTreeSet<i64> = letters
        .iter()
        .filter(|l| l["error_kind"] == "decode")
        .map(id_of)
        .collect();
    assert_eq!(replayable.len() as i64, n, "{letters:#?}");
    assert_eq!(hopeless.len(), hopeless_count, "{letters:#?}");
    let last_original = letters.iter().map(id_of).max().expect("originals");

    // The bridge's traffic: good rows (ids from 100000) and bad messages that stay dead
    // letters whatever happens (NULL into NOT NULL, bad JSON)
    let traffic = |from: i64, count: i64| -> (Messages, i64, i64) {
        let mut msgs = Vec::new();
        let (mut good, mut bad) = (0, 0);
        for id in from..from + count {
            if id % 5 == 0 {
                let payload = if id % 10 == 0 {
                    format!(r#"{{"id":{id},"v":null}}"#)
                } else {
                    format!(r#"{{"id":{id},"v":"#)
                };
                msgs.push((topic.clone(), payload.into_bytes()));
                bad += 1;
            } else {
                msgs.push((
                    topic.clone(),
                    format!(r#"{{"id":{id},"v":{id}}}"#).into_bytes(),
                ));
                good += 1;
            }
        }
        (msgs, good, bad)
    };

    // When a replay of all entries runs, held in its second batch while the bridge stores
    // new rows and new dead letters, and the bridge keeps going after the hold is released
    let held = letters[750..]
        .iter()
        .find(|l| l["error_kind"] == "rejected")
        .map(payload_id)
        .expect("a replayable entry in the second batch");
    let blocker = Blocker::hold(&db, &t, held);
    let mut replay = Replay::start(&config, &["--all"], "replay");
    let waiting = pg_lock_waiters(&t);
    replay.wait_until("the replay's batch waiting on the held row", || {
        try_scalar(&db, &waiting).unwrap_or(0) >= 1
    });
    let (msgs, good_a, bad_a) = traffic(100_000, 300);
    publisher.publish_all_confirmed(msgs, 1);
    let new_rows_sql = format!("SELECT COUNT(*) FROM {t} WHERE id >= 100000");
    wait_for_count(&mut bridge, &db, &new_rows_sql, good_a);
    let new_letters = |config: &Path| -> Vec<Json> {
        dlq_list(config)
            .into_iter()
            .filter(|l| id_of(l) > last_original)
            .collect()
    };
    wait_for(
        &mut bridge,
        "the new dead letters during the replay",
        || {
            let new = new_letters(&config).len() as i64;
            if new > bad_a {
                return Err(format!("{new} new dead letters, expected {bad_a}"));
            }
            Ok(new == bad_a)
        },
    );
    blocker.release();
    let (msgs, good_b, bad_b) = traffic(100_300, 300);
    publisher.publish_all_confirmed(msgs, 1);
    let done = replay.finish();
    eprintln!("replay beside the bridge: {}", done.summary.line);
    let ctx = format!("{}\n{}", done.stdout, done.stderr);

    // Then every replayable entry was replayed exactly once, and only those succeeded
    wait_for_count(&mut bridge, &db, &new_rows_sql, good_a + good_b);
    let bad_total = (bad_a + bad_b) as usize;
    wait_for(&mut bridge, "every new dead letter stored", || {
        Ok(new_letters(&config).len() == bad_total)
    });
    // (the words match what happened: what was selected at the start, each counted once;
    // the entries the bridge stored meanwhile wait for the next replay)
    assert_eq!(done.summary.total, letters.len() as u64, "{ctx}");
    assert_eq!(done.summary.replayed, n as u64, "{ctx}");
    assert_eq!(
        done.summary.failures(),
        hopeless_count as u64,
        "the undecodable originals failed again, and nothing stored after the start was tried: {ctx}"
    );
    assert!(done.summary.adds_up(), "{ctx}");
    for kind in done.summary.failed.keys() {
        assert!(
            kind == "decode" || kind == "rejected",
            "only undecodable and new entries fail again: {ctx}"
        );
    }
    assert_eq!(done.status.code(), Some(1), "{ctx}");
    let rows: Vec<i64> = row_ids(&db, &t);
    let unique_rows: BTreeSet<i64> = rows.iter().copied().collect();
    assert_eq!(rows.len(), unique_rows.len(), "no duplicate rows");
    assert_eq!(rows.len() as i64, n + good_a + good_b, "{ctx}");
    for key in replayable.values() {
        assert!(unique_rows.contains(key), "original row {key} is missing");
    }
    assert_eq!(
        scalar(&db, &format!("SELECT SUM(v) FROM {t} WHERE id <= {n}")),
        (1..=n).map(|id| 1_000_000 + id).sum::<i64>()
    );
    // And nothing is lost: the queue holds exactly the undecodable originals and the new bad
    // messages, each once, the ones the replay tried with one more attempt; no replayed
    // original and no duplicate insert
    let left = dlq_list(&config);
    assert_eq!(left.len(), hopeless_count + bad_total, "{left:#?}");
    let mut payloads = BTreeSet::new();
    for l in &left {
        let id = id_of(l);
        assert!(
            id > last_original || hopeless.contains(&id),
            "a replayed original is still queued: {l}"
        );
        assert!(payloads.insert(text(l, "payload").to_owned()), "twice: {l}");
        match text(l, "error_kind") {
            "decode" => {}
            "rejected" => assert_eq!(l["sqlstate"], "23502", "{l}"),
            other => panic!("unexpected kind {other}: {l}"),
        }
    }
    for id in &hopeless {
        let l = left.iter().find(|l| id_of(l) == *id);
        let l = l.unwrap_or_else(|| panic!("undecodable original {id} was lost; {ctx}"));
        assert_eq!(l["attempts"], 2, "tried once more: {l}");
    }
    let retried = left.iter().filter(|l| l["attempts"] == 2).count() as u64;
    assert_eq!(
        retried,
        done.summary.failures(),
        "each entry the replay failed again is still queued with 2 attempts; {ctx}"
    );
    assert!(
        left.iter()
            .filter(|l| id_of(l) > last_original)
            .all(|l| l["attempts"] == 1),
        "entries stored after the replay began were left for the next one: {left:#?}"
    );
    assert!(
        left.iter()
            .all(|l| l["attempts"] == 1 || l["attempts"] == 2),
        "{left:#?}"
    );
    terminate_ok(&mut bridge);
}

// ---------------------------------------------------------------------------------------
// 6. Two replays at once
// ---------------------------------------------------------------------------------------

#[test]
fn two_concurrent_replays_replay_each_entry_exactly_once() {
    // Given 3000 dead letters whose table accepts them now
    let db = Db::Postgres;
    let world = World::new("dlq-ops");
    let n: i64 = 3000;
    let (config, table, letters) = replayable_dead_letters(&world, n);
    let t = table.name.clone();

    // When two replays of all of them start at once, and both are held in the middle of a
    // batch (a row held in every batch of 500, whichever batches each replay claims: a
    // replay claims its next batch while it writes one), then let go
    let holds: Vec<Blocker> = (0..6)
        .map(|k| Blocker::hold(&db, &t, payload_id(&letters[250 + 500 * k])))
        .collect();
    let mut a = Replay::start(&config, &["--all"], "replay_a");
    let mut b = Replay::start(&config, &["--all"], "replay_b");
    let waiting = pg_lock_waiters(&t);
    a.wait_until("both replays waiting on a held row", || {
        try_scalar(&db, &waiting).unwrap_or(0) >= 2
    });
    holds.into_iter().for_each(Blocker::release);
    let done_a = a.finish();
    let done_b = b.finish();
    eprintln!(
        "replay A: {}; replay B: {}",
        done_a.summary.line, done_b.summary.line
    );
    let ctx = format!(
        "A:\n{}\n{}\nB:\n{}\n{}",
        done_a.stdout, done_a.stderr, done_b.stdout, done_b.stderr
    );

    // Then between them every entry was replayed once, none failed
    assert_eq!(done_a.summary.failures(), 0, "{ctx}");
    assert_eq!(done_b.summary.failures(), 0, "{ctx}");
    assert!(done_a.summary.replayed > 0, "both worked: {ctx}");
    assert!(done_b.summary.replayed > 0, "both worked: {ctx}");
    assert_eq!(
        done_a.summary.replayed + done_b.summary.replayed,
        n as u64,
        "{ctx}"
    );
    // (each summary adds up; an exit 1 is fair only for the entries the other replay held,
    // and says so, never "0 dead letters failed again")
    for done in [&done_a, &done_b] {
        assert!(done.summary.adds_up(), "{ctx}");
        match done.status.code() {
            Some(0) => assert_eq!(done.summary.held, 0, "{ctx}"),
            Some(1) => {
                assert!(done.summary.held > 0, "{ctx}");
                assert!(done.stderr.contains("held by another replay"), "{ctx}");
            }
            other => panic!("exit {other:?}: {ctx}"),
        }
        assert!(!done.stderr.contains("failed again"), "{ctx}");
        assert!(!done.summary.line.contains("interrupted"), "{ctx}");
        assert!(!done.summary.line.contains("outage"), "{ctx}");
    }
    // And each is one row, with nothing left in the queue (no rejected duplicate)
    assert_eq!(dlq_list(&config), Vec::<Json>::new(), "{ctx}");
    assert_eq!(row_ids(&db, &t), (1..=n).collect::<Vec<_>>());
    assert_eq!(
        scalar(&db, &format!("SELECT SUM(v) FROM {t}")),
        n * (n + 1) / 2
    );
}

// ---------------------------------------------------------------------------------------
// 6a. A purge during a replay
// ---------------------------------------------------------------------------------------

#[test]
fn entries_purged_during_a_replay_are_reported_as_gone_not_held() {
    // Given 1200 dead letters whose table accepts them now
    let db = Db::Postgres;
    let world = World::new("dlq-ops");
    let n: i64 = 1200;
    let (config, table, letters) = replayable_dead_letters(&world, n);
    let t = table.name.clone();

    // When a replay of all of them waits in its first batch, and everything it has not
    // claimed is purged meanwhile
    let blocker = Blocker::hold(&db, &t, payload_id(&letters[250]));
    let mut replay = Replay::start(&config, &["--all"], "purged_under");
    let waiting = pg_lock_waiters(&t);
    replay.wait_until("the replay's batch waiting on the held row", || {
        try_scalar(&db, &waiting).unwrap_or(0) >= 1
    });
    let purge = common::run_mqdb(&[
        "-c",
        config.to_str().expect("UTF-8 path"),
        "dlq",
        "purge",
        "--all",
        "--yes",
    ]);
    assert_eq!(purge.status.code(), Some(0), "{purge:?}");
    blocker.release();
    let done = replay.finish();
    eprintln!("replay under a purge: {}", done.summary.line);
    let ctx = format!("{}\n{}", done.stdout, done.stderr);

    // Then the purged entries are named as such, never as held by another replay, and the
    // summary adds up to the selection
    assert_eq!(done.summary.total, n as u64, "{ctx}");
    assert!(done.summary.adds_up(), "{ctx}");
    assert_eq!(done.summary.held, 0, "{ctx}");
    assert!(done.summary.gone > 0, "{ctx}");
    assert_eq!(done.summary.replayed as i64, table.count(), "{ctx}");
    assert_eq!(done.status.code(), Some(0), "{ctx}");
    assert_eq!(dlq_list(&config), Vec::<Json>::new(), "{ctx}");
}

// ---------------------------------------------------------------------------------------
// 6b. A replay after a killed one
// ---------------------------------------------------------------------------------------

#[test]
fn replay_after_a_killed_replay_reports_success_only_when_the_queue_is_done() {
    // Given 2000 dead letters whose table accepts them now
    let db = Db::Postgres;
    let world = World::new("dlq-ops");
    let n: i64 = 2000;
    let (config, table, letters) = replayable_dead_letters(&world, n);
    let t = table.name.clone();
    let originals: BTreeMap<i64, i64> = letters.iter().map(|l| (id_of(l), payload_id(l))).collect();

    // When a replay is killed (SIGKILL) in the middle of its second batch
    let blocker = Blocker::hold(&db, &t, payload_id(&letters[750]));
    let mut replay = Replay::start(&config, &["--all"], "killed");
    let waiting = pg_lock_waiters(&t);
    replay.wait_until("the replay's batch waiting on the held row", || {
        try_scalar(&db, &waiting).unwrap_or(0) >= 1
    });
    common::send_signal(replay.pid(), "KILL");
    let killed = replay.finish_status();
    assert_eq!(killed.code(), None, "killed by the signal");
    blocker.release();

    // Then every entry is a row or still queued, never both, never neither
    let rows: BTreeSet<i64> = row_ids(&db, &t).into_iter().collect();
    let listed: BTreeSet<i64> = dlq_list(&config).iter().map(id_of).collect();
    for (id, key) in &originals {
        assert!(
            rows.contains(key) != listed.contains(id),
            "dead letter {id} (row {key}): in the table {}, still queued {}",
            rows.contains(key),
            listed.contains(id)
        );
    }
    assert!(!listed.is_empty(), "the killed batch is still queued");

    // And a new replay either replays everything, or does not claim success
    let mut again = Replay::start(&config, &["--all"], "again");
    let done = again.finish();
    eprintln!("replay after a killed one: {}", done.summary.line);
    let left = dlq_list(&config);
    let ctx = format!(
        "{}{}{} entries still queued",
        done.stdout,
        done.stderr,
        left.len()
    );
    assert_eq!(done.summary.failures(), 0, "{ctx}");
    if done.status.code() == Some(0) {
        assert_eq!(left.len(), 0, "exit 0 while entries remain: {ctx}");
        assert_eq!(table.count(), n, "{ctx}");
    } else {
        assert_eq!(done.status.code(), Some(1), "{ctx}");
    }
    let rows: BTreeSet<i64> = row_ids(&db, &t).into_iter().collect();
    let listed: BTreeSet<i64> = left.iter().map(id_of).collect();
    for (id, key) in &originals {
        assert!(
            rows.contains(key) != listed.contains(id),
            "dead letter {id} (row {key}): in the table {}, still queued {}; {ctx}",
            rows.contains(key),
            listed.contains(id)
        );
    }
}

// ---------------------------------------------------------------------------------------
// 7. Configuration errors
// ---------------------------------------------------------------------------------------

/// Runs `mqdb -c CONFIG check` on `text` and asserts exit 2 with `file:LINE:` where LINE is
/// one of `lines` (1-based), and the message naming `needle`.
fn assert_config_error(dir: &Path, text: &str, lines: &[usize], needle: &str) {
    let path = dir.join(format!("{}.yaml", unique("bad")));
    std::fs::write(&path, text).expect("write config");
    let out = run_mqdb(&["-c", path_str(&path), "check"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let ctx = format!(
        "{}\n---\n{}{stderr}",
        text,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(2), "{ctx}");
    let named = lines
        .iter()
        .any(|l| stderr.contains(&format!("{}:{l}:", path.display())));
    assert!(named, "the error names line {lines:?}: {ctx}");
    assert!(stderr.contains(needle), "{ctx}");
}

#[test]
fn mirror_config_errors_exit_2_naming_the_line() {
    let dir = tempfile::Builder::new()
        .prefix("mqdb-dlq-ops-config-")
        .tempdir()
        .expect("temp dir");
    let head = format!(
        "state: \"sqlite://{}\"\n\
                brokers:\n  b:\n    url: \"mqtt://127.0.0.1:1883\"\n  \
                r:\n    url: \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
                databases:\n  d:\n    connection_string: \"Driver={{PostgreSQL Unicode}};Server=127.0.0.1;Database=test;Uid=root;\"\n\
                inbound:\n  - name: i\n    broker: b\n    topic: \"a/b\"\n    database: d\n    table: t\n",
        dir.path().join("state.db").display()
    );
    let base = head.lines().count();

    // A template field a dead letter does not have (MQTT topic)
    let text = format!(
        "{head}dead_letter:\n  publish:\n    broker: b\n    topic: \"mqdb/dead/{{topic}}\"\n"
    );
    assert_config_error(dir.path(), &text, &[base + 4], "{topic}");

    // … and in an AMQP routing key
    let text = format!(
        "{head}dead_letter:\n  publish:\n    broker: r\n    exchange: x\n    routing_key: \"{{route}}.{{payload}}\"\n"
    );
    assert_config_error(dir.path(), &text, &[base + 5], "{payload}");

    // A topic on an AMQP broker
    let text = format!(
        "{head}dead_letter:\n  publish:\n    broker: r\n    topic: \"mqdb/dead/{{route}}\"\n"
    );
    assert_config_error(dir.path(), &text, &[base + 2, base + 3, base + 4], "topic");
}
