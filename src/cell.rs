//! One value read by an outbound query, and the one text each value has in every payload
//! (JSON, CSV, topics, stored positions), so a consumer reads back exactly what was stored.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Timelike};
use serde_json::Number;

/// One value read from the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    /// A number, every digit as the database printed it.
    Decimal(String),
    Float(f64),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
    Date(NaiveDate),
    /// A moment, in UTC (the session time zone is UTC): published with `Z`.
    Timestamp(NaiveDateTime),
    /// A timestamp without time zone: published without an offset.
    LocalTimestamp(NaiveDateTime),
    /// A JSON document: nested in JSON payloads, its text in CSV.
    Json(String),
    /// A value that cannot be published exactly; the reason names it. Its row becomes a
    /// dead letter.
    Invalid(String),
}

impl Cell {
    /// The value as text: for templates, CSV fields and stored positions.
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Null | Cell::Invalid(_) => None,
            Cell::Int(i) => Some(i.to_string()),
            Cell::Decimal(d) => Some(d.clone()),
            Cell::Float(f) => Some(float_text(*f)),
            Cell::Bool(b) => Some(b.to_string()),
            Cell::Text(t) | Cell::Json(t) => Some(t.clone()),
            Cell::Bytes(b) => Some(crate::dlq::base64(b)),
            Cell::Date(d) => Some(d.format("%Y-%m-%d").to_string()),
            Cell::Timestamp(t) => Some(rfc3339(t)),
            Cell::LocalTimestamp(t) => Some(local_timestamp(t)),
        }
    }
}

/// The shortest text that reads back as the same double; JSON has no NaN or infinities, so
/// they are the strings `NaN`, `Infinity` and `-Infinity`.
pub fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        Number::from_f64(f).map_or_else(|| f.to_string(), |n| n.to_string())
    }
}

/// The double whose shortest text is the shortest text of `f`: published as such, a
/// single-precision value reads the way the database prints it (`0.1`, not
/// `0.10000000149011612`).
pub fn widen_real(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    f.to_string().parse().unwrap_or(f64::from(f))
}

/// RFC 3339 in UTC, with only the fractional digits needed.
pub fn rfc3339(t: &NaiveDateTime) -> String {
    format!("{}Z", local_timestamp(t))
}

/// `YYYY-MM-DDTHH:MM:SS`, with only the fractional digits needed, and no offset.
pub fn local_timestamp(t: &NaiveDateTime) -> String {
    format!(
        "{}{}",
        t.format("%Y-%m-%dT%H:%M:%S"),
        fraction(t.nanosecond())
    )
}

/// `.` and the digits of `nanos` without trailing zeros; empty for a whole second.
pub fn fraction(nanos: u32) -> String {
    if nanos == 0 {
        return String::new();
    }
    let digits = format!("{nanos:09}");
    format!(".{}", digits.trim_end_matches('0'))
}

/// A time of day as the database printed it, with the same fractional-second rule as
/// timestamps: only the digits needed.
pub fn trim_time_fraction(text: &str) -> String {
    let Some(dot) = text.find('.') else {
        return text.to_string();
    };
    let digits = text[dot + 1..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(text.len(), |end| dot + 1 + end);
    let kept = text[dot + 1..digits].trim_end_matches('0');
    let point = if kept.is_empty() { "" } else { "." };
    format!("{}{point}{kept}{}", &text[..dot], &text[digits..])
}

/// The declared family of a SQLite column, whose values may still be of any type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Number,
    Bool,
    Date,
    Timestamp,
    Json,
    Text,
}

/// A SQLite value read as its stored text, kept exactly: what parses exactly as the declared
/// family becomes that; otherwise an integer stays an integer and anything else is the stored
/// text.
pub fn sqlite_value(text: String, affinity: Affinity) -> Cell {
    let exact = match affinity {
        Affinity::Number => number(&text),
        Affinity::Bool => match text.as_str() {
            "0" => Some(Cell::Bool(false)),
            "1" => Some(Cell::Bool(true)),
            _ => None,
        },
        Affinity::Date => NaiveDate::parse_from_str(&text, "%Y-%m-%d")
            .ok()
            .filter(|d| d.format("%Y-%m-%d").to_string() == text)
            .map(Cell::Date),
        Affinity::Timestamp => sqlite_timestamp(&text),
        Affinity::Json => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .map(|_| Cell::Json(text.clone())),
        Affinity::Text => return Cell::Text(text),
    };
    exact
        .or_else(|| text.parse::<i64>().ok().map(Cell::Int))
        .unwrap_or(Cell::Text(text))
}

/// An integer, or a number in JSON's syntax (digits kept), or SQLite's infinities.
fn number(text: &str) -> Option<Cell> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Cell::Int(i));
    }
    match text {
        "Inf" => return Some(Cell::Float(f64::INFINITY)),
        "-Inf" => return Some(Cell::Float(f64::NEG_INFINITY)),
        _ => {}
    }
    // SQLite prints exponents as `e+22`, which JSON allows too.
    text.parse::<Number>()
        .ok()
        .map(|_| Cell::Decimal(text.to_string()))
}

