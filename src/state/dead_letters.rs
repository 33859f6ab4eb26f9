//! Dead letters: storing, listing, purging, and the claims `dlq replay` takes on them.

use sqlx::Row;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;

use crate::dlq::{DeadLetter, NewDeadLetter};

use super::store::{PG_INSERT_LOCK, State, StateError, in_write, on_pool, sql};

/// Which dead letters a command works on; every set field must match.
#[derive(Debug, Default, Clone)]
pub struct DeadLetterFilter {
    pub route: Option<String>,
    /// Only these ids (empty: any).
    pub ids: Vec<i64>,
    /// First failed at or after (RFC 3339, UTC, as stored).
    pub since: Option<String>,
    /// First failed before.
    pub before: Option<String>,
    pub error_kind: Option<String>,
    /// Only ids above this one.
    pub after: Option<i64>,
    /// Only ids at or below this one: what existed when a replay began.
    pub through: Option<i64>,
}

/// A dead-letter field an operator filters on.
#[derive(Debug, Clone, Copy)]
pub enum DeadLetterField {
    Route,
    ErrorKind,
}

/// One batch claimed for a replay.
#[derive(Debug, Default)]
pub struct Claimed {
    pub letters: Vec<DeadLetter>,
    /// Matching letters in the stretch of ids this batch covered that another live replay
    /// holds, and so were skipped.
    pub held: u64,
}

impl DeadLetterFilter {
    fn ids_json(&self) -> Option<String> {
        (!self.ids.is_empty()).then(|| serde_json::to_string(&self.ids).unwrap_or_default())
    }
}

/// The WHERE clause for a [`DeadLetterFilter`] bound as ?1..?7 by [`bind_filter!`].
fn filter_sql(pg: bool) -> String {
    format!(
        "(?1 IS NULL OR route = ?1)
    AND (?2 IS NULL OR id IN ({}))
    AND (?3 IS NULL OR first_failed_at >= ?3)
    AND (?4 IS NULL OR first_failed_at < ?4)
    AND (?5 IS NULL OR error_kind = ?5)
    AND id > coalesce(?6, 0)
    AND (?7 IS NULL OR id <= ?7)",
        ids_in(pg, "?2")
    )
}

/// The ids of the JSON array bound as `param`.
fn ids_in(pg: bool, param: &str) -> String {
    if pg {
        format!("SELECT json_array_elements_text({param}::json)::bigint")
    } else {
        format!("SELECT value FROM json_each({param})")
    }
}

const COLUMNS: &str = "id, route, direction, source, payload, headers, error_kind, error, sqlstate, attempts, first_failed_at, last_failed_at";

/// How long a claim holds after its replay stopped answering.
const CLAIM_TTL: chrono::Duration = chrono::Duration::minutes(10);

/// Binds a [`DeadLetterFilter`] as ?1..?7 of [`filter_sql`] (a macro: one query type a
/// backend).
macro_rules! bind_filter {
    ($query:expr, $filter:expr) => {
        $query
            .bind(&$filter.route)
            .bind($filter.ids_json())
            .bind(&$filter.since)
            .bind(&$filter.before)
            .bind(&$filter.error_kind)
            .bind($filter.after)
            .bind($filter.through)
    };
}

