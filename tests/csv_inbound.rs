//! `mqdb run` for inbound routes with `format: csv`: rows by field index, by declared name
//! and by header name; quoting, line ends, NULL markers, delimiters; one dead letter per bad
//! line beside the stored lines of its message, which is acknowledged once; config errors.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use common::{
    Bridge, Db, LIVENESS, NULL, Ran, Route, TempTable, World, base64_decode, dlq_list, mqdb_at,
    pairs, parse_ts, temp_sqlite, text_rows, ts, unique, wait_dead_letters, wait_for, wait_until,
};
use common::{scalar, terminate_ok, try_scalar, wait_for_count};
use serde_json::Value as Json;

type Rows = Vec<Vec<Option<String>>>;

/// One CSV route on one topic into one fresh table, with the bridge's persistent session in
/// place (so everything published before [`Case::start`] is queued for it).
struct Case {
    table: TempTable,
    world: World,
    db: Db,
    topic: String,
    route: String,
    config: PathBuf,
}

impl Case {
    /// A route with the given `csv:` lines and `columns:` (none: no block).
    fn new(db: &Db, prefix: &str, table: &str, csv: &[&str], cols: &[(&str, &str)]) -> Case {
        Case::in_world(World::new("csv"), db, prefix, table, csv, cols)
    }

    /// Like [`Case::new`] on a broker that logs every packet, so PUBACKs can be counted.
    fn logged(db: &Db, prefix: &str, table: &str, csv: &[&str], cols: &[(&str, &str)]) -> Case {
        let world = World::with_broker_config("csv", "log_type all\n");
        Case::in_world(world, db, prefix, table, csv, cols)
    }

    fn in_world(
        world: World,
        db: &Db,
        prefix: &str,
        table_columns: &str,
        csv: &[&str],
        columns: &[(&str, &str)],
    ) -> Case {
        let table = TempTable::create(db, prefix, table_columns);
        let topic = format!("{}/csv", unique(prefix));
        let route = format!("{prefix}_{}", db.label());
        let inbound = Route::inbound(&route, &topic, &table.name).format("csv");
        let inbound = inbound.block("csv", csv).columns(columns);
        let config = world.config(db).inbound(inbound).write();
        world.persistent_session(&topic);
        Case {
            table,
            world,
            db: db.clone(),
            topic,
            route,
            config,
        }
    }

    fn t(&self) -> &str {
        &self.table.name
    }

    /// Publishes every payload to the route's topic at QoS 1, in order, and waits for the
    /// broker's PUBACKs.
    fn publish(&self, payloads: &[Vec<u8>]) {
        let messages = payloads.iter().map(|p| (self.topic.clone(), p.clone()));
        let publisher = self.world.publisher();
        publisher.publish_all_confirmed(messages.collect(), 1);
    }

    fn start(&self) -> Bridge {
        Bridge::start(&self.config)
    }

    /// Every row of the table ordered by its first column, every value as text.
    fn rows(&self) -> Rows {
        let sql = format!("SELECT * FROM {} ORDER BY 1", self.t());
        self.db.query(&sql)
    }

    fn count(&self, filter: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {} {filter}", self.t());
        scalar(&self.db, &sql)
    }

    /// Waits until the table holds exactly `want` rows (more fails at once).
    fn wait_rows(&self, bridge: &mut Bridge, want: i64) {
        let sql = format!("SELECT COUNT(*) FROM {}", self.t());
        wait_for_count(bridge, &self.db, &sql, want);
    }

    /// Publishes `payloads`, starts the bridge and waits until the table's rows (ordered by
    /// the first column) are `want`.
    fn run(&self, payloads: &[Vec<u8>], want: Rows) -> Bridge {
        self.publish(payloads);
        let mut bridge = self.start();
        self.wait_rows(&mut bridge, want.len() as i64);
        assert_eq!(self.rows(), want);
        bridge
    }

    /// [`Case::run`], then asserts that there are no dead letters and stops the bridge.
    fn run_clean(&self, payloads: &[Vec<u8>], want: Rows) {
        self.end_clean(self.run(payloads, want));
    }

    /// Asserts that there are no dead letters, then stops the bridge.
    fn end_clean(&self, mut bridge: Bridge) {
        assert_eq!(dlq_list(&self.config), Vec::<Json>::new());
        terminate_ok(&mut bridge);
    }

    /// Waits for exactly the dead letters of `want`, one per line, and asserts each.
    fn expect_letters(&self, bridge: &mut Bridge, want: &[Expected]) {
        let letters = by_line(&wait_dead_letters(bridge, &self.config, want.len()));
        let lines: Vec<i64> = want.iter().map(|w| w.line).collect();
        assert_eq!(letters.keys().copied().collect::<Vec<_>>(), lines);
        for w in want {
            self.assert_record_letter(&letters[&w.line], w);
        }
    }

