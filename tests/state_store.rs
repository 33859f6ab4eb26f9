//! The state store out of reach while messages and rows arrive, with each kind of store and
//! each database.
//!
//! A SQLite store lives on a 2 MiB tmpfs of its own, and a filler file takes the rest of its
//! space; a PostgreSQL store is reached through a proxy, and the proxy cuts every connection
//! and refuses new ones. Whatever could not be stored meanwhile must be stored once the
//! store is back: no dead letter acknowledged and lost, no position believed stored when it
//! is not, and `dlq` commands from another process must work beside the running bridge
//! afterwards.

mod common;

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Bridge, Config, Db, Publisher, Route, StateStore, Subscriber, TcpProxy, TempTable, World,
    dlq_list, letter_id, mqdb_at, temp_sqlite, unique, wait_for,
};
use serde_json::{Value as Json, json};

/// A 2 MiB tmpfs for the state store, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> SmallDisk {
        let dir = common::temp_dir("small-disk");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallDisk { dir }
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join("filler")
    }

    /// Takes every free byte with a filler file.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler()).expect("create the filler");
        while file.write_all(&[0u8; 4096]).is_ok() {}
        let _ = file.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a bridge a failed test left running may still hold the state file.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// What takes a state store out of reach, and gives it back.
trait Outage {
    /// From now on nothing can be stored.
    fn begin(&self);
    fn end(&self);
    /// The `state:` setting of `store` that this outage reaches.
    fn state_url(&self, store: &StateStore) -> String;
}

/// A file store: its disk is full.
impl Outage for SmallDisk {
    fn begin(&self) {
        self.fill();
    }

    fn end(&self) {
        self.free();
    }

    fn state_url(&self, store: &StateStore) -> String {
        store.url()
    }
}

/// A server store: the network to it is cut, every open connection closed and new ones
/// refused.
struct Cut {
    proxy: TcpProxy,
}

impl Outage for Cut {
    fn begin(&self) {
        self.proxy.set_down(true);
    }

    fn end(&self) {
        self.proxy.set_down(false);
    }

    fn state_url(&self, store: &StateStore) -> String {
        store.url_via(self.proxy.port)
    }
}

/// Runs `test` once for each kind of state store: a file store on a small disk of its own
/// that fills up, a server store behind a proxy that cuts it off.
fn on_each_store(test: impl Fn(&dyn Outage, World)) {
    for kind in 0..StateStore::each_in(Path::new("")).len() {
        let disk = SmallDisk::mount();
        let store = StateStore::each_in(disk.dir.path()).swap_remove(kind);
        eprintln!("state store: {}", store.url());
        let world = World::new("state-store").on_store(store);
        if world.store.is_file() {
            test(&disk, world);
        } else {
            let proxy = TcpProxy::start(([127, 0, 0, 1], 5432).into());
            test(&Cut { proxy }, world);
        }
    }
}

/// `world`'s config with database `db` and the state store as `outage` reaches it.
fn config(world: &World, outage: &dyn Outage, db: &Db) -> Config {
    world.config(db).state(&outage.state_url(&world.store))
}

/// Failed writes to wait for while the store is out of reach: a single one can be followed
/// by a success that only looked like one.
const FAILURES: usize = 5;
const STORE_FAILED: &str = "cannot store dead letters";
const POSITION_FAILED: &str = "cannot store the position";

fn log_count(bridge: &Bridge, needle: &str) -> usize {
    bridge.log().matches(needle).count()
}

/// Waits until the log holds `needle` [`FAILURES`] times more than `before`.
fn wait_for_failures(bridge: &mut Bridge, needle: &str, before: usize) {
    wait_for_failures_while(bridge, needle, before, || {});
}

/// [`wait_for_failures`], calling `meanwhile` about once a second while it waits.
fn wait_for_failures_while(
    bridge: &mut Bridge,
    needle: &str,
    before: usize,
    mut meanwhile: impl FnMut(),
) {
    let what = format!("{FAILURES} more {needle:?} in the log");
    let log = bridge.log_path.clone();
    let mut checks = 0;
    wait_for(bridge, &what, || {
        if checks % 10 == 0 {
            meanwhile();
        }
        checks += 1;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(text.matches(needle).count() >= before + FAILURES)
    });
}

fn payload_text(letter: &Json) -> &str {
    let text = letter["payload"].as_str();
    text.unwrap_or_else(|| panic!("no text payload: {letter}"))
}

/// The number after `n=` in a dead letter's payload: which published message it is.
fn marker(letter: &Json) -> u64 {
    let text = payload_text(letter);
    let after = text.split_once("n=").map(|(_, rest)| rest).unwrap_or("");
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no marker: {letter}"))
}

/// The markers of every stored dead letter, and how many letters there are.
fn stored_markers(config: &Path) -> (BTreeSet<u64>, usize) {
    let letters = dlq_list(config);
    (letters.iter().map(marker).collect(), letters.len())
}

