//! The configuration file's serde model: the root and the value types every block shares;
//! each block has its own file beside this one. Every block denies unknown keys; every default is a
//! named function so the README and the code agree on it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::broker::Broker;
use super::database::Database;
use super::duration;
use super::env::EnvString;
use super::inbound::Inbound;
use super::outbound::{Destination, Outbound};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// sqlx URL of the state store holding dead letters and positions.
    #[serde(default = "default_state")]
    pub state: Spanned<EnvString>,
    /// The password of a PostgreSQL state store, read from this file.
    #[serde(default)]
    pub state_password_file: Option<EnvString>,
    /// This process's name among the instances sharing the state store (default: the
    /// host name).
    #[serde(default)]
    pub instance: Option<Spanned<EnvString>>,
    /// How long an instance holds an outbound route or the dead-letter mirror without
    /// renewing it before another instance may take it over.
    #[serde(default = "default_lease", deserialize_with = "duration::deserialize")]
    pub lease: Duration,
    /// Named broker connections that routes refer to.
    #[serde(default)]
    pub brokers: BTreeMap<String, Spanned<Broker>>,
    /// Named database connections that routes refer to.
    #[serde(default)]
    pub databases: BTreeMap<String, Spanned<Database>>,
    /// Routes from broker topics to database tables.
    #[serde(default)]
    pub inbound: Vec<Spanned<Inbound>>,
    /// Routes from database queries to broker topics or exchanges.
    #[serde(default)]
    pub outbound: Vec<Spanned<Outbound>>,
    /// What happens to dead letters besides being stored.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterSettings>,
    /// The HTTP endpoint serving `/health` and `/metrics`; off when absent.
    #[serde(default)]
    pub http: Option<Http>,
    /// How often `run` logs a one-line summary (with or without the HTTP endpoint); 0 turns
    /// it off.
    #[serde(
        default = "default_log_summary",
        deserialize_with = "duration::deserialize"
    )]
    pub log_summary: Duration,
    /// The file this was read from, which SIGHUP reads again.
    #[serde(skip)]
    pub file: Option<std::path::PathBuf>,
    /// The file's text, which a reload compares block by block.
    #[serde(skip)]
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// `address:port` to listen on, e.g. `127.0.0.1:9464` or `0.0.0.0:9464`.
    pub listen: Spanned<EnvString>,
}

impl Http {
    pub fn addr(&self) -> Result<std::net::SocketAddr, String> {
        self.listen.value.parse().map_err(|_| {
            format!(
                "http.listen: `{}` is not an address:port; write e.g. 127.0.0.1:9464 or 0.0.0.0:9464",
                self.listen.value.as_str()
            )
        })
    }
}

pub fn default_log_summary() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSettings {
    /// Also publish each new dead letter to a broker, as a JSON envelope.
    #[serde(default)]
    pub publish: Option<Spanned<Destination>>,
}

pub fn default_state() -> Spanned<EnvString> {
    Spanned::new(
        EnvString("sqlite://mqdb-state.db".into()),
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

pub fn default_lease() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// Whether the state store is PostgreSQL, which several hosts' instances may share.
    pub fn state_on_postgres(&self) -> bool {
        let url = self.state.value.as_str();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    /// The `instance:` name, or else the host name.
    pub fn instance_name(&self) -> String {
        match &self.instance {
            Some(name) => name.value.as_str().to_string(),
            None => host_name(),
        }
    }
}

/// The host name, or `mqdb` when the system gives none.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mqdb".into())
}
