//! Rows → messages: each column type published as JSON and CSV, parsed back and compared
//! with the database's own text of the same value, on PostgreSQL, MariaDB and SQLite. After a
//! short row and one of extremes come values of 4 KiB + 1, 64 KiB + 1 and 1 MiB + 1 bytes
//! (ASCII, `é`, a non-BMP character, binary); a topic built from a long value is whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDateTime;
use serde_json::{Map, Value as Json, json};

use crate::common::{
    Bridge, Config, Db, Received, Route, TempTable, World, base64_decode, dlq_list, mqdb_at,
    temp_sqlite, unique, wait_for,
};

/// Liveness deadline for the messages of one table (1 MiB values take a while in debug).
const DEADLINE: Duration = Duration::from_secs(120);
/// Sizes in bytes of the long values: just past the first buffer, 64 KiB and 1 MiB.
const LONG: [usize; 3] = [4097, 65_537, 1_048_577];

/// How a published value is compared with the database's text of it.
#[derive(Clone, Copy, Debug)]
enum Cmp {
    /// The same text (a JSON number's digits, or a string).
    Same,
    /// The same double (or the same name: NaN, Infinity, -Infinity).
    Float,
    /// Base64 bytes equal to the database's hex.
    Hex,
    /// The same JSON document.
    Json,
    /// The same instant; `utc`: published with `Z`, else without an offset.
    Stamp { utc: bool },
    /// The same time of day, fractional seconds without trailing zeros.
    Time,
    /// A JSON boolean for the database's `true`/`false` (or `t`/`f`).
    Bool,
}

/// One column of the table under test.
struct Col {
    name: &'static str,
    ddl: &'static str,
    /// SQL literals of the first (short) and second (extreme) rows.
    short: &'static str,
    extreme: &'static str,
    /// SQL for the long rows, from the size in bytes; `None`: NULL there.
    long: Option<fn(&Db, usize) -> String>,
    /// SQL text of the column as the database prints it; `{}` is the column.
    expect: &'static str,
    cmp: Cmp,
}

fn col(name: &'static str, ddl: &'static str, short: &'static str, extreme: &'static str) -> Col {
    Col {
        name,
        ddl,
        short,
        extreme,
        long: None,
        expect: "",
        cmp: Cmp::Same,
    }
}

impl Col {
    fn cmp(mut self, cmp: Cmp) -> Col {
        self.cmp = cmp;
        self
    }
    fn expect(mut self, sql: &'static str) -> Col {
        self.expect = sql;
        self
    }
    fn long(mut self, f: fn(&Db, usize) -> String) -> Col {
        self.long = Some(f);
        self
    }
}

/// `n` bytes of text made of `unit` (whose UTF-8 length divides `n - 1`) and one `x`.
fn repeat_sql(db: &Db, unit: &str, n: usize) -> String {
    let count = (n - 1) / unit.len();
    match db {
        Db::Sqlite(_) => format!("replace(hex(zeroblob({count})), '00', '{unit}') || 'x'"),
        Db::Postgres => format!("repeat('{unit}', {count}) || 'x'"),
        Db::MariaDb => format!("CONCAT(REPEAT('{unit}', {count}), 'x')"),
    }
}

fn bytes_sql(db: &Db, n: usize) -> String {
    match db {
        Db::Sqlite(_) => format!("randomblob({n})"),
        Db::Postgres => format!("decode(repeat('00ff', {}) || '7f', 'hex')", n / 2),
        Db::MariaDb => format!("UNHEX(CONCAT(REPEAT('00FF', {}), '7F'))", n / 2),
    }
}

