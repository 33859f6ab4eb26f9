//! The store itself: opening (with its migrations), and the write transaction every
//! change goes through.

use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqlitePool};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store `{url}`: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("state store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("state store: {0}")]
    Query(#[from] sqlx::Error),
    #[error("state store `{0}`: only sqlite:// URLs are supported")]
    Unsupported(String),
}

#[derive(Clone)]
pub struct State {
    pub(super) pool: SqlitePool,
}

/// Which dead letters a command works on; every set field must match.
impl State {
    /// Opens (creating if needed) and migrates the store. Writes are synchronous to disk:
    /// a dead letter must be durable before its message is acknowledged.
    pub async fn open(url: &str) -> Result<State, StateError> {
        if !url.starts_with("sqlite:") {
            return Err(StateError::Unsupported(url.to_string()));
        }
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
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(_) if attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(State { pool })
    }

    /// Runs `work` in one write transaction. SQLite may or may not roll a transaction
    /// back when a statement or the COMMIT fails (SQLITE_FULL, SQLITE_IOERR), and sqlx's
    /// count of open transactions can then disagree with it: a pooled connection reused
    /// in that state turns later transactions into savepoints of one that never commits
    /// and holds the write lock. So a connection that failed (or was abandoned) inside a
    /// transaction is closed, never returned to the pool.
    pub(super) async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StateError> {
        let mut conn = Discarded::unless_kept(self.pool.acquire().await?);
        // IMMEDIATE takes the write lock up front, under the busy timeout, instead of
        // failing when a read transaction tries to become a write one.
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let value = work(&mut tx).await?;
        tx.commit().await?;
        conn.keep();
        Ok(value)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
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