/// A timestamp text: with an offset it is converted to UTC; without one it is taken as UTC,
/// which is how mqdb itself stores timestamps in SQLite (it has no type with a zone).
/// Anything else (e.g. `2024-05-01garbage`) does not parse.
fn sqlite_timestamp(text: &str) -> Option<Cell> {
    let t = text.trim();
    if t != text {
        return None;
    }
    if let Ok(moment) = DateTime::parse_from_rfc3339(t)
        .or_else(|_| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%:z"))
    {
        return Some(Cell::Timestamp(moment.naive_utc()));
    }
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
    .map(Cell::Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn floats_json_cannot_hold_are_named() {
        assert_eq!(float_text(f64::NAN), "NaN");
        assert_eq!(float_text(f64::INFINITY), "Infinity");
        assert_eq!(float_text(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(float_text(1.5e300), "1.5e+300");
        assert_eq!(float_text(5e-324), "5e-324");
        assert_eq!(float_text(-0.0), "-0.0");
        assert_eq!(float_text(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(widen_real(0.1f32).to_string(), "0.1");
    }

    #[test]
    fn fractions_only_with_the_digits_needed() {
        let t = NaiveDate::from_ymd_opt(2024, 5, 1)
            .unwrap()
            .and_hms_micro_opt(10, 0, 0, 500_000)
            .unwrap();
        assert_eq!(rfc3339(&t), "2024-05-01T10:00:00.5Z");
        assert_eq!(local_timestamp(&t), "2024-05-01T10:00:00.5");
        let whole = t.with_nanosecond(0).unwrap();
        assert_eq!(rfc3339(&whole), "2024-05-01T10:00:00Z");
        assert_eq!(trim_time_fraction("12:00:00.500000"), "12:00:00.5");
        assert_eq!(trim_time_fraction("12:00:00.000000"), "12:00:00");
        assert_eq!(
            trim_time_fraction("12:00:00.123456+02"),
            "12:00:00.123456+02"
        );
        assert_eq!(trim_time_fraction("12:00:00"), "12:00:00");
    }

    #[test]
    fn sqlite_values_keep_what_is_stored() {
        use Affinity::*;
        let text = |s: &str| Cell::Text(s.into());
        assert_eq!(sqlite_value("abc".into(), Number), text("abc"));
        assert_eq!(sqlite_value("notint".into(), Number), text("notint"));
        assert_eq!(sqlite_value("12".into(), Number), Cell::Int(12));
        assert_eq!(
            sqlite_value("1.5e+300".into(), Number),
            Cell::Decimal("1.5e+300".into())
        );
        assert_eq!(sqlite_value("garbage".into(), Date), text("garbage"));
        assert_eq!(sqlite_value("3".into(), Timestamp), Cell::Int(3));
        let noon = NaiveDate::from_ymd_opt(2024, 5, 1)
            .unwrap()
            .and_hms_opt(10, 0, 0)
            .unwrap();
        assert_eq!(
            sqlite_value("2024-05-01T12:00:00+02:00".into(), Timestamp),
            Cell::Timestamp(noon)
        );
        assert_eq!(
            sqlite_value("2024-05-01 10:00:00".into(), Timestamp),
            Cell::Timestamp(noon)
        );
        assert_eq!(sqlite_value("ab".into(), Json), text("ab"));
        assert_eq!(sqlite_value("yes".into(), Bool), text("yes"));
        assert_eq!(sqlite_value("1".into(), Bool), Cell::Bool(true));
        assert_eq!(sqlite_value("007".into(), Text), text("007"));
    }

    proptest! {
        /// Every finite double's text reads back as the same double, in JSON and CSV alike.
        #[test]
        fn float_text_round_trips(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            let text = float_text(f);
            prop_assert_eq!(Cell::Float(f).text(), Some(text.clone()));
            if f.is_finite() {
                let back: f64 = text.parse().unwrap();
                prop_assert_eq!(back.to_bits(), f.to_bits());
            }
        }

        /// A single-precision value's text reads back as the same single.
        #[test]
        fn reals_round_trip(bits in any::<u32>()) {
            let f = f32::from_bits(bits);
            prop_assume!(f.is_finite());
            let back: f32 = float_text(widen_real(f)).parse().unwrap();
            prop_assert_eq!(back.to_bits(), f.to_bits());
        }

        /// A timestamp's text reads back as the same instant, to the nanosecond.
        #[test]
        fn timestamps_round_trip(secs in -62_000_000_000i64..253_000_000_000, nanos in 0u32..1_000_000_000) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap().naive_utc();
            let back = DateTime::parse_from_rfc3339(&rfc3339(&t)).unwrap().naive_utc();
            prop_assert_eq!(back, t);
            let local = NaiveDateTime::parse_from_str(&local_timestamp(&t), "%Y-%m-%dT%H:%M:%S%.f").unwrap();
            prop_assert_eq!(local, t);
        }
    }
}
