//! The batch writer against the real PostgreSQL, MariaDB and SQLite: a whole batch is one
//! statement per driver, the rows a database rejects are found exactly (and nothing else is
//! lost or written twice), and every value survives the per-driver statement: NULLs,
//! quotes, braces, backslashes, injection-shaped text, time zones and bytes.

mod common;

use common::{Db, TempTable};
use mqdb::config::OnConflict;
use mqdb::convert::{Input, SqlKind, Value, convert};
use mqdb::db::DbSpec;
use mqdb::db::dialect::Dialect;
use mqdb::db::worker::{self, SinkTarget};
use mqdb::db::write::Writer;
use mqdb::mapping::Row;
use serde_json::{Value as Json, json};

fn target(table: &str, columns: &[&str], max_rows: usize) -> SinkTarget {
    SinkTarget {
        route: "write".into(),
        table: table.into(),
        columns: Some(columns.iter().map(|c| c.to_string()).collect()),
        on_conflict: OnConflict::Error,
        key: Vec::new(),
        max_rows,
    }
}

/// How a test speaks to its database: in the dialect the driver reports, or in standard
/// SQL only (`dialect: generic`), as with a database mqdb does not know.
#[derive(Clone, Copy, PartialEq)]
enum Speak {
    Native,
    Generic,
}

fn spec(db: &Db, speak: Speak) -> DbSpec {
    let spec = DbSpec::from_connection_string(db.label(), &db.connection_string());
    match speak {
        Speak::Native => spec,
        Speak::Generic => spec.with_dialect(Dialect::Generic),
    }
}

/// `n` rows of (id, v), where every row whose id is a multiple of `bad_every` breaks the
/// table's CHECK (v < 1000).
fn rows(n: usize, bad_every: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let v = if i % bad_every == bad_every - 1 {
                5000
            } else {
                i as i64 % 1000
            };
            vec![Some(Value::Int(i as i64)), Some(Value::Int(v))]
        })
        .collect()
}

fn rejected_rows_are_found_exactly(db: Db, speak: Speak, columns: &str) {
    // Given a table with a CHECK constraint and a batch of 1000 rows, 14 of them breaking it
    let table = TempTable::create(&db, "write_isolate", columns);
    let (conn, plan) = worker::connect(&spec(&db, speak), &target(&table.name, &["id", "v"], 1000))
        .expect("connect and resolve");
    let batch = rows(1000, 71);
    let mut writer = Writer::new(&conn, &plan);

    // When the batch is written
    let rejected = writer.write_batch(&batch, None).expect("no outage");

    // Then exactly the breaking rows are reported, each with the database's reason
    let want: Vec<usize> = (0..1000).filter(|i| i % 71 == 70).collect();
    let got: Vec<usize> = rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(got, want);
    for (_, e) in &rejected {
        assert!(e.message.to_lowercase().contains("constraint"), "{e}");
    }
    // And every other row is stored exactly once
    assert_eq!(table.count(), 1000 - want.len() as i64);
    let sum = common::scalar(&db, &format!("SELECT SUM(id) FROM {}", table.name));
    let expected: usize = (0..1000).filter(|i| i % 71 != 70).sum();
    assert_eq!(sum, expected as i64);
    // And a clean batch is one statement, a dirty one a few per rejected row
    let clean: Vec<Row> = (2000..2500)
        .map(|i| vec![Some(Value::Int(i)), Some(Value::Int(1))])
        .collect();
    let before = writer.statements();
    assert!(
        writer
            .write_batch(&clean, None)
            .expect("no outage")
            .is_empty()
    );
    assert_eq!(
        writer.statements() - before,
        1,
        "[{}] a clean batch",
        db.label()
    );
    assert!(
        before <= 1 + 2 * want.len() * 10,
        "[{}] {before} statements to isolate {} rows of 1000",
        db.label(),
        want.len()
    );
}

#[test]
fn rejected_rows_are_found_exactly_postgres() {
    rejected_rows_are_found_exactly(
        Db::Postgres,
        Speak::Native,
        "id BIGINT PRIMARY KEY, v INTEGER CHECK (v < 1000)",
    );
}

