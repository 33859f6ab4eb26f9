//! Checks of `inbound:` routes: where they read, how payloads are read, and what maps
//! to which column.

use std::collections::HashSet;
use std::path::Path;

use serde_saphyr::Spanned;

use super::super::{
    BrokerKind, Config, ConfigError, CsvInput, EnvString, Format, Inbound, MqttVersion, OnConflict,
};
use super::names::references;
use crate::codec::csv::CsvFormat;
use crate::mapping::{Field, Source, SourceContext, rows_path};
use crate::topic::Filter;

/// One inbound route; `names` gathers the route names seen so far.
pub(super) fn check_inbound(
    path: &Path,
    config: &Config,
    route: &Spanned<Inbound>,
    names: &mut HashSet<EnvString>,
) -> Result<(), ConfigError> {
    let err = |at: &serde_saphyr::Location, msg: String| ConfigError::at(path, at, msg);
    let r = &route.value;
    let name = &r.name.value;
    references(path, config, &r.name, &r.broker, &r.database, names)?;
    let amqp = config.brokers[r.broker.value.as_str()].value.kind() == Some(BrokerKind::Amqp);
    let filter = intake(path, r, amqp)?;
    let csv = csv_format(path, route)?;
    if let Some(rows) = &r.rows {
        if csv.is_some() {
            return Err(err(
                &rows.referenced,
                format!("route {name}: `rows:` explodes a JSON array; it needs format: json"),
            ));
        }
        rows_path(&rows.value).map_err(|e| err(&rows.referenced, format!("route {name}: {e}")))?;
    }
    let ctx = SourceContext {
        amqp,
        filter: filter.as_ref(),
        csv: csv.as_ref(),
        rows: r.rows.is_some(),
    };
    if r.table.value.trim().is_empty() || r.table.value.split('.').count() > 2 {
        return Err(err(
            &r.table.referenced,
            format!("route {name}: table must be `table` or `schema.table`"),
        ));
    }
    if let Some(columns) = &r.columns {
        if columns.is_empty() {
            return Err(err(
                &route.referenced,
                format!("route {name}: `columns:` is empty; remove it to map JSON keys to columns"),
            ));
        }
        for source in columns.values() {
            let parsed = Source::parse(&source.value, &ctx)
                .map_err(|e| err(&source.referenced, format!("route {name}: {e}")))?;
            let broker = &config.brokers[r.broker.value.as_str()].value;
            if matches!(parsed, Source::Header(_))
                && !amqp
                && broker.mqtt_version != MqttVersion::V5
            {
                return Err(err(
                    &source.referenced,
                    format!(
                        "route {name}: `{}` reads MQTT 5 user properties; set mqtt_version: 5 on broker {}",
                        source.value, r.broker.value
                    ),
                ));
            }
            let declared = csv.as_ref().and_then(|c| c.fields.as_ref());
            if let (Source::Field(Field::Index(i)), Some(fields)) = (&parsed, declared)
                && *i >= fields.len()
            {
                return Err(err(
                    &source.referenced,
                    format!(
                        "route {name}: `{}` is beyond csv.fields, which names {} fields",
                        source.value,
                        fields.len()
                    ),
                ));
            }
        }
    }
    if r.batch.max_rows == 0 {
        return Err(err(
            &route.referenced,
            format!("route {name}: batch.max_rows must be at least 1"),
        ));
    }
    match (r.on_conflict, r.key.is_empty()) {
        (OnConflict::Ignore | OnConflict::Update, true) => {
            return Err(err(
                &route.referenced,
                format!(
                    "route {name}: on_conflict {:?} needs `key:` (the unique columns)",
                    r.on_conflict
                )
                .to_lowercase(),
            ));
        }
        (OnConflict::Error, false) => {
            return Err(err(
                &r.key[0].referenced,
                format!("route {name}: `key:` is only used with on_conflict ignore or update"),
            ));
        }
        _ => {}
    }
    if let Some(columns) = &r.columns {
        for key in &r.key {
            if !columns.keys().any(|c| c.eq_ignore_ascii_case(&key.value)) {
                return Err(err(
                    &key.referenced,
                    format!(
                        "route {name}: key column `{}` is not under `columns:`",
                        key.value
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The route reads a topic from an MQTT broker or a queue from an AMQP broker; returns the
/// topic filter.
fn intake(path: &Path, r: &Inbound, amqp: bool) -> Result<Option<Filter>, ConfigError> {
    let err = |at: &serde_saphyr::Location, msg: String| ConfigError::at(path, at, msg);
    let name = &r.name.value;
    if !amqp {
        let misplaced = [
            r.queue.as_ref().map(|q| (&q.referenced, "queue")),
            r.bind.as_ref().map(|b| (&b.referenced, "bind")),
            r.prefetch.as_ref().map(|p| (&p.referenced, "prefetch")),
        ];
        if let Some((at, key)) = misplaced.into_iter().flatten().next() {
            return Err(err(
                at,
                format!("route {name}: `{key}:` is for AMQP brokers; MQTT routes use topic"),
            ));
        }
        if let Some(share) = &r.share {
            let group = share.value.as_str();
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return Err(err(
                    &share.referenced,
                    format!(
                        "route {name}: share: `{group}` must be a non-empty group name without                          `/`, `+` or `#`, e.g. share: mqdb"
                    ),
                ));
            }
        }
        let Some(topic) = &r.topic else {
            return Err(err(
                &r.name.referenced,
                format!("route {name}: set `topic:` (an MQTT topic filter)"),
            ));
        };
        return Filter::parse(&topic.value)
            .map(Some)
            .map_err(|e| err(&topic.referenced, format!("route {name}: {e}")));
    }
    if let Some(topic) = &r.topic {
        return Err(err(
            &topic.referenced,
            format!("route {name}: `topic:` is for MQTT brokers; AMQP routes use queue"),
        ));
    }
    if let Some(share) = &r.share {
        return Err(err(
            &share.referenced,
            format!(
                "route {name}: `share:` is for MQTT brokers; the instances consuming one AMQP \
                 queue already share its messages"
            ),
        ));
    }
    match &r.queue {
        Some(q) if !q.value.trim().is_empty() => {}
        Some(q) => {
            return Err(err(
                &q.referenced,
                format!("route {name}: the queue name is empty"),
            ));
        }
        None => {
            return Err(err(
                &r.name.referenced,
                format!("route {name}: set `queue:` (the AMQP queue to consume)"),
            ));
        }
    }
    if let Some(bind) = &r.bind
        && bind.value.exchange.trim().is_empty()
    {
        return Err(err(
            &bind.referenced,
            format!(
                "route {name}: bind.exchange is empty (the default exchange takes no bindings)"
            ),
        ));
    }
    if let Some(p) = r.prefetch.as_ref().filter(|p| p.value == 0) {
        return Err(err(
            &p.referenced,
            format!("route {name}: prefetch must be at least 1"),
        ));
    }
    Ok(None)
}

/// The CSV settings of a route, checked; `None` for JSON routes.
fn csv_format(path: &Path, route: &Spanned<Inbound>) -> Result<Option<CsvFormat>, ConfigError> {
    let r = &route.value;
    let name = &r.name.value;
    let err = |at: &serde_saphyr::Location, msg: String| ConfigError::at(path, at, msg);
    let input = match (r.format, &r.csv) {
        (Format::Json, None) => return Ok(None),
        (Format::Json, Some(csv)) => {
            return Err(err(
                &csv.referenced,
                format!("route {name}: `csv:` needs format: csv"),
            ));
        }
        (Format::Csv, csv) => csv.as_ref(),
    };
    let Some(input) = input else {
        return Ok(Some(CsvInput::default().format()));
    };
    let c = &input.value;
    let chars = [
        ("delimiter", Some(c.delimiter)),
        ("quote", Some(c.quote)),
        ("escape", c.escape),
    ];
    for (key, ch) in chars {
        if let Some(ch) = ch
            && (!ch.is_ascii() || ch == '\n' || ch == '\r')
        {
            return Err(err(
                &input.referenced,
                format!(
                    "route {name}: csv.{key} must be one ASCII character other than a line end"
                ),
            ));
        }
    }
    if c.delimiter == c.quote || Some(c.delimiter) == c.escape {
        return Err(err(
            &input.referenced,
            format!("route {name}: csv delimiter, quote and escape must differ"),
        ));
    }
    if let Some(fields) = &c.fields {
        let mut seen = HashSet::new();
        for f in fields {
            if f.trim().is_empty() || f.contains('.') || f.parse::<usize>().is_ok() {
                return Err(err(
                    &input.referenced,
                    format!(
                        "route {name}: csv field name `{f}` must be a non-empty name without dots, not a number"
                    ),
                ));
            }
            if !seen.insert(f.to_ascii_lowercase()) {
                return Err(err(
                    &input.referenced,
                    format!("route {name}: csv field `{f}` is named twice"),
                ));
            }
        }
    }
    Ok(Some(c.format()))
}
