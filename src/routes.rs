//! Turning the configuration's inbound routes into what the runtime needs: filters,
//! sink targets and mappers. Shared by `run` and `check`.

use std::time::Duration;

use crate::config::{Config, CsvOptions, Format, Qos, Secret};
use crate::db::describe::PollSpec;
use crate::db::insert::TablePlan;
use crate::db::worker::SinkTarget;
use crate::destination::Destination;
use crate::mapping::{
    Field, MappedColumn, Mapper, PayloadFormat, Source, SourceContext, rows_path,
};
use crate::topic::Filter;

/// Where an inbound route's messages come from.
#[derive(Debug, Clone)]
pub enum Intake {
    Mqtt {
        filter: Filter,
        qos: Qos,
        /// The shared subscription group, if any.
        share: Option<String>,
    },
    Amqp {
        queue: String,
        /// Exchange and binding key.
        bind: Option<(String, String)>,
        prefetch: u16,
    },
}

impl Intake {
    /// The topic filter or the queue, for logs and `check`.
    pub fn describe(&self) -> String {
        match self {
            Intake::Mqtt {
                filter,
                share: Some(group),
                ..
            } => format!("$share/{group}/{}", filter.mqtt_filter()),
            Intake::Mqtt { filter, .. } => filter.mqtt_filter(),
            Intake::Amqp { queue, .. } => format!("queue {queue}"),
        }
    }
}

/// One inbound route, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct InboundPlan {
    pub name: String,
    pub broker: String,
    pub intake: Intake,
    pub database: String,
    pub target: SinkTarget,
    /// Sources in the order of `target.columns`; `None` maps by name or position.
    pub sources: Option<Vec<Source>>,
    pub format: PayloadFormat,
    /// The payload path of the array whose elements are the rows (`rows:`).
    pub rows: Option<Vec<String>>,
    pub max_delay: Duration,
    /// The broker's `max_message_bytes`: a larger payload is a dead letter.
    pub max_message_bytes: usize,
}

/// Resolves every inbound route. The configuration was validated, so parsing succeeds.
pub fn inbound_plans(config: &Config) -> Result<Vec<InboundPlan>, String> {
    config
        .inbound
        .iter()
        .map(|route| {
            let r = &route.value;
            let format = match r.format {
                Format::Json => PayloadFormat::Json,
                Format::Csv => PayloadFormat::Csv(
                    r.csv
                        .as_ref()
                        .map(|c| c.value.clone())
                        .unwrap_or_default()
                        .format(),
                ),
            };
            let intake = match (&r.topic, &r.queue) {
                (Some(topic), _) => Intake::Mqtt {
                    filter: Filter::parse(&topic.value)?,
                    qos: r.qos,
                    share: r.share.as_ref().map(|s| s.value.as_str().to_string()),
                },
                (None, Some(queue)) => Intake::Amqp {
                    queue: queue.value.to_string(),
                    bind: r.bind.as_ref().map(|b| {
                        (
                            b.value.exchange.to_string(),
                            b.value.routing_key.to_string(),
                        )
                    }),
                    prefetch: r.prefetch.as_ref().map(|p| p.value).unwrap_or_else(|| {
                        u16::try_from(r.batch.max_rows.saturating_mul(2)).unwrap_or(u16::MAX)
                    }),
                },
                (None, None) => return Err("route without topic or queue".into()),
            };
            let rows = r.rows.as_ref().map(|p| rows_path(&p.value)).transpose()?;
            let ctx = SourceContext {
                amqp: matches!(intake, Intake::Amqp { .. }),
                filter: match &intake {
                    Intake::Mqtt { filter, .. } => Some(filter),
                    Intake::Amqp { .. } => None,
                },
                csv: match &format {
                    PayloadFormat::Csv(c) => Some(c),
                    PayloadFormat::Json => None,
                },
                rows: rows.is_some(),
            };
            let (columns, sources) = match &r.columns {
                Some(map) => {
                    let mut names = Vec::with_capacity(map.len());
                    let mut sources = Vec::with_capacity(map.len());
                    for (column, source) in map {
                        names.push(column.clone());
                        sources.push(Source::parse(&source.value, &ctx)?);
                    }
                    (Some(names), Some(sources))
                }
                None => (None, None),
            };
            Ok(InboundPlan {
                name: r.name.value.to_string(),
                broker: r.broker.value.to_string(),
                intake,
                database: r.database.value.to_string(),
                target: SinkTarget {
                    route: r.name.value.to_string(),
                    table: r.table.value.to_string(),
                    columns,
                    on_conflict: r.on_conflict,
                    key: r.key.iter().map(|k| k.value.to_string()).collect(),
                    max_rows: r.batch.max_rows,
                },
                sources,
                format,
                rows,
                max_delay: r.batch.max_delay,
                max_message_bytes: config
                    .brokers
                    .get(r.broker.value.as_str())
                    .map(|b| usize::try_from(b.value.max_message_bytes).unwrap_or(usize::MAX))
                    .unwrap_or(usize::MAX),
            })
        })
        .collect()
}

