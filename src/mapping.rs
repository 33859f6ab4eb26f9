//! Column mappings: `column: source` expressions (`topic.site`, `payload.a.b.0`,
//! `meta.received_at`, …) turned into typed rows for one table.

use serde_json::Value as Json;

use crate::convert::{Input, SqlKind, Value, convert};
use crate::message::Message;
use crate::topic::Filter;

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The whole payload.
    Payload,
    /// A path into the JSON payload: object keys and array indexes.
    PayloadPath(Vec<String>),
    /// A topic level by index.
    TopicLevel(usize),
    MetaReceivedAt,
    MetaTopic,
    MetaBroker,
    MetaQos,
    MetaRetain,
}

impl Source {
    /// Parses a mapping expression; `filter` resolves `topic.NAME` captures.
    pub fn parse(text: &str, filter: Option<&Filter>) -> Result<Source, String> {
        let text = text.trim();
        if text == "payload" {
            return Ok(Source::Payload);
        }
        if let Some(path) = text.strip_prefix("payload.") {
            let segments: Vec<String> = path.split('.').map(str::to_string).collect();
            if segments.iter().any(String::is_empty) {
                return Err(format!("`{text}` has an empty path segment"));
            }
            return Ok(Source::PayloadPath(segments));
        }
        if let Some(level) = text.strip_prefix("topic.") {
            if let Ok(index) = level.parse::<usize>() {
                return Ok(Source::TopicLevel(index));
            }
            return match filter.and_then(|f| f.capture_index(level)) {
                Some(index) => Ok(Source::TopicLevel(index)),
                None => Err(format!(
                    "`{text}`: the topic filter has no `{{{level}}}` capture; name one in `topic:` or use topic.N"
                )),
            };
        }
        match text {
            "meta.received_at" => Ok(Source::MetaReceivedAt),
            "meta.topic" => Ok(Source::MetaTopic),
            "meta.broker" => Ok(Source::MetaBroker),
            "meta.qos" => Ok(Source::MetaQos),
            "meta.retain" => Ok(Source::MetaRetain),
            _ => Err(format!(
                "`{text}` is not a source; use payload, payload.KEY.PATH, topic.NAME, topic.N, or meta.received_at|topic|broker|qos|retain"
            )),
        }
    }

    /// The expression as written in the configuration.
    pub fn describe(&self) -> String {
        match self {
            Source::Payload => "payload".into(),
            Source::PayloadPath(path) => format!("payload.{}", path.join(".")),
            Source::TopicLevel(i) => format!("topic.{i}"),
            Source::MetaReceivedAt => "meta.received_at".into(),
            Source::MetaTopic => "meta.topic".into(),
            Source::MetaBroker => "meta.broker".into(),
            Source::MetaQos => "meta.qos".into(),
            Source::MetaRetain => "meta.retain".into(),
        }
    }

    fn needs_json(&self) -> bool {
        matches!(self, Source::PayloadPath(_))
    }
}

/// One mapped column of the target table.
#[derive(Debug, Clone)]
pub struct MappedColumn {
    /// The column's name as the catalog spells it.
    pub name: String,
    pub kind: SqlKind,
    pub source: Source,
}

/// Why a message could not become a row.
#[derive(Debug, Clone, PartialEq)]
pub enum MapError {
    Decode(String),
    Convert(String),
}

impl MapError {
    pub fn kind(&self) -> &'static str {
        match self {
            MapError::Decode(_) => "decode",
            MapError::Convert(_) => "convert",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            MapError::Decode(m) | MapError::Convert(m) => m,
        }
    }
}

/// A row: one entry per mapped column; `None` where the source had nothing, so the column
/// keeps its database default.
pub type Row = Vec<Option<Value>>;

/// Maps messages to rows for one route.
#[derive(Debug, Clone)]
pub struct Mapper {
    columns: Vec<MappedColumn>,
    needs_json: bool,
}

impl Mapper {
    pub fn new(columns: Vec<MappedColumn>) -> Self {
        let needs_json = columns.iter().any(|c| c.source.needs_json());
        Mapper {
            columns,
            needs_json,
        }
    }

    pub fn columns(&self) -> &[MappedColumn] {
        &self.columns
    }

    pub fn map(&self, message: &Message) -> Result<Row, MapError> {
        let json = if self.needs_json {
            Some(decode_json(&message.payload)?)
        } else {
            None
        };
        self.columns
            .iter()
            .map(|column| {
                self.value(column, message, json.as_ref()).map_err(|e| {
                    MapError::Convert(format!(
                        "column {} (from {}): {e}",
                        column.name,
                        column.source.describe()
                    ))
                })
            })
            .collect()
    }

