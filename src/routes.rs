//! Turning the configuration's inbound routes into what the runtime needs: filters,
//! sink targets and mappers. Shared by `run` and `check`.

use std::time::Duration;

use crate::config::{Config, Qos};
use crate::db::insert::TablePlan;
use crate::db::worker::SinkTarget;
use crate::mapping::{MappedColumn, Mapper, Source};
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
