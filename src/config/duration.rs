//! Human durations in the config file and on the command line: `250ms`, `1s`, `5m`, `1h`,
//! `7d`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `NUMBER UNIT` where UNIT is `ms`, `s`, `m`, `h` or `d`; a bare number is seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. 100ms, 2s, 5m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`; use ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse("1.5m").unwrap(), Duration::from_secs(90));
        assert!(parse("10 parsecs").is_err());
        assert!(parse("ms").is_err());
    }
}