/// The columns each database holds, with what it prints for them.
fn columns(db: &Db) -> Vec<Col> {
    // ASCII, `é` and a non-BMP character
    let text = |name, ddl| {
        let long: fn(&Db, usize) -> String = match name {
            "t_ascii" => |db, n| repeat_sql(db, "a", n),
            "t_accent" => |db, n| repeat_sql(db, "é", n),
            _ => |db, n| repeat_sql(db, "😀", n),
        };
        col(name, ddl, "'plain'", "''").long(long)
    };
    let mut cols = match db {
        Db::Postgres => vec![
            col("i2", "smallint", "-32768", "32767"),
            col("i4", "integer", "-2147483648", "2147483647"),
            col("i8", "bigint", "-9223372036854775808", "9007199254740993"),
            col("i8max", "bigint", "1", "9223372036854775807"),
            col("dec38", "numeric(38,10)", "0.5", "1234567890123456789012345678.0123456789"),
            col("f8", "double precision", "'4.9e-324'", "'-0'").cmp(Cmp::Float),
            col("f8max", "double precision", "'1.7976931348623157e308'", "'NaN'").cmp(Cmp::Float),
            col("f8inf", "double precision", "'Infinity'", "'-Infinity'").cmp(Cmp::Float),
            col("decnan", "numeric", "'NaN'", "-0.000000000000000000000000000000000001"),
            col("f4", "real", "0.1", "'3.4028235e38'").cmp(Cmp::Float),
            col("ok", "boolean", "true", "false").cmp(Cmp::Bool),
            col("d", "date", "'2024-02-29'", "'0001-01-01'"),
            col("tm", "time", "'12:00:00.5'", "'23:59:59.999999'").cmp(Cmp::Time),
            col("ts", "timestamp", "'2024-05-01 12:00:00.123456'", "'1970-01-01 00:00:00'")
                .expect("to_char({}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
                .cmp(Cmp::Stamp { utc: false }),
            col("tz", "timestamptz", "'2024-05-01 12:00:00.5+02'", "'2000-01-01 00:00:00Z'")
                .expect("to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
                .cmp(Cmp::Stamp { utc: true }),
            col("js", "json", "'{\"b\": [1, 2.50], \"a\": null}'", "'\"s\"'").cmp(Cmp::Json),
            col("jb", "jsonb", "'{\"k\": 12345678901234567890}'", "'[]'").cmp(Cmp::Json),
            col(
                "u",
                "uuid",
                "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
                "'00000000-0000-0000-0000-000000000000'",
            ),
            text("t_ascii", "text"),
            text("t_accent", "text"),
            text("t_astral", "text"),
            col("bin", "bytea", "'\\x00ff'", "''")
                .long(bytes_sql)
                .expect("encode({}, 'hex')")
                .cmp(Cmp::Hex),
        ],
        Db::MariaDb => vec![
            col("i1", "tinyint", "-128", "127"),
            col("i2", "smallint", "-32768", "32767"),
            col("i4", "int", "-2147483648", "2147483647"),
            col("i8", "bigint", "-9223372036854775808", "9007199254740993"),
            col("u8", "bigint unsigned", "0", "18446744073709551615"),
            col("dec38", "decimal(38,10)", "0.5", "1234567890123456789012345678.0123456789"),
            col("f8", "double", "2.2250738585072014e-308", "-0e0").cmp(Cmp::Float),
            col("f4", "float", "0.1", "-3.40282e38").cmp(Cmp::Float),
            col("f8max", "double", "1.7976931348623157e308", "1.5e300").cmp(Cmp::Float),
            col("ok", "boolean", "1", "0").cmp(Cmp::Bool),
            col("d", "date", "'2024-02-29'", "'1000-01-01'"),
            col("tm", "time(6)", "'12:00:00.5'", "'23:59:59.999999'").cmp(Cmp::Time),
            col("ts", "datetime(6)", "'2024-05-01 12:00:00.123456'", "'1970-01-01 00:00:00'")
                .expect("DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%s.%f')")
                .cmp(Cmp::Stamp { utc: false }),
            col("tz", "timestamp(6) NULL", "'2024-05-01 12:00:00.5'", "'2000-01-01 00:00:01'")
                .expect("DATE_FORMAT(CONVERT_TZ({}, @@session.time_zone, '+00:00'), '%Y-%m-%dT%H:%i:%s.%f')")
                .cmp(Cmp::Stamp { utc: true }),
            text("t_ascii", "mediumtext"),
            text("t_accent", "mediumtext"),
            text("t_astral", "mediumtext"),
            col("bin", "mediumblob", "x'00ff'", "''")
                .long(bytes_sql)
                .expect("HEX({})")
                .cmp(Cmp::Hex),
        ],
        Db::Sqlite(_) => vec![
            col("i8", "INTEGER", "-9223372036854775808", "9007199254740993"),
            col("i8max", "BIGINT", "1", "9223372036854775807"),
            col("f8", "REAL", "1.5", "-2.5e-300").cmp(Cmp::Float),
            col("f8inf", "REAL", "9e999", "-9e999").cmp(Cmp::Float),
            col("ok", "BOOLEAN", "1", "0").cmp(Cmp::Bool),
            col("d", "DATE", "'2024-02-29'", "'0001-01-01'"),
            col("ts", "TIMESTAMP", "'2024-05-01 12:00:00.123456'", "'1970-01-01T00:00:00'")
                .cmp(Cmp::Stamp { utc: true }),
            col("js", "JSON", "'{\"b\": [1, 2.50], \"a\": null}'", "'[]'").cmp(Cmp::Json),
            text("t_ascii", "TEXT"),
            text("t_accent", "TEXT"),
            text("t_astral", "TEXT"),
            col("bin", "BLOB", "x'00ff'", "x''")
                .long(bytes_sql)
                .expect("CASE WHEN {} IS NULL THEN NULL ELSE hex({}) END")
                .cmp(Cmp::Hex),
        ],
    };
    for c in &mut cols {
        if c.expect.is_empty() {
            c.expect = text_expect(db);
        }
    }
    cols
}

fn text_expect(db: &Db) -> &'static str {
    match db {
        Db::Postgres => "{}::text",
        Db::MariaDb => "CAST({} AS CHAR)",
        Db::Sqlite(_) => "CAST({} AS TEXT)",
    }
}

/// The rows: short first, then extremes, then one per long size, then all NULL.
fn insert_rows(db: &Db, table: &str, cols: &[Col]) -> usize {
    let names: Vec<&str> = cols.iter().map(|c| c.name).collect();
    let literal = |c: &Col, row: usize| match row {
        0 => c.short.to_string(),
        1 => c.extreme.to_string(),
        2..=4 => c.long.map_or("NULL".into(), |f| f(db, LONG[row - 2])),
        _ => "NULL".to_string(),
    };
    let rows = 2 + LONG.len() + 1;
    for i in 0..rows {
        let values: Vec<String> = cols.iter().map(|c| literal(c, i)).collect();
        let tag = match i {
            3 => repeat_sql(db, "é", 5001),
            _ => format!("'tag{i}'"),
        };
        db.exec(&format!(
            "INSERT INTO {table} (id, tag, {}) VALUES ({}, {tag}, {})",
            names.join(", "),
            i + 1,
            values.join(", ")
        ));
    }
    rows
}

/// One outbound route: name, query, topic, format.
type Out<'a> = (&'a str, String, String, &'a str);

fn config(world: &World, db: &Db, routes: &[Out<'_>]) -> PathBuf {
    let route = |(name, query, topic, format): &Out<'_>| {
        let route = Route::outbound(name, query).track("id", 0);
        let route = route.interval("100ms").broker("b").qos(1);
        route.topic(topic).format(format)
    };
    let config = world.config(db);
    let config = routes.iter().map(route).fold(config, Config::outbound);
    config.write()
}

/// What the database prints for each row: `id` first, then each column.
fn expected(db: &Db, table: &str, cols: &[Col]) -> Vec<Vec<Option<String>>> {
    let expr = |c: &Col| c.expect.replace("{}", c.name);
    let exprs: Vec<String> = cols.iter().map(expr).collect();
    let exprs = exprs.join(", ");
    db.query(&format!("SELECT {exprs} FROM {table} ORDER BY id"))
}

fn values_arrive_exactly(db: &Db) {
    let world = World::new("fid-out");
    let cols = columns(db);
    let ddl = |c: &Col| format!("{} {}", c.name, c.ddl);
    let ddl: Vec<String> = cols.iter().map(ddl).collect();
    let tag_type = match db {
        Db::MariaDb => "mediumtext",
        _ => "text",
    };
    let columns = format!("id integer PRIMARY KEY, tag {tag_type}, {}", ddl.join(", "));
    let table = TempTable::create(db, "fid_out", &columns);
    let rows = insert_rows(db, &table.name, &cols);
    let want = expected(db, &table.name, &cols);
    let base = unique("fid");
    let json_sub = world.subscribe(&format!("{base}/json"));
    let csv_sub = world.subscribe(&format!("{base}/csv"));
    let tag_sub = world.subscribe(&format!("{base}/tag/#"));
    let t = &table.name;
    let all = format!("SELECT * FROM {t} WHERE id > ? ORDER BY id");
    let tags = format!("SELECT id, tag FROM {t} WHERE id > ? ORDER BY id");
    let routes = [
        ("as_json", all.clone(), format!("{base}/json"), "json"),
        ("as_csv", all, format!("{base}/csv"), "csv"),
        ("as_topic", tags, format!("{base}/tag/{{tag}}"), "json"),
    ];
    let config = config(&world, db, &routes);
    let bridge = Bridge::start(&config);

    let json = json_sub.wait_for(rows, DEADLINE);
    let csv = csv_sub.wait_for(rows, DEADLINE);
    let tags = tag_sub.wait_for(rows, DEADLINE);
    let (label, letters) = (db.label(), dlq_list(&config));
    assert!(letters.is_empty(), "[{label}] dead letters: {letters:?}");
    let mut wrong = Vec::new();
    for (format, messages) in [("json", &json), ("csv", &csv)] {
        for (r, (message, expected)) in messages.iter().zip(&want).enumerate() {
            let got = published(db, r, format, message, &cols);
            for ((c, got), expected) in cols.iter().zip(got).zip(expected) {
                // CSV writes NULL as an empty field.
                let not_null = |e: &&str| format == "json" || !e.is_empty();
                let expected = expected.as_deref().filter(not_null);
                if let Err(e) = same(c, format, got, expected) {
                    wrong.push(format!("{format} row {} column {}: {e}", r + 1, c.name));
                }
            }
        }
    }
    let changed = format!("[{label}] {} values changed", wrong.len());
    assert!(wrong.is_empty(), "{changed}:\n{}", wrong.join("\n"));
    let long_topic = format!("{base}/tag/{}x", "é".repeat(2500));
    let lengths: Vec<usize> = tags.iter().map(|m| m.topic.len()).collect();
    let no_long = "no message on the topic built from the 5001-byte value; topic lengths";
    let found = tags.iter().any(|m| m.topic == long_topic);
    assert!(found, "[{label}] {no_long}: {lengths:?}");
    drop(bridge);
}

/// Each column's value in `m` (row `r`), as JSON or as CSV text; `None` for NULL.
fn published(db: &Db, r: usize, format: &str, m: &Received, cols: &[Col]) -> Vec<Option<Json>> {
    let fail = |what: String| -> ! { panic!("[{}] row {r}: {what}", db.label()) };
    if format == "json" {
        let object: Map<String, Json> = serde_json::from_slice(&m.payload).expect("a JSON object");
        let value = |c: &Col| match object.get(c.name) {
            Some(Json::Null) => None,
            Some(other) => Some(other.clone()),
            None => fail(format!("no key {}", c.name)),
        };
        return cols.iter().map(value).collect();
    }
    let mut builder = csv::ReaderBuilder::new();
    let mut reader = builder.has_headers(false).from_reader(m.payload.as_slice());
    let record = reader.records().next().expect("one CSV record");
    let record = record.unwrap_or_else(|e| fail(format!("not CSV: {e}")));
    // The CSV row has id and tag first, as in the table.
    let field = |i: usize| record.get(i + 2).expect("a field per column");
    let value = |i| (!field(i).is_empty()).then(|| Json::String(field(i).to_string()));
    (0..cols.len()).map(value).collect()
}

/// Compares one published value with the database's text of it.
fn same(c: &Col, format: &str, got: Option<Json>, want: Option<&str>) -> Result<(), String> {
    let (Some(got), Some(want)) = (&got, want) else {
        return if got.is_none() == want.is_none() {
            Ok(())
        } else {
            Err(format!("published {got:?}, stored {want:?}"))
        };
    };
    let text = match got {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    let equal = match c.cmp {
        Cmp::Same => text == want,
        Cmp::Float => match (float(&text), float(want)) {
            // One text for both formats: the names JSON cannot hold are strings.
            (Some(a), Some(b)) => {
                (a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()))
                    && (a.is_finite() || matches!(got, Json::String(_)))
            }
            _ => false,
        },
        Cmp::Hex => crate::hex(&base64_decode(&text)).eq_ignore_ascii_case(want),
        Cmp::Json => {
            let published = match got {
                Json::String(s) if format == "csv" => {
                    serde_json::from_str(s).map_err(|e| format!("{s} is not JSON: {e}"))?
                }
                // Nested, not a string holding the document.
                other => other.clone(),
            };
            published == serde_json::from_str::<Json>(want).expect("stored JSON")
        }
        Cmp::Stamp { utc } => {
            let bare = text.strip_suffix('Z');
            bare.is_some() == utc && stamp(bare.unwrap_or(&text)) == stamp(want)
        }
        Cmp::Time => text == crate::trim_fraction(want),
        Cmp::Bool => text == matches!(want, "true" | "t" | "1").to_string(),
    };
    if equal {
        return Ok(());
    }
    let shown = |t: &str| match t.len() {
        len if len > 60 => format!("{}… ({len} bytes)", t.chars().take(20).collect::<String>()),
        _ => t.to_string(),
    };
    Err(format!(
        "published {}, stored {}",
        shown(&text),
        shown(want)
    ))
}

fn float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" | "Inf" => Some(f64::INFINITY),
        "-Infinity" | "-Inf" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

fn stamp(text: &str) -> Option<NaiveDateTime> {
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
}

/// Publishes every row (`values`, SQL value lists) of a new table with `columns` as JSON;
/// once each has been published or dead-lettered, runs `then` with the config while the
/// bridge still runs, and returns the messages and the dead letters.
fn publish_json(
    db: &Db,
    columns: &str,
    values: &str,
    then: impl FnOnce(&Path),
) -> (Vec<Map<String, Json>>, Vec<Json>) {
    let table = TempTable::create(db, "fid_out", columns);
    let t = &table.name;
    db.exec(&format!("INSERT INTO {t} VALUES {values}"));
    let rows = table.count() as usize;
    let world = World::new("fid-out");
    let topic = unique("fid");
    let sub = world.subscribe(&topic);
    let query = format!("SELECT * FROM {t} WHERE id > ? ORDER BY id");
    let config = config(&world, db, &[("rows", query, topic, "json")]);
    let mut bridge = Bridge::start(&config);
    let mut letters = Vec::new();
    wait_for(&mut bridge, "every row published or dead-lettered", || {
        letters = dlq_list(&config);
        Ok(sub.count() + letters.len() >= rows)
    });
    let object = |m: &Received| serde_json::from_slice(&m.payload).expect("a JSON object");
    let messages = sub.messages().iter().map(object).collect();
    then(&config);
    (messages, letters)
}

fn reasons(letters: &[Json]) -> Vec<String> {
    let reason = |l: &Json| l["error"].as_str().unwrap_or_default().to_string();
    letters.iter().map(reason).collect()
}

/// Asserts there is one dead letter per entry of `want`, in order, and that its `error`
/// contains each of the entry's needles.
fn assert_reasons(letters: &[Json], want: &[&[&str]], context: &str) {
    let errors = reasons(letters);
    let context = format!("dead letters: {errors:?}; {context}");
    assert_eq!(errors.len(), want.len(), "{context}");
    for (error, needles) in errors.iter().zip(want) {
        assert!(needles.iter().all(|n| error.contains(n)), "{errors:?}");
    }
}

/// psqlODBC reports `infinity` as 9999-12-31 23:59:59 and both date infinities as
/// 0000-00-00: such rows become dead letters naming the value, never a wrong date, and the
/// rows after them are published.
#[test]
fn postgres_infinities_the_driver_cannot_tell_apart_are_dead_letters() {
    let mut replayed = None;
    let (messages, letters) = publish_json(
        &Db::Postgres,
        "id integer PRIMARY KEY, tz timestamptz, d date, f float8",
        "(1, 'infinity', '2024-01-01', 1), (2, '2024-01-01Z', '-infinity', 2), \
         (3, '-infinity', NULL, 3), (4, '2024-05-01 12:00:00+02', '2024-01-02', 'NaN')",
        |config| {
            let ran = mqdb_at(config, &["dlq", "replay", "--all"]);
            replayed = Some((ran.code == Some(0), dlq_list(config)));
        },
    );
    // A replay publishes nothing for them: the stored payload lacks the value.
    let (replay_ok, after) = replayed.expect("replayed");
    let replayed = "replaying a row whose value cannot be published succeeded";
    assert!(!replay_ok, "{replayed}");
    let retried = |l: &Json| l["attempts"] == 2 && l["error_kind"] == "value";
    assert!(after.len() == 3 && after.iter().all(retried), "{after:?}");
    let needles: [&[&str]; 3] = [
        &["column tz", "infinity"],
        &["column d", "infinity"],
        &["column tz"],
    ];
    assert_reasons(&letters, &needles, &format!("published: {messages:?}"));
    let of_value = |l: &Json| l["error_kind"] == "value";
    assert!(letters.iter().all(of_value), "{letters:?}");
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["tz"], "2024-05-01T10:00:00Z");
    assert_eq!(messages[0]["f"], "NaN");
}

