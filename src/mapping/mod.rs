//! Column mappings: `column: source` expressions (`topic.site`, `payload.a.b.0`,
//! `payload.2`, `header.x`, `meta.received_at`, …) turned into typed rows for one table.
//! A JSON message is one row, or one row per element of an array (`rows:`); a delimited
//! (CSV) message is one row per record.

use std::sync::Arc;

use serde_json::Value as Json;

use crate::codec::csv::{self as delimited, CsvFormat, Line, Record};
use crate::codec::json::{self, kind_of, lookup, same_name};
use crate::convert::{Input, SqlKind, Value, convert, decimal_fits_digits, fraction_digits};
pub use crate::error::MapError;
use crate::message::Message;

mod explode;
mod source;

pub use explode::{Element, Exploded};
pub use source::{Field, Meta, Source, SourceContext, rows_path};
use source::{message_input, position};

/// One mapped column of the target table.
#[derive(Debug, Clone)]
pub struct MappedColumn {
    /// The column's name as the catalog spells it.
    pub name: String,
    pub kind: SqlKind,
    pub source: Source,
    /// The digits after the point a decimal column keeps, where the database rounds.
    pub scale: Option<i16>,
}

/// How far a message has been mapped.
#[derive(Debug, Default)]
pub enum Progress {
    #[default]
    Start,
    Csv(CsvProgress),
    /// A message exploded by `rows:`, and the index of its next element.
    Elements(Arc<Exploded>, usize),
    Done,
}

/// The part of a message a row (or a failure) comes from, where the message has many: a CSV
/// record's line, or an element of the array `rows:` explodes.
#[derive(Debug, Clone)]
pub enum Part {
    Line(Line),
    Element(Element),
}

impl Part {
    /// How an error names the part: `line 3`, `element 2`.
    pub fn label(&self) -> String {
        match self {
            Part::Line(l) => format!("line {}", l.number),
            Part::Element(e) => format!("element {}", e.index),
        }
    }
}

impl Progress {
    pub fn is_done(&self) -> bool {
        matches!(self, Progress::Done)
    }
}

/// A CSV message part-way through: where its next record starts, each column's field, and
/// the field count every record must have (the header's, or the first record's).
#[derive(Debug)]
pub struct CsvProgress {
    cursor: delimited::Cursor,
    at: Vec<Option<usize>>,
    expected: Option<usize>,
}

/// A row: one entry per mapped column; `None` where the source had nothing, so the column
/// keeps its database default.
pub type Row = Vec<Option<Value>>;

/// How a route's payloads are read.
#[derive(Debug, Clone, PartialEq)]
pub enum PayloadFormat {
    Json,
    Csv(CsvFormat),
}

/// Maps messages to rows for one route.
#[derive(Debug, Clone)]
pub struct Mapper {
    columns: Vec<MappedColumn>,
    format: PayloadFormat,
    /// The first keys of the JSON paths the columns read: only these members are decoded.
    top_keys: Vec<String>,
    /// For each column: it is a text column and no other column reads its JSON path, so its
    /// string can be moved out of the decoded payload.
    sole_text_reader: Vec<bool>,
    /// CSV records mapped to the table's columns in order may not have more fields.
    max_fields: Option<usize>,
    /// Why text with a NUL character cannot be stored, where the database cannot hold it.
    nul_refused: Option<&'static str>,
    /// The significant digits a decimal may have beyond 64-bit integers, where limited.
    decimal_digits: Option<usize>,
    /// The payload path of the array whose elements are the rows (`rows:`).
    rows: Option<Vec<String>>,
    /// Elements must be objects: their keys name the columns (`rows:` without `columns`).
    objects_only: bool,
}

const NULL: Json = Json::Null;

