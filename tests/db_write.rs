//! The batch writer against the real PostgreSQL, MariaDB and SQLite: a whole batch is one
//! statement per driver, the rows a database rejects are found exactly (and nothing else is
//! lost or written twice), and every value survives the per-driver statement: NULLs,
//! quotes, braces, backslashes, injection-shaped text, time zones and bytes.

mod common;

use Speak::{Generic, Native};
use common::{Db, TempTable, scalar, temp_sqlite};
use mqdb::config::OnConflict;
use mqdb::convert::{Input, SqlKind, Value, convert};
use mqdb::db::DbSpec;
use mqdb::db::dialect::Dialect;
use mqdb::db::insert::TablePlan;
use mqdb::db::worker::{self, SinkTarget};
use mqdb::db::write::Writer;
use mqdb::mapping::Row;
use odbc_api::Connection;
use serde_json::{Value as Json, json};

/// How a test speaks to its database: in the dialect the driver reports, or in standard
/// SQL only (`dialect: generic`), as with a database mqdb does not know.
#[derive(Clone, Copy, PartialEq)]
enum Speak {
    Native,
    Generic,
}

/// A table and the connection and plan of a route that writes `names` to it.
struct Target {
    conn: Connection<'static>,
    plan: TablePlan,
    table: TempTable,
}

/// A [`Target`] for `columns`; an `on_conflict` other than `error` is keyed on `id`.
fn target(
    db: &Db,
    speak: Speak,
    columns: &str,
    names: &[&str],
    max_rows: usize,
    on_conflict: OnConflict,
) -> Target {
    let table = TempTable::create(db, "write", columns);
    let sink = SinkTarget {
        route: "write".into(),
        table: table.name.clone(),
        columns: Some(names.iter().map(|c| c.to_string()).collect()),
        on_conflict,
        key: match on_conflict {
            OnConflict::Error => Vec::new(),
            _ => vec!["id".into()],
        },
        max_rows,
    };
    let mut spec = DbSpec::from_connection_string(db.label(), &db.connection_string());
    if speak == Generic {
        spec = spec.with_dialect(Dialect::Generic);
    }
    let (conn, plan) = worker::connect(&spec, &sink).expect("connect and resolve");
    let conn = conn.into_connection();
    Target { conn, plan, table }
}

/// The PostgreSQL, MariaDB or SQLite variant of a column list.
fn pick<'a>(db: &Db, [postgres, mariadb, sqlite]: [&'a str; 3]) -> &'a str {
    match db {
        Db::Postgres => postgres,
        Db::MariaDb => mariadb,
        Db::Sqlite(_) => sqlite,
    }
}

/// Writes `batch`, which the database must take whole.
fn write_clean(writer: &mut Writer<'_>, batch: &[Row], what: &str) {
    let rejected = writer.write_batch(batch, None).expect("no outage");
    assert!(rejected.is_empty(), "{what}: {rejected:?}");
}

fn ints(id: i64, v: i64) -> Row {
    vec![Some(Value::Int(id)), Some(Value::Int(v))]
}

fn rejected_rows_are_found_exactly(db: &Db, speak: Speak) {
    // Given a table with a CHECK constraint and a batch of 1000 rows, 14 of them breaking it
    let id = pick(db, ["BIGINT", "BIGINT", "INTEGER"]);
    let columns = format!("id {id} PRIMARY KEY, v INTEGER CHECK (v < 1000)");
    let t = target(db, speak, &columns, &["id", "v"], 1000, OnConflict::Error);
    let bad = |i: &i64| i % 71 == 70;
    let batch: Vec<Row> = (0..1000)
        .map(|i| ints(i, if bad(&i) { 5000 } else { i % 1000 }))
        .collect();
    let mut writer = Writer::new(&t.conn, &t.plan);

    // When the batch is written
    let rejected = writer.write_batch(&batch, None).expect("no outage");

    // Then exactly the breaking rows are reported, each with the database's reason
    let want: Vec<usize> = (0..1000).filter(|i| bad(&(*i as i64))).collect();
    let got: Vec<usize> = rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(got, want);
    for (_, e) in &rejected {
        assert!(e.message.to_lowercase().contains("constraint"), "{e}");
    }
    // And every other row is stored exactly once
    assert_eq!(t.table.count(), 1000 - want.len() as i64);
    let sum = scalar(db, &format!("SELECT SUM(id) FROM {}", t.table.name));
    assert_eq!(sum, (0..1000).filter(|i| !bad(i)).sum::<i64>());
    // And a clean batch is one statement, a dirty one a few per rejected row
    let before = writer.statements();
    let clean: Vec<Row> = (2000..2500).map(|i| ints(i, 1)).collect();
    write_clean(&mut writer, &clean, db.label());
    let (label, broken) = (db.label(), want.len());
    assert_eq!(writer.statements() - before, 1, "[{label}] a clean batch");
    let isolating = format!("[{label}] {before} statements to isolate {broken} rows of 1000");
    assert!(before <= 1 + 2 * broken * 10, "{isolating}");
}

