//! Cross-checks that serde cannot express: references between blocks, filter and mapping
//! syntax, and settings that only make sense together.

use std::collections::HashSet;
use std::path::Path;

use serde_saphyr::Spanned;

use super::size;
use super::{
    BrokerKind, Config, ConfigError, CsvInput, EnvString, Format, Inbound, Mirror, MqttVersion,
    OnConflict, Outbound,
};
use crate::codec::csv::CsvFormat;
use crate::mapping::{Field, Source, SourceContext};
use crate::topic::Filter;

pub fn check(path: &Path, config: &Config) -> Result<(), ConfigError> {
    let err = |at: &serde_saphyr::Location, msg: String| ConfigError::at(path, at, msg);

    for (name, broker) in &config.brokers {
        let url = broker.value.url.value.as_str();
        if broker.value.kind().is_none() {
            return Err(err(
                &broker.value.url.referenced,
                format!(
                    "broker {name}: url `{}` must start with mqtt://, mqtts://, amqp:// or amqps://",
                    super::url::redacted(url)
                ),
            ));
        }
        if let Some(plain @ ("mqtt" | "amqp")) = url.split_once("://").map(|(s, _)| s)
            && broker.value.tls.is_some()
        {
            return Err(err(
                &broker.value.url.referenced,
                format!(
                    "broker {name}: a tls block needs a TLS url: write {plain}s:// instead of \
                     {plain}:// (with {plain}:// the connection, credentials included, is plain text)"
                ),
            ));
        }
        if broker.value.password.is_some() && broker.value.password_file.is_some() {
            return Err(err(
                &broker.referenced,
                format!("broker {name}: set password or password_file, not both"),
            ));
        }
        if broker.value.max_in_flight == 0 {
            return Err(err(
                &broker.referenced,
                format!("broker {name}: max_in_flight must be at least 1"),
            ));
        }
        let b = &broker.value;
        if b.max_message_bytes == 0 || b.max_message_bytes > size::MQTT_MAX_PACKET {
            return Err(err(
                &broker.referenced,
                format!(
                    "broker {name}: max_message_bytes must be between 1 and {} (256 MiB, MQTT's own limit)",
                    size::MQTT_MAX_PACKET
                ),
            ));
        }
        if b.max_in_flight_bytes < b.max_message_bytes
            || b.max_in_flight_bytes > u64::from(u32::MAX)
        {
            return Err(err(
                &broker.referenced,
                format!(
                    "broker {name}: max_in_flight_bytes ({}) must be at least max_message_bytes ({}) and below 4 GiB",
                    size::describe(b.max_in_flight_bytes),
                    size::describe(b.max_message_bytes)
                ),
            ));
        }
    }

    for (name, db) in &config.databases {
        let d = &db.value;
        if d.connection_string.is_some() == d.dsn.is_some() {
            return Err(err(
                &db.referenced,
                format!("database {name}: set exactly one of connection_string or dsn"),
            ));
        }
        if d.password.is_some() && d.password_file.is_some() {
            return Err(err(
                &db.referenced,
                format!("database {name}: set password or password_file, not both"),
            ));
        }
    }

    let mut names = HashSet::new();
    for route in &config.inbound {
        let r = &route.value;
        let name = &r.name.value;
        references(path, config, &r.name, &r.broker, &r.database, &mut names)?;
        let amqp = config.brokers[r.broker.value.as_str()].value.kind() == Some(BrokerKind::Amqp);
        let filter = intake(path, r, amqp)?;
        let csv = csv_format(path, route)?;
        let ctx = SourceContext {
            amqp,
            filter: filter.as_ref(),
            csv: csv.as_ref(),
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
                    format!(
                        "route {name}: `columns:` is empty; remove it to map JSON keys to columns"
                    ),
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
    }
    for route in &config.outbound {
        check_outbound(path, config, route, &mut names)?;
    }
    if let Some(mirror) = config.dead_letter.as_ref().and_then(|d| d.publish.as_ref()) {
        check_mirror(path, config, mirror)?;
    }
    if let Some(http) = &config.http
        && let Err(e) = http.addr()
    {
        return Err(ConfigError::at(path, &http.listen.referenced, e));
    }
    Ok(())
}

/// `dead_letter.publish`: a known broker, the address keys its protocol uses, and templates
/// that only name what a dead letter has.
fn check_mirror(path: &Path, config: &Config, mirror: &Spanned<Mirror>) -> Result<(), ConfigError> {
    let err = |at: &serde_saphyr::Location, msg: String| ConfigError::at(path, at, msg);
    let m = &mirror.value;
    exists(
        path,
        &m.broker,
        config.brokers.contains_key(m.broker.value.as_str()),
        "broker",
        "brokers",
    )?;
    let amqp = config.brokers[m.broker.value.as_str()].value.kind() == Some(BrokerKind::Amqp);
    let templates: Vec<&Spanned<EnvString>> = match (amqp, &m.topic, &m.exchange) {
        (false, Some(topic), None) if m.routing_key.is_none() => vec![topic],
        (true, None, Some(exchange)) => std::iter::once(exchange)
            .chain(m.routing_key.as_ref())
            .collect(),
        (false, _, _) => {
            return Err(err(
                m.exchange
                    .as_ref()
                    .or(m.routing_key.as_ref())
                    .map_or(&mirror.referenced, |x| &x.referenced),
                "dead_letter.publish: an MQTT broker takes `topic:` (and no exchange or routing_key)".into(),
            ));
        }
        (true, _, _) => {
            return Err(err(
                m.topic.as_ref().map_or(&mirror.referenced, |t| &t.referenced),
                "dead_letter.publish: an AMQP broker takes `exchange:` and optionally `routing_key:` (no topic)".into(),
            ));
        }
    };
    for t in templates {
        let template = crate::template::Template::parse(&t.value)
            .map_err(|e| err(&t.referenced, format!("dead_letter.publish: {e}")))?;
        if let Some(bad) = template
            .columns()
            .find(|c| !crate::dlq::MIRROR_FIELDS.contains(c))
        {
            return Err(err(
                &t.referenced,
                format!(
                    "dead_letter.publish: `{{{bad}}}` is not a dead-letter field; use {}",
                    crate::dlq::MIRROR_FIELDS
                        .iter()
                        .map(|f| format!("{{{f}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
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

fn check_outbound(
    path: &Path,
    config: &Config,
    route: &serde_saphyr::Spanned<Outbound>,
    names: &mut HashSet<EnvString>,
) -> Result<(), ConfigError> {
    let err = |at: &serde_saphyr::Location, msg: String| ConfigError::at(path, at, msg);
    let r = &route.value;
    let name = &r.name.value;
    references(path, config, &r.name, &r.broker, &r.database, names)?;
    if r.query.value.trim().is_empty() {
        return Err(err(
            &r.query.referenced,
            format!("route {name}: the query is empty"),
        ));
    }
    if r.max_rows == 0 {
        return Err(err(
            &route.referenced,
            format!("route {name}: max_rows must be at least 1"),
        ));
    }
    let kind = config.brokers[r.broker.value.as_str()].value.kind();
    let templates: Vec<&serde_saphyr::Spanned<EnvString>> = match kind {
        Some(BrokerKind::Mqtt) => {
            if let Some(x) = r.exchange.as_ref().or(r.routing_key.as_ref()) {
                return Err(err(
                    &x.referenced,
                    format!(
                        "route {name}: exchange and routing_key are for AMQP brokers; MQTT routes use topic"
                    ),
                ));
            }
            let Some(topic) = &r.topic else {
                return Err(err(
                    &route.referenced,
                    format!("route {name}: set `topic:` (a template such as alarms/{{device}})"),
                ));
            };
            vec![topic]
        }
        _ => {
            if let Some(topic) = &r.topic {
                return Err(err(
                    &topic.referenced,
                    format!(
                        "route {name}: topic is for MQTT brokers; AMQP routes use exchange and routing_key"
                    ),
                ));
            }
            if r.topic_values_add_levels {
                return Err(err(
                    &route.referenced,
                    format!(
                        "route {name}: topic_values_add_levels is for MQTT topics; remove it from this AMQP route"
                    ),
                ));
            }
            let Some(exchange) = &r.exchange else {
                return Err(err(
                    &route.referenced,
                    format!("route {name}: set `exchange:` (and optionally routing_key)"),
                ));
            };
            std::iter::once(exchange)
                .chain(r.routing_key.as_ref())
                .collect()
        }
    };
    for t in templates {
        crate::template::Template::parse(&t.value)
            .map_err(|e| err(&t.referenced, format!("route {name}: {e}")))?;
    }
    let track_len = r.track.as_ref().map(|t| t.value.0.len()).unwrap_or(0);
    match (&r.track, &r.start) {
        (Some(track), Some(start)) if start.value.0.len() != track_len => {
            return Err(err(
                &start.referenced,
                format!(
                    "route {name}: start has {} values but track names {track_len} columns",
                    start.value.0.len()
                ),
            ));
        }
        (Some(track), None) => {
            return Err(err(
                &track.referenced,
                format!("route {name}: track needs `start:` (the first position, e.g. start: 0)"),
            ));
        }
        (None, Some(start)) => {
            return Err(err(
                &start.referenced,
                format!("route {name}: start is only used with track"),
            ));
        }
        _ => {}
    }
    if track_len == 0 && (r.after_publish.is_some() || r.delay.is_some()) {
        return Err(err(
            &route.referenced,
            format!("route {name}: after_publish and delay need `track:`"),
        ));
    }
    if r.csv.delimiter == r.csv.quote {
        return Err(err(
            &route.referenced,
            format!("route {name}: csv delimiter and quote must differ"),
        ));
    }
    Ok(())
}

/// A route's name is unique, and its broker and database are defined.
fn references(
    path: &Path,
    config: &Config,
    name: &Spanned<EnvString>,
    broker: &Spanned<EnvString>,
    database: &Spanned<EnvString>,
    names: &mut HashSet<EnvString>,
) -> Result<(), ConfigError> {
    if !names.insert(name.value.clone()) {
        return Err(ConfigError::at(
            path,
            &name.referenced,
            format!("route name `{}` is used twice", name.value),
        ));
    }
    exists(
        path,
        broker,
        config.brokers.contains_key(broker.value.as_str()),
        "broker",
        "brokers",
    )?;
    exists(
        path,
        database,
        config.databases.contains_key(database.value.as_str()),
        "database",
        "databases",
    )
}

fn exists(
    path: &Path,
    reference: &Spanned<EnvString>,
    found: bool,
    what: &str,
    block: &str,
) -> Result<(), ConfigError> {
    if found {
        return Ok(());
    }
    Err(ConfigError::at(
        path,
        &reference.referenced,
        format!(
            "{what} `{}` is not defined under `{block}:`",
            reference.value
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    const BASE: &str = "brokers:\n  b:\n    url: mqtt://127.0.0.1:1883\ndatabases:\n  d:\n    connection_string: x\n";

    fn problem(routes: &str) -> ConfigError {
        let text = format!("{BASE}inbound:\n{routes}");
        let path = Path::new("c.yaml");
        let config = parse(path, &text).unwrap();
        check(path, &config).unwrap_err()
    }

    #[test]
    fn unknown_references_name_their_line() {
        let e =
            problem("  - name: r\n    broker: nope\n    topic: a\n    database: d\n    table: t\n");
        assert_eq!(e.line, Some(9), "{e}");
        assert!(e.message.contains("broker `nope` is not defined"), "{e}");
    }

    #[test]
    fn mapping_sources_are_checked() {
        let e = problem(
            "  - name: r\n    broker: b\n    topic: a/{x}\n    database: d\n    table: t\n    columns:\n      c: topic.y\n",
        );
        assert_eq!(e.line, Some(14), "{e}");
    }

    #[test]
    fn a_tls_block_on_a_plain_url_is_refused() {
        let path = Path::new("c.yaml");
        for (url, plain) in [("mqtt://h:1883", "mqtt"), ("amqp://h:5672/%2f", "amqp")] {
            let text = format!(
                "brokers:\n  b:\n    url: {url}\n    tls: {{ ca_file: ca.pem }}\ndatabases:\n  d:\n    connection_string: x\n"
            );
            let e = check(path, &parse(path, &text).unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("c.yaml:3:"), "{e}");
            assert!(e.contains(&format!("write {plain}s://")), "{e}");
        }
        let secure = "brokers:\n  b:\n    url: mqtts://h:8883\n    tls: { ca_file: ca.pem }\ndatabases:\n  d:\n    connection_string: x\n";
        assert!(check(path, &parse(path, secure).unwrap()).is_ok());
    }

    #[test]
    fn topic_values_add_levels_is_for_mqtt_routes_only() {
        let path = Path::new("c.yaml");
        let text = |url: &str, target: &str| {
            format!(
                "brokers:\n  b:\n    url: {url}\ndatabases:\n  d:\n    connection_string: x\noutbound:\n  - name: o\n    database: d\n    query: SELECT 1\n    broker: b\n    {target}\n    topic_values_add_levels: true\n"
            )
        };
        let amqp = text("amqp://h:5672/%2f", "exchange: x");
        let e = check(path, &parse(path, &amqp).unwrap()).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(
            e.message.contains("topic_values_add_levels is for MQTT"),
            "{e}"
        );
        let mqtt = text("mqtt://h:1883", "topic: a/{x}");
        assert!(check(path, &parse(path, &mqtt).unwrap()).is_ok());
    }

    #[test]
    fn conflict_modes_need_keys() {
        let e = problem(
            "  - name: r\n    broker: b\n    topic: a\n    database: d\n    table: t\n    on_conflict: ignore\n",
        );
        assert!(e.message.contains("needs `key:`"), "{e}");
    }
}