    /// Asserts one dead letter of a single record of this case's route (see [`Expected`]).
    fn assert_record_letter(&self, letter: &Json, want: &Expected) {
        let ctx = format!("line {}: {letter:#}", want.line);
        assert_eq!(letter["route"], self.route.as_str(), "{ctx}");
        assert_eq!(letter["direction"], "inbound", "{ctx}");
        assert_eq!(letter["source"], self.topic.as_str(), "{ctx}");
        assert_eq!(letter["error_kind"], want.kind, "{ctx}");
        assert_eq!(letter["attempts"], 1, "{ctx}");
        assert_eq!(letter["headers"]["line"].as_i64(), Some(want.line), "{ctx}");
        let error = letter["error"].as_str().unwrap_or("");
        let prefix = format!("line {}: ", want.line);
        assert!(error.starts_with(&prefix), "starts with {prefix:?}: {ctx}");
        assert!(error.contains(want.error), "has {:?}: {ctx}", want.error);
        let raw = String::from_utf8_lossy(want.payload);
        let what = format!("the payload is exactly the record's raw bytes ({raw:?}): {ctx}");
        assert_eq!(letter_payload(letter), want.payload, "{what}");
        match want.sqlstate {
            Some(state) => assert_eq!(letter["sqlstate"], state, "{ctx}"),
            None => assert!(letter.get("sqlstate").is_none_or(Json::is_null), "{ctx}"),
        }
    }
}

/// What one record's dead letter must hold.
struct Expected<'a> {
    line: i64,
    kind: &'a str,
    /// A part of the error after `line N: `.
    error: &'a str,
    /// The record's raw bytes, without the line end.
    payload: &'a [u8],
    sqlstate: Option<&'a str>,
}

fn bad<'a>(line: i64, kind: &'a str, error: &'a str, payload: &'a [u8]) -> Expected<'a> {
    Expected {
        line,
        kind,
        error,
        payload,
        sqlstate: None,
    }
}

/// The dead letter of a record with too few or too many fields.
fn fields<'a>(line: i64, error: &'a str, payload: &'a [u8]) -> Expected<'a> {
    bad(line, "decode", error, payload)
}

/// Dead letters by their `headers.line`; panics on two letters for one line or a letter
/// without a line.
fn by_line(letters: &[Json]) -> BTreeMap<i64, Json> {
    let mut map = BTreeMap::new();
    for letter in letters {
        let line = letter["headers"]["line"].as_i64();
        let line =
            line.unwrap_or_else(|| panic!("a dead letter without headers.line: {letters:#?}"));
        let first = map.insert(line, letter.clone()).is_none();
        assert!(first, "two dead letters for line {line}: {letters:#?}");
    }
    map
}

/// The payload bytes of a dead letter from `dlq list --json`: text, or `payload_base64`
/// when it is not UTF-8.
fn letter_payload(letter: &Json) -> Vec<u8> {
    if let Some(b64) = letter.get("payload_base64").and_then(Json::as_str) {
        return base64_decode(b64);
    }
    let text = letter["payload"].as_str();
    let text = text.unwrap_or_else(|| panic!("a dead letter without a payload: {letter:#}"));
    text.as_bytes().to_vec()
}

/// `lines` joined with LF, with a final LF.
fn lf<S: AsRef<str>>(lines: &[S]) -> Vec<u8> {
    let line = |l: &S| format!("{}\n", l.as_ref());
    lines.iter().map(line).collect::<String>().into_bytes()
}

/// The `csv:` block of a route that reads a header.
const HEADER: [&str; 1] = ["header: true"];

/// For a world whose broker runs with `log_type all`, once the bridge has stopped: waits
/// until the broker has logged `want` PUBACKs from the bridge (a liveness deadline), then
/// asserts there are exactly `want` and that no message was sent to it twice (DUP).
fn assert_each_message_acked_once(world: &World, want: usize) {
    let client_id = &world.client_id;
    let count = |log: &str, needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let acked = format!("Received PUBACK from {client_id} ");
    let resent = format!("Sending PUBLISH to {client_id} (d1");
    let what = format!("{want} PUBACKs from {client_id}");
    wait_until(&what, LIVENESS, || {
        count(&world.broker.log(), &acked) >= want
    });
    let log = world.broker.log();
    assert_eq!(count(&log, &acked), want, "one PUBACK per message:\n{log}");
    assert_eq!(count(&log, &resent), 0, "messages sent again:\n{log}");
}

/// A route without `csv:` options whose `columns` (`column=source` pairs) map fields by index.
fn by_index(db: &Db, prefix: &str, table_columns: &str, columns: &str) -> Case {
    Case::new(db, prefix, table_columns, &[], &pairs(columns))
}

