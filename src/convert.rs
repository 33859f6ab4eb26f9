//! Conversion of payload values to the SQL type of their target column, as the database
//! catalog reports it. Everything here is pure and property-tested.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde_json::Value as Json;

/// The families of SQL types mqdb converts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlKind {
    Integer,
    Decimal,
    Float,
    Bool,
    Text,
    Date,
    Time,
    Timestamp,
    Binary,
}

/// A value ready to be bound as a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Text, and decimals and times kept as their exact text.
    Text(String),
    Bytes(Vec<u8>),
    Date(NaiveDate),
    /// Always UTC.
    Timestamp(NaiveDateTime),
}

/// Where a value comes from, before conversion.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Json(&'a Json),
    Text(&'a str),
    Bytes(&'a [u8]),
    Int(i64),
    Bool(bool),
    Timestamp(DateTime<Utc>),
}

/// Converts one input to the column's kind, or explains why it cannot.
pub fn convert(input: Input<'_>, kind: SqlKind) -> Result<Value, String> {
    match input {
        Input::Json(Json::Null) => Ok(Value::Null),
        Input::Json(Json::String(s)) if kind != SqlKind::Text => from_text(s, kind),
        Input::Text(s) if kind != SqlKind::Text => from_text(s, kind),
        Input::Json(json) => from_json(json, kind),
        Input::Text(s) => Ok(Value::Text(s.to_string())),
        Input::Bytes(b) => match kind {
            SqlKind::Binary => Ok(Value::Bytes(b.to_vec())),
            _ => {
                let text = std::str::from_utf8(b)
                    .map_err(|e| format!("the payload is not valid UTF-8 ({e})"))?;
                convert(Input::Text(text), kind)
            }
        },
        Input::Int(i) => from_json(&Json::from(i), kind),
        Input::Bool(b) => from_json(&Json::Bool(b), kind),
        Input::Timestamp(t) => match kind {
            SqlKind::Timestamp => Ok(Value::Timestamp(t.naive_utc())),
            SqlKind::Date => Ok(Value::Date(t.date_naive())),
            SqlKind::Text => Ok(Value::Text(t.to_rfc3339())),
            other => Err(format!(
                "a timestamp cannot be stored in a {other:?} column"
            )),
        },
    }
}

fn from_json(json: &Json, kind: SqlKind) -> Result<Value, String> {
    match (kind, json) {
        (SqlKind::Text, Json::String(s)) => Ok(Value::Text(s.clone())),
        (SqlKind::Text, Json::Number(n)) => Ok(Value::Text(n.to_string())),
        (SqlKind::Text, Json::Bool(b)) => Ok(Value::Text(b.to_string())),
        (SqlKind::Text, other) => Ok(Value::Text(other.to_string())),
        (SqlKind::Binary, other) => Ok(Value::Bytes(other.to_string().into_bytes())),
        (SqlKind::Integer, Json::Number(n)) => integer_from_number(n),
        (SqlKind::Integer, Json::Bool(b)) => Ok(Value::Int(i64::from(*b))),
        (SqlKind::Decimal, Json::Number(n)) => decimal_from_text(&n.to_string()),
        (SqlKind::Decimal, Json::Bool(b)) => Ok(Value::Text(u8::from(*b).to_string())),
        (SqlKind::Float, Json::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Value::Float)
            .ok_or_else(|| format!("{n} is out of range for a floating-point column")),
        (SqlKind::Bool, Json::Bool(b)) => Ok(Value::Bool(*b)),
        (SqlKind::Bool, Json::Number(n)) => match n.as_i64() {
            Some(0) => Ok(Value::Bool(false)),
            Some(1) => Ok(Value::Bool(true)),
            _ => Err(format!(
                "{n} is not a boolean (expected true, false, 0 or 1)"
            )),
        },
        (SqlKind::Timestamp | SqlKind::Date, Json::Number(n)) => {
            let t = epoch(n.as_f64().unwrap_or(f64::NAN))?;
            convert(Input::Timestamp(t), kind)
        }
        (kind, other) => Err(format!(
            "{} cannot be stored in a {kind:?} column",
            describe(other)
        )),
    }
}

fn describe(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn integer_from_number(n: &serde_json::Number) -> Result<Value, String> {
    if let Some(i) = n.as_i64() {
        return Ok(Value::Int(i));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Value::Int(f as i64)),
        _ => Err(format!("{n} is not an integer")),
    }
}

fn from_text(s: &str, kind: SqlKind) -> Result<Value, String> {
    let t = s.trim();
    let quoted = || format!("{:?}", truncate(s, 80));
    match kind {
        SqlKind::Text => Ok(Value::Text(s.to_string())),
        SqlKind::Binary => Ok(Value::Bytes(s.as_bytes().to_vec())),
        SqlKind::Integer => t
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| format!("{} is not an integer", quoted())),
        SqlKind::Decimal => decimal_from_text(t),
        SqlKind::Float => t
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float)
            .ok_or_else(|| format!("{} is not a number", quoted())),
        SqlKind::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "y" | "on" => Ok(Value::Bool(true)),
            "false" | "f" | "0" | "no" | "n" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("{} is not a boolean", quoted())),
        },
        SqlKind::Timestamp => timestamp(t).map(|ts| Value::Timestamp(ts.naive_utc())),
        SqlKind::Date => NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .or_else(|_| timestamp(t).map(|ts| ts.date_naive()))
            .map(Value::Date)
            .map_err(|_| format!("{} is not a date (expected YYYY-MM-DD)", quoted())),
        SqlKind::Time => NaiveTime::parse_from_str(t, "%H:%M:%S%.f")
            .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
            .map(|time| Value::Text(time.format("%H:%M:%S%.f").to_string()))
            .map_err(|_| format!("{} is not a time of day (expected HH:MM:SS)", quoted())),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Keeps every digit: decimals travel as text and the database parses them.
