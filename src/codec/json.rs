//! JSON payloads: decoding inbound messages, and one object per row for outbound routes.

use serde_json::{Map, Number, Value as Json};

use crate::db::poll::{Cell, rfc3339};
use crate::mapping::MapError;

/// Parses a JSON payload, refusing invalid UTF-8 with its position.
pub fn decode(payload: &[u8]) -> Result<Json, MapError> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| MapError::Decode(format!("the payload is not valid UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| MapError::Decode(format!("invalid JSON: {e}")))
}

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
}
