//! One block of an outbound poll's rows: the buffer of each column, grown when a value is
//! longer than it, and each buffered value turned into a [`Cell`] exactly — or into
//! [`Cell::Invalid`] naming why it cannot be.

use std::collections::HashMap;

use chrono::{NaiveDate, NaiveDateTime};
use odbc_api::buffers::{AnyColumnBufferSlice, BufferDesc, Indicator};

use super::shape::Read;
use crate::cell::{Cell, sqlite_value, trim_time_fraction, widen_real};

/// The largest value a poll reads; a larger one makes its row a dead letter.
pub const MAX_VALUE: usize = 64 << 20;
/// The widest buffer: one byte more than the largest value, so a value that fills it is
/// known to be too large.
const WIDEST: usize = MAX_VALUE + 1;
/// The first buffer of a long column, before its values have been seen.
const FIRST_WIDTH: usize = 4096;

/// Grows the buffer of every long column that holds a value longer than it (up to
/// [`WIDEST`]); true if one grew, and the poll must be read again.
pub fn grow_cut_columns<'a>(
    reads: &[Read],
    column: impl Fn(usize) -> AnyColumnBufferSlice<'a>,
    widths: &mut HashMap<usize, usize>,
) -> bool {
    let mut grew = false;
    for (c, read) in reads.iter().enumerate() {
        if !read.is_long() {
            continue;
        }
        let slice = column(c);
        let cut = match slice.as_text() {
            Some(text) => text.has_truncated_values(),
            None => slice.as_binary().and_then(|b| b.has_truncated_values()),
        };
        let Some(indicator) = cut else { continue };
        let current = widths.get(&c).copied().unwrap_or(FIRST_WIDTH);
        if current >= WIDEST {
            continue;
        }
        let needed = match indicator {
            Indicator::Length(n) => n.next_power_of_two(),
            _ => current * 4,
        };
        widths.insert(c, needed.max(current * 2).min(WIDEST));
        grew = true;
    }
    grew
}

/// Names the column in the reason of a value that cannot be published.
pub fn named(column: &str, cell: Cell) -> Cell {
    match cell {
        Cell::Invalid(reason) => Cell::Invalid(format!("column {column}: {reason}")),
        other => other,
    }
}

pub fn buffer_desc(read: Read, learnt: Option<usize>) -> BufferDesc {
    let width = learnt.unwrap_or(FIRST_WIDTH);
    match read {
        Read::Int => BufferDesc::I64 { nullable: true },
        Read::Float => BufferDesc::F64 { nullable: true },
        // As doubles: MariaDB's driver reads large FLOAT values into a float buffer as 0.
        Read::Real => BufferDesc::F64 { nullable: true },
        Read::Bool => BufferDesc::Bit { nullable: true },
        Read::IntBool => BufferDesc::I64 { nullable: true },
        Read::Date => BufferDesc::Date { nullable: true },
        Read::Timestamp { .. } => BufferDesc::Timestamp { nullable: true },
        Read::Binary => BufferDesc::Binary { max_bytes: width },
        Read::Digits
        | Read::DateText
        | Read::Time
        | Read::Text
        | Read::Json
        | Read::Uuid
        | Read::Loose(_) => BufferDesc::Text { max_str_len: width },
    }
}

pub fn desc_bytes(desc: &BufferDesc) -> usize {
    match desc {
        BufferDesc::Text { max_str_len } => *max_str_len + 1,
        BufferDesc::Binary { max_bytes } => *max_bytes,
        _ => 16,
    }
}

