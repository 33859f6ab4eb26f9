//! Positions: each outbound route's, and how far the dead-letter mirror has got.

use sqlx::Row;

use crate::dlq::NewDeadLetter;

use super::dead_letters::Inserts;
use super::store::{State, StateError, in_write, on_pool, sql};

impl State {
    /// The mirror's last published id; on first use, the newest id now (it mirrors new
    /// dead letters only).
    pub async fn mirror_position(&self, name: &str) -> Result<i64, StateError> {
        in_write!(self, |tx, pg| {
            // The highest id handed out, stored or since deleted; on PostgreSQL every id
            // handed out is visible once no insert holds the lock.
            tx.order_inserts().await?;
            let newest = if pg {
                "(SELECT last_value FROM dead_letters_id_seq WHERE is_called)"
            } else {
                "(SELECT seq FROM sqlite_sequence WHERE name = 'dead_letters')"
            };
            let text = format!(
                "INSERT INTO mirror_position (name, last_id)
                 SELECT ?, COALESCE({newest}, 0)
                 ON CONFLICT (name) DO NOTHING"
            );
            sqlx::query(sql(pg, &text))
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query(sql(
                pg,
                "SELECT last_id FROM mirror_position WHERE name = ?",
            ))
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
            Ok(row.get(0))
        })
    }

    pub async fn set_mirror_position(&self, name: &str, id: i64) -> Result<(), StateError> {
        in_write!(self, |tx, pg| {
            sqlx::query(sql(
                pg,
                "UPDATE mirror_position SET last_id = ? WHERE name = ?",
            ))
            .bind(id)
            .bind(name)
            .execute(tx)
            .await?;
            Ok(())
        })
    }

    /// The stored position of an outbound route.
    pub async fn position(&self, route: &str) -> Result<Option<Vec<String>>, StateError> {
        on_pool!(self, |pool, pg| {
            let row = sqlx::query(sql(pg, "SELECT position FROM positions WHERE route = ?"))
                .bind(route)
                .fetch_optional(pool)
                .await?;
            Ok(row.and_then(|r| serde_json::from_str(&r.get::<String, _>(0)).ok()))
        })
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
        in_write!(self, |tx, pg| {
            if !letters.is_empty() {
                tx.order_inserts().await?;
            }
            for l in letters {
                tx.insert_dead_letter(l, &now).await?;
            }
            if let Some(position) = position {
                sqlx::query(sql(
                    pg,
                    "INSERT INTO positions (route, position, updated_at) VALUES (?, ?, ?)
                     ON CONFLICT (route) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                ))
                .bind(route)
                .bind(serde_json::to_string(position).unwrap_or_else(|_| "[]".into()))
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        })
    }
}