fn several_rows_per_message_by_index(db: &Db, table_columns: &str, ts_select: &str) {
    // Given a route mapping fields by index, and the whole record to a text column
    let columns = "id=payload.0 qty=payload.1 amount=payload.2 label=payload.3 ts=payload.4 \
                   raw=payload src=meta.topic";
    let case = by_index(db, "csvidx", table_columns, columns);
    let t = case.t().to_string();

    // When messages of several records each arrive: integers, decimals, text and
    // timestamps with offsets, then 20 messages of 10 records each
    let first = [
        "1,9223372036854775807,12345678901234567890.123456,é 日本 🎉,2024-05-01T12:00:00+02:00",
        "2,-42,-0.5,plain,2024-05-01T12:00:00-05:30",
        "3,0,0, padded ,2024-05-01 08:00:00",
    ];
    let second = [
        "4,77,3.25,x,2024-05-01T12:00:00.250Z",
        "5,1,1.000001,y,2024-02-29T23:30:00-01:00",
    ];
    let filler = |id: i64| format!("{id},{},1.5,row {id},2024-01-01T00:00:00Z", id * 3);
    let mut payloads = vec![lf(&first), lf(&second)];
    for m in 0..20 {
        let lines: Vec<String> = (0..10).map(|k| filler(100 + m * 10 + k)).collect();
        payloads.push(lf(&lines));
    }
    case.publish(&payloads);
    let mut bridge = case.start();

    // Then every record is one row
    case.wait_rows(&mut bridge, 205);
    let rows = case.db.query(&format!(
        "SELECT id, qty, amount, label, {ts_select}, raw FROM {t} WHERE id < 100 ORDER BY id"
    ));
    let column = |c: usize| -> Vec<&str> {
        let text = |r: usize| rows[r][c].as_deref();
        let text = |r| text(r).unwrap_or_else(|| panic!("NULL in {c}: {:?}", rows[r]));
        (0..rows.len()).map(text).collect()
    };
    let trimmed = |c: usize| -> Vec<&str> { column(c).into_iter().map(str::trim).collect() };
    // And integers are exact up to i64::MAX, decimals keep every digit
    assert_eq!(trimmed(0), ["1", "2", "3", "4", "5"]);
    assert_eq!(trimmed(1), ["9223372036854775807", "-42", "0", "77", "1"]);
    assert_eq!(trimmed(2)[0], "12345678901234567890.123456");
    let amounts = ["-0.500000", "0.000000", "3.250000", "1.000001"];
    assert_eq!(trimmed(2)[1..], amounts);
    // And text arrives unchanged (non-ASCII, surrounding spaces kept)
    assert_eq!(column(3), ["é 日本 🎉", "plain", " padded ", "x", "y"]);
    // And timestamps with offsets are stored in UTC; a naive one is taken as UTC
    let stamps: Vec<NaiveDateTime> = column(4).into_iter().map(parse_ts).collect();
    let want = [
        "2024-05-01 10:00:00",
        "2024-05-01 17:30:00",
        "2024-05-01 08:00:00",
        "2024-05-01 12:00:00.250",
        "2024-03-01 00:30:00",
    ];
    assert_eq!(stamps, want.map(ts));
    // And `payload` is the record's own line, without its line end
    assert_eq!(column(5), [first.as_slice(), &second].concat());
    // And meta sources work as for JSON: every row names its topic
    assert_eq!(case.count(&format!("WHERE src = '{}'", case.topic)), 205);
    // And the 200 filler records carry their values
    let sum = format!("SELECT SUM(qty) FROM {t} WHERE id >= 100");
    assert_eq!(scalar(&case.db, &sum), 3 * (100..300).sum::<i64>());
    let fillers = "WHERE id >= 100 AND amount = 1.5 AND label LIKE 'row %'";
    assert_eq!(case.count(fillers), 200);
    case.end_clean(bridge);
}

#[test]
fn several_rows_per_message_by_index_postgres() {
    let columns = "id INTEGER PRIMARY KEY, qty BIGINT, amount NUMERIC(30,6), label TEXT, \
                   ts TIMESTAMPTZ, raw TEXT, src TEXT";
    let ts_select = "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')";
    several_rows_per_message_by_index(&Db::Postgres, columns, ts_select);
}

#[test]
fn several_rows_per_message_by_index_mariadb() {
    let columns = "id INT PRIMARY KEY, qty BIGINT, amount DECIMAL(30,6), label TEXT, \
                   ts DATETIME(6), raw TEXT, src TEXT";
    several_rows_per_message_by_index(&Db::MariaDb, columns, "ts");
}

#[test]
fn fields_by_declared_name_and_the_field_count_comes_from_fields() {
    // Given a route with `fields:` naming four fields, mapped by name and by index
    let columns = "id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER, tag TEXT";
    let sources = pairs("id=payload.id sku=payload.sku qty=payload.qty tag=payload.3");
    let csv = ["fields: [id, sku, qty, tag]"];
    let case = Case::new(&Db::Postgres, "csvfields", columns, &csv, &sources);

    // When a message's first record has three fields and the others four, then the
    // four-field records land by name, and the first one (not the others) is a dead letter:
    // the expected count is fields:'s length, not the first record's
    let payloads = [lf(&["9,Z,90", "1,A,10,x", "2,B,20,y"])];
    let want = text_rows(&[["1", "A", "10", "x"], ["2", "B", "20", "y"]]);
    let mut bridge = case.run(&payloads, want);
    case.expect_letters(&mut bridge, &[fields(1, "3 fields, expected 4", b"9,Z,90")]);
    terminate_ok(&mut bridge);
}

