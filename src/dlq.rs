//! Dead letters: what could not be delivered, with the reason, and how operators see them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value as Json, json};

/// The dead-letter fields a mirror's topic or routing-key template may use.
pub const MIRROR_FIELDS: [&str; 3] = ["route", "direction", "error_kind"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A dead letter about to be stored.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub route: String,
    pub direction: Direction,
    pub source: String,
    pub payload: Vec<u8>,
    pub headers: Json,
    pub error_kind: String,
    pub error: String,
    pub sqlstate: Option<String>,
}

/// A stored dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub route: String,
    pub direction: String,
    pub source: String,
    pub payload: Vec<u8>,
    pub headers: Json,
    pub error_kind: String,
    pub error: String,
    pub sqlstate: Option<String>,
    pub attempts: i64,
    pub first_failed_at: String,
    pub last_failed_at: String,
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl DeadLetter {
    /// The `dlq list --json` object: the payload as text when it is UTF-8, else base64.
    pub fn to_json(&self) -> Json {
        let mut object = json!({
            "id": self.id,
            "route": self.route,
            "direction": self.direction,
            "source": self.source,
            "error": self.error,
            "error_kind": self.error_kind,
            "sqlstate": self.sqlstate,
            "attempts": self.attempts,
            "first_failed_at": self.first_failed_at,
            "last_failed_at": self.last_failed_at,
            "headers": self.headers,
        });
        match std::str::from_utf8(&self.payload) {
            Ok(text) => object["payload"] = json!(text),
            Err(_) => object["payload_base64"] = json!(base64(&self.payload)),
        }
        object
    }

    /// One line of the `dlq list` table.
    pub fn table_row(&self, now: DateTime<Utc>) -> [String; 7] {
        let age = DateTime::parse_from_rfc3339(&self.first_failed_at)
            .map(|t| human_age(now.signed_duration_since(t.with_timezone(&Utc))))
            .unwrap_or_else(|_| "?".into());
        [
            self.id.to_string(),
            printable(&self.route, false),
            age,
            self.attempts.to_string(),
            printable(&self.error_kind, false),
            printable(&shorten(&self.error, 60), false),
            printable(&shorten(&payload_preview(&self.payload), 40), false),
        ]
    }

    /// Everything stored, for `dlq show`.
    pub fn details(&self) -> String {
        let mut out = String::new();
        let mut line =
            |k: &str, v: &str| out.push_str(&format!("{k:<16}{}\n", printable(v, false)));
        line("id", &self.id.to_string());
        line("route", &self.route);
        line("direction", &self.direction);
        line("source", &self.source);
        line("error kind", &self.error_kind);
        line("error", &self.error);
        line("sqlstate", self.sqlstate.as_deref().unwrap_or("-"));
        line("attempts", &self.attempts.to_string());
        line("first failed at", &self.first_failed_at);
        line("last failed at", &self.last_failed_at);
        line("headers", &self.headers.to_string());
        line("payload bytes", &self.payload.len().to_string());
        match std::str::from_utf8(&self.payload) {
            Ok(text) => out.push_str(&format!("payload (text):\n{}\n", printable(text, true))),
            Err(_) => out.push_str(&format!("payload (hex):\n{}\n", hex_dump(&self.payload))),
        }
        out
    }
}

/// `text` safe to print on a terminal: control characters (escape sequences, carriage
/// returns, bells, C1 codes) are shown escaped, `\u{1b}`; with `lines`, line feeds and
/// tabs stay as they are.
fn printable(text: &str, lines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(lines && matches!(c, '\n' | '\t')) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn payload_preview(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) => text.replace(['\n', '\r', '\t'], " "),
        Err(_) => format!("<{} bytes, binary>", payload.len()),
    }
}

