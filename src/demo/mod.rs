//! `mqdb demo`: a guided tour on embedded parts. An MQTT broker runs inside the process
//! (rumqttd), the database is a SQLite file reached through the SQLite ODBC driver, and
//! the bridge itself is the real `run`, `dlq list` and `dlq replay` on a config file the
//! demo writes, so what the user sees is what production does.

mod embedded_broker;
mod files;
mod sqlite;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::sync::{mpsc, oneshot};

use crate::app::{self, AppError};
use crate::cli::Selection;
use crate::dlq_commands;
use crate::error::DbError;
use crate::metrics::Metrics;

use embedded_broker::{Watcher, start_broker};
use files::{SCHEMA, config_text};
use sqlite::{blocking, connect, count, driver_hint, query};

/// Long enough for a slow machine, short enough that a broken demo says so quickly.
const WAIT: Duration = Duration::from_secs(30);

/// The sample traffic: (site, device, payload). dev9 is not a registered device, and one
/// message is cut short.
const READINGS: [(&str, &str, &str); 8] = [
    (
        "plant1",
        "dev1",
        r#"{"value": 21.5, "ts": "2026-05-01T08:00:00+02:00"}"#,
    ),
    (
        "plant1",
        "dev2",
        r#"{"value": 22.1, "ts": "2026-05-01T08:00:05+02:00"}"#,
    ),
    (
        "plant2",
        "dev3",
        r#"{"value": 31.4, "ts": "2026-05-01T08:00:09+02:00"}"#,
    ),
    (
        "plant1",
        "dev1",
        r#"{"value": 21.7, "ts": "2026-05-01T08:01:00+02:00"}"#,
    ),
    (
        "plant2",
        "dev3",
        r#"{"value": 33.0, "ts": "2026-05-01T08:01:09+02:00"}"#,
    ),
    (
        "plant1",
        "dev2",
        r#"{"value": 22.4, "ts": "2026-05-01T08:01:05+02:00"}"#,
    ),
    (
        "plant1",
        "dev2",
        r#"{"value": 22.6, "ts": "2026-05-01T08:02"#,
    ),
    (
        "plant2",
        "dev9",
        r#"{"value": 35.2, "ts": "2026-05-01T08:02:30+02:00"}"#,
    ),
];

