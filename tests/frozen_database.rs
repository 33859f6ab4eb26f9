//! A database path that goes silent (packets dropped, nothing closed), through a relay that
//! stops forwarding: mqdb notices within about its `query_timeout` / `connect_timeout`,
//! says so in the log and in `mqdb check`, treats it as an outage (nothing acknowledged,
//! nothing dead-lettered) and resumes by itself once the path answers again.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Bridge, Db, Route, TcpProxy, TempTable, World, dlq_list, lock_holder, mqdb_bounded, pairs,
    path_str, pg_lock_waiters, scalar, seq_messages, terminate_ok, try_scalar, unique, wait_for,
    wait_for_count,
};
use serde_json::{Value as Json, json};

const SEQ_COLUMNS: &str = "seq INTEGER PRIMARY KEY, part VARCHAR(10) NOT NULL";

/// Generous: a hang detector, never a speed check.
const SLACK: Duration = Duration::from_secs(20);

/// One test's bridge set-up: a relay to `db`, a table keyed on the sequence, and a config
/// whose database (named after the server) is reached through the relay.
struct Frozen {
    db: Db,
    world: World,
    proxy: TcpProxy,
    table: TempTable,
    topic: String,
    name: &'static str,
    config: std::path::PathBuf,
}

impl Frozen {
    fn new(db: Db, port: u16, timeouts: Json) -> Frozen {
        let world = World::new("frozen");
        let proxy = TcpProxy::start(([127, 0, 0, 1], port).into());
        let table = TempTable::create(&db, "frozen", SEQ_COLUMNS);
        let topic = format!("{}/{{part}}", unique("frozen"));
        let name = match db {
            Db::Postgres => "pg_frozen",
            _ => "maria_frozen",
        };
        let mut database = json!({ "connection_string": db.connection_string_via(proxy.port) });
        if let (Json::Object(d), Json::Object(t)) = (&mut database, timeouts) {
            d.extend(t);
        }
        let route = Route::inbound("frozen", &topic, &table.name)
            .set("database", name)
            .columns(&pairs("seq=payload.seq part=topic.part"))
            .lines(&["batch: { max_rows: 50, max_delay: 50ms }"])
            .lines(&["on_conflict: ignore", "key: [seq]"]);
        let config = world
            .config(&db)
            .set("databases", json!({ name: database }))
            .inbound(route)
            .write();
        world.persistent_session(&topic.replace("{part}", "+"));
        Frozen {
            db,
            world,
            proxy,
            table,
            topic,
            name,
            config,
        }
    }

    fn publish(&self, part: &str, seqs: std::ops::Range<i64>) {
        let topic = self.topic.replace("{part}", part);
        let messages = seq_messages(|_| topic.clone(), seqs);
        self.world.publisher().publish_all_confirmed(messages, 1);
    }

    fn count_sql(&self) -> String {
        format!("SELECT COUNT(*) FROM {}", self.table.name)
    }

    fn wait_rows(&self, bridge: &mut Bridge, n: i64) {
        let sql = self.count_sql();
        wait_for(bridge, &format!("{n} rows"), || {
            Ok(try_scalar(&self.db, &sql).unwrap_or(0) >= n)
        });
    }

