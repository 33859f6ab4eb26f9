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
        (SqlKind::Integer, Json::Number(n)) => integer_from_text(n.as_str()).map(Value::Int),
        (SqlKind::Integer, Json::Bool(b)) => Ok(Value::Int(i64::from(*b))),
        (SqlKind::Decimal, Json::Number(n)) => decimal_from_text(n.as_str()),
        (SqlKind::Decimal, Json::Bool(b)) => Ok(Value::Text(u8::from(*b).to_string())),
        (SqlKind::Float, Json::Number(n)) => float_from_text(n.as_str()),
        (SqlKind::Bool, Json::Bool(b)) => Ok(Value::Bool(*b)),
        (SqlKind::Bool, Json::Number(n)) => match n.as_i64() {
            Some(0) => Ok(Value::Bool(false)),
            Some(1) => Ok(Value::Bool(true)),
            _ => Err(format!(
                "{n} is not a boolean (expected true, false, 0 or 1)"
            )),
        },
        (SqlKind::Timestamp | SqlKind::Date, Json::Number(n)) => {
            let text = n.to_string();
            let t = epoch_from_text(&text)?;
            if kind == SqlKind::Timestamp {
                storable_time(t.time(), &text)?;
            }
            convert(Input::Timestamp(t), kind)
        }
        (SqlKind::Binary, other) => Err(format!(
            "{} cannot be stored in a binary column (binary values are base64 strings)",
            describe(other)
        )),
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

/// A number's exact decimal text taken apart: its significant digits (no leading or
/// trailing zeros) and where the decimal point falls among them.
struct Digits {
    negative: bool,
    digits: Vec<u8>,
    /// How many of `digits` stand before the point; may be negative or exceed their count.
    point: i64,
}

impl Digits {
    /// `None` unless `text` is `[+-]digits[.digits][(e|E)[+-]digits]`.
    fn parse(text: &str) -> Option<Digits> {
        let negative = text.starts_with('-');
        let body = text.strip_prefix(['-', '+']).unwrap_or(text);
        let (mantissa, exponent) = match body.split_once(['e', 'E']) {
            Some((m, e)) => (m, Some(e)),
            None => (body, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
            return None;
        }
        let exponent = match exponent {
            None => 0,
            Some(e) => {
                let unsigned = e.strip_prefix(['-', '+']).unwrap_or(e);
                if unsigned.is_empty() || !all_digits(unsigned) {
                    return None;
                }
                // Beyond this no value is anything but zero, overflow or underflow.
                e.parse::<i64>().unwrap_or(if e.starts_with('-') {
                    -(1 << 40)
                } else {
                    1 << 40
                })
            }
        };
        let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        let leading = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..leading);
        while digits.last() == Some(&0) {
            digits.pop();
        }
        let point = int.len() as i64 - leading as i64 + exponent.clamp(-(1 << 40), 1 << 40);
        Some(Digits {
            negative,
            digits,
            point,
        })
    }

    fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    fn has_fraction(&self) -> bool {
        !self.is_zero() && (self.digits.len() as i64) > self.point
    }

    /// The value when it is integral and fits in an `i128` scaled by `10^extra`.
    fn scaled_integer(&self, extra: i64) -> Option<i128> {
        if self.is_zero() {
            return Some(0);
        }
        let point = self.point + extra;
        if (self.digits.len() as i64) > point || point > 38 {
            return None;
        }
        let mut value: i128 = 0;
        for d in &self.digits {
            value = value * 10 + i128::from(*d);
        }
        for _ in self.digits.len() as i64..point {
            value *= 10;
        }
        Some(if self.negative { -value } else { value })
    }
}

/// Whether a decimal's exact text survives a store that keeps integers within 64 bits
/// exactly but other numbers only to `max` significant digits (SQLite's NUMERIC affinity).
pub fn decimal_fits_digits(text: &str, max: usize) -> bool {
    Digits::parse(text).is_some_and(|d| {
        d.digits.len() <= max
            || d.scaled_integer(0)
                .is_some_and(|v| i64::try_from(v).is_ok())
    })
}

/// How many digits a decimal's exact value has after the point (`1.50` has 1, `15e-3`
/// has 3); 0 for text that is not a number.
pub fn fraction_digits(text: &str) -> i64 {
    Digits::parse(text)
        .filter(|d| !d.is_zero())
        .map_or(0, |d| (d.digits.len() as i64 - d.point).max(0))
}

