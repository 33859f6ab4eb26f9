//! `rows:`: one row per element of an array in a JSON message. The payload is parsed once;
//! its array is taken out, and the rest of the message stays beside it for `payload.x`.

use std::sync::Arc;

use serde_json::Value as Json;

use crate::codec::json::{self, kind_of, lookup_mut, same_name};
use crate::error::MapError;

/// A message exploded by `rows:`: its array's elements, and the message without the array.
#[derive(Debug)]
pub struct Exploded {
    /// What `payload.x` reads: the message, its exploded array taken out.
    pub context: Json,
    pub items: Vec<Json>,
}

impl Exploded {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One element of an exploded message. It shares the message's elements, so a row failing
/// at the database later can still say what its element was.
#[derive(Debug, Clone)]
pub struct Element {
    pub index: usize,
    exploded: Arc<Exploded>,
}

impl Element {
    pub(super) fn new(exploded: &Arc<Exploded>, index: usize) -> Element {
        Element {
            index,
            exploded: exploded.clone(),
        }
    }

    pub fn item(&self) -> &Json {
        &self.exploded.items[self.index]
    }

    /// The message around the array.
    pub fn context(&self) -> &Json {
        &self.exploded.context
    }

    /// The element's JSON text: its dead letter's payload.
    pub fn text(&self) -> Vec<u8> {
        serde_json::to_vec(self.item()).unwrap_or_default()
    }
}

/// Parses a payload and takes out the array at `path` (empty: the payload is the array).
pub(super) fn explode(payload: &[u8], path: &[String]) -> Result<Exploded, MapError> {
    let mut root = json::decode(payload)?;
    let written = if path.is_empty() {
        "payload".to_string()
    } else {
        format!("payload.{}", path.join("."))
    };
    let not_array = |value: &Json| {
        MapError::Decode(format!(
            "rows: {written} is {}, not a JSON array",
            kind_of(value)
        ))
    };
    let Some((last, parent)) = path.split_last() else {
        return match root {
            Json::Array(items) => Ok(Exploded {
                context: Json::Null,
                items,
            }),
            other => Err(not_array(&other)),
        };
    };
    let missing = || {
        MapError::Decode(format!(
            "rows: {written}: the payload has nothing at this path"
        ))
    };
    let items = match lookup_mut(&mut root, parent).ok_or_else(missing)? {
        Json::Object(map) => {
            let key = match map.contains_key(last) {
                true => Some(last.clone()),
                false => map.keys().find(|k| same_name(k, last)).cloned(),
            };
            match key.and_then(|k| map.shift_remove(&k)) {
                Some(Json::Array(items)) => items,
                Some(other) => return Err(not_array(&other)),
                None => return Err(missing()),
            }
        }
        Json::Array(list) => {
            let at = last.parse::<usize>().ok().and_then(|i| list.get_mut(i));
            match at.ok_or_else(missing)? {
                Json::Array(items) => std::mem::take(items),
                other => return Err(not_array(other)),
            }
        }
        _ => return Err(missing()),
    };
    Ok(Exploded {
        context: root,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{SqlKind, Value};
    use crate::mapping::{
        MappedColumn, Mapper, Part, PayloadFormat, Progress, Row, Source, SourceContext, rows_path,
    };
    use crate::message::Message;
    use crate::message::{AckHandle, Origin};
    use crate::topic::Filter;
    use chrono::Utc;
    use serde_json::json;

    fn message(topic: &str, payload: &str) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec().into(),
            received_at: Utc::now(),
            broker: "b".into(),
            origin: Origin::Mqtt {
                qos: 1,
                retain: false,
            },
            headers: Default::default(),
            ack: AckHandle::none(),
        }
    }

    fn ctx(filter: Option<&Filter>) -> SourceContext<'_> {
        SourceContext {
            filter,
            rows: true,
            ..Default::default()
        }
    }

    fn mapper(rows: &str, columns: &[(&str, SqlKind, &str)]) -> Mapper {
        let filter = Filter::parse("gw/{device}/batch").unwrap();
        let columns = columns
            .iter()
            .map(|(name, kind, source)| MappedColumn {
                name: name.to_string(),
                kind: *kind,
                source: Source::parse(source, &ctx(Some(&filter))).unwrap(),
                scale: None,
            })
            .collect();
        Mapper::new(columns, PayloadFormat::Json).exploding(rows_path(rows).unwrap(), false)
    }

    fn text(t: &str) -> Option<Value> {
        Some(Value::Text(t.into()))
    }

    fn int(i: i64) -> Option<Value> {
        Some(Value::Int(i))
    }

