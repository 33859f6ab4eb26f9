//! Column source expressions: what `topic.site`, `payload.a.b.0`, `payload.2`, `header.x`,
//! `meta.received_at`, and on routes with `rows:` `item.x` and `meta.index`, mean, checked
//! against the route, and the input each reads from a message.

use serde_json::Value as Json;

use crate::codec::csv::CsvFormat;
use crate::codec::json::same_name;
use crate::convert::Input;
use crate::message::{Message, Origin};
use crate::topic::Filter;

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The whole payload (JSON), or the record's line (CSV).
    Payload,
    /// A path into the JSON payload: object keys and array indexes.
    PayloadPath(Vec<String>),
    /// A field of a CSV record.
    Field(Field),
    /// A topic level by index.
    TopicLevel(usize),
    /// An AMQP header or MQTT 5 user property.
    Header(String),
    Meta(Meta),
    /// A path into the array element a row comes from (`rows:`); empty for the whole element.
    Item(Vec<String>),
    /// The element's 0-based index in its array (`meta.index`, with `rows:`).
    Index,
}

/// A CSV field: by position, or by a name from `fields:` or the message's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Index(usize),
    /// `required` names must be in the header; the others (from mapping by column name)
    /// leave their column to its default when missing.
    Name {
        name: String,
        required: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    ReceivedAt,
    Broker,
    Topic,
    Qos,
    Retain,
    RoutingKey,
    Exchange,
    Redelivered,
    Queue,
    /// The instance that wrote the row.
    Instance,
}

impl Meta {
    const ALL: [(&'static str, Meta); 10] = [
        ("received_at", Meta::ReceivedAt),
        ("broker", Meta::Broker),
        ("topic", Meta::Topic),
        ("qos", Meta::Qos),
        ("retain", Meta::Retain),
        ("routing_key", Meta::RoutingKey),
        ("exchange", Meta::Exchange),
        ("redelivered", Meta::Redelivered),
        ("queue", Meta::Queue),
        ("instance", Meta::Instance),
    ];

    fn name(self) -> &'static str {
        Meta::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("", |(n, _)| n)
    }

    /// `Some(true)` for AMQP-only, `Some(false)` for MQTT-only, `None` for both.
    fn amqp_only(self) -> Option<bool> {
        match self {
            Meta::ReceivedAt | Meta::Broker | Meta::Instance => None,
            Meta::Topic | Meta::Qos | Meta::Retain => Some(false),
            Meta::RoutingKey | Meta::Exchange | Meta::Redelivered | Meta::Queue => Some(true),
        }
    }
}

/// What a route's sources may refer to.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceContext<'a> {
    pub amqp: bool,
    /// The MQTT topic filter, for `topic.NAME`.
    pub filter: Option<&'a Filter>,
    /// The CSV format; `None` for JSON.
    pub csv: Option<&'a CsvFormat>,
    /// The route explodes an array (`rows:`), so `item.*` and `meta.index` have a meaning.
    pub rows: bool,
}

/// The path of a route's `rows:` inside the payload: `payload` alone is the payload itself.
pub fn rows_path(text: &str) -> Result<Vec<String>, String> {
    let text = text.trim();
    if text == "payload" {
        return Ok(Vec::new());
    }
    let Some(path) = text.strip_prefix("payload.") else {
        return Err(format!(
            "rows: `{text}` must be a JSON path into the payload: payload.KEY.PATH, or payload \
             when the payload is the array"
        ));
    };
    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
    if segments.iter().any(String::is_empty) {
        return Err(format!("rows: `{text}` has an empty path segment"));
    }
    Ok(segments)
}

impl Source {
    /// Parses a mapping expression in the context of its route.
    pub fn parse(text: &str, ctx: &SourceContext) -> Result<Source, String> {
        let text = text.trim();
        if text == "payload" {
            if ctx.rows {
                return Err(
                    "`payload` would repeat the whole message in every row of `rows:`; use \
                     `item` for the element's JSON text, or payload.KEY for a part of the message"
                        .into(),
                );
            }
            return Ok(Source::Payload);
        }
        if text == "item" || text.starts_with("item.") || text == "meta.index" {
            return item_source(text, ctx);
        }
        if let Some(path) = text.strip_prefix("payload.") {
            return match ctx.csv {
                None => {
                    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
                    if segments.iter().any(String::is_empty) {
                        return Err(format!("`{text}` has an empty path segment"));
                    }
                    Ok(Source::PayloadPath(segments))
                }
                Some(csv) => csv_field(text, path, csv).map(Source::Field),
            };
        }
        if let Some(level) = text.strip_prefix("topic.") {
            if ctx.amqp {
                return Err(format!(
                    "`{text}`: AMQP messages have no topic; use meta.routing_key"
                ));
            }
            if let Ok(index) = level.parse::<usize>() {
                return Ok(Source::TopicLevel(index));
            }
            return match ctx.filter.and_then(|f| f.capture_index(level)) {
                Some(index) => Ok(Source::TopicLevel(index)),
                None => Err(format!(
                    "`{text}`: the topic filter has no `{{{level}}}` capture; name one in `topic:` or use topic.N"
                )),
            };
        }
        if let Some(name) = text.strip_prefix("header.") {
            if name.is_empty() {
                return Err("`header.` needs a header name".into());
            }
            return Ok(Source::Header(name.to_string()));
        }
        let meta = text
            .strip_prefix("meta.")
            .and_then(|m| Meta::ALL.iter().find(|(n, _)| *n == m))
            .map(|(_, m)| *m);
        match meta {
            Some(m) if m.amqp_only() == Some(!ctx.amqp) => Err(format!(
                "`{text}` is only for {} routes",
                if ctx.amqp { "MQTT" } else { "AMQP" }
            )),
            Some(m) => Ok(Source::Meta(m)),
            None => {
                let metas: Vec<&str> = Meta::ALL
                    .iter()
                    .filter(|(_, m)| m.amqp_only() != Some(!ctx.amqp))
                    .map(|(n, _)| *n)
                    .collect();
                Err(format!(
                    "`{text}` is not a source; use {}payload.{}, {}header.NAME, or meta.{}",
                    if ctx.rows {
                        "item, item.KEY.PATH, meta.index, "
                    } else {
                        "payload, "
                    },
                    if ctx.csv.is_some() {
                        "N or payload.NAME"
                    } else {
                        "KEY.PATH"
                    },
                    if ctx.amqp {
                        ""
                    } else {
                        "topic.NAME, topic.N, "
                    },
                    metas.join("|")
                ))
            }
        }
    }

