//! The dead-letter replay rate: `mqdb dlq replay --all` over a store of dead letters of
//! an inbound route, straight into the database (no broker), against the raw insert
//! ceiling of the same driver.

use std::time::Instant;

use mqdb::dlq::{Direction, NewDeadLetter};
use mqdb::state::State;
use serde_json::json;

use crate::clients;
use crate::common::{Db, StateStore, TempTable, mqdb_command};
use crate::load;
use crate::report::{Sampler, Usage};

/// Replays `n` dead letters from a SQLite state store into `db`: the rate, and the
/// replay process's figures.
pub fn replay(db: &Db, n: usize) -> (f64, Usage) {
    let dir = tempfile::tempdir().unwrap();
    replay_from(db, n, dir.path(), &StateStore::sqlite_in(dir.path()))
}

/// [`replay`] from a PostgreSQL state store (a database of its own on the local server).
pub fn replay_postgres_store(db: &Db, n: usize) -> (f64, Usage) {
    let dir = tempfile::tempdir().unwrap();
    replay_from(db, n, dir.path(), &StateStore::postgres())
}

fn replay_from(db: &Db, n: usize, dir: &std::path::Path, store: &StateStore) -> (f64, Usage) {
    let table = TempTable::create(db, "bench_replay", load::columns(db));
    let state = store.url();
    let config = load::offline_route(dir, db, &table.name, "replay", &state);
    fill(&state, n);

    let start = Instant::now();
    let child = mqdb_command()
        .args([
            "-c",
            config.to_str().unwrap(),
            "-q",
            "dlq",
            "replay",
            "--all",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mqdb dlq replay");
    let sampler = Sampler::start(child.id());
    let out = child.wait_with_output().expect("mqdb dlq replay");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let usage = sampler.finish();
    assert!(
        out.status.success(),
        "dlq replay failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(table.count(), n as i64, "replayed rows do not reconcile");
    let left = mqdb_command()
        .args(["-c", config.to_str().unwrap(), "dlq", "list", "--json"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .count();
    assert_eq!(left, 0, "dead letters left after the replay");
    (rate, usage)
}

/// Stores `n` dead letters of the `bench` route, as mqdb records a rejected message.
fn fill(url: &str, n: usize) {
    clients::runtime().block_on(async {
        let state = State::open(url).await.unwrap();
        for start in (0..n).step_by(10_000) {
            let letters: Vec<NewDeadLetter> = (start..(start + 10_000).min(n))
                .map(|i| {
                    let r = load::reading(i);
                    NewDeadLetter {
                        route: "bench".into(),
                        direction: Direction::Inbound,
                        source: format!("replay/{}/{}", r.site, r.device),
                        payload: load::json(&r),
                        headers: json!({
                            "broker": "src",
                            "qos": 1,
                            "retain": false,
                            "received_at": "2024-05-01T10:00:00+00:00",
                        }),
                        error_kind: "rejected".into(),
                        error: "the table did not exist yet".into(),
                        sqlstate: Some("42P01".into()),
                    }
                })
                .collect();
            state.store_dead_letters(&letters).await.unwrap();
        }
        state.close().await;
    });
}