/// An integer from its exact text: `12345678901234567.0` and `1.2345678901234567e16` are
/// 12345678901234567; a fraction or a value beyond 64 bits is refused, never rounded.
fn integer_from_text(text: &str) -> Result<i64, String> {
    // Plain digits, the common case, need no exact-notation parse.
    if let Ok(v) = text.parse::<i64>() {
        return Ok(v);
    }
    let shown = || format!("{:?}", truncate(text, 80));
    let digits = Digits::parse(text).ok_or_else(|| format!("{} is not an integer", shown()))?;
    if digits.has_fraction() {
        return Err(format!(
            "{} has a fractional part, so it is not an integer",
            shown()
        ));
    }
    digits
        .scaled_integer(0)
        .and_then(|v| i64::try_from(v).ok())
        .ok_or_else(|| format!("{} is out of range for a 64-bit integer column", shown()))
}

/// The nearest double: that is the column's own precision. A value too large for any
/// double is refused instead of becoming infinity.
fn float_from_text(text: &str) -> Result<Value, String> {
    let shown = || format!("{:?}", truncate(text, 80));
    if Digits::parse(text).is_none() {
        return Err(format!("{} is not a number", shown()));
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::Float(f)),
        _ => Err(format!(
            "{} is out of range for a floating-point column",
            shown()
        )),
    }
}

fn from_text(s: &str, kind: SqlKind) -> Result<Value, String> {
    let t = s.trim();
    let quoted = || format!("{:?}", truncate(s, 80));
    match kind {
        SqlKind::Text => Ok(Value::Text(s.to_string())),
        SqlKind::Binary => crate::dlq::base64_decode(t)
            .map(Value::Bytes)
            .map_err(|e| format!("{} is not base64: {e}", quoted())),
        SqlKind::Integer => integer_from_text(t).map(Value::Int),
        SqlKind::Decimal => decimal_from_text(t),
        SqlKind::Float => float_from_text(t),
        SqlKind::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "y" | "on" => Ok(Value::Bool(true)),
            "false" | "f" | "0" | "no" | "n" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("{} is not a boolean", quoted())),
        },
        SqlKind::Timestamp => {
            let ts = timestamp(t)?;
            storable_time(ts.time(), t)?;
            Ok(Value::Timestamp(ts.naive_utc()))
        }
        SqlKind::Date => date(t)
            .map(Value::Date)
            .ok_or_else(|| format!("{} is not a date (expected YYYY-MM-DD)", quoted())),
        SqlKind::Time => {
            let time = NaiveTime::parse_from_str(t, "%H:%M:%S%.f")
                .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
                .map_err(|_| format!("{} is not a time of day (expected HH:MM:SS)", quoted()))?;
            storable_time(time, t)?;
            Ok(Value::Text(time.format("%H:%M:%S%.f").to_string()))
        }
    }
}

/// A date, or the calendar date of a timestamp as written: `2024-05-01T23:30:00-05:00` is
/// 1 May, the day it names, not the UTC day it falls on.
fn date(t: &str) -> Option<NaiveDate> {
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Some(d);
    }
    if let Ok(ts) = DateTime::parse_from_rfc3339(t) {
        return Some(ts.date_naive());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(ts) = DateTime::parse_from_str(t, format) {
            return Some(ts.date_naive());
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, format) {
            return Some(naive.date());
        }
    }
    epoch_from_text(t).ok().map(|ts| ts.date_naive())
}

/// What a timestamp or time column keeps: chrono reads second 60, but no database keeps it
/// (PostgreSQL turns it into the next minute, MariaDB into a zero date); and PostgreSQL,
/// MariaDB and SQLite keep microseconds, so finer digits would be cut off.
fn storable_time(time: NaiveTime, text: &str) -> Result<(), String> {
    use chrono::Timelike;
    let shown = || format!("{:?}", truncate(text, 80));
    if time.nanosecond() >= 1_000_000_000 {
        return Err(format!(
            "{} has a leap second (second 60), which the database cannot hold",
            shown()
        ));
    }
    if !time.nanosecond().is_multiple_of(1000) {
        return Err(format!(
            "{} is finer than a microsecond, which the database cannot hold",
            shown()
        ));
    }
    Ok(())
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
    if Digits::parse(t).is_some() {
        return epoch_from_text(t);
    }
    Err(format!(
        "{:?} is not a timestamp (expected RFC 3339 such as 2024-05-01T12:00:00+02:00, or epoch seconds or milliseconds)",
        truncate(t, 80)
    ))
}