    /// The element index of each mapped row, and its row or error.
    fn rows(mapper: &Mapper, m: &Message) -> Vec<(Option<usize>, Result<Row, MapError>)> {
        mapper
            .map(m)
            .into_iter()
            .map(|(part, row)| {
                let index = part.map(|p| match p {
                    Part::Element(e) => e.index,
                    Part::Line(_) => panic!("a JSON element has no line"),
                });
                (index, row)
            })
            .collect()
    }

    #[test]
    fn rows_paths_are_payload_paths() {
        assert_eq!(rows_path("payload"), Ok(vec![]));
        assert_eq!(
            rows_path(" payload.data.readings "),
            Ok(vec!["data".to_string(), "readings".to_string()])
        );
        for bad in [
            "readings",
            "item.x",
            "payload.",
            "payload.a..b",
            "payloads.x",
        ] {
            assert!(rows_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn element_sources_parse_and_describe_themselves() {
        let with = ctx(None);
        for (text, source) in [
            ("item", Source::Item(vec![])),
            ("item.v", Source::Item(vec!["v".into()])),
            ("item.a.0", Source::Item(vec!["a".into(), "0".into()])),
            ("meta.index", Source::Index),
        ] {
            let parsed = Source::parse(text, &with).unwrap();
            assert_eq!(parsed, source);
            assert_eq!(parsed.describe(), text);
        }
        // The message's own sources stay as they were.
        assert_eq!(
            Source::parse("payload.site", &with),
            Ok(Source::PayloadPath(vec!["site".into()]))
        );
        assert!(Source::parse("item.", &with).is_err());
        assert!(
            Source::parse("payload", &with)
                .unwrap_err()
                .contains("item")
        );
        let without = SourceContext::default();
        for text in ["item", "item.v", "meta.index"] {
            let e = Source::parse(text, &without).unwrap_err();
            assert!(e.contains("set `rows:`"), "{e}");
        }
        assert!(
            Source::parse("itemx", &with)
                .unwrap_err()
                .contains("item.KEY.PATH")
        );
    }

    #[test]
    fn each_element_is_a_row_with_the_message_around_it() {
        let mapper = mapper(
            "payload.readings",
            &[
                ("device", SqlKind::Text, "topic.device"),
                ("site", SqlKind::Text, "payload.site"),
                ("i", SqlKind::Integer, "meta.index"),
                ("v", SqlKind::Integer, "item.v"),
                ("deep", SqlKind::Text, "item.x.y"),
                ("gone", SqlKind::Text, "payload.readings"),
            ],
        );
        let m = message(
            "gw/d7/batch",
            r#"{"site":"p1","Readings":[{"v":1,"x":{"y":"a"}},{"V":"2"},{"v":3.5},{"v":4}]}"#,
        );
        let out = rows(&mapper, &m);
        assert_eq!(out.len(), 4);
        assert_eq!(
            out[0],
            (
                Some(0),
                Ok(vec![
                    text("d7"),
                    text("p1"),
                    int(0),
                    int(1),
                    text("a"),
                    None
                ])
            )
        );
        // Keys match ignoring case; a missing key leaves the column to its default.
        assert_eq!(
            out[1].1,
            Ok(vec![text("d7"), text("p1"), int(1), int(2), None, None])
        );
        // One element that does not convert fails alone, naming itself.
        assert_eq!(out[2].0, Some(2));
        assert!(
            matches!(&out[2].1, Err(MapError::Convert(e)) if e.starts_with("element 2: column v (from item.v)")),
            "{:?}",
            out[2].1
        );
        assert_eq!(out[3].1.as_ref().unwrap()[3], int(4));
    }

    #[test]
    fn empty_null_nested_and_plain_elements() {
        let mapper = mapper(
            "payload",
            &[
                ("whole", SqlKind::Text, "item"),
                ("first", SqlKind::Integer, "item.0"),
                ("v", SqlKind::Integer, "item.v"),
            ],
        );
        assert!(rows(&mapper, &message("t", "[]")).is_empty());
        let out = rows(
            &mapper,
            &message("t", r#"[null, [7, [8]], 5, "s", {"v": null}]"#),
        );
        let got: Vec<Row> = out.into_iter().map(|(_, r)| r.unwrap()).collect();
        assert_eq!(
            got,
            vec![
                vec![Some(Value::Null), None, None],
                // Only one level explodes: an inner array is a JSON value.
                vec![text("[7,[8]]"), int(7), None],
                vec![text("5"), None, None],
                vec![text("s"), None, None],
                vec![text(r#"{"v":null}"#), None, Some(Value::Null)],
            ]
        );
    }

    #[test]
    fn by_name_elements_must_be_objects() {
        let columns = vec![MappedColumn {
            name: "v".into(),
            kind: SqlKind::Integer,
            source: Source::Item(vec!["v".into()]),
            scale: None,
        }];
        let mapper = Mapper::new(columns, PayloadFormat::Json).exploding(vec!["list".into()], true);
        let out = rows(&mapper, &message("t", r#"{"list":[{"v":1}, 2, null]}"#));
        assert_eq!(out[0].1, Ok(vec![int(1)]));
        for (i, kind) in [(1, "a JSON number"), (2, "null")] {
            assert!(
                matches!(&out[i].1, Err(MapError::Decode(e)) if e.starts_with(&format!("element {i}: {kind}, not a JSON object"))),
                "{:?}",
                out[i]
            );
        }
    }

    #[test]
    fn a_missing_or_non_array_path_fails_the_whole_message() {
        let deep = mapper("payload.data.list", &[("v", SqlKind::Integer, "item.v")]);
        for (payload, words) in [
            (
                r#"{"data":{}}"#,
                "rows: payload.data.list: the payload has nothing",
            ),
            (
                r#"{"other":1}"#,
                "rows: payload.data.list: the payload has nothing",
            ),
            (
                r#"{"data":{"list":{"v":1}}}"#,
                "rows: payload.data.list is a JSON object, not a JSON array",
            ),
            (r#"{"data":{"list":null}}"#, "is null, not a JSON array"),
            (r#"[1]"#, "the payload has nothing"),
            ("{not json", "invalid JSON"),
        ] {
            let out = rows(&deep, &message("t", payload));
            assert_eq!(out.len(), 1, "{payload}");
            assert_eq!(out[0].0, None, "{payload}");
            assert!(
                matches!(&out[0].1, Err(MapError::Decode(e)) if e.contains(words)),
                "{payload}: {:?}",
                out[0].1
            );
        }
        let whole = mapper_of_payload();
        let out = rows(&whole, &message("t", r#"{"v":1}"#));
        assert!(
            matches!(&out[0].1, Err(MapError::Decode(e)) if e == "rows: payload is a JSON object, not a JSON array")
        );
        // An index into an array leads to an array too.
        let indexed = mapper("payload.batches.1", &[("v", SqlKind::Integer, "item")]);
        let out = rows(&indexed, &message("t", r#"{"batches":[[1],[2,3]]}"#));
        let got: Vec<Row> = out.into_iter().map(|(_, r)| r.unwrap()).collect();
        assert_eq!(got, vec![vec![int(2)], vec![int(3)]]);
    }

    fn mapper_of_payload() -> Mapper {
        mapper("payload", &[("v", SqlKind::Integer, "item")])
    }

    #[test]
    fn a_huge_array_is_mapped_a_batch_at_a_time() {
        let mapper = mapper("payload.r", &[("v", SqlKind::Integer, "item")]);
        let items: Vec<String> = (0..2500).map(|i| i.to_string()).collect();
        let m = message("t", &format!(r#"{{"r":[{}]}}"#, items.join(",")));
        let mut progress = Progress::default();
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while !progress.is_done() {
            let mut got = 0;
            mapper.map_part(&m, &mut progress, 1000, &mut |part, row| {
                let Some(Part::Element(e)) = part else {
                    panic!("an element")
                };
                assert_eq!(row.unwrap(), vec![int(e.index as i64)]);
                all.push(e.index);
                got += 1;
            });
            sizes.push(got);
        }
        // The last part says the message is done: no empty round after it.
        assert_eq!(sizes, vec![1000, 1000, 500]);
        assert_eq!(all, (0..2500).collect::<Vec<_>>());
    }

    #[test]
    fn an_element_letter_maps_to_the_row_it_would_have_made() {
        let mapper = mapper(
            "payload.readings",
            &[
                ("site", SqlKind::Text, "payload.site"),
                ("i", SqlKind::Integer, "meta.index"),
                ("v", SqlKind::Integer, "item.v"),
                ("device", SqlKind::Text, "topic.device"),
            ],
        );
        assert!(mapper.reads_message());
        let m = message(
            "gw/d7/batch",
            r#"{"site":"p1","readings":[{"v":1},{"v":2}]}"#,
        );
        let mut parts = Vec::new();
        mapper.map_into(&m, &mut |part, row| parts.push((part, row)));
        let (Some(Part::Element(second)), Ok(live)) = &parts[1] else {
            panic!("{parts:?}")
        };
        assert_eq!(second.text(), br#"{"v":2}"#);
        assert_eq!(second.context(), &json!({"site": "p1"}));
        let letter = message("gw/d7/batch", r#"{"v":2}"#);
        let again = mapper.map_element(&letter, 1, Some(second.context()));
        assert_eq!(again.as_ref(), Ok(live));
        // Without the message kept, `payload.x` has nothing to read.
        let bare = mapper.map_element(&letter, 1, None).unwrap();
        assert_eq!(bare, vec![None, int(1), int(2), text("d7")]);
        assert!(mapper.map_element(&message("t", "{"), 1, None).is_err());
    }
}
