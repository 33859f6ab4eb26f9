//! Positions: each outbound route's, and how far the dead-letter mirror has got.

use sqlx::Row;

use crate::dlq::NewDeadLetter;

use super::dead_letters::insert_dead_letter;
use super::store::{State, StateError};

impl State {
    /// The mirror's last published id; on first use, the newest id now (it mirrors new
    /// dead letters only).
    pub async fn mirror_position(&self, name: &str) -> Result<i64, StateError> {
        self.write(async |tx| {
            sqlx::query(
                "INSERT INTO mirror_position (name, last_id)
                 SELECT ?, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'dead_letters'), 0)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query("SELECT last_id FROM mirror_position WHERE name = ?")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    pub async fn set_mirror_position(&self, name: &str, id: i64) -> Result<(), StateError> {
        self.write(async |tx| {
            sqlx::query("UPDATE mirror_position SET last_id = ? WHERE name = ?")
                .bind(id)
                .bind(name)
                .execute(tx)
                .await?;
            Ok(())
        })
        .await
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
        self.write(async |tx| {
            for l in letters {
                insert_dead_letter(tx, l, &now).await?;
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
            Ok(())
        })
        .await
    }
}
