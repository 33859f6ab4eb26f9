//! Delimited text: reading inbound payloads record by record (each record is a row), and one
//! line per row for outbound routes.

use std::sync::Mutex;

use csv_core::{ReadRecordResult, Reader as CoreReader, ReaderBuilder as CoreBuilder};

use crate::cell::Cell;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How inbound payloads are split into records, resolved from the configuration.
#[derive(Debug)]
pub struct CsvFormat {
    pub delimiter: u8,
    pub quote: u8,
    pub escape: Option<u8>,
    pub header: bool,
    /// Names for the fields by position.
    pub fields: Option<Vec<String>>,
    /// The text that stands for NULL.
    pub null: Option<Vec<u8>>,
    /// A reader built once and reset for each message: building one costs more than
    /// reading a short message. (csv-core's `Clone` of a reader loses its tables.)
    reader: Mutex<Box<CoreReader>>,
}

impl Clone for CsvFormat {
    fn clone(&self) -> Self {
        CsvFormat::new(
            self.delimiter,
            self.quote,
            self.escape,
            self.header,
            self.fields.clone(),
            self.null.clone(),
        )
    }
}

impl PartialEq for CsvFormat {
    fn eq(&self, other: &Self) -> bool {
        (
            self.delimiter,
            self.quote,
            self.escape,
            self.header,
            &self.fields,
            &self.null,
        ) == (
            other.delimiter,
            other.quote,
            other.escape,
            other.header,
            &other.fields,
            &other.null,
        )
    }
}

impl CsvFormat {
    pub fn new(
        delimiter: u8,
        quote: u8,
        escape: Option<u8>,
        header: bool,
        fields: Option<Vec<String>>,
        null: Option<Vec<u8>>,
    ) -> CsvFormat {
        let reader = CoreBuilder::new()
            .delimiter(delimiter)
            .quote(quote)
            .escape(escape)
            .terminator(csv_core::Terminator::CRLF)
            .build();
        CsvFormat {
            delimiter,
            quote,
            escape,
            header,
            fields,
            null,
            reader: Mutex::new(Box::new(reader)),
        }
    }

    /// True when `field` is the NULL marker.
    pub fn is_null(&self, field: &[u8]) -> bool {
        self.null.as_deref() == Some(field)
    }

    /// True when field `index` of the record `line` (its raw bytes), read as `field`, is
    /// NULL: the marker, unquoted. A quoted field never is, so that `""` stays the empty
    /// string where an empty field is NULL (as PostgreSQL's `COPY` reads CSV).
    pub fn is_null_field(&self, line: &[u8], index: usize, field: &[u8]) -> bool {
        self.is_null(field) && !self.quoted(line, index)
    }

    /// Whether field `index` of the raw record `line` begins with the quote character.
    fn quoted(&self, line: &[u8], index: usize) -> bool {
        let (mut field, mut at_start, mut in_quotes) = (0, true, false);
        let mut i = 0;
        while i < line.len() && field <= index {
            let b = line[i];
            if in_quotes {
                let escaped = Some(b) == self.escape
                    || (b == self.quote && line.get(i + 1) == Some(&self.quote));
                if escaped {
                    i += 1;
                } else if b == self.quote {
                    in_quotes = false;
                }
            } else if b == self.delimiter {
                field += 1;
                at_start = true;
                i += 1;
                continue;
            } else if at_start && b == self.quote {
                if field == index {
                    return true;
                }
                in_quotes = true;
            }
            at_start = false;
            i += 1;
        }
        false
    }
}

/// Where a record sits in its message: its first line (1-based) and its bytes, without the
/// line end. Spans index the original payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub number: u64,
    pub span: (usize, usize),
    /// The header line of the message, when the format has one.
    pub header: Option<(usize, usize)>,
}

impl Line {
    pub fn bytes<'a>(&self, payload: &'a [u8]) -> &'a [u8] {
        &payload[self.span.0..self.span.1]
    }
}

/// One record: its place and its fields (raw bytes, unquoted).
#[derive(Debug)]
pub struct Record {
    pub line: Line,
    pub fields: Fields,
}

