//! What a published message says about itself: its deduplication key and content type.
//!
//! The key is derived from what the message is, never from who sent it or when: the route,
//! the row's track values and the message body. The same row published again (after a
//! crash, by `dlq replay`, by another instance of the same configuration) carries the same
//! key, and two different rows never share one — the body tells apart rows whose track
//! values are equal. It is UUID-shaped so that it fits AMQP's `message_id` (at most 255
//! bytes) and a consumer's UUID column whatever the length of the values.

use sha2::{Digest, Sha256};

use crate::config::Format;

/// Changing the derivation changes every key: a new version name keeps old and new keys
/// from meeting.
const DOMAIN: &[u8] = b"mqdb outbound message v1";

/// The deduplication key of one outbound row: a version 8 (hash-based) UUID.
pub fn message_id(route: &str, track: &[Option<String>], payload: &[u8]) -> String {
    let mut hash = Sha256::new();
    field(&mut hash, DOMAIN);
    field(&mut hash, route.as_bytes());
    hash.update((track.len() as u64).to_be_bytes());
    for value in track {
        match value {
            None => hash.update([0u8]),
            Some(v) => {
                hash.update([1u8]);
                field(&mut hash, v.as_bytes());
            }
        }
    }
    field(&mut hash, payload);
    uuid_v8(&hash.finalize())
}

/// The route and position a row's message carries besides its key: the position is the
/// row's track values as a JSON array (`null` for a NULL), as `mqdb status` shows it.
pub fn origin(route: &str, track: &[Option<String>]) -> (String, String) {
    let position = serde_json::to_string(track).unwrap_or_else(|_| "[]".into());
    (route.to_string(), position)
}

/// Length-prefixed, so that no two different field lists hash the same bytes.
fn field(hash: &mut Sha256, bytes: &[u8]) {
    hash.update((bytes.len() as u64).to_be_bytes());
    hash.update(bytes);
}

/// The first 16 bytes of `digest` as an RFC 9562 version 8 UUID, lower-case hyphenated.
fn uuid_v8(digest: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The MIME type of a message body in `format`.
pub fn content_type(format: Format) -> &'static str {
    match format {
        Format::Json => "application/json",
        Format::Csv => "text/csv",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn some(values: &[&str]) -> Vec<Option<String>> {
        values.iter().map(|v| Some(v.to_string())).collect()
    }

    #[test]
    fn the_same_row_has_the_same_key() {
        let a = message_id("alarms", &some(&["7"]), b"{\"id\":7}");
        let b = message_id("alarms", &some(&["7"]), b"{\"id\":7}");
        assert_eq!(a, b);
    }

    #[test]
    fn keys_are_uuid_version_8() {
        let id = message_id("r", &some(&["1"]), b"x");
        assert_eq!(id.len(), 36, "{id}");
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('8'), "{id}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{id}");
        assert!(
            id.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }

    #[test]
    fn long_values_still_make_a_short_key() {
        let long = "x".repeat(100_000);
        assert_eq!(
            message_id(&long, &some(&[&long]), long.as_bytes()).len(),
            36
        );
    }

    #[test]
    fn route_track_and_body_each_change_the_key() {
        let base = message_id("r", &some(&["1"]), b"a");
        assert_ne!(base, message_id("s", &some(&["1"]), b"a"));
        assert_ne!(base, message_id("r", &some(&["2"]), b"a"));
        assert_ne!(base, message_id("r", &some(&["1"]), b"b"));
        assert_ne!(base, message_id("r", &[None], b"a"));
    }

    #[test]
    fn separators_inside_values_do_not_collide() {
        // Same bytes overall, split differently between the fields.
        assert_ne!(
            message_id("a", &some(&["bc"]), b""),
            message_id("ab", &some(&["c"]), b"")
        );
        assert_ne!(
            message_id("r", &some(&["1", "2"]), b""),
            message_id("r", &some(&["12"]), b"")
        );
        assert_ne!(
            message_id("r", &some(&[""]), b""),
            message_id("r", &[], b"")
        );
        assert_ne!(
            message_id("r", &[None], b""),
            message_id("r", &some(&[""]), b"")
        );
    }

    proptest! {
        #[test]
        fn different_inputs_give_different_keys(
            a in ("[a-c]{0,3}", proptest::collection::vec(proptest::option::of("[a-c,]{0,3}"), 0..3), proptest::collection::vec(0u8..3, 0..3)),
            b in ("[a-c]{0,3}", proptest::collection::vec(proptest::option::of("[a-c,]{0,3}"), 0..3), proptest::collection::vec(0u8..3, 0..3)),
        ) {
            let ka = message_id(&a.0, &a.1, &a.2);
            let kb = message_id(&b.0, &b.1, &b.2);
            prop_assert_eq!(ka == kb, a == b);
        }
    }
}
