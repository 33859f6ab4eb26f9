//! Dead-letter operations: the `dead_letter.publish` mirror (MQTT, AMQP, across an outage of
//! its broker), and `mqdb dlq replay` interrupted, beside a running bridge, twice at once,
//! under a purge and after a killed one.
//!
//! Where a replay must be in the middle of its work at a given moment, the test holds an
//! uncommitted PostgreSQL row with the primary key of one of the replay's rows, so the
//! replay's insert waits on it: deterministic, never timed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    Bridge, Config, Db, LIVENESS, Mosquitto, Rabbit, Ran, Route, StateStore, Subscriber, TcpProxy,
    TempTable, Workdir, World, dlq_list, letter_id as id_of, lock_holder, mqdb_at, mqdb_command,
    pg_lock_waiters, scalar, terminate_ok, try_scalar, unique, wait_dead_letters, wait_for,
    wait_for_count,
};
use serde_json::{Value as Json, json};

type Messages = Vec<(String, Vec<u8>)>;
type RouteOf = fn(i64) -> &'static str;
/// Dead-letter id → the id of its row.
type Originals = BTreeMap<i64, i64>;
type Blocker = odbc_api::Connection<'static>;

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

fn msg(topic: &str, payload: String) -> (String, Vec<u8>) {
    (topic.to_owned(), payload.into_bytes())
}

/// `{"id":N,"v":N}` on `topic` for each id.
fn good(topic: &str, ids: impl IntoIterator<Item = i64>) -> Messages {
    let good = |id| msg(topic, format!(r#"{{"id":{id},"v":{id}}}"#));
    ids.into_iter().map(good).collect()
}

fn text<'a>(letter: &'a Json, key: &str) -> &'a str {
    let text = letter[key].as_str();
    text.unwrap_or_else(|| panic!("no text {key}: {letter}"))
}

/// The `id` inside a dead letter's JSON payload (the row's primary key).
fn payload_id(letter: &Json) -> i64 {
    let payload: Result<Json, _> = serde_json::from_str(text(letter, "payload"));
    let payload = payload.unwrap_or_else(|e| panic!("payload is not JSON ({e}): {letter}"));
    let id = payload["id"].as_i64();
    id.unwrap_or_else(|| panic!("payload without an integer id: {letter}"))
}

/// How many of `letters` each route and error kind has: `route kind n, …` in that order.
fn kinds(letters: &[Json]) -> String {
    let mut got = BTreeMap::new();
    for l in letters {
        let key = (text(l, "route"), text(l, "error_kind"));
        *got.entry(key).or_insert(0) += 1;
    }
    let kind = |((r, k), n): (_, usize)| format!("{r} {k} {n}");
    got.into_iter().map(kind).collect::<Vec<_>>().join(", ")
}

fn row_ids(table: &TempTable) -> Vec<i64> {
    let sql = format!("SELECT id FROM {} ORDER BY id", table.name);
    let rows = table.db.query(&sql);
    let id = |r: &Vec<Option<String>>| r[0].as_deref().expect("an id").trim().parse();
    rows.iter().map(|r| id(r).expect("an integer id")).collect()
}

fn sum_v(table: &TempTable, filter: &str) -> i64 {
    let sql = format!("SELECT SUM(v) FROM {} WHERE {filter}", table.name);
    scalar(&table.db, &sql)
}

/// Asserts that every original dead letter (its id → its row's id) is either a row or still
/// queued: never both, never neither.
fn assert_one_place(rows: &[i64], listed: &[Json], originals: &Originals, ctx: impl Display) {
    let rows: BTreeSet<i64> = rows.iter().copied().collect();
    let listed: BTreeSet<i64> = listed.iter().map(id_of).collect();
    for (id, key) in originals {
        let (in_table, queued) = (rows.contains(key), listed.contains(id));
        let both_or_neither = format!("{id} (row {key}): in the table {in_table}, queued {queued}");
        assert!(in_table != queued, "{both_or_neither}; {ctx}");
    }
}

/// A bridge with routes `<root>/<name>` into one table that rejects NULL values, which
/// mirrors its dead letters as `mirror` configures; `copies` reads every mirrored copy so
/// far (address, payload), in arrival order.
struct Mirror {
    world: World,
    table: TempTable,
    root: String,
    config: PathBuf,
    bridge: Bridge,
    copies: Box<dyn FnMut() -> Messages>,
}

impl Mirror {
    fn start(
        world: World,
        routes: &[&str],
        copies: impl FnMut() -> Messages + 'static,
        mirror: impl FnOnce(Config) -> Config,
    ) -> Mirror {
        let (db, root) = (Db::Postgres, unique("mirror"));
        let columns = "id INTEGER PRIMARY KEY, v INTEGER NOT NULL";
        let table = TempTable::create(&db, "mirror", columns);
        let add = |c: Config, r: &&str| c.inbound(route(r, &format!("{root}/{r}"), &table.name));
        let config = mirror(routes.iter().fold(world.config(&db), add)).write();
        world.persistent_session(&format!("{root}/+"));
        let bridge = Bridge::start(&config);
        bridge.wait_for_log("mirroring dead letters", LIVENESS);
        let copies = Box::new(copies);
        Mirror {
            world,
            table,
            root,
            config,
            bridge,
            copies,
        }
    }