#[test]
fn header_names_per_message_exact_then_case_insensitive() {
    // Given a route with `header: true` whose sources name header fields in other cases
    let columns = "id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER, note TEXT DEFAULT 'none'";
    let sources = pairs("id=payload.id sku=payload.SKU qty=payload.qty");
    let case = Case::logged(&Db::Postgres, "csvhdr", columns, &HEADER, &sources);

    // When messages arrive, each with its own header: other cases, another order, both an
    // exact and a case-variant name, a header only, a header without `qty`, and a header
    // followed by a good and a short record, then each message's records are read with its
    // own header; an exact name wins over a case-insensitive one; unmapped columns keep
    // their default
    let missing_qty = lf(&["id,sku", "5,D-5"]);
    let payloads = [
        lf(&["Id,SKU,Qty", "1,A-1,10", "2,A-2,20"]),
        lf(&["qty,sku,id", "30,B-3,3"]),
        lf(&["ID,id,SKU,qty", "999,4,C-4,40"]),
        lf(&["id,sku,qty"]),
        missing_qty.clone(),
        lf(&["id,sku,qty", "6,E-6,60", "7,E-7"]),
    ];
    let want = text_rows(&[
        ["1", "A-1", "10", "none"],
        ["2", "A-2", "20", "none"],
        ["3", "B-3", "30", "none"],
        ["4", "C-4", "40", "none"],
        ["6", "E-6", "60", "none"],
    ]);
    let mut bridge = case.run(&payloads, want);
    // And the message whose header lacks `qty` is one dead letter with the whole payload
    let letters = wait_dead_letters(&mut bridge, &case.config, 2);
    let is_whole = |l: &&Json| letter_payload(l) == missing_qty;
    let (whole, records): (Vec<&Json>, Vec<&Json>) = letters.iter().partition(is_whole);
    assert_eq!(whole.len(), 1, "{letters:#?}");
    let whole = whole[0];
    assert_eq!(whole["error_kind"], "decode", "{whole:#}");
    assert_eq!(whole["route"], case.route.as_str(), "{whole:#}");
    assert_eq!(whole["source"], case.topic.as_str(), "{whole:#}");
    // And the short record's line counts the header as line 1, with the header attached
    assert_eq!(records.len(), 1, "{letters:#?}");
    let short = fields(3, "2 fields, expected 3", b"7,E-7");
    case.assert_record_letter(records[0], &short);
    let header = &records[0]["headers"]["csv_header"];
    assert_eq!(header, "id,sku,qty", "{:#}", records[0]);
    // And every message, also the header-only one, was acknowledged once
    terminate_ok(&mut bridge);
    assert_each_message_acked_once(&case.world, 6);
}

#[test]
fn without_columns_declared_fields_map_to_same_named_columns() {
    // Given a route without `columns:` whose `fields:` differ in case from the columns and
    // include a name that matches no column
    let columns =
        "id INTEGER PRIMARY KEY, name TEXT, qty INTEGER DEFAULT 5, note TEXT DEFAULT 'none'";
    let csv = ["fields: [ID, Name, junk, NOTE]"];
    let case = Case::new(&Db::Postgres, "csvnocolf", columns, &csv, &[]);

    // When records arrive, then fields land in the same-named columns, `junk` is ignored,
    // `qty` keeps its default and an empty field is NULL
    let payloads = [lf(&["1,alpha,zzz,n1", "2,beta,,"])];
    let want = text_rows(&[["1", "alpha", "5", "n1"], ["2", "beta", "5", NULL]]);
    case.run_clean(&payloads, want);
}

#[test]
fn without_columns_header_names_map_to_same_named_columns() {
    // Given a route without `columns:` and with `header: true`
    let columns =
        "id INT PRIMARY KEY, name TEXT, qty INT DEFAULT 5, note VARCHAR(20) DEFAULT 'none'";
    let case = Case::new(&Db::MariaDb, "csvnocolh", columns, &HEADER, &[]);

    // When messages with different headers (other cases, other orders, an unknown name)
    // arrive, then each header name lands in its column, whatever the case; columns without
    // a field keep their default
    let payloads = [
        lf(&["NOTE,Id,whatever,Qty", "n1,1,w,10"]),
        lf(&["id,name", "2,beta", "3,gamma"]),
    ];
    let want = text_rows(&[
        ["1", NULL, "10", "n1"],
        ["2", "beta", "5", "none"],
        ["3", "gamma", "5", "none"],
    ]);
    case.run_clean(&payloads, want);
}

/// Without `columns:`, `fields:` or a header, into a table whose catalog order is not
/// alphabetical: field i lands in column i.
fn without_columns_or_names_fields_map_in_catalog_order(db: &Db) {
    let columns = "zid INTEGER, name TEXT, amount INTEGER";
    let case = Case::new(db, "csvorder", columns, &[], &[]);
    let payloads = [lf(&["1,a,10", "2,b,20"]), lf(&["3,c,30"])];
    let want = text_rows(&[["1", "a", "10"], ["2", "b", "20"], ["3", "c", "30"]]);
    case.run_clean(&payloads, want);
}

common::cases! {
    without_columns_or_names_fields_map_in_catalog_order_postgres:
        without_columns_or_names_fields_map_in_catalog_order(&Db::Postgres);
    without_columns_or_names_fields_map_in_catalog_order_sqlite:
        without_columns_or_names_fields_map_in_catalog_order(&temp_sqlite());
}