/// MariaDB's `BOOLEAN` is `TINYINT(1)`: its 0 and 1 are published as `false` and `true`,
/// like PostgreSQL's booleans, also through a query's alias; a plain `TINYINT` stays a
/// number, and a `BOOLEAN` holding another value is a dead letter naming it, never `true`.
#[test]
fn mariadb_booleans_are_booleans_and_other_values_dead_letters() {
    let (messages, letters) = publish_json(
        &Db::MariaDb,
        "id INTEGER PRIMARY KEY, ok BOOLEAN, n TINYINT",
        "(1, TRUE, 1), (2, FALSE, 0), (3, 5, 5), (4, NULL, -128)",
        |_| {},
    );
    let got: Vec<Json> = messages.iter().map(|m| json!([m["ok"], m["n"]])).collect();
    let want = [json!([true, 1]), json!([false, 0]), json!([null, -128])];
    assert_eq!(got, want);
    assert_reasons(&letters, &[&["column ok", "5"]], "");
}

/// SQLite keeps a type per value: a value that does not fit its column's declared type is
/// published as stored, a timestamp text with an offset as the same instant in UTC (one
/// without an offset is taken as UTC), and BLOBs as base64 bytes.
#[test]
fn sqlite_values_keep_the_type_they_were_stored_with() {
    let (messages, letters) = publish_json(
        &temp_sqlite(),
        "id INTEGER PRIMARY KEY, n NUMERIC, i INTEGER, d DATE, ts TIMESTAMP, b BLOB, r REAL",
        "(1, 'abc', 'notint', 'garbage', '2024-05-01T12:00:00+02:00', x'00FF', 'str'), \
         (2, 12, 7, '2024-01-01', '2024-05-01 10:00:00.25', 'text', 1.5)",
        |_| {},
    );
    assert!(letters.is_empty(), "{:?}", reasons(&letters));
    let want = [
        json!({"id": 1, "n": "abc", "i": "notint", "d": "garbage",
            "ts": "2024-05-01T10:00:00Z", "b": "AP8=", "r": "str"}),
        json!({"id": 2, "n": 12, "i": 7, "d": "2024-01-01",
            "ts": "2024-05-01T10:00:00.25Z", "b": "dGV4dA==", "r": 1.5}),
    ];
    let got: Vec<Json> = messages.into_iter().map(Json::Object).collect();
    assert_eq!(got, want);
}