/// The unquoted fields of one record.
#[derive(Debug, Default)]
pub struct Fields {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Fields {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.data[start..end])
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// A message split into records.
#[derive(Debug, Default)]
pub struct Records {
    /// The header's field names, when the format has a header and the message one.
    pub header: Option<Vec<String>>,
    pub records: Vec<Record>,
}

/// Splits a whole payload into records (see [`Cursor`]).
pub fn read(payload: &[u8], format: &CsvFormat) -> Result<Records, String> {
    let mut cursor = Cursor::default();
    let header = cursor.start(payload, format)?;
    let mut records = Vec::new();
    while let Some(record) = cursor.next(payload, format) {
        records.push(record);
    }
    Ok(Records { header, records })
}

/// Where reading a payload's records stands. It borrows nothing, so a long message can be
/// read a part at a time, each part written before the next is read. Quoted fields may
/// hold delimiters, quotes and line ends; CRLF and LF both end a record; a leading UTF-8
/// BOM and blank lines are skipped. Only an unreadable header fails the whole message.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// Bytes skipped at the start (a BOM).
    skip: usize,
    /// The next record's offset in the body.
    pos: usize,
    /// Line numbers are counted here, from the line ends before each record.
    counted: (usize, u64),
    header: Option<(usize, usize)>,
}