impl Mapper {
    pub fn new(columns: Vec<MappedColumn>, format: PayloadFormat) -> Self {
        let mut top_keys: Vec<String> = Vec::new();
        for column in &columns {
            if let Source::PayloadPath(path) = &column.source
                && let Some(first) = path.first()
                && !top_keys.contains(first)
            {
                top_keys.push(first.clone());
            }
        }
        let path = |c: &MappedColumn| match &c.source {
            Source::PayloadPath(p) => Some(p.clone()),
            _ => None,
        };
        // Two paths read the same data when one leads into the other (names match as
        // lookups do: exactly, or ignoring case).
        let overlap = |a: &[String], b: &[String]| a.iter().zip(b).all(|(x, y)| same_name(x, y));
        let sole_text_reader = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let Some(mine) = path(c).filter(|_| c.kind == SqlKind::Text) else {
                    return false;
                };
                !columns.iter().enumerate().any(|(j, other)| {
                    j != i && path(other).is_some_and(|theirs| overlap(&mine, &theirs))
                })
            })
            .collect();
        Mapper {
            columns,
            format,
            top_keys,
            sole_text_reader,
            max_fields: None,
            nul_refused: None,
            decimal_digits: None,
            rows: None,
            objects_only: false,
        }
    }

    /// One row per element of the array at `path` in the payload (empty: the payload is the
    /// array). `objects_only` when the elements' keys name the columns.
    pub fn exploding(mut self, path: Vec<String>, objects_only: bool) -> Self {
        self.rows = Some(path);
        self.objects_only = objects_only;
        self
    }

    /// Whether the route explodes an array (`rows:`).
    pub fn explodes(&self) -> bool {
        self.rows.is_some()
    }

    /// Whether a column reads the message around the exploded array (`payload.x`): an
    /// element's dead letter then keeps that message, to map it again.
    pub fn reads_message(&self) -> bool {
        self.columns
            .iter()
            .any(|c| matches!(c.source, Source::PayloadPath(_)))
    }

    /// For databases that keep decimals only to `digits` significant digits (SQLite):
    /// longer ones are refused instead of rounded.
    pub fn keeping_decimal_digits(mut self, digits: usize) -> Self {
        self.decimal_digits = Some(digits);
        self
    }

    /// For databases whose text cannot hold NUL (PostgreSQL): such a value is refused with
    /// `why` instead of being cut short at the NUL by the driver.
    pub fn refusing_nul(mut self, why: &'static str) -> Self {
        self.nul_refused = Some(why);
        self
    }

    /// For CSV mapped to the table in column order: longer records are errors.
    pub fn with_max_fields(mut self, max: usize) -> Self {
        self.max_fields = Some(max);
        self
    }

    pub fn columns(&self) -> &[MappedColumn] {
        &self.columns
    }

    /// Whether each message starts with a CSV header line.
    pub fn reads_csv_header(&self) -> bool {
        matches!(&self.format, PayloadFormat::Csv(c) if c.header)
    }

    /// Every row a message carries, with the part it came from (a CSV line, an element), or
    /// why it has none.
    pub fn map(&self, message: &Message) -> Vec<(Option<Part>, Result<Row, MapError>)> {
        let mut out = Vec::new();
        self.map_into(message, &mut |line, row| out.push((line, row)));
        out
    }

    /// Like [`Mapper::map`], handing each row to `emit` as it is made.
    pub fn map_into(
        &self,
        message: &Message,
        emit: &mut dyn FnMut(Option<Part>, Result<Row, MapError>),
    ) {
        let mut progress = Progress::default();
        self.map_part(message, &mut progress, usize::MAX, emit);
    }

    /// Like [`Mapper::map_into`], for at most `max_rows` rows (and failures) from where
    /// `progress` stands: a long CSV message, or a long array, is mapped and written a part
    /// at a time.
    /// `progress` says when the message is done.
    pub fn map_part(
        &self,
        message: &Message,
        progress: &mut Progress,
        max_rows: usize,
        emit: &mut dyn FnMut(Option<Part>, Result<Row, MapError>),
    ) {
        match (&self.format, std::mem::take(progress)) {
            (_, Progress::Done) => *progress = Progress::Done,
            (PayloadFormat::Json, Progress::Start) if self.rows.is_some() => {
                let path = self.rows.as_deref().unwrap_or_default();
                match explode::explode(&message.payload, path) {
                    Ok(exploded) => {
                        *progress = Progress::Elements(Arc::new(exploded), 0);
                        self.map_part(message, progress, max_rows, emit);
                    }
                    Err(e) => {
                        emit(None, Err(e));
                        *progress = Progress::Done;
                    }
                }
            }
            (_, Progress::Elements(exploded, mut next)) => {
                let end = exploded.len().min(next.saturating_add(max_rows.max(1)));
                while next < end {
                    let row = self.element_row(message, &exploded, next);
                    emit(Some(Part::Element(Element::new(&exploded, next))), row);
                    next += 1;
                }
                // Done as soon as the last element is out, so that its batch acknowledges.
                if next < exploded.len() {
                    *progress = Progress::Elements(exploded, next);
                } else {
                    *progress = Progress::Done;
                }
            }
            (PayloadFormat::Json, _) => {
                emit(None, self.map_json(message));
                *progress = Progress::Done;
            }
            (PayloadFormat::Csv(format), Progress::Start) => {
                match self.start_csv(message, format) {
                    Ok(csv) => {
                        *progress = Progress::Csv(csv);
                        self.map_part(message, progress, max_rows, emit);
                    }
                    Err(e) => {
                        emit(None, Err(e));
                        *progress = Progress::Done;
                    }
                }
            }
            (PayloadFormat::Csv(format), Progress::Csv(mut csv)) => {
                for _ in 0..max_rows.max(1) {
                    let Some(record) = csv.cursor.next(&message.payload, format) else {
                        *progress = Progress::Done;
                        return;
                    };
                    let expected = *csv.expected.get_or_insert(record.fields.len());
                    let row = self.csv_row(message, format, &record, &csv.at, Some(expected));
                    emit(Some(Part::Line(record.line)), row);
                }
                *progress = Progress::Csv(csv);
            }
        }
    }

    fn map_json(&self, message: &Message) -> Result<Row, MapError> {
        // Decoded even when no column reads a key: a JSON route takes only JSON objects.
        let mut json = json::decode_members(&message.payload, &self.top_keys)?;
        self.columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let input = match &column.source {
                    Source::PayloadPath(path) if self.sole_text_reader[i] => {
                        // The column's text moves into the row instead of being copied.
                        if let Some(Json::String(text)) = json.get_mut(path) {
                            let text = std::mem::take(text);
                            return self
                                .checked(column, Value::Text(text), false)
                                .map_err(MapError::Convert);
                        }
                        json.get(path).map(Input::Json)
                    }
                    Source::PayloadPath(path) => json.get(path).map(Input::Json),
                    other => message_input(other, message, &message.payload),
                };
                self.convert_column(column, input)
                    .map_err(MapError::Convert)
            })
            .collect()
    }

    /// Reads a CSV message's header and finds each named field in it.
    fn start_csv(&self, message: &Message, format: &CsvFormat) -> Result<CsvProgress, MapError> {
        let mut cursor = delimited::Cursor::default();
        let header = cursor
            .start(&message.payload, format)
            .map_err(MapError::Decode)?;
        let names = format.fields.as_ref().or(header.as_ref());
        // Each named field's position in this message.
        let mut at: Vec<Option<usize>> = Vec::with_capacity(self.columns.len());
        for column in &self.columns {
            let index = match &column.source {
                Source::Field(Field::Index(i)) => Some(*i),
                Source::Field(Field::Name { name, required }) => {
                    let found = names.and_then(|n| position(n, name));
                    if found.is_none() && *required {
                        let known = names.map(|n| n.join(", ")).unwrap_or_default();
                        return Err(MapError::Decode(format!(
                            "the header has no field `{name}` (it has: {known})"
                        )));
                    }
                    found
                }
                _ => None,
            };
            at.push(index);
        }
        Ok(CsvProgress {
            cursor,
            at,
            expected: names.map(Vec::len),
        })
    }

    fn csv_row(
        &self,
        message: &Message,
        format: &CsvFormat,
        record: &Record,
        at: &[Option<usize>],
        expected: Option<usize>,
    ) -> Result<Row, MapError> {
        let n = record.line.number;
        let count = record.fields.len();
        if expected.is_some_and(|e| e != count) {
            return Err(MapError::Decode(format!(
                "line {n}: {count} fields, expected {}",
                expected.unwrap_or_default()
            )));
        }
        if let Some(max) = self.max_fields.filter(|m| count > *m) {
            return Err(MapError::Decode(format!(
                "line {n}: {count} fields, but the table has {max} columns"
            )));
        }
        let line = record.line.bytes(&message.payload);
        self.columns
            .iter()
            .zip(at)
            .map(|(column, index)| {
                let input = match (&column.source, index) {
                    (Source::Field(_), None) => None,
                    (Source::Field(Field::Index(i)), Some(_))
                        if *i >= count && self.max_fields.is_some() =>
                    {
                        None
                    }
                    (Source::Field(_), Some(i)) => {
                        let raw = record.fields.get(*i).ok_or_else(|| {
                            MapError::Decode(format!(
                                "line {n}: {} needs {} fields, the line has {count}",
                                column.source.describe(),
                                i + 1
                            ))
                        })?;
                        if format.is_null_field(line, *i, raw) {
                            Some(Input::Json(&NULL))
                        } else {
                            Some(Input::Text(std::str::from_utf8(raw).map_err(|e| {
                                MapError::Decode(format!(
                                    "line {n}: field {i} is not valid UTF-8 ({e})"
                                ))
                            })?))
                        }
                    }
                    (other, _) => message_input(other, message, line),
                };
                self.convert_column(column, input)
                    .map_err(|e| MapError::Convert(format!("line {n}: {e}")))
            })
            .collect()
    }
}

