//! `inbound:` routes: the topic or queue read, the table written, and how payloads map.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::duration;
use super::env::EnvString;
use super::values::{Format, Qos, default_delimiter, default_qos, default_quote, one_char};
use crate::codec::csv::{CsvFormat, ascii};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// Route name, used in logs and dead letters.
    pub name: Spanned<EnvString>,
    /// Name of a broker under `brokers`.
    pub broker: Spanned<EnvString>,
    /// MQTT topic filter; `{name}` captures one level, `+` and `#` work as usual.
    #[serde(default)]
    pub topic: Option<Spanned<EnvString>>,
    /// MQTT subscription QoS (0, 1 or 2).
    #[serde(default = "default_qos")]
    pub qos: Qos,
    /// MQTT shared subscription group: the instances sharing the state store split the
    /// topic's messages between them (`$share/GROUP/topic`).
    #[serde(default)]
    pub share: Option<Spanned<EnvString>>,
    /// AMQP queue to consume; declared durable when it does not exist.
    #[serde(default)]
    pub queue: Option<Spanned<EnvString>>,
    /// AMQP binding of the queue; a missing exchange is declared durable, kind `topic`.
    #[serde(default)]
    pub bind: Option<Spanned<Bind>>,
    /// AMQP prefetch: most unacknowledged messages held (default twice `batch.max_rows`).
    #[serde(default)]
    pub prefetch: Option<Spanned<u16>>,
    /// Name of a database under `databases`.
    pub database: Spanned<EnvString>,
    /// Target table, `table` or `schema.table`.
    pub table: Spanned<EnvString>,
    /// Payload format.
    #[serde(default)]
    pub format: Format,
    /// How delimited payloads are read (`format: csv`).
    #[serde(default)]
    pub csv: Option<Spanned<CsvInput>>,
    /// JSON path of an array (`payload.readings`, or `payload` for an array payload): each
    /// element becomes one row, addressed by `item.x` and `meta.index` in `columns`.
    #[serde(default)]
    pub rows: Option<Spanned<EnvString>>,
    /// `column: source` pairs; without it, top-level JSON keys map to same-named columns.
    #[serde(default)]
    pub columns: Option<BTreeMap<String, Spanned<EnvString>>>,
    /// Batching limits.
    #[serde(default)]
    pub batch: Batch,
    /// What to do when a row's key already exists.
    #[serde(default)]
    pub on_conflict: OnConflict,
    /// Key columns for `on_conflict: ignore | update`.
    #[serde(default)]
    pub key: Vec<Spanned<EnvString>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    /// Exchange the queue is bound to.
    pub exchange: EnvString,
    /// Binding key (`#` takes everything from a topic exchange).
    #[serde(default = "default_binding_key")]
    pub routing_key: EnvString,
}

pub fn default_binding_key() -> EnvString {
    EnvString("#".into())
}

/// How delimited payloads are read: every record of a message is one row.
#[derive(Debug, Clone)]
pub struct CsvInput {
    /// Field separator, one ASCII character (`"\t"` for tab).
    pub delimiter: char,
    /// Quote character, one ASCII character.
    pub quote: char,
    /// Escape character inside quotes; without it a quote is escaped by doubling it.
    pub escape: Option<char>,
    /// The first line of each message names its fields.
    pub header: bool,
    /// Names of the fields by position.
    pub fields: Option<Vec<EnvString>>,
    /// A field with exactly this text is NULL (default: empty); `~` makes no field NULL.
    pub null: Option<String>,
}

impl Default for CsvInput {
    fn default() -> Self {
        CsvInput {
            delimiter: default_delimiter(),
            quote: default_quote(),
            escape: None,
            header: false,
            fields: None,
            null: default_null(),
        }
    }
}

