//! Database access through ODBC. Every ODBC call runs on a dedicated thread
//! ([`worker`]); the async side only exchanges batches and outcomes over channels.

pub mod bulk;
pub mod catalog;
pub mod describe;
pub mod dialect;
pub mod fetch;
pub mod insert;
pub mod keys;
pub mod poll;
pub mod postgres;
pub mod probe;
mod running;
pub mod shape;
pub mod timeouts;
pub mod watchdog;
pub mod worker;
pub mod write;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use odbc_api::{Connection, ConnectionOptions, Environment};

use crate::config::{self, Database};
use crate::error::DbError;
use dialect::Dialect;

pub(crate) use crate::connection_string::attributes;

/// The process-wide ODBC environment.
pub fn environment() -> Result<&'static Environment, DbError> {
    static ENV: OnceLock<Environment> = OnceLock::new();
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let env = Environment::new().map_err(|e| DbError::from_odbc(&e))?;
    Ok(ENV.get_or_init(|| env))
}

/// How to reach one configured database; the connection string never leaves this type in
/// clear text.
#[derive(Clone)]
pub struct DbSpec {
    pub name: String,
    connection_string: String,
    /// A dialect the configuration forces; `None` asks the driver.
    dialect: Option<Dialect>,
    pub connect_timeout: Duration,
    pub query_timeout: Duration,
}

/// An open connection and the watch on its sockets ([`watchdog`]).
pub struct DbConn {
    conn: Connection<'static>,
    watch: watchdog::Watch,
    /// Where the database is, for messages.
    endpoint: String,
    query_timeout: Duration,
}

impl std::ops::Deref for DbConn {
    type Target = Connection<'static>;
    fn deref(&self) -> &Connection<'static> {
        &self.conn
    }
}

impl DbConn {
    /// The connection alone, unwatched (for a local database, which has no sockets).
    pub fn into_connection(self) -> Connection<'static> {
        self.conn
    }

    /// Runs `wait` (for work, not for the database) without the query timeout.
    pub fn idle<T>(&self, wait: impl FnOnce() -> T) -> T {
        self.watch.idle(wait)
    }

    /// `error` as the timeout it is when the watchdog cut the connection for want of an
    /// answer.
    pub fn explain(&self, error: DbError) -> DbError {
        if self.watch.fired() {
            timeouts::no_answer(&self.endpoint, self.query_timeout, "", &error)
        } else {
            error
        }
    }
}

impl std::fmt::Debug for DbSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbSpec")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl DbSpec {
    /// A database known only by its connection string, used as it is.
    pub fn from_connection_string(name: &str, connection_string: &str) -> Self {
        DbSpec {
            name: name.to_string(),
            connection_string: timeouts::with_driver_options(
                connection_string,
                config::default_connect_timeout(),
                config::default_query_timeout(),
            ),
            dialect: None,
            connect_timeout: config::default_connect_timeout(),
            query_timeout: config::default_query_timeout(),
        }
    }

    /// The same database spoken to in `dialect` whatever the driver reports.
    pub fn with_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = Some(dialect);
        self
    }

    /// The dialect for `conn`: the configured one, else the family of the DBMS the driver
    /// names.
    pub fn dialect(&self, conn: &Connection<'_>) -> Dialect {
        self.dialect.unwrap_or_else(|| {
            conn.database_management_system_name()
                .map(|n| Dialect::from_dbms_name(&n))
                .unwrap_or(Dialect::Generic)
        })
    }

    pub fn from_config(name: &str, db: &Database) -> Result<Self, String> {
        let mut cs = match (&db.connection_string, &db.dsn) {
            (Some(cs), _) => cs.expose().trim().trim_end_matches(';').to_string(),
            (None, Some(dsn)) => format!("DSN={}", braced(dsn.as_str())),
            (None, None) => return Err(format!("database {name}: no connection_string or dsn")),
        };
        if let Some(user) = &db.username {
            cs.push_str(&format!(";UID={}", braced(user.as_str())));
        }
        let password =
            config::password(&format!("database {name}"), &db.password, &db.password_file)?;
        if let Some(password) = password {
            cs.push_str(&format!(";PWD={}", braced(&password)));
        }
        // psqlODBC reports booleans as text unless told otherwise.
        if cs.to_ascii_lowercase().contains("postgres")
            && !cs.to_ascii_lowercase().contains("boolsaschar")
        {
            cs.push_str(";BoolsAsChar=0");
        }
        cs = timeouts::with_driver_options(&cs, db.connect_timeout, db.query_timeout);
        Ok(DbSpec {
            name: name.to_string(),
            connection_string: cs,
            dialect: Dialect::from_choice(db.dialect),
            connect_timeout: db.connect_timeout,
            query_timeout: db.query_timeout,
        })
    }

    /// The same database for reading large results: psqlODBC otherwise buffers a whole
    /// result set in memory before the first row is read; with a cursor it fetches
    /// `rows` at a time.
    pub fn for_reading(&self, rows: usize) -> DbSpec {
        let lower = self.connection_string.to_ascii_lowercase();
        let mut spec = self.clone();
        if lower.contains("postgres") && !lower.contains("usedeclarefetch") {
            spec.connection_string.push_str(&format!(
                "UseDeclareFetch=1;Fetch={};",
                rows.clamp(1, 10_000)
            ));
        }
        spec
    }

    /// A PostgreSQL URL reaching the same database as the same user, for sqlx.
    pub fn postgres_url(&self) -> Result<String, String> {
        crate::connection_string::postgres_url(&self.connection_string)
    }

    /// Where the database is (`host:port`, or the DSN), for messages.
    pub fn endpoint(&self) -> String {
        timeouts::endpoint(&self.connection_string)
    }

    /// Connects within `connect_timeout`, and watches the connection's sockets so that a
    /// statement left without an answer for `query_timeout` fails.
    pub fn connect(&self) -> Result<DbConn, DbError> {
        let env = environment()?;
        let options = ConnectionOptions {
            login_timeout_sec: Some(self.connect_timeout.as_secs().max(1) as u32),
            packet_size: None,
        };
        let started = Instant::now();
        let port = timeouts::port(&self.connection_string);
        let endpoint = self.endpoint();
        let connect = || env.connect_with_connection_string(&self.connection_string, options);
        let connected = if timeouts::is_local(&self.connection_string) {
            connect().map(|conn| (conn, watchdog::Watch::none()))
        } else {
            watchdog::Watch::around(&endpoint, port, self.query_timeout, connect)
        };
        match connected {
            Ok((conn, watch)) => Ok(DbConn {
                conn,
                watch,
                endpoint,
                query_timeout: self.query_timeout,
            }),
            Err(e) => {
                let e = redacted(DbError::from_odbc(&e), &self.connection_string);
                Err(
                    if timeouts::timed_out(&e, started.elapsed(), self.connect_timeout) {
                        timeouts::no_answer(
                            &endpoint,
                            self.connect_timeout,
                            " while connecting",
                            &e,
                        )
                    } else {
                        e
                    },
                )
            }
        }
    }
}

