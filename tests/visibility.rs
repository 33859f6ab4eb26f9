//! `visibility: snapshot` on PostgreSQL (SPEC §5): rows whose transactions commit out of id
//! order are all published, while a route without it, fed the same commits, skips some.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    Bridge, Db, Route, Subscriber, TempTable, World, line_of, mqdb_at, terminate_ok, unique,
    wait_for,
};
use odbc_api::Connection;
use serde_json::Value as Json;

const WRITERS: usize = 6;
const ROUNDS: usize = 20;
/// Transactions per writer and round.
const TRANSACTIONS: usize = 4;
/// The longest a writer keeps its transaction open after taking its ids.
const MAX_HOLD_MS: u64 = 250;

/// Two tables filled by the same transactions: each writer transaction takes an id from
/// each table's sequence, then holds both rows uncommitted for a random time.
struct Tables {
    snapshot: TempTable,
    plain: TempTable,
}

impl Tables {
    fn create() -> Tables {
        let columns = "id BIGSERIAL PRIMARY KEY, round INTEGER NOT NULL, writer INTEGER NOT NULL";
        Tables {
            snapshot: TempTable::create(&Db::Postgres, "vis_snapshot", columns),
            plain: TempTable::create(&Db::Postgres, "vis_plain", columns),
        }
    }

