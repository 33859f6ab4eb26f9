//! Value types that several blocks of the configuration share: QoS, payload format, CSV
//! output settings, and one-or-many scalars.

use serde::Deserialize;

pub fn default_qos() -> Qos {
    Qos::AtLeastOnce
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl<'de> Deserialize<'de> for Qos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            other => Err(serde::de::Error::custom(format!(
                "qos {other} is not valid; expected 0, 1 or 2"
            ))),
        }
    }
}

impl Qos {
    pub fn level(self) -> u8 {
        self as u8
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

/// Delimited text settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// Field separator, one character.
    #[serde(default = "default_delimiter", deserialize_with = "delimiter")]
    pub delimiter: char,
    /// Quote character, one character.
    #[serde(default = "default_quote", deserialize_with = "quote")]
    pub quote: char,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: default_delimiter(),
            quote: default_quote(),
        }
    }
}

/// The one character of a CSV setting `key`, or an error that says so and shows the fix
/// (a two-character delimiter is a common slip).
pub fn one_char<E: serde::de::Error>(key: &str, text: &str) -> Result<char, E> {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(E::custom(format!(
            "csv.{key} must be exactly one character (e.g. \";\" or \"\\t\" for tab), not {text:?}"
        ))),
    }
}

fn delimiter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<char, D::Error> {
    one_char("delimiter", &String::deserialize(d)?)
}

fn quote<'de, D: serde::Deserializer<'de>>(d: D) -> Result<char, D::Error> {
    one_char("quote", &String::deserialize(d)?)
}

pub fn default_delimiter() -> char {
    ','
}

pub fn default_quote() -> char {
    '"'
}

/// A scalar or a list of scalars, kept as text (`track: id`, `start: [0, "2024-01-01"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                super::env::expand(v, |n| std::env::var(n).ok())
                    .map(|s| OneOrMany(vec![s]))
                    .map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<OneOrMany>()? {
                    out.extend(item.0);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}
