//! JSON payloads: decoding inbound messages, and one object per row for outbound routes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Number, Value as Json};

use crate::cell::{Cell, float_text, local_timestamp, rfc3339};
use crate::error::MapError;

/// The payload as text, without the UTF-8 byte-order mark some writers put first.
fn payload_text(payload: &[u8]) -> Result<&str, MapError> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| MapError::Decode(format!("the payload is not valid UTF-8: {e}")))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Parses a JSON payload, refusing invalid UTF-8 with its position.
pub fn decode(payload: &[u8]) -> Result<Json, MapError> {
    serde_json::from_str(payload_text(payload)?)
        .map_err(|e| MapError::Decode(format!("invalid JSON: {e}")))
}

/// The top-level members of a JSON object payload whose keys match a wanted key (ignoring
/// case), in document order; a repeated key keeps its last value, in its first place.
#[derive(Debug, PartialEq)]
pub struct Decoded(pub Vec<(String, Json)>);

impl Decoded {
    /// The value at `path`: an exact key first, then one that differs only in case.
    pub fn get(&self, path: &[String]) -> Option<&Json> {
        let (first, rest) = path.split_first()?;
        let value = self
            .0
            .iter()
            .find(|(k, _)| k == first)
            .or_else(|| self.0.iter().find(|(k, _)| same_name(k, first)))
            .map(|(_, v)| v)?;
        lookup(value, rest)
    }
}

impl Decoded {
    /// Like [`Decoded::get`], for taking the value out.
    pub fn get_mut(&mut self, path: &[String]) -> Option<&mut Json> {
        let (first, rest) = path.split_first()?;
        let at = self
            .0
            .iter()
            .position(|(k, _)| k == first)
            .or_else(|| self.0.iter().position(|(k, _)| same_name(k, first)))?;
        lookup_mut(&mut self.0[at].1, rest)
    }
}

/// Like [`lookup`], for taking the value out.
pub fn lookup_mut<'a>(value: &'a mut Json, path: &[String]) -> Option<&'a mut Json> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value);
    };
    let next = match value {
        Json::Object(map) => {
            let key = if map.contains_key(first) {
                Some(first.clone())
            } else {
                map.keys().find(|k| same_name(k, first)).cloned()
            }?;
            map.get_mut(&key)?
        }
        Json::Array(items) => items.get_mut(first.parse::<usize>().ok()?)?,
        _ => return None,
    };
    lookup_mut(next, rest)
}

/// Follows object keys, then a case-insensitive key, and array indexes.
pub fn lookup<'a>(json: &'a Json, path: &[String]) -> Option<&'a Json> {
    path.iter().try_fold(json, |node, segment| match node {
        Json::Object(map) => map.get(segment).or_else(|| {
            map.iter()
                .find(|(k, _)| same_name(k, segment))
                .map(|(_, v)| v)
        }),
        Json::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Parses a JSON object payload, but builds values only for the top-level members whose
/// keys are in `wanted` (ignoring case): the rest is checked and skipped. Invalid JSON
/// anywhere, and a payload that is not an object, are errors.
pub fn decode_members(payload: &[u8], wanted: &[String]) -> Result<Decoded, MapError> {
    let text = payload_text(payload)?;
    if !text.trim_start().starts_with('{') {
        let whole = decode(payload)?;
        return Err(MapError::Decode(format!(
            "the payload is {}, not a JSON object",
            kind_of(&whole)
        )));
    }
    let invalid = |e: serde_json::Error| MapError::Decode(format!("invalid JSON: {e}"));
    let mut de = serde_json::Deserializer::from_str(text);
    let members = Members { wanted }.deserialize(&mut de).map_err(invalid)?;
    de.end().map_err(invalid)?;
    Ok(Decoded(members))
}

/// How an error names a JSON value's type: `a JSON array`, `null`.
pub fn kind_of(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a JSON boolean",
        Json::Number(_) => "a JSON number",
        Json::String(_) => "a JSON string",
        Json::Array(_) => "a JSON array",
        Json::Object(_) => "a JSON object",
    }
}

struct Members<'w> {
    wanted: &'w [String],
}

impl<'de> DeserializeSeed<'de> for Members<'_> {
    type Value = Vec<(String, Json)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Members<'_> {
    type Value = Vec<(String, Json)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, Json)> = Vec::with_capacity(self.wanted.len());
        while let Some(Key(key)) = map.next_key()? {
            if !self.wanted.iter().any(|w| same_name(w, &key)) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value: Json = map.next_value()?;
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => out.push((key.into_owned(), value)),
            }
        }
        Ok(out)
    }
}

/// An object key, borrowed from the payload unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// One JSON object: keys are column names; integers stay integers, decimals keep every
/// digit, floats JSON cannot hold are the strings `NaN`, `Infinity`, `-Infinity`, moments
/// are RFC 3339 UTC, timestamps without time zone have no offset, JSON documents are
/// nested, binary is base64, NULL is null.
pub fn json_row(columns: &[String], row: &[Cell]) -> Vec<u8> {
    let mut object = Map::with_capacity(columns.len());
    for (name, cell) in columns.iter().zip(row) {
        object.insert(name.clone(), json_value(cell));
    }
    serde_json::to_vec(&Json::Object(object)).unwrap_or_default()
}

