//! Messages → rows: each value into each column type, compared with what the database holds.
//!
//! [`matrix`] sends every case through the real path (the `mqdb` binary, a private Mosquitto
//! speaking MQTT 5, and RabbitMQ for AMQP headers) into one table of the database under
//! test, then reads each column back with the database's own text cast (hex for text and
//! binary, so that every byte counts). Each case names its outcome per database: the value
//! exactly, or a dead letter whose reason names the value's problem. A changed value, a
//! missing row or an unexpected dead letter fails the test.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value as Json, json};

use crate::common::{
    Bridge, Db, Header, Rabbit, Route, TempTable, World, dlq_list, pairs, settings, temp_sqlite,
    unique, wait_for, with_mqtt5,
};

/// What a case must end in.
#[derive(Debug, Clone)]
enum Outcome {
    /// Stored; the column read back equals this (compared by the column's family).
    Stored(String),
    /// Stored as SQL NULL.
    Null,
    /// A dead letter of mqdb's own (error kind `convert` or `decode`) whose reason
    /// contains this.
    Dead(&'static str),
    /// A dead letter for a row the database refused, whose reason contains this.
    Refused(&'static str),
}

use Outcome::{Dead, Null, Refused, Stored};

/// How a column is read back and compared.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Family {
    Int,
    Decimal,
    Float,
    Bool,
    /// Read as hex of its UTF-8 bytes.
    Text,
    /// Read as hex.
    Binary,
    Date,
    Time,
    Timestamp,
    /// A timestamp with a time zone, read in UTC.
    TimestampTz,
    Json,
    Uuid,
}

/// A column of the fidelity table: name, family, SQL type.
type Column = (&'static str, Family, &'static str);

/// The columns of the fidelity table on `db`.
fn columns(db: &Db) -> Vec<Column> {
    let pick = |pg, my, lite| by(db, pg, my, lite);
    let dec = pick("NUMERIC(38,10)", "DECIMAL(38,10)", "DECIMAL(38,10)");
    let f64 = pick("DOUBLE PRECISION", "DOUBLE", "DOUBLE");
    let ts = pick("TIMESTAMP(6)", "DATETIME(6)", "TIMESTAMP");
    let ts0 = pick("TIMESTAMP(0)", "DATETIME", "TIMESTAMP");
    let tz = pick("TIMESTAMPTZ", "TIMESTAMP(6) NULL", "TIMESTAMP");
    vec![
        ("i16", Family::Int, "SMALLINT"),
        ("i32", Family::Int, "INTEGER"),
        ("i64", Family::Int, "BIGINT"),
        ("dec", Family::Decimal, dec),
        ("f64", Family::Float, f64),
        ("b", Family::Bool, "BOOLEAN"),
        ("t", Family::Text, pick("TEXT", "LONGTEXT", "TEXT")),
        ("bin", Family::Binary, pick("BYTEA", "LONGBLOB", "BLOB")),
        ("d", Family::Date, "DATE"),
        ("tm", Family::Time, pick("TIME(6)", "TIME(6)", "TIME")),
        ("ts", Family::Timestamp, ts),
        ("ts0", Family::Timestamp, ts0),
        ("tz", Family::TimestampTz, tz),
        ("j", Family::Json, pick("JSONB", "JSON", "TEXT")),
        ("u", Family::Uuid, pick("UUID", "UUID", "TEXT")),
        ("ÜberTemp", Family::Int, "INTEGER"),
    ]
}

fn quote(db: &Db, name: &str) -> String {
    let q = by(db, '"', '`', '"');
    format!("{q}{name}{q}")
}

/// The column as text the way the database itself prints it.
fn read_expr(db: &Db, name: &str, family: Family) -> String {
    let c = quote(db, name);
    match (db, family) {
        (Db::Postgres, Family::Text) => format!("encode(convert_to({c}, 'UTF8'), 'hex')"),
        (Db::Postgres, Family::Binary) => format!("encode({c}, 'hex')"),
        (Db::Postgres, Family::TimestampTz) => format!("({c} AT TIME ZONE 'UTC')::text"),
        (Db::MariaDb, Family::TimestampTz) => {
            format!("CAST(CONVERT_TZ({c}, @@session.time_zone, '+00:00') AS CHAR)")
        }
        (Db::Postgres, _) => format!("{c}::text"),
        // SQLite's HEX(NULL) is '', not NULL.
        (_, Family::Text | Family::Binary) => {
            format!("CASE WHEN {c} IS NULL THEN NULL ELSE HEX({c}) END")
        }
        (Db::Sqlite(_), Family::Float) => format!("printf('%!.17g', {c})"),
        (Db::MariaDb, _) => format!("CAST({c} AS CHAR)"),
        (Db::Sqlite(_), _) => format!("CAST({c} AS TEXT)"),
    }
}

/// One value sent: its row id, the column it targets, and what must come of it.
struct Case {
    id: i64,
    column: &'static str,
    /// What was sent, for messages.
    sent: String,
    outcome: Outcome,
}

impl Case {
    fn new(id: i64, column: &'static str, sent: impl Into<String>, outcome: Outcome) -> Case {
        let sent = sent.into();
        Case {
            id,
            column,
            sent,
            outcome,
        }
    }
}

/// The per-database choice: PostgreSQL, MariaDB, SQLite.
fn by<T>(db: &Db, pg: T, my: T, lite: T) -> T {
    match db {
        Db::Postgres => pg,
        Db::MariaDb => my,
        Db::Sqlite(_) => lite,
    }
}

fn s(v: &str) -> Outcome {
    Stored(v.to_string())
}

/// A value whose JSON text is also what the column holds.
fn same_text(column: &'static str, v: &str) -> (&'static str, String, Outcome) {
    (column, v.into(), s(v))
}

/// A JSON string whose content is what the column holds.
fn same_string(column: &'static str, v: &str) -> (&'static str, String, Outcome) {
    (column, json!(v).to_string(), s(v))
}

/// JSON values (as JSON text) per column, with their outcome on `db`.
fn json_cases(db: &Db) -> Vec<(&'static str, String, Outcome)> {
    let beyond_width = |v: &str| by(db, Refused("out of range"), Refused("Out of range"), s(v));
    let refused = |c: &'static str, v: &str| (c, v.to_string(), beyond_width(v));
    let case = |c: &'static str, v: &str, outcome: Outcome| (c, v.to_string(), outcome);
    let long = |n: usize, c: char| same_string("t", &c.to_string().repeat(n));
    let nul = by(db, Dead("NUL character"), s("a\u{0}b"), s("a\u{0}b"));
    // What only SQLite stores, and what SQLite alone does not.
    let only_sqlite = |v: &str, why| by(db, Dead(why), Dead(why), s(v));
    let not_sqlite = |v: &str, why| by(db, s(v), s(v), Dead(why));
    let digits = "1234567890123456789012345678.1234567890";
    let long_decimal = not_sqlite(digits, "15 significant digits");
    let more_digits = only_sqlite("0.12345678901", "more digits after the point");
    let rounds = only_sqlite("2024-05-01 12:00:00.5", "digits of a second");
    let micros_in_utc = s("2024-05-01 10:00:00.123456");
    let tz_in_utc = s("2024-05-01 06:30:00.654321");
    let too_fine = Dead("finer than a microsecond");
    vec![
        same_text("i16", "32767"),
        same_text("i16", "-32768"),
        refused("i16", "32768"),
        refused("i16", "-32769"),
        same_text("i32", "2147483647"),
        same_text("i32", "-2147483648"),
        refused("i32", "2147483648"),
        same_text("i64", "9223372036854775807"),
        same_text("i64", "-9223372036854775808"),
        case("i64", "9223372036854775808", Dead("out of range")),
        same_text("i64", "9007199254740993"),
        case("i64", "12345678901234567.0", s("12345678901234567")),
        case("i64", "1.2345678901234567e16", s("12345678901234567")),
        case("i64", "12345678901234567.5", Dead("fractional part")),
        case("i64", "9100000000000000001.5", Dead("fractional part")),
        case("i64", "3.5", Dead("fractional part")),
        case("i64", "\"-42\"", s("-42")),
        case("i64", "\"4.0e1\"", s("40")),
        case("i64", "true", s("1")),
        case("i64", "null", Null),
        case("i64", "\"x\"", Dead("not an integer")),
        case("dec", digits, long_decimal),
        same_text("dec", "-0.0000000001"),
        case("dec", "0.12345678901", more_digits),
        case("dec", "1.50000000000000", s("1.5")),
        case("dec", "\"12.5\"", s("12.5")),
        case("dec", "\"1.2.3\"", Dead("not a decimal")),
        same_text("f64", "5e-324"),
        case("f64", "-0.0", by(db, s("-0"), s("0"), s("0"))),
        same_text("f64", "1.7976931348623157e308"),
        same_text("f64", "0.1"),
        case("f64", "1e309", Dead("out of range")),
        case("f64", "\"NaN\"", Dead("not a number")),
        same_text("b", "true"),
        same_text("b", "false"),
        case("b", "1", s("true")),
        // MariaDB's BOOLEAN is TINYINT(1), told apart by its catalog: a boolean column.
        case("b", "\"off\"", s("false")),
        case("b", "2", Dead("not a boolean")),
        same_string("t", "short"),
        same_string("t", ""),
        case("t", "null", Null),
        long(4097, 'x'),
        long(65537, 'y'),
        long(3000, 'é'),
        case("t", "\"日本語 😀 \\ud83d\\ude00\"", s("日本語 😀 😀")),
        case("t", "\"a\\u0000b\"", nul),
        same_text("t", "12.50"),
        case("bin", "\"AP8Q\"", s("00ff10")),
        case("bin", "\"AP8QAA==\"", s("00ff1000")),
        case("bin", "\"AP8QAA\"", s("00ff1000")),
        case("bin", "\"\"", s("")),
        case("bin", "\"not base64!\"", Dead("not base64")),
        case("bin", "17", Dead("base64 strings")),
        same_string("d", "2024-05-01"),
        case("d", "\"2024-05-01T23:30:00-05:00\"", s("2024-05-01")),
        case("d", "\"2024-02-30\"", Dead("not a date")),
        same_string("tm", "07:30:00"),
        same_string("tm", "23:59:59.123456"),
        case("tm", "\"23:59:60\"", Dead("leap second")),
        case("ts", "\"2024-05-01T12:00:00.123456+02:00\"", micros_in_utc),
        same_string("ts", "2024-05-01 12:00:00"),
        case("ts", "1714564800.25", s("2024-05-01 12:00:00.25")),
        case("ts", "\"2016-12-31T23:59:60Z\"", Dead("leap second")),
        case("ts", "\"2024-05-01T12:00:00.1234567Z\"", too_fine),
        case("tz", "\"2024-05-01T01:30:00.654321-05:00\"", tz_in_utc),
        case("tz", "\"2024-12-31T23:59:60+01:00\"", Dead("leap second")),
        // A column declared with fewer digits of a second would round.
        case("ts0", "\"2024-05-01T12:00:00.5Z\"", rounds),
        case("ts0", "\"2024-05-01T12:00:00Z\"", s("2024-05-01 12:00:00")),
        same_string("t", "2016-12-31T23:59:60Z"),
        same_text("j", r#"{"a": [1, 2.50, "x"], "b": null}"#),
        same_string("u", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        // Mapped by column name: the payload's key differs from the column's only in case.
        same_text("ÜberTemp", "7"),
    ]
}

/// The whole inbound matrix on one database; `extra` is added to its `databases:` entry
/// (e.g. `dialect: generic`).
pub fn matrix(db: &Db, extra: &[&str]) {
    let world = World::new("fid-in");
    let cols = columns(db);
    let def = |(n, _, t): &Column| format!("{} {t}", quote(db, n));
    let defs: Vec<String> = cols.iter().map(def).collect();
    let defs = format!("id BIGINT PRIMARY KEY, {}", defs.join(", "));
    let table = TempTable::create(db, "fid_in", &defs);
    let topic = unique("fidelity");
    let queue = unique("fid_q");
    let mut rabbit = Rabbit::connect();
    rabbit.declare_queue(&queue);
    let config = config(&world, db, extra, &table.name, &topic, &queue);
    prepare_session(world.broker.port, &world.client_id, &format!("{topic}/#"));
    let mut bridge = Bridge::start(&config);

    let mut cases = Vec::new();
    let mut messages = Vec::new();
    for (i, (column, value, outcome)) in json_cases(db).into_iter().enumerate() {
        let id = 1 + i as i64;
        // Every key in lower case: `übertemp` for the column `ÜberTemp`.
        let key = json!(column.to_lowercase());
        let payload = format!("{{\"id\": {id}, {key}: {value}}}");
        messages.push((format!("{topic}/json"), payload.clone().into(), vec![]));
        cases.push(Case::new(id, column, payload, outcome));
    }
    csv_cases(db, &topic, &mut cases, &mut messages);
    user_property_cases(&topic, &mut cases, &mut messages);
    header_cases(db, &rabbit, &queue, &mut cases);
    payload_cases(&topic, &mut cases, &mut messages);
    publish_v5(world.broker.port, messages);

    let count = format!("SELECT COUNT(*) FROM {}", table.name);
    // A row may carry several cases (one per column).
    let ids: std::collections::BTreeSet<i64> = cases.iter().map(|c| c.id).collect();
    let total = ids.len();
    wait_for(&mut bridge, "every case stored or dead-lettered", || {
        let rows = db.try_query(&count).map_err(|e| e.to_string())?;
        let stored: usize = rows[0][0].as_deref().unwrap_or("0").parse().unwrap_or(0);
        Ok(stored + dlq_list(&config).len() >= total)
    });
    let mut stored = read_back(db, &table.name, &cols);
    if let Db::Sqlite(_) = db {
        compare_sqlite_floats_in_sql(db, &table.name, &cases, &mut stored);
    }
    let dead = dead_letters(&config);
    let label = db.label();
    let mut failures = Vec::new();
    let repeated = dead.get(&3003).map(|d| d.2["headers"]["n"].clone());
    if repeated != Some(json!(["1.5", "2"])) {
        let keeps = "the dead letter of a repeated user property keeps every value";
        failures.push(format!("[{label}] {keeps}: {repeated:?}"));
    }
    for case in &cases {
        if let Err(e) = check(case, &cols, &stored, &dead) {
            let (id, column, sent) = (case.id, case.column, shorten(&case.sent));
            failures.push(format!("[{label}] id {id} ({column}): {e}; sent {sent}"));
        }
    }
    let (rows, letters) = (stored.len(), dead.len());
    let counts = format!("[{label}] {rows} rows + {letters} dead letters for {total} cases");
    assert!(rows + letters == total, "{counts}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn shorten(s: &str) -> String {
    s.chars().take(120).collect()
}

/// CSV fields: the same rules as JSON strings, one record per line, a bad record alone.
fn csv_cases(db: &Db, topic: &str, cases: &mut Vec<Case>, messages: &mut Vec<Outgoing>) {
    let decimal = "-12345678901234.5678901234";
    let long_decimal = by(db, s(decimal), s(decimal), Dead("15 significant digits"));
    let lines: Vec<(i64, &'static str, &str, Outcome)> = vec![
        (1001, "i64", "12345678901234567.0", s("12345678901234567")),
        (1002, "i64", "12345678901234567.5", Dead("fractional part")),
        (1003, "bin", "AP8Q", s("00ff10")),
        (1004, "bin", "AP8Q*", Dead("not base64")),
        (1005, "dec", decimal, long_decimal),
        (1006, "d", "2024-05-01T23:30:00-05:00", s("2024-05-01")),
        (1007, "ts", "2016-12-31T23:59:60Z", Dead("leap second")),
    ];
    for field in ["i64", "bin", "dec", "d", "ts"] {
        let mut payload = String::new();
        for (id, column, value, outcome) in lines.iter().filter(|l| l.1 == field) {
            let line = format!("{id},{value}");
            payload.push_str(&format!("{line}\n"));
            cases.push(Case::new(*id, column, line, outcome.clone()));
        }
        messages.push((format!("{topic}/csv/{field}"), payload.into_bytes(), vec![]));
    }
}

/// MQTT 5 user properties: a repeated name maps its first value, and a dead letter keeps
/// every value.
fn user_property_cases(topic: &str, cases: &mut Vec<Case>, messages: &mut Vec<Outgoing>) {
    let mut add = |id: i64, column, properties: &[(&str, &str)], outcome| {
        let payload = format!("{{\"id\": {id}}}");
        let pair = |(k, v): &(&str, &str)| (k.to_string(), v.to_string());
        let properties = properties.iter().map(pair).collect();
        let message = (format!("{topic}/props"), payload.clone().into(), properties);
        messages.push(message);
        cases.push(Case::new(id, column, payload, outcome));
    };
    // Mapped as header.T: no property has that exact name; `t` matches ignoring case.
    add(3001, "t", &[("t", "first"), ("t", "second")], s("first"));
    // No 3002: MQTT strings cannot carry U+0000 (MQTT 5 §1.5.4), brokers drop the client.
    let repeated = [("t", "x"), ("n", "1.5"), ("n", "2")];
    add(3003, "i64", &repeated, Dead("fractional part"));
}

/// Whole payloads on a JSON route that maps only `payload` and a topic level: anything but
/// a JSON object is refused; a byte-order mark is skipped for decoding, and `payload` is
/// the payload's own bytes.
fn payload_cases(topic: &str, cases: &mut Vec<Case>, messages: &mut Vec<Outgoing>) {
    let mut raw = |id: i64, payload: &str, outcome| {
        messages.push((format!("{topic}/raw/{id}"), payload.into(), vec![]));
        cases.push(Case::new(id, "t", payload, outcome));
    };
    raw(4001, "this is not json at all", Dead("invalid JSON"));
    let array = Dead("a JSON array, not a JSON object");
    raw(4002, "[{\"id\": 1}]", array);
    raw(4003, "42", Dead("a JSON number, not a JSON object"));
    let bom = "\u{feff}{\"x\": 1}";
    raw(4004, bom, s(bom));
    // The same message read back from its `bin` column.
    cases.push(Case::new(4004, "bin", bom, s(&crate::hex(bom.as_bytes()))));
}

/// AMQP headers through `header.x`: signed decimals, integers, text with NUL.
fn header_cases(db: &Db, rabbit: &Rabbit, queue: &str, cases: &mut Vec<Case>) {
    let nul = by(db, Dead("NUL character"), s("\u{0}nul"), s("\u{0}nul"));
    let dec = |scale, value| Header::Decimal { scale, value };
    let min = Header::Int(i64::MIN);
    let minus_zero = by(db, s("-0"), s("0"), s("0"));
    let mut send = |id: i64, column: &'static str, header: Header, outcome: Outcome| {
        let payload = format!("{{\"id\": {id}}}");
        let name = match column {
            "dec" => "hdec",
            "i64" => "hint",
            "t" => "htext",
            _ => "hfloat",
        };
        rabbit.publish("", queue, payload.as_bytes(), &[(name, header)]);
        cases.push(Case::new(id, column, payload, outcome));
    };
    send(2001, "dec", dec(6, -1), s("-0.000001"));
    send(2002, "i64", dec(0, -5), s("-5"));
    send(2003, "dec", dec(2, i32::MIN), s("-21474836.48"));
    send(2004, "i64", min, s("-9223372036854775808"));
    send(2005, "i64", dec(1, 15), Dead("fractional part"));
    send(2006, "t", Header::Str("\u{0}nul".into()), nul);
    send(2007, "f64", Header::Float(-0.0), minus_zero);
    // No NaN: RabbitMQ closes the connection on a NaN header. The unit tests of
    // src/broker/amqp_source.rs show it would arrive as "NaN", which a float refuses.
}

type Outgoing = (String, Vec<u8>, Vec<(String, String)>);

/// Every row, by id: column name → the value as read back.
fn read_back(db: &Db, table: &str, cols: &[Column]) -> Rows {
    let exprs: Vec<String> = cols.iter().map(|(n, f, _)| read_expr(db, n, *f)).collect();
    let cast = "CAST(id AS CHAR(20))";
    let id = by(db, "id::text", cast, cast);
    let sql = format!("SELECT {id}, {} FROM {table}", exprs.join(", "));
    let floats = match db {
        Db::Sqlite(_) => BTreeMap::new(),
        _ => read_floats(db, table, "f64"),
    };
    db.query(&sql)
        .into_iter()
        .map(|row| {
            let id: i64 = row[0].as_deref().unwrap_or("").trim().parse().expect("id");
            let names = cols.iter().map(|c| c.0);
            let mut values: BTreeMap<_, _> = names.zip(row[1..].iter().cloned()).collect();
            if let Some(f) = floats.get(&id) {
                values.insert("f64", f.map(|f| format!("{f:?}")));
            }
            (id, values)
        })
        .collect()
}

/// SQLite's driver prints doubles to 15 digits whatever is stored, so a double is
/// compared in SQL with the literal of the value expected (SQLite parses literals to the
/// nearest double): where they are equal, the expected value is what is stored.
fn compare_sqlite_floats_in_sql(db: &Db, table: &str, cases: &[Case], stored: &mut Rows) {
    for case in cases.iter().filter(|c| c.column == "f64") {
        let (Stored(want), Some(row)) = (&case.outcome, stored.get_mut(&case.id)) else {
            continue;
        };
        let id = case.id;
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE id = {id} AND f64 = {want}");
        if crate::common::scalar(db, &sql) == 1 {
            row.insert("f64", Some(want.clone()));
        }
    }
}

type Rows = BTreeMap<i64, BTreeMap<&'static str, Option<String>>>;

/// A double column as the database holds it, read as a double: text casts print too few
/// digits on some databases (SQLite) to tell neighbouring doubles apart.
fn read_floats(db: &Db, table: &str, column: &str) -> BTreeMap<i64, Option<f64>> {
    use odbc_api::{Cursor, Nullable};
    let conn = db.connect();
    let sql = format!("SELECT id, {} FROM {table}", quote(db, column));
    let mut out = BTreeMap::new();
    let mut cursor = conn
        .execute(&sql, (), None)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .expect("a result set");
    while let Some(mut row) = cursor.next_row().expect("fetch") {
        let mut id = 0i64;
        let mut value = Nullable::<f64>::null();
        row.get_data(1, &mut id).expect("id");
        row.get_data(2, &mut value).expect("double");
        out.insert(id, value.into_opt());
    }
    out
}

/// Dead letters by the row id their payload carries: the reason, kind and headers.
type Letters = BTreeMap<i64, (String, String, Json)>;

/// Dead letters by the row id their payload carries.
fn dead_letters(config: &std::path::Path) -> Letters {
    dlq_list(config)
        .into_iter()
        .map(|d| {
            let payload = d["payload"].as_str().unwrap_or("");
            let raw_id = || d["source"].as_str()?.split_once("/raw/")?.1.parse().ok();
            let json_id = || serde_json::from_str::<Json>(payload).ok()?["id"].as_i64();
            let csv_id = || payload.split(',').next()?.trim().parse().ok();
            let id = raw_id().or_else(json_id).or_else(csv_id);
            let id = id.unwrap_or_else(|| panic!("a dead letter without an id: {d}"));
            let error = d["error"].as_str().unwrap_or("").to_string();
            let kind = d["error_kind"].as_str().unwrap_or("").to_string();
            (id, (error, kind, d["headers"].clone()))
        })
        .collect()
}

fn check(case: &Case, cols: &[Column], stored: &Rows, dead: &Letters) -> Result<(), String> {
    let family = cols.iter().find(|c| c.0 == case.column).expect("column").1;
    match (&case.outcome, stored.get(&case.id), dead.get(&case.id)) {
        (Dead(why), None, Some((error, kind, _)))
            if error.contains(why) && (kind == "convert" || kind == "decode") =>
        {
            Ok(())
        }
        (Refused(why), None, Some((error, _, _))) if error.contains(why) => Ok(()),
        (Dead(why) | Refused(why), None, Some((error, kind, _))) => Err(format!(
            "dead letter ({kind}) `{error}` does not say `{why}`"
        )),
        (Dead(why) | Refused(why), Some(row), _) => Err(format!(
            "expected a dead letter saying `{why}`, stored {:?}",
            row[case.column]
        )),
        (_, None, Some((error, kind, _))) => Err(format!(
            "expected {:?}, got a dead letter ({kind}): {error}",
            case.outcome
        )),
        (_, None, None) => Err("neither stored nor dead-lettered".into()),
        (Null, Some(row), _) => match &row[case.column] {
            None => Ok(()),
            Some(v) => Err(format!("expected NULL, stored {v:?}")),
        },
        (Stored(want), Some(row), _) => match &row[case.column] {
            None => Err(format!("expected {want:?}, stored NULL")),
            Some(got) if same(family, want, got) => Ok(()),
            Some(got) => Err(format!(
                "expected {:?}, stored {:?}",
                shorten(want),
                shorten(got)
            )),
        },
    }
}

/// Whether the read-back text `got` is the value `want`, as the column's family compares.
fn same(family: Family, want: &str, got: &str) -> bool {
    match family {
        Family::Text => got.eq_ignore_ascii_case(&crate::hex(want.as_bytes())),
        Family::Binary => got.eq_ignore_ascii_case(want),
        Family::Float => match (want.parse::<f64>(), got.trim().parse::<f64>()) {
            (Ok(w), Ok(g)) => w.to_bits() == g.to_bits(),
            _ => false,
        },
        Family::Decimal => {
            decimal_digits(want).is_some() && decimal_digits(want) == decimal_digits(got)
        }
        Family::Bool => {
            want == got.trim()
                || matches!(
                    (want, got.trim()),
                    ("true", "t" | "true" | "1") | ("false", "f" | "false" | "0")
                )
        }
        Family::Time | Family::Timestamp | Family::TimestampTz => {
            strip_zero_fraction(want) == strip_zero_fraction(got)
        }
        Family::Json => {
            serde_json::from_str::<Json>(want).ok() == serde_json::from_str::<Json>(got).ok()
        }
        Family::Int | Family::Date | Family::Uuid => want == got.trim(),
    }
}

/// A decimal's sign, significant digits and the power of ten of its last digit:
/// `1.50`, `1.5` and `15e-1` agree.
fn decimal_digits(text: &str) -> Option<(bool, String, i64)> {
    let t = text.trim();
    let (negative, body) = t.strip_prefix('-').map_or((false, t), |b| (true, b));
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i64>().ok()?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{int}{frac}");
    let digits = all.trim_start_matches('0');
    let trimmed = digits.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some((false, String::new(), 0));
    }
    let power = exponent - frac.len() as i64 + (digits.len() - trimmed.len()) as i64;
    Some((negative, trimmed.to_string(), power))
}

/// `12:00:00.250000` and `12:00:00.25` agree, as do `12:00:00.000` and `12:00:00`.
fn strip_zero_fraction(text: &str) -> String {
    crate::trim_fraction(&text.trim().replace('T', " "))
}

/// Writes `mqdb.yaml`: MQTT 5 broker `m` (the world's), AMQP broker `r`, database `d` with
/// `extra` settings, and one route per way a value arrives, all into `table`.
fn config(
    world: &World,
    db: &Db,
    extra: &[&str],
    table: &str,
    topic: &str,
    queue: &str,
) -> PathBuf {
    let mut database = settings(extra);
    database.insert("connection_string".into(), db.connection_string().into());
    // Upserts, so every value also goes through each dialect's conflict statement
    // (`MERGE` in standard SQL).
    let mqtt = |name: &str, level: &str| {
        let route = Route::inbound(name, &format!("{topic}/{level}"), table).broker("m");
        route.on_conflict("update", &["id"])
    };
    let csv_route = |field: &str| {
        mqtt(&format!("csv_{field}"), &format!("csv/{field}"))
            .format("csv")
            .set("csv", json!({ "fields": ["id", "v"] }))
            .columns(&[("id", "payload.id"), (field, "payload.v")])
    };
    let routes = [
        mqtt("json", "json"),
        csv_route("i64"),
        csv_route("bin"),
        csv_route("dec"),
        csv_route("d"),
        csv_route("ts"),
        mqtt("props", "props").columns(&pairs("id=payload.id t=header.T i64=header.n")),
        mqtt("raw", "raw/{id}").columns(&pairs("id=topic.id t=payload bin=payload")),
        Route::named("headers")
            .broker("r")
            .set("queue", queue)
            .set("database", "d")
            .set("table", table)
            .format("json")
            .on_conflict("update", &["id"])
            .columns(&pairs(
                "id=payload.id dec=header.hdec i64=header.hint t=header.htext f64=header.hfloat",
            )),
    ];
    let (url, client) = world.mqtt(json!({ "mqtt_version": 5 }));
    let config = world
        .bare_config()
        .broker("m", &url, client)
        .broker("r", Rabbit::URL, Json::Null)
        .set("databases", json!({ "d": database }));
    routes
        .into_iter()
        .fold(config, |config, route| config.inbound(route))
        .write()
}

/// The bridge's persistent session, subscribed to `filter`, so that the broker keeps what
/// is published before the bridge subscribes.
fn prepare_session(port: u16, client_id: &str, filter: &str) {
    use rumqttc::v5::mqttbytes::QoS;
    with_mqtt5(port, client_id, false, 1, |client| {
        let queued = client.try_subscribe(filter, QoS::AtLeastOnce);
        queued.expect("queue the subscribe");
    });
}

/// Publishes every message at QoS 1 with its user properties and waits for every PUBACK.
fn publish_v5(port: u16, messages: Vec<Outgoing>) {
    use rumqttc::v5::mqttbytes::{QoS, v5::PublishProperties};
    let total = messages.len();
    with_mqtt5(port, &unique("fid_pub"), true, total, |client| {
        for (topic, payload, properties) in messages {
            let props = PublishProperties {
                user_properties: properties,
                ..Default::default()
            };
            client
                .try_publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
                .expect("queue the MQTT 5 publish");
        }
    });
}

crate::common::cases! {
    inbound_matrix_postgres: matrix(&Db::Postgres, &[]);
    inbound_matrix_mariadb: matrix(&Db::MariaDb, &[]);
    inbound_matrix_sqlite: matrix(&temp_sqlite(), &[]);
}

/// PostgreSQL spoken to in standard SQL only, as a database mqdb does not know: plain
/// multi-row `INSERT`s, types from the driver's catalog alone.
#[test]
fn inbound_matrix_postgres_in_standard_sql() {
    matrix(&Db::Postgres, &["dialect: generic"]);
}