#[test]
fn rejected_rows_are_found_exactly_mariadb() {
    rejected_rows_are_found_exactly(
        Db::MariaDb,
        Speak::Native,
        "id BIGINT PRIMARY KEY, v INTEGER CHECK (v < 1000)",
    );
}

#[test]
fn rejected_rows_are_found_exactly_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    rejected_rows_are_found_exactly(
        Db::Sqlite(dir.path().join("w.db")),
        Speak::Native,
        "id INTEGER PRIMARY KEY, v INTEGER CHECK (v < 1000)",
    );
}

fn nasty_texts() -> Vec<Option<&'static str>> {
    vec![
        Some(""),
        Some("NULL"),
        Some("a,b"),
        Some("{x,y}"),
        Some("say \"hi\""),
        Some("back\\slash\\"),
        Some("'); DROP TABLE readings; --"),
        Some("  spaces  "),
        Some("ünïcødé ✓ 漢字"),
        Some("line\nbreak\ttab"),
        None,
    ]
}

fn values_survive_the_batch_statement(db: Db, speak: Speak, columns: &str) {
    // Given text, timestamp, date, float, boolean and binary columns
    let table = TempTable::create(&db, "write_values", columns);
    let names = ["id", "t", "ts", "d", "f", "b", "raw"];
    let (conn, plan) =
        worker::connect(&spec(&db, speak), &target(&table.name, &names, 500)).expect("resolve");
    let texts = nasty_texts();
    // Values as mapping makes them: converted to each column's kind as the catalog has it.
    let kinds: Vec<SqlKind> = plan.columns.iter().map(|c| c.kind).collect();
    let batch: Vec<Row> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let stamp = json!("2024-03-01T01:59:58.123456+02:00");
            let inputs = [
                Input::Int(i as i64),
                Input::Json(&text.map_or(Json::Null, |t| json!(t))),
                Input::Json(if i == 0 { &Json::Null } else { &stamp }),
                Input::Text("2024-02-29"),
                Input::Json(&json!(-1.5e-3)),
                Input::Bool(i % 2 == 0),
                Input::Bytes(&[0, 0xff, b'"', b'\\', i as u8]),
            ];
            inputs
                .iter()
                .zip(&kinds)
                .map(|(input, kind)| Some(convert(*input, *kind).expect("converts")))
                .collect()
        })
        .collect();

    // When they are written as one batch
    let mut writer = Writer::new(&conn, &plan);
    assert!(
        writer
            .write_batch(&batch, None)
            .expect("no outage")
            .is_empty()
    );
    assert_eq!(writer.statements(), 1, "[{}] one statement", db.label());

    // Then each value reads back as it went in
    let got = db.query(&format!(
        "SELECT id, t, ts, d, f, b FROM {} ORDER BY id",
        table.name
    ));

    assert_eq!(got.len(), texts.len());
    for (i, row) in got.iter().enumerate() {
        assert_eq!(
            row[1].as_deref(),
            texts[i],
            "[{}] text of row {i}",
            db.label()
        );
        // The SQLite driver keeps milliseconds.
        let precise = match db {
            Db::Sqlite(_) => "2024-02-29 23:59:58.123",
            _ => "2024-02-29 23:59:58.123456",
        };
        let stamp = row[2].as_deref();
        if i == 0 {
            assert_eq!(stamp, None);
        } else {
            assert!(
                stamp.is_some_and(|s| s.starts_with(precise)),
                "[{}] {stamp:?} in UTC",
                db.label()
            );
        }
        assert!(
            row[3]
                .as_deref()
                .is_some_and(|d| d.starts_with("2024-02-29")),
            "{row:?}"
        );
        let f: f64 = row[4].as_deref().unwrap().parse().unwrap();
        assert!((f + 1.5e-3).abs() < 1e-12, "{row:?}");
        let b = row[5].as_deref().unwrap();
        assert!(
            matches!(b, "1" | "t" | "true") == (i % 2 == 0),
            "[{}] boolean {b:?} of row {i}",
            db.label()
        );
    }
    let bytes = db.query(&format!(
        "SELECT {} FROM {} WHERE id = 3",
        match db {
            Db::Postgres => "encode(raw, 'hex')",
            _ => "hex(raw)",
        },
        table.name
    ));
    assert_eq!(
        bytes[0][0]
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("00ff225c03")
    );
}

