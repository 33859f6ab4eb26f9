//! Leases and instances: which process holds each outbound route and the dead-letter
//! mirror, and which processes have run on this store.
//!
//! A lease is taken or renewed by one statement that compares expiry times on the store's
//! own clock, so instances whose clocks disagree still agree on who holds it. Taking over
//! from another holder bumps the lease's epoch, the fencing token that every position
//! write under the lease is checked against (see [`Fence`]).

use std::time::Duration;

use sqlx::Row;

use super::store::{State, StateError, in_write, on_pool, sql};

/// One running process, as leases and the instances table know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The `instance:` name (by default the host name).
    pub instance: String,
    /// `INSTANCE#PROCESS`: unique even when two processes share an instance name.
    pub id: String,
}

impl Holder {
    /// This process, under `instance`.
    pub fn this_process(instance: &str) -> Holder {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Holder {
            instance: instance.to_string(),
            id: format!("{instance}#{}-{started:x}", std::process::id()),
        }
    }
}

/// The token of a lease held: a write made under it succeeds only while the lease's
/// epoch is still this one, i.e. while no other process has taken the lease since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
    pub epoch: i64,
}

/// A lease as `mqdb status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub name: String,
    pub instance: String,
    pub holder: String,
    pub epoch: i64,
    /// Milliseconds since 1970, on the store's clock.
    pub since: i64,
    pub expires_at: i64,
}

/// A process that has run on this store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRow {
    pub instance: String,
    pub holder: String,
    pub version: String,
    pub started_at: i64,
    pub seen_at: i64,
    pub stopped_at: Option<i64>,
}

/// The store's clock, in milliseconds since 1970.
pub(super) fn now_ms(pg: bool) -> &'static str {
    if pg {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    } else {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    }
}

/// The check a fenced write makes inside its transaction; on PostgreSQL it also locks the
/// lease row, so a takeover waits for the write to commit (and then sees its position).
pub(super) fn fence_check(pg: bool) -> sqlx::AssertSqlSafe<String> {
    let lock = if pg { " FOR UPDATE" } else { "" };
    sql(
        pg,
        &format!("SELECT 1 FROM leases WHERE name = ? AND holder = ? AND epoch = ?{lock}"),
    )
}

