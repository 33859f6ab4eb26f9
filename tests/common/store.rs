//! The state store a bridge under test keeps its dead letters and positions in.
//!
//! Tests that look at the store take a [`StateStore`] rather than a SQLite path, so that
//! they run against each kind [`StateStore::each_in`] lists. Only SQLite exists today.

use std::path::{Path, PathBuf};

use super::Db;

#[derive(Clone, Debug)]
pub enum StateStore {
    /// A SQLite file the bridge creates on first use.
    Sqlite(PathBuf),
}

impl StateStore {
    /// A SQLite store named `state.db` in `dir`.
    pub fn sqlite_in(dir: &Path) -> StateStore {
        StateStore::Sqlite(dir.join("state.db"))
    }

    /// One store of every kind, each private to `dir`, for tests that run against each.
    pub fn each_in(dir: &Path) -> Vec<StateStore> {
        vec![StateStore::sqlite_in(dir)]
    }

    /// The `state:` setting that selects this store.
    pub fn url(&self) -> String {
        match self {
            StateStore::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    /// The store read through ODBC, as another process sees it.
    pub fn reader(&self) -> Db {
        match self {
            StateStore::Sqlite(path) => Db::Sqlite(path.clone()),
        }
    }
}
