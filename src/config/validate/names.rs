//! References between blocks: a route's name is unique and what it names is defined.

use std::collections::HashSet;
use std::path::Path;

use serde_saphyr::Spanned;

use super::super::{Config, ConfigError, EnvString};

/// A route's name is unique, and its broker and database are defined.
pub(super) fn references(
    path: &Path,
    config: &Config,
    name: &Spanned<EnvString>,
    broker: &Spanned<EnvString>,
    database: &Spanned<EnvString>,
    names: &mut HashSet<EnvString>,
) -> Result<(), ConfigError> {
    if !names.insert(name.value.clone()) {
        return Err(ConfigError::at(
            path,
            &name.referenced,
            format!("route name `{}` is used twice", name.value),
        ));
    }
    exists(
        path,
        broker,
        config.brokers.contains_key(broker.value.as_str()),
        "broker",
        "brokers",
    )?;
    exists(
        path,
        database,
        config.databases.contains_key(database.value.as_str()),
        "database",
        "databases",
    )
}

pub(super) fn exists(
    path: &Path,
    reference: &Spanned<EnvString>,
    found: bool,
    what: &str,
    block: &str,
) -> Result<(), ConfigError> {
    if found {
        return Ok(());
    }
    Err(ConfigError::at(
        path,
        &reference.referenced,
        format!(
            "{what} `{}` is not defined under `{block}:`",
            reference.value
        ),
    ))
}