    fn insert(&self, conn: &Connection<'_>, round: usize, writer: i64) {
        for t in [&self.snapshot.name, &self.plain.name] {
            let sql = format!("INSERT INTO {t} (round, writer) VALUES ({round}, {writer})");
            conn.execute(&sql, (), None)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    /// One round of `WRITERS` concurrent writers, each committing `TRANSACTIONS`
    /// transactions held open 0–250 ms, then one row committed after all of them.
    fn round(&self, round: usize) {
        std::thread::scope(|s| {
            for writer in 0..WRITERS {
                s.spawn(move || {
                    let conn = Db::Postgres.connect();
                    conn.set_autocommit(false).expect("autocommit off");
                    let mut random = Random::seeded(round * WRITERS + writer);
                    for _ in 0..TRANSACTIONS {
                        self.insert(&conn, round, writer as i64);
                        std::thread::sleep(Duration::from_millis(random.below(MAX_HOLD_MS + 1)));
                        conn.commit().expect("commit");
                    }
                });
            }
        });
        let last = Db::Postgres.connect();
        self.insert(&last, round, -1);
    }

    /// Every id in `table` so far, and the id of the latest row committed after all others.
    fn ids(table: &TempTable) -> (BTreeSet<i64>, i64) {
        let rows = Db::Postgres.query(&format!(
            "SELECT id, writer FROM {} ORDER BY id",
            table.name
        ));
        let id = |row: &Vec<Option<String>>| -> i64 {
            row[0]
                .as_deref()
                .expect("id")
                .parse()
                .expect("an integer id")
        };
        let last = rows
            .iter()
            .rfind(|r| r[1].as_deref() == Some("-1"))
            .map(id)
            .expect("a last row");
        (rows.iter().map(id).collect(), last)
    }
}

/// xorshift64*, seeded per writer and round so a failing round can be told apart.
struct Random(u64);

impl Random {
    fn seeded(seed: usize) -> Random {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Random((time ^ (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// The ids published on `topic`, each as often as it arrived.
fn published(sub: &Subscriber, topic: &str) -> Vec<i64> {
    let messages = sub.messages();
    let on_topic = messages.iter().filter(|m| m.topic == topic);
    let id = |payload: &[u8]| -> i64 {
        let row: Json = serde_json::from_slice(payload).expect("a JSON object");
        row["id"].as_i64().expect("an integer id")
    };
    on_topic.map(|m| id(&m.payload)).collect()
}

/// A route polling `table` by `id` every 50 ms without `delay`, to `topic`.
fn route(name: &str, table: &str, topic: &str) -> Route {
    let query = format!("SELECT id, round, writer FROM {table} WHERE id > ? ORDER BY id");
    let route = Route::outbound(name, &query)
        .interval("50ms")
        .track("id", 0);
    route.broker("b").topic(topic)
}

#[test]
fn snapshot_visibility_publishes_every_row_committed_out_of_order() {
    // Given two routes fed by the same out-of-order commits, one with `visibility: snapshot`
    let tables = Tables::create();
    let world = World::new("visibility");
    let root = unique("visibility");
    let (snap_topic, plain_topic) = (format!("{root}/snapshot"), format!("{root}/plain"));
    let snapshot =
        route("snapshot", &tables.snapshot.name, &snap_topic).set("visibility", "snapshot");
    let plain = route("plain", &tables.plain.name, &plain_topic);
    let config = world
        .config(&Db::Postgres)
        .outbound(snapshot)
        .outbound(plain);
    let config = config.write();
    let sub = world.subscribe(&format!("{root}/#"));
    let mut bridge = Bridge::start(&config);

    let mut skipped_rounds = 0;
    // Skipped rows never come later: the count only grows.
    let mut skipped_rows = 0;
    for round in 0..ROUNDS {
        // When six writers commit transactions held open up to 250 ms, then one more row
        tables.round(round);
        let (snapshot_ids, snapshot_last) = Tables::ids(&tables.snapshot);
        let (plain_ids, plain_last) = Tables::ids(&tables.plain);
        wait_for(
            &mut bridge,
            "the last row of the round on both routes",
            || {
                Ok(published(&sub, &snap_topic).contains(&snapshot_last)
                    && published(&sub, &plain_topic).contains(&plain_last))
            },
        );

        // Then the snapshot route published every committed id, once
        let got = published(&sub, &snap_topic);
        let once: BTreeSet<i64> = got.iter().copied().collect();
        let missing: Vec<&i64> = snapshot_ids.difference(&once).collect();
        assert!(
            missing.is_empty(),
            "round {round}: the snapshot route skipped {missing:?}"
        );
        assert_eq!(once, snapshot_ids, "round {round}: only committed ids");
        assert_eq!(got.len(), once.len(), "round {round}: each id once");

        // And the plain route, past the same last row, may have skipped some more
        let plain_got: BTreeSet<i64> = published(&sub, &plain_topic).into_iter().collect();
        let skipped = plain_ids.difference(&plain_got).count();
        skipped_rounds += usize::from(skipped > skipped_rows);
        skipped_rows = skipped;
    }
    eprintln!(
        "without visibility: snapshot, {skipped_rows} of {} rows skipped, in {skipped_rounds} of {ROUNDS} rounds",
        ROUNDS * (WRITERS * TRANSACTIONS + 1)
    );
    assert!(
        skipped_rounds > 0,
        "the workload never committed out of order: this test could not fail"
    );
    terminate_ok(&mut bridge);
}

#[test]
fn snapshot_visibility_on_a_database_found_not_to_be_postgres_fails_check_and_stops_run() {
    // Given a MariaDB table reached through its driver's file name, which names no
    // database family, so only connecting tells
    let table = TempTable::create(&Db::MariaDb, "vis_other", "id INTEGER PRIMARY KEY");
    let world = World::new("visibility_other");
    let cs = "Driver=libmaodbc.so;Server=127.0.0.1;Port=3306;Database=test;Uid=root;Pwd=;";
    let query = format!("SELECT id FROM {} WHERE id > ? ORDER BY id", table.name);
    let route = Route::outbound("other", &query)
        .track("id", 0)
        .interval("50ms");
    let route = route.set("visibility", "snapshot").broker("b").topic("t");
    let config = world.config_cs(cs).outbound(route).write();

    // Then `check` fails the route, naming the setting
    let checked = mqdb_at(&config, &["check"]);
    checked.code(1);
    checked.fails("outbound other", &["visibility: snapshot needs PostgreSQL"]);

    // And `run` stops with a configuration error naming its line
    let line = line_of(&std::fs::read_to_string(&config).unwrap(), "visibility:");
    let dir = config.parent().expect("the config's directory");
    let args = ["-c", common::path_str(&config), "run"];
    let ran = common::mqdb_bounded(&args, dir, common::LIVENESS);
    ran.code(2);
    ran.stderr_has(&[&format!(
        "visibility: snapshot (line {line}) needs PostgreSQL"
    )]);
}

/// `mqdb_outbound_visibility_wait_seconds` of route `route` in a `/metrics` text.
fn visibility_wait(metrics: &str, route: &str) -> Option<f64> {
    let series = format!("mqdb_outbound_visibility_wait_seconds{{route=\"{route}\"");
    let line = metrics.lines().find(|l| l.starts_with(&series))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[test]
fn a_session_idle_in_a_transaction_holds_the_route_back_and_is_named() {
    // Given a session idle in a transaction on the route's database, and then a row
    let columns = "id BIGSERIAL PRIMARY KEY, round INTEGER NOT NULL, writer INTEGER NOT NULL";
    let table = TempTable::create(&Db::Postgres, "vis_idle", columns);
    let world = World::new("visibility_idle");
    let topic = unique("visibility_idle");
    let addr = format!("127.0.0.1:{}", common::free_port());
    let route = route("idle", &table.name, &topic).set("visibility", "snapshot");
    let config = world.config(&Db::Postgres).outbound(route);
    let config = config
        .set("http", serde_json::json!({ "listen": addr }))
        .write();
    let sub = world.subscribe(&topic);
    let idle = Db::Postgres.connect();
    idle.set_autocommit(false).expect("autocommit off");
    let pid = common::odbc_query(&idle, "SELECT pg_backend_pid()").unwrap()[0][0]
        .clone()
        .expect("a pid");
    let insert = format!("INSERT INTO {} (round, writer) VALUES (0, 0)", table.name);
    Db::Postgres.exec(&insert);
    let mut bridge = Bridge::start(&config);

    // When the route has waited for it for a while
    let scrape = || common::http::try_get(&addr, "/metrics").map(|(_, body)| body);
    wait_for(&mut bridge, "a wait of over 10 s on the gauge", || {
        Ok(scrape().and_then(|m| visibility_wait(&m, "idle")) > Some(10.0))
    });
    bridge.wait_for_log("idle_in_transaction_session_timeout", common::LIVENESS);

    // Then the row is still held back, and the log names the idle session
    assert_eq!(
        sub.count(),
        0,
        "published while a transaction that may add a row ran"
    );
    let log = bridge.log();
    let warning = log
        .lines()
        .find(|l| l.contains("idle_in_transaction_session_timeout"))
        .expect("the warning");
    assert!(warning.contains(&pid), "pid {pid} not named: {warning}");

    // And once the session ends its transaction the row goes out, and the wait is over
    idle.rollback().expect("rollback");
    let messages = sub.wait_for(1, common::LIVENESS);
    assert_eq!(published(&sub, &topic), [1], "{messages:?}");
    wait_for(&mut bridge, "the gauge back at 0", || {
        Ok(scrape().and_then(|m| visibility_wait(&m, "idle")) == Some(0.0))
    });
    terminate_ok(&mut bridge);
}
