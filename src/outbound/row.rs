//! What one polled row becomes: its payload, the values its topic template reads, its track
//! values and the position just past it.

use std::time::Duration;

use crate::cell::Cell;
use crate::codec;
use crate::config::{CsvOptions, Format};
use crate::db::poll::Polled;

/// The row's message body in the route's format.
pub fn payload(format: Format, csv: &CsvOptions, columns: &[String], row: &[Cell]) -> Vec<u8> {
    match format {
        Format::Json => codec::json_row(columns, row),
        Format::Csv => codec::csv_row(row, csv.delimiter, csv.quote),
    }
}

/// How many of `rows` lead with a track timestamp at least `delay` old: a younger row may
/// still have an older one committing before it.
pub fn older_than(rows: &[Vec<Cell>], first: usize, delay: Duration) -> usize {
    let cutoff =
        chrono::Utc::now().naive_utc() - chrono::Duration::from_std(delay).unwrap_or_default();
    rows.iter()
        .take_while(|row| {
            !matches!(&row[first], Cell::Timestamp(t) | Cell::LocalTimestamp(t) if *t > cutoff)
        })
        .count()
}

/// Why a row cannot be published exactly, naming its value's problem.
pub fn unpublishable(row: &[Cell]) -> Option<String> {
    let reasons: Vec<&str> = row
        .iter()
        .filter_map(|c| match c {
            Cell::Invalid(reason) => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// The row's track values, as its dead letter keeps them.
pub fn track_values(polled: &Polled, row: &[Cell]) -> Vec<Option<String>> {
    polled.track.iter().map(|&c| row[c].text()).collect()
}

/// The position just past `row`; a NULL track value keeps the old one.
pub fn next_position(track: &[usize], row: &[Cell], old: &[String]) -> Vec<String> {
    track
        .iter()
        .zip(old.iter())
        .map(|(&c, old)| row[c].text().unwrap_or_else(|| old.clone()))
        .collect()
}

/// The text of `row`'s value in `column` (named case-insensitively), for templates.
pub fn column_text(polled: &Polled, row: &[Cell], column: &str) -> Option<String> {
    polled
        .columns
        .iter()
        .position(|c| c.eq_ignore_ascii_case(column))
        .and_then(|i| row[i].text())
}
