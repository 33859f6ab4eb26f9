//! Positions: each outbound route's, and how far the dead-letter mirror has got.

use sqlx::Row;

use crate::dlq::NewDeadLetter;

use super::dead_letters::Inserts;
use super::leases::{Fence, fence_check, now_ms};
use super::store::{State, StateError, in_write, on_pool, sql};

/// Stores (route, position as JSON text, updated_at).
const UPSERT_POSITION: &str = "INSERT INTO positions (route, position, updated_at) VALUES (?, ?, ?)
     ON CONFLICT (route) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at";

/// Inside a write transaction: fails it with [`StateError::Fenced`] unless `fence` (when
/// there is one) is still the lease's current holder and epoch.
macro_rules! fenced {
    ($tx:ident, $pg:ident, $fence:expr) => {
        if let Some(fence) = $fence {
            let held = sqlx::query(fence_check($pg))
                .bind(&fence.lease)
                .bind(&fence.holder)
                .bind(fence.epoch)
                .fetch_optional(&mut *$tx)
                .await?;
            if held.is_none() {
                return Ok(Err(StateError::Fenced(fence.lease.clone())));
            }
        }
    };
}

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

    pub async fn set_mirror_position(
        &self,
        name: &str,
        id: i64,
        fence: Option<&Fence>,
    ) -> Result<(), StateError> {
        in_write!(self, |tx, pg| {
            fenced!(tx, pg, fence);
            sqlx::query(sql(
                pg,
                "UPDATE mirror_position SET last_id = ? WHERE name = ?",
            ))
            .bind(id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            Ok(Ok(()))
        })?
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

    /// Every outbound route's stored position and when it last moved (RFC 3339), by route.
    pub async fn positions(&self) -> Result<Vec<(String, Vec<String>, String)>, StateError> {
        on_pool!(self, |pool, _pg| {
            let rows =
                sqlx::query("SELECT route, position, updated_at FROM positions ORDER BY route")
                    .fetch_all(pool)
                    .await?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    let position = serde_json::from_str(&r.get::<String, _>(1)).unwrap_or_default();
                    (r.get(0), position, r.get(2))
                })
                .collect())
        })
    }

    /// Sets a route's position by hand. While a running instance holds the route (its lease
    /// has not expired) this is refused with the holder's name, unless `force`: then the
    /// lease's epoch moves on, so the holder's next position write is refused and it reads
    /// this position when it takes the route again.
    pub async fn set_position(
        &self,
        route: &str,
        position: &[String],
        force: bool,
    ) -> Result<Result<(), String>, StateError> {
        let lease = format!("outbound:{route}");
        let now = crate::dlq::now_rfc3339();
        in_write!(self, |tx, pg| {
            let lock = if pg { " FOR UPDATE" } else { "" };
            let text = format!(
                "SELECT instance, expires_at > {} FROM leases WHERE name = ?{lock}",
                now_ms(pg)
            );
            let holder = sqlx::query(sql(pg, &text))
                .bind(&lease)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| (r.get::<String, _>(0), r.get::<bool, _>(1)));
            if let Some((instance, true)) = &holder
                && !force
            {
                return Ok(Err(instance.clone()));
            }
            if holder.is_some() {
                let text = format!(
                    "UPDATE leases SET epoch = epoch + 1, holder = 'mqdb position',
                         instance = 'mqdb position', since = {now}, expires_at = {now}
                     WHERE name = ?",
                    now = now_ms(pg)
                );
                sqlx::query(sql(pg, &text))
                    .bind(&lease)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(sql(pg, UPSERT_POSITION))
                .bind(route)
                .bind(serde_json::to_string(position).unwrap_or_else(|_| "[]".into()))
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            Ok(Ok(()))
        })
    }

    /// Stores a route's position together with the dead letters met on the way, in one
    /// transaction, so that neither can be lost without the other; under `fence`, only
    /// while that lease is still held.
    pub async fn advance(
        &self,
        route: &str,
        fence: Option<&Fence>,
        position: Option<&[String]>,
        letters: &[NewDeadLetter],
    ) -> Result<(), StateError> {
        let now = crate::dlq::now_rfc3339();
        in_write!(self, |tx, pg| {
            fenced!(tx, pg, fence);
            if !letters.is_empty() {
                tx.order_inserts().await?;
            }
            for l in letters {
                tx.insert_dead_letter(l, &now).await?;
            }
            if let Some(position) = position {
                sqlx::query(sql(pg, UPSERT_POSITION))
                    .bind(route)
                    .bind(serde_json::to_string(position).unwrap_or_else(|_| "[]".into()))
                    .bind(&now)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(Ok(()))
        })?
    }
}
