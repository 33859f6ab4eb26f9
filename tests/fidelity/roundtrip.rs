//! Round trip: rows that an outbound route publishes (JSON, and CSV) and an inbound route
//! of the same bridge writes into a table of the same shape arrive equal, column by column,
//! as the database itself prints them.

use std::path::PathBuf;

use crate::common::{Bridge, Db, Mosquitto, Subscriber, TempTable, dlq_list, unique, wait_for};

/// One database's table for the round trip: its columns and the rows to send, as SQL
/// expressions in that database's dialect.
struct Case {
    db: Db,
    /// `(name, type)`; the first column is the `id` the outbound route tracks.
    columns: Vec<(&'static str, &'static str)>,
    /// One SQL expression per column, per row.
    rows: Vec<Vec<String>>,
}

impl Case {
    fn definition(&self) -> String {
        self.columns
            .iter()
            .map(|(name, ty)| format!("{name} {ty}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|(n, _)| *n).collect()
    }

    /// The value of `column` of table `t` as the database prints it: its own text cast,
    /// and hex for binary (so -0, trailing zeros and bytes all count).
    fn printed(&self, t: &str, column: &str, ty: &str) -> String {
        let binary = ["bytea", "blob", "binary"]
            .iter()
            .any(|b| ty.to_ascii_lowercase().contains(b));
        match (&self.db, binary) {
            (Db::Postgres, true) => format!("encode({t}.{column}, 'hex')"),
            (Db::Postgres, false) => format!("CAST({t}.{column} AS TEXT)"),
            (Db::MariaDb, true) => format!("HEX({t}.{column})"),
            (Db::MariaDb, false) => format!("CAST({t}.{column} AS CHAR)"),
            (Db::Sqlite(_), true) => format!("HEX({t}.{column})"),
            // SQLite keeps each value's own type: compare the type too.
            (Db::Sqlite(_), false) => {
                format!("typeof({t}.{column}) || ':' || CAST({t}.{column} AS TEXT)")
            }
        }
    }

    /// A null-safe "differs" between two printed values.
    fn differs(&self, a: &str, b: &str) -> String {
        match self.db {
            Db::Postgres => format!("{a} IS DISTINCT FROM {b}"),
            Db::MariaDb => format!("NOT ({a} <=> {b})"),
            Db::Sqlite(_) => format!("{a} IS NOT {b}"),
        }
    }
}

/// Publishes every row of `case` through an outbound route in `format` and writes it back
/// through an inbound route; returns the columns whose values changed, with an example.
fn round_trip(case: &Case, format: &str) -> Vec<String> {
    let db = &case.db;
    let source = TempTable::create(db, "rt_src", &case.definition());
    let sink = TempTable::create(db, "rt_dst", &case.definition());
    for row in &case.rows {
        db.exec(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            source.name,
            case.names().join(", "),
            row.join(", ")
        ));
    }

    // Given one bridge whose outbound route publishes the source table on a topic that
    // its inbound route writes into the sink table
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Mosquitto::start();
    let client_id = unique("rt");
    let topic = format!("rt/{}", unique("t"));
    // The bridge's session exists before the first publish, so the broker keeps every row.
    Subscriber::connect_with(broker.port, &client_id, false, &[(topic.as_str(), 1)]).disconnect();
    let config = write_config(
        dir.path(),
        &broker,
        &client_id,
        &topic,
        case,
        format,
        &source,
        &sink,
    );

    // When the bridge runs until every row is back
    let mut bridge = Bridge::start(&config);
    let want = case.rows.len() as i64;
    wait_for(&mut bridge, "every row written back", || {
        let letters = dlq_list(&config);
        if !letters.is_empty() {
            return Err(format!("dead letters: {letters:#?}"));
        }
        Ok(sink.count() == want)
    });
    bridge.terminate();

    // Then each column of each row prints the same in both tables
    let mut changed = Vec::new();
    for (name, ty) in &case.columns {
        let (a, b) = (case.printed("s", name, ty), case.printed("d", name, ty));
        let sql = format!(
            "SELECT s.id, {a}, {b} FROM {} s JOIN {} d ON s.id = d.id WHERE {}",
            source.name,
            sink.name,
            case.differs(&a, &b)
        );
        if let Some(row) = db.query(&sql).first() {
            let short =
                |v: &Option<String>| v.as_deref().map(|t| t.chars().take(80).collect::<String>());
            changed.push(format!(
                "{name} ({ty}) of row {:?}: {:?} became {:?}",
                row[0],
                short(&row[1]),
                short(&row[2])
            ));
        }
    }
    changed
}

#[allow(clippy::too_many_arguments)]
fn write_config(
    dir: &std::path::Path,
    broker: &Mosquitto,
    client_id: &str,
    topic: &str,
    case: &Case,
    format: &str,
    source: &TempTable,
    sink: &TempTable,
) -> PathBuf {
    let text = format!(
        "state: \"sqlite://{state}\"\n\
         brokers:\n  b:\n    url: \"{url}\"\n    client_id: \"{client_id}\"\n\
         databases:\n  d:\n    connection_string: \"{cs}\"\n\
         inbound:\n  - name: back\n    broker: b\n    topic: \"{topic}\"\n    database: d\n    \
         table: {sink}\n    format: {format}\n\
         outbound:\n  - name: out\n    database: d\n    \
         query: SELECT {names} FROM {source} WHERE id > ? ORDER BY id\n    track: id\n    \
         start: 0\n    interval: 200ms\n    broker: b\n    topic: \"{topic}\"\n    qos: 1\n    \
         format: {format}\n",
        state = dir.join("state.db").display(),
        url = broker.url(),
        cs = case.db.connection_string(),
        sink = sink.name,
        source = source.name,
        names = case.names().join(", "),
    );
    let path = dir.join("mqdb.yaml");
    std::fs::write(&path, text).expect("write mqdb.yaml");
    path
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn postgres() -> Case {
    let long = "repeat('é', 35000) || repeat('😀', 300)";
    Case {
        db: Db::Postgres,
        columns: vec![
            ("id", "BIGINT PRIMARY KEY"),
            ("i2", "SMALLINT"),
            ("i4", "INTEGER"),
            ("i8", "BIGINT"),
            ("num", "NUMERIC(38,10)"),
            ("f8", "DOUBLE PRECISION"),
            ("f4", "REAL"),
            ("b", "BOOLEAN"),
            ("t", "TEXT"),
            ("vc", "VARCHAR(50)"),
            ("bin", "BYTEA"),
            ("d", "DATE"),
            ("tm", "TIME"),
            ("ts", "TIMESTAMP"),
            ("tstz", "TIMESTAMPTZ"),
            ("j", "JSONB"),
            ("u", "UUID"),
        ],
        rows: vec![
            strings(&[
                "1",
                "1",
                "2",
                "3",
                "1.5",
                "0.25",
                "0.5",
                "true",
                "'a'",
                "'b'",
                "'\\x00ff'::bytea",
                "'2024-05-01'",
                "'12:34:56'",
                "'2024-05-01 10:00:00'",
                "'2024-05-01 10:00:00+00'",
                "'{\"a\": 1}'",
                "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            ]),
            strings(&[
                "2",
                "-32768",
                "2147483647",
                "9223372036854775807",
                "'1234567890123456789012345678.0123456789'",
                "'-0'",
                "'3.4028235e38'",
                "false",
                long,
                "'ünïcødé 漢字 😀'",
                "decode(repeat('00ff10', 30000), 'hex')",
                "'1970-01-01'",
                "'23:59:59.999999'",
                "'2024-02-29 23:59:58.123456'",
                "'2024-05-01 12:00:00.000001+02'",
                "'{\"n\": {\"x\": [1, 2.5, null]}}'",
                "'00000000-0000-0000-0000-000000000000'",
            ]),
            strings(&[
                "3",
                "32767",
                "-2147483648",
                "-9223372036854775808",
                "'-0.0000000001'",
                "'1.7976931348623157e308'",
                "'1e-38'",
                "NULL",
                "''",
                "NULL",
                "''::bytea",
                "NULL",
                "'00:00:00'",
                "NULL",
                "NULL",
                "'[]'",
                "NULL",
            ]),
            strings(&[
                "4",
                "NULL",
                "NULL",
                "9007199254740993",
                "'0'",
                "'5e-324'",
                "NULL",
                "true",
                "'line\nbreak, \"quoted\"; tab\t'",
                "'x''); DROP TABLE t; --'",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
            ]),
        ],
    }
}

fn mariadb() -> Case {
    let long = "CONCAT(REPEAT('é', 35000), REPEAT('😀', 300))";
    Case {
        db: Db::MariaDb,
        columns: vec![
            ("id", "BIGINT PRIMARY KEY"),
            ("i1", "TINYINT"),
            ("i2", "SMALLINT"),
            ("i8", "BIGINT"),
            ("num", "DECIMAL(38,10)"),
            ("f8", "DOUBLE"),
            ("b", "BOOLEAN"),
            ("t", "MEDIUMTEXT"),
            ("vc", "VARCHAR(50)"),
            ("bin", "MEDIUMBLOB"),
            ("d", "DATE"),
            ("tm", "TIME(6)"),
            ("ts", "DATETIME(6)"),
            ("tstz", "TIMESTAMP(6) NULL"),
        ],
        rows: vec![
            strings(&[
                "1",
                "1",
                "2",
                "3",
                "1.5",
                "0.25",
                "TRUE",
                "'a'",
                "'b'",
                "X'00FF'",
                "'2024-05-01'",
                "'12:34:56'",
                "'2024-05-01 10:00:00'",
                "'2024-05-01 10:00:00'",
            ]),
            strings(&[
                "2",
                "-128",
                "-32768",
                "9223372036854775807",
                "1234567890123456789012345678.0123456789",
                "-1.5e-300",
                "FALSE",
                long,
                "'ünïcødé 漢字 😀'",
                "UNHEX(REPEAT('00FF10', 30000))",
                "'1970-01-01'",
                "'23:59:59.999999'",
                "'2024-02-29 23:59:58.123456'",
                "'2024-05-01 12:00:00.000001'",
            ]),
            strings(&[
                "3",
                "127",
                "32767",
                "-9223372036854775808",
                "-0.0000000001",
                "1.7976931348623157e308",
                "NULL",
                "''",
                "NULL",
                "X''",
                "NULL",
                "'00:00:00'",
                "NULL",
                "NULL",
            ]),
            strings(&[
                "4",
                "NULL",
                "NULL",
                "9007199254740993",
                "0",
                "5e-324",
                "TRUE",
                "'line\\nbreak, \"quoted\"; tab\\t'",
                "'x''); DROP TABLE t; --'",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
            ]),
        ],
    }
}

fn sqlite(path: PathBuf) -> Case {
    // SQLite has no repeat(): a zero blob's hex digits, each pair replaced.
    let long = "replace(hex(zeroblob(35000)), '00', 'é')";
    Case {
        db: Db::Sqlite(path),
        columns: vec![
            ("id", "INTEGER PRIMARY KEY"),
            ("i", "INTEGER"),
            ("n", "NUMERIC"),
            ("f", "REAL"),
            ("b", "BOOLEAN"),
            ("t", "TEXT"),
            ("bin", "BLOB"),
            ("d", "DATE"),
            ("ts", "TIMESTAMP"),
        ],
        rows: vec![
            strings(&[
                "1",
                "1",
                "1.5",
                "0.25",
                "1",
                "'a'",
                "X'00FF'",
                "'2024-05-01'",
                "'2024-05-01 10:00:00'",
            ]),
            strings(&[
                "2",
                "9223372036854775807",
                "'12345678901234567890'",
                "-1.5e-300",
                "0",
                long,
                "X'00FF10'",
                "'1970-01-01'",
                "'2024-02-29 23:59:58.123'",
            ]),
            strings(&[
                "3",
                "-9223372036854775808",
                "NULL",
                // sqliteodbc reads REAL values with 15 significant digits (see the README).
                "1.5e308",
                "NULL",
                "''",
                "X''",
                "NULL",
                "NULL",
            ]),
            strings(&[
                "4",
                "9007199254740993",
                "0",
                "5e-324",
                "1",
                "'line' || char(10) || 'break, \"quoted\"; tab' || char(9)",
                "NULL",
                "NULL",
                "NULL",
            ]),
        ],
    }
}

fn assert_round_trip(case: Case) {
    for format in ["json", "csv"] {
        let changed = round_trip(&case, format);
        assert!(
            changed.is_empty(),
            "[{} {format}] values changed on the way round:\n{}",
            case.db.label(),
            changed.join("\n")
        );
    }
}

#[test]
fn rows_come_back_equal_postgres() {
    assert_round_trip(postgres());
}

#[test]
fn rows_come_back_equal_mariadb() {
    assert_round_trip(mariadb());
}

#[test]
fn rows_come_back_equal_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert_round_trip(sqlite(dir.path().join("rt.db")));
}
