//! When each route last did work: recorded by every instance's heartbeat, read by
//! `mqdb status`. Inbound routes keep nothing else in the store that would say so.

use sqlx::Row;

use super::leases::now_ms;
use super::store::{State, StateError, in_write, on_pool, sql};

/// What one route moved since the last heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkDone {
    pub route: String,
    pub direction: &'static str,
    pub moved: u64,
}

/// A route's work on one instance, as `mqdb status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkRow {
    pub route: String,
    pub instance: String,
    pub direction: String,
    /// Milliseconds since 1970, on the store's clock.
    pub work_at: i64,
    pub moved: i64,
}

impl State {
    /// Adds what `instance`'s routes moved, stamped with the store's clock.
    pub async fn record_work(&self, instance: &str, work: &[WorkDone]) -> Result<(), StateError> {
        if work.is_empty() {
            return Ok(());
        }
        in_write!(self, |tx, pg| {
            let text = format!(
                "INSERT INTO route_work (route, instance, direction, work_at, moved)
                 VALUES (?, ?, ?, {now}, ?)
                 ON CONFLICT (route, instance) DO UPDATE SET direction = excluded.direction,
                     work_at = excluded.work_at, moved = route_work.moved + excluded.moved",
                now = now_ms(pg)
            );
            for w in work {
                sqlx::query(sql(pg, &text))
                    .bind(&w.route)
                    .bind(instance)
                    .bind(w.direction)
                    .bind(i64::try_from(w.moved).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        })
    }

    /// Every route's work per instance, most recent first.
    pub async fn route_work(&self) -> Result<Vec<WorkRow>, StateError> {
        on_pool!(self, |pool, pg| {
            let rows = sqlx::query(sql(
                pg,
                "SELECT route, instance, direction, work_at, moved FROM route_work
                 ORDER BY route, work_at DESC, instance",
            ))
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| WorkRow {
                    route: r.get(0),
                    instance: r.get(1),
                    direction: r.get(2),
                    work_at: r.get(3),
                    moved: r.get(4),
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_stores::stores;

    fn done(route: &str, moved: u64) -> WorkDone {
        WorkDone {
            route: route.into(),
            direction: "inbound",
            moved,
        }
    }

    #[tokio::test]
    async fn work_adds_up_per_route_and_instance() {
        for (_keep, state) in stores().await {
            state
                .record_work("a", &[done("r", 5), done("s", 1)])
                .await
                .unwrap();
            state.record_work("a", &[done("r", 7)]).await.unwrap();
            state.record_work("b", &[done("r", 2)]).await.unwrap();
            let rows = state.route_work().await.unwrap();
            let of = |route: &str, instance: &str| {
                rows.iter()
                    .find(|w| w.route == route && w.instance == instance)
                    .map(|w| w.moved)
            };
            assert_eq!(
                (of("r", "a"), of("r", "b"), of("s", "a"), of("s", "b")),
                (Some(12), Some(2), Some(1), None)
            );
            let r_a = rows
                .iter()
                .find(|w| w.route == "r" && w.instance == "a")
                .unwrap();
            let s_a = rows
                .iter()
                .find(|w| w.route == "s" && w.instance == "a")
                .unwrap();
            assert!(r_a.work_at >= s_a.work_at, "{rows:?}");
        }
    }
}