/// Message `n`: every other one is not JSON (a decode dead letter, with a large payload so
/// that storing it needs new pages), the rest collide with the table's row 0 (a dead letter
/// the database rejects).
fn publish_bad(publisher: &Publisher, topic: &str, range: Range<u64>) {
    for n in range {
        let payload = if n.is_multiple_of(2) {
            format!("not json n={n} {}", "x".repeat(8 * 1024))
        } else {
            format!("{{\"id\": 0, \"v\": \"n={n}\"}}")
        };
        publisher.publish(topic, 1, payload);
    }
    publisher.wait_confirmed();
}

/// Waits until the stored dead letters carry exactly the markers in `want`, each once.
fn wait_for_exactly(bridge: &mut Bridge, config: &Path, want: Range<u64>) {
    let want: BTreeSet<u64> = want.collect();
    wait_for(bridge, &format!("{} dead letters", want.len()), || {
        let (markers, count) = stored_markers(config);
        if !markers.is_subset(&want) || count > want.len() {
            return Err(format!(
                "{count} letters with markers {markers:?}, expected each of {want:?} once"
            ));
        }
        Ok(markers == want)
    });
}

fn no_dead_letter_is_lost_while_the_store_is_out_of_reach(db: &Db) {
    on_each_store(|outage, world| {
        // Given a bridge whose state store can be taken out of reach, an inbound route into
        // a table that holds row 0, and the dead-letter mirror on the same broker
        let table = TempTable::create(db, "full_in", "id INTEGER PRIMARY KEY, v VARCHAR(50)");
        db.exec(&format!("INSERT INTO {} VALUES (0, 'zero')", table.name));
        let (topic, mirror_topic) = (unique("full_in"), unique("full_mirror"));
        let mirror_to =
            json!({ "broker": "b", "topic": format!("{mirror_topic}/{{route}}"), "qos": 1 });
        let config = config(&world, outage, db)
            .inbound(
                Route::inbound("full_in", &topic, &table.name)
                    .columns(&[("id", "payload.id"), ("v", "payload.v")])
                    .batch(20, "50ms"),
            )
            .set("dead_letter", json!({ "publish": mirror_to }))
            .write();
        let mirror = world.subscribe(&format!("{mirror_topic}/#"));
        let mut bridge = Bridge::start(&config);
        bridge.wait_for_log("mirroring dead letters", common::LIVENESS);
        let publisher = world.publisher();
        publish_bad(&publisher, &topic, 0..10);
        wait_for_exactly(&mut bridge, &config, 0..10);

        // When the store is out of reach while more bad messages arrive, and is back again
        outage.begin();
        publish_bad(&publisher, &topic, 10..70);
        wait_for_failures(&mut bridge, STORE_FAILED, 0);
        outage.end();

        // Then every one of them is stored, once, without a restart
        wait_for_exactly(&mut bridge, &config, 0..70);

        // When the store goes out of reach again while bad messages are being stored, and
        // the bridge is killed while it cannot store
        let failures = log_count(&bridge, STORE_FAILED);
        publish_bad(&publisher, &topic, 70..100);
        outage.begin();
        publish_bad(&publisher, &topic, 100..130);
        wait_for_failures(&mut bridge, STORE_FAILED, failures);
        bridge.kill();
        outage.end();

        // Then the broker still held what was not stored: after a restart, all are there (a
        // letter stored just before the kill may come twice: at-least-once)
        let mut bridge = Bridge::start(&config);
        wait_for(&mut bridge, "130 distinct dead letters", || {
            let (markers, count) = stored_markers(&config);
            Ok(markers == (0..130).collect() && count >= 130)
        });

        // And the mirror copied each stored letter, and its stored position reached the last
        let (_, count) = stored_markers(&config);
        let ids: BTreeSet<i64> = dlq_list(&config).iter().map(letter_id).collect();
        wait_for(&mut bridge, "every dead letter mirrored", || {
            let mirrored: BTreeSet<i64> = json_messages(&mirror)
                .filter_map(|l| l["id"].as_i64())
                .collect();
            Ok(ids.is_subset(&mirrored))
        });
        let last = ids.last().expect("letters").to_string();
        wait_for(&mut bridge, "the mirror position stored", || {
            let sql = "SELECT last_id FROM mirror_position";
            let rows = world.store.reader().try_query(sql)?;
            Ok(rows.iter().any(|r| r[0].as_deref() == Some(&*last)))
        });

        // And another process can purge beside the running bridge
        mqdb_at(&config, &["dlq", "purge", "--all", "--yes"]).code(0);
        assert!(dlq_list(&config).is_empty(), "{count} letters were purged");
        assert_eq!(table.count(), 1, "no bad message became a row");
        bridge.terminate();
    });
}

/// Inserts rows `range`; a row whose id is a multiple of 5 has a `v` that cannot be a topic
/// level, so it becomes a dead letter.
fn insert_rows(db: &Db, table: &str, range: std::ops::RangeInclusive<u64>) {
    let value = |id: u64| {
        let v = if id.is_multiple_of(5) { "bad+" } else { "ok" };
        format!("({id}, '{v}')")
    };
    let values: Vec<String> = range.map(value).collect();
    let values = values.join(", ");
    db.exec(&format!("INSERT INTO {table} (id, v) VALUES {values}"));
}

