//! `outbound:` routes, and the destination they share with `dead_letter.publish`.
//!
//! The destination keys sit flat in an outbound route (`broker:`, `topic:`, …), so the route
//! is read as a flat block and then gathered into [`Outbound::destination`]: serde's
//! `flatten` would lose the YAML locations that errors point at.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::duration;
use super::env::{EnvString, Secret};
use super::values::{CsvOptions, Format, OneOrMany, Qos, default_qos};

/// Where messages go: a broker, an MQTT topic or an AMQP exchange and routing key (each a
/// template), and the publish options. `dead_letter.publish` is one of these.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Name of a broker under `brokers`.
    pub broker: Spanned<EnvString>,
    /// MQTT topic template.
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
    /// MQTT retain flag.
    #[serde(default)]
    pub retain: bool,
}

#[derive(Debug)]
pub struct Outbound {
    /// Route name, used in logs, dead letters and the stored position.
    pub name: Spanned<EnvString>,
    /// Name of a database under `databases`.
    pub database: Spanned<EnvString>,
    /// The SELECT to poll; each `?` is bound to the stored position.
    pub query: Spanned<EnvString>,
    /// Column(s) whose last published value is the position.
    pub track: Option<Spanned<OneOrMany>>,
    /// The first position (one value per track column).
    pub start: Option<Spanned<OneOrMany>>,
    /// Poll period.
    pub interval: Duration,
    /// Rows read per poll.
    pub max_rows: usize,
    /// Leave rows whose first track column (a timestamp) is younger than this for later.
    pub delay: Option<Duration>,
    /// Where each row goes; `{column}` in its templates is filled from the row.
    pub destination: Destination,
    /// Whether a `/` in a row value placed into `topic` adds topic levels; by default such
    /// a row is a dead letter, so a value never changes the shape of the topic unasked.
    pub topic_values_add_levels: bool,
    /// Message format: one JSON object or one CSV line per row.
    pub format: Format,
    /// CSV settings for `format: csv`.
    pub csv: CsvOptions,
    /// Statement run after each confirmed publish; `?` is the row's track value.
    pub after_publish: Option<Spanned<EnvString>>,
    /// Which committed rows a poll may publish: `snapshot` (PostgreSQL) holds the position
    /// back until no transaction that could still add a row behind it is running.
    pub visibility: Option<Spanned<Visibility>>,
    /// PostgreSQL: poll as soon as a notification arrives on a channel.
    pub wake: Option<Spanned<Wake>>,
}

impl Outbound {
    /// Whether the route holds its position back behind transactions still running.
    pub fn snapshot(&self) -> bool {
        self.visibility
            .as_ref()
            .is_some_and(|v| v.value == Visibility::Snapshot)
    }
}

/// Which committed rows an outbound poll may publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Every row the query returns: a row committed after a later one was published may be
    /// skipped (see `delay`).
    #[default]
    #[serde(alias = "none")]
    Default,
    /// PostgreSQL: publish only rows below a limit that no running transaction can still
    /// add to, so no row committed out of order is skipped.
    Snapshot,
}

/// `wake:` — LISTEN on a PostgreSQL channel and poll on every notification, besides every
/// `interval`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wake {
    /// The channel to LISTEN on (letters, digits and `_`, at most 63 bytes).
    pub listen: Spanned<EnvString>,
    /// PostgreSQL URL of the LISTEN connection; by default derived from the route's
    /// database connection string.
    #[serde(default)]
    pub url: Option<Spanned<Secret>>,
    /// File holding the password of the LISTEN connection; trailing newlines are removed.
    #[serde(default)]
    pub password_file: Option<EnvString>,
}

impl<'de> Deserialize<'de> for Outbound {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = Block::deserialize(d)?;
        Ok(Outbound {
            name: b.name,
            database: b.database,
            query: b.query,
            track: b.track,
            start: b.start,
            interval: b.interval,
            max_rows: b.max_rows,
            delay: b.delay,
            destination: Destination {
                broker: b.broker,
                topic: b.topic,
                exchange: b.exchange,
                routing_key: b.routing_key,
                qos: b.qos,
                retain: b.retain,
            },
            topic_values_add_levels: b.topic_values_add_levels,
            format: b.format,
            csv: b.csv,
            after_publish: b.after_publish,
            visibility: b.visibility,
            wake: b.wake,
        })
    }
}

/// An outbound route as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    name: Spanned<EnvString>,
    database: Spanned<EnvString>,
    query: Spanned<EnvString>,
    #[serde(default)]
    track: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    start: Option<Spanned<OneOrMany>>,
    #[serde(
        default = "default_interval",
        deserialize_with = "duration::deserialize"
    )]
    interval: Duration,
    #[serde(default = "default_poll_rows")]
    max_rows: usize,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    delay: Option<Duration>,
    broker: Spanned<EnvString>,
    #[serde(default)]
    topic: Option<Spanned<EnvString>>,
    #[serde(default)]
    topic_values_add_levels: bool,
    #[serde(default)]
    exchange: Option<Spanned<EnvString>>,
    #[serde(default)]
    routing_key: Option<Spanned<EnvString>>,
    #[serde(default = "default_qos")]
    qos: Qos,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    csv: CsvOptions,
    #[serde(default)]
    after_publish: Option<Spanned<EnvString>>,
    #[serde(default)]
    visibility: Option<Spanned<Visibility>>,
    wake: Option<Spanned<Wake>>,
}

pub fn default_interval() -> Duration {
    Duration::from_secs(1)
}

pub fn default_poll_rows() -> usize {
    1000
}