/// Claims older than this have been abandoned.
fn stale_claims() -> String {
    (chrono::Utc::now() - CLAIM_TTL).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl State {
    /// Stores dead letters in one transaction and returns their ids.
    pub async fn store_dead_letters(
        &self,
        letters: &[NewDeadLetter],
    ) -> Result<Vec<i64>, StateError> {
        if letters.is_empty() {
            return Ok(Vec::new());
        }
        let now = crate::dlq::now_rfc3339();
        in_write!(self, |tx, _pg| {
            tx.order_inserts().await?;
            let mut ids = Vec::with_capacity(letters.len());
            for l in letters {
                ids.push(tx.insert_dead_letter(l, &now).await?);
            }
            Ok(ids)
        })
    }

    pub async fn list_dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StateError> {
        self.page_dead_letters(filter, usize::MAX).await
    }

    /// The first `limit` matching dead letters, oldest first.
    pub async fn page_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StateError> {
        on_pool!(self, |pool, pg| {
            let text = format!(
                "SELECT {COLUMNS} FROM dead_letters WHERE {} ORDER BY id LIMIT ?8",
                filter_sql(pg)
            );
            let rows = bind_filter!(sqlx::query(sql(pg, &text)), filter)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            Ok(rows.iter().map(dead_letter).collect())
        })
    }

    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StateError> {
        let text = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?");
        on_pool!(self, |pool, pg| {
            let row = sqlx::query(sql(pg, &text))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(dead_letter))
        })
    }

    /// How many dead letters each route has of each kind, by route then kind.
    pub async fn dead_letter_counts(&self) -> Result<Vec<(String, String, i64)>, StateError> {
        on_pool!(self, |pool, _pg| {
            let rows = sqlx::query(
                "SELECT route, error_kind, COUNT(*) FROM dead_letters
                 GROUP BY route, error_kind ORDER BY route, error_kind",
            )
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }

    pub async fn count_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, StateError> {
        on_pool!(self, |pool, pg| {
            let text = format!("SELECT COUNT(*) FROM dead_letters WHERE {}", filter_sql(pg));
            let row = bind_filter!(sqlx::query(sql(pg, &text)), filter)
                .fetch_one(pool)
                .await?;
            Ok(row.get::<i64, _>(0).max(0) as u64)
        })
    }

    /// Deletes the matching dead letters that no live replay holds; returns how many.
    pub async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, StateError> {
        let stale = stale_claims();
        in_write!(self, |tx, pg| {
            let text = format!(
                "DELETE FROM dead_letters WHERE {} AND (claimed_by IS NULL OR claimed_at < ?8)",
                filter_sql(pg)
            );
            let done = bind_filter!(sqlx::query(sql(pg, &text)), filter)
                .bind(&stale)
                .execute(tx)
                .await?;
            Ok(done.rows_affected())
        })
    }

    /// Claims up to `limit` matching dead letters, oldest first, for `owner`; entries that
    /// another live replay holds are skipped.
    pub async fn claim_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StateError> {
        Ok(self.claim_batch(filter, owner, limit).await?.letters)
    }

    /// [`State::claim_dead_letters`], also counting the entries it skipped because another
    /// live replay holds them. On PostgreSQL, entries another replay is claiming at this
    /// moment are skipped (SKIP LOCKED) rather than waited for, and not yet counted as held.
    pub async fn claim_batch(
        &self,
        filter: &DeadLetterFilter,
        owner: &str,
        limit: usize,
    ) -> Result<Claimed, StateError> {
        let stale = stale_claims();
        in_write!(self, |tx, pg| {
            // SQLite's write lock (BEGIN IMMEDIATE) already keeps claims apart.
            let lock = if pg { " FOR UPDATE SKIP LOCKED" } else { "" };
            let claim = format!(
                "UPDATE dead_letters SET claimed_by = ?8, claimed_at = ?9
             WHERE id IN (SELECT id FROM dead_letters WHERE {}
                          AND (claimed_by IS NULL OR claimed_at < ?10) ORDER BY id LIMIT ?11{lock})
             RETURNING {COLUMNS}",
                filter_sql(pg)
            );
            let held = format!(
                "SELECT COUNT(*) FROM dead_letters WHERE {} AND id <= ?8
             AND claimed_by IS NOT NULL AND claimed_by <> ?9 AND claimed_at >= ?10",
                filter_sql(pg)
            );
            if pg {
                // The filter's optional terms hide how much of the table it keeps, and a
                // table filled in one go may not be analyzed yet: the planner then sorts
                // everything after `after` for each claim. Walking the key in order stops
                // at the limit.
                sqlx::raw_sql("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
                    .execute(&mut *tx)
                    .await?;
            }
            let rows = bind_filter!(sqlx::query(sql(pg, &claim)), filter)
                .bind(owner)
                .bind(crate::dlq::now_rfc3339())
                .bind(&stale)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await?;
            let mut letters: Vec<DeadLetter> = rows.iter().map(dead_letter).collect();
            letters.sort_by_key(|l| l.id);
            // The stretch ends at the last entry claimed; the empty claim that ends a replay
            // covers what lies beyond.
            let upper = letters.last().map_or(i64::MAX, |last| last.id);
            let held = bind_filter!(sqlx::query(sql(pg, &held)), filter)
                .bind(upper)
                .bind(owner)
                .bind(&stale)
                .fetch_one(&mut *tx)
                .await?
                .get::<i64, _>(0)
                .max(0) as u64;
            Ok(Claimed { letters, held })
        })
    }

    /// How many dead letters match, and the highest id among them.
    pub async fn selection(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<(u64, Option<i64>), StateError> {
        on_pool!(self, |pool, pg| {
            let text = format!(
                "SELECT COUNT(*), MAX(id) FROM dead_letters WHERE {}",
                filter_sql(pg)
            );
            let row = bind_filter!(sqlx::query(sql(pg, &text)), filter)
                .fetch_one(pool)
                .await?;
            Ok((
                row.get::<i64, _>(0).max(0) as u64,
                row.get::<Option<i64>, _>(1),
            ))
        })
    }

    /// The distinct values of `column` (`route` or `error_kind`) among stored dead letters.
    pub async fn dead_letter_values(
        &self,
        column: DeadLetterField,
    ) -> Result<Vec<String>, StateError> {
        let sql = match column {
            DeadLetterField::Route => "SELECT DISTINCT route FROM dead_letters ORDER BY 1",
            DeadLetterField::ErrorKind => "SELECT DISTINCT error_kind FROM dead_letters ORDER BY 1",
        };
        on_pool!(self, |pool, _pg| {
            let rows = sqlx::query(sql).fetch_all(pool).await?;
            Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
        })
    }

    /// Settles what `owner`'s replay did with its claimed letters, in one transaction:
    /// the `delivered` ones are removed; each of the `failed` ones counts another attempt,
    /// keeps its new error and is released.
    pub async fn settle_claims(
        &self,
        owner: &str,
        delivered: &[i64],
        failed: &[(i64, Failure)],
    ) -> Result<(), StateError> {
        if delivered.is_empty() && failed.is_empty() {
            return Ok(());
        }
        let now = crate::dlq::now_rfc3339();
        in_write!(self, |tx, pg| {
            if !delivered.is_empty() {
                let text = format!(
                    "DELETE FROM dead_letters WHERE claimed_by = ?1 AND id IN ({})",
                    ids_in(pg, "?2")
                );
                sqlx::query(sql(pg, &text))
                    .bind(owner)
                    .bind(serde_json::to_string(delivered).unwrap_or_default())
                    .execute(&mut *tx)
                    .await?;
            }
            for (id, f) in failed {
                sqlx::query(sql(
                    pg,
                    "UPDATE dead_letters SET attempts = attempts + 1, last_failed_at = ?, error_kind = ?,
                     error = ?, sqlstate = ?, claimed_by = NULL, claimed_at = NULL
                     WHERE id = ? AND claimed_by = ?",
                ))
                .bind(&now)
                .bind(&f.kind)
                .bind(&f.error)
                .bind(&f.sqlstate)
                .bind(id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        })
    }

    /// Gives back every claim `owner` still holds, untouched.
    pub async fn release_claims(&self, owner: &str) -> Result<(), StateError> {
        in_write!(self, |tx, pg| {
            sqlx::query(sql(
                pg,
                "UPDATE dead_letters SET claimed_by = NULL, claimed_at = NULL WHERE claimed_by = ?",
            ))
            .bind(owner)
            .execute(tx)
            .await?;
            Ok(())
        })
    }

    /// Dead letters stored after `id`, oldest first.
    pub async fn dead_letters_after(
        &self,
        id: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StateError> {
        let text = format!("SELECT {COLUMNS} FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?");
        on_pool!(self, |pool, pg| {
            let rows = sqlx::query(sql(pg, &text))
                .bind(id)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            Ok(rows.iter().map(dead_letter).collect())
        })
    }
}

/// Why a replayed dead letter failed again.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: String,
    pub error: String,
    pub sqlstate: Option<String>,
}

/// Storing dead letters on a connection of either backend.
pub(super) trait Inserts {
    /// Call once in a transaction before its first [`Inserts::insert_dead_letter`].
    async fn order_inserts(&mut self) -> Result<(), sqlx::Error>;
    async fn insert_dead_letter(
        &mut self,
        l: &NewDeadLetter,
        now: &str,
    ) -> Result<i64, sqlx::Error>;
}

macro_rules! inserts {
    ($conn:ty, $pg:expr) => {
        impl Inserts for $conn {
            async fn order_inserts(&mut self) -> Result<(), sqlx::Error> {
                // SQLite's writes are serial already.
                if $pg {
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(PG_INSERT_LOCK)
                        .execute(&mut *self)
                        .await?;
                }
                Ok(())
            }

            async fn insert_dead_letter(
                &mut self,
                l: &NewDeadLetter,
                now: &str,
            ) -> Result<i64, sqlx::Error> {
                let row = sqlx::query(sql(
                    $pg,
                    "INSERT INTO dead_letters (route, direction, source, payload, headers, error_kind, error, sqlstate, attempts, first_failed_at, last_failed_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) RETURNING id",
                ))
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
                .fetch_one(self)
                .await?;
                Ok(row.get::<i64, _>(0))
            }
        }
    };
}

inserts!(SqliteConnection, false);
inserts!(PgConnection, true);

fn dead_letter<R: Row>(row: &R) -> DeadLetter
where
    &'static str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::Direction;
    use crate::state::test_stores::{PgDb, store, stores};

    fn letter(route: &str, kind: &str) -> NewDeadLetter {
        NewDeadLetter {
            route: route.into(),
            direction: Direction::Inbound,
            source: "t".into(),
            payload: b"{}".to_vec(),
            headers: serde_json::json!({}),
            error_kind: kind.into(),
            error: "e".into(),
            sqlstate: None,
        }
    }

    /// Stores a convert and a rejected letter of route a, and a convert of route b.
    async fn three_letters(state: &State) -> Vec<i64> {
        state
            .store_dead_letters(&[
                letter("a", "convert"),
                letter("a", "rejected"),
                letter("b", "convert"),
            ])
            .await
            .unwrap()
    }

    fn ids(letters: &[DeadLetter]) -> Vec<i64> {
        letters.iter().map(|l| l.id).collect()
    }

    #[tokio::test]
    async fn the_store_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, state) = store().await;
        state
            .store_dead_letters(&[letter("a", "decode")])
            .await
            .unwrap();
        for name in ["s.db", "s.db-wal"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
        }
    }

    #[tokio::test]
    async fn a_claim_counts_what_another_replay_holds_and_a_selection_stays_fixed() {
        for (_guard, state) in stores().await {
            let stored = three_letters(&state).await;
            let all = DeadLetterFilter::default();
            let (count, through) = state.selection(&all).await.unwrap();
            assert_eq!((count, through), (3, Some(stored[2])));
            state.claim_dead_letters(&all, "one", 1).await.unwrap();
            // Stored after the selection was taken: outside it.
            three_letters(&state).await;
            let selected = DeadLetterFilter {
                through,
                ..Default::default()
            };
            let claimed = state.claim_batch(&selected, "two", 10).await.unwrap();
            assert_eq!(ids(&claimed.letters), stored[1..].to_vec());
            assert_eq!(claimed.held, 1, "the entry `one` holds was skipped");
            let after = DeadLetterFilter {
                after: Some(stored[2]),
                ..selected
            };
            let rest = state.claim_batch(&after, "two", 10).await.unwrap();
            assert!(rest.letters.is_empty());
            assert_eq!(rest.held, 0, "a held entry is counted once");
        }
    }

    #[tokio::test]
    async fn claims_keep_replays_apart() {
        for (_guard, state) in stores().await {
            let stored = three_letters(&state).await;
            let all = DeadLetterFilter::default();
            let first = state.claim_dead_letters(&all, "one", 2).await.unwrap();
            assert_eq!(ids(&first), stored[..2].to_vec());
            let second = state.claim_dead_letters(&all, "two", 10).await.unwrap();
            assert_eq!(
                ids(&second),
                vec![stored[2]],
                "claimed entries are not handed out twice"
            );

            // Only the owner resolves; a failure counts an attempt and frees the entry.
            let failure = Failure {
                kind: "rejected".into(),
                error: "again".into(),
                sqlstate: Some("23502".into()),
            };
            let failed = [(stored[1], failure)];
            state
                .settle_claims("two", &[stored[0]], &failed)
                .await
                .unwrap();
            let untouched = state.dead_letter(stored[1]).await.unwrap().unwrap();
            assert_eq!(
                untouched.attempts, 1,
                "another replay's failure is not counted"
            );
            assert!(state.dead_letter(stored[0]).await.unwrap().is_some());
            state
                .settle_claims("one", &[stored[0]], &failed)
                .await
                .unwrap();
            let again = state.dead_letter(stored[1]).await.unwrap().unwrap();
            assert_eq!((again.attempts, again.error.as_str()), (2, "again"));
            assert_eq!(again.sqlstate.as_deref(), Some("23502"));
            assert!(state.dead_letter(stored[0]).await.unwrap().is_none());

            // A purge leaves what a live replay holds; released entries go.
            let purged = state.purge_dead_letters(&all).await.unwrap();
            assert_eq!(purged, 1);
            assert!(state.dead_letter(stored[2]).await.unwrap().is_some());
            state.release_claims("two").await.unwrap();
            assert_eq!(state.purge_dead_letters(&all).await.unwrap(), 1);
            assert_eq!(state.count_dead_letters(&all).await.unwrap(), 0);
        }
    }

    #[tokio::test]
    async fn concurrent_claims_hand_each_letter_out_once() {
        for (_guard, state) in stores().await {
            let letters: Vec<_> = (0..60).map(|_| letter("a", "decode")).collect();
            let mut stored = state.store_dead_letters(&letters).await.unwrap();
            let claimer = |owner: &'static str| {
                let state = state.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let all = DeadLetterFilter::default();
                        let batch = state.claim_dead_letters(&all, owner, 3).await.unwrap();
                        if batch.is_empty() {
                            return got;
                        }
                        got.extend(ids(&batch));
                    }
                })
            };
            let tasks = [claimer("one"), claimer("two"), claimer("three")];
            let mut claimed = Vec::new();
            for task in tasks {
                claimed.extend(task.await.unwrap());
            }
            claimed.sort();
            stored.sort();
            assert_eq!(claimed, stored, "every letter claimed exactly once");
        }
    }

    #[tokio::test]
    async fn processes_starting_at_once_on_a_new_postgres_store_all_open_it() {
        let db = PgDb::create().await;
        let url = db.url();
        let opens = (0..4).map(|_| tokio::spawn(State::open_owned(url.clone())));
        for open in opens {
            let state = open.await.unwrap().unwrap();
            state
                .store_dead_letters(&[letter("a", "decode")])
                .await
                .unwrap();
            state.close().await;
        }
    }

    impl State {
        async fn open_owned(url: String) -> Result<State, StateError> {
            State::open(&url).await
        }
    }

    #[tokio::test]
    async fn an_unreachable_postgres_store_is_named_without_its_password() {
        let url = "postgres://mqdb:s3cret@127.0.0.1:1/state";
        let Err(e) = State::open(url).await else {
            panic!("nothing listens on port 1");
        };
        let text = e.to_string();
        assert!(
            text.contains("postgres://mqdb:***@127.0.0.1:1/state"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[tokio::test]
    async fn abandoned_claims_expire() {
        for (_guard, state) in stores().await {
            let stored = state
                .store_dead_letters(&[letter("a", "decode")])
                .await
                .unwrap();
            let all = DeadLetterFilter::default();
            assert_eq!(
                state
                    .claim_dead_letters(&all, "dead", 5)
                    .await
                    .unwrap()
                    .len(),
                1
            );
            assert!(
                state
                    .claim_dead_letters(&all, "live", 5)
                    .await
                    .unwrap()
                    .is_empty()
            );
            on_pool!(state, |pool, _pg| {
                sqlx::query("UPDATE dead_letters SET claimed_at = '2000-01-01T00:00:00.000Z'")
                    .execute(pool)
                    .await
                    .map(drop)
            })
            .unwrap();
            assert_eq!(
                ids(&state.claim_dead_letters(&all, "live", 5).await.unwrap()),
                stored
            );
        }
    }

    #[tokio::test]
    async fn filters_combine() {
        for (_guard, state) in stores().await {
            let stored = three_letters(&state).await;
            let count = |f: DeadLetterFilter| {
                let state = state.clone();
                async move { state.count_dead_letters(&f).await.unwrap() }
            };
            let kind = |k: &str| Some(k.to_string());
            assert_eq!(
                count(DeadLetterFilter {
                    route: kind("a"),
                    ..Default::default()
                })
                .await,
                2
            );
            assert_eq!(
                count(DeadLetterFilter {
                    route: kind("a"),
                    error_kind: kind("convert"),
                    ..Default::default()
                })
                .await,
                1
            );
            assert_eq!(
                count(DeadLetterFilter {
                    ids: vec![stored[0], stored[2]],
                    ..Default::default()
                })
                .await,
                2
            );
            assert_eq!(
                count(DeadLetterFilter {
                    after: Some(stored[0]),
                    ..Default::default()
                })
                .await,
                2
            );
            assert_eq!(
                count(DeadLetterFilter {
                    since: Some("2999-01-01T00:00:00.000Z".into()),
                    ..Default::default()
                })
                .await,
                0
            );
            assert_eq!(
                count(DeadLetterFilter {
                    before: Some("2999-01-01T00:00:00.000Z".into()),
                    ..Default::default()
                })
                .await,
                3
            );
            let page = state
                .page_dead_letters(&DeadLetterFilter::default(), 2)
                .await
                .unwrap();
            assert_eq!(ids(&page), stored[..2].to_vec());
        }
    }

    #[tokio::test]
    async fn the_mirror_starts_at_the_newest_entry() {
        for (_guard, state) in stores().await {
            let old = state
                .store_dead_letters(&[letter("a", "decode")])
                .await
                .unwrap();
            assert_eq!(state.mirror_position("m").await.unwrap(), old[0]);
            let new = state
                .store_dead_letters(&[letter("a", "decode")])
                .await
                .unwrap();
            let after = state.dead_letters_after(old[0], 10).await.unwrap();
            assert_eq!(ids(&after), new);
            state.set_mirror_position("m", new[0], None).await.unwrap();
            assert_eq!(state.mirror_position("m").await.unwrap(), new[0]);
        }
    }
}
