//! The settings instances sharing a state store agree on: the store itself, its password,
//! each instance's name and the lease length.

use std::path::Path;
use std::time::Duration;

use super::super::{Config, ConfigError};

/// Longest instance name: it becomes part of MQTT client ids (23 bytes in MQTT 3.1
/// brokers that keep to the letter, far more in practice).
const MAX_INSTANCE: usize = 64;

pub fn check_shared(path: &Path, config: &Config) -> Result<(), ConfigError> {
    let state = config.state.value.as_str();
    let postgres = config.state_on_postgres();
    if !postgres && !state.starts_with("sqlite:") {
        return Err(ConfigError::at(
            path,
            &config.state.referenced,
            format!(
                "state: `{}` is no state store URL; write sqlite://FILE or postgres://user@host:port/db",
                crate::net::url::redacted(state)
            ),
        ));
    }
    if config.state_password_file.is_some() {
        let problem = if !postgres {
            Some("state_password_file is for a postgres:// state store")
        } else if crate::net::url::credentials(state).password.is_some() {
            Some("the state URL has a password and state_password_file is set: keep one")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ConfigError::at(path, &config.state.referenced, problem));
        }
    }
    if let Some(name) = &config.instance {
        let value = name.value.as_str();
        let fine = !value.is_empty()
            && value.len() <= MAX_INSTANCE
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !fine {
            return Err(ConfigError::at(
                path,
                &name.referenced,
                format!(
                    "instance: `{value}` must be 1 to {MAX_INSTANCE} letters, digits, `-`, `_` or `.` \
                     (it becomes part of MQTT client ids); e.g. instance: bridge-1"
                ),
            ));
        }
    }
    if config.lease < Duration::from_secs(1) {
        return Err(ConfigError::whole_file(
            path,
            "lease: must be at least 1s; it is renewed every third of its length (default 10s)",
        ));
    }
    Ok(())
}
