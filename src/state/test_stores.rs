//! Stores for the state tests: a SQLite file, and a private database on the local
//! PostgreSQL; every behaviour is tested on both.

use super::State;

pub async fn store() -> (tempfile::TempDir, State) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let state = State::open(&url).await.unwrap();
    (dir, state)
}

/// A store of each kind: SQLite, and a private database on the local PostgreSQL.
pub async fn stores() -> Vec<(Box<dyn std::any::Any>, State)> {
    let (dir, sqlite) = store().await;
    let db = PgDb::create().await;
    let pg = State::open(&db.url()).await.unwrap();
    vec![(Box::new(dir), sqlite), (Box::new(db), pg)]
}

const PG_ADMIN: &str = "postgres://root@127.0.0.1:5432/test";

/// A database of its own on the local PostgreSQL, dropped with this.
pub struct PgDb(String);

impl PgDb {
    pub async fn create() -> PgDb {
        use sqlx::Connection;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("mqdb_state_unit_{}_{n}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        PgDb(name)
    }

    pub fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:5432/{}", self.0)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        use sqlx::Connection;
        // Drop runs inside the test's runtime: the cleanup gets a runtime of its own.
        let drop_sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(PG_ADMIN).await?;
                sqlx::query(sqlx::AssertSqlSafe(drop_sql))
                    .execute(&mut admin)
                    .await
                    .map(drop)
            })
        });
        let _ = cleanup.join();
    }
}
