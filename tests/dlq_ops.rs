//! Dead-letter operations: the `dead_letter.publish` mirror (MQTT, AMQP, across an outage of
//! its broker), and `mqdb dlq replay` interrupted, beside a running bridge, twice at once,
//! under a purge and after a killed one.
//!
//! Where a replay must be in the middle of its work at a given moment, the test holds an
//! uncommitted PostgreSQL row with the primary key of one of the replay's rows, so the
//! replay's insert waits on it: deterministic, never timed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    Bridge, Config, Db, LIVENESS, Mosquitto, Rabbit, Route, Subscriber, TcpProxy, TempTable, World,
    dlq_list, letter_id as id_of, mqdb_command, odbc_connect, odbc_exec, path_str, pg_lock_waiters,
    run_mqdb, scalar, terminate_ok, try_scalar, unique, wait_dead_letters, wait_for,
    wait_for_count,
};
use serde_json::{Value as Json, json};

type Messages = Vec<(String, Vec<u8>)>;

/// A hang detector for a whole replay of a few thousand entries (never a speed assertion).
const REPLAY_DEADLINE: Duration = Duration::from_secs(180);

/// One `inbound:` list item with `id` and `v` from the payload, `on_conflict: error` and
/// 500-row batches.
fn route(name: &str, topic: &str, table: &str) -> Route {
    Route::inbound(name, topic, table)
        .columns(&[("id", "payload.id"), ("v", "payload.v")])
        .set("on_conflict", "error")
        .set("batch", json!({ "max_rows": 500, "max_delay": "100ms" }))
}

