//! The three test databases through ODBC, with every value read back as text, and SQL
//! probes the tests poll.

use chrono::NaiveDateTime;
use odbc_api::buffers::{Indicator, TextRowSet};
use odbc_api::{Connection, ConnectionOptions, Cursor, Environment, ResultSetMetadata};
use std::path::PathBuf;
use std::sync::OnceLock;

/// One process-wide ODBC environment (ODBC wants exactly one per process).
pub fn odbc_env() -> &'static Environment {
    static ENV: OnceLock<Environment> = OnceLock::new();
    ENV.get_or_init(|| Environment::new().expect("allocate the ODBC environment"))
}

/// Opens a connection (autocommit on, the ODBC default). The login timeout is 10 s so a dead
/// server or proxy fails the call instead of hanging the test.
pub fn odbc_connect(connection_string: &str) -> Result<Connection<'static>, String> {
    let options = ConnectionOptions {
        login_timeout_sec: Some(10),
        ..ConnectionOptions::default()
    };
    odbc_env()
        .connect_with_connection_string(connection_string, options)
        .map_err(|e| format!("connect {connection_string:?}: {e}"))
}

/// Executes one statement on `conn`; a result set, if any, is discarded.
pub fn odbc_exec(conn: &Connection<'_>, sql: &str) -> Result<(), String> {
    conn.execute(sql, (), None)
        .map(|_cursor| ())
        .map_err(|e| format!("{sql}: {e}"))
}

/// Runs `sql` on `conn` and returns every row, each value as text (`NULL` -> `None`).
///
/// Uses odbc-api text buffers. Column buffers start at 4 KiB per value; if any value does not
/// fit, the query runs again with larger buffers (so only use it for queries that can be
/// repeated, i.e. reads). A statement without a result set returns no rows.
pub fn odbc_query(conn: &Connection<'_>, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut max_len = 4096usize;
    loop {
        match query_with_limit(conn, sql, max_len)? {
            Fetched::Rows(rows) => return Ok(rows),
            Fetched::Truncated(needed) => {
                let next = needed.map_or(max_len * 16, |n| n + 1).max(max_len * 2);
                if next > 64 << 20 {
                    return Err(format!("{sql}: a value is larger than 64 MiB"));
                }
                max_len = next;
            }
        }
    }
}

enum Fetched {
    Rows(Vec<Vec<Option<String>>>),
    /// A value did not fit; the length it needs, when the driver reported it.
    Truncated(Option<usize>),
}

fn query_with_limit(conn: &Connection<'_>, sql: &str, max_len: usize) -> Result<Fetched, String> {
    let err = |e: odbc_api::Error| format!("{sql}: {e}");
    let Some(mut cursor) = conn.execute(sql, (), None).map_err(err)? else {
        return Ok(Fetched::Rows(Vec::new()));
    };
    let num_cols = cursor.num_result_cols().map_err(err)? as usize;
    if num_cols == 0 {
        return Ok(Fetched::Rows(Vec::new()));
    }
    // Keep each column buffer around 1-4 MiB whatever the value size.
    let batch = ((4 << 20) / max_len.max(1)).clamp(1, 256);
    let lens = std::iter::repeat_n(max_len, num_cols);
    let buffer = TextRowSet::from_max_str_lens(batch, lens).map_err(err)?;
    let mut block = cursor.bind_buffer(buffer).map_err(err)?;
    let mut rows = Vec::new();
    while let Some(set) = block.fetch().map_err(err)? {
        for r in 0..set.num_rows() {
            let mut row = Vec::with_capacity(num_cols);
            for c in 0..num_cols {
                // A NULL reads as `None` below.
                match set.indicator_at(c, r) {
                    Indicator::NoTotal => return Ok(Fetched::Truncated(None)),
                    Indicator::Length(n) if n > set.max_len(c) => {
                        return Ok(Fetched::Truncated(Some(n)));
                    }
                    Indicator::Length(_) | Indicator::Null => {}
                }
                let text = set
                    .at_as_str(c, r)
                    .map_err(|e| format!("{sql}: row {r} column {c} is not UTF-8: {e}"))?;
                row.push(text.map(str::to_owned));
            }
            rows.push(row);
        }
    }
    Ok(Fetched::Rows(rows))
}

/// A test database. Create tables with names from [`super::unique`] and drop them afterwards:
/// the services are shared by every test and by CI.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `MariaDb` is the agreed name
pub enum Db {
    /// 127.0.0.1:5432, database `test`, user `root`, trust auth.
    Postgres,
    /// 127.0.0.1:3306, database `test`, user `root`, empty password.
    MariaDb,
    /// A database file (created on first connect).
    Sqlite(PathBuf),
}

