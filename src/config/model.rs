//! The configuration file's serde model. Every block denies unknown keys; every default is a
//! named function so the README and the code agree on it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::duration;
use super::env::{EnvString, Secret};
use super::size;
use crate::codec::csv::{CsvFormat, ascii};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// sqlx URL of the state store holding dead letters and positions.
    #[serde(default = "default_state")]
    pub state: EnvString,
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
    pub publish: Option<Spanned<Mirror>>,
}

/// Where dead letters are mirrored. Templates may use {route}, {direction}, {error_kind}.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Name of a broker under `brokers`.
    pub broker: Spanned<EnvString>,
    /// MQTT topic (template).
    #[serde(default)]
    pub topic: Option<Spanned<EnvString>>,
    /// AMQP exchange (template); it must exist.
    #[serde(default)]
    pub exchange: Option<Spanned<EnvString>>,
    /// AMQP routing key (template).
    #[serde(default)]
    pub routing_key: Option<Spanned<EnvString>>,
    /// MQTT publish QoS.
    #[serde(default = "default_qos")]
    pub qos: Qos,
}

pub fn default_state() -> EnvString {
    EnvString("sqlite://mqdb-state.db".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: Spanned<EnvString>,
    /// MQTT client id; keep it stable so the broker keeps the session between restarts.
    /// Defaults to `mqdb-<broker name>`.
    #[serde(default)]
    pub client_id: Option<EnvString>,
    /// User name for the broker.
    #[serde(default)]
    pub username: Option<EnvString>,
    /// Password for the broker (prefer `password_file`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password; trailing newlines are removed.
    #[serde(default)]
    pub password_file: Option<EnvString>,
    /// TLS settings for `mqtts://`.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// MQTT keep-alive interval.
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "duration::deserialize"
    )]
    pub keep_alive: Duration,
    /// Start a clean session on every connect (loses messages queued while mqdb was away).
    #[serde(default)]
    pub clean_session: bool,
    /// How many unacknowledged messages the bridge holds from this broker before it stops
    /// reading from the connection.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The largest message payload taken from this broker (a number of bytes, or e.g.
    /// `16MiB`); a larger one becomes a dead letter (`too_large`) with its size. MQTT 5
    /// tells the broker this limit (Maximum Packet Size), and the broker discards larger
    /// messages itself.
    #[serde(
        default = "default_max_message_bytes",
        deserialize_with = "size::deserialize"
    )]
    pub max_message_bytes: u64,
    /// The payload bytes the bridge holds from this broker before it stops reading from it
    /// (at least `max_message_bytes`): back-pressure counts bytes as well as messages.
    #[serde(
        default = "default_max_in_flight_bytes",
        deserialize_with = "size::deserialize"
    )]
    pub max_in_flight_bytes: u64,
    /// MQTT protocol version of the subscriber: `3.1.1` or `5` (user properties become
    /// `header.NAME`).
    #[serde(default)]
    pub mqtt_version: MqttVersion,
}

/// The MQTT protocol version a subscriber speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MqttVersion {
    #[default]
    V311,
    V5,
}

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match OneOrMany::deserialize(d)?.0.as_slice() {
            [v] if v == "5" || v == "5.0" => Ok(MqttVersion::V5),
            [v] if v == "3.1.1" || v == "3" || v == "4" => Ok(MqttVersion::V311),
            _ => Err(serde::de::Error::custom("mqtt_version must be 3.1.1 or 5")),
        }
    }
}

/// The protocol a broker speaks, from its URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Mqtt,
    Amqp,
}

impl Broker {
    pub fn kind(&self) -> Option<BrokerKind> {
        match self.url.value.split_once("://").map(|(scheme, _)| scheme) {
            Some("mqtt" | "mqtts") => Some(BrokerKind::Mqtt),
            Some("amqp" | "amqps") => Some(BrokerKind::Amqp),
            _ => None,
        }
    }
}

pub fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

pub fn default_max_in_flight() -> usize {
    10_000
}