const NASTY_TEXTS: [Option<&str>; 11] = [
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
];

fn values_survive_the_batch_statement(db: &Db, speak: Speak) {
    // Given text, timestamp, date, float, boolean and binary columns
    let types = match db {
        Db::Postgres => "ts TIMESTAMP, d DATE, f DOUBLE PRECISION, b BOOLEAN, raw BYTEA",
        Db::MariaDb => "ts DATETIME(6), d DATE, f DOUBLE, b BOOLEAN, raw BLOB",
        Db::Sqlite(_) => "ts TIMESTAMP, d DATE, f REAL, b BOOLEAN, raw BLOB",
    };
    let columns = format!("id INTEGER PRIMARY KEY, t TEXT, {types}");
    let names = ["id", "t", "ts", "d", "f", "b", "raw"];
    let t = target(db, speak, &columns, &names, 500, OnConflict::Error);
    // Values as mapping makes them: converted to each column's kind as the catalog has it.
    let kinds: Vec<SqlKind> = t.plan.columns.iter().map(|c| c.kind).collect();
    let stamp = json!("2024-03-01T01:59:58.123456+02:00");
    let batch: Vec<Row> = NASTY_TEXTS
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let inputs = [
                Input::Int(i as i64),
                Input::Json(&text.map_or(Json::Null, |t| json!(t))),
                Input::Json(if i == 0 { &Json::Null } else { &stamp }),
                Input::Text("2024-02-29"),
                Input::Json(&json!(-1.5e-3)),
                Input::Bool(i % 2 == 0),
                Input::Bytes(&[0, 0xff, b'"', b'\\', i as u8]),
            ];
            let converted = inputs.iter().zip(&kinds);
            converted
                .map(|(input, kind)| Some(convert(*input, *kind).expect("converts")))
                .collect()
        })
        .collect();

    // When they are written as one batch
    let mut writer = Writer::new(&t.conn, &t.plan);
    write_clean(&mut writer, &batch, db.label());
    let label = db.label();
    assert_eq!(writer.statements(), 1, "[{label}] one statement");

    // Then each value reads back as it went in: the text, the timestamp in UTC (none in row
    // 0), the date, the float and the boolean
    let table = &t.table.name;
    let got = db.query(&format!("SELECT t, ts, d, f, b FROM {table} ORDER BY id"));
    // The SQLite driver keeps milliseconds.
    let precise = pick(db, [".123456", ".123456", ".123"]);
    let precise = format!("2024-02-29 23:59:58{precise}");
    let read = |row: &Vec<Option<String>>| {
        let f: f64 = row[3].as_deref().unwrap().parse().unwrap();
        (
            row[0].clone(),
            row[1].as_ref().map(|s| s.starts_with(&precise)),
            row[2].as_ref().is_some_and(|d| d.starts_with("2024-02-29")),
            (f + 1.5e-3).abs() < 1e-12,
            matches!(row[4].as_deref().unwrap(), "1" | "t" | "true"),
        )
    };
    let read: Vec<_> = got.iter().map(read).collect();
    let want: Vec<_> = NASTY_TEXTS
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let stamp = (i > 0).then_some(true);
            (text.map(str::to_owned), stamp, true, true, i % 2 == 0)
        })
        .collect();
    assert_eq!(read, want, "[{label}] {got:?}");
    let hex = pick(db, ["encode(raw, 'hex')", "hex(raw)", "hex(raw)"]);
    let bytes = db.query(&format!("SELECT {hex} FROM {table} WHERE id = 3"));
    let bytes = bytes[0][0].as_deref().map(str::to_ascii_lowercase);
    assert_eq!(bytes.as_deref(), Some("00ff225c03"));
}

fn later_batches_may_carry_longer_values(db: &Db, speak: Speak) {
    // Given a writer kept across batches (its statements prepared and buffers bound once),
    // whose first batch has short values
    let types = match db {
        Db::Postgres => "t TEXT, raw BYTEA",
        Db::MariaDb => "t MEDIUMTEXT, raw MEDIUMBLOB",
        Db::Sqlite(_) => "t TEXT, raw BLOB",
    };
    let columns = format!("id INTEGER PRIMARY KEY, {types}");
    let names = ["id", "t", "raw"];
    let t = target(db, speak, &columns, &names, 3, OnConflict::Error);
    let mut writer = Writer::new(&t.conn, &t.plan);
    let mut batch = |from: i64, len: usize| {
        let rows: Vec<Row> = (from..from + 3)
            .map(|i| {
                let text = Value::Text("é".repeat(len / 2));
                vec![
                    Some(Value::Int(i)),
                    Some(text),
                    Some(Value::Bytes(vec![7; len])),
                ]
            })
            .collect();
        write_clean(&mut writer, &rows, &format!("{len} bytes"));
    };
    batch(0, 2);

    // When later batches carry values thousands of times longer, and then short ones again
    batch(3, 10_000);
    batch(6, 4);

    // Then every value is stored whole, each batch in one statement
    assert_eq!(writer.statements(), 3, "[{}]", db.label());
    let length = pick(db, ["octet_length", "length", "length"]);
    let got = db.query(&format!(
        "SELECT id, {length}(t), {length}(raw) FROM {} ORDER BY id",
        t.table.name
    ));
    let number = |v: &Option<String>| -> i64 { v.as_deref().unwrap().parse().unwrap() };
    let lengths: Vec<(i64, i64)> = got.iter().map(|r| (number(&r[1]), number(&r[2]))).collect();
    // SQLite's length() counts characters of text: two bytes each here.
    let chars = if matches!(db, Db::Sqlite(_)) { 2 } else { 1 };
    let want: Vec<(i64, i64)> = [2, 10_000, 4]
        .iter()
        .flat_map(|&len| std::iter::repeat_n((len / chars, len), 3))
        .collect();
    assert_eq!(lengths, want, "[{}]", db.label());
}