impl Cursor {
    /// Reads the BOM and, when the format has one, the header line: its field names.
    pub fn start(
        &mut self,
        payload: &[u8],
        format: &CsvFormat,
    ) -> Result<Option<Vec<String>>, String> {
        *self = Cursor {
            skip: if payload.starts_with(BOM) {
                BOM.len()
            } else {
                0
            },
            pos: 0,
            counted: (0, 1),
            header: None,
        };
        if !format.header {
            return Ok(None);
        }
        let Some(first) = self.next(payload, format) else {
            return Ok(None);
        };
        self.header = Some(first.line.span);
        first
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                std::str::from_utf8(f)
                    .map(|s| s.trim().to_string())
                    .map_err(|_| format!("the header's field {i} is not valid UTF-8"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The next record, or `None` at the end of the payload.
    pub fn next(&mut self, payload: &[u8], format: &CsvFormat) -> Option<Record> {
        let body = &payload[self.skip..];
        let mut reader = format
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Each call starts at a record boundary, where a fresh reader is what it expects.
        reader.reset();
        let (fields, begin, end) = next_record(&mut reader, body, &mut self.pos)?;
        self.counted.1 += body[self.counted.0..begin]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        self.counted.0 = begin;
        let line = Line {
            number: self.counted.1,
            span: (begin + self.skip, end + self.skip),
            header: self.header,
        };
        Some(Record { line, fields })
    }
}

/// Reads the record at `pos`: its fields and where its bytes begin and end (without line
/// ends). `None` at the end of the payload.
fn next_record(
    reader: &mut CoreReader,
    body: &[u8],
    pos: &mut usize,
) -> Option<(Fields, usize, usize)> {
    let mut fields = Fields {
        data: vec![0; 64.min(body.len().saturating_sub(*pos) + 1)],
        ends: vec![0; 8],
    };
    let (mut written, mut ended) = (0, 0);
    // Blank lines before a record belong to no record.
    let mut begin = *pos;
    while begin < body.len() && matches!(body[begin], b'\n' | b'\r') {
        begin += 1;
    }
    loop {
        let (result, nin, nout, nend) = reader.read_record(
            &body[*pos..],
            &mut fields.data[written..],
            &mut fields.ends[ended..],
        );
        *pos += nin;
        written += nout;
        ended += nend;
        match result {
            // An empty input tells the reader the payload has ended.
            ReadRecordResult::InputEmpty => {}
            ReadRecordResult::OutputFull => {
                let grown = fields.data.len() * 2;
                fields.data.resize(grown, 0);
            }
            ReadRecordResult::OutputEndsFull => {
                let grown = fields.ends.len() * 2;
                fields.ends.resize(grown, 0);
            }
            ReadRecordResult::Record => {
                fields.data.truncate(written);
                fields.ends.truncate(ended);
                let end = trim_line_end(body, begin, *pos);
                return Some((fields, begin.min(end), end));
            }
            ReadRecordResult::End => return None,
        }
    }
}

fn trim_line_end(body: &[u8], begin: usize, mut end: usize) -> usize {
    end = end.min(body.len());
    while end > begin && matches!(body[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    end
}

/// One CSV line (with its line end): NULL is an empty field, the empty string `""` (a
/// quoted field is never NULL when read back), other values their text, quoted when they
/// hold the delimiter, the quote or a line end.
pub fn csv_row(row: &[Cell], delimiter: char, quote: char) -> Vec<u8> {
    let delimiter = ascii(delimiter, b',');
    let quote = ascii(quote, b'"');
    let mut line = Vec::with_capacity(16 * row.len() + 1);
    for (i, cell) in row.iter().enumerate() {
        if i > 0 {
            line.push(delimiter);
        }
        if let Some(text) = cell.text() {
            push_field(&mut line, text.as_bytes(), delimiter, quote);
        }
    }
    line.push(b'\n');
    line
}

fn push_field(line: &mut Vec<u8>, text: &[u8], delimiter: u8, quote: u8) {
    let quoted = text.is_empty()
        || text
            .iter()
            .any(|&b| b == delimiter || b == quote || b == b'\n' || b == b'\r');
    if !quoted {
        line.extend_from_slice(text);
        return;
    }
    line.push(quote);
    for &b in text {
        if b == quote {
            line.push(quote);
        }
        line.push(b);
    }
    line.push(quote);
}

/// `c` as a byte, or `fallback` when it is not ASCII (validation rejects that earlier).
pub fn ascii(c: char, fallback: u8) -> u8 {
    u8::try_from(c)
        .ok()
        .filter(u8::is_ascii)
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CsvInput;
    use proptest::prelude::*;

    fn format() -> CsvFormat {
        CsvInput::default().format()
    }

    fn fields(r: &Record) -> Vec<String> {
        r.fields
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    #[test]
    fn quoted_delimiters_quotes_and_newlines() {
        let payload = b"1,\"a,b\",\"say \"\"hi\"\"\"\r\n2,\"two\nlines\",x\n3,,\n";
        let out = read(payload, &format()).unwrap();
        let rows: Vec<Vec<String>> = out.records.iter().map(fields).collect();
        assert_eq!(
            rows,
            vec![
                vec!["1", "a,b", "say \"hi\""],
                vec!["2", "two\nlines", "x"],
                vec!["3", "", ""],
            ]
        );
        let numbers: Vec<u64> = out.records.iter().map(|r| r.line.number).collect();
        assert_eq!(numbers, vec![1, 2, 4]);
        assert_eq!(out.records[1].line.bytes(payload), b"2,\"two\nlines\",x");
        assert_eq!(
            out.records[0].line.bytes(payload),
            b"1,\"a,b\",\"say \"\"hi\"\"\""
        );
    }

    #[test]
    fn bom_header_and_blank_lines() {
        let payload = b"\xEF\xBB\xBFid;Name\r\n\r\n7;x\r\n\r\n8;y";
        let f = CsvFormat::new(b';', b'"', None, true, None, Some(Vec::new()));
        let out = read(payload, &f).unwrap();
        assert_eq!(out.header, Some(vec!["id".to_string(), "Name".to_string()]));
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records[0].line.number, 3);
        assert_eq!(out.records[1].line.bytes(payload), b"8;y");
        let header = out.records[1].line.header.unwrap();
        assert_eq!(&payload[header.0..header.1], b"id;Name");
    }

    #[test]
    fn escape_character_and_custom_quote() {
        let f = CsvFormat::new(b'\t', b'\'', Some(b'\\'), false, None, Some(Vec::new()));
        let out = read(b"'it\\'s'\tb\n", &f).unwrap();
        assert_eq!(fields(&out.records[0]), vec!["it's", "b"]);
    }

    #[test]
    fn a_quoted_field_is_never_null() {
        let f = format();
        let line = br#"1,"",,"a,""b",x"#;
        let fields = [&b"1"[..], b"", b"", b"a,\"b", b"x"];
        let nulls: Vec<bool> = fields
            .iter()
            .enumerate()
            .map(|(i, field)| f.is_null_field(line, i, field))
            .collect();
        assert_eq!(nulls, [false, false, true, false, false]);
        let marked = CsvFormat::new(
            b';',
            b'\'',
            Some(b'\\'),
            false,
            None,
            Some(b"NULL".to_vec()),
        );
        let line = br"'it\'s;NULL';NULL;'NULL'";
        assert!(!marked.is_null_field(line, 0, b"it's;NULL"));
        assert!(marked.is_null_field(line, 1, b"NULL"));
        assert!(!marked.is_null_field(line, 2, b"NULL"));
    }

    #[test]
    fn null_marker() {
        let f = format();
        assert!(f.is_null(b""));
        let none = CsvFormat::new(b',', b'"', None, false, None, None);
        assert!(!none.is_null(b""));
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let row = vec![Cell::Int(1), Cell::Text("a,\"b\"\nc".into()), Cell::Null];
        let line = String::from_utf8(csv_row(&row, ',', '"')).unwrap();
        assert_eq!(line, "1,\"a,\"\"b\"\"\nc\",\n");
        let out = read(line.as_bytes(), &format()).unwrap();
        assert_eq!(fields(&out.records[0]), vec!["1", "a,\"b\"\nc", ""]);
    }

    #[test]
    fn the_empty_string_and_null_stay_apart() {
        let row = vec![
            Cell::Text(String::new()),
            Cell::Null,
            Cell::Text("x".into()),
        ];
        let line = csv_row(&row, ',', '"');
        assert_eq!(line, b"\"\",,x\n");
        let f = format();
        let out = read(&line, &f).unwrap();
        let record = &out.records[0];
        let raw = record.line.bytes(&line);
        let nulls: Vec<bool> = (0..3)
            .map(|i| f.is_null_field(raw, i, record.fields.get(i).unwrap()))
            .collect();
        assert_eq!(nulls, [false, true, false]);
    }

    fn field() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9 ,;\"\\n\\r\\t'é]{0,12}").unwrap()
    }

    proptest! {
        /// Whatever the fields hold, writing them as CSV and reading them back gives the
        /// same fields, and each record's span is exactly its written line.
        #[test]
        fn written_records_read_back(
            rows in proptest::collection::vec(proptest::collection::vec(field(), 1..5), 1..6),
            delimiter in prop_oneof![Just(b','), Just(b';'), Just(b'\t'), Just(b'|')],
            crlf in any::<bool>(),
        ) {
            let mut payload = Vec::new();
            let mut lines = Vec::new();
            for row in &rows {
                let mut w = ::csv::WriterBuilder::new()
                    .delimiter(delimiter)
                    .quote_style(::csv::QuoteStyle::Necessary)
                    .terminator(if crlf { ::csv::Terminator::CRLF } else { ::csv::Terminator::Any(b'\n') })
                    .from_writer(Vec::new());
                // A lone empty field is written as an empty line, which readers skip: quote it.
                if row.len() == 1 && row[0].is_empty() {
                    w = ::csv::WriterBuilder::new()
                        .delimiter(delimiter)
                        .quote_style(::csv::QuoteStyle::Always)
                        .terminator(if crlf { ::csv::Terminator::CRLF } else { ::csv::Terminator::Any(b'\n') })
                        .from_writer(Vec::new());
                }
                w.write_record(row).unwrap();
                let bytes = w.into_inner().unwrap();
                let end = if crlf { bytes.len() - 2 } else { bytes.len() - 1 };
                lines.push(bytes[..end].to_vec());
                payload.extend_from_slice(&bytes);
            }
            let f = CsvFormat::new(delimiter, b'"', None, false, None, Some(Vec::new()));
            let out = read(&payload, &f).unwrap();
            prop_assert_eq!(out.records.len(), rows.len());
            for ((record, row), line) in out.records.iter().zip(&rows).zip(&lines) {
                prop_assert_eq!(&fields(record), row);
                prop_assert_eq!(record.line.bytes(&payload), line.as_slice());
            }
        }

        /// A float, a timestamp or a JSON document has the same text in a CSV field as in
        /// a JSON payload (where JSON has no number for it, the JSON string holds that text).
        #[test]
        fn csv_fields_have_the_json_text(
            bits in any::<u64>(),
            secs in 0i64..253_000_000_000,
            nanos in 0u32..1_000_000_000,
            key in "[a-z]{1,5}",
            number in any::<i64>(),
        ) {
            use crate::codec::json_row;
            let moment = chrono::DateTime::from_timestamp(secs, nanos).unwrap().naive_utc();
            let row = vec![
                Cell::Float(f64::from_bits(bits)),
                Cell::Timestamp(moment),
                Cell::LocalTimestamp(moment),
                Cell::Json(format!("{{\"{key}\": {number}}}")),
            ];
            let line = csv_row(&row, ',', '"');
            let out = read(&line, &format()).unwrap();
            let csv_fields = fields(&out.records[0]);
            let columns: Vec<String> = (0..row.len()).map(|i| format!("c{i}")).collect();
            let json: serde_json::Value = serde_json::from_slice(&json_row(&columns, &row)).unwrap();
            for (i, field) in csv_fields.iter().enumerate() {
                match &json[&columns[i]] {
                    serde_json::Value::String(s) => prop_assert_eq!(field, s),
                    // A document is nested in JSON and keeps its stored text in CSV.
                    serde_json::Value::Object(o) => {
                        let parsed: serde_json::Value = serde_json::from_str(field).unwrap();
                        prop_assert_eq!(&parsed, &serde_json::Value::Object(o.clone()));
                    }
                    other => prop_assert_eq!(field, &other.to_string()),
                }
            }
        }

        /// Arbitrary bytes never panic the reader, and spans stay inside the payload.
        #[test]
        fn any_bytes_are_read_without_panic(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(out) = read(&payload, &format()) {
                for r in &out.records {
                    prop_assert!(r.line.span.0 <= r.line.span.1 && r.line.span.1 <= payload.len());
                    prop_assert!(r.line.number >= 1);
                }
            }
        }
    }
}