/// The payloads of `subscriber`'s messages that are JSON.
fn json_messages(subscriber: &Subscriber) -> impl Iterator<Item = Json> {
    let messages = subscriber.messages().into_iter();
    messages.filter_map(|m| serde_json::from_str(m.payload_str()).ok())
}

/// The `id` of a row published as JSON, a number or a text.
fn row_id(row: Json) -> Option<u64> {
    let id = &row["id"];
    id.as_u64().or_else(|| id.as_str()?.parse().ok())
}

/// Waits until rows `1..=last` were each published or dead-lettered and the stored position
/// of route `r`, as another process reads it, is `last`.
fn wait_for_caught_up(bridge: &mut Bridge, world: &World, subscriber: &Subscriber, last: u64) {
    let want_position = format!("[\"{last}\"]");
    let config = world.path("mqdb.yaml");
    let position_sql = "SELECT position FROM positions WHERE route = 'r'";
    wait_for(bridge, &format!("rows 1..={last} out and stored"), || {
        let published: BTreeSet<u64> = json_messages(subscriber).filter_map(row_id).collect();
        let dead: BTreeSet<u64> = dlq_list(&config)
            .iter()
            .filter_map(|l| serde_json::from_str(payload_text(l)).ok())
            .filter_map(row_id)
            .collect();
        if let Some(bad) = published.iter().find(|id| id.is_multiple_of(5)) {
            return Err(format!("row {bad} was published; its topic is invalid"));
        }
        if let Some(good) = dead.iter().find(|id| !id.is_multiple_of(5)) {
            return Err(format!("row {good} was dead-lettered"));
        }
        let all: BTreeSet<u64> = published.union(&dead).copied().collect();
        let rows = world.store.reader().try_query(position_sql)?;
        let position = rows.first().and_then(|r| r[0].clone());
        Ok(all == (1..=last).collect() && position.as_deref() == Some(&*want_position))
    });
}

fn the_outbound_position_waits_for_the_store(db: &Db) {
    on_each_store(|outage, world| {
        // Given an outbound route whose state store can be taken out of reach
        let table = TempTable::create(db, "full_out", "id INTEGER PRIMARY KEY, v VARCHAR(50)");
        let topic = unique("full_out");
        let query = format!("SELECT id, v FROM {} WHERE id > ? ORDER BY id", table.name);
        let route = Route::outbound("r", &query)
            .track("id", 0)
            .interval("100ms")
            .broker("b")
            .topic(&format!("{topic}/{{v}}"))
            .qos(1)
            .format("json");
        // A lease that outlasts the outage: a holder that stepped down would stop trying to
        // store, and the failures this test waits for would never come.
        let config = config(&world, outage, db)
            .set("lease", "1h")
            .outbound(route)
            .write();
        let subscriber = world.subscribe(&format!("{topic}/#"));
        let mut bridge = Bridge::start(&config);
        insert_rows(db, &table.name, 1..=10);
        wait_for_caught_up(&mut bridge, &world, &subscriber, 10);

        // When the store goes out of reach while rows (good ones and dead letters) are being
        // published, and more keep coming: a full disk can still take a write now and then,
        // and a route with nothing left to store would stop failing.
        insert_rows(db, &table.name, 11..=20);
        outage.begin();
        let mut next = 21;
        wait_for_failures_while(&mut bridge, POSITION_FAILED, 0, || {
            insert_rows(db, &table.name, next..=next + 9);
            next += 10;
        });
        let last: u64 = table.count().try_into().expect("a row count");

        // Then once the store is back, every row is out or dead-lettered and the stored
        // position is the last row
        outage.end();
        wait_for_caught_up(&mut bridge, &world, &subscriber, last);

        // And after a restart nothing is skipped: new rows follow from the stored position
        bridge.terminate();
        let mut bridge = Bridge::start(&config);
        insert_rows(db, &table.name, last + 1..=last + 10);
        wait_for_caught_up(&mut bridge, &world, &subscriber, last + 10);
        bridge.terminate();
    });
}

common::cases! {
    no_dead_letter_is_lost_while_the_store_is_out_of_reach_postgres:
        no_dead_letter_is_lost_while_the_store_is_out_of_reach(&Db::Postgres);
    no_dead_letter_is_lost_while_the_store_is_out_of_reach_mariadb:
        no_dead_letter_is_lost_while_the_store_is_out_of_reach(&Db::MariaDb);
    no_dead_letter_is_lost_while_the_store_is_out_of_reach_sqlite:
        no_dead_letter_is_lost_while_the_store_is_out_of_reach(&temp_sqlite());
    the_outbound_position_waits_for_the_store_postgres:
        the_outbound_position_waits_for_the_store(&Db::Postgres);
    the_outbound_position_waits_for_the_store_mariadb:
        the_outbound_position_waits_for_the_store(&Db::MariaDb);
    the_outbound_position_waits_for_the_store_sqlite:
        the_outbound_position_waits_for_the_store(&temp_sqlite());
}