    fn value(
        &self,
        column: &MappedColumn,
        message: &Message,
        json: Option<&Json>,
    ) -> Result<Option<Value>, String> {
        let input = match &column.source {
            Source::Payload => Input::Bytes(&message.payload),
            Source::PayloadPath(path) => match json.and_then(|j| lookup(j, path)) {
                Some(found) => Input::Json(found),
                None => return Ok(None),
            },
            Source::TopicLevel(i) => match message.topic.split('/').nth(*i) {
                Some(level) => Input::Text(level),
                None => return Ok(None),
            },
            Source::MetaReceivedAt => Input::Timestamp(message.received_at),
            Source::MetaTopic => Input::Text(&message.topic),
            Source::MetaBroker => Input::Text(&message.broker),
            Source::MetaQos => Input::Int(i64::from(message.qos)),
            Source::MetaRetain => Input::Bool(message.retain),
        };
        convert(input, column.kind).map(Some)
    }
}

/// Parses a JSON payload, refusing invalid UTF-8 with its position.
pub fn decode_json(payload: &[u8]) -> Result<Json, MapError> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| MapError::Decode(format!("the payload is not valid UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| MapError::Decode(format!("invalid JSON: {e}")))
}

/// Follows object keys, then a case-insensitive key, and array indexes.
fn lookup<'a>(json: &'a Json, path: &[String]) -> Option<&'a Json> {
    path.iter().try_fold(json, |node, segment| match node {
        Json::Object(map) => map.get(segment).or_else(|| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(segment))
                .map(|(_, v)| v)
        }),
        Json::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::AckHandle;
    use chrono::Utc;
    use tokio::sync::mpsc;

    fn message(topic: &str, payload: &[u8]) -> Message {
        let (tx, _rx) = mpsc::channel(1);
        Message {
            topic: topic.into(),
            payload: payload.to_vec(),
            qos: 1,
            retain: false,
            received_at: Utc::now(),
            broker: "b".into(),
            ack: AckHandle::new(0, tx),
        }
    }

    fn col(name: &str, kind: SqlKind, source: &str, filter: &Filter) -> MappedColumn {
        MappedColumn {
            name: name.into(),
            kind,
            source: Source::parse(source, Some(filter)).unwrap(),
        }
    }

    #[test]
    fn maps_topic_payload_and_meta() {
        let filter = Filter::parse("sensors/{site}/{device}").unwrap();
        let mapper = Mapper::new(vec![
            col("site", SqlKind::Text, "topic.site", &filter),
            col("device", SqlKind::Integer, "topic.2", &filter),
            col("value", SqlKind::Float, "payload.reading.values.1", &filter),
            col("missing", SqlKind::Text, "payload.nope", &filter),
            col("qos", SqlKind::Integer, "meta.qos", &filter),
        ]);
        let row = mapper
            .map(&message(
                "sensors/north/17",
                br#"{"reading":{"values":[1.0, 2.5]}}"#,
            ))
            .unwrap();
        assert_eq!(
            row,
            vec![
                Some(Value::Text("north".into())),
                Some(Value::Int(17)),
                Some(Value::Float(2.5)),
                None,
                Some(Value::Int(1)),
            ]
        );
    }

    #[test]
    fn bad_payloads_are_decode_errors() {
        let filter = Filter::parse("a").unwrap();
        let mapper = Mapper::new(vec![col("v", SqlKind::Integer, "payload.v", &filter)]);
        assert!(matches!(
            mapper.map(&message("a", b"{not json")),
            Err(MapError::Decode(_))
        ));
        assert!(matches!(
            mapper.map(&message("a", &[0xff, 0x00])),
            Err(MapError::Decode(_))
        ));
        let err = mapper.map(&message("a", br#"{"v":"x"}"#)).unwrap_err();
        assert!(
            matches!(err, MapError::Convert(ref m) if m.contains("column v")),
            "{err:?}"
        );
    }

    #[test]
    fn sources_parse_or_explain() {
        let filter = Filter::parse("a/{x}").unwrap();
        assert_eq!(
            Source::parse("topic.x", Some(&filter)),
            Ok(Source::TopicLevel(1))
        );
        assert!(
            Source::parse("topic.y", Some(&filter))
                .unwrap_err()
                .contains("no `{y}`")
        );
        assert!(Source::parse("payload..a", None).is_err());
        assert!(Source::parse("meta.nope", None).is_err());
    }
}