impl CsvInput {
    /// The reader of these settings; validation has checked the characters are ASCII.
    pub fn format(&self) -> CsvFormat {
        CsvFormat::new(
            ascii(self.delimiter, b','),
            ascii(self.quote, b'"'),
            self.escape.map(|c| ascii(c, b'\\')),
            self.header,
            self.fields
                .as_ref()
                .map(|f| f.iter().map(|n| n.to_string()).collect()),
            self.null.as_ref().map(|n| n.as_bytes().to_vec()),
        )
    }
}

pub fn default_null() -> Option<String> {
    Some(String::new())
}

// By hand, because YAML reads the key `null:` as a null, which serde's derived field
// matching cannot take for a name.
impl<'de> Deserialize<'de> for CsvInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const FIELDS: &[&str] = &["delimiter", "quote", "escape", "header", "fields", "null"];
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CsvInput;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("csv settings (delimiter, quote, escape, header, fields, null)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<CsvInput, A::Error> {
                let mut out = CsvInput::default();
                while let Some(Key(key)) = map.next_key::<Key>()? {
                    match key.as_str() {
                        "delimiter" | "quote" => {
                            let c = one_char(&key, &map.next_value::<String>()?)?;
                            match key.as_str() {
                                "delimiter" => out.delimiter = c,
                                _ => out.quote = c,
                            }
                        }
                        "escape" => {
                            out.escape = map
                                .next_value::<Option<String>>()?
                                .map(|e| one_char("escape", &e))
                                .transpose()?
                        }
                        "header" => out.header = map.next_value()?,
                        "fields" => out.fields = map.next_value()?,
                        "null" => out.null = map.next_value()?,
                        other => return Err(serde::de::Error::unknown_field(other, FIELDS)),
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// A mapping key, where a YAML null key reads as the name `null`.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Key, E> {
                Ok(Key("null".into()))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Key, E> {
                Ok(Key("null".into()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// A duplicate key is a rejected row (a dead letter).
    #[default]
    Error,
    /// Keep the existing row.
    Ignore,
    /// Overwrite the existing row's mapped columns.
    Update,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Most rows written in one transaction.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Longest a row waits for more rows while messages keep arriving.
    #[serde(
        default = "default_max_delay",
        deserialize_with = "duration::deserialize"
    )]
    pub max_delay: Duration,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_rows: default_max_rows(),
            max_delay: default_max_delay(),
        }
    }
}

pub fn default_max_rows() -> usize {
    500
}

pub fn default_max_delay() -> Duration {
    Duration::from_millis(100)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn a_csv_character_setting_of_two_characters_names_the_key_and_the_fix() {
        let path = Path::new("c.yaml");
        let base =
            "brokers:\n  b:\n    url: mqtt://h:1883\ndatabases:\n  d:\n    connection_string: x\n";
        let inbound = |csv: &str| {
            format!(
                "{base}inbound:\n  - {{ name: r, broker: b, topic: t, database: d, table: t, format: csv, csv: {{ {csv} }} }}\n"
            )
        };
        let outbound = |csv: &str| {
            format!(
                "{base}outbound:\n  - {{ name: o, broker: b, topic: t, database: d, query: SELECT 1, format: csv, csv: {{ {csv} }} }}\n"
            )
        };
        for (text, key) in [
            (inbound("delimiter: \";;\""), "delimiter"),
            (inbound("quote: \"''\""), "quote"),
            (inbound("escape: \"\\\\\\\\\""), "escape"),
            (outbound("delimiter: \"\""), "delimiter"),
            (outbound("quote: ab"), "quote"),
        ] {
            let e = super::super::parse(path, &text).unwrap_err();
            assert_eq!(e.line, Some(8), "{e}");
            assert!(
                e.message
                    .contains(&format!("csv.{key} must be exactly one character")),
                "{e}"
            );
        }
        let tab = inbound("delimiter: \"\\t\", escape: \"\\\\\"");
        let config = super::super::parse(path, &tab).unwrap();
        let csv = config.inbound[0].value.csv.as_ref().unwrap();
        assert_eq!((csv.value.delimiter, csv.value.escape), ('\t', Some('\\')));
    }
}
