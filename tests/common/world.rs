//! One test's private world for a bridge under test: a temp dir (config, state store, logs,
//! SQLite targets), a private Mosquitto and the bridge's stable, unique MQTT client id.
//!
//! ```ignore
//! let world = World::new("inbound");
//! let config = world.config(&Db::Postgres).inbound(Route::inbound("r", &topic, t)).write();
//! world.persistent_session(&topic);
//! let mut bridge = Bridge::start(&config);
//! ```
//!
//! Tests that look at the state store take a [`StateStore`] rather than a SQLite path, so
//! that they run against each kind [`StateStore::each_in`] lists: a SQLite file, and a
//! private database on the local PostgreSQL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value as Json, json};

use super::{
    Config, Db, Mosquitto, Publisher, Subscriber, odbc_connect, odbc_query, temp_dir, unique,
};

/// A temp dir (config, state store, logs, SQLite targets) for a bridge whose brokers the
/// test brings itself (RabbitMQ, or several Mosquittos).
pub struct Workdir {
    pub dir: tempfile::TempDir,
    pub store: StateStore,
}

impl Workdir {
    pub fn new(label: &str) -> Workdir {
        let dir = temp_dir(label);
        let store = StateStore::sqlite_in(dir.path());
        Workdir { dir, store }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `mqdb.yaml` in the temp dir with this state store only.
    pub fn bare_config(&self) -> Config {
        Config::at(self.path("mqdb.yaml")).state(&self.store.url())
    }
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub broker: Mosquitto,
    pub client_id: String,
    /// Where the bridge keeps its dead letters and positions.
    pub store: StateStore,
}

impl World {
    /// A world whose temp dir and client id start with `label`.
    pub fn new(label: &str) -> World {
        World::with_broker_config(label, "")
    }

    /// Like [`World::new`] with `extra` appended to the private broker's config.
    pub fn with_broker_config(label: &str, extra: &str) -> World {
        World::with_broker(label, Mosquitto::start_with_extra_config(extra))
    }

    /// Like [`World::new`] with a broker the test started itself (e.g. with TLS).
    pub fn with_broker(label: &str, broker: Mosquitto) -> World {
        let Workdir { dir, store } = Workdir::new(label);
        let client_id = unique(&format!("mqdb_{label}"));
        World {
            dir,
            broker,
            client_id,
            store,
        }
    }

    /// Runs `test` once for each kind of state store ([`StateStore::each_in`]), each time in
    /// a new world (temp dir, broker, client id) whose store is private to it.
    pub fn on_each_store(label: &str, mut test: impl FnMut(World)) {
        let dir = temp_dir(label);
        for store in StateStore::each_in(dir.path()) {
            // Captured, and shown with a failure: which run failed.
            eprintln!("state store: {}", store.url());
            test(World::new(label).on_store(store));
        }
    }