    fn topic(&self, name: &str) -> String {
        format!("{}/{name}", self.root)
    }

    /// Publishes `messages`, then waits until the table has `rows` rows, `letters` dead
    /// letters are stored and at least `mirrored` copies arrived.
    fn flow(&mut self, messages: Messages, rows: i64, letters: usize, mirrored: usize) {
        self.world.publisher().publish_all_confirmed(messages, 1);
        let count = format!("SELECT COUNT(*) FROM {}", self.table.name);
        wait_for_count(&mut self.bridge, &Db::Postgres, &count, rows);
        wait_dead_letters(&mut self.bridge, &self.config, letters);
        let (what, copies) = (format!("{mirrored} mirrored"), &mut self.copies);
        wait_for(&mut self.bridge, &what, || Ok(copies().len() >= mirrored));
    }

    /// Asserts that the copies are exactly the `dlq list --json` objects, one per dead
    /// letter, in id order, each at the address `address` builds from it, and that mirroring
    /// removed none; stops the bridge and returns the dead letters.
    fn finish(mut self, address: impl Fn(&Json) -> String) -> Vec<Json> {
        let letters = dlq_list(&self.config);
        let parse = |(to, payload): (String, Vec<u8>)| {
            let e = |e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&payload));
            let json: Json = serde_json::from_slice(&payload).unwrap_or_else(e);
            (to, json)
        };
        let copies: Vec<(String, Json)> = (self.copies)().into_iter().map(parse).collect();
        // (in arrival order, each the `dlq list --json` object at its address)
        let want = Vec::from_iter(letters.iter().map(|l| (address(l), l.clone())));
        assert_eq!(copies, want, "the copies are the stored dead letters");
        assert_eq!(dlq_list(&self.config), letters, "mirroring removes nothing");
        terminate_ok(&mut self.bridge);
        letters
    }
}

