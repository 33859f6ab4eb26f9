//! Loading the configuration file: parse, substitute the environment, validate, and report
//! every problem as `file:line:column: message` with the fix.

mod broker;
mod database;
mod duration;
mod env;
mod inbound;
pub mod model;
mod outbound;
#[cfg(test)]
mod reference;
pub mod size;
mod validate;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

pub use broker::*;
pub use database::*;
pub use duration::parse as parse_duration;
pub use env::{EnvString, Secret};
pub use inbound::*;
pub use model::*;
pub use outbound::*;
pub use values::*;

/// A problem with the configuration file, located as precisely as the parser allows.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn at(file: &Path, location: &serde_saphyr::Location, message: impl Into<String>) -> Self {
        let known = location.line() > 0;
        ConfigError {
            file: file.to_path_buf(),
            line: known.then(|| location.line()),
            column: known.then(|| location.column()),
            message: message.into(),
        }
    }

    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

/// Reads, parses and validates the configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::whole_file(path, format!("cannot read the file: {e}")))?;
    let config = parse(path, &text)?;
    validate::check(path, &config)?;
    Ok(config)
}

/// Parses configuration text; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut config = serde_saphyr::from_str::<Config>(text).map_err(|e| {
        let message = explain(&e.without_snippet().to_string());
        match e.location() {
            Some(location) => ConfigError::at(path, &location, message),
            None => ConfigError::whole_file(path, message),
        }
    })?;
    config.file = Some(path.to_path_buf());
    config.text = text.to_string();
    Ok(config)
}

/// Turns serde's "unknown field `x`, expected one of …" into a message that names the
/// closest valid key first.
fn explain(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message).trim();
    // The location is already in front of the message.
    let first_line = match first_line.rfind(" at line ") {
        Some(i) => &first_line[..i],
        None => first_line,
    };
    let Some(rest) = first_line.split("unknown field `").nth(1) else {
        return first_line.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return first_line.to_string();
    };
    let expected = expected.split(" at line ").next().unwrap_or(expected);
    let list = expected
        .trim_start_matches(',')
        .trim()
        .trim_start_matches("expected one of")
        .trim_start_matches("expected")
        .trim();
    let candidates: Vec<&str> = list
        .split(',')
        .map(|c| c.trim().trim_matches('`'))
        .filter(|c| !c.is_empty())
        .collect();
    let nearest = candidates
        .iter()
        .map(|c| (edit_distance(unknown, c), *c))
        .min()
        .filter(|(d, c)| *d <= (c.len().max(unknown.len()) / 2).max(2));
    let valid = candidates.join(", ");
    match nearest {
        Some((_, key)) => {
            format!("unknown key `{unknown}`; did you mean `{key}`? (valid keys here: {valid})")
        }
        None => format!("unknown key `{unknown}` (valid keys here: {valid})"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push(
                (previous[j] + cost)
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

/// The password given inline or in `password_file`; `owner` names the block in errors.
pub fn password(
    owner: &str,
    inline: &Option<Secret>,
    file: &Option<EnvString>,
) -> Result<Option<String>, String> {
    match (inline, file) {
        (Some(p), _) => Ok(Some(p.expose().to_string())),
        (None, Some(f)) => read_secret_file(f.as_str())
            .map(Some)
            .map_err(|e| format!("{owner}: cannot read password_file {}: {e}", f.as_str())),
        (None, None) => Ok(None),
    }
}

/// Reads a secret from a file, without the trailing newline editors add.
pub fn read_secret_file(path: &str) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_suggest_the_nearest() {
        let text = "brokers:\n  b:\n    url: mqtt://x\n    clientid: a\n";
        let err = parse(Path::new("f.yaml"), text).unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.message.contains("did you mean `client_id`"), "{err}");
        assert!(err.to_string().starts_with("f.yaml:4:"), "{err}");
    }

    #[test]
    fn bad_values_name_the_line() {
        let text =
            "inbound:\n  - name: r\n    broker: b\n    database: d\n    table: t\n    qos: 7\n";
        let err = parse(Path::new("f.yaml"), text).unwrap_err();
        assert_eq!(err.line, Some(6), "{err}");
        assert!(err.message.contains("expected 0, 1 or 2"), "{err}");
    }

    fn csv_block(block: &str) -> Result<CsvInput, ConfigError> {
        let text = format!(
            "inbound:\n  - name: r\n    broker: b\n    database: d\n    table: t\n    format: csv\n    csv:\n{block}"
        );
        parse(Path::new("f.yaml"), &text)
            .map(|mut c| c.inbound.remove(0).value.csv.expect("csv block").value)
    }

    #[test]
    fn csv_null_key_reads_as_a_name() {
        let c = csv_block("      null: ~\n      delimiter: \"\\t\"\n").unwrap();
        assert_eq!(c.null, None);
        assert_eq!(c.delimiter, '\t');
        let c = csv_block("      null: \"\\\\N\"\n      header: true\n").unwrap();
        assert_eq!(c.null.as_deref(), Some("\\N"));
        assert!(c.header);
        assert_eq!(
            csv_block("      quote: \"'\"\n").unwrap().null.as_deref(),
            Some("")
        );
        let err = csv_block("      nul: x\n").unwrap_err();
        assert!(err.message.contains("did you mean `null`"), "{err}");
        assert_eq!(err.line, Some(8), "{err}");
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("qoss", "qos"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