pub fn default_max_message_bytes() -> u64 {
    16 << 20
}

pub fn default_max_in_flight_bytes() -> u64 {
    64 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with the certificate authorities to trust (default: none but these).
    #[serde(default)]
    pub ca_file: Option<EnvString>,
    /// PEM client certificate, for brokers that require client authentication.
    #[serde(default)]
    pub cert_file: Option<EnvString>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub key_file: Option<EnvString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// ODBC connection string (`Driver={…};Server=…;…`).
    #[serde(default)]
    pub connection_string: Option<Secret>,
    /// Name of a DSN from odbc.ini, instead of a connection string.
    #[serde(default)]
    pub dsn: Option<EnvString>,
    /// User name, appended as `UID=`.
    #[serde(default)]
    pub username: Option<EnvString>,
    /// Password, appended as `PWD=` (prefer `password_file`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password; trailing newlines are removed.
    #[serde(default)]
    pub password_file: Option<EnvString>,
    /// The SQL the database speaks: `auto` (from the name the driver reports), or forced.
    #[serde(default)]
    pub dialect: DialectChoice,
}

/// Which SQL mqdb writes for a database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DialectChoice {
    /// From the DBMS name the driver reports: PostgreSQL, MariaDB/MySQL, SQLite, else generic.
    #[default]
    Auto,
    Postgres,
    Mysql,
    Sqlite,
    /// Standard SQL only: no bulk statement, `MERGE` for upserts.
    Generic,
}

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
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Quote character, one character.
    #[serde(default = "default_quote")]
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
                        "delimiter" => out.delimiter = map.next_value()?,
                        "quote" => out.quote = map.next_value()?,
                        "escape" => out.escape = map.next_value()?,
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

pub fn default_delimiter() -> char {
    ','
}

pub fn default_quote() -> char {
    '"'
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// Route name, used in logs, dead letters and the stored position.
    pub name: Spanned<EnvString>,
    /// Name of a database under `databases`.
    pub database: Spanned<EnvString>,
    /// The SELECT to poll; each `?` is bound to the stored position.
    pub query: Spanned<EnvString>,
    /// Column(s) whose last published value is the position.
    #[serde(default)]
    pub track: Option<Spanned<OneOrMany>>,
    /// The first position (one value per track column).
    #[serde(default)]
    pub start: Option<Spanned<OneOrMany>>,
    /// Poll period.
    #[serde(
        default = "default_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub interval: Duration,
    /// Rows read per poll.
    #[serde(default = "default_poll_rows")]
    pub max_rows: usize,
    /// Leave rows whose first track column (a timestamp) is younger than this for later.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub delay: Option<Duration>,
    /// Name of a broker under `brokers`.
    pub broker: Spanned<EnvString>,
    /// MQTT topic template; `{column}` is filled from the row.
    #[serde(default)]
    pub topic: Option<Spanned<EnvString>>,
    /// Whether a `/` in a row value placed into `topic` adds topic levels; by default such
    /// a row is a dead letter, so a value never changes the shape of the topic unasked.
    #[serde(default)]
    pub topic_values_add_levels: bool,
    /// AMQP exchange (template).
    #[serde(default)]
    pub exchange: Option<Spanned<EnvString>>,
    /// AMQP routing key (template).
    #[serde(default)]
    pub routing_key: Option<Spanned<EnvString>>,
    /// MQTT publish QoS.
    #[serde(default = "default_qos")]
    pub qos: Qos,
    /// MQTT retain flag.
    #[serde(default)]
    pub retain: bool,
    /// Message format: one JSON object or one CSV line per row.
    #[serde(default)]
    pub format: Format,
    /// CSV settings for `format: csv`.
    #[serde(default)]
    pub csv: CsvOptions,
    /// Statement run after each confirmed publish; `?` is the row's track value.
    #[serde(default)]
    pub after_publish: Option<Spanned<EnvString>>,
}

pub fn default_interval() -> Duration {
    Duration::from_secs(1)
}

pub fn default_poll_rows() -> usize {
    1000
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