    /// This world with its state kept in `store` instead of the temp dir's SQLite file.
    pub fn on_store(mut self, store: StateStore) -> World {
        self.store = store;
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The bridge's own entry for this world's broker (url and client id), plus `extra`
    /// settings (a JSON object, or `null`).
    pub fn mqtt(&self, extra: Json) -> (String, Json) {
        let mut settings = json!({ "client_id": self.client_id });
        if let (Json::Object(s), Json::Object(e)) = (&mut settings, extra) {
            s.extend(e);
        }
        (self.broker.url(), settings)
    }

    /// `mqdb.yaml` in the temp dir with this state store only.
    pub fn bare_config(&self) -> Config {
        Config::at(self.path("mqdb.yaml")).state(&self.store.url())
    }

    /// [`World::bare_config`] with broker `b` (this world's Mosquitto and client id) and
    /// database `d` (`db`).
    pub fn config(&self, db: &Db) -> Config {
        self.config_cs(&db.connection_string())
    }

    /// Like [`World::config`] with database `d` at `connection_string` (e.g. via a proxy).
    pub fn config_cs(&self, connection_string: &str) -> Config {
        let (url, settings) = self.mqtt(Json::Null);
        self.bare_config()
            .broker("b", &url, settings)
            .database("d", connection_string)
    }

    /// Creates the bridge's persistent MQTT session (its client id, `clean_session=false`)
    /// subscribed to `filter` at QoS 1, then disconnects: from now on the broker queues every
    /// matching message for the bridge, also before it first starts.
    pub fn persistent_session(&self, filter: &str) {
        let id = self.session_id();
        Subscriber::connect_with(self.broker.port, &id, false, &[(filter, 1)]).disconnect();
    }

    /// The client id the bridge's MQTT source connects with: on a PostgreSQL store, which
    /// several instances may share, the instance name (here the host name) is appended.
    pub fn session_id(&self) -> String {
        match &self.store {
            StateStore::Sqlite(_) => self.client_id.clone(),
            StateStore::Postgres(_) => {
                let host =
                    std::fs::read_to_string("/proc/sys/kernel/hostname").expect("the host name");
                format!("{}-{}", self.client_id, host.trim())
            }
        }
    }

    pub fn publisher(&self) -> Publisher {
        Publisher::connect(self.broker.port)
    }

    /// A clean-session QoS 1 subscriber of `filter` on this world's broker.
    pub fn subscribe(&self, filter: &str) -> Subscriber {
        Subscriber::connect(self.broker.port, filter, 1)
    }
}

/// The state store a bridge under test keeps its dead letters and positions in.
#[derive(Clone, Debug)]
pub enum StateStore {
    /// A SQLite file the bridge creates on first use.
    Sqlite(PathBuf),
    /// A database of its own on the local PostgreSQL (user root, trust auth), dropped with
    /// the last clone.
    Postgres(Arc<PrivateDatabase>),
}

/// A database created for one test on the local PostgreSQL, dropped with this value.
#[derive(Debug)]
pub struct PrivateDatabase {
    pub name: String,
}

impl PrivateDatabase {
    pub fn create(prefix: &str) -> PrivateDatabase {
        let name = unique(prefix);
        Db::Postgres.exec(&format!("CREATE DATABASE {name}"));
        PrivateDatabase { name }
    }
}

impl Drop for PrivateDatabase {
    fn drop(&mut self) {
        // FORCE: a bridge a failed test left running may still be connected.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = Db::Postgres.try_exec(&sql);
    }
}

impl StateStore {
    /// A SQLite store named `state.db` in `dir`.
    pub fn sqlite_in(dir: &Path) -> StateStore {
        StateStore::Sqlite(dir.join("state.db"))
    }

    /// A private database on the local PostgreSQL.
    pub fn postgres() -> StateStore {
        StateStore::Postgres(Arc::new(PrivateDatabase::create("mqdb_state")))
    }

    /// One store of every kind, each private to `dir` or to the test, for tests that run
    /// against each.
    pub fn each_in(dir: &Path) -> Vec<StateStore> {
        vec![StateStore::sqlite_in(dir), StateStore::postgres()]
    }

    /// Whether the store is a file in the test's own directory.
    pub fn is_file(&self) -> bool {
        matches!(self, StateStore::Sqlite(_))
    }

    /// The `state:` setting that selects this store.
    pub fn url(&self) -> String {
        match self {
            StateStore::Sqlite(path) => format!("sqlite://{}", path.display()),
            StateStore::Postgres(db) => format!("postgres://root@127.0.0.1:5432/{}", db.name),
        }
    }

    /// The `state:` setting that reaches this PostgreSQL store through `127.0.0.1:port`
    /// (e.g. a [`super::TcpProxy`] in front of the server).
    pub fn url_via(&self, port: u16) -> String {
        match self {
            StateStore::Sqlite(path) => panic!("{} is a file, not reached by port", path.display()),
            StateStore::Postgres(db) => format!("postgres://root@127.0.0.1:{port}/{}", db.name),
        }
    }

    /// Loses everything stored, as a new host (or a lost file) would: the next bridge starts
    /// on an empty store. The bridge must be stopped.
    pub fn wipe(&self) {
        match self {
            StateStore::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            StateStore::Postgres(db) => {
                Db::Postgres.exec(&format!("DROP DATABASE {} WITH (FORCE)", db.name));
                Db::Postgres.exec(&format!("CREATE DATABASE {}", db.name));
            }
        }
    }

    /// The store read through ODBC, as another process sees it.
    pub fn reader(&self) -> StateReader {
        let connection_string = match self {
            StateStore::Sqlite(path) => Db::Sqlite(path.clone()).connection_string(),
            StateStore::Postgres(db) => Db::Postgres
                .connection_string()
                .replace("Database=test;", &format!("Database={};", db.name)),
        };
        StateReader { connection_string }
    }
}

/// A state store read through ODBC: like [`Db`], on the store's own database.
pub struct StateReader {
    connection_string: String,
}

impl StateReader {
    pub fn try_query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let conn = odbc_connect(&self.connection_string)?;
        odbc_query(&conn, sql)
    }

    /// The single integer `sql` returns, if it does.
    pub fn try_scalar(&self, sql: &str) -> Option<i64> {
        let rows = self.try_query(sql).ok()?;
        rows.first()?.first()?.as_deref()?.trim().parse().ok()
    }
}
