//! Error types, and the one place that decides whether a failure is the data's fault
//! (dead-letter it) or the environment's (retry it).

use thiserror::Error;

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The message or row is at fault: dead-letter it, let the rest flow.
    Data,
    /// The database or broker is unreachable or overloaded: retry, never dead-letter.
    Outage,
}

/// A failure reported by the database through ODBC.
#[derive(Debug, Clone, Error)]
#[error("{message}{}", sqlstate.as_deref().map(|s| format!(" (SQLSTATE {s})")).unwrap_or_default())]
pub struct DbError {
    pub sqlstate: Option<String>,
    pub message: String,
    /// The connection reported itself dead after the failure.
    pub connection_dead: bool,
    /// The configuration is at fault (a `start` value its track column cannot take), so
    /// retrying cannot help.
    pub misconfigured: bool,
}

impl DbError {
    pub fn new(message: impl Into<String>) -> Self {
        DbError {
            sqlstate: None,
            message: message.into(),
            connection_dead: false,
            misconfigured: false,
        }
    }

    pub fn from_odbc(error: &odbc_api::Error) -> Self {
        match error {
            odbc_api::Error::Diagnostics { record, .. } => DbError {
                sqlstate: Some(record.state.as_str().to_string()),
                message: one_line(&String::from_utf8_lossy(&record.message)),
                connection_dead: false,
                misconfigured: false,
            },
            other => DbError::new(other.to_string()),
        }
    }

    pub fn class(&self) -> Class {
        classify(
            self.sqlstate.as_deref(),
            &self.message,
            self.connection_dead,
        )
    }
}

/// Driver messages may span lines (PostgreSQL's DETAIL and HINT); logs, dead letters and
/// `check` show one line per problem.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Classifies by SQLSTATE class first, then by a dead connection, then by the message of
/// drivers that report lost connections as general errors (HY000).
pub fn classify(sqlstate: Option<&str>, message: &str, connection_dead: bool) -> Class {
    if connection_dead {
        return Class::Outage;
    }
    let state = sqlstate.unwrap_or("");
    if ["08", "40", "HYT", "57P", "53", "58"]
        .iter()
        .any(|prefix| state.starts_with(prefix))
        || state == "HY008"
    {
        return Class::Outage;
    }
    if ["22", "23", "42", "44", "21", "HY004", "07006", "01004"]
        .iter()
        .any(|prefix| state.starts_with(prefix))
    {
        return Class::Data;
    }
    let m = message.to_ascii_lowercase();
    let lost = [
        "connection",
        "server closed",
        "gone away",
        "lost",
        "broken pipe",
        "timeout",
        "timed out",
        "could not connect",
        "can't connect",
        "no route",
        "refused",
        "database is locked",
        "busy",
    ];
    if lost.iter().any(|needle| m.contains(needle)) {
        Class::Outage
    } else {
        Class::Data
    }
}

/// Why a message (or one of its records) could not become a row.
#[derive(Debug, Clone, PartialEq)]
pub enum MapError {
    Decode(String),
    Convert(String),
    /// The payload is over the broker's `max_message_bytes`.
    TooLarge(String),
}

impl MapError {
    pub fn kind(&self) -> &'static str {
        match self {
            MapError::Decode(_) => "decode",
            MapError::Convert(_) => "convert",
            MapError::TooLarge(_) => "too_large",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            MapError::Decode(m) | MapError::Convert(m) | MapError::TooLarge(m) => m,
        }
    }
}

/// A failure of a command, with the exit code it maps to.
#[derive(Debug, Error)]
pub enum AppError {
    /// Exit code 2: the configuration or the usage is wrong.
    #[error("{0}")]
    Usage(String),
    /// Exit code 1: something failed while running.
    #[error("{0}")]
    Runtime(String),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Usage(_) => 2,
            AppError::Runtime(_) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        assert_eq!(classify(Some("08S01"), "", false), Class::Outage);
        assert_eq!(classify(Some("40001"), "", false), Class::Outage);
        assert_eq!(classify(Some("HYT00"), "", false), Class::Outage);
        assert_eq!(classify(Some("23505"), "duplicate key", false), Class::Data);
        assert_eq!(classify(Some("22P02"), "invalid input", false), Class::Data);
        assert_eq!(classify(Some("42703"), "no column", false), Class::Data);
    }

    #[test]
    fn a_dead_connection_is_an_outage_whatever_the_state() {
        assert_eq!(classify(Some("23505"), "", true), Class::Outage);
    }

    #[test]
    fn general_errors_fall_back_to_the_message() {
        assert_eq!(
            classify(Some("HY000"), "Lost connection to server", false),
            Class::Outage
        );
        assert_eq!(
            classify(Some("HY000"), "could not connect to server", false),
            Class::Outage
        );
        assert_eq!(
            classify(Some("HY000"), "value too long", false),
            Class::Data
        );
    }
}