impl InboundPlan {
    /// The mapper for the table as the catalog described it.
    pub fn mapper(&self, table: &TablePlan) -> Mapper {
        let mapped = |source: &dyn Fn(usize, &str) -> Source| -> Vec<MappedColumn> {
            table
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| MappedColumn {
                    name: c.name.clone(),
                    kind: c.kind,
                    source: source(i, &c.name),
                    scale: c.scale,
                })
                .collect()
        };
        let format = self.format.clone();
        let mapper = match (&self.sources, &self.format, &self.rows) {
            (Some(sources), _, None) => Mapper::new(mapped(&|i, _| sources[i].clone()), format),
            (Some(sources), _, Some(rows)) => {
                Mapper::new(mapped(&|i, _| sources[i].clone()), format)
                    .exploding(rows.clone(), false)
            }
            // An element's keys name the columns, as a whole message's do without `rows:`.
            (None, _, Some(rows)) => Mapper::new(
                mapped(&|_, name| Source::Item(vec![name.to_string()])),
                format,
            )
            .exploding(rows.clone(), true),
            (None, PayloadFormat::Json, None) => Mapper::new(
                mapped(&|_, name| Source::PayloadPath(vec![name.to_string()])),
                format,
            ),
            (None, PayloadFormat::Csv(csv), None) if csv.header || csv.fields.is_some() => {
                Mapper::new(
                    mapped(&|_, name| {
                        Source::Field(Field::Name {
                            name: name.to_string(),
                            required: false,
                        })
                    }),
                    format,
                )
            }
            (None, PayloadFormat::Csv(_), None) => {
                Mapper::new(mapped(&|i, _| Source::Field(Field::Index(i))), format)
                    .with_max_fields(table.columns.len())
            }
        };
        let mapper = match table.nul_in_text_refused() {
            Some(why) => mapper.refusing_nul(why),
            None => mapper,
        };
        match table.decimal_digits_kept() {
            Some(digits) => mapper.keeping_decimal_digits(digits),
            None => mapper,
        }
    }
}

/// One outbound route, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct OutboundPlan {
    pub name: String,
    pub database: String,
    pub poll: PollSpec,
    pub start: Vec<String>,
    pub interval: Duration,
    pub delay: Option<Duration>,
    pub destination: Destination,
    pub format: Format,
    pub csv: CsvOptions,
    /// The line of `visibility: snapshot`, when the route holds its position back.
    pub snapshot_line: Option<u64>,
    pub wake: Option<WakePlan>,
}

/// An outbound route's `wake`, as configured.
#[derive(Debug, Clone)]
pub struct WakePlan {
    pub channel: String,
    /// The LISTEN connection's URL; `None` derives it from the database.
    pub url: Option<Secret>,
    pub password_file: Option<String>,
}

/// Resolves every outbound route. The configuration was validated, so parsing succeeds.
pub fn outbound_plans(config: &Config) -> Result<Vec<OutboundPlan>, String> {
    config
        .outbound
        .iter()
        .map(|route| {
            let r = &route.value;
            let destination = Destination::resolve(&r.destination, r.topic_values_add_levels)?;
            Ok(OutboundPlan {
                name: r.name.value.to_string(),
                database: r.database.value.to_string(),
                poll: PollSpec {
                    route: r.name.value.to_string(),
                    query: r.query.value.to_string(),
                    track: r
                        .track
                        .as_ref()
                        .map(|t| t.value.0.clone())
                        .unwrap_or_default(),
                    max_rows: r.max_rows,
                    after_publish: r.after_publish.as_ref().map(|a| a.value.to_string()),
                    snapshot: r.snapshot(),
                },
                start: r
                    .start
                    .as_ref()
                    .map(|s| s.value.0.clone())
                    .unwrap_or_default(),
                interval: r.interval,
                delay: r.delay,
                destination,
                format: r.format,
                csv: r.csv.clone(),
                snapshot_line: r
                    .visibility
                    .as_ref()
                    .filter(|_| r.snapshot())
                    .map(|v| v.referenced.line()),
                wake: r.wake.as_ref().map(|w| WakePlan {
                    channel: w.value.listen.value.to_string(),
                    url: w.value.url.as_ref().map(|u| u.value.clone()),
                    password_file: w.value.password_file.as_ref().map(|f| f.to_string()),
                }),
            })
        })
        .collect()
}