fn quoted_delimiters_quotes_and_newlines(db: &Db) {
    let columns = "id INTEGER PRIMARY KEY, a TEXT, b TEXT, raw TEXT";
    let sources = "id=payload.0 a=payload.1 b=payload.2 raw=payload";
    let case = by_index(db, "csvquote", columns, sources);

    // When records with quoted delimiters, doubled quotes and newlines arrive, with a short
    // record after the multi-line ones, and a second message with a short record, then the
    // fields are unquoted: delimiters, quotes and newlines are data
    let rec1 = r#"1,"a,b","say ""hi""""#;
    let rec2 = "2,\"line1\nline2\",x";
    let rec3 = r#"3,"",",""#;
    let rec5 = "5,\"multi\nline\nthree\",\"\"\"\"";
    let payloads = [
        lf(&[rec1, rec2, rec3, "4,only-two", rec5]),
        lf(&["6,a,b", "7,c"]),
    ];
    let want = text_rows(&[
        ["1", "a,b", "say \"hi\"", rec1],
        ["2", "line1\nline2", "x", rec2],
        ["3", "", ",", rec3],
        ["5", "multi\nline\nthree", "\"", rec5],
        ["6", "a", "b", "6,a,b"],
    ]);
    let mut bridge = case.run(&payloads, want);
    // And a record's line is the line it starts on, counted per message
    let letters = [
        fields(2, "2 fields, expected 3", b"7,c"),
        fields(5, "2 fields, expected 3", b"4,only-two"),
    ];
    case.expect_letters(&mut bridge, &letters);
    terminate_ok(&mut bridge);
}

common::cases! {
    quoted_delimiters_quotes_and_newlines_postgres:
        quoted_delimiters_quotes_and_newlines(&Db::Postgres);
    quoted_delimiters_quotes_and_newlines_mariadb:
        quoted_delimiters_quotes_and_newlines(&Db::MariaDb);
    quoted_delimiters_quotes_and_newlines_sqlite:
        quoted_delimiters_quotes_and_newlines(&temp_sqlite());
}

#[test]
fn crlf_bom_blank_lines_and_trailing_newlines() {
    // Given a route by index (an integer first field, so a BOM left in it cannot convert),
    // and a broker that logs every packet
    let columns = "id INTEGER PRIMARY KEY, label TEXT, qty INTEGER, raw TEXT";
    let sources = pairs("id=payload.0 label=payload.1 qty=payload.2 raw=payload");
    let case = Case::logged(&Db::Postgres, "csvcrlf", columns, &[], &sources);

    // When messages arrive with a BOM and CRLF line ends (a blank line, then a short
    // record), with LF and blank lines before, between and after records, without a final
    // line end, with a quoted CRLF, and with nothing but a line end or nothing at all, then
    // every record is a row with no line end or BOM left in its values
    let payloads = [
        "\u{feff}1,a,10\r\n2,b,20\r\n\r\n3,c,30\r\n4,bad\r\n".into(),
        b"\n\n5,d,50\n\n6,e,60\n\n\n".to_vec(),
        b"7,f,70".to_vec(),
        b"8,\"x\r\ny\",80\r\n".to_vec(),
        b"\r\n".to_vec(),
        Vec::new(),
        b"9,last,90\r\n".to_vec(),
    ];
    let want = text_rows(&[
        ["1", "a", "10", "1,a,10"],
        ["2", "b", "20", "2,b,20"],
        ["3", "c", "30", "3,c,30"],
        ["5", "d", "50", "5,d,50"],
        ["6", "e", "60", "6,e,60"],
        ["7", "f", "70", "7,f,70"],
        ["8", "x\r\ny", "80", "8,\"x\r\ny\",80"],
        ["9", "last", "90", "9,last,90"],
    ]);
    let mut bridge = case.run(&payloads, want);
    // And the short record is a dead letter: its line counts the blank line, and its
    // payload has no line end
    case.expect_letters(&mut bridge, &[fields(5, "2 fields, expected 3", b"4,bad")]);
    // And every message, also the blank and the empty one, was acknowledged once
    terminate_ok(&mut bridge);
    assert_each_message_acked_once(&case.world, 7);
}

#[test]
fn bom_before_a_header_is_not_part_of_the_first_name() {
    // Given a route with `header: true` that maps the header's first name
    let columns = "id INTEGER PRIMARY KEY, name TEXT";
    let sources = pairs("id=payload.id name=payload.name");
    let case = Case::new(&Db::Postgres, "csvbomhdr", columns, &HEADER, &sources);

    // When a message starts with a BOM before its CRLF header, then the header's first name
    // is `id` and both records land
    let payloads = ["\u{feff}id,name\r\n1,a\r\n2,b\r\n".into()];
    let want = text_rows(&[["1", "a"], ["2", "b"]]);
    case.run_clean(&payloads, want);
}

/// Runs `payload` through a route by index into (id, a DEFAULT 'dflt', b, n DEFAULT 7) and
/// asserts the rows read back.
fn null_markers(db: &Db, csv: &[&str], payload: Vec<u8>, want: &[[&str; 4]]) {
    let columns = "id INTEGER PRIMARY KEY, a VARCHAR(20) DEFAULT 'dflt', b VARCHAR(20), \
                   n INTEGER DEFAULT 7";
    let sources = pairs("id=payload.0 a=payload.1 b=payload.2 n=payload.3");
    let case = Case::new(db, "csvnull", columns, csv, &sources);
    case.run_clean(&[payload], text_rows(want));
}

