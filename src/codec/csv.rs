//! Delimited text: reading inbound payloads record by record (each record is a row), and one
//! line per row for outbound routes.

use ::csv::{ByteRecord, ReaderBuilder, Terminator, WriterBuilder};

use crate::config::{CsvInput, CsvOptions};
use crate::db::poll::Cell;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How inbound payloads are split into records, resolved from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvFormat {
    pub delimiter: u8,
    pub quote: u8,
    pub escape: Option<u8>,
    pub header: bool,
    /// Names for the fields by position.
    pub fields: Option<Vec<String>>,
    /// The text that stands for NULL.
    pub null: Option<Vec<u8>>,
}

impl CsvFormat {
    /// The configuration was validated: the characters are ASCII.
    pub fn from_config(input: &CsvInput) -> CsvFormat {
        CsvFormat {
            delimiter: ascii(input.delimiter, b','),
            quote: ascii(input.quote, b'"'),
            escape: input.escape.map(|c| ascii(c, b'\\')),
            header: input.header,
            fields: input
                .fields
                .as_ref()
                .map(|f| f.iter().map(|n| n.to_string()).collect()),
            null: input.null.as_ref().map(|n| n.as_bytes().to_vec()),
        }
    }

    /// True when `field` is the NULL marker.
    pub fn is_null(&self, field: &[u8]) -> bool {
        self.null.as_deref() == Some(field)
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
    pub fields: ByteRecord,
}

/// A message split into records.
#[derive(Debug, Default)]
pub struct Records {
    /// The header's field names, when the format has a header and the message one.
    pub header: Option<Vec<String>>,
    pub records: Vec<Record>,
}

/// Splits a payload into records. Quoted fields may hold delimiters, quotes and line ends;
/// CRLF and LF both end a record; a leading UTF-8 BOM and blank lines are skipped. Only an
/// unreadable header fails the whole message.
pub fn read(payload: &[u8], format: &CsvFormat) -> Result<Records, String> {
    let skip = if payload.starts_with(BOM) {
        BOM.len()
    } else {
        0
    };
    let body = &payload[skip..];
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(format.delimiter)
        .quote(format.quote)
        .escape(format.escape)
        .terminator(Terminator::CRLF)
        .buffer_capacity(body.len().clamp(64, 64 * 1024))
        .from_reader(body);
    let mut out = Records::default();
    let mut header_span = None;
    let mut record = ByteRecord::new();
    // Line numbers are counted here: the reader's own count lags after CRLF and quoted
    // line ends.
    let mut counted = (0usize, 1u64);
    loop {
        let start = reader.position().byte() as usize;
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            // Reading from a slice into byte records cannot fail.
            Err(e) => return Err(format!("unreadable delimited text: {e}")),
        }
        // The reader's position may still sit on the previous record's line end.
        let mut begin = record.position().map_or(start, |p| p.byte() as usize);
        while begin < body.len() && matches!(body[begin], b'\n' | b'\r') {
            begin += 1;
        }
        let end = trim_line_end(body, begin, reader.position().byte() as usize);
        counted.1 += body[counted.0..begin]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        counted.0 = begin;
        let line = Line {
            number: counted.1,
            span: (begin + skip, end + skip),
            header: header_span,
        };
        if format.header && header_span.is_none() {
            header_span = Some(line.span);
            let names = record
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    std::str::from_utf8(f)
                        .map(|s| s.trim().to_string())
                        .map_err(|_| format!("the header's field {i} is not valid UTF-8"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.header = Some(names);
            continue;
        }
        out.records.push(Record {
            line,
            fields: std::mem::take(&mut record),
        });
    }
    Ok(out)
}

fn trim_line_end(body: &[u8], begin: usize, mut end: usize) -> usize {
    end = end.min(body.len());
    while end > begin && matches!(body[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    end
}

/// One CSV line (with its line end): NULL is an empty field, other values their text.
pub fn csv_row(row: &[Cell], options: &CsvOptions) -> Vec<u8> {
    let mut writer = WriterBuilder::new()
        .delimiter(ascii(options.delimiter, b','))
        .quote(ascii(options.quote, b'"'))
        .terminator(Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let fields: Vec<String> = row.iter().map(|c| c.text().unwrap_or_default()).collect();
    // Writing to a Vec cannot fail.
    let _ = writer.write_record(&fields);
    writer.into_inner().unwrap_or_default()
}

fn ascii(c: char, fallback: u8) -> u8 {
    u8::try_from(c)
        .ok()
        .filter(u8::is_ascii)
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn format() -> CsvFormat {
        CsvFormat::from_config(&CsvInput::default())
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
        let f = CsvFormat {
            delimiter: b';',
            header: true,
            ..format()
        };
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
        let f = CsvFormat {
            delimiter: b'\t',
            quote: b'\'',
            escape: Some(b'\\'),
            ..format()
        };
        let out = read(b"'it\\'s'\tb\n", &f).unwrap();
        assert_eq!(fields(&out.records[0]), vec!["it's", "b"]);
    }

    #[test]
    fn null_marker() {
        let f = format();
        assert!(f.is_null(b""));
        let none = CsvFormat { null: None, ..f };
        assert!(!none.is_null(b""));
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let row = vec![Cell::Int(1), Cell::Text("a,\"b\"\nc".into()), Cell::Null];
        let line = String::from_utf8(csv_row(&row, &CsvOptions::default())).unwrap();
        assert_eq!(line, "1,\"a,\"\"b\"\"\nc\",\n");
        let out = read(line.as_bytes(), &format()).unwrap();
        assert_eq!(fields(&out.records[0]), vec!["1", "a,\"b\"\nc", ""]);
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
                let mut w = WriterBuilder::new()
                    .delimiter(delimiter)
                    .quote_style(::csv::QuoteStyle::Necessary)
                    .terminator(if crlf { Terminator::CRLF } else { Terminator::Any(b'\n') })
                    .from_writer(Vec::new());
                // A lone empty field is written as an empty line, which readers skip: quote it.
                if row.len() == 1 && row[0].is_empty() {
                    w = WriterBuilder::new()
                        .delimiter(delimiter)
                        .quote_style(::csv::QuoteStyle::Always)
                        .terminator(if crlf { Terminator::CRLF } else { Terminator::Any(b'\n') })
                        .from_writer(Vec::new());
                }
                w.write_record(row).unwrap();
                let bytes = w.into_inner().unwrap();
                let end = if crlf { bytes.len() - 2 } else { bytes.len() - 1 };
                lines.push(bytes[..end].to_vec());
                payload.extend_from_slice(&bytes);
            }
            let f = CsvFormat { delimiter, ..format() };
            let out = read(&payload, &f).unwrap();
            prop_assert_eq!(out.records.len(), rows.len());
            for ((record, row), line) in out.records.iter().zip(&rows).zip(&lines) {
                prop_assert_eq!(&fields(record), row);
                prop_assert_eq!(record.line.bytes(&payload), line.as_slice());
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