fn json_value(cell: &Cell) -> Json {
    match cell {
        Cell::Null => Json::Null,
        Cell::Int(i) => Json::from(*i),
        // With arbitrary precision, a parsed number keeps the digits as written.
        Cell::Decimal(d) => d
            .parse::<Number>()
            .map(Json::Number)
            .unwrap_or_else(|_| Json::String(d.clone())),
        Cell::Float(f) => Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(float_text(*f))),
        Cell::Bool(b) => Json::Bool(*b),
        Cell::Text(t) => Json::String(t.clone()),
        Cell::Bytes(b) => Json::String(crate::dlq::base64(b)),
        Cell::Date(d) => Json::String(d.format("%Y-%m-%d").to_string()),
        Cell::Timestamp(t) => Json::String(rfc3339(t)),
        Cell::LocalTimestamp(t) => Json::String(local_timestamp(t)),
        Cell::Json(t) => serde_json::from_str(t).unwrap_or_else(|_| Json::String(t.clone())),
        // Its row is a dead letter; the reason says why.
        Cell::Invalid(_) => Json::Null,
    }
}

/// Whether two names are the same ignoring case, for every script: `übertemp` is
/// `ÜberTemp`. Callers try the exact spelling first.
pub fn same_name(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use proptest::prelude::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(String::from).collect()
    }

    #[test]
    fn members_are_what_a_full_decode_finds() {
        let wanted = path("a.B.list");
        let payload = br#"{"a": 1, "skip": {"deep": [1, 2, {"x": "y"}]}, "b": {"c": 2.50}, "list": [true, null], "a": "again", "k\u0065y": 3}"#;
        let decoded = decode_members(payload, &wanted).unwrap();
        // The last of a repeated key wins; keys are matched ignoring case.
        assert_eq!(decoded.get(&path("a")), Some(&Json::from("again")));
        assert_eq!(decoded.get(&path("B.c")).unwrap().to_string(), "2.50");
        assert_eq!(decoded.get(&path("list.1")), Some(&Json::Null));
        assert_eq!(decoded.get(&path("skip")), None);
        assert_eq!(decoded.0.len(), 3, "unwanted members are not built");
    }

    #[test]
    fn only_objects_are_payloads() {
        for (payload, kind) in [
            (&b" [10, 20]"[..], "a JSON array"),
            (b"42", "a JSON number"),
            (b"\"x\"", "a JSON string"),
            (b"null", "null"),
        ] {
            let err = decode_members(payload, &[]).unwrap_err();
            assert_eq!(
                err,
                MapError::Decode(format!("the payload is {kind}, not a JSON object"))
            );
        }
        assert!(matches!(
            decode_members(b"this is not json at all", &[]),
            Err(MapError::Decode(m)) if m.starts_with("invalid JSON")
        ));
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let decoded = decode_members("\u{feff}{\"a\": 1}".as_bytes(), &path("a")).unwrap();
        assert_eq!(decoded.get(&path("a")), Some(&Json::from(1)));
    }

    #[test]
    fn keys_match_ignoring_case_in_every_script() {
        let decoded = decode_members(
            r#"{"übertemp": 1, "ΣΟΦΊΑ": {"Ärger": 2}}"#.as_bytes(),
            &path("ÜberTemp.σοφία"),
        )
        .unwrap();
        assert_eq!(decoded.get(&path("ÜberTemp")), Some(&Json::from(1)));
        assert_eq!(decoded.get(&path("σοφία.ärger")), Some(&Json::from(2)));
    }

    #[test]
    fn invalid_json_is_refused_even_where_nothing_is_wanted() {
        for bad in [
            &br#"{"a": 1, "skip": [1, }"#[..],
            br#"{"a": 1} trailing"#,
            br#"{"a": 1"#,
            b"\xff\xfe{}",
        ] {
            assert!(decode_members(bad, &path("a")).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn selected_members_agree_with_the_full_decode(
            keys in proptest::collection::vec("[a-cA-C]{1,2}", 0..8),
            values in proptest::collection::vec(-1000i64..1000, 8),
            wanted in proptest::collection::vec("[a-c]{1,2}", 1..4),
        ) {
            let body: Vec<String> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| format!("{k:?}: {{\"v\": {v}}}"))
                .collect();
            let payload = format!("{{{}}}", body.join(","));
            let full = decode(payload.as_bytes()).unwrap();
            let decoded = decode_members(payload.as_bytes(), &wanted).unwrap();
            for w in &wanted {
                let p = vec![w.clone(), "v".to_string()];
                prop_assert_eq!(decoded.get(&p), lookup(&full, &p), "{} in {}", w, payload);
            }
        }
    }

    #[test]
    fn json_keeps_types_and_digits() {
        let columns: Vec<String> = ["i", "d", "f", "b", "t", "ts", "n", "bin"]
            .map(String::from)
            .to_vec();
        let ts = NaiveDate::from_ymd_opt(2024, 5, 1)
            .unwrap()
            .and_hms_opt(10, 0, 0)
            .unwrap();
        let row = vec![
            Cell::Int(9_007_199_254_740_993),
            Cell::Decimal("12345678901234567890.1234567890".into()),
            Cell::Float(1.5),
            Cell::Bool(true),
            Cell::Text("é\"x".into()),
            Cell::Timestamp(ts),
            Cell::Null,
            Cell::Bytes(vec![0xff, 0]),
        ];
        let text = String::from_utf8(json_row(&columns, &row)).unwrap();
        assert_eq!(
            text,
            r#"{"i":9007199254740993,"d":12345678901234567890.1234567890,"f":1.5,"b":true,"t":"é\"x","ts":"2024-05-01T10:00:00Z","n":null,"bin":"/wA="}"#
        );
    }
}
