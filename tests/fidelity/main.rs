//! Fidelity: every value either arrives exactly or becomes a dead letter whose reason
//! names the value's problem, on PostgreSQL, MariaDB and SQLite, in both directions.
//!
//! - [`inbound`]: JSON and CSV values and broker headers into each column type, read back
//!   with the database's own text cast.
//! - [`outbound`]: each column type published as JSON and CSV and parsed back.
//! - [`roundtrip`]: rows published by one route and written by another arrive equal.

#[path = "../common/mod.rs"]
mod common;

mod inbound;
mod outbound;
mod roundtrip;

/// A time or timestamp's text without trailing zeros in its fraction (nor a fraction of
/// zeros): `12:00:00.250000` is `12:00:00.25`, `12:00:00.000` is `12:00:00`.
fn trim_fraction(text: &str) -> String {
    match text.split_once('.') {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                whole.to_string()
            } else {
                format!("{whole}.{frac}")
            }
        }
        None => text.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
