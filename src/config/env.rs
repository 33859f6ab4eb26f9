//! `${VAR}` and `${VAR:-default}` substitution, applied to scalar values as they are read,
//! so that a substituted value can never change the structure of the YAML around it.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A string from the config file after environment substitution.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EnvString(pub String);

impl fmt::Display for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl EnvString {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for EnvString {
    type Target = String;

    fn deref(&self) -> &String {
        &self.0
    }
}

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand(&raw, |name| std::env::var(name).ok())
            .map(EnvString)
            .map_err(serde::de::Error::custom)
    }
}

/// A secret (password, connection string): substituted like [`EnvString`] and never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EnvString::deserialize(d).map(|s| Secret(s.0))
    }
}

/// Replaces every `${NAME}` and `${NAME:-default}`; `$$` stands for a literal `$`.
pub fn expand(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        // The value is not quoted: it may hold a password.
        let end = body_start.find('}').ok_or_else(|| {
            format!(
                "unclosed `${{` at character {} of the value: write ${{NAME}} or ${{NAME:-default}}",
                raw[..raw.len() - body_start.len()].chars().count() - 1
            )
        })?;
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{body}}}` is not a valid variable reference"));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (set it, or write ${{{name}:-default}})"
                ));
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_string())
    }

    #[test]
    fn substitutes_defaults_and_literals() {
        assert_eq!(expand("a${SET}b", env).unwrap(), "avalueb");
        assert_eq!(expand("${UNSET:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand("${UNSET:-}", env).unwrap(), "");
        assert_eq!(expand("${SET:-dflt}", env).unwrap(), "value");
        assert_eq!(expand("cost $5 $$x", env).unwrap(), "cost $5 $x");
    }

    #[test]
    fn reports_unset_and_malformed() {
        assert!(
            expand("${UNSET}", env)
                .unwrap_err()
                .contains("UNSET is not set")
        );
        let unclosed = expand("PWD=hunter2;X=${SET", env).unwrap_err();
        assert!(unclosed.contains("unclosed"), "{unclosed}");
        assert!(unclosed.contains("character 15"), "{unclosed}");
        assert!(!unclosed.contains("hunter2"), "{unclosed}");
        assert!(expand("${bad name}", env).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "\"***\"");
    }
}
