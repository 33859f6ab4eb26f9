//! `rows:`: one row per element of an array in a JSON message. The payload is parsed once;
//! its array is taken out, and the rest of the message stays beside it for `payload.x`.

use std::sync::Arc;

use serde_json::Value as Json;

use super::source::message_input;
use super::{MapError, Mapper, Row, Source};
use crate::codec::json::{self, kind_of, lookup, lookup_mut, same_name};
use crate::convert::Input;
use crate::message::Message;

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

impl Mapper {
    /// Parses the payload and takes out the array at the `rows:` path.
    pub(super) fn explode(&self, message: &Message) -> Result<Exploded, MapError> {
        let path = self.rows.as_deref().unwrap_or_default();
        let mut root = json::decode(&message.payload)?;
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

    pub(super) fn element_row(
        &self,
        message: &Message,
        exploded: &Exploded,
        index: usize,
    ) -> Result<Row, MapError> {
        self.item_row(message, &exploded.context, &exploded.items[index], index)
    }

    /// The row of an element's dead letter: the letter's payload is the element, `index`
    /// and `context` (the message around the array, when it was kept) come from its headers.
    pub fn map_element(
        &self,
        message: &Message,
        index: usize,
        context: Option<&Json>,
    ) -> Result<Row, MapError> {
        let item = json::decode(&message.payload)?;
        self.item_row(message, context.unwrap_or(&Json::Null), &item, index)
    }

    fn item_row(
        &self,
        message: &Message,
        context: &Json,
        item: &Json,
        index: usize,
    ) -> Result<Row, MapError> {
        if self.objects_only && !item.is_object() {
            return Err(MapError::Decode(format!(
                "element {index}: {}, not a JSON object (without `columns`, an element's keys \
                 name the columns)",
                kind_of(item)
            )));
        }
        self.columns
            .iter()
            .map(|column| {
                let input = match &column.source {
                    Source::Item(path) => lookup(item, path).map(Input::Json),
                    Source::Index => Some(Input::Int(index as i64)),
                    Source::PayloadPath(path) => lookup(context, path).map(Input::Json),
                    other => message_input(other, message, &message.payload),
                };
                self.convert_column(column, input)
                    .map_err(|e| MapError::Convert(format!("element {index}: {e}")))
            })
            .collect()
    }
}