/// Epoch seconds, or milliseconds for numbers of 1e11 and above (as seconds they would lie
/// past the year 5000), from the number's exact text, to the nanosecond.
fn epoch_from_text(t: &str) -> Result<DateTime<Utc>, String> {
    let shown = || format!("{:?}", truncate(t, 80));
    let digits = Digits::parse(t).ok_or_else(|| format!("{} is not an epoch time", shown()))?;
    let millis = !digits.is_zero() && digits.point >= 12;
    let nanos = if millis {
        digits.scaled_integer(6)
    } else {
        digits.scaled_integer(9)
    };
    let nanos = nanos.ok_or_else(|| {
        format!(
            "{} is not an epoch time to the nanosecond, or out of range",
            shown()
        )
    })?;
    let seconds = i64::try_from(nanos.div_euclid(1_000_000_000)).ok();
    let sub = nanos.rem_euclid(1_000_000_000) as u32;
    seconds
        .and_then(|s| DateTime::from_timestamp(s, sub))
        .ok_or_else(|| format!("{} is out of range for an epoch time", shown()))
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

    fn number(text: &str) -> Json {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn integers_come_from_the_exact_text() {
        for (text, want) in [
            ("12345678901234567.0", 12345678901234567),
            ("1.2345678901234567e16", 12345678901234567),
            ("9007199254740993", 9007199254740993),
            ("-9223372036854775808", i64::MIN),
            ("9.223372036854775807E18", i64::MAX),
            ("0e999999999999", 0),
            ("-0.0", 0),
        ] {
            assert_eq!(
                conv(number(text), SqlKind::Integer),
                Ok(Value::Int(want)),
                "{text}"
            );
            assert_eq!(
                conv(json!(text), SqlKind::Integer),
                Ok(Value::Int(want)),
                "{text}"
            );
        }
        for (text, why) in [
            ("12345678901234567.5", "fractional part"),
            ("9100000000000000001.5", "fractional part"),
            ("3.5", "fractional part"),
            ("1e-400", "fractional part"),
            ("9223372036854775808", "out of range"),
            ("1e400", "out of range"),
            ("-9.3e18", "out of range"),
        ] {
            let err = conv(number(text), SqlKind::Integer).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn fraction_digits_count_significant_places() {
        for (text, want) in [
            ("1.50", 1),
            ("15e-3", 3),
            ("12", 0),
            ("1.2e5", 0),
            ("-0.000", 0),
        ] {
            assert_eq!(fraction_digits(text), want, "{text}");
        }
    }

    #[test]
    fn floats_refuse_what_overflows_a_double() {
        assert_eq!(
            conv(number("1e-400"), SqlKind::Float),
            Ok(Value::Float(0.0))
        );
        assert_eq!(
            conv(number("1.7976931348623157e308"), SqlKind::Float),
            Ok(Value::Float(f64::MAX))
        );
        assert!(
            conv(number("1e309"), SqlKind::Float)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(conv(json!("inf"), SqlKind::Float).is_err());
        assert!(conv(json!("NaN"), SqlKind::Float).is_err());
    }

    #[test]
    fn binary_is_base64() {
        assert_eq!(
            conv(json!("AP8Q"), SqlKind::Binary),
            Ok(Value::Bytes(vec![0, 0xff, 0x10]))
        );
        assert!(
            conv(json!("AP8Q!"), SqlKind::Binary)
                .unwrap_err()
                .contains("not base64")
        );
        assert!(
            conv(json!(12), SqlKind::Binary)
                .unwrap_err()
                .contains("base64 strings")
        );
        assert_eq!(
            convert(Input::Bytes(b"AP8Q"), SqlKind::Binary),
            Ok(Value::Bytes(b"AP8Q".to_vec())),
            "a whole payload is its own bytes"
        );
    }

    #[test]
    fn leap_seconds_are_refused_for_times_and_kept_as_text() {
        for kind in [SqlKind::Timestamp, SqlKind::Time] {
            let text = if kind == SqlKind::Time {
                "23:59:60"
            } else {
                "2016-12-31T23:59:60Z"
            };
            assert!(
                conv(json!(text), kind).unwrap_err().contains("leap second"),
                "{kind:?}"
            );
        }
        assert_eq!(
            conv(json!("2016-12-31T23:59:60Z"), SqlKind::Text),
            Ok(Value::Text("2016-12-31T23:59:60Z".into()))
        );
        assert_eq!(
            conv(json!("2016-12-31T23:59:60Z"), SqlKind::Date),
            Ok(Value::Date(NaiveDate::from_ymd_opt(2016, 12, 31).unwrap()))
        );
    }

    #[test]
    fn nanoseconds_are_refused_where_microseconds_are_kept() {
        for (input, kind) in [
            (json!("2024-05-01T12:00:00.1234567Z"), SqlKind::Timestamp),
            (number("1714564800.1234567"), SqlKind::Timestamp),
            (json!("12:00:00.000000001"), SqlKind::Time),
        ] {
            let err = conv(input.clone(), kind).unwrap_err();
            assert!(err.contains("finer than a microsecond"), "{input}: {err}");
        }
        assert_eq!(
            conv(json!("2024-05-01T12:00:00.123456000Z"), SqlKind::Timestamp),
            Ok(ts("2024-05-01 12:00:00.123456"))
        );
    }

    #[test]
    fn a_date_is_the_day_the_value_names() {
        assert_eq!(
            conv(json!("2024-05-01T23:30:00-05:00"), SqlKind::Date),
            Ok(Value::Date(NaiveDate::from_ymd_opt(2024, 5, 1).unwrap()))
        );
        assert_eq!(
            conv(json!("2024-05-01 00:30:00+02:00"), SqlKind::Date),
            Ok(Value::Date(NaiveDate::from_ymd_opt(2024, 5, 1).unwrap()))
        );
    }

    #[test]
    fn epoch_times_are_exact() {
        assert_eq!(
            conv(number("1714564800.123456"), SqlKind::Timestamp),
            Ok(ts("2024-05-01 12:00:00.123456"))
        );
        assert_eq!(
            conv(number("1714564800123.456"), SqlKind::Timestamp),
            Ok(ts("2024-05-01 12:00:00.123456"))
        );
        assert_eq!(
            conv(number("-0.5"), SqlKind::Timestamp),
            Ok(ts("1969-12-31 23:59:59.5"))
        );
    }

    /// Integral forms of `i`: plain, with `.0…`, and in exponent notation.
    fn integral_forms(i: i64, zeros: usize, shift: usize) -> Vec<String> {
        let plain = i.to_string();
        let (sign, digits) = plain.split_at(usize::from(i < 0));
        let mut forms = vec![
            plain.clone(),
            format!("{plain}.{}", "0".repeat(zeros.max(1))),
        ];
        let shift = shift.clamp(1, digits.len().max(2) - 1);
        let (head, tail) = digits.split_at(digits.len().saturating_sub(shift).max(1));
        let shift = tail.len();
        forms.push(format!("{sign}{head}.{tail}e{shift}"));
        forms.push(format!(
            "{sign}{head}.{tail}{}E+{}",
            "0".repeat(zeros),
            shift
        ));
        forms.push(format!("{plain}{}e-{zeros}", "0".repeat(zeros)));
        forms
    }

    proptest! {
        #[test]
        fn any_i64_round_trips(i in any::<i64>()) {
            prop_assert_eq!(conv(json!(i), SqlKind::Integer), Ok(Value::Int(i)));
            prop_assert_eq!(conv(json!(i.to_string()), SqlKind::Integer), Ok(Value::Int(i)));
        }

        #[test]
        fn any_i64_in_any_integral_json_form_is_itself(i in any::<i64>(), zeros in 0usize..4, shift in 0usize..19) {
            for form in integral_forms(i, zeros, shift) {
                prop_assert_eq!(conv(number(&form), SqlKind::Integer), Ok(Value::Int(i)), "{}", form);
                prop_assert_eq!(from_text(&form, SqlKind::Integer), Ok(Value::Int(i)), "{}", form);
            }
        }

        #[test]
        fn a_nonzero_fraction_is_never_an_integer(i in any::<i64>(), frac in "[0-9]{0,8}[1-9]") {
            let text = format!("{i}.{frac}");
            let err = conv(number(&text), SqlKind::Integer).unwrap_err();
            prop_assert!(err.contains("fractional part"), "{}: {}", text, err);
        }

        #[test]
        fn beyond_i64_is_out_of_range(extra in 1u64..u64::MAX, negative in any::<bool>()) {
            let magnitude = i128::from(i64::MAX) + i128::from(extra) + i128::from(negative);
            let text = if negative { format!("-{magnitude}") } else { magnitude.to_string() };
            let err = conv(number(&text), SqlKind::Integer).unwrap_err();
            prop_assert!(err.contains("out of range"), "{}: {}", text, err);
        }

        #[test]
        fn decimals_keep_their_text(int in "-?(0|[1-9][0-9]{0,27})", frac in "[0-9]{0,10}") {
            let text = if frac.is_empty() { int } else { format!("{int}.{frac}") };
            prop_assert_eq!(conv(number(&text), SqlKind::Decimal), Ok(Value::Text(text.clone())));
        }

        #[test]
        fn floats_are_the_nearest_double(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let text = format!("{f:e}");
            prop_assert_eq!(conv(number(&text), SqlKind::Float), Ok(Value::Float(f)));
        }

        #[test]
        fn binary_round_trips_through_base64(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let text = crate::dlq::base64(&bytes);
            prop_assert_eq!(conv(json!(text), SqlKind::Binary), Ok(Value::Bytes(bytes)));
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