pub fn cell(column: AnyColumnBufferSlice<'_>, row: usize, read: Read) -> Cell {
    use odbc_api::Bit;
    let or_null = |c: Option<Cell>| c.unwrap_or(Cell::Null);
    match read {
        Read::Int => or_null(
            column
                .as_nullable_slice::<i64>()
                .and_then(|s| s.get(row).map(|v| Cell::Int(*v))),
        ),
        Read::Float => or_null(
            column
                .as_nullable_slice::<f64>()
                .and_then(|s| s.get(row).map(|v| Cell::Float(*v))),
        ),
        Read::Real => or_null(
            column
                .as_nullable_slice::<f64>()
                .and_then(|s| s.get(row).map(|v| Cell::Float(real(*v)))),
        ),
        Read::Bool => or_null(
            column
                .as_nullable_slice::<Bit>()
                .and_then(|s| s.get(row).map(|v| Cell::Bool(v.as_bool()))),
        ),
        Read::IntBool => or_null(
            column
                .as_nullable_slice::<i64>()
                .and_then(|s| s.get(row).map(|v| int_bool(*v))),
        ),
        Read::Date => or_null(
            column
                .as_nullable_slice::<odbc_api::sys::Date>()
                .and_then(|s| s.get(row).map(date_cell)),
        ),
        Read::Timestamp { utc, sentinels } => or_null(
            column
                .as_nullable_slice::<odbc_api::sys::Timestamp>()
                .and_then(|s| s.get(row).map(|t| timestamp_cell(t, utc, sentinels))),
        ),
        Read::Binary => or_null(column.as_binary().and_then(|s| {
            s.get(row).map(|b| {
                if b.len() >= WIDEST {
                    too_large()
                } else {
                    Cell::Bytes(b.to_vec())
                }
            })
        })),
        _ => or_null(
            column
                .as_text()
                .and_then(|s| s.get(row).map(|b| text_cell(b, read))),
        ),
    }
}

/// A single-precision value read as a double, with the shortest digits of the single.
fn real(v: f64) -> f64 {
    let single = v as f32;
    if f64::from(single) == v {
        widen_real(single)
    } else {
        v
    }
}

/// A `BOOLEAN` (`tinyint(1)`) value: only 0 and 1 are booleans.
fn int_bool(v: i64) -> Cell {
    match v {
        0 => Cell::Bool(false),
        1 => Cell::Bool(true),
        other => Cell::Invalid(format!(
            "{other} is not a boolean, though the column is BOOLEAN (tinyint(1)): publishing it as true would change it"
        )),
    }
}

fn too_large() -> Cell {
    Cell::Invalid(format!(
        "the value is larger than {} MiB, the most a poll reads",
        MAX_VALUE >> 20
    ))
}

/// A value read as text, kept exactly: invalid UTF-8 is refused, never replaced.
fn text_cell(bytes: &[u8], read: Read) -> Cell {
    if bytes.len() >= WIDEST {
        return too_large();
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Cell::Invalid("the value is not valid UTF-8 text".into());
    };
    match read {
        Read::Digits => Cell::Decimal(text.trim().to_string()),
        Read::DateText => text_date(text),
        Read::Time => Cell::Text(trim_time_fraction(text)),
        Read::Json => Cell::Json(text.to_string()),
        Read::Uuid => Cell::Text(text.to_ascii_lowercase()),
        Read::Loose(affinity) => sqlite_value(text.to_string(), affinity),
        _ => Cell::Text(text.to_string()),
    }
}

/// A date printed as `YYYY-MM-DD`, exactly; anything else (`0000-00-00` for the
/// infinities, BC dates) cannot be published as a date.
fn text_date(text: &str) -> Cell {
    match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(date) if date.format("%Y-%m-%d").to_string() == text => Cell::Date(date),
        _ => Cell::Invalid(format!(
            "the driver reports the date as {text:?}, which is no calendar date (PostgreSQL's driver reports `infinity` and `-infinity` so); cast the column to text in the query to publish it"
        )),
    }
}

fn date_cell(d: &odbc_api::sys::Date) -> Cell {
    match NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day)) {
        Some(date) => Cell::Date(date),
        None => Cell::Invalid(format!(
            "the driver reports the date as {:04}-{:02}-{:02}, which is no calendar date",
            d.year, d.month, d.day
        )),
    }
}

