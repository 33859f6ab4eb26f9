//! The store itself: opening (with its migrations) on SQLite or PostgreSQL, and the write
//! transaction every change goes through. Queries are written once, in SQLite's dialect,
//! and run on either backend through [`on_pool!`] and [`in_write!`].

use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqlitePool};

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The advisory lock a PostgreSQL transaction takes before it stores dead letters: ids
/// then become visible in the order they were handed out, as on SQLite, which the mirror
/// and `dlq replay` (reading on from the last id they saw) rely on.
pub(super) const PG_INSERT_LOCK: i64 = 0x006d_7164_6264_6c71; // "mqdbdlq"

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store `{url}`: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("state store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("state store: {0}")]
    Query(#[from] sqlx::Error),
    #[error("state store `{0}`: only sqlite://, postgres:// and postgresql:// URLs are supported")]
    Unsupported(String),
    /// A write under a lease that another process has taken since: the writer steps down.
    #[error("lease `{0}` has been taken over by another instance")]
    Fenced(String),
}

#[derive(Clone)]
pub struct State {
    pub(super) pool: Pool,
}

#[derive(Clone)]
pub(super) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the store's pool, once typed for each backend;
/// `$pg` tells the body which one it runs on (for [`sql`]).
macro_rules! on_pool {
    ($state:expr, |$pool:ident, $pg:ident| $body:expr) => {
        match &$state.pool {
            $crate::state::store::Pool::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $pg = false;
                $body
            }
            $crate::state::store::Pool::Postgres($pool) => {
                #[allow(unused_variables)]
                let $pg = true;
                $body
            }
        }
    };
}

/// Runs `$body` in one write transaction (`$tx`) on the store's backend; see
/// [`write_sqlite`] and [`write_pg`].
macro_rules! in_write {
    ($state:expr, |$tx:ident, $pg:ident| $body:expr) => {
        match &$state.pool {
            $crate::state::store::Pool::Sqlite(pool) => {
                #[allow(unused_variables)]
                let $pg = false;
                $crate::state::store::write_sqlite(pool, async |$tx| $body).await
            }
            $crate::state::store::Pool::Postgres(pool) => {
                #[allow(unused_variables)]
                let $pg = true;
                $crate::state::store::write_pg(pool, async |$tx| $body).await
            }
        }
    };
}

pub(super) use {in_write, on_pool};

/// `text`, written for SQLite, in the dialect of the backend: PostgreSQL numbers its
/// parameters `$1`, `$2`… where SQLite takes `?1` or a bare `?`.
pub(super) fn sql(pg: bool, text: &str) -> sqlx::AssertSqlSafe<String> {
    if !pg {
        return sqlx::AssertSqlSafe(text.to_string());
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut next = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '?' {
            out.push(c);
            continue;
        }
        out.push('$');
        if chars.peek().is_some_and(char::is_ascii_digit) {
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                out.push(d);
            }
        } else {
            next += 1;
            out.push_str(&next.to_string());
        }
    }
    sqlx::AssertSqlSafe(out)
}

impl State {
    /// Opens and migrates the store: a SQLite file (created if needed) or a PostgreSQL
    /// database (which must exist).
    pub async fn open(url: &str) -> Result<State, StateError> {
        Self::open_with(url, None).await
    }

