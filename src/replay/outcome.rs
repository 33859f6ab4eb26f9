//! One letter's fate, and the failures a replay records.

use crate::error::DbError;
use crate::state::Failure;

/// What stops a replay: the database or broker is unreachable.
pub(super) struct Outage(pub(super) String);

/// One letter's fate.
pub(super) type Outcome = (i64, Result<(), Failure>);

pub(super) fn failure(kind: &str, error: impl Into<String>, sqlstate: Option<String>) -> Failure {
    Failure {
        kind: kind.to_string(),
        error: error.into(),
        sqlstate,
    }
}

pub(super) fn outage(e: DbError) -> Outage {
    Outage(format!("database: {e}"))
}