/// Rows (id, v, note) for ids in `ids`, each with the value `v`.
fn versioned(ids: std::ops::Range<i64>, v: i64) -> Vec<Row> {
    ids.map(|i| {
        let text = |t: String| Some(Value::Text(t));
        vec![
            Some(Value::Int(i)),
            text(format!("{v}.5")),
            text(format!("note {v}")),
        ]
    })
    .collect()
}

fn upserts_keep_one_row_per_key(db: &Db, speak: Speak) {
    for rule in [OnConflict::Ignore, OnConflict::Update] {
        // Given a table keyed by id and a route that upserts on it
        let columns = "id INTEGER PRIMARY KEY, v DECIMAL(10,2), note VARCHAR(40)";
        let names = ["id", "v", "note"];
        let t = target(db, speak, columns, &names, 100, rule);
        let mut writer = Writer::new(&t.conn, &t.plan);

        // When ids 0..10 arrive, then ids 5..15 with new values
        let what = format!("[{}] {rule:?}", db.label());
        write_clean(&mut writer, &versioned(0..10, 1), &what);
        write_clean(&mut writer, &versioned(5..15, 2), &what);

        // Then each id is stored once, with the first values kept (ignore) or the last
        // ones (update)
        let sql = format!("SELECT id, v, note FROM {} ORDER BY id", t.table.name);
        let read = |r: Vec<Option<String>>| {
            let text = |i: usize| r[i].clone().unwrap_or_default();
            (text(0), text(1).parse().unwrap_or(f64::NAN), text(2))
        };
        let got: Vec<(String, f64, String)> = db.query(&sql).into_iter().map(read).collect();
        let want: Vec<(String, f64, String)> = (0..15)
            .map(|i| {
                let updated = rule == OnConflict::Update && i >= 5;
                let v = if updated || i >= 10 { 2 } else { 1 };
                (i.to_string(), v as f64 + 0.5, format!("note {v}"))
            })
            .collect();
        assert_eq!(got, want, "{what}");
    }
}

common::cases! {
    rejected_rows_are_found_exactly_postgres:
        rejected_rows_are_found_exactly(&Db::Postgres, Native);
    rejected_rows_are_found_exactly_mariadb:
        rejected_rows_are_found_exactly(&Db::MariaDb, Native);
    rejected_rows_are_found_exactly_sqlite:
        rejected_rows_are_found_exactly(&temp_sqlite(), Native);
    rejected_rows_are_found_exactly_postgres_in_standard_sql:
        rejected_rows_are_found_exactly(&Db::Postgres, Generic);
    values_survive_the_batch_statement_postgres:
        values_survive_the_batch_statement(&Db::Postgres, Native);
    values_survive_the_batch_statement_mariadb:
        values_survive_the_batch_statement(&Db::MariaDb, Native);
    values_survive_the_batch_statement_sqlite:
        values_survive_the_batch_statement(&temp_sqlite(), Native);
    values_survive_the_batch_statement_postgres_in_standard_sql:
        values_survive_the_batch_statement(&Db::Postgres, Generic);
    later_batches_may_carry_longer_values_postgres:
        later_batches_may_carry_longer_values(&Db::Postgres, Native);
    later_batches_may_carry_longer_values_mariadb:
        later_batches_may_carry_longer_values(&Db::MariaDb, Native);
    later_batches_may_carry_longer_values_sqlite:
        later_batches_may_carry_longer_values(&temp_sqlite(), Native);
    later_batches_may_carry_longer_values_postgres_in_standard_sql:
        later_batches_may_carry_longer_values(&Db::Postgres, Generic);
    upserts_keep_one_row_per_key_postgres:
        upserts_keep_one_row_per_key(&Db::Postgres, Native);
    upserts_keep_one_row_per_key_postgres_in_standard_sql:
        upserts_keep_one_row_per_key(&Db::Postgres, Generic);
    upserts_keep_one_row_per_key_mariadb:
        upserts_keep_one_row_per_key(&Db::MariaDb, Native);
    upserts_keep_one_row_per_key_sqlite:
        upserts_keep_one_row_per_key(&temp_sqlite(), Native);
}