/// A connection-string attribute value, in braces (with a `}` doubled) only when the ODBC
/// grammar needs them: some drivers (psqlODBC for `UID`) keep braces as part of the value.
fn braced(value: &str) -> String {
    let needs = value.trim() != value
        || value.is_empty()
        || value.contains(|c| "[]{}(),;?*=!@".contains(c));
    if needs {
        format!("{{{}}}", value.replace('}', "}}"))
    } else {
        value.to_string()
    }
}

/// Drivers sometimes echo the connection string in their messages.
fn redacted(mut error: DbError, connection_string: &str) -> DbError {
    for (key, raw, value) in attributes(connection_string) {
        if key.trim().eq_ignore_ascii_case("pwd") && !value.is_empty() {
            error.message = error.message.replace(raw, "***").replace(&value, "***");
        }
    }
    if error.message.contains(connection_string) {
        error.message = error
            .message
            .replace(connection_string, "<connection string>");
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EnvString, Secret};

    #[test]
    fn values_are_braced_only_when_the_grammar_needs_it() {
        let db = Database {
            connection_string: Some(Secret("Driver={X};Server=h;".into())),
            dsn: None,
            username: Some(EnvString("u".into())),
            password: Some(Secret("p;w}d".into())),
            password_file: None,
            dialect: Default::default(),
            connect_timeout: config::default_connect_timeout(),
            query_timeout: config::default_query_timeout(),
        };
        let spec = DbSpec::from_config("d", &db).unwrap();
        assert_eq!(
            spec.connection_string,
            "Driver={X};Server=h;UID=u;PWD={p;w}}d};"
        );
        assert_eq!(braced("root"), "root");
        assert_eq!(braced("a=b"), "{a=b}");
        assert_eq!(braced(" pad"), "{ pad}");
        assert_eq!(braced(""), "{}");
        assert!(!format!("{spec:?}").contains("p;w"));
    }

    #[test]
    fn braced_passwords_with_semicolons_are_redacted_too() {
        let cs = "Driver={X};Server=h;UID=u;PWD={p;w}}d=x};Port=1;";
        let e = redacted(DbError::new("bad password p;w}d=x for u"), cs);
        assert_eq!(e.message, "bad password *** for u");
        let keys: Vec<&str> = attributes(cs).into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(keys, ["Driver", "Server", "UID", "PWD", "Port"]);
        let short = redacted(DbError::new("no: ab"), "UID=u;PWD=ab;");
        assert_eq!(short.message, "no: ***");
    }

    #[test]
    fn errors_never_echo_the_password() {
        let e = redacted(
            DbError::new("login failed for secret123"),
            "Driver=x;PWD={secret123};",
        );
        assert!(!e.message.contains("secret123"), "{}", e.message);
    }
}
