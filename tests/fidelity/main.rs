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
