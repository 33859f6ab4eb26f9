//! Turning the configuration's inbound routes into what the runtime needs: filters,
//! sink targets and mappers. Shared by `run` and `check`.

use std::time::Duration;

use crate::config::{Config, CsvOptions, Format, Qos};
use crate::db::insert::TablePlan;
use crate::db::poll::PollSpec;
use crate::db::worker::SinkTarget;
use crate::mapping::{MappedColumn, Mapper, Source};
use crate::outbound::Destination;
use crate::template::Template;
use crate::topic::Filter;

/// One inbound route, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct InboundPlan {
    pub name: String,
    pub broker: String,
    pub filter: Filter,
    pub qos: Qos,
    pub database: String,
    pub target: SinkTarget,
    /// Sources in the order of `target.columns`; `None` maps JSON keys to columns.
    pub sources: Option<Vec<Source>>,
    pub max_delay: Duration,
}

/// Resolves every inbound route. The configuration was validated, so parsing succeeds.
pub fn inbound_plans(config: &Config) -> Result<Vec<InboundPlan>, String> {
    config
        .inbound
        .iter()
        .map(|route| {
            let r = &route.value;
            let topic = r.topic.as_ref().ok_or("route without topic")?;
            let filter = Filter::parse(&topic.value)?;
            let (columns, sources) = match &r.columns {
                Some(map) => {
                    let mut names = Vec::with_capacity(map.len());
                    let mut sources = Vec::with_capacity(map.len());
                    for (column, source) in map {
                        names.push(column.clone());
                        sources.push(Source::parse(&source.value, Some(&filter))?);
                    }
                    (Some(names), Some(sources))
                }
                None => (None, None),
            };
            Ok(InboundPlan {
                name: r.name.value.to_string(),
                broker: r.broker.value.to_string(),
                filter,
                qos: r.qos,
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
                max_delay: r.batch.max_delay,
            })
        })
        .collect()
}

impl InboundPlan {
    /// The mapper for the table as the catalog described it.
    pub fn mapper(&self, table: &TablePlan) -> Mapper {
        let columns = match &self.sources {
            Some(sources) => table
                .columns
                .iter()
                .zip(sources)
                .map(|(c, s)| MappedColumn {
                    name: c.name.clone(),
                    kind: c.kind,
                    source: s.clone(),
                })
                .collect(),
            None => table
                .columns
                .iter()
                .map(|c| MappedColumn {
                    name: c.name.clone(),
                    kind: c.kind,
                    source: Source::PayloadPath(vec![c.name.clone()]),
                })
                .collect(),
        };
        Mapper::new(columns)
    }
}

/// One outbound route, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct OutboundPlan {
    pub name: String,
    pub database: String,
    pub broker: String,
    pub poll: PollSpec,
    pub start: Vec<String>,
    pub interval: Duration,
    pub delay: Option<Duration>,
    pub destination: Destination,
    pub qos: Qos,
    pub retain: bool,
    pub format: Format,
    pub csv: CsvOptions,
}

/// Resolves every outbound route. The configuration was validated, so parsing succeeds.
pub fn outbound_plans(config: &Config) -> Result<Vec<OutboundPlan>, String> {
    config
        .outbound
        .iter()
        .map(|route| {
            let r = &route.value;
            let template = |t: &Option<serde_saphyr::Spanned<crate::config::EnvString>>| {
                Template::parse(t.as_ref().map(|t| t.value.as_str()).unwrap_or(""))
            };
            let destination = match &r.topic {
                Some(_) => Destination::Mqtt {
                    topic: template(&r.topic)?,
                },
                None => Destination::Amqp {
                    exchange: template(&r.exchange)?,
                    routing_key: template(&r.routing_key)?,
                },
            };
            Ok(OutboundPlan {
                name: r.name.value.to_string(),
                database: r.database.value.to_string(),
                broker: r.broker.value.to_string(),
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
                },
                start: r
                    .start
                    .as_ref()
                    .map(|s| s.value.0.clone())
                    .unwrap_or_default(),
                interval: r.interval,
                delay: r.delay,
                destination,
                qos: r.qos,
                retain: r.retain,
                format: r.format,
                csv: r.csv.clone(),
            })
        })
        .collect()
}