common::cases! {
    // Empty fields are NULL (not the column default), text and integer; a quoted empty
    // field is the empty string, as outbound CSV writes it
    empty_fields_are_null_by_default: null_markers(
        &Db::Postgres,
        &[],
        lf(&["1,,x,", r#"2,"",,8"#]),
        &[["1", NULL, "x", NULL], ["2", "", NULL, "8"]],
    );
    // `null: ~`: nothing is NULL, empty fields are empty strings
    empty_fields_are_empty_strings_with_null_tilde: null_markers(
        &temp_sqlite(),
        &["null: ~"],
        lf(&["1,,x,5", r#"2,"",,6"#]),
        &[["1", "", "x", "5"], ["2", "", "", "6"]],
    );
    // `null: "\N"`: exactly `\N`, unquoted, is NULL; a quoted `\N`, empty fields and other
    // text are not
    a_custom_null_marker_is_null_and_empty_fields_are_text: null_markers(
        &Db::MariaDb,
        &[r#"null: "\\N""#],
        lf(&[r"1,\N,x,\N", r#"2,,"\N",8"#, r#"3,"",N,9"#, r"4,\\N,\N\N,10"]),
        &[
            ["1", NULL, "x", NULL],
            ["2", "", r"\N", "8"],
            ["3", "", "N", "9"],
            ["4", r"\\N", r"\N\N", "10"],
        ],
    );
}

/// Runs `payload` through a route by index with `csv` options into (id, a, b) and asserts
/// the rows read back.
fn delimited(db: &Db, csv: &[&str], payload: Vec<u8>, want: &[[&str; 3]]) {
    let columns = "id INTEGER PRIMARY KEY, a TEXT, b TEXT";
    let sources = pairs("id=payload.0 a=payload.1 b=payload.2");
    let case = Case::new(db, "csvdelim", columns, csv, &sources);
    case.run_clean(&[payload], text_rows(want));
}

common::cases! {
    // Commas and semicolons are data; a quoted tab is data
    tab_delimiter: delimited(
        &Db::Postgres,
        &[r#"delimiter: "\t""#],
        lf(&["1\ta,b\t\"in\ttab\"", "2\t;\tplain"]),
        &[["1", "a,b", "in\ttab"], ["2", ";", "plain"]],
    );
    // Commas are data (decimal commas stay text); a quoted semicolon is data
    semicolon_delimiter: delimited(
        &Db::MariaDb,
        &[r#"delimiter: ";""#],
        lf(&["1;3,5;\"a;b\"", "2;x,y;z"]),
        &[["1", "3,5", "a;b"], ["2", "x,y", "z"]],
    );
    // `'` quotes (doubled inside); `"` is plain data
    custom_quote_character: delimited(
        &temp_sqlite(),
        &[r#"quote: "'""#],
        lf(&["1,'a,b','it''s'", r#"2,"x",'say "hi", ok'"#]),
        &[["1", "a,b", "it's"], ["2", "\"x\"", "say \"hi\", ok"]],
    );
    // `\"` inside quotes is a quote
    escape_character: delimited(
        &Db::Postgres,
        &[r#"escape: "\\""#],
        lf(&[r#"1,"say \"hi\", ok",plain"#, r#"2,"\"",x"#]),
        &[["1", "say \"hi\", ok", "plain"], ["2", "\"", "x"]],
    );
}

fn bad_lines_are_dead_letters_and_the_message_is_acked_once(db: &Db) {
    // Given a table without a unique key (a redelivered message would add rows again), a
    // broker that logs every packet, and a route by index
    let columns = "id INTEGER NOT NULL, name TEXT, qty INTEGER";
    let sources = pairs("id=payload.0 name=payload.1 qty=payload.2");
    let case = Case::logged(db, "csvbad", columns, &[], &sources);

    // When one message holds good lines, a short line, an unconvertible value and a long
    // line, then the good lines are stored and each bad line is its own dead letter
    let payloads = [lf(&["1,a,10", "2,b", "3,c,xyz", "4,d,40,extra", "5,e,50"])];
    let want = text_rows(&[["1", "a", "10"], ["5", "e", "50"]]);
    let mut bridge = case.run(&payloads, want);
    let letters = [
        fields(2, "2 fields, expected 3", b"2,b"),
        bad(3, "convert", "column qty (from payload.2): ", b"3,c,xyz"),
        fields(4, "4 fields, expected 3", b"4,d,40,extra"),
    ];
    case.expect_letters(&mut bridge, &letters);

    // And after a restart, nothing is redelivered: a new message lands alone
    terminate_ok(&mut bridge);
    let mut bridge = case.start();
    case.publish(&[lf(&["6,marker,60"])]);
    let marker = format!("SELECT COUNT(*) FROM {} WHERE id = 6", case.t());
    let stored = || Ok(try_scalar(&case.db, &marker) == Some(1));
    wait_for(&mut bridge, "the marker row", stored);
    let rows = case.rows();
    assert_eq!(case.count(""), 3, "rows after the restart: {rows:?}");
    let letters = dlq_list(&case.config).len();
    assert_eq!(letters, 3, "dead letters after restart");
    // And the broker got exactly one PUBACK for each of the two messages, and sent neither
    // of them twice
    terminate_ok(&mut bridge);
    assert_each_message_acked_once(&case.world, 2);
}

common::cases! {
    bad_lines_are_dead_letters_and_the_message_is_acked_once_postgres:
        bad_lines_are_dead_letters_and_the_message_is_acked_once(&Db::Postgres);
    bad_lines_are_dead_letters_and_the_message_is_acked_once_sqlite:
        bad_lines_are_dead_letters_and_the_message_is_acked_once(&temp_sqlite());
}

#[test]
fn invalid_utf8_in_one_line_is_a_dead_letter_for_that_line_only() {
    let columns = "id INTEGER PRIMARY KEY, name TEXT, qty INTEGER";
    let sources = "id=payload.0 name=payload.1 qty=payload.2";
    let case = by_index(&Db::Postgres, "csvutf8", columns, sources);

    // When the middle line of a message holds bytes that are not UTF-8, then the other
    // lines are stored and that line is a dead letter with its raw bytes
    let payloads = [b"1,ok,10\n2,\xff\xfe,20\n3,fine \xc3\xa9,30\n".to_vec()];
    let want = text_rows(&[["1", "ok", "10"], ["3", "fine é", "30"]]);
    let mut bridge = case.run(&payloads, want);
    let letter = bad(2, "decode", "not valid UTF-8", b"2,\xff\xfe,20");
    case.expect_letters(&mut bridge, &[letter]);
    terminate_ok(&mut bridge);
}

/// The SQLSTATEs one database reports for the rejected lines: NOT NULL, CHECK, duplicate.
fn rejected_lines_are_dead_letters_naming_their_line(db: &Db, states: [&str; 3]) {
    // Given a table with NOT NULL, CHECK and primary-key constraints
    let columns =
        "id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pct INTEGER CHECK (pct BETWEEN 0 AND 100)";
    let sources = "id=payload.0 v=payload.1 pct=payload.2";
    let case = by_index(db, "csvreject", columns, sources);

    // When a message holds good lines, a NULL for the NOT NULL column, a CHECK violation and
    // a duplicate key, and another message follows, then the rest of the message is
    // stored, and the next message too
    let payloads = [
        lf(&["1,10,50", "2,,50", "3,30,150", "4,40,100", "1,99,1"]),
        lf(&["5,50,5", "6,60,6"]),
    ];
    let want = text_rows(&[
        ["1", "10", "50"],
        ["4", "40", "100"],
        ["5", "50", "5"],
        ["6", "60", "6"],
    ]);
    let mut bridge = case.run(&payloads, want);
    // And each rejected line is its own dead letter naming its line and SQLSTATE
    let lines: [(i64, &[u8]); 3] = [(2, b"2,,50"), (3, b"3,30,150"), (5, b"1,99,1")];
    let letter = |((line, payload), state)| Expected {
        sqlstate: Some(state),
        ..bad(line, "rejected", "", payload)
    };
    let letters: Vec<Expected> = lines.into_iter().zip(states).map(letter).collect();
    case.expect_letters(&mut bridge, &letters);
    terminate_ok(&mut bridge);
}

#[test]
fn rejected_lines_are_dead_letters_naming_their_line_postgres() {
    let states = ["23502", "23514", "23505"];
    rejected_lines_are_dead_letters_naming_their_line(&Db::Postgres, states);
}

#[test]
fn rejected_lines_are_dead_letters_naming_their_line_mariadb() {
    let states = ["23000", "23000", "23000"];
    rejected_lines_are_dead_letters_naming_their_line(&Db::MariaDb, states);
}

#[test]
fn twenty_thousand_lines_in_one_message_land_completely() {
    // Given a route by index with the default batch size (500 rows)
    let columns = "id INTEGER PRIMARY KEY, label TEXT, qty BIGINT";
    let sources = "id=payload.0 label=payload.1 qty=payload.2";
    let case = by_index(&Db::Postgres, "csvlarge", columns, sources);
    let t = case.t().to_string();
    let n: i64 = 20_000;

    // When one message carries 20,000 records, and a small message follows
    let big: String = (1..=n)
        .map(|id| format!("{id},\"label {id}, quoted\",{}\n", id * 3))
        .collect();
    case.publish(&[big.into_bytes(), lf(&[format!("{},after,0", n + 1)])]);
    let mut bridge = case.start();

    // Then every record is exactly one row with its values
    case.wait_rows(&mut bridge, n + 1);
    let sql = |what: &str| scalar(&case.db, &format!("SELECT {what} FROM {t}"));
    assert_eq!(sql("COUNT(DISTINCT id)"), n + 1);
    assert_eq!(sql("SUM(qty)"), 3 * (1..=n).sum::<i64>());
    assert_eq!(sql("SUM(id)"), (1..=n + 1).sum::<i64>());
    let some = format!("WHERE id IN (1, 12345, {n}, {})", n + 1);
    let labels = case
        .db
        .query(&format!("SELECT label FROM {t} {some} ORDER BY id"));
    let last = format!("label {n}, quoted");
    let want = [
        "label 1, quoted",
        "label 12345, quoted",
        last.as_str(),
        "after",
    ];
    assert_eq!(labels, text_rows(&want.map(|l| [l])));
    assert_eq!(dlq_list(&case.config), Vec::<Json>::new());

    // And after a restart the big message is not delivered again
    terminate_ok(&mut bridge);
    let mut bridge = case.start();
    case.publish(&[lf(&[format!("{},marker,0", n + 2)])]);
    case.wait_rows(&mut bridge, n + 2);
    assert_eq!(case.count(&format!("WHERE id = {}", n + 2)), 1);
    case.end_clean(bridge);
}

fn injection_shaped_fields_are_stored_verbatim(db: &Db) {
    let columns = "id INTEGER PRIMARY KEY, v TEXT";
    let case = by_index(db, "csvinject", columns, "id=payload.0 v=payload.1");
    let t = case.t().to_string();

    // When fields shaped like SQL injections, placeholders and substitutions arrive, each
    // quoted the RFC 4180 way, then every value is stored verbatim, and the table is intact
    let mut values = vec![
        format!("'); DROP TABLE {t}; --"),
        format!("\"; DROP TABLE {t}; --"),
        format!("\\'); DELETE FROM {t}; --"),
        "Robert'); DROP TABLE Students;--".to_string(),
        "? $1 :v %s {}".to_string(),
        "${HOME} $$ ${MQDB_UNSET:-x}".to_string(),
        "back\\slash \\\\ \\n".to_string(),
    ];
    let quoted = |(i, v): (usize, &String)| format!("{},\"{}\"", i + 1, v.replace('"', "\"\""));
    let mut lines: Vec<String> = values.iter().enumerate().map(quoted).collect();
    // The first one also unquoted: it holds no delimiter
    lines.push(format!("{},{}", values.len() + 1, values[0]));
    values.push(values[0].clone());
    let want = values.iter().enumerate();
    let want = want.map(|(i, v)| vec![Some((i + 1).to_string()), Some(v.clone())]);
    case.run_clean(&[lf(&lines)], want.collect());
}

common::cases! {
    injection_shaped_fields_are_stored_verbatim_postgres:
        injection_shaped_fields_are_stored_verbatim(&Db::Postgres);
    injection_shaped_fields_are_stored_verbatim_mariadb:
        injection_shaped_fields_are_stored_verbatim(&Db::MariaDb);
}

/// Writes `text` to `dir/name` and runs `mqdb -c FILE check`: the file and the run.
fn check_config(dir: &Path, name: &str, text: &str) -> (PathBuf, Ran) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    let ran = mqdb_at(&path, &["check"]);
    (path, ran)
}

/// `text` with the one line equal to `old` (after indentation) replaced by `new` (same
/// indentation); returns the new text and the 1-based line number.
fn replace_line(text: &str, old: &str, new: &str) -> (String, usize) {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let hits: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim() == old)
        .collect();
    assert_eq!(hits.len(), 1, "{old:?} once in:\n{text}");
    lines[hits[0]] = lines[hits[0]].replace(old, new);
    (lines.join("\n") + "\n", hits[0] + 1)
}

#[test]
fn config_errors_name_the_file_and_line() {
    // Given a valid CSV route (checked against the real broker and table)
    let db = Db::Postgres;
    let world = World::new("csv-cfg");
    let table = TempTable::create(&db, "csvcfg", "id INTEGER, sku TEXT, qty INTEGER");
    let route = format!(
        "inbound:\n\
         \x20 - name: csv_cfg\n\
         \x20   broker: b\n\
         \x20   topic: \"{topic}/#\"\n\
         \x20   database: d\n\
         \x20   table: {t}\n\
         \x20   format: csv\n\
         \x20   csv:\n\
         \x20     delimiter: \";\"\n\
         \x20     fields: [id, sku, qty]\n\
         \x20   columns:\n\
         \x20     id: payload.0\n\
         \x20     sku: payload.sku\n\
         \x20     qty: payload.qty\n",
        topic = unique("csvcfg"),
        t = table.name,
    );
    let base = world.config(&db).yaml() + &route;
    let dir = world.dir.path();
    check_config(dir, "valid.yaml", &base).1.code(0);
    // And the same route with a header instead of fields: names are then the header's
    let (header, _) = replace_line(&base, "fields: [id, sku, qty]", "header: true");
    check_config(dir, "header.yaml", &header).1.code(0);

    // When one line is made invalid, then `check` exits 2 naming the file, that line and
    // the problem
    let (with_a, _) = replace_line(&base, "fields: [id, sku, qty]", "fields: [id, a, qty]");
    // (the file, the valid text, the line made invalid, and what the error names: one of
    // these)
    let cases: [(&str, &str, &str, &str, &[&str]); 3] = [
        // A JSON path on a CSV route (its first part is a declared field)
        (
            "path.yaml",
            &with_a,
            "sku: payload.sku",
            "sku: payload.a.b",
            &["payload.a.b"],
        ),
        // A name that is not in `fields:` while header is false
        (
            "unknown.yaml",
            &base,
            "sku: payload.sku",
            "sku: payload.unknown",
            &["unknown"],
        ),
        // A two-character delimiter
        (
            "delimiter.yaml",
            &base,
            "delimiter: \";\"",
            "delimiter: \";;\"",
            &["delimiter", ";;"],
        ),
    ];
    for (name, valid, old, new, named) in cases {
        let (text, line) = replace_line(valid, old, new);
        let (path, ran) = check_config(dir, name, &text);
        ran.code(2)
            .stderr_has(&[&format!("{}:{line}:", path.display())]);
        let names = named.iter().any(|n| ran.stderr.contains(n));
        assert!(names, "expected one of {named:?}:\n{ran}\n{text}");
    }
}
