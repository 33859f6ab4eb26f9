//! `databases:` entries: an ODBC connection and the SQL dialect mqdb writes.

use std::time::Duration;

use serde::Deserialize;

use super::duration;
use super::env::{EnvString, Secret};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// ODBC connection string (`Driver={…};Server=…;…`).
    #[serde(default)]
    pub connection_string: Option<Secret>,
    /// Name of a DSN from odbc.ini, instead of a connection string.
    #[serde(default)]
    pub dsn: Option<EnvString>,
    /// User name, appended as `UID=`.
    #[serde(default)]
    pub username: Option<EnvString>,
    /// Password, appended as `PWD=` (prefer `password_file`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password; trailing newlines are removed.
    #[serde(default)]
    pub password_file: Option<EnvString>,
    /// The SQL the database speaks: `auto` (from the name the driver reports), or forced.
    #[serde(default)]
    pub dialect: DialectChoice,
    /// How long a connect may go unanswered before it counts as an outage (and is retried).
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// How long a statement may wait for an answer from the database before the connection
    /// counts as lost: the batch is retried on a new connection.
    #[serde(
        default = "default_query_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub query_timeout: Duration,
}

/// One connection attempt, for databases and brokers alike.
pub fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

pub fn default_query_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Database {
    /// The dialect as far as the configuration tells without connecting: the forced one,
    /// else the family of the `Driver` named; `None` when only the driver can tell (a DSN,
    /// a driver of no known family).
    pub fn known_dialect(&self) -> Option<DialectChoice> {
        match self.dialect {
            DialectChoice::Auto => {
                let cs = self.connection_string.as_ref()?;
                crate::connection_string::attributes(cs.expose())
                    .into_iter()
                    .find(|(k, _, _)| k.trim().eq_ignore_ascii_case("Driver"))
                    .map(|(_, _, driver)| DialectChoice::from_name(&driver))
                    .filter(|d| *d != DialectChoice::Generic)
            }
            forced => Some(forced),
        }
    }
}

/// Which SQL mqdb writes for a database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DialectChoice {
    /// From the DBMS name the driver reports: PostgreSQL, MariaDB/MySQL, SQLite, else generic.
    #[default]
    Auto,
    Postgres,
    Mysql,
    Sqlite,
    /// Standard SQL only: no bulk statement, `MERGE` for upserts.
    Generic,
}

impl DialectChoice {
    /// The family a DBMS or driver name belongs to; `Generic` for any other.
    pub fn from_name(name: &str) -> DialectChoice {
        let n = name.to_ascii_lowercase();
        if n.contains("postgres") {
            DialectChoice::Postgres
        } else if n.contains("mysql") || n.contains("mariadb") {
            DialectChoice::Mysql
        } else if n.contains("sqlite") {
            DialectChoice::Sqlite
        } else {
            DialectChoice::Generic
        }
    }
}