/// A value larger than the most a poll reads (64 MiB) makes its row a dead letter naming the
/// column, never a cut value; the rows around it are published whole.
fn too_large_values_are_dead_letters(db: &Db) {
    let n = (64 << 20) + 1;
    let (blob, big) = match db {
        Db::Postgres => ("bytea", format!("decode(repeat('ab', {n}), 'hex')")),
        _ => ("BLOB", format!("zeroblob({n})")),
    };
    let short = bytes_sql(db, 4097);
    let columns = format!("id integer PRIMARY KEY, b {blob}");
    let values = format!("(1, {short}), (2, {big}), (3, {short})");
    let (messages, letters) = publish_json(db, &columns, &values, |_| {});
    assert_reasons(&letters, &[&["column b", "64 MiB"]], "");
    let size = |m: &Map<String, Json>| {
        let id = m["id"].as_i64().expect("an id");
        (id, base64_decode(m["b"].as_str().expect("base64")).len())
    };
    let published: Vec<(i64, usize)> = messages.iter().map(size).collect();
    assert_eq!(published, [(1, 4097), (3, 4097)]);
}

crate::common::cases! {
    postgres_too_large_values_are_dead_letters: too_large_values_are_dead_letters(&Db::Postgres);
    sqlite_too_large_values_are_dead_letters: too_large_values_are_dead_letters(&temp_sqlite());
    postgres_values_arrive_exactly: values_arrive_exactly(&Db::Postgres);
    mariadb_values_arrive_exactly: values_arrive_exactly(&Db::MariaDb);
    sqlite_values_arrive_exactly: values_arrive_exactly(&temp_sqlite());
}