/// `rows:`: the row of one element of an exploded message.
impl Mapper {
    fn element_row(
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

/// The significant fractional-second digits of a timestamp or time value.
fn second_fraction_digits(value: &Value, kind: SqlKind) -> Option<i64> {
    use chrono::Timelike;
    let digits = |nanos: u32| {
        let text = format!("{:09}", nanos % 1_000_000_000);
        text.trim_end_matches('0').len() as i64
    };
    match (value, kind) {
        (Value::Timestamp(t), _) => Some(digits(t.nanosecond())),
        (Value::Text(text), SqlKind::Time) => Some(
            text.split_once('.')
                .map_or(0, |(_, f)| f.trim_end_matches('0').len() as i64),
        ),
        _ => None,
    }
}

impl Mapper {
    fn convert_column(
        &self,
        column: &MappedColumn,
        input: Option<Input<'_>>,
    ) -> Result<Option<Value>, String> {
        let Some(input) = input else {
            return Ok(None);
        };
        let explain = |e: String| {
            format!(
                "column {} (from {}): {e}",
                column.name,
                column.source.describe()
            )
        };
        let from_clock = matches!(input, Input::Timestamp(_));
        let value = convert(input, column.kind).map_err(explain)?;
        self.checked(column, value, from_clock)
    }

    /// What the database would round, cut or refuse in a converted value, refused here.
    fn checked(
        &self,
        column: &MappedColumn,
        value: Value,
        from_clock: bool,
    ) -> Result<Option<Value>, String> {
        let explain = |e: String| {
            format!(
                "column {} (from {}): {e}",
                column.name,
                column.source.describe()
            )
        };
        // The receive time is mqdb's own clock: the column's precision is fine for it.
        if let Some(digits) = column.scale.filter(|_| !from_clock)
            && let Some(fraction) = second_fraction_digits(&value, column.kind)
            && fraction > i64::from(digits)
        {
            return Err(explain(format!(
                "the value has {fraction} digits of a second, the column keeps {digits}: \
                 the database would round it"
            )));
        }
        let Value::Text(text) = &value else {
            return Ok(Some(value));
        };
        if let Some(why) = self.nul_refused.filter(|_| text.contains('\0')) {
            return Err(explain(format!(
                "the text has a NUL character (U+0000 at byte {}), which {why}",
                text.find('\0').unwrap_or_default()
            )));
        }
        if let Some(scale) = column.scale.filter(|_| column.kind == SqlKind::Decimal)
            && fraction_digits(text) > i64::from(scale)
        {
            return Err(explain(format!(
                "{text} has more digits after the point than the column keeps ({scale}): \
                 the database would round it"
            )));
        }
        if let Some(max) = self
            .decimal_digits
            .filter(|_| column.kind == SqlKind::Decimal)
            && !decimal_fits_digits(text, max)
        {
            return Err(explain(format!(
                "{text} has more than {max} significant digits, and this database keeps a \
                 decimal that is not a 64-bit integer only to {max} (as a double)"
            )));
        }
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CsvInput, EnvString};
    use crate::message::{AckHandle, Origin};
    use crate::topic::Filter;
    use chrono::Utc;
    use serde_json::json;
    use tokio::sync::mpsc;

    fn message(topic: &str, payload: &[u8]) -> Message {
        let (tx, _rx) = mpsc::channel(1);
        Message {
            topic: topic.into(),
            payload: payload.to_vec().into(),
            received_at: Utc::now(),
            broker: "b".into(),
            origin: Origin::Mqtt {
                qos: 1,
                retain: false,
            },
            headers: Default::default(),
            ack: AckHandle::new(0, tx),
        }
    }

    fn col(name: &str, kind: SqlKind, source: &str, ctx: &SourceContext) -> MappedColumn {
        MappedColumn {
            name: name.into(),
            kind,
            source: Source::parse(source, ctx).unwrap(),
            scale: None,
        }
    }

    fn one(mapper: &Mapper, m: &Message) -> Result<Row, MapError> {
        let mut rows = mapper.map(m);
        assert_eq!(rows.len(), 1);
        rows.remove(0).1
    }

    #[test]
    fn maps_topic_payload_and_meta() {
        let filter = Filter::parse("sensors/{site}/{device}").unwrap();
        let ctx = SourceContext {
            filter: Some(&filter),
            ..Default::default()
        };
        let mapper = Mapper::new(
            vec![
                col("site", SqlKind::Text, "topic.site", &ctx),
                col("device", SqlKind::Integer, "topic.2", &ctx),
                col("value", SqlKind::Float, "payload.reading.values.1", &ctx),
                col("missing", SqlKind::Text, "payload.nope", &ctx),
                col("qos", SqlKind::Integer, "meta.qos", &ctx),
            ],
            PayloadFormat::Json,
        );
        let row = one(
            &mapper,
            &message("sensors/north/17", br#"{"reading":{"values":[1.0, 2.5]}}"#),
        )
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
    fn text_read_by_two_columns_reaches_both() {
        let ctx = SourceContext::default();
        let mapper = Mapper::new(
            vec![
                col("a", SqlKind::Text, "payload.note", &ctx),
                col("b", SqlKind::Text, "payload.NOTE", &ctx),
                col("whole", SqlKind::Text, "payload.obj", &ctx),
                col("inner", SqlKind::Text, "payload.obj.x", &ctx),
                col("alone", SqlKind::Text, "payload.alone", &ctx),
                col("twice", SqlKind::Text, "payload.alone", &ctx),
            ],
            PayloadFormat::Json,
        );
        let payload = br#"{"note":"n","obj":{"x":"inside"},"alone":"y"}"#;
        for _ in 0..2 {
            let row = one(&mapper, &message("t", payload)).unwrap();
            assert_eq!(
                row,
                vec![
                    Some(Value::Text("n".into())),
                    Some(Value::Text("n".into())),
                    Some(Value::Text(r#"{"x":"inside"}"#.into())),
                    Some(Value::Text("inside".into())),
                    Some(Value::Text("y".into())),
                    Some(Value::Text("y".into())),
                ]
            );
        }
        // A column alone on its path takes the text out; the NUL rule still holds for it.
        let mapper = Mapper::new(
            vec![col("v", SqlKind::Text, "payload.v", &ctx)],
            PayloadFormat::Json,
        )
        .refusing_nul("PostgreSQL text cannot hold it");
        assert_eq!(
            one(&mapper, &message("t", br#"{"v":"long text"}"#)).unwrap(),
            vec![Some(Value::Text("long text".into()))]
        );
        assert!(one(&mapper, &message("t", br#"{"v":"a\u0000b"}"#)).is_err());
    }

    #[test]
    fn bad_payloads_are_decode_errors() {
        let ctx = SourceContext::default();
        let mapper = Mapper::new(
            vec![col("v", SqlKind::Integer, "payload.v", &ctx)],
            PayloadFormat::Json,
        );
        assert!(matches!(
            one(&mapper, &message("a", b"{not json")),
            Err(MapError::Decode(_))
        ));
        assert!(matches!(
            one(&mapper, &message("a", &[0xff, 0x00])),
            Err(MapError::Decode(_))
        ));
        let err = one(&mapper, &message("a", br#"{"v":"x"}"#)).unwrap_err();
        assert!(
            matches!(err, MapError::Convert(ref m) if m.contains("column v")),
            "{err:?}"
        );
    }

    #[test]
    fn sources_parse_or_explain() {
        let filter = Filter::parse("a/{x}").unwrap();
        let mqtt = SourceContext {
            filter: Some(&filter),
            ..Default::default()
        };
        let amqp = SourceContext {
            amqp: true,
            ..Default::default()
        };
        assert_eq!(Source::parse("topic.x", &mqtt), Ok(Source::TopicLevel(1)));
        assert!(
            Source::parse("topic.y", &mqtt)
                .unwrap_err()
                .contains("no `{y}`")
        );
        assert!(Source::parse("payload..a", &mqtt).is_err());
        assert!(Source::parse("meta.nope", &mqtt).is_err());
        assert!(Source::parse("meta.routing_key", &mqtt).is_err());
        assert!(Source::parse("meta.qos", &amqp).is_err());
        assert!(Source::parse("topic.0", &amqp).is_err());
        assert_eq!(
            Source::parse("meta.redelivered", &amqp),
            Ok(Source::Meta(Meta::Redelivered))
        );
        assert_eq!(
            Source::parse("header.x-site", &amqp),
            Ok(Source::Header("x-site".into()))
        );
    }

    fn csv(input: CsvInput) -> CsvFormat {
        input.format()
    }

    #[test]
    fn csv_fields_by_index_name_and_header() {
        let declared = csv(CsvInput {
            fields: Some(vec![EnvString("id".into()), EnvString("qty".into())]),
            ..Default::default()
        });
        let ctx = SourceContext {
            csv: Some(&declared),
            ..Default::default()
        };
        assert_eq!(
            Source::parse("payload.QTY", &ctx),
            Ok(Source::Field(Field::Index(1)))
        );
        assert!(
            Source::parse("payload.nope", &ctx)
                .unwrap_err()
                .contains("csv.fields")
        );
        assert!(Source::parse("payload.a.b", &ctx).is_err());
        let bare = csv(CsvInput::default());
        let ctx = SourceContext {
            csv: Some(&bare),
            ..Default::default()
        };
        assert!(Source::parse("payload.id", &ctx).is_err());

        let header = csv(CsvInput {
            header: true,
            ..Default::default()
        });
        let ctx = SourceContext {
            csv: Some(&header),
            ..Default::default()
        };
        let mapper = Mapper::new(
            vec![
                col("qty", SqlKind::Integer, "payload.Qty", &ctx),
                col("id", SqlKind::Integer, "payload.0", &ctx),
                col("line", SqlKind::Text, "payload", &ctx),
            ],
            PayloadFormat::Csv(header.clone()),
        );
        let rows = mapper.map(&message("t", b"id,qty\n1,5\n2,x\n3\n4,\n"));
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[0].1,
            Ok(vec![
                Some(Value::Int(5)),
                Some(Value::Int(1)),
                Some(Value::Text("1,5".into()))
            ])
        );
        assert!(
            matches!(&rows[1].1, Err(MapError::Convert(m)) if m.starts_with("line 3: column qty"))
        );
        assert_eq!(
            rows[2].1,
            Err(MapError::Decode("line 4: 1 fields, expected 2".into()))
        );
        assert!(matches!(&rows[2].0, Some(Part::Line(l)) if l.number == 4));
        assert_eq!(rows[3].1.as_ref().unwrap()[0], Some(Value::Null));

        let missing = mapper.map(&message("t", b"id,amount\n1,5\n"));
        assert_eq!(missing.len(), 1);
        assert!(missing[0].0.is_none());
        assert!(matches!(&missing[0].1, Err(MapError::Decode(m)) if m.contains("no field `Qty`")));
    }

    #[test]
    fn csv_utf8_errors_stay_on_their_line() {
        let format = csv(CsvInput::default());
        let ctx = SourceContext {
            csv: Some(&format),
            ..Default::default()
        };
        let mapper = Mapper::new(
            vec![col("t", SqlKind::Text, "payload.1", &ctx)],
            PayloadFormat::Csv(format.clone()),
        );
        let rows = mapper.map(&message("t", b"1,ok\n2,\xff\n3,fine\n"));
        assert_eq!(rows.len(), 3);
        assert!(rows[0].1.is_ok() && rows[2].1.is_ok());
        assert!(matches!(&rows[1].1, Err(MapError::Decode(m)) if m.starts_with("line 2: field 1")));
    }

    #[test]
    fn csv_in_column_order_leaves_missing_columns_to_defaults() {
        let format = csv(CsvInput::default());
        let columns = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| MappedColumn {
                name: n.to_string(),
                kind: SqlKind::Text,
                source: Source::Field(Field::Index(i)),
                scale: None,
            })
            .collect();
        let mapper = Mapper::new(columns, PayloadFormat::Csv(format)).with_max_fields(3);
        let rows = mapper.map(&message("t", b"x,y\n"));
        assert_eq!(
            rows[0].1,
            Ok(vec![
                Some(Value::Text("x".into())),
                Some(Value::Text("y".into())),
                None
            ])
        );
        let long = mapper.map(&message("t", b"1,2,3,4\n"));
        assert!(
            matches!(&long[0].1, Err(MapError::Decode(m)) if m.contains("table has 3 columns"))
        );
    }

    #[test]
    fn a_repeated_user_property_maps_its_first_value_an_amqp_array_stays_whole() {
        let ctx = SourceContext::default();
        let mapper = Mapper::new(
            vec![col("site", SqlKind::Text, "header.SITE", &ctx)],
            PayloadFormat::Json,
        );
        let mut m = message("a", b"{}");
        m.headers = json!({"site": ["north", "south"]})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            one(&mapper, &m).unwrap(),
            vec![Some(Value::Text("north".into()))]
        );
        m.origin = Origin::Amqp {
            queue: "q".into(),
            exchange: "".into(),
            redelivered: false,
        };
        assert_eq!(
            one(&mapper, &m).unwrap(),
            vec![Some(Value::Text("[\"north\",\"south\"]".into()))]
        );
    }

    #[test]
    fn names_match_ignoring_case_in_every_script() {
        assert!(same_name("übertemp", "ÜberTemp"));
        assert!(same_name("Qty", "qTY"));
        assert!(!same_name("ü", "u"));
        assert_eq!(position(&["ÜberTemp".to_string()], "übertemp"), Some(0));
    }

    #[test]
    fn nul_is_refused_only_where_the_database_cannot_hold_it() {
        let ctx = SourceContext::default();
        let columns = vec![col("t", SqlKind::Text, "payload.t", &ctx)];
        let m = message("a", br#"{"t": "a\u0000b"}"#);
        let keeps = Mapper::new(columns.clone(), PayloadFormat::Json);
        assert_eq!(
            one(&keeps, &m).unwrap(),
            vec![Some(Value::Text("a\0b".into()))]
        );
        let refuses = keeps.refusing_nul("PostgreSQL text cannot hold");
        let err = one(&refuses, &m).unwrap_err();
        assert!(
            matches!(&err, MapError::Convert(e) if e.contains("NUL character") && e.contains("PostgreSQL")),
            "{err:?}"
        );
    }

    #[test]
    fn amqp_meta_and_headers() {
        let ctx = SourceContext {
            amqp: true,
            ..Default::default()
        };
        let mapper = Mapper::new(
            vec![
                col("rk", SqlKind::Text, "meta.routing_key", &ctx),
                col("ex", SqlKind::Text, "meta.exchange", &ctx),
                col("re", SqlKind::Bool, "meta.redelivered", &ctx),
                col("site", SqlKind::Text, "header.X-Site", &ctx),
                col("n", SqlKind::Integer, "header.n", &ctx),
                col("none", SqlKind::Integer, "header.none", &ctx),
            ],
            PayloadFormat::Json,
        );
        let mut m = message("plant.north", b"{}");
        m.origin = Origin::Amqp {
            queue: "q".into(),
            exchange: "ex".into(),
            redelivered: true,
        };
        m.headers = json!({"x-site": "north", "n": 7})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            one(&mapper, &m).unwrap(),
            vec![
                Some(Value::Text("plant.north".into())),
                Some(Value::Text("ex".into())),
                Some(Value::Bool(true)),
                Some(Value::Text("north".into())),
                Some(Value::Int(7)),
                None,
            ]
        );
        assert_eq!(m.source(), "q");
        assert_eq!(m.metadata()["routing_key"], "plant.north");
    }
}