/// `count` good messages on `<root>/<route_of(N)>`, with the `bad` ones spread evenly among
/// them (one after every `count / bad.len()` good ones).
fn good_among_bad(root: &str, count: i64, route_of: RouteOf, bad: &Messages) -> Messages {
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

/// What `watcher` received so far, as (topic, payload).
fn mqtt_copies(watcher: Subscriber) -> impl FnMut() -> Messages {
    let copy = |m: common::Received| (m.topic, m.payload);
    move || watcher.messages().into_iter().map(copy).collect()
}

fn mqtt_address(l: &Json) -> String {
    format!("mqdb/dead/{}/{}", text(l, "route"), text(l, "error_kind"))
}

#[test]
fn mirror_to_mqtt_publishes_each_dead_letter_once_as_its_list_object() {
    // Given two routes into a table that rejects NULL values, and a mirror to the same
    // broker on a topic built from the route and the kind of error
    let world = World::new("dlq-ops");
    let watcher = world.subscribe("mqdb/dead/#");
    // Each published at QoS 1, not retained
    let copies = move || -> Messages {
        let copy = |m: common::Received| {
            assert_eq!(m.qos, 1, "published at the configured QoS: {m:?}");
            assert!(!m.retain, "{m:?}");
            (m.topic, m.payload)
        };
        watcher.messages().into_iter().map(copy).collect()
    };
    let mut m = Mirror::start(world, &["alpha", "beta"], copies, |c| {
        let topic = "mqdb/dead/{route}/{error_kind}";
        let publish = json!({ "broker": "b", "topic": topic, "qos": 1 });
        c.set("dead_letter", json!({ "publish": publish }))
    });

    // When 40 good messages flow with 5 bad ones of three kinds among them
    let (alpha, beta) = (m.topic("alpha"), m.topic("beta"));
    let bad: Messages = vec![
        msg(&alpha, r#"{"id": 9001, "v": "#.into()),
        msg(&alpha, r#"{"id":9002,"v":null}"#.into()),
        msg(&beta, r#"{"id":9003,"v":"abc"}"#.into()),
        msg(&beta, "not json".into()),
        msg(&beta, r#"{"id":9005,"v":null}"#.into()),
    ];
    let route_of = |id: i64| if id % 2 == 0 { "alpha" } else { "beta" };

    // Then the good rows land, the bad ones are stored, and each is mirrored
    m.flow(good_among_bad(&m.root, 40, route_of, &bad), 40, 5, 5);
    // And once one more dead letter is mirrored after them, nothing was mirrored twice
    let last = msg(&alpha, r#"{"id":9006,"v":null}"#.into());
    m.flow(vec![last], 40, 6, 6);
    let letters = m.finish(mqtt_address);
    let want = "alpha decode 1, alpha rejected 2, beta convert 1, beta decode 1, beta rejected 1";
    assert_eq!(kinds(&letters), want, "{letters:#?}");
}

#[test]
fn mirror_with_retain_leaves_each_topic_its_last_dead_letter_for_late_subscribers() {
    // Given a mirror that retains its copies, on one topic per route
    let world = World::new("dlq-ops");
    let copies = mqtt_copies(world.subscribe("mqdb/dead/#"));
    let mut m = Mirror::start(world, &["alpha", "beta"], copies, |c| {
        let topic = "mqdb/dead/{route}";
        let publish = json!({ "broker": "b", "topic": topic, "qos": 1, "retain": true });
        c.set("dead_letter", json!({ "publish": publish }))
    });

    // When three dead letters are stored, two of them on route alpha
    let (alpha, beta) = (m.topic("alpha"), m.topic("beta"));
    let bad: Messages = vec![
        msg(&alpha, "not json".into()),
        msg(&beta, r#"{"id":9002,"v":null}"#.into()),
        msg(&alpha, r#"{"id":9003,"v":null}"#.into()),
    ];
    m.flow(good_among_bad(&m.root, 30, |_| "alpha", &bad), 30, 3, 3);

    // Then a subscriber that comes afterwards gets, as retained messages, the last dead
    // letter of each topic (and the live copies were each letter once, in order)
    let late = Subscriber::connect(m.world.broker.port, "mqdb/dead/#", 1);
    let got = late.wait_for(2, LIVENESS);
    let address = |l: &Json| format!("mqdb/dead/{}", text(l, "route"));
    let letters = m.finish(address);
    let last_of_each = BTreeMap::from_iter(letters.iter().map(|l| (address(l), l.clone())));
    let retained = |r: &common::Received| {
        assert!(r.retain, "delivered as retained: {r:?}");
        let json: Json = serde_json::from_slice(&r.payload).expect("a JSON copy");
        (r.topic.clone(), json)
    };
    let retained = BTreeMap::from_iter(got.iter().map(retained));
    assert_eq!(got.len(), 2, "one retained copy per topic: {got:?}");
    assert_eq!(retained, last_of_each);
}

#[test]
fn mirror_to_amqp_publishes_each_dead_letter_once_to_the_exchange() {
    // Given a topic exchange with a bound queue, and a mirror to it with a routing key
    // built from the route and the kind of error
    let mut rabbit = Rabbit::connect();
    let (exchange, queue) = (unique("mqdb_dead_x"), unique("mqdb_dead_q"));
    rabbit.declare_exchange(&exchange, "topic");
    rabbit.declare_bound_queue(&queue, &exchange, "#");
    let publish =
        json!({ "broker": "r", "exchange": exchange, "routing_key": "{route}.{error_kind}" });
    let mut taken = Vec::new();
    // Each a persistent envelope that says it is JSON, with the dead letter's id as its
    // message id
    let copies = move || -> Messages {
        taken.extend(rabbit.take_up_to(&queue, 100));
        let mut copies = Messages::new();
        for m in &taken {
            assert_eq!(m.exchange, exchange, "{m:?}");
            assert_eq!(m.delivery_mode, Some(2), "persistent: {m:?}");
            let json = m.content_type.as_deref();
            assert_eq!(json, Some("application/json"), "{m:?}");
            let copy: Json = serde_json::from_slice(&m.payload).expect("a JSON envelope");
            let id = copy["id"].as_i64().expect("an id").to_string();
            assert_eq!(m.message_id.as_deref(), Some(id.as_str()), "{m:?}");
            copies.push((m.routing_key.clone(), m.payload.clone()));
        }
        copies
    };
    let mut m = Mirror::start(World::new("dlq-ops"), &["gamma", "delta"], copies, |c| {
        let c = c.broker("r", Rabbit::URL, Json::Null);
        c.set("dead_letter", json!({ "publish": publish }))
    });

    // When 30 good messages flow with 5 bad ones among them
    let (gamma, delta) = (m.topic("gamma"), m.topic("delta"));
    let bad: Messages = vec![
        msg(&gamma, "{".into()),
        msg(&delta, r#"{"id":9002,"v":null}"#.into()),
        msg(&gamma, r#"{"id":9003,"v":"x"}"#.into()),
        msg(&gamma, r#"{"id":9004,"v":null}"#.into()),
        msg(&delta, "[1,".into()),
    ];
    let route_of = |id: i64| if id % 3 == 0 { "gamma" } else { "delta" };

    // Then the queue receives one envelope per stored dead letter
    m.flow(good_among_bad(&m.root, 30, route_of, &bad), 30, 5, 5);
    // And after one more, nothing arrived twice
    let last = msg(&delta, r#"{"id":9006,"v":null}"#.into());
    m.flow(vec![last], 30, 6, 6);
    let address = |l: &Json| format!("{}.{}", text(l, "route"), text(l, "error_kind"));
    let letters = m.finish(address);
    let want =
        "delta decode 1, delta rejected 2, gamma convert 1, gamma decode 1, gamma rejected 1";
    assert_eq!(kinds(&letters), want, "{letters:#?}");
}

#[test]
fn mirror_outage_never_blocks_the_data_path_and_catches_up_in_order() {
    // Given a mirror to a second private Mosquitto reached through a proxy
    let mirror_broker = Mosquitto::start();
    let proxy = TcpProxy::start(mirror_broker.addr());
    let copies = mqtt_copies(Subscriber::connect(mirror_broker.port, "mqdb/dead/#", 1));
    let world = World::new("dlq-ops");
    let state = world.store.reader();
    let mut m = Mirror::start(world, &["omega"], copies, |c| {
        let url = format!("mqtt://127.0.0.1:{}", proxy.port);
        let c = c.broker("m", &url, json!({ "client_id": unique("mqdb_mirror") }));
        let publish = json!({ "broker": "m", "topic": "mqdb/dead/{route}/{error_kind}" });
        c.set("dead_letter", json!({ "publish": publish }))
    });
    let topic = m.topic("omega");
    let bad = |n: i64| {
        let id = 10_000 + n;
        let payload = match n % 3 {
            0 => format!(r#"{{"id":{id},"v":null}}"#),
            1 => format!(r#"{{"id":{id},"v":"#),
            _ => format!(r#"{{"id":{id},"v":"nope"}}"#),
        };
        msg(&topic, payload)
    };
    let first = [good(&topic, 1..=10), vec![bad(0), bad(1)]].concat();
    m.flow(first, 10, 2, 2);
    // (the mirror stored its position past them: nothing of it is in flight at the cut)
    let last_id = dlq_list(&m.config).iter().map(id_of).max();
    let last_id = Some(last_id.expect("2 letters"));
    let position = "SELECT MAX(last_id) FROM mirror_position";
    wait_for(&mut m.bridge, "the mirror position", || {
        Ok(state.try_scalar(position) == last_id)
    });

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
        let mut msgs = Vec::new();
        for id in 11 + wave * 75..11 + (wave + 1) * 75 {
            msgs.extend(good(&topic, [id]));
            if id % 15 == 0 {
                msgs.push(bad(id));
            }
        }
        // Then the good rows keep landing and the dead letters are stored meanwhile
        let stored = 2 + (11..11 + (wave + 1) * 75).filter(|id| id % 15 == 0).count();
        m.flow(msgs, 10 + (wave + 1) * 75, stored, 2);
    }
    assert_eq!(dlq_list(&m.config).len(), 22);
    let premise = "nothing was mirrored through the cut proxy (the test's own premise)";
    assert_eq!((m.copies)().len(), 2, "{premise}");

    // And once it is back, every dead letter is mirrored, in id order, none missing
    proxy.set_down(false);
    m.flow(Vec::new(), 310, 22, 22);
    m.flow(vec![bad(1000)], 310, 23, 23);
    m.finish(mqtt_address);
    let never = "the mirror never reconnected, so it never saw the outage";
    assert!(proxy.accepted() >= 2, "{never}");
}

/// `n` rejected dead letters on route `load` (payload ids `1..=n`, `v = id`) from a bridge
/// and a table whose CHECK (`v < 0`) rejected every row, dropped since, so that the entries
/// are replayable.
struct Replayable {
    _world: World,
    config: PathBuf,
    table: TempTable,
    /// The dead letters, in id order.
    letters: Vec<Json>,
}

impl Replayable {
    fn new(n: i64) -> Replayable {
        Replayable::on(n, None)
    }

    /// [`Replayable::new`] with the state kept in `store` (default: the world's SQLite file).
    fn on(n: i64, store: Option<StateStore>) -> Replayable {
        let mut world = World::new("dlq-ops");
        if let Some(store) = store {
            world = world.on_store(store);
        }
        let columns = "id INTEGER PRIMARY KEY, v INTEGER NOT NULL, \
                       CONSTRAINT v_negative CHECK (v < 0)";
        let table = TempTable::create(&Db::Postgres, "replay", columns);
        let topic = format!("{}/data", unique("replay"));
        let route = route("load", &topic, &table.name);
        let config = world.config(&table.db).inbound(route).write();
        world.persistent_session(&topic);
        let messages = good(&topic, 1..=n);
        world.publisher().publish_all_confirmed(messages, 1);
        let mut bridge = Bridge::start(&config);
        wait_dead_letters(&mut bridge, &config, n as usize);
        terminate_ok(&mut bridge);
        assert_eq!(table.count(), 0, "the CHECK constraint rejected every row");
        let fix = format!("ALTER TABLE {} DROP CONSTRAINT v_negative", table.name);
        table.db.exec(&fix);
        let letters = dlq_list(&config);
        let kinds = Vec::from_iter(letters.iter().map(|l| (&l["error_kind"], &l["sqlstate"])));
        let rejected = (&json!("rejected"), &json!("23514"));
        assert_eq!(kinds, vec![rejected; n as usize], "{letters:#?}");
        Replayable {
            _world: world,
            config,
            table,
            letters,
        }
    }

    fn originals(&self) -> Originals {
        self.letters
            .iter()
            .map(|l| (id_of(l), payload_id(l)))
            .collect()
    }

    /// Holds the row of the dead letter at `index` (see [`hold`]).
    fn hold(&self, index: usize) -> Blocker {
        hold(&self.table, payload_id(&self.letters[index]))
    }

    /// Starts a replay of every entry and waits until `held` of its inserts wait on a held
    /// row.
    fn replay_held(&self, label: &str, held: i64) -> Replay {
        let mut replay = Replay::start(&self.config, label);
        replay.wait_held(&self.table, held);
        replay
    }
}

/// An open transaction that holds an uncommitted row with primary key `id` in `table`: a
/// replay inserting that id waits on it until [`release`] rolls it back.
fn hold(table: &TempTable, id: i64) -> Blocker {
    let sql = format!("INSERT INTO {} (id, v) VALUES ({id}, -1)", table.name);
    lock_holder(&table.db, &sql)
}

fn release(blocker: Blocker) {
    blocker.rollback().expect("release the held row");
}

/// A `mqdb dlq replay --all` child process; stdout and stderr go to files in the test's dir.
struct Replay {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Replay {
    /// Starts `mqdb -c CONFIG dlq replay --all` (stdin closed, not a terminal).
    fn start(config: &Path, label: &str) -> Replay {
        let dir = config.parent().expect("config dir");
        let file = |ext: &str| dir.join(format!("{label}.{ext}"));
        let (out, err) = (file("out"), file("err"));
        let mut cmd = mqdb_command();
        cmd.arg("-c").arg(config).args(["dlq", "replay", "--all"]);
        cmd.current_dir(dir).stdin(Stdio::null());
        cmd.stdout(File::create(&out).expect("create replay stdout"));
        cmd.stderr(File::create(&err).expect("create replay stderr"));
        let child = Some(cmd.spawn().expect("spawn mqdb dlq replay"));
        Replay { child, out, err }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("replay not reaped").id()
    }

    /// What it printed so far, with its exit `code`.
    fn ran(&self, code: Option<i32>) -> Ran {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let (stdout, stderr) = (read(&self.out), read(&self.err));
        Ran {
            code,
            stdout,
            stderr,
        }
    }

    /// Waits until `n` statements wait on a row lock of `table` (the rows [`hold`]
    /// holds); panics with the replay's output if it exits first or after [`LIVENESS`].
    fn wait_held(&mut self, table: &TempTable, n: i64) {
        let (waiting, start) = (pg_lock_waiters(&table.name), Instant::now());
        while try_scalar(&table.db, &waiting).unwrap_or(0) < n {
            let child = self.child.as_mut().expect("replay not reaped");
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() >= LIVENESS {
                let (out, after) = (self.ran(None), start.elapsed());
                panic!("no {n} held: exited {exited:?} after {after:?}; {out}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit (a [`REPLAY_DEADLINE`] hang detector).
    fn exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("replay not reaped");
        let status = common::wait_child(&mut child, REPLAY_DEADLINE);
        status.unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            let out = self.ran(None);
            panic!("the replay did not exit within {REPLAY_DEADLINE:?}; {out}")
        })
    }

    /// Waits for the exit: what it printed and how it exited, and its summary line.
    fn finish(&mut self) -> (Ran, Summary) {
        let code = self.exit().code();
        let ran = self.ran(code);
        let summary = Summary::parse(&ran.stdout);
        let summary = summary.unwrap_or_else(|| panic!("no summary line; {ran}"));
        eprintln!("replay {}: {}", self.out.display(), summary.line);
        (ran, summary)
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
            let before = line
                .find(phrase)
                .and_then(|at| line[..at].split_whitespace().last());
            before.and_then(|w| w.parse().ok()).unwrap_or(0)
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

#[test]
fn replay_interrupted_by_sigint_leaves_every_entry_in_exactly_one_place() {
    // Given 4000 inbound dead letters whose table accepts them now
    let n: i64 = 4000;
    let q = Replayable::new(n);

    // When a replay of all of them is in its second batch (held on a row of it) and gets
    // SIGINT once its first rows are in the table
    let (blocker, held) = (q.hold(750), payload_id(&q.letters[750]));
    let mut replay = q.replay_held("replay1", 1);
    assert!(q.table.count() > 0, "rows appeared before the interrupt");
    common::send_signal(replay.pid(), "INT");
    release(blocker);
    let (ran, s) = replay.finish();

    // Then it exits 1 and says it was interrupted
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(s.line.contains("interrupted"), "{ran}");
    assert_eq!((s.total, s.failures()), (n as u64, 0), "{ran}");
    assert!(s.replayed > 0 && s.replayed < n as u64, "{ran}");
    // And the batch at hand finished: the held row's entry is in the table
    let rows = row_ids(&q.table);
    assert!(rows.contains(&held), "the batch at hand is not done; {ran}");
    assert_eq!(rows.len() as u64, s.replayed, "{ran}");
    // And every entry is either a row (and gone from the queue) or still queued (and not a
    // row), untouched: never both, never neither
    let left = dlq_list(&q.config);
    let originals = q.originals();
    assert_one_place(&rows, &left, &originals, &ran);
    for l in &left {
        assert!(originals.contains_key(&id_of(l)), "no new entries: {l}");
        assert_eq!(l["attempts"], 1, "an untouched entry: {l}");
        assert_eq!(l["sqlstate"], "23514", "an untouched entry: {l}");
    }

    // When the replay runs again
    let (ran, s2) = Replay::start(&q.config, "replay2").finish();

    // Then it finishes the rest, and the counts add up exactly
    assert_eq!(ran.code, Some(0), "{ran}");
    let rest = left.len() as u64;
    assert_eq!((s2.total, s2.replayed), (rest, rest), "{ran}");
    assert_eq!(s.replayed + s2.replayed, n as u64);
    assert_eq!(dlq_list(&q.config), Vec::<Json>::new());
    assert_eq!(q.table.count(), n);
    let every = Vec::from_iter(1..=n);
    assert_eq!(row_ids(&q.table), every, "every entry is one row");
    assert_eq!(sum_v(&q.table, "TRUE"), n * (n + 1) / 2);
}

#[test]
fn replay_beside_a_running_bridge_replays_each_entry_once_and_loses_none() {
    // Given 1500 rejected dead letters whose table accepts them now, 15 undecodable ones
    // among them (they fail again, in the same batches as the others), and a bridge that
    // keeps running on the same state store
    let (db, world) = (Db::Postgres, World::new("dlq-ops"));
    let columns = "id INTEGER PRIMARY KEY, v INTEGER NOT NULL, \
                   CONSTRAINT v_small CHECK (v < 1000000)";
    let table = TempTable::create(&db, "beside", columns);
    let t = table.name.as_str();
    let topic = format!("{}/data", unique("beside"));
    let config = world.config(&db).inbound(route("beside", &topic, t));
    let config = config.write();
    world.persistent_session(&topic);
    let publisher = world.publisher();
    let n: i64 = 1500;
    let mut first: Messages = Vec::new();
    for id in 1..=n {
        let v = 1_000_000 + id;
        first.push(msg(&topic, format!(r#"{{"id":{id},"v":{v}}}"#)));
        if id % 100 == 50 {
            first.push(msg(&topic, format!(r#"{{"id":{}"#, 50_000 + id)));
        }
    }
    let hopeless_count = (n / 100) as usize;
    publisher.publish_all_confirmed(first, 1);
    let mut bridge = Bridge::start(&config);
    let letters = wait_dead_letters(&mut bridge, &config, n as usize + hopeless_count);
    assert_eq!(table.count(), 0);
    db.exec(&format!("ALTER TABLE {t} DROP CONSTRAINT v_small"));
    // dead-letter id -> row id, for the replayable ones; the ids of the undecodable ones
    let (mut replayable, mut hopeless) = (BTreeMap::new(), BTreeSet::new());
    for l in &letters {
        match text(l, "error_kind") {
            "rejected" => replayable.insert(id_of(l), payload_id(l)).is_none(),
            "decode" => hopeless.insert(id_of(l)),
            other => panic!("unexpected kind {other}: {l}"),
        };
    }
    assert_eq!(replayable.len() as i64, n, "{letters:#?}");
    assert_eq!(hopeless.len(), hopeless_count, "{letters:#?}");
    let last_original = letters.iter().map(id_of).max().expect("originals");

    // The bridge's traffic: good rows (ids from 100000) and bad messages that stay dead
    // letters whatever happens (NULL into NOT NULL, bad JSON)
    let traffic = |from: i64| -> (Messages, Vec<i64>, i64) {
        let ids = from..from + 300;
        let (bad, fine): (Vec<i64>, Vec<i64>) = ids.clone().partition(|id| id % 5 == 0);
        let msgs = ids.map(|id| match (id % 5, id % 10) {
            (0, 0) => msg(&topic, format!(r#"{{"id":{id},"v":null}}"#)),
            (0, _) => msg(&topic, format!(r#"{{"id":{id},"v":"#)),
            _ => msg(&topic, format!(r#"{{"id":{id},"v":{id}}}"#)),
        });
        (msgs.collect(), fine, bad.len() as i64)
    };

    // When a replay of all entries runs, held in its second batch while the bridge stores
    // new rows and new dead letters, and the bridge keeps going after the hold is released
    let held = letters[750..]
        .iter()
        .find(|l| l["error_kind"] == "rejected");
    let held = payload_id(held.expect("a replayable entry in the second batch"));
    let blocker = hold(&table, held);
    let mut replay = Replay::start(&config, "replay");
    replay.wait_held(&table, 1);
    let (msgs, good_a, bad_a) = traffic(100_000);
    publisher.publish_all_confirmed(msgs, 1);
    let new_rows_sql = format!("SELECT COUNT(*) FROM {t} WHERE id >= 100000");
    wait_for_count(&mut bridge, &db, &new_rows_sql, good_a.len() as i64);
    let new_letters = || -> Vec<Json> {
        let letters = dlq_list(&config).into_iter();
        letters.filter(|l| id_of(l) > last_original).collect()
    };
    wait_for(&mut bridge, "the new dead letters", || {
        let new = new_letters().len() as i64;
        if new > bad_a {
            return Err(format!("{new} new dead letters, expected {bad_a}"));
        }
        Ok(new == bad_a)
    });
    release(blocker);
    let (msgs, good_b, bad_b) = traffic(100_300);
    publisher.publish_all_confirmed(msgs, 1);
    let (ran, s) = replay.finish();

    // Then every replayable entry was replayed exactly once, and only those succeeded
    let new_rows = [good_a, good_b].concat();
    wait_for_count(&mut bridge, &db, &new_rows_sql, new_rows.len() as i64);
    let bad_total = (bad_a + bad_b) as usize;
    wait_for(&mut bridge, "every new dead letter stored", || {
        Ok(new_letters().len() == bad_total)
    });
    // (the words match what happened: what was selected at the start, each counted once;
    // the entries the bridge stored meanwhile wait for the next replay)
    let selected = letters.len() as u64;
    assert_eq!((s.total, s.replayed), (selected, n as u64), "{ran}");
    let only = "the undecodable originals failed again, and nothing stored after the start";
    assert_eq!(s.failures(), hopeless_count as u64, "{only}: {ran}");
    assert!(s.adds_up(), "{ran}");
    let expected = s.failed.keys().all(|k| k == "decode" || k == "rejected");
    assert!(expected, "only undecodable and new entries fail: {ran}");
    assert_eq!(ran.code, Some(1), "{ran}");
    // (each original row once, no duplicate, beside the bridge's new ones)
    let mut rows = [replayable.values().copied().collect(), new_rows].concat();
    rows.sort_unstable();
    assert_eq!(row_ids(&table), rows, "{ran}");
    let sum = (1..=n).map(|id| 1_000_000 + id).sum::<i64>();
    assert_eq!(sum_v(&table, &format!("id <= {n}")), sum);
    // And nothing is lost: the queue holds exactly the undecodable originals and the new bad
    // messages, each once, the ones the replay tried with one more attempt; no replayed
    // original and no duplicate insert
    let left = dlq_list(&config);
    assert_eq!(left.len(), hopeless_count + bad_total, "{left:#?}");
    let mut payloads = BTreeSet::new();
    for l in &left {
        let (id, new) = (id_of(l), id_of(l) > last_original);
        let hopeless = hopeless.contains(&id);
        assert!(new || hopeless, "a replayed original is still queued: {l}");
        assert!(payloads.insert(text(l, "payload").to_owned()), "twice: {l}");
        match text(l, "error_kind") {
            "decode" => {}
            "rejected" => assert_eq!(l["sqlstate"], "23502", "{l}"),
            other => panic!("unexpected kind {other}: {l}"),
        }
        // (stored after the replay began: left for the next one; undecodable: tried again)
        assert_eq!(l["attempts"], if new { 1 } else { 2 }, "{l}");
    }
    let kept: BTreeSet<i64> = left.iter().map(id_of).collect();
    let lost = !hopeless.is_subset(&kept);
    assert!(!lost, "an undecodable original was lost; {ran}");
    let retried = left.iter().filter(|l| l["attempts"] == 2).count() as u64;
    let failed_again = "each entry the replay failed again is still queued with 2 attempts";
    assert_eq!(retried, s.failures(), "{failed_again}; {ran}");
    terminate_ok(&mut bridge);
}

#[test]
fn two_concurrent_replays_replay_each_entry_exactly_once() {
    let dir = common::temp_dir("dlq-ops-stores");
    for store in StateStore::each_in(dir.path()) {
        two_concurrent_replays_on(store);
    }
}

fn two_concurrent_replays_on(store: StateStore) {
    // Given 3000 dead letters whose table accepts them now, in `store`
    let n: i64 = 3000;
    let q = Replayable::on(n, Some(store));

    // When two replays of all of them start at once, and both are held in the middle of a
    // batch (a row held in every batch of 500, whichever batches each replay claims: a
    // replay claims its next batch while it writes one), then let go
    let holds: Vec<Blocker> = (0..6).map(|k| q.hold(250 + 500 * k)).collect();
    let mut b = Replay::start(&q.config, "replay_b");
    let mut a = q.replay_held("replay_a", 2);
    holds.into_iter().for_each(release);
    let ((ran_a, sa), (ran_b, sb)) = (a.finish(), b.finish());
    let ctx = format!("A:\n{ran_a}\nB:\n{ran_b}");

    // Then between them every entry was replayed once, none failed
    assert_eq!((sa.failures(), sb.failures()), (0, 0), "{ctx}");
    assert!(sa.replayed > 0 && sb.replayed > 0, "both worked: {ctx}");
    assert_eq!(sa.replayed + sb.replayed, n as u64, "{ctx}");
    // (each summary adds up; an exit 1 is fair only for the entries the other replay held,
    // and says so, never "0 dead letters failed again")
    for (ran, s) in [(&ran_a, &sa), (&ran_b, &sb)] {
        let err = &ran.stderr;
        assert!(s.adds_up(), "{ctx}");
        match ran.code {
            Some(0) => assert_eq!(s.held, 0, "{ctx}"),
            Some(1) => assert!(s.held > 0 && err.contains("held by another"), "{ctx}"),
            other => panic!("exit {other:?}: {ctx}"),
        }
        assert!(!err.contains("failed again"), "{ctx}");
        let stopped = s.line.contains("interrupted") || s.line.contains("outage");
        assert!(!stopped, "{ctx}");
    }
    // And each is one row, with nothing left in the queue (no rejected duplicate)
    assert_eq!(dlq_list(&q.config), Vec::<Json>::new(), "{ctx}");
    assert_eq!(row_ids(&q.table), (1..=n).collect::<Vec<_>>());
    assert_eq!(sum_v(&q.table, "TRUE"), n * (n + 1) / 2);
}

#[test]
fn entries_purged_during_a_replay_are_reported_as_gone_not_held() {
    // Given 1200 dead letters whose table accepts them now
    let n: i64 = 1200;
    let q = Replayable::new(n);

    // When a replay of all of them waits in its first batch, and everything it has not
    // claimed is purged meanwhile
    let blocker = q.hold(250);
    let mut replay = q.replay_held("purged_under", 1);
    mqdb_at(&q.config, &["dlq", "purge", "--all", "--yes"]).code(0);
    release(blocker);
    let (ran, s) = replay.finish();

    // Then the purged entries are named as such, never as held by another replay, and the
    // summary adds up to the selection
    assert_eq!((s.total, s.held), (n as u64, 0), "{ran}");
    assert!(s.adds_up(), "{ran}");
    assert!(s.gone > 0, "{ran}");
    assert_eq!(s.replayed as i64, q.table.count(), "{ran}");
    assert_eq!(ran.code, Some(0), "{ran}");
    assert_eq!(dlq_list(&q.config), Vec::<Json>::new(), "{ran}");
}

#[test]
fn replay_after_a_killed_replay_reports_success_only_when_the_queue_is_done() {
    // Given 2000 dead letters whose table accepts them now
    let n: i64 = 2000;
    let q = Replayable::new(n);
    let originals = q.originals();

    // When a replay is killed (SIGKILL) in the middle of its second batch
    let blocker = q.hold(750);
    let mut replay = q.replay_held("killed", 1);
    // (once its committed batches are settled: a kill between a commit and its deletion
    // may leave an entry to be replayed twice, as the README says)
    let settled = || dlq_list(&q.config).len() as i64 + q.table.count() == n;
    common::wait_until("the committed batches settled", LIVENESS, settled);
    common::send_signal(replay.pid(), "KILL");
    assert_eq!(replay.exit().code(), None, "killed by the signal");
    release(blocker);

    // Then every entry is a row or still queued, never both, never neither
    let listed = dlq_list(&q.config);
    assert_one_place(&row_ids(&q.table), &listed, &originals, "after the kill");
    assert!(!listed.is_empty(), "the killed batch is still queued");

    // And a new replay either replays everything, or does not claim success
    let (ran, s) = Replay::start(&q.config, "again").finish();
    let left = dlq_list(&q.config);
    let ctx = format!("{ran}{} entries still queued", left.len());
    assert_eq!(s.failures(), 0, "{ctx}");
    if ran.code == Some(0) {
        assert_eq!(left.len(), 0, "exit 0 while entries remain: {ctx}");
        assert_eq!(q.table.count(), n, "{ctx}");
    } else {
        assert_eq!(ran.code, Some(1), "{ctx}");
    }
    assert_one_place(&row_ids(&q.table), &left, &originals, &ctx);
}

#[test]
fn mirror_config_errors_exit_2_naming_the_line() {
    let work = Workdir::new("dlq-ops");
    let head = work
        .bare_config()
        .broker("b", "mqtt://127.0.0.1:1883", Json::Null);
    let head = head.broker("r", Rabbit::URL, Json::Null);
    let head = head.database("d", &Db::Postgres.connection_string());
    let route = ["broker: b", "topic: a/b", "database: d", "table: t"];
    let head = head.inbound(Route::named("i").lines(&route));
    let base = head.yaml().lines().count();
    // Each: the `publish:` settings, the lines one of which the error names, what it names
    let fails_at = |publish: Json, lines: &[usize], needle: &str| {
        let path = work.path(&format!("{}.yaml", unique("bad")));
        let config = head
            .clone()
            .set("dead_letter", json!({ "publish": publish }));
        config.write_to(&path);
        let ran = mqdb_at(&path, &["check"]);
        let ctx = format!("{}\n---\n{ran}", config.yaml());
        assert_eq!(ran.code, Some(2), "{ctx}");
        let at = |l: &usize| ran.stderr.contains(&format!("{}:{l}:", path.display()));
        assert!(lines.iter().any(at), "not at line {lines:?}: {ctx}");
        assert!(ran.stderr.contains(needle), "{ctx}");
    };
    // A template field a dead letter does not have (MQTT topic)
    let publish = json!({ "broker": "b", "topic": "mqdb/dead/{topic}" });
    fails_at(publish, &[base + 4], "{topic}");
    // … and in an AMQP routing key
    let key = "{route}.{payload}";
    let publish = json!({ "broker": "r", "exchange": "x", "routing_key": key });
    fails_at(publish, &[base + 5], "{payload}");
    // A topic on an AMQP broker
    let publish = json!({ "broker": "r", "topic": "mqdb/dead/{route}" });
    fails_at(publish, &[base + 2, base + 3, base + 4], "topic");
}
