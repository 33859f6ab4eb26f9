//! The state store on a disk that fills up, against the real `mqdb` binary, a private
//! Mosquitto and each of PostgreSQL, MariaDB and SQLite (through ODBC).
//!
//! The state file lives on a 2 MiB tmpfs of its own; a filler file takes the rest of its
//! space while messages and rows arrive, and is removed again. Whatever could not be
//! stored meanwhile must be stored once space is free: no dead letter acknowledged and
//! lost, no position believed stored when it is not, and `dlq` commands from another
//! process must work beside the running bridge afterwards.
//!
//! Every test has its own temp dir (config, logs), its own tmpfs and broker, unique table
//! and topic names, and drops what it created. Waits are liveness deadlines only.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Bridge, Db, Publisher, Route, StateStore, Subscriber, TempTable, World, dlq_list, path_str,
    run_mqdb, unique, wait_for,
};
use serde_json::{Value as Json, json};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A 2 MiB tmpfs for the state file, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("mqdb-small-disk-")
            .tempdir()
            .expect("temp dir");
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
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
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

/// Runs `test` once for each kind of state store, the store on a small disk of its own.
fn on_each_store(test: impl Fn(&SmallDisk, StateStore)) {
    for kind in 0..StateStore::each_in(Path::new("")).len() {
        let disk = SmallDisk::mount();
        let store = StateStore::each_in(disk.dir.path()).swap_remove(kind);
        test(&disk, store);
    }
}

fn sqlite(dir: &Path) -> Db {
    Db::Sqlite(dir.join("route.db"))
}

/// How often `needle` appears in the bridge's log.
fn log_count(bridge: &Bridge, needle: &str) -> usize {
    bridge.log().matches(needle).count()
}

/// Failed writes to wait for while the disk is full: a single one can be followed by a
/// success that only looked like one.
const FAILURES: usize = 5;

/// Waits until the log holds `needle` [`FAILURES`] times more than `before`.
fn wait_for_failures(bridge: &mut Bridge, needle: &str, before: usize) {
    let what = format!("{FAILURES} more {needle:?} in the log");
    let log = bridge.log_path.clone();
    wait_for(bridge, &what, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(text.matches(needle).count() >= before + FAILURES)
    });
}