/// `{"id":N,"v":N}` on `topic` for each id.
fn good(topic: &str, ids: impl IntoIterator<Item = i64>) -> Messages {
    let message = |id| {
        (
            topic.to_owned(),
            format!(r#"{{"id":{id},"v":{id}}}"#).into_bytes(),
        )
    };
    ids.into_iter().map(message).collect()
}

/// `count` good messages on `<root>/<route_of(N)>`, with the `bad` ones spread evenly among
/// them (one after every `good / bad.len()` good ones).
fn good_among_bad(
    root: &str,
    count: i64,
    route_of: fn(i64) -> &'static str,
    bad: &Messages,
) -> Messages {
    let every = count / bad.len() as i64;
    let mut messages: Messages = Vec::new();
    for id in 1..=count {
        messages.extend(good(&format!("{root}/{}", route_of(id)), [id]));
        if id % every == 0 {
            messages.push(bad[(id / every - 1) as usize].clone());
        }
    }
    messages
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

/// Every mirrored copy, in arrival order (address, payload), is exactly the `dlq list
/// --json` object of the dead letter with the same id, at the address `address` builds from
/// it; one copy per dead letter, none missing, none twice, in id order.
fn assert_mirrored(letters: &[Json], copies: Messages, address: impl Fn(&Json) -> String) {
    let copies: Vec<(String, Json)> = copies
        .into_iter()
        .map(|(to, payload)| {
            let copy = serde_json::from_slice(&payload).unwrap_or_else(|e| {
                panic!("not JSON ({e}): {}", String::from_utf8_lossy(&payload))
            });
            (to, copy)
        })
        .collect();
    let listed: Vec<i64> = letters.iter().map(id_of).collect();
    let copied: Vec<i64> = copies.iter().map(|(_, c)| id_of(c)).collect();
    let order = "the mirrored ids (arrival order) are not the stored ids (id order)";
    assert_eq!(copied, listed, "{order}");
    for ((to, copy), letter) in copies.iter().zip(letters) {
        assert_eq!(
            copy, letter,
            "the envelope is not the `dlq list --json` object"
        );
        assert_eq!(*to, address(letter), "address of {letter}");
    }
}

/// Asserts how many of `letters` each `(route, error_kind)` has.
fn assert_kinds(letters: &[Json], want: &[(&str, &str, usize)]) {
    let mut got = BTreeMap::new();
    for l in letters {
        *got.entry((text(l, "route"), text(l, "error_kind")))
            .or_insert(0) += 1;
    }
    let want: BTreeMap<_, _> = want.iter().map(|(r, k, n)| ((*r, *k), *n)).collect();
    assert_eq!(got, want, "{letters:#?}");
}

/// The primary keys of every row of `table`.
fn row_ids(db: &Db, table: &str) -> Vec<i64> {
    let rows = db.query(&format!("SELECT id FROM {table} ORDER BY id"));
    let id = |r: &Vec<Option<String>>| {
        r[0].as_deref()
            .expect("an id")
            .trim()
            .parse()
            .expect("an integer id")
    };
    rows.iter().map(id).collect()
}

/// Asserts that every original dead letter (its id → its row's id) is either a row or still
/// queued: never both, never neither.
fn assert_one_place(rows: &[i64], listed: &[Json], originals: &BTreeMap<i64, i64>, ctx: &str) {
    let rows: BTreeSet<i64> = rows.iter().copied().collect();
    let listed: BTreeSet<i64> = listed.iter().map(id_of).collect();
    for (id, key) in originals {
        let (in_table, queued) = (rows.contains(key), listed.contains(id));
        assert!(
            in_table != queued,
            "dead letter {id} (row {key}): in the table {in_table}, still queued {queued}; {ctx}"
        );
    }
}

/// A `mqdb dlq replay --all` child process; stdout and stderr go to files in the test's dir.
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

impl Finished {
    fn ctx(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl Replay {
    /// Starts `mqdb -c CONFIG dlq replay --all` (stdin closed, not a terminal).
    fn start(config: &Path, label: &str) -> Replay {
        let dir = config.parent().expect("config dir");
        let (out, err) = (
            dir.join(format!("{label}.out")),
            dir.join(format!("{label}.err")),
        );
        let child = mqdb_command()
            .arg("-c")
            .arg(config)
            .args(["dlq", "replay", "--all"])
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
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{}", read(&self.out), read(&self.err))
    }

    /// Waits until `n` statements wait on a row lock of `table` (the rows a [`Blocker`]
    /// holds); panics with the replay's output if it exits first or after [`LIVENESS`].
    fn wait_held(&mut self, db: &Db, table: &str, n: i64) {
        let waiting = pg_lock_waiters(table);
        let start = Instant::now();
        while try_scalar(db, &waiting).unwrap_or(0) < n {
            let child = self.child.as_mut().expect("replay not reaped");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the replay exited ({status}) before {n} held; {}",
                    self.output()
                );
            }
            if start.elapsed() >= LIVENESS {
                panic!(
                    "timed out after {LIVENESS:?} waiting for {n} held; {}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit (a [`REPLAY_DEADLINE`] hang detector).
    fn exit(&mut self) -> ExitStatus {
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

    /// Waits for the exit and parses the summary.
    fn finish(&mut self) -> Finished {
        let status = self.exit();
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
            replayed: num(words.get(1)?)?,
            total: num(words.get(3)?)?,
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

/// Produces `n` rejected dead letters on route `load` (payload ids `1..=n`, `v = id`) with a
/// bridge and a table whose CHECK (`v < 0`) rejects every row; stops the bridge and drops
/// the constraint so the entries become replayable. Returns the config, the table and the
/// dead letters (id order).
fn replayable_dead_letters(world: &World, n: i64) -> (PathBuf, TempTable, Vec<Json>) {
    let db = Db::Postgres;
    let table = TempTable::create(
        &db,
        "replay",
        "id INTEGER PRIMARY KEY, v INTEGER NOT NULL, CONSTRAINT v_negative CHECK (v < 0)",
    );
    let topic = format!("{}/data", unique("replay"));
    let config = world
        .config(&db)
        .inbound(route("load", &topic, &table.name))
        .write();
    world.persistent_session(&topic);
    world
        .publisher()
        .publish_all_confirmed(good(&topic, 1..=n), 1);
    let mut bridge = Bridge::start(&config);
    wait_dead_letters(&mut bridge, &config, n as usize);
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
        let sql = format!("INSERT INTO {table} (id, v) VALUES ({id}, -1)");
        odbc_exec(&conn, &sql).expect("hold the row");
        Blocker { conn }
    }

    fn release(self) {
        self.conn.rollback().expect("release the held row");
    }
}

/// A running bridge whose routes (`<root>/<name>`, into one table that rejects NULL values)
/// store dead letters and mirror them as `mirror` configures.
struct Mirror {
    world: World,
    table: TempTable,
    root: String,
    config: PathBuf,
    bridge: Bridge,
}

impl Mirror {
    fn start(routes: &[&str], mirror: impl FnOnce(Config) -> Config) -> Mirror {
        let (db, world, root) = (Db::Postgres, World::new("dlq-ops"), unique("mirror"));
        let columns = "id INTEGER PRIMARY KEY, v INTEGER NOT NULL";
        let table = TempTable::create(&db, "mirror", columns);
        let add = |c: Config, r: &&str| c.inbound(route(r, &format!("{root}/{r}"), &table.name));
        let config = mirror(routes.iter().fold(world.config(&db), add)).write();
        world.persistent_session(&format!("{root}/+"));
        let bridge = Bridge::start(&config);
        bridge.wait_for_log("mirroring dead letters", LIVENESS);
        Mirror {
            world,
            table,
            root,
            config,
            bridge,
        }
    }

    /// The topic of route `name`.
    fn topic(&self, name: &str) -> String {
        format!("{}/{name}", self.root)
    }

    /// Publishes `messages` and waits until the table has `rows` rows and `letters` dead
    /// letters are stored.
    fn flow(&mut self, messages: Messages, rows: i64, letters: usize) {
        self.world.publisher().publish_all_confirmed(messages, 1);
        let count = format!("SELECT COUNT(*) FROM {}", self.table.name);
        wait_for_count(&mut self.bridge, &Db::Postgres, &count, rows);
        wait_dead_letters(&mut self.bridge, &self.config, letters);
    }

    /// Waits until `mirrored` counts at least `n` copies.
    fn wait_mirrored(&mut self, n: usize, mut mirrored: impl FnMut() -> usize) {
        let what = format!("{n} mirrored dead letters");
        wait_for(&mut self.bridge, &what, || Ok(mirrored() >= n));
    }
}

#[test]
fn mirror_to_mqtt_publishes_each_dead_letter_once_as_its_list_object() {
    // Given two routes into a table that rejects NULL values, and a mirror to the same
    // broker on a topic built from the route and the kind of error
    let mut m = Mirror::start(&["alpha", "beta"], |c| {
        let publish = json!({ "broker": "b", "topic": "mqdb/dead/{route}/{error_kind}", "qos": 1 });
        c.set("dead_letter", json!({ "publish": publish }))
    });
    let watcher = m.world.subscribe("mqdb/dead/#");

    // When 40 good messages flow with 5 bad ones of three kinds among them
    let (alpha, beta) = (m.topic("alpha"), m.topic("beta"));
    let bad: Messages = vec![
        (alpha.clone(), br#"{"id": 9001, "v": "#.to_vec()),
        (alpha.clone(), br#"{"id":9002,"v":null}"#.to_vec()),
        (beta.clone(), br#"{"id":9003,"v":"abc"}"#.to_vec()),
        (beta.clone(), b"not json".to_vec()),
        (beta.clone(), br#"{"id":9005,"v":null}"#.to_vec()),
    ];
    let route_of = |id: i64| if id % 2 == 0 { "alpha" } else { "beta" };

    // Then the good rows land, the bad ones are stored, and each is mirrored
    m.flow(good_among_bad(&m.root, 40, route_of, &bad), 40, 5);
    m.wait_mirrored(5, || watcher.count());
    // And once one more dead letter is mirrored after them, nothing was mirrored twice
    m.flow(vec![(alpha, br#"{"id":9006,"v":null}"#.to_vec())], 40, 6);
    m.wait_mirrored(6, || watcher.count());

    let letters = dlq_list(&m.config);
    assert_kinds(
        &letters,
        &[
            ("alpha", "decode", 1),
            ("alpha", "rejected", 2),
            ("beta", "convert", 1),
            ("beta", "decode", 1),
            ("beta", "rejected", 1),
        ],
    );
    let received = watcher.messages();
    for m in &received {
        assert_eq!(m.qos, 1, "published at the configured QoS 1: {m:?}");
        assert!(!m.retain, "{m:?}");
    }
    let copies = received.into_iter().map(|m| (m.topic, m.payload)).collect();
    assert_mirrored(&letters, copies, |l| {
        format!("mqdb/dead/{}/{}", text(l, "route"), text(l, "error_kind"))
    });
    // And the local store keeps them all
    assert_eq!(dlq_list(&m.config), letters);
    terminate_ok(&mut m.bridge);
}

#[test]
fn mirror_to_amqp_publishes_each_dead_letter_once_to_the_exchange() {
    // Given a topic exchange with a bound queue, and a mirror to it with a routing key
    // built from the route and the kind of error
    let mut rabbit = Rabbit::connect();
    let (exchange, queue) = (unique("mqdb_dead_x"), unique("mqdb_dead_q"));
    rabbit.declare_exchange(&exchange, "topic");
    rabbit.declare_bound_queue(&queue, &exchange, "#");
    let mut m = Mirror::start(&["gamma", "delta"], |c| {
        let publish =
            json!({ "broker": "r", "exchange": exchange, "routing_key": "{route}.{error_kind}" });
        let c = c.broker("r", Rabbit::URL, Json::Null);
        c.set("dead_letter", json!({ "publish": publish }))
    });

    // When 30 good messages flow with 5 bad ones among them
    let (gamma, delta) = (m.topic("gamma"), m.topic("delta"));
    let bad: Messages = vec![
        (gamma.clone(), b"{".to_vec()),
        (delta.clone(), br#"{"id":9002,"v":null}"#.to_vec()),
        (gamma.clone(), br#"{"id":9003,"v":"x"}"#.to_vec()),
        (gamma.clone(), br#"{"id":9004,"v":null}"#.to_vec()),
        (delta.clone(), b"[1,".to_vec()),
    ];
    let route_of = |id: i64| if id % 3 == 0 { "gamma" } else { "delta" };

    // Then the queue receives one persistent envelope per stored dead letter
    m.flow(good_among_bad(&m.root, 30, route_of, &bad), 30, 5);
    let mut taken = Vec::new();
    let mut take = || {
        taken.extend(rabbit.take_up_to(&queue, 100));
        taken.len()
    };
    m.wait_mirrored(5, &mut take);
    // And after one more, nothing arrived twice
    m.flow(vec![(delta, br#"{"id":9006,"v":null}"#.to_vec())], 30, 6);
    m.wait_mirrored(6, &mut take);

    let letters = dlq_list(&m.config);
    assert_kinds(
        &letters,
        &[
            ("delta", "decode", 1),
            ("delta", "rejected", 2),
            ("gamma", "convert", 1),
            ("gamma", "decode", 1),
            ("gamma", "rejected", 1),
        ],
    );
    for m in &taken {
        assert_eq!(m.exchange, exchange, "{m:?}");
        assert_eq!(m.delivery_mode, Some(2), "persistent: {m:?}");
        // And says it is JSON, with the dead letter's id as its message id
        assert_eq!(m.content_type.as_deref(), Some("application/json"), "{m:?}");
        let copy: Json = serde_json::from_slice(&m.payload).expect("a JSON envelope");
        let id = copy["id"].as_i64().expect("an id").to_string();
        assert_eq!(m.message_id.as_deref(), Some(id.as_str()), "{m:?}");
    }
    let copies = taken
        .into_iter()
        .map(|m| (m.routing_key, m.payload))
        .collect();
    assert_mirrored(&letters, copies, |l| {
        format!("{}.{}", text(l, "route"), text(l, "error_kind"))
    });
    assert_eq!(dlq_list(&m.config), letters, "mirroring removes nothing");
    terminate_ok(&mut m.bridge);
}

#[test]
fn mirror_outage_never_blocks_the_data_path_and_catches_up_in_order() {
    // Given a mirror to a second private Mosquitto reached through a proxy
    let mirror_broker = Mosquitto::start();
    let proxy = TcpProxy::start(mirror_broker.addr());
    let mut m = Mirror::start(&["omega"], |c| {
        let url = format!("mqtt://127.0.0.1:{}", proxy.port);
        let c = c.broker("m", &url, json!({ "client_id": unique("mqdb_mirror") }));
        let publish = json!({ "broker": "m", "topic": "mqdb/dead/{route}/{error_kind}" });
        c.set("dead_letter", json!({ "publish": publish }))
    });
    let watcher = Subscriber::connect(mirror_broker.port, "mqdb/dead/#", 1);
    let topic = m.topic("omega");
    let bad = |n: i64| -> (String, Vec<u8>) {
        let payload = match n % 3 {
            0 => format!(r#"{{"id":{},"v":null}}"#, 10_000 + n),
            1 => format!(r#"{{"id":{},"v":"#, 10_000 + n),
            _ => format!(r#"{{"id":{},"v":"nope"}}"#, 10_000 + n),
        };
        (topic.clone(), payload.into_bytes())
    };
    m.flow([good(&topic, 1..=10), vec![bad(0), bad(1)]].concat(), 10, 2);
    m.wait_mirrored(2, || watcher.count());
    // (the mirror stored its position past them: nothing of it is in flight at the cut)
    let last_id = dlq_list(&m.config)
        .iter()
        .map(id_of)
        .max()
        .expect("2 letters");
    let state = m.world.store.reader();
    wait_for(
        &mut m.bridge,
        "the mirror position past the first 2",
        || Ok(try_scalar(&state, "SELECT MAX(last_id) FROM mirror_position") == Some(last_id)),
    );

    // When the mirror's broker is unreachable while good and bad messages keep flowing, in
    // four waves, each after the mirror has tried (and failed) to reconnect once more, so
    // the mirror has long been stuck on what it could not publish
    proxy.set_down(true);
    let mut attempts = proxy.accepted();
    for wave in 0..4_i64 {
        wait_for(&mut m.bridge, "another refused mirror connection", || {
            Ok(proxy.accepted() > attempts)
        });
        attempts = proxy.accepted();
        let ids = 11 + wave * 75..11 + (wave + 1) * 75;
        let mut msgs = Vec::new();
        for id in ids {
            msgs.extend(good(&topic, [id]));
            if id % 15 == 0 {
                msgs.push(bad(id));
            }
        }
        // Then the good rows keep landing and the dead letters are stored meanwhile
        let stored = 2 + (11..11 + (wave + 1) * 75).filter(|id| id % 15 == 0).count();
        m.flow(msgs, 10 + (wave + 1) * 75, stored);
    }
    assert_eq!(dlq_list(&m.config).len(), 22);
    let premise = "nothing was mirrored through the cut proxy (the test's own premise)";
    assert_eq!(watcher.count(), 2, "{premise}");

    // And once it is back, every dead letter is mirrored, in id order, none missing
    proxy.set_down(false);
    m.wait_mirrored(22, || watcher.count());
    m.flow(vec![bad(1000)], 310, 23);
    m.wait_mirrored(23, || watcher.count());
    let letters = dlq_list(&m.config);
    let copies = watcher
        .messages()
        .into_iter()
        .map(|m| (m.topic, m.payload))
        .collect();
    assert_mirrored(&letters, copies, |l| {
        format!("mqdb/dead/{}/{}", text(l, "route"), text(l, "error_kind"))
    });
    let reconnected = proxy.accepted() >= 2;
    assert!(
        reconnected,
        "the mirror never reconnected, so it never saw the outage"
    );
    terminate_ok(&mut m.bridge);
}

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
    let mut replay = Replay::start(&config, "replay1");
    replay.wait_held(&db, &t, 1);
    assert!(table.count() > 0, "rows appeared before the interrupt");
    common::send_signal(replay.pid(), "INT");
    blocker.release();
    let first = replay.finish();
    eprintln!("interrupted replay: {}", first.summary.line);

    // Then it exits 1 and says it was interrupted
    let ctx = first.ctx();
    assert_eq!(first.status.code(), Some(1), "{ctx}");
    assert!(first.summary.line.contains("interrupted"), "{ctx}");
    assert_eq!(first.summary.total, n as u64, "{ctx}");
    assert_eq!(first.summary.failures(), 0, "{ctx}");
    let replayed = first.summary.replayed;
    assert!(replayed > 0 && replayed < n as u64, "{ctx}");
    // And the batch at hand finished: the held row's entry is in the table
    let rows = row_ids(&db, &t);
    assert!(
        rows.contains(&held),
        "the batch at hand was not finished; {ctx}"
    );
    assert_eq!(rows.len() as u64, replayed, "{ctx}");
    // And every entry is either a row (and gone from the queue) or still queued (and not a
    // row), untouched: never both, never neither
    let left = dlq_list(&config);
    assert_one_place(&rows, &left, &originals, &ctx);
    for l in &left {
        assert!(originals.contains_key(&id_of(l)), "no new entries: {l}");
        assert_eq!(l["attempts"], 1, "an untouched entry: {l}");
        assert_eq!(l["sqlstate"], "23514", "an untouched entry: {l}");
    }

    // When the replay runs again
    let second = Replay::start(&config, "replay2").finish();
    eprintln!("second replay: {}", second.summary.line);

    // Then it finishes the rest, and the counts add up exactly
    let ctx = second.ctx();
    assert_eq!(second.status.code(), Some(0), "{ctx}");
    assert_eq!(second.summary.total, left.len() as u64, "{ctx}");
    assert_eq!(second.summary.replayed, left.len() as u64, "{ctx}");
    assert_eq!(replayed + second.summary.replayed, n as u64);
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
    let topic = format!("{}/data", unique("beside"));
    let config = world
        .config(&db)
        .inbound(route("beside", &topic, &t))
        .write();
    world.persistent_session(&topic);
    let publisher = world.publisher();
    let n: i64 = 1500;
    let mut first: Messages = Vec::new();
    for id in 1..=n {
        let payload = format!(r#"{{"id":{id},"v":{}}}"#, 1_000_000 + id);
        first.push((topic.clone(), payload.into_bytes()));
        if id % 100 == 50 {
            let undecodable = format!(r#"{{"id":{}"#, 50_000 + id);
            first.push((topic.clone(), undecodable.into_bytes()));
        }
    }
    let hopeless_count = (n / 100) as usize;
    publisher.publish_all_confirmed(first, 1);
    let mut bridge = Bridge::start(&config);
    let letters = wait_dead_letters(&mut bridge, &config, n as usize + hopeless_count);
    assert_eq!(table.count(), 0);
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT v_small"));
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
        let ids = from..from + count;
        let (bad, fine): (Vec<i64>, Vec<i64>) = ids.clone().partition(|id| id % 5 == 0);
        let msgs = ids.map(|id| match (id % 5, id % 10) {
            (0, 0) => (
                topic.clone(),
                format!(r#"{{"id":{id},"v":null}}"#).into_bytes(),
            ),
            (0, _) => (topic.clone(), format!(r#"{{"id":{id},"v":"#).into_bytes()),
            _ => good(&topic, [id]).remove(0),
        });
        (msgs.collect(), fine.len() as i64, bad.len() as i64)
    };

    // When a replay of all entries runs, held in its second batch while the bridge stores
    // new rows and new dead letters, and the bridge keeps going after the hold is released
    let held = letters[750..]
        .iter()
        .find(|l| l["error_kind"] == "rejected");
    let blocker = Blocker::hold(
        &db,
        &t,
        payload_id(held.expect("a replayable entry in the second batch")),
    );
    let mut replay = Replay::start(&config, "replay");
    replay.wait_held(&db, &t, 1);
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
    let ctx = done.ctx();

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
        let expected = kind == "decode" || kind == "rejected";
        assert!(
            expected,
            "only undecodable and new entries fail again: {ctx}"
        );
    }
    assert_eq!(done.status.code(), Some(1), "{ctx}");
    let rows = row_ids(&db, &t);
    let unique_rows: BTreeSet<i64> = rows.iter().copied().collect();
    assert_eq!(rows.len(), unique_rows.len(), "no duplicate rows");
    assert_eq!(rows.len() as i64, n + good_a + good_b, "{ctx}");
    for key in replayable.values() {
        assert!(unique_rows.contains(key), "original row {key} is missing");
    }
    let sum = scalar(&db, &format!("SELECT SUM(v) FROM {t} WHERE id <= {n}"));
    assert_eq!(sum, (1..=n).map(|id| 1_000_000 + id).sum::<i64>());
    // And nothing is lost: the queue holds exactly the undecodable originals and the new bad
    // messages, each once, the ones the replay tried with one more attempt; no replayed
    // original and no duplicate insert
    let left = dlq_list(&config);
    assert_eq!(left.len(), hopeless_count + bad_total, "{left:#?}");
    let mut payloads = BTreeSet::new();
    for l in &left {
        let id = id_of(l);
        let allowed = id > last_original || hopeless.contains(&id);
        assert!(allowed, "a replayed original is still queued: {l}");
        assert!(payloads.insert(text(l, "payload").to_owned()), "twice: {l}");
        match text(l, "error_kind") {
            "decode" => {}
            "rejected" => assert_eq!(l["sqlstate"], "23502", "{l}"),
            other => panic!("unexpected kind {other}: {l}"),
        }
        if id > last_original {
            assert_eq!(
                l["attempts"], 1,
                "stored after the replay began, left for the next one: {l}"
            );
        } else {
            assert_eq!(
                l["attempts"], 2,
                "an undecodable original, tried once more: {l}"
            );
        }
    }
    for id in &hopeless {
        let kept = left.iter().any(|l| id_of(l) == *id);
        assert!(kept, "undecodable original {id} was lost; {ctx}");
    }
    let retried = left.iter().filter(|l| l["attempts"] == 2).count() as u64;
    let failed_again = "each entry the replay failed again is still queued with 2 attempts";
    assert_eq!(retried, done.summary.failures(), "{failed_again}; {ctx}");
    terminate_ok(&mut bridge);
}

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
    let mut a = Replay::start(&config, "replay_a");
    let mut b = Replay::start(&config, "replay_b");
    a.wait_held(&db, &t, 2);
    holds.into_iter().for_each(Blocker::release);
    let (done_a, done_b) = (a.finish(), b.finish());
    let (sa, sb) = (&done_a.summary, &done_b.summary);
    eprintln!("replay A: {}; replay B: {}", sa.line, sb.line);
    let ctx = format!("A:\n{}\nB:\n{}", done_a.ctx(), done_b.ctx());

    // Then between them every entry was replayed once, none failed
    assert_eq!((sa.failures(), sb.failures()), (0, 0), "{ctx}");
    assert!(sa.replayed > 0 && sb.replayed > 0, "both worked: {ctx}");
    assert_eq!(sa.replayed + sb.replayed, n as u64, "{ctx}");
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

#[test]
fn entries_purged_during_a_replay_are_reported_as_gone_not_held() {
    // Given 1200 dead letters whose table accepts them now
    let db = Db::Postgres;
    let world = World::new("dlq-ops");
    let n: i64 = 1200;
    let (config, table, letters) = replayable_dead_letters(&world, n);

    // When a replay of all of them waits in its first batch, and everything it has not
    // claimed is purged meanwhile
    let blocker = Blocker::hold(&db, &table.name, payload_id(&letters[250]));
    let mut replay = Replay::start(&config, "purged_under");
    replay.wait_held(&db, &table.name, 1);
    let purge = run_mqdb(&["-c", path_str(&config), "dlq", "purge", "--all", "--yes"]);
    assert_eq!(purge.status.code(), Some(0), "{purge:?}");
    blocker.release();
    let done = replay.finish();
    eprintln!("replay under a purge: {}", done.summary.line);
    let ctx = done.ctx();

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
    let mut replay = Replay::start(&config, "killed");
    replay.wait_held(&db, &t, 1);
    common::send_signal(replay.pid(), "KILL");
    assert_eq!(replay.exit().code(), None, "killed by the signal");
    blocker.release();

    // Then every entry is a row or still queued, never both, never neither
    let listed = dlq_list(&config);
    assert_one_place(&row_ids(&db, &t), &listed, &originals, "after the kill");
    assert!(!listed.is_empty(), "the killed batch is still queued");

    // And a new replay either replays everything, or does not claim success
    let done = Replay::start(&config, "again").finish();
    eprintln!("replay after a killed one: {}", done.summary.line);
    let left = dlq_list(&config);
    let ctx = format!("{}{} entries still queued", done.ctx(), left.len());
    assert_eq!(done.summary.failures(), 0, "{ctx}");
    if done.status.code() == Some(0) {
        assert_eq!(left.len(), 0, "exit 0 while entries remain: {ctx}");
        assert_eq!(table.count(), n, "{ctx}");
    } else {
        assert_eq!(done.status.code(), Some(1), "{ctx}");
    }
    assert_one_place(&row_ids(&db, &t), &left, &originals, &ctx);
}

/// Runs `mqdb -c CONFIG check` on `text` and asserts exit 2 with `file:LINE:` where LINE is
/// one of `lines` (1-based), and the message naming `needle`.
fn assert_config_error(dir: &Path, text: &str, lines: &[usize], needle: &str) {
    let path = dir.join(format!("{}.yaml", unique("bad")));
    std::fs::write(&path, text).expect("write config");
    let out = run_mqdb(&["-c", path_str(&path), "check"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ctx = format!("{text}\n---\n{stdout}{stderr}");
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
    let cases = [
        // A template field a dead letter does not have (MQTT topic)
        (
            "broker: b\n    topic: \"mqdb/dead/{topic}\"\n",
            &[base + 4][..],
            "{topic}",
        ),
        // … and in an AMQP routing key
        (
            "broker: r\n    exchange: x\n    routing_key: \"{route}.{payload}\"\n",
            &[base + 5],
            "{payload}",
        ),
        // A topic on an AMQP broker
        (
            "broker: r\n    topic: \"mqdb/dead/{route}\"\n",
            &[base + 2, base + 3, base + 4],
            "topic",
        ),
    ];
    for (publish, lines, needle) in cases {
        let text = format!("{head}dead_letter:\n  publish:\n    {publish}");
        assert_config_error(dir.path(), &text, lines, needle);
    }
}