/// psqlODBC reports `infinity` as this timestamp, exactly like the real value.
fn is_infinity_sentinel(t: &odbc_api::sys::Timestamp) -> bool {
    (
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.fraction,
    ) == (9999, 12, 31, 23, 59, 59, 0)
}

fn timestamp_cell(t: &odbc_api::sys::Timestamp, utc: bool, sentinels: bool) -> Cell {
    if sentinels && (is_infinity_sentinel(t) || t.year <= 0) {
        return Cell::Invalid(format!(
            "PostgreSQL's driver reports `infinity`, `-infinity` and {:04}-{:02}-{:02} {:02}:{:02}:{:02} alike; cast the column to text in the query to publish it",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        ));
    }
    let naive: Option<NaiveDateTime> =
        NaiveDate::from_ymd_opt(i32::from(t.year), u32::from(t.month), u32::from(t.day)).and_then(
            |d| {
                d.and_hms_nano_opt(
                    u32::from(t.hour),
                    u32::from(t.minute),
                    u32::from(t.second),
                    t.fraction,
                )
            },
        );
    match naive {
        Some(n) if utc => Cell::Timestamp(n),
        Some(n) => Cell::LocalTimestamp(n),
        None => Cell::Invalid(format!(
            "the driver reports the timestamp as {:04}-{:02}-{:02} {:02}:{:02}:{:02}, which is no calendar time",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odbc_api::sys::Timestamp;

    fn stamp(year: i16, month: u16, day: u16, hms: (u16, u16, u16), fraction: u32) -> Timestamp {
        Timestamp {
            year,
            month,
            day,
            hour: hms.0,
            minute: hms.1,
            second: hms.2,
            fraction,
        }
    }

    #[test]
    fn timestamps_keep_their_zone_rule_and_refuse_the_infinity_sentinels() {
        let noon = stamp(2024, 5, 1, (12, 0, 0), 500_000_000);
        let text = |c: Cell| c.text().unwrap_or_else(|| format!("{c:?}"));
        assert_eq!(
            text(timestamp_cell(&noon, true, true)),
            "2024-05-01T12:00:00.5Z"
        );
        assert_eq!(
            text(timestamp_cell(&noon, false, false)),
            "2024-05-01T12:00:00.5"
        );
        let infinity = stamp(9999, 12, 31, (23, 59, 59), 0);
        assert!(
            matches!(timestamp_cell(&infinity, true, true), Cell::Invalid(r) if r.contains("infinity"))
        );
        // Only psqlODBC uses the sentinel; elsewhere it is a real value.
        assert_eq!(
            text(timestamp_cell(&infinity, true, false)),
            "9999-12-31T23:59:59Z"
        );
        let minus = stamp(-9999, 1, 1, (0, 0, 0), 0);
        assert!(matches!(
            timestamp_cell(&minus, true, true),
            Cell::Invalid(_)
        ));
        let zero = stamp(0, 0, 0, (0, 0, 0), 0);
        assert!(matches!(
            timestamp_cell(&zero, false, false),
            Cell::Invalid(_)
        ));
    }

    #[test]
    fn dates_read_as_text_are_exact_or_refused() {
        assert_eq!(
            text_date("2024-02-29"),
            Cell::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())
        );
        for bad in ["0000-00-00", "0044-03-15 BC", "2024-2-29", "infinity"] {
            assert!(matches!(text_date(bad), Cell::Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn text_is_kept_exactly_or_refused() {
        assert_eq!(
            text_cell("é".as_bytes(), Read::Text),
            Cell::Text("é".into())
        );
        assert!(matches!(text_cell(b"\xff", Read::Text), Cell::Invalid(_)));
        assert_eq!(
            text_cell(b"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", Read::Uuid),
            Cell::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
        );
        assert_eq!(
            text_cell(b"12:00:00.500000", Read::Time),
            Cell::Text("12:00:00.5".into())
        );
        assert_eq!(
            text_cell(b" 1.50 ", Read::Digits),
            Cell::Decimal("1.50".into())
        );
    }
}
