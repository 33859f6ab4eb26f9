//! Row → message payloads for outbound routes: one JSON object or one CSV line per row.

use serde_json::{Map, Number, Value as Json};

use crate::config::CsvOptions;
use crate::db::poll::{Cell, rfc3339};

/// One JSON object: keys are column names; integers stay integers, decimals keep every
/// digit, timestamps are RFC 3339 UTC, binary is base64, NULL is null.
pub fn json_row(columns: &[String], row: &[Cell]) -> Vec<u8> {
    let mut object = Map::with_capacity(columns.len());
    for (name, cell) in columns.iter().zip(row) {
        object.insert(name.clone(), json_value(cell));
    }
    serde_json::to_vec(&Json::Object(object)).unwrap_or_default()
}

fn json_value(cell: &Cell) -> Json {
    match cell {
        Cell::Null => Json::Null,
        Cell::Int(i) => Json::from(*i),
        // With arbitrary precision, a parsed number keeps the digits as written.
        Cell::Decimal(d) => d
            .parse::<Number>()
            .map(Json::Number)
            .unwrap_or_else(|_| Json::String(d.clone())),
        Cell::Float(f) => Number::from_f64(*f).map(Json::Number).unwrap_or(Json::Null),
        Cell::Bool(b) => Json::Bool(*b),
        Cell::Text(t) => Json::String(t.clone()),
        Cell::Bytes(b) => Json::String(crate::dlq::base64(b)),
        Cell::Date(d) => Json::String(d.format("%Y-%m-%d").to_string()),
        Cell::Timestamp(t) => Json::String(rfc3339(t)),
    }
}

/// One CSV line (with its line end): NULL is an empty field, other values their text.
pub fn csv_row(row: &[Cell], options: &CsvOptions) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .delimiter(ascii(options.delimiter, b','))
        .quote(ascii(options.quote, b'"'))
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let fields: Vec<String> = row.iter().map(|c| c.text().unwrap_or_default()).collect();
    // Writing to a Vec cannot fail.
    let _ = writer.write_record(&fields);
    writer.into_inner().unwrap_or_default()
}

fn ascii(c: char, fallback: u8) -> u8 {
    u8::try_from(c)
        .ok()
        .filter(u8::is_ascii)
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn json_keeps_types_and_digits() {
        let columns: Vec<String> = ["i", "d", "f", "b", "t", "ts", "n", "bin"]
            .map(String::from)
            .to_vec();
        let ts = NaiveDate::from_ymd_opt(2024, 5, 1)
            .unwrap()
            .and_hms_opt(10, 0, 0)
            .unwrap();
        let row = vec![
            Cell::Int(9_007_199_254_740_993),
            Cell::Decimal("12345678901234567890.1234567890".into()),
            Cell::Float(1.5),
            Cell::Bool(true),
            Cell::Text("é\"x".into()),
            Cell::Timestamp(ts),
            Cell::Null,
            Cell::Bytes(vec![0xff, 0]),
        ];
        let text = String::from_utf8(json_row(&columns, &row)).unwrap();
        assert_eq!(
            text,
            r#"{"i":9007199254740993,"d":12345678901234567890.1234567890,"f":1.5,"b":true,"t":"é\"x","ts":"2024-05-01T10:00:00Z","n":null,"bin":"/wA="}"#
        );
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let row = vec![Cell::Int(1), Cell::Text("a,\"b\"\nc".into()), Cell::Null];
        let line = String::from_utf8(csv_row(&row, &CsvOptions::default())).unwrap();
        assert_eq!(line, "1,\"a,\"\"b\"\"\nc\",\n");
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(line.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(&record[1], "a,\"b\"\nc");
    }
}