pub async fn run(dir: PathBuf) -> Result<(), AppError> {
    let started = Instant::now();
    let fail =
        |what: &str, e: &dyn std::fmt::Display| AppError::Runtime(format!("demo: {what}: {e}"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| fail(&format!("cannot create {}", dir.display()), &e))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| fail("cannot resolve the directory", &e))?;
    let database = dir.join("demo.db");
    let config_path = dir.join("mqdb.yaml");

    say("mqdb demo: MQTT sensor readings → SQLite rows → MQTT alerts, with a dead-letter queue.");
    say(&format!("Everything stays in {}.", dir.display()));

    step(1, "Starting an MQTT broker inside this process");
    let broker = start_broker().map_err(|e| fail("embedded broker", &e))?;
    done(&format!("rumqttd on {broker}"));

    step(
        2,
        "Creating the SQLite database (through the SQLite3 ODBC driver)",
    );
    for stale in ["demo.db", "state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let connection_string = format!(
        "Driver={{SQLite3}};Database={};Timeout=10000;",
        database.display()
    );
    let cs = connection_string.clone();
    blocking(move || {
        let conn = connect(&cs)?;
        for statement in SCHEMA {
            conn.execute(statement, (), None).map_err(|e| DbError::from_odbc(&e))?;
        }
        conn.execute(
            "INSERT INTO devices (id, site) VALUES ('dev1', 'plant1'), ('dev2', 'plant1'), ('dev3', 'plant2')",
            (),
            None,
        )
        .map_err(|e| DbError::from_odbc(&e))?;
        Ok(())
    })
    .await
    .map_err(|e| fail("cannot create the database", &driver_hint(e)))?;
    done(&format!(
        "{}: tables devices (dev1, dev2, dev3) and readings",
        database.display()
    ));
    say("     A trigger rejects readings from devices that are not in `devices`.");

    step(3, "Writing the configuration and starting the bridge");
    std::fs::write(&config_path, config_text(&dir, broker, &connection_string))
        .map_err(|e| fail("cannot write the config", &e))?;
    let config = load(&config_path)?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let metrics = Metrics::new();
    let bridge = tokio::spawn(app::run_until(
        config,
        async {
            let _ = stop_rx.await;
        },
        metrics.clone(),
    ));
    // Publishing before the bridge has subscribed would lose the readings: a new
    // session has nothing queued for it.
    wait_for(
        || {
            let healthy = metrics.routes().len() == 2 && metrics.health().0;
            async move { Ok(i64::from(healthy)) }
        },
        1,
        "the bridge to connect and subscribe",
    )
    .await?;
    done(&format!(
        "{} (what `mqdb -c FILE run` does, in this process)",
        config_path.display()
    ));
    say("     route readings:    sensors/{site}/{device}/temperature → table readings");
    say("     route heat_alerts: readings above 30 °C → alerts/{site}/{device}");

    let watcher = Watcher::connect(broker, WAIT)
        .await
        .map_err(|e| fail("MQTT client", &e))?;

    step(4, "Publishing 8 sensor readings (QoS 1)");
    for (site, device, payload) in READINGS {
        say(&format!(
            "     sensors/{site}/{device}/temperature  {payload}"
        ));
        watcher
            .client
            .publish(
                format!("sensors/{site}/{device}/temperature"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| fail("publish", &e))?;
    }
    say("     (the 7th is cut short: not JSON; the 8th comes from dev9, which is not registered)");

    step(5, "Rows arriving in the readings table");
    let cs = connection_string.clone();
    wait_for(
        || count(&cs, "SELECT COUNT(*) FROM readings"),
        6,
        "6 rows in readings",
    )
    .await?;
    print_rows(&connection_string).await?;
    say("     Timestamps are stored in UTC, whatever offset the message carried.");

    step(
        6,
        "The outbound route publishing alerts (a subscriber in this demo listens on alerts/#)",
    );
    let mut alerts = watcher.alerts;
    receive_alerts(&mut alerts, 2).await?;

    step(7, "The dead-letter queue (`mqdb dlq list`)");
    let cs = connection_string.clone();
    let state_db = dir.join("state.db");
    wait_for(|| dead_letters(&state_db), 2, "2 dead letters").await?;
    dlq_commands::list(load(&config_path)?, None, None, None, false).await?;
    say(
        "     decode:   the cut-short message is not JSON. Nothing can fix it; it stays for you to inspect.",
    );
    say("     rejected: the database refused dev9's reading. That one can be fixed.");

    step(8, "Fixing the cause: registering dev9 in devices");
    blocking(move || {
        connect(&cs)?
            .execute(
                "INSERT INTO devices (id, site) VALUES ('dev9', 'plant2')",
                (),
                None,
            )
            .map_err(|e| DbError::from_odbc(&e))
            .map(|_| ())
    })
    .await
    .map_err(|e| fail("cannot register dev9", &e))?;
    done("INSERT INTO devices VALUES ('dev9', 'plant2')");

    step(
        9,
        "Replaying the rejected reading (`mqdb dlq replay --all --error-kind rejected`)",
    );
    let all = Selection {
        all: true,
        id: Vec::new(),
        route: None,
    };
    dlq_commands::replay(load(&config_path)?, all, Some("rejected".into()), false).await?;
    let cs = connection_string.clone();
    wait_for(
        || count(&cs, "SELECT COUNT(*) FROM readings"),
        7,
        "the replayed row",
    )
    .await?;
    print_rows(&connection_string).await?;
    say("     The replayed reading is above 30 °C, so it flows on to the alert route too:");
    receive_alerts(&mut alerts, 1).await?;

    step(
        10,
        "Stopping the bridge (what SIGTERM does: finish in-flight batches, then exit)",
    );
    let _ = stop_tx.send(());
    bridge.await.map_err(|e| fail("the bridge task", &e))??;
    done(&format!(
        "the demo took {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    say("\nTry it yourself (the dead-letter commands need only the state file):");
    let me = std::env::args().next().unwrap_or_else(|| "mqdb".into());
    let c = config_path.display();
    say(&format!(
        "  {me} -c {c} dlq list          # the malformed message is still there"
    ));
    say(&format!(
        "  {me} -c {c} dlq show ID       # its payload and error (ID from the list)"
    ));
    say(&format!(
        "  {me} -c {c} dlq purge --all   # and gone, after a confirmation"
    ));
    say("  README.md: the configuration reference, the guarantees and the operator's runbook.");
    Ok(())
}

fn say(line: &str) {
    println!("{line}");
}

fn step(n: usize, what: &str) {
    println!("\n[{n}/10] {what}");
}

fn done(what: &str) {
    println!("  ✓  {what}");
}

fn load(path: &Path) -> Result<crate::config::Config, AppError> {
    crate::config::load(path).map_err(|e| AppError::Usage(e.to_string()))
}

async fn receive_alerts(
    alerts: &mut mpsc::Receiver<(String, String)>,
    n: usize,
) -> Result<(), AppError> {
    for _ in 0..n {
        match tokio::time::timeout(WAIT, alerts.recv()).await {
            Ok(Some((topic, payload))) => say(&format!("     {topic}  {payload}")),
            _ => {
                return Err(AppError::Runtime(
                    "demo: an expected alert did not arrive".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Polls `current` until it reaches `want`.
async fn wait_for<F, Fut>(current: F, want: i64, what: &str) -> Result<(), AppError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<i64, String>>,
{
    let deadline = Instant::now() + WAIT;
    let mut last = Ok(0);
    while Instant::now() < deadline {
        last = current().await;
        if matches!(last, Ok(n) if n >= want) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(AppError::Runtime(format!(
        "demo: waited {} s for {what}; last seen: {last:?}",
        WAIT.as_secs()
    )))
}

async fn dead_letters(state_db: &Path) -> Result<i64, String> {
    let url = format!("sqlite://{}", state_db.display());
    let state = crate::state::State::open(&url)
        .await
        .map_err(|e| e.to_string())?;
    let n = state
        .count_dead_letters(&crate::state::DeadLetterFilter::default())
        .await
        .map_err(|e| e.to_string());
    state.close().await;
    n.map(|n| n as i64)
}

async fn print_rows(connection_string: &str) -> Result<(), AppError> {
    let cs = connection_string.to_string();
    let rows = blocking(move || {
        query(
            &connect(&cs)?,
            "SELECT id, site, device, celsius, measured_at FROM readings ORDER BY id",
        )
    })
    .await
    .map_err(|e| AppError::Runtime(format!("demo: cannot read readings: {e}")))?;
    say("     id  site    device  celsius  measured_at (UTC)");
    for row in rows {
        let cell = |i: usize| {
            row.get(i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "NULL".into())
        };
        say(&format!(
            "     {:<3} {:<7} {:<7} {:<8} {}",
            cell(0),
            cell(1),
            cell(2),
            cell(3),
            cell(4)
        ));
    }
    Ok(())
}