    /// The expression as written in the configuration.
    pub fn describe(&self) -> String {
        match self {
            Source::Payload => "payload".into(),
            Source::PayloadPath(path) => format!("payload.{}", path.join(".")),
            Source::Field(Field::Index(i)) => format!("payload.{i}"),
            Source::Field(Field::Name { name, .. }) => format!("payload.{name}"),
            Source::TopicLevel(i) => format!("topic.{i}"),
            Source::Header(name) => format!("header.{name}"),
            Source::Meta(m) => format!("meta.{}", m.name()),
            Source::Item(path) if path.is_empty() => "item".into(),
            Source::Item(path) => format!("item.{}", path.join(".")),
            Source::Index => "meta.index".into(),
        }
    }
}

/// `item`, `item.a.b` and `meta.index`: they address the element of `rows:`.
fn item_source(text: &str, ctx: &SourceContext) -> Result<Source, String> {
    if !ctx.rows {
        return Err(format!(
            "`{text}` addresses an element of an array the route explodes: set `rows:` on the \
             route (rows: payload.LIST, one row per element), or read the message with payload.KEY"
        ));
    }
    if text == "meta.index" {
        return Ok(Source::Index);
    }
    let segments: Vec<String> = match text.strip_prefix("item.") {
        Some(path) => path.split('.').map(str::to_string).collect(),
        None => Vec::new(),
    };
    if segments.iter().any(String::is_empty) {
        return Err(format!("`{text}` has an empty path segment"));
    }
    Ok(Source::Item(segments))
}

fn csv_field(text: &str, name: &str, csv: &CsvFormat) -> Result<Field, String> {
    if let Ok(index) = name.parse::<usize>() {
        return Ok(Field::Index(index));
    }
    if name.contains('.') {
        return Err(format!(
            "`{text}`: CSV fields have no paths; use payload.N or payload.NAME"
        ));
    }
    if let Some(fields) = &csv.fields {
        return position(fields, name).map(Field::Index).ok_or_else(|| {
            format!(
                "`{text}`: `{name}` is not in csv.fields ({})",
                fields.join(", ")
            )
        });
    }
    if csv.header {
        return Ok(Field::Name {
            name: name.to_string(),
            required: true,
        });
    }
    Err(format!(
        "`{text}`: name the fields with csv.fields or csv.header: true, or use an index (payload.0)"
    ))
}

/// A name's position: the exact spelling first, then ignoring case.
pub(super) fn position(names: &[String], name: &str) -> Option<usize> {
    names
        .iter()
        .position(|n| n == name)
        .or_else(|| names.iter().position(|n| same_name(n, name)))
}

/// A source that does not depend on the payload format; `payload` is the whole payload or
/// the record's line.
pub(super) fn message_input<'a>(
    source: &'a Source,
    message: &'a Message,
    payload: &'a [u8],
) -> Option<Input<'a>> {
    match source {
        Source::Payload => Some(Input::Bytes(payload)),
        Source::PayloadPath(_) | Source::Field(_) | Source::Item(_) | Source::Index => None,
        Source::TopicLevel(i) => message.topic.split('/').nth(*i).map(Input::Text),
        Source::Header(name) => header(message, name).map(Input::Json),
        Source::Meta(meta) => match (meta, &message.origin) {
            (Meta::ReceivedAt, _) => Some(Input::Timestamp(message.received_at)),
            (Meta::Broker, _) => Some(Input::Text(&message.broker)),
            (Meta::Instance, _) => Some(Input::Text(crate::message::instance())),
            (Meta::Topic | Meta::RoutingKey, _) => Some(Input::Text(&message.topic)),
            (Meta::Qos, Origin::Mqtt { qos, .. }) => Some(Input::Int(i64::from(*qos))),
            (Meta::Retain, Origin::Mqtt { retain, .. }) => Some(Input::Bool(*retain)),
            (Meta::Exchange, Origin::Amqp { exchange, .. }) => Some(Input::Text(exchange)),
            (Meta::Redelivered, Origin::Amqp { redelivered, .. }) => {
                Some(Input::Bool(*redelivered))
            }
            (Meta::Queue, Origin::Amqp { queue, .. }) => Some(Input::Text(queue)),
            _ => None,
        },
    }
}

/// A header by name: the exact spelling first, then ignoring case. An MQTT 5 user property
/// sent several times is an array of its values (user properties are always strings), and
/// `header.x` takes the first.
fn header<'a>(message: &'a Message, name: &str) -> Option<&'a Json> {
    let value = message.headers.get(name).or_else(|| {
        message
            .headers
            .iter()
            .find(|(k, _)| same_name(k, name))
            .map(|(_, v)| v)
    })?;
    match (value, &message.origin) {
        (Json::Array(values), Origin::Mqtt { .. }) => values.first(),
        _ => Some(value),
    }
}
