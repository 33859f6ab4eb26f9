//! The bridge's own state store (sqlx, SQLite by default): dead letters, and later the
//! outbound positions. The schema lives in `migrations/`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::dlq::{DeadLetter, NewDeadLetter};

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
    pool: SqlitePool,
}

/// Filters for listing dead letters.
#[derive(Debug, Default, Clone)]
pub struct DeadLetterFilter {
    pub route: Option<String>,
}

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
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StateError::Open {
                url: url.to_string(),
                source,
            })?;
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

    /// Stores dead letters in one transaction and returns their ids.
    pub async fn store_dead_letters(
        &self,
        letters: &[NewDeadLetter],
    ) -> Result<Vec<i64>, StateError> {
        if letters.is_empty() {
            return Ok(Vec::new());
        }
        let now = crate::dlq::now_rfc3339();
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(letters.len());
        for l in letters {
            ids.push(insert_dead_letter(&mut tx, l, &now).await?);
        }
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn list_dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StateError> {
        let rows = sqlx::query(
            "SELECT id, route, direction, source, payload, headers, error_kind, error, sqlstate, attempts, first_failed_at, last_failed_at
             FROM dead_letters WHERE (?1 IS NULL OR route = ?1) ORDER BY id",
        )
        .bind(&filter.route)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(dead_letter).collect())
    }

    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StateError> {
        let row = sqlx::query(
            "SELECT id, route, direction, source, payload, headers, error_kind, error, sqlstate, attempts, first_failed_at, last_failed_at
             FROM dead_letters WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(dead_letter))
    }

    /// The stored position of an outbound route.
    pub async fn position(&self, route: &str) -> Result<Option<Vec<String>>, StateError> {
        let row = sqlx::query("SELECT position FROM positions WHERE route = ?")
            .bind(route)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| serde_json::from_str(&r.get::<String, _>(0)).ok()))
    }

    /// Stores a route's position together with the dead letters met on the way, in one
    /// transaction, so that neither can be lost without the other.
    pub async fn advance(
        &self,
        route: &str,
        position: Option<&[String]>,
        letters: &[NewDeadLetter],
    ) -> Result<(), StateError> {
        let now = crate::dlq::now_rfc3339();
        let mut tx = self.pool.begin().await?;
        for l in letters {
            insert_dead_letter(&mut tx, l, &now).await?;
        }
        if let Some(position) = position {
            sqlx::query(
                "INSERT INTO positions (route, position, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT (route) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
            )
            .bind(route)
            .bind(serde_json::to_string(position).unwrap_or_else(|_| "[]".into()))
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn insert_dead_letter(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    l: &NewDeadLetter,
    now: &str,
) -> Result<i64, StateError> {
    let row = sqlx::query(
        "INSERT INTO dead_letters (route, direction, source, payload, headers, error_kind, error, sqlstate, attempts, first_failed_at, last_failed_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) RETURNING id",
    )
    .bind(&l.route)
    .bind(l.direction.as_str())
    .bind(&l.source)
    .bind(&l.payload)
    .bind(l.headers.to_string())
    .bind(&l.error_kind)
    .bind(&l.error)
    .bind(&l.sqlstate)
    .bind(now)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.get::<i64, _>(0))
}

fn dead_letter(row: &sqlx::sqlite::SqliteRow) -> DeadLetter {
    let headers: String = row.get("headers");
    DeadLetter {
        id: row.get("id"),
        route: row.get("route"),
        direction: row.get("direction"),
        source: row.get("source"),
        payload: row.get("payload"),
        headers: serde_json::from_str(&headers).unwrap_or(serde_json::Value::Null),
        error_kind: row.get("error_kind"),
        error: row.get("error"),
        sqlstate: row.get("sqlstate"),
        attempts: row.get("attempts"),
        first_failed_at: row.get("first_failed_at"),
        last_failed_at: row.get("last_failed_at"),
    }
}