fn decimal_from_text(t: &str) -> Result<Value, String> {
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_ok = !(int.is_empty() && frac.is_empty())
        && int.chars().all(|c| c.is_ascii_digit())
        && frac.chars().all(|c| c.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    if digits_ok && exponent_ok {
        Ok(Value::Text(t.to_string()))
    } else {
        Err(format!("{:?} is not a decimal number", truncate(t, 80)))
    }
}

/// RFC 3339 with any offset, or a naive date-time taken as UTC, or epoch seconds/millis.
pub fn timestamp(t: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(ts) = DateTime::parse_from_rfc3339(t) {
        return Ok(ts.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(ts) = DateTime::parse_from_str(t, format) {
            return Ok(ts.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, format) {
            return Ok(naive.and_utc());
        }
    }
    if let Ok(n) = t.parse::<f64>() {
        return epoch(n);
    }
    Err(format!(
        "{:?} is not a timestamp (expected RFC 3339 such as 2024-05-01T12:00:00+02:00, or epoch seconds or milliseconds)",
        truncate(t, 80)
    ))
}

/// Numbers of 1e11 and above are milliseconds: as seconds they would lie past the year 5000.
fn epoch(n: f64) -> Result<DateTime<Utc>, String> {
    if !n.is_finite() {
        return Err(format!("{n} is not an epoch time"));
    }
    let millis = if n.abs() >= 1e11 { n } else { n * 1000.0 };
    let whole = millis.floor();
    let nanos = ((millis - whole) * 1_000_000.0).round() as u32;
    DateTime::from_timestamp_millis(whole as i64)
        .and_then(|t| t.checked_add_signed(chrono::Duration::nanoseconds(i64::from(nanos))))
        .ok_or_else(|| format!("{n} is out of range for an epoch time"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn conv(j: Json, kind: SqlKind) -> Result<Value, String> {
        convert(Input::Json(&j), kind)
    }

    fn ts(s: &str) -> Value {
        Value::Timestamp(NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap())
    }

    #[test]
    fn integers() {
        assert_eq!(conv(json!(42), SqlKind::Integer), Ok(Value::Int(42)));
        assert_eq!(conv(json!("-7"), SqlKind::Integer), Ok(Value::Int(-7)));
        assert_eq!(conv(json!(3.0), SqlKind::Integer), Ok(Value::Int(3)));
        assert_eq!(conv(json!(true), SqlKind::Integer), Ok(Value::Int(1)));
        assert!(conv(json!(3.5), SqlKind::Integer).is_err());
        assert!(conv(json!("abc"), SqlKind::Integer).is_err());
        assert!(conv(json!([1]), SqlKind::Integer).is_err());
    }

    #[test]
    fn decimals_keep_every_digit() {
        let j: Json = serde_json::from_str("12345678901234567890.123456789012").unwrap();
        assert_eq!(
            conv(j, SqlKind::Decimal),
            Ok(Value::Text("12345678901234567890.123456789012".into()))
        );
        assert!(conv(json!("1.2.3"), SqlKind::Decimal).is_err());
        assert!(conv(json!("1e"), SqlKind::Decimal).is_err());
        assert_eq!(
            conv(json!("-1.5e3"), SqlKind::Decimal),
            Ok(Value::Text("-1.5e3".into()))
        );
    }

    #[test]
    fn timestamps_with_offsets_become_utc() {
        assert_eq!(
            conv(json!("2024-05-01T12:00:00+02:00"), SqlKind::Timestamp),
            Ok(ts("2024-05-01 10:00:00"))
        );
        assert_eq!(
            conv(json!("2024-05-01T12:00:00.250Z"), SqlKind::Timestamp),
            Ok(ts("2024-05-01 12:00:00.250"))
        );
        assert_eq!(
            conv(json!("2024-05-01 12:00:00"), SqlKind::Timestamp),
            Ok(ts("2024-05-01 12:00:00"))
        );
        assert_eq!(
            conv(json!(1714564800), SqlKind::Timestamp),
            Ok(ts("2024-05-01 12:00:00"))
        );
        assert_eq!(
            conv(json!(1714564800123i64), SqlKind::Timestamp),
            Ok(ts("2024-05-01 12:00:00.123"))
        );
        assert!(conv(json!("yesterday"), SqlKind::Timestamp).is_err());
    }

    #[test]
    fn other_kinds() {
        assert_eq!(conv(json!("yes"), SqlKind::Bool), Ok(Value::Bool(true)));
        assert_eq!(conv(json!(0), SqlKind::Bool), Ok(Value::Bool(false)));
        assert!(conv(json!(2), SqlKind::Bool).is_err());
        assert_eq!(conv(json!(1.5), SqlKind::Float), Ok(Value::Float(1.5)));
        assert_eq!(
            conv(json!({"a":1}), SqlKind::Text),
            Ok(Value::Text("{\"a\":1}".into()))
        );
        assert_eq!(conv(json!(null), SqlKind::Integer), Ok(Value::Null));
        assert_eq!(
            conv(json!("2024-05-01"), SqlKind::Date),
            Ok(Value::Date(NaiveDate::from_ymd_opt(2024, 5, 1).unwrap()))
        );
        assert_eq!(
            conv(json!("07:30"), SqlKind::Time),
            Ok(Value::Text("07:30:00".into()))
        );
    }

    #[test]
    fn invalid_utf8_payloads_are_refused_for_text() {
        let bytes = [0xff, 0xfe, b'a'];
        assert!(convert(Input::Bytes(&bytes), SqlKind::Text).is_err());
        assert_eq!(
            convert(Input::Bytes(&bytes), SqlKind::Binary),
            Ok(Value::Bytes(bytes.to_vec()))
        );
    }

    proptest! {
        #[test]
        fn any_i64_round_trips(i in any::<i64>()) {
            prop_assert_eq!(conv(json!(i), SqlKind::Integer), Ok(Value::Int(i)));
            prop_assert_eq!(conv(json!(i.to_string()), SqlKind::Integer), Ok(Value::Int(i)));
        }

        #[test]
        fn any_rfc3339_offset_lands_on_the_same_instant(secs in 0i64..4_000_000_000, offset_min in -720i32..=840) {
            let utc = DateTime::from_timestamp(secs, 0).unwrap();
            let zone = chrono::FixedOffset::east_opt(offset_min * 60).unwrap();
            let text = utc.with_timezone(&zone).to_rfc3339();
            prop_assert_eq!(conv(json!(text), SqlKind::Timestamp), Ok(Value::Timestamp(utc.naive_utc())));
        }

        #[test]
        fn text_never_fails(s in ".*") {
            prop_assert_eq!(conv(json!(s.clone()), SqlKind::Text), Ok(Value::Text(s)));
        }
    }
}