impl State {
    /// Takes the lease `name` for `holder`, or renews it, for `ttl`: `Some(epoch)` when
    /// `holder` holds it afterwards, `None` when another process does.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &Holder,
        ttl: Duration,
    ) -> Result<Option<i64>, StateError> {
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4);
        in_write!(self, |tx, pg| {
            let now = now_ms(pg);
            // A holder renewing keeps its epoch and `since`. Another process takes the
            // lease, bumping the epoch, once it has expired, or at once if it runs under
            // the same instance name: a restarted instance resumes what it held.
            let text = format!(
                "INSERT INTO leases (name, holder, instance, epoch, since, expires_at)
                 VALUES (?1, ?2, ?3, 1, {now}, {now} + ?4)
                 ON CONFLICT (name) DO UPDATE SET
                     epoch = CASE WHEN leases.holder = excluded.holder
                                  THEN leases.epoch ELSE leases.epoch + 1 END,
                     since = CASE WHEN leases.holder = excluded.holder
                                  THEN leases.since ELSE excluded.since END,
                     holder = excluded.holder,
                     instance = excluded.instance,
                     expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.instance = excluded.instance
                    OR leases.expires_at <= excluded.since
                 RETURNING epoch"
            );
            let row = sqlx::query(sql(pg, &text))
                .bind(name)
                .bind(&holder.id)
                .bind(&holder.instance)
                .bind(ttl)
                .fetch_optional(&mut *tx)
                .await?;
            Ok(row.map(|r| r.get::<i64, _>(0)))
        })
    }

    /// Gives a held lease up at once, so that another process need not wait for it to
    /// expire. Does nothing if it is no longer held under `fence`.
    pub async fn release_lease(&self, fence: &Fence) -> Result<(), StateError> {
        in_write!(self, |tx, pg| {
            let text = format!(
                "UPDATE leases SET expires_at = {} WHERE name = ? AND holder = ? AND epoch = ?",
                now_ms(pg)
            );
            sqlx::query(sql(pg, &text))
                .bind(&fence.lease)
                .bind(&fence.holder)
                .bind(fence.epoch)
                .execute(tx)
                .await?;
            Ok(())
        })
    }

    /// Every lease, by name, and the store's clock now.
    pub async fn leases(&self) -> Result<(Vec<LeaseRow>, i64), StateError> {
        on_pool!(self, |pool, pg| {
            let rows = sqlx::query(
                "SELECT name, instance, holder, epoch, since, expires_at FROM leases ORDER BY name",
            )
            .fetch_all(pool)
            .await?;
            let now: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {}", now_ms(pg))))
                    .fetch_one(pool)
                    .await?;
            let leases = rows
                .into_iter()
                .map(|r| LeaseRow {
                    name: r.get(0),
                    instance: r.get(1),
                    holder: r.get(2),
                    epoch: r.get(3),
                    since: r.get(4),
                    expires_at: r.get(5),
                })
                .collect();
            Ok((leases, now))
        })
    }

    /// Records that `holder` is running (first call: started), or that it stopped.
    pub async fn instance_seen(&self, holder: &Holder, stopped: bool) -> Result<(), StateError> {
        in_write!(self, |tx, pg| {
            let now = now_ms(pg);
            let stopped_at = if stopped { now } else { "NULL" };
            let text = format!(
                "INSERT INTO instances (holder, instance, version, started_at, seen_at, stopped_at)
                 VALUES (?, ?, ?, {now}, {now}, {stopped_at})
                 ON CONFLICT (holder) DO UPDATE SET seen_at = excluded.seen_at,
                     stopped_at = excluded.stopped_at"
            );
            sqlx::query(sql(pg, &text))
                .bind(&holder.id)
                .bind(&holder.instance)
                .bind(env!("CARGO_PKG_VERSION"))
                .execute(tx)
                .await?;
            Ok(())
        })
    }

    /// The processes seen in the last `within`, most recently seen first.
    pub async fn instances(&self, within: Duration) -> Result<Vec<InstanceRow>, StateError> {
        let within = i64::try_from(within.as_millis()).unwrap_or(i64::MAX / 4);
        on_pool!(self, |pool, pg| {
            let text = format!(
                "SELECT instance, holder, version, started_at, seen_at, stopped_at
                 FROM instances WHERE seen_at >= {} - ? ORDER BY seen_at DESC, holder",
                now_ms(pg)
            );
            let rows = sqlx::query(sql(pg, &text))
                .bind(within)
                .fetch_all(pool)
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| InstanceRow {
                    instance: r.get(0),
                    holder: r.get(1),
                    version: r.get(2),
                    started_at: r.get(3),
                    seen_at: r.get(4),
                    stopped_at: r.get(5),
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_stores::stores;

    fn holder(instance: &str, process: &str) -> Holder {
        Holder {
            instance: instance.into(),
            id: format!("{instance}#{process}"),
        }
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn one_holder_at_a_time_until_the_lease_expires() {
        for (_keep, state) in stores().await {
            let a = holder("a", "1");
            let b = holder("b", "1");
            assert_eq!(
                state.take_lease("outbound:x", &a, LONG).await.unwrap(),
                Some(1)
            );
            assert_eq!(
                state.take_lease("outbound:x", &b, LONG).await.unwrap(),
                None
            );
            // Renewing keeps the epoch.
            assert_eq!(
                state.take_lease("outbound:x", &a, LONG).await.unwrap(),
                Some(1)
            );
            // Another lease is another matter.
            assert_eq!(state.take_lease("mirror", &b, LONG).await.unwrap(), Some(1));

            // Expired: the next taker bumps the epoch; the old holder cannot renew.
            assert_eq!(
                state
                    .take_lease("outbound:y", &a, Duration::ZERO)
                    .await
                    .unwrap(),
                Some(1)
            );
            assert_eq!(
                state.take_lease("outbound:y", &b, LONG).await.unwrap(),
                Some(2)
            );
            assert_eq!(
                state.take_lease("outbound:y", &a, LONG).await.unwrap(),
                None
            );

            // A restarted instance (same name, new process) resumes at once.
            let b2 = holder("b", "2");
            assert_eq!(
                state.take_lease("outbound:y", &b2, LONG).await.unwrap(),
                Some(3)
            );
            assert_eq!(
                state.take_lease("outbound:y", &b, LONG).await.unwrap(),
                Some(4)
            );

            let (leases, now) = state.leases().await.unwrap();
            let y = leases.iter().find(|l| l.name == "outbound:y").unwrap();
            assert_eq!(
                (y.instance.as_str(), y.epoch, y.holder.as_str()),
                ("b", 4, "b#1")
            );
            assert!(y.expires_at > now && y.since <= now, "{y:?} now {now}");
        }
    }

    #[tokio::test]
    async fn a_released_lease_can_be_taken_at_once_and_only_by_its_fence() {
        for (_keep, state) in stores().await {
            let a = holder("a", "1");
            let b = holder("b", "1");
            let epoch = state.take_lease("mirror", &a, LONG).await.unwrap().unwrap();
            let stale = Fence {
                lease: "mirror".into(),
                holder: a.id.clone(),
                epoch: epoch + 7,
            };
            state.release_lease(&stale).await.unwrap();
            assert_eq!(state.take_lease("mirror", &b, LONG).await.unwrap(), None);
            let fence = Fence { epoch, ..stale };
            state.release_lease(&fence).await.unwrap();
            assert_eq!(state.take_lease("mirror", &b, LONG).await.unwrap(), Some(2));
        }
    }

    #[tokio::test]
    async fn a_write_under_a_lease_taken_over_since_is_refused() {
        for (_keep, state) in stores().await {
            let a = holder("a", "1");
            let b = holder("b", "1");
            let lease = "outbound:r".to_string();
            let epoch = state
                .take_lease(&lease, &a, Duration::ZERO)
                .await
                .unwrap()
                .unwrap();
            let old = Fence {
                lease: lease.clone(),
                holder: a.id.clone(),
                epoch,
            };
            let one = vec!["1".to_string()];
            state
                .advance("r", Some(&old), Some(&one), &[])
                .await
                .unwrap();
            state.set_mirror_position("m", 5, None).await.unwrap();

            let epoch = state.take_lease(&lease, &b, LONG).await.unwrap().unwrap();
            let two = vec!["2".to_string()];
            let refused = state.advance("r", Some(&old), Some(&two), &[]).await;
            assert!(
                matches!(refused, Err(StateError::Fenced(ref l)) if *l == lease),
                "{refused:?}"
            );
            assert!(matches!(
                state.set_mirror_position("m", 9, Some(&old)).await,
                Err(StateError::Fenced(_))
            ));
            assert_eq!(state.position("r").await.unwrap(), Some(one));

            let new = Fence {
                lease,
                holder: b.id.clone(),
                epoch,
            };
            state
                .advance("r", Some(&new), Some(&two), &[])
                .await
                .unwrap();
            assert_eq!(state.position("r").await.unwrap(), Some(two));
        }
    }

    #[tokio::test]
    async fn concurrent_takers_get_one_holder() {
        for (_keep, state) in stores().await {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..8 {
                let state = state.clone();
                tasks.spawn(async move {
                    let h = holder(&format!("i{i}"), "1");
                    state.take_lease("outbound:r", &h, LONG).await.unwrap()
                });
            }
            let mut won = 0;
            while let Some(r) = tasks.join_next().await {
                won += usize::from(r.unwrap().is_some());
            }
            assert_eq!(won, 1);
        }
    }

    #[tokio::test]
    async fn instances_are_listed_while_recent_and_marked_when_stopped() {
        for (_keep, state) in stores().await {
            let a = holder("a", "1");
            let b = holder("b", "2");
            state.instance_seen(&a, false).await.unwrap();
            state.instance_seen(&b, false).await.unwrap();
            state.instance_seen(&b, true).await.unwrap();
            let seen = state.instances(LONG).await.unwrap();
            assert_eq!(seen.len(), 2);
            let b_row = seen.iter().find(|r| r.holder == b.id).unwrap();
            assert!(b_row.stopped_at.is_some());
            let a_row = seen.iter().find(|r| r.holder == a.id).unwrap();
            assert_eq!((a_row.stopped_at, a_row.instance.as_str()), (None, "a"));
            assert!(a_row.seen_at >= a_row.started_at);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                state
                    .instances(Duration::from_millis(5))
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