#[test]
fn values_survive_the_batch_statement_postgres() {
    values_survive_the_batch_statement(
        Db::Postgres,
        Speak::Native,
        "id INTEGER PRIMARY KEY, t TEXT, ts TIMESTAMP, d DATE, f DOUBLE PRECISION, b BOOLEAN, raw BYTEA",
    );
}

#[test]
fn values_survive_the_batch_statement_mariadb() {
    values_survive_the_batch_statement(
        Db::MariaDb,
        Speak::Native,
        "id INTEGER PRIMARY KEY, t TEXT, ts DATETIME(6), d DATE, f DOUBLE, b BOOLEAN, raw BLOB",
    );
}

#[test]
fn values_survive_the_batch_statement_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    values_survive_the_batch_statement(
        Db::Sqlite(dir.path().join("v.db")),
        Speak::Native,
        "id INTEGER PRIMARY KEY, t TEXT, ts TIMESTAMP, d DATE, f REAL, b BOOLEAN, raw BLOB",
    );
}

fn later_batches_may_carry_longer_values(db: Db, speak: Speak, columns: &str) {
    // Given a writer kept across batches (its statements prepared and buffers bound once),
    // whose first batch has short values
    let table = TempTable::create(&db, "write_grow", columns);
    let (conn, plan) = worker::connect(
        &spec(&db, speak),
        &target(&table.name, &["id", "t", "raw"], 3),
    )
    .expect("resolve");
    let mut writer = Writer::new(&conn, &plan);
    let batch = |from: i64, len: usize| -> Vec<Row> {
        (from..from + 3)
            .map(|i| {
                vec![
                    Some(Value::Int(i)),
                    Some(Value::Text("é".repeat(len / 2))),
                    Some(Value::Bytes(vec![7; len])),
                ]
            })
            .collect()
    };
    assert!(writer.write_batch(&batch(0, 2), None).unwrap().is_empty());

    // When later batches carry values thousands of times longer, and then short ones again
    assert!(
        writer
            .write_batch(&batch(3, 10_000), None)
            .unwrap()
            .is_empty()
    );
    assert!(writer.write_batch(&batch(6, 4), None).unwrap().is_empty());

    // Then every value is stored whole, each batch in one statement
    assert_eq!(writer.statements(), 3, "[{}]", db.label());
    let length = match db {
        Db::Postgres => "octet_length",
        _ => "length",
    };
    let got = db.query(&format!(
        "SELECT id, {length}(t), {length}(raw) FROM {} ORDER BY id",
        table.name
    ));
    let lengths: Vec<(i64, i64)> = got
        .iter()
        .map(|r| {
            (
                r[1].as_deref().unwrap().parse().unwrap(),
                r[2].as_deref().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i64, i64)> = [2, 10_000, 4]
        .iter()
        .flat_map(|&len| std::iter::repeat_n((len as i64, len as i64), 3))
        .collect();
    // SQLite's length() counts characters of text: two bytes each here.
    let want: Vec<(i64, i64)> = match db {
        Db::Sqlite(_) => want.iter().map(|&(t, b)| (t / 2, b)).collect(),
        _ => want,
    };
    assert_eq!(lengths, want, "[{}]", db.label());
}

#[test]
fn later_batches_may_carry_longer_values_postgres() {
    later_batches_may_carry_longer_values(
        Db::Postgres,
        Speak::Native,
        "id INTEGER PRIMARY KEY, t TEXT, raw BYTEA",
    );
}

#[test]
fn later_batches_may_carry_longer_values_mariadb() {
    later_batches_may_carry_longer_values(
        Db::MariaDb,
        Speak::Native,
        "id INTEGER PRIMARY KEY, t MEDIUMTEXT, raw MEDIUMBLOB",
    );
}

#[test]
fn later_batches_may_carry_longer_values_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    later_batches_may_carry_longer_values(
        Db::Sqlite(dir.path().join("g.db")),
        Speak::Native,
        "id INTEGER PRIMARY KEY, t TEXT, raw BLOB",
    );
}

#[test]
fn rejected_rows_are_found_exactly_postgres_in_standard_sql() {
    rejected_rows_are_found_exactly(
        Db::Postgres,
        Speak::Generic,
        "id BIGINT PRIMARY KEY, v INTEGER CHECK (v < 1000)",
    );
}

#[test]
fn values_survive_the_batch_statement_postgres_in_standard_sql() {
    values_survive_the_batch_statement(
        Db::Postgres,
        Speak::Generic,
        "id INTEGER PRIMARY KEY, t TEXT, ts TIMESTAMP, d DATE, f DOUBLE PRECISION, b BOOLEAN, raw BYTEA",
    );
}

#[test]
fn later_batches_may_carry_longer_values_postgres_in_standard_sql() {
    later_batches_may_carry_longer_values(
        Db::Postgres,
        Speak::Generic,
        "id INTEGER PRIMARY KEY, t TEXT, raw BYTEA",
    );
}

/// Rows (id, v, note) for ids in `ids`, each with the value `v`.
fn versioned(ids: std::ops::Range<i64>, v: i64) -> Vec<Row> {
    ids.map(|i| {
        vec![
            Some(Value::Int(i)),
            Some(Value::Text(format!("{v}.5"))),
            Some(Value::Text(format!("note {v}"))),
        ]
    })
    .collect()
}

fn upserts_keep_one_row_per_key(db: Db, speak: Speak, columns: &str) {
    for rule in [OnConflict::Ignore, OnConflict::Update] {
        // Given a table keyed by id and a route that upserts on it
        let table = TempTable::create(&db, "write_upsert", columns);
        let mut target = target(&table.name, &["id", "v", "note"], 100);
        target.on_conflict = rule;
        target.key = vec!["id".into()];
        let (conn, plan) = worker::connect(&spec(&db, speak), &target).expect("resolve");
        let mut writer = Writer::new(&conn, &plan);

        // When ids 0..10 arrive, then ids 5..15 with new values
        for batch in [versioned(0..10, 1), versioned(5..15, 2)] {
            let rejected = writer.write_batch(&batch, None).expect("no outage");
            assert!(
                rejected.is_empty(),
                "[{}] {rule:?}: {rejected:?}",
                db.label()
            );
        }

        // Then each id is stored once, with the first values kept (ignore) or the last
        // ones (update)
        let got: Vec<(String, f64, String)> = db
            .query(&format!(
                "SELECT id, v, note FROM {} ORDER BY id",
                table.name
            ))
            .into_iter()
            .map(|r| {
                let text = |i: usize| r[i].clone().unwrap_or_default();
                (text(0), text(1).parse().unwrap_or(f64::NAN), text(2))
            })
            .collect();
        let want: Vec<(String, f64, String)> = (0..15)
            .map(|i| {
                let v = match rule {
                    OnConflict::Update if i >= 5 => 2,
                    _ if i >= 10 => 2,
                    _ => 1,
                };
                (i.to_string(), v as f64 + 0.5, format!("note {v}"))
            })
            .collect();
        assert_eq!(got, want, "[{}] {rule:?}", db.label());
    }
}

const UPSERT_COLUMNS: &str = "id INTEGER PRIMARY KEY, v DECIMAL(10,2), note VARCHAR(40)";

#[test]
fn upserts_keep_one_row_per_key_postgres() {
    upserts_keep_one_row_per_key(Db::Postgres, Speak::Native, UPSERT_COLUMNS);
}

#[test]
fn upserts_keep_one_row_per_key_postgres_in_standard_sql() {
    upserts_keep_one_row_per_key(Db::Postgres, Speak::Generic, UPSERT_COLUMNS);
}

#[test]
fn upserts_keep_one_row_per_key_mariadb() {
    upserts_keep_one_row_per_key(Db::MariaDb, Speak::Native, UPSERT_COLUMNS);
}

#[test]
fn upserts_keep_one_row_per_key_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    upserts_keep_one_row_per_key(
        Db::Sqlite(dir.path().join("u.db")),
        Speak::Native,
        UPSERT_COLUMNS,
    );
}
