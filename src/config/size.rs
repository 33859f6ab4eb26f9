//! Sizes in bytes in the config file: a bare number of bytes, or a number with a unit
//! (`512KiB`, `16MiB`, `1GiB`, or the decimal `kB`, `MB`, `GB`).

use serde::de::{self, Deserializer, Visitor};

/// MQTT's largest packet (its Remaining Length field): no message is larger.
pub const MQTT_MAX_PACKET: u64 = 268_435_455;

/// Parses `NUMBER [UNIT]`; binary units are powers of 1024, decimal ones of 1000.
pub fn parse(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. 65536, 512KiB, 16MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`; use B, KiB, MiB, GiB, kB, MB or GB"
            ));
        }
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 || bytes.fract() != 0.0 {
        return Err(format!("`{text}` is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Size;
    impl Visitor<'_> for Size {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a size in bytes, e.g. 65536 or 16MiB")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_any(Size)
}

/// A size as an operator reads it: `16 MiB`, `1500 bytes`.
pub fn describe(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{} {unit}", bytes / scale);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("65536").unwrap(), 65536);
        assert_eq!(parse("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse("16 MiB").unwrap(), 16 << 20);
        assert_eq!(parse("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse("2MB").unwrap(), 2_000_000);
        assert_eq!(parse("1_000").unwrap(), 1000);
        assert!(parse("16 parsecs").is_err());
        assert!(parse("MiB").is_err());
        assert!(parse("0.5B").is_err());
    }

    #[test]
    fn described() {
        assert_eq!(describe(16 << 20), "16 MiB");
        assert_eq!(describe(1500), "1500 bytes");
        assert_eq!(describe(2048), "2 KiB");
    }
}