    /// [`State::open`], with the password of a PostgreSQL store given apart from its URL.
    pub async fn open_with(url: &str, password: Option<&str>) -> Result<State, StateError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url, password).await;
        }
        if !url.starts_with("sqlite:") {
            return Err(StateError::Unsupported(redacted(url)));
        }
        Self::open_sqlite(url).await.map(|pool| State {
            pool: Pool::Sqlite(pool),
        })
    }

    /// Writes are synchronous to disk: a dead letter must be durable before its message
    /// is acknowledged.
    async fn open_sqlite(url: &str) -> Result<SqlitePool, StateError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|source| StateError::Open {
                url: url.to_string(),
                source,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        create_private(options.get_filename()).map_err(|e| StateError::Open {
            url: url.to_string(),
            source: sqlx::Error::Io(e),
        })?;
        // Two processes creating the same store at once (a bridge starting while a `dlq`
        // command runs) can find it locked while the first one switches it to WAL.
        let mut attempt = 0;
        let pool = loop {
            match SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => break pool,
                Err(e) if attempt < 50 && is_locked(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => {
                    return Err(StateError::Open {
                        url: url.to_string(),
                        source,
                    });
                }
            }
        };
        // Another process (a running bridge, a `dlq` command) may be migrating the same
        // file at this moment; SQLite gives no migration lock, so wait and look again.
        let mut attempt = 0;
        loop {
            match SQLITE_MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(_) if attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(pool)
    }

    /// Several processes may start on one database at once: sqlx holds an advisory lock
    /// while it migrates PostgreSQL. The database itself must exist.
    async fn open_postgres(url: &str, password: Option<&str>) -> Result<State, StateError> {
        let open = |source| StateError::Open {
            url: redacted(url),
            source,
        };
        let mut options = PgConnectOptions::from_str(url).map_err(open)?;
        if let Some(password) = password {
            options = options.password(password);
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(open)?;
        POSTGRES_MIGRATOR.run(&pool).await?;
        Ok(State {
            pool: Pool::Postgres(pool),
        })
    }

    pub async fn close(&self) {
        on_pool!(self, |pool, _pg| pool.close().await)
    }
}

/// `url` with its password, if any, replaced by `***`: it goes into errors and logs.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

/// Runs `work` in one PostgreSQL transaction; a failed one is rolled back as it drops.
pub(super) async fn write_pg<T>(
    pool: &PgPool,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
) -> Result<T, StateError> {
    let mut tx = pool.begin().await?;
    let value = work(&mut tx).await?;
    tx.commit().await?;
    Ok(value)
}

/// Runs `work` in one write transaction. SQLite may or may not roll a transaction
/// back when a statement or the COMMIT fails (SQLITE_FULL, SQLITE_IOERR), and sqlx's
/// count of open transactions can then disagree with it: a pooled connection reused
/// in that state turns later transactions into savepoints of one that never commits
/// and holds the write lock. So a connection that failed (or was abandoned) inside a
/// transaction is closed, never returned to the pool.
pub(super) async fn write_sqlite<T>(
    pool: &SqlitePool,
    work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
) -> Result<T, StateError> {
    let mut conn = Discarded::unless_kept(pool.acquire().await?);
    // IMMEDIATE takes the write lock up front, under the busy timeout, instead of
    // failing when a read transaction tries to become a write one.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let value = work(&mut tx).await?;
    tx.commit().await?;
    conn.keep();
    Ok(value)
}

/// Creates the store's file readable and writable by its owner only, if it does not exist:
/// dead letters hold business data. SQLite gives its WAL and shared-memory files the
/// database file's permissions. An in-memory store has no file.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().is_empty() || path.to_str() == Some(":memory:") {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(drop),
    }
}

fn is_locked(e: &sqlx::Error) -> bool {
    match e {
        // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes (low byte 5 or 6).
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

/// A pooled connection that is closed on drop unless [`Discarded::keep`] was called.
struct Discarded {
    conn: Option<PoolConnection<Sqlite>>,
}

impl Discarded {
    fn unless_kept(conn: PoolConnection<Sqlite>) -> Self {
        Discarded { conn: Some(conn) }
    }

    /// The connection is known to be fine: it goes back to the pool.
    fn keep(mut self) {
        self.conn.take();
    }
}

impl std::ops::Deref for Discarded {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.conn.as_deref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Discarded {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_deref_mut().expect("present until dropped")
    }
}

impl Drop for Discarded {
    fn drop(&mut self) {
        // Detached from the pool, the connection closes as it drops; SQLite rolls back
        // whatever transaction it still had open.
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