fn shorten(text: &str, max: usize) -> String {
    let single: String = text.replace(['\n', '\r'], " ");
    if single.chars().count() <= max {
        return single;
    }
    let cut: String = single.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

fn human_age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub fn render_table(letters: &[DeadLetter]) -> String {
    let now = Utc::now();
    let header = ["ID", "ROUTE", "AGE", "ATTEMPTS", "KIND", "ERROR", "PAYLOAD"].map(String::from);
    let rows: Vec<[String; 7]> = std::iter::once(header)
        .chain(letters.iter().map(|l| l.table_row(now)))
        .collect();
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                if c == 6 {
                    cell.clone()
                } else {
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn hex_dump(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String = chunk
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            format!("{:08x}  {:<47}  {ascii}", i * 16, hex.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (RFC 4648 §4): padding may be left out, but when present it must
/// be right, and the unused bits of the last character must be zero, so that each byte
/// string has exactly one accepted spelling besides the unpadded one.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let body = text.trim_end_matches('=');
    let padding = text.len() - body.len();
    if padding > 0 && (!text.len().is_multiple_of(4) || padding > 2) {
        return Err("its `=` padding is wrong".into());
    }
    if body.len() % 4 == 1 {
        return Err("its length is not that of any base64 text".into());
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for (i, c) in body.bytes().enumerate() {
        let sextet = sextet(c).ok_or_else(|| {
            format!(
                "character {} ({:?}) is not in the base64 alphabet",
                i + 1,
                c as char
            )
        })?;
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if acc != 0 {
        return Err("its last character has bits set that no byte uses".into());
    }
    Ok(out)
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(payload: &[u8]) -> DeadLetter {
        DeadLetter {
            id: 7,
            route: "r".into(),
            direction: "inbound".into(),
            source: "a/b".into(),
            payload: payload.to_vec(),
            headers: json!({}),
            error_kind: "decode".into(),
            error: "invalid JSON".into(),
            sqlstate: None,
            attempts: 1,
            first_failed_at: now_rfc3339(),
            last_failed_at: now_rfc3339(),
        }
    }

    #[test]
    fn binary_payloads_travel_as_base64() {
        let j = letter(&[0xff, 0x00, 0x41]).to_json();
        assert_eq!(j["payload_base64"], "/wBB");
        assert!(j.get("payload").is_none());
        let j = letter(b"{}").to_json();
        assert_eq!(j["payload"], "{}");
    }

    #[test]
    fn terminal_codes_in_a_letter_are_shown_escaped() {
        let mut l = letter(b"\x1b[2J\x1b]0;owned\x07line one\nline\ttwo\r");
        l.source = "t/\x1b[31mred".into();
        let shown = l.details();
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{shown:?}"
        );
        assert!(shown.contains("\\u{1b}[2J"), "{shown}");
        assert!(shown.contains("line one\nline\ttwo\\u{d}"), "{shown}");
        assert!(shown.contains("t/\\u{1b}[31mred"), "{shown}");
        let table = render_table(&[l]);
        assert_eq!(table.lines().count(), 2, "{table:?}");
        assert!(
            table.lines().all(|row| !row.chars().any(char::is_control)),
            "{table:?}"
        );
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn base64_decodes_padded_and_unpadded() {
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zg").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("AP8Q").unwrap(), [0x00, 0xff, 0x10]);
        assert_eq!(base64_decode("").unwrap(), b"");
        for bad in ["Zg=", "Z", "Zh==", "Zm9v!", "Zg===", "Zm 9v", "Zm9v-_"] {
            assert!(base64_decode(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let text = base64(&bytes);
            proptest::prop_assert_eq!(base64_decode(&text).unwrap(), bytes.clone());
            proptest::prop_assert_eq!(base64_decode(text.trim_end_matches('=')).unwrap(), bytes);
        }
    }

    #[test]
    fn show_prints_hex_for_binary() {
        let d = letter(&[0xff, 0x41]).details();
        assert!(d.contains("payload (hex):\n00000000  ff 41"), "{d}");
    }

    #[test]
    fn the_table_shortens_long_errors() {
        let mut l = letter(b"x");
        l.error = "e".repeat(200);
        let t = render_table(&[l]);
        assert!(t.lines().nth(1).unwrap().contains('…'));
        assert!(t.starts_with("ID"));
    }
}