    /// The relay's address as the log and `check` name it.
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    /// Waits for a log line saying that this database did not answer; returns it.
    fn wait_timeout_line(&self, bridge: &mut Bridge, within: Duration) -> String {
        let needle = format!("no answer from {}", self.endpoint());
        let started = Instant::now();
        loop {
            let log = bridge.log();
            if let Some(line) = log.lines().find(|l| l.contains(&needle)) {
                return line.to_string();
            }
            assert!(bridge.is_running(), "mqdb exited; log:\n{log}");
            assert!(
                started.elapsed() < within,
                "no {needle:?} in the log within {within:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every published seq is exactly one row, and nothing became a dead letter.
    fn assert_every_seq_once(&self, n: i64) {
        let t = &self.table.name;
        let count = |what: &str| scalar(&self.db, &format!("SELECT COUNT({what}) FROM {t}"));
        assert_eq!(count("*"), n);
        assert_eq!(count("DISTINCT seq"), n);
        assert_eq!(dlq_list(&self.config), Vec::<Json>::new());
    }
}

fn frozen_mid_statement_resumes(db: Db, port: u16) {
    // Given a bridge writing numbered messages through a relay with a 3 s query timeout,
    // whose batch with seq 150 waits on a row lock the test holds
    let f = Frozen::new(
        db,
        port,
        json!({ "query_timeout": "3s", "connect_timeout": "2s" }),
    );
    let t = f.table.name.clone();
    let holder = lock_holder(&f.db, &format!("INSERT INTO {t} VALUES (150, 'x')"));
    f.publish("first", 0..300);
    let mut bridge = Bridge::start(&f.config);
    let waiters = lock_waiters(&f.db, &t);
    wait_for(&mut bridge, "a batch waiting on the held row", || {
        Ok(try_scalar(&f.db, &waiters).unwrap_or(0) >= 1)
    });

    // When the relay freezes, and then the server finishes that statement: its answer
    // never reaches mqdb
    f.proxy.freeze(true);
    let frozen_at = Instant::now();
    drop(holder);
    f.publish("second", 300..600);

    // Then the log says, naming the database, that it did not answer in time
    let line = f.wait_timeout_line(&mut bridge, Duration::from_secs(3) + SLACK);
    eprintln!(
        "{}: freeze to timeout log line: {:.1?}",
        f.name,
        frozen_at.elapsed()
    );
    assert!(line.contains(f.name), "the line names the database: {line}");
    assert!(line.contains("timed out"), "{line}");
    let letters = dlq_list(&f.config);
    assert!(letters.is_empty(), "a timeout is an outage: {letters:#?}");

    // And once the path answers again, every message is one row, none dead-lettered
    f.proxy.freeze(false);
    wait_for_count(&mut bridge, &f.db, &f.count_sql(), 600);
    f.assert_every_seq_once(600);
    terminate_ok(&mut bridge);
}

/// How many sessions wait on a row lock in a statement that names `table`.
fn lock_waiters(db: &Db, table: &str) -> String {
    match db {
        Db::MariaDb => format!(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX \
             WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE '%{table}%'"
        ),
        _ => pg_lock_waiters(table),
    }
}

common::cases! {
    frozen_mid_statement_resumes_postgres: frozen_mid_statement_resumes(Db::Postgres, 5432);
    frozen_mid_statement_resumes_mariadb: frozen_mid_statement_resumes(Db::MariaDb, 3306);
}

fn frozen_during_connect_resumes(db: Db, port: u16) {
    // Given a relay that is frozen before mqdb starts, and messages waiting for it
    let f = Frozen::new(db, port, json!({ "connect_timeout": "2s" }));
    f.publish("first", 0..100);
    f.proxy.freeze(true);
    let frozen_at = Instant::now();
    let mut bridge = Bridge::start(&f.config);

    // Then the log says the connect timed out
    let line = f.wait_timeout_line(&mut bridge, Duration::from_secs(2) + SLACK);
    eprintln!(
        "{}: start to connect timeout log line: {:.1?}",
        f.name,
        frozen_at.elapsed()
    );
    assert!(line.contains("within 2s while connecting"), "{line}");
    assert!(line.contains(f.name), "the line names the database: {line}");
    assert_eq!(scalar(&f.db, &f.count_sql()), 0);

    // And once the path answers, the rows arrive
    f.proxy.freeze(false);
    wait_for_count(&mut bridge, &f.db, &f.count_sql(), 100);
    f.assert_every_seq_once(100);
    terminate_ok(&mut bridge);
}

common::cases! {
    frozen_during_connect_resumes_postgres: frozen_during_connect_resumes(Db::Postgres, 5432);
    frozen_during_connect_resumes_mariadb: frozen_during_connect_resumes(Db::MariaDb, 3306);
}

fn sigterm_while_frozen_acknowledges_only_commits(db: Db, port: u16) {
    // Given a bridge writing through a relay that freezes while batches are under way
    let f = Frozen::new(
        db,
        port,
        json!({ "query_timeout": "3s", "connect_timeout": "2s" }),
    );
    f.publish("first", 0..300);
    let mut bridge = Bridge::start(&f.config);
    f.wait_rows(&mut bridge, 50);
    f.proxy.freeze(true);
    f.publish("second", 300..600);
    std::thread::sleep(Duration::from_secs(1));

    // When mqdb gets SIGTERM while the database is silent, it exits 0 within its bound
    // (terminate fails the test after 30 s)
    let asked = Instant::now();
    terminate_ok(&mut bridge);
    eprintln!(
        "{}: SIGTERM to exit while frozen: {:.1?}",
        f.name,
        asked.elapsed()
    );
    let before = scalar(&f.db, &f.count_sql());

    // Then, restarted on a path that answers, every message is one row: nothing was
    // acknowledged that was not committed
    f.proxy.freeze(false);
    let mut bridge = Bridge::start(&f.config);
    wait_for_count(&mut bridge, &f.db, &f.count_sql(), 600);
    f.assert_every_seq_once(600);
    terminate_ok(&mut bridge);
    eprintln!("{}: rows when mqdb stopped: {before}", f.name);
}

common::cases! {
    sigterm_while_frozen_acknowledges_only_commits_postgres:
        sigterm_while_frozen_acknowledges_only_commits(Db::Postgres, 5432);
    sigterm_while_frozen_acknowledges_only_commits_mariadb:
        sigterm_while_frozen_acknowledges_only_commits(Db::MariaDb, 3306);
}

fn check_reports_a_frozen_database(db: Db, port: u16) {
    // Given a database behind a frozen relay
    let f = Frozen::new(db, port, json!({ "connect_timeout": "2s" }));
    f.proxy.freeze(true);

    // When `mqdb check` runs (bounded only to catch a hang)
    let config = path_str(&f.config);
    let dir = f.config.parent().unwrap_or(Path::new("."));
    let started = Instant::now();
    let ran = mqdb_bounded(
        &["-c", config, "check"],
        dir,
        Duration::from_secs(2) + SLACK,
    );
    eprintln!(
        "{}: check through a frozen relay: {:.1?}",
        f.name,
        started.elapsed()
    );

    // Then it fails, saying the database timed out and where it is
    ran.code(1);
    let line = ran.route_line("frozen").to_string();
    assert!(line.contains(&format!("database {}", f.name)), "{ran}");
    assert!(
        line.contains(&format!("no answer from {}", f.endpoint())),
        "{ran}"
    );
    assert!(line.contains("timed out"), "{ran}");
}

common::cases! {
    check_reports_a_frozen_database_postgres: check_reports_a_frozen_database(Db::Postgres, 5432);
    check_reports_a_frozen_database_mariadb: check_reports_a_frozen_database(Db::MariaDb, 3306);
}
