//! `mqdb demo --dir D`: the guided tour on an embedded MQTT broker and a SQLite file.
//!
//! What the demo leaves in D is checked independently of the demo's own code: the rows of
//! `D/demo.db` through the SQLite ODBC driver, and the dead-letter queue through
//! `mqdb dlq list --json`. A second run in the same directory must start afresh.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Db, dlq_list, path_str, run_bounded, scalar};
use serde_json::Value as Json;

/// The demo waits at most 30 s for each step; this only bounds a hang.
const DEADLINE: Duration = Duration::from_secs(180);

/// Checks the story on stdout: the replay, and the three alerts with their payloads.
fn check_story(stdout: &str) {
    assert!(stdout.contains("replayed 1 of 1"), "{stdout}");
    let mut alerts: Vec<(&str, Json)> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("alerts/"))
        .map(|l| {
            let (topic, payload) = l
                .split_once(char::is_whitespace)
                .unwrap_or_else(|| panic!("alert line without a payload: {l:?}"));
            let payload: Json = serde_json::from_str(payload.trim())
                .unwrap_or_else(|e| panic!("alert payload is not JSON ({e}): {l:?}"));
            (topic, payload)
        })
        .collect();
    alerts.sort_by_key(|(topic, _)| *topic);
    let topics: Vec<&str> = alerts.iter().map(|(t, _)| *t).collect();
    let dev3 = "alerts/plant2/dev3";
    assert_eq!(topics, [dev3, dev3, "alerts/plant2/dev9"], "{stdout}");
    for (topic, payload) in &alerts {
        let field = |name: &str| payload[name].as_str().unwrap_or_else(|| panic!("{name}"));
        let want = format!("alerts/{}/{}", field("site"), field("device"));
        assert_eq!(*topic, want, "{payload}");
        let celsius = payload["celsius"].as_f64().expect("celsius");
        assert!(celsius > 30.0, "an alert below 30 °C: {payload}");
    }
}

/// Checks what the demo left in `dir`, without the demo's code: rows through ODBC and the
/// dead letters through `mqdb dlq list --json`.
fn check_artefacts(dir: &Path) {
    for file in ["mqdb.yaml", "demo.db", "state.db"] {
        let path = dir.join(file);
        assert!(path.is_file(), "{} missing", path.display());
    }

    // 7 rows: dev1, dev2 and dev3 twice each, and dev9's replayed reading
    let db = Db::Sqlite(dir.join("demo.db"));
    let sql = "SELECT device, COUNT(*) FROM readings GROUP BY device ORDER BY device";
    let per_device: Vec<Option<String>> = db.query(sql).concat();
    let want = ["dev1", "2", "dev2", "2", "dev3", "2", "dev9", "1"].map(|v| Some(v.into()));
    assert_eq!(per_device, want);
    assert_eq!(db.count("readings"), 7);
    // dev9's reading is the one replayed from the dead-letter queue, stored in UTC
    let dev9 = db.query("SELECT site, celsius, measured_at FROM readings WHERE device = 'dev9'");
    let row = &dev9[0];
    assert_eq!(row[0].as_deref(), Some("plant2"));
    let celsius: f64 = row[1].as_deref().expect("celsius").trim().parse().unwrap();
    assert!((celsius - 35.2).abs() < 1e-9, "{row:?}");
    let measured = row[2].as_deref().expect("measured_at").replace('T', " ");
    let utc = measured.starts_with("2026-05-01 06:02:30");
    assert!(utc, "{measured:?} is not 08:02:30+02:00 in UTC");
    let sql = "SELECT COUNT(*) FROM readings WHERE celsius BETWEEN 22.55 AND 22.65";
    assert_eq!(scalar(&db, sql), 0, "the cut-short message became a row");

    // Exactly one dead letter is left: the malformed message (the rejected one was replayed)
    let letters = dlq_list(&dir.join("mqdb.yaml"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    let fields = ["error_kind", "route", "direction"].map(|key| letter[key].as_str());
    let want = [Some("decode"), Some("readings"), Some("inbound")];
    assert_eq!(fields, want, "{letter}");
    let payload = letter["payload"].as_str().expect("payload as text");
    assert!(payload.starts_with(r#"{"value": 22.6"#), "{letter}");
}

#[test]
fn demo_tells_its_story_and_leaves_a_database_and_a_dead_letter_queue() {
    let scratch = common::temp_dir("demo-test");
    // A directory that does not exist yet: the demo creates it
    let dir = scratch.path().join("tour");

    for run in 1..=2 {
        // When the demo runs (the second time in the same directory)
        let args = ["demo", "--dir", path_str(&dir)];
        let (status, stdout, stderr) = run_bounded(&args, scratch.path(), DEADLINE);

        // Then it exits 0 having told the story, and leaves the same artefacts: the second
        // run started afresh rather than adding to the first one's rows and letters
        assert!(
            status.success(),
            "run {run}: mqdb demo exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        check_story(&stdout);
        check_artefacts(&dir);
    }
}