impl Db {
    /// Short name: `postgres`, `mariadb` or `sqlite`.
    pub fn label(&self) -> &'static str {
        match self {
            Db::Postgres => "postgres",
            Db::MariaDb => "mariadb",
            Db::Sqlite(_) => "sqlite",
        }
    }

    pub fn connection_string(&self) -> String {
        match self {
            Db::Postgres => self.connection_string_via(5432),
            Db::MariaDb => self.connection_string_via(3306),
            Db::Sqlite(path) => format!("Driver={{SQLite3}};Database={};", path.display()),
        }
    }

    /// The same database reached at `127.0.0.1:port` (e.g. through a [`super::TcpProxy`]).
    /// Panics for SQLite, which has no server.
    pub fn connection_string_via(&self, port: u16) -> String {
        let (driver, password) = match self {
            Db::Postgres => ("PostgreSQL Unicode", ""),
            Db::MariaDb => ("MariaDB Unicode", "Pwd=;"),
            Db::Sqlite(_) => panic!("SQLite has no server port to proxy"),
        };
        format!(
            "Driver={{{driver}}};Server=127.0.0.1;Port={port};Database=test;Uid=root;{password}"
        )
    }

    /// A new connection (autocommit on).
    pub fn connect(&self) -> Connection<'static> {
        odbc_connect(&self.connection_string()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs one statement (autocommit); panics with the SQL and the error on failure.
    pub fn exec(&self, sql: &str) {
        let done = self.try_exec(sql);
        done.unwrap_or_else(|e| panic!("[{}] {e}", self.label()));
    }

    pub fn try_exec(&self, sql: &str) -> Result<(), String> {
        let conn = odbc_connect(&self.connection_string())?;
        odbc_exec(&conn, sql)
    }

    /// Every row of `sql`, each value as text (`NULL` -> `None`). Panics on error.
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows = self.try_query(sql);
        rows.unwrap_or_else(|e| panic!("[{}] {e}", self.label()))
    }

    pub fn try_query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let conn = odbc_connect(&self.connection_string())?;
        odbc_query(&conn, sql)
    }

    pub fn count(&self, table: &str) -> i64 {
        super::scalar(self, &format!("SELECT COUNT(*) FROM {table}"))
    }
}

/// A table with a [`super::unique`] name that is dropped when this value goes out of scope,
/// also when the test panics.
pub struct TempTable {
    pub db: Db,
    pub name: String,
}

impl TempTable {
    /// Runs `CREATE TABLE <unique(prefix)> (<columns>)`.
    pub fn create(db: &Db, prefix: &str, columns: &str) -> TempTable {
        let name = super::unique(prefix);
        // MariaDB: a transactional engine and full UTF-8, whatever the server's defaults.
        let options = match db {
            Db::MariaDb => " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            _ => "",
        };
        db.exec(&format!("CREATE TABLE {name} ({columns}){options}"));
        let db = db.clone();
        TempTable { db, name }
    }

    pub fn count(&self) -> i64 {
        self.db.count(&self.name)
    }
}

impl Drop for TempTable {
    /// Drops the table, ignoring errors.
    fn drop(&mut self) {
        let _ = self
            .db
            .try_exec(&format!("DROP TABLE IF EXISTS {}", self.name));
    }
}

/// A SQLite database in a temp dir of its own, removed on drop; it derefs to its [`Db`], so
/// `case(&temp_sqlite())` runs a per-database body on SQLite.
pub struct TempSqlite {
    db: Db,
    _dir: tempfile::TempDir,
}

pub fn temp_sqlite() -> TempSqlite {
    let dir = super::temp_dir("sqlite");
    TempSqlite {
        db: Db::Sqlite(dir.path().join("test.db")),
        _dir: dir,
    }
}

impl std::ops::Deref for TempSqlite {
    type Target = Db;

    fn deref(&self) -> &Db {
        &self.db
    }
}

/// A timestamp read back as text (`YYYY-MM-DD HH:MM:SS[.ffffff]`, or with `T`).
pub fn parse_ts(text: &str) -> NaiveDateTime {
    let t = text.trim().replace('T', " ");
    NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("{text:?} is not a timestamp: {e}"))
}

/// An expected timestamp written in a test (`YYYY-MM-DD HH:MM:SS[.ffffff]`).
pub fn ts(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").expect("expected timestamp")
}

/// PostgreSQL: how many other sessions wait on a lock in a statement that names `table`.
pub fn pg_lock_waiters(table: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE '%{table}%' AND pid <> pg_backend_pid()"
    )
}