/// The number after `n=` in a text: which published message it is.
fn marker(text: &str) -> Option<u64> {
    let start = text.find("n=")? + 2;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn payload_text(letter: &Json) -> &str {
    letter["payload"]
        .as_str()
        .unwrap_or_else(|| panic!("no text payload: {letter}"))
}

/// The markers of every stored dead letter, and how many letters there are.
fn stored_markers(config: &Path) -> (BTreeSet<u64>, usize) {
    let letters = dlq_list(config);
    let markers = letters
        .iter()
        .map(|l| marker(payload_text(l)).unwrap_or_else(|| panic!("no marker: {l}")))
        .collect();
    (markers, letters.len())
}

/// Message `n`: every other one is not JSON (a decode dead letter, with a large payload so
/// that storing it needs new pages), the rest collide with the table's row 0 (a dead letter
/// the database rejects).
fn bad_message(n: u64) -> Vec<u8> {
    if n.is_multiple_of(2) {
        format!("not json n={n} {}", "x".repeat(8 * 1024)).into_bytes()
    } else {
        format!("{{\"id\": 0, \"v\": \"n={n}\"}}").into_bytes()
    }
}

fn publish_bad(publisher: &Publisher, topic: &str, range: std::ops::Range<u64>) {
    for n in range {
        publisher.publish(topic, 1, bad_message(n));
    }
    publisher.wait_confirmed();
}

/// Waits until the stored dead letters carry exactly the markers in `want`, each once.
fn wait_for_exactly(bridge: &mut Bridge, config: &Path, want: &BTreeSet<u64>) {
    wait_for(bridge, &format!("{} dead letters", want.len()), || {
        let (markers, count) = stored_markers(config);
        if !markers.is_subset(want) || count > want.len() {
            return Err(format!(
                "{count} letters with markers {markers:?}, expected each of {want:?} once"
            ));
        }
        Ok(markers == *want)
    });
}

fn range_set(range: std::ops::Range<u64>) -> BTreeSet<u64> {
    range.collect()
}

const STORE_FAILED: &str = "cannot store dead letters";
const POSITION_FAILED: &str = "cannot store the position";

// ---------------------------------------------------------------------------------------
// Inbound: dead letters wait, unacknowledged, until they are stored
// ---------------------------------------------------------------------------------------

fn no_dead_letter_is_lost_to_a_full_disk(db: &Db) {
    on_each_store(|disk, store| dead_letters_survive_a_full_disk(db, disk, store));
}

fn dead_letters_survive_a_full_disk(db: &Db, disk: &SmallDisk, store: StateStore) {
    // Given a bridge whose state store is on a small disk, an inbound route into a table
    // that holds row 0, and the dead-letter mirror on the same broker
    let world = World::new("state-store").on_store(store);
    let table = TempTable::create(db, "full_in", "id INTEGER PRIMARY KEY, v VARCHAR(50)");
    db.exec(&format!(
        "INSERT INTO {} (id, v) VALUES (0, 'zero')",
        table.name
    ));
    let topic = unique("full_in");
    let mirror_topic = unique("full_mirror");
    let config = world
        .config(db)
        .inbound(
            Route::inbound("full_in", &topic, &table.name)
                .columns(&[("id", "payload.id"), ("v", "payload.v")])
                .set("batch", json!({ "max_rows": 20, "max_delay": "50ms" })),
        )
        .set(
            "dead_letter",
            json!({ "publish": { "broker": "b", "topic": format!("{mirror_topic}/{{route}}"), "qos": 1 } }),
        )
        .write();
    let mirror = Subscriber::connect(world.broker.port, &format!("{mirror_topic}/#"), 1);
    let mut bridge = Bridge::start(&config);
    bridge.wait_for_log("mirroring dead letters", common::LIVENESS);
    let publisher = Publisher::connect(world.broker.port);
    publish_bad(&publisher, &topic, 0..10);
    wait_for_exactly(&mut bridge, &config, &range_set(0..10));

    // When the disk fills while more bad messages arrive, and is freed again
    disk.fill();
    publish_bad(&publisher, &topic, 10..70);
    wait_for_failures(&mut bridge, STORE_FAILED, 0);
    disk.free();

    // Then every one of them is stored, once, without a restart
    wait_for_exactly(&mut bridge, &config, &range_set(0..70));

    // When the disk fills again, and the bridge is killed while it cannot store
    let failures = log_count(&bridge, STORE_FAILED);
    disk.fill();
    publish_bad(&publisher, &topic, 70..130);
    wait_for_failures(&mut bridge, STORE_FAILED, failures);
    bridge.kill();
    disk.free();

    // Then the broker still held what was not stored: after a restart, all are there (a
    // letter stored just before the kill may come twice: at-least-once)
    let mut bridge = Bridge::start(&config);
    wait_for(&mut bridge, "130 distinct dead letters", || {
        let (markers, count) = stored_markers(&config);
        Ok(markers == range_set(0..130) && count >= 130)
    });

    // And the mirror copied each stored letter, and its stored position reached the last
    let (_, count) = stored_markers(&config);
    let ids: BTreeSet<i64> = dlq_list(&config)
        .iter()
        .map(|l| l["id"].as_i64().expect("an id"))
        .collect();
    wait_for(&mut bridge, "every dead letter mirrored", || {
        let mirrored: BTreeSet<i64> = mirror
            .messages()
            .iter()
            .filter_map(|m| serde_json::from_str::<Json>(m.payload_str()).ok())
            .filter_map(|l| l["id"].as_i64())
            .collect();
        Ok(ids.is_subset(&mirrored))
    });
    let last = *ids.last().expect("letters");
    wait_for(&mut bridge, "the mirror position stored", || {
        let rows = world
            .store
            .reader()
            .try_query("SELECT last_id FROM mirror_position")?;
        Ok(rows
            .iter()
            .any(|r| r[0].as_deref() == Some(&*last.to_string())))
    });

    // And another process can purge beside the running bridge
    let out = run_mqdb(&["-c", path_str(&config), "dlq", "purge", "--all", "--yes"]);
    assert!(
        out.status.success(),
        "dlq purge failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dlq_list(&config).is_empty(), "{count} letters were purged");
    assert_eq!(table.count(), 1, "no bad message became a row");
    bridge.terminate();
}

#[test]
fn no_dead_letter_is_lost_to_a_full_disk_postgres() {
    no_dead_letter_is_lost_to_a_full_disk(&Db::Postgres);
}

#[test]
fn no_dead_letter_is_lost_to_a_full_disk_mariadb() {
    no_dead_letter_is_lost_to_a_full_disk(&Db::MariaDb);
}

#[test]
fn no_dead_letter_is_lost_to_a_full_disk_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    no_dead_letter_is_lost_to_a_full_disk(&sqlite(dir.path()));
}

// ---------------------------------------------------------------------------------------
// Outbound: the position moves only when it is stored
// ---------------------------------------------------------------------------------------

/// Inserts rows `range`; a row whose id is a multiple of 5 has a `v` that cannot be a topic
/// level, so it becomes a dead letter.
fn insert_rows(db: &Db, table: &str, range: std::ops::RangeInclusive<u64>) {
    let values: Vec<String> = range
        .map(|id| {
            let v = if id.is_multiple_of(5) { "bad+" } else { "ok" };
            format!("({id}, '{v}')")
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO {table} (id, v) VALUES {}",
        values.join(", ")
    ));
}

/// The route's position as another process reads it from the state store.
fn stored_position(world: &World, route: &str) -> Result<Option<String>, String> {
    let rows = world.store.reader().try_query(&format!(
        "SELECT position FROM positions WHERE route = '{route}'"
    ))?;
    Ok(rows.first().and_then(|r| r[0].clone()))
}

fn published_ids(subscriber: &Subscriber) -> BTreeSet<u64> {
    subscriber
        .messages()
        .iter()
        .filter_map(|m| serde_json::from_str::<Json>(m.payload_str()).ok())
        .filter_map(|row| {
            row["id"]
                .as_u64()
                .or_else(|| row["id"].as_str()?.parse().ok())
        })
        .collect()
}

fn dead_ids(config: &Path) -> BTreeSet<u64> {
    dlq_list(config)
        .iter()
        .filter_map(|l| serde_json::from_str::<Json>(payload_text(l)).ok())
        .filter_map(|row| {
            row["id"]
                .as_u64()
                .or_else(|| row["id"].as_str()?.parse().ok())
        })
        .collect()
}

/// Waits until rows `1..=last` were each published or dead-lettered and the stored position
/// is `last`.
fn wait_for_caught_up(
    bridge: &mut Bridge,
    world: &World,
    config: &Path,
    subscriber: &Subscriber,
    route: &str,
    last: u64,
) {
    let want_position = format!("[\"{last}\"]");
    wait_for(bridge, &format!("rows 1..={last} out and stored"), || {
        let published = published_ids(subscriber);
        let dead = dead_ids(config);
        if let Some(bad) = published.iter().find(|id| id.is_multiple_of(5)) {
            return Err(format!("row {bad} was published; its topic is invalid"));
        }
        if let Some(good) = dead.iter().find(|id| !id.is_multiple_of(5)) {
            return Err(format!("row {good} was dead-lettered"));
        }
        let all: BTreeSet<u64> = published.union(&dead).copied().collect();
        let position = stored_position(world, route)?;
        Ok(all == (1..=last).collect() && position.as_deref() == Some(&*want_position))
    });
}

fn the_outbound_position_waits_for_a_full_disk(db: &Db) {
    on_each_store(|disk, store| outbound_position_survives_a_full_disk(db, disk, store));
}

fn outbound_position_survives_a_full_disk(db: &Db, disk: &SmallDisk, store: StateStore) {
    // Given an outbound route whose state store is on a small disk
    let world = World::new("state-store").on_store(store);
    let table = TempTable::create(db, "full_out", "id INTEGER PRIMARY KEY, v VARCHAR(50)");
    let topic = unique("full_out");
    let route = "full_out";
    let config = world
        .config(db)
        .outbound(
            Route::outbound(
                route,
                &format!("SELECT id, v FROM {} WHERE id > ? ORDER BY id", table.name),
            )
            .set("track", "id")
            .set("start", 0)
            .set("interval", "100ms")
            .set("broker", "b")
            .set("topic", format!("{topic}/{{v}}"))
            .set("qos", 1)
            .set("format", "json"),
        )
        .write();
    let subscriber = Subscriber::connect(world.broker.port, &format!("{topic}/#"), 1);
    let mut bridge = Bridge::start(&config);
    insert_rows(db, &table.name, 1..=10);
    wait_for_caught_up(&mut bridge, &world, &config, &subscriber, route, 10);

    // When the disk fills while rows (good ones and dead letters) keep coming
    disk.fill();
    for first in (11..=200).step_by(10) {
        insert_rows(db, &table.name, first..=first + 9);
        if log_count(&bridge, POSITION_FAILED) > 0 {
            break;
        }
    }
    wait_for_failures(&mut bridge, POSITION_FAILED, 0);
    let last: u64 = table.count().try_into().expect("a row count");

    // Then once space is free, every row is out or dead-lettered and the stored position
    // is the last row, as another process sees it
    disk.free();
    wait_for_caught_up(&mut bridge, &world, &config, &subscriber, route, last);

    // And after a restart nothing is skipped: new rows follow from the stored position
    bridge.terminate();
    let mut bridge = Bridge::start(&config);
    insert_rows(db, &table.name, last + 1..=last + 10);
    wait_for_caught_up(&mut bridge, &world, &config, &subscriber, route, last + 10);
    bridge.terminate();
}

#[test]
fn the_outbound_position_waits_for_a_full_disk_postgres() {
    the_outbound_position_waits_for_a_full_disk(&Db::Postgres);
}

#[test]
fn the_outbound_position_waits_for_a_full_disk_mariadb() {
    the_outbound_position_waits_for_a_full_disk(&Db::MariaDb);
}

#[test]
fn the_outbound_position_waits_for_a_full_disk_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    the_outbound_position_waits_for_a_full_disk(&sqlite(dir.path()));
}
