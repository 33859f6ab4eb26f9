//! Dead letters as `mqdb dlq list --json` shows them, while a bridge stores them.

use std::path::Path;

use serde_json::Value as Json;

use super::{Bridge, dlq_list, wait_for};

/// Waits until exactly `want` dead letters are stored (more fails at once) and returns them.
pub fn wait_dead_letters(bridge: &mut Bridge, config: &Path, want: usize) -> Vec<Json> {
    let mut letters = Vec::new();
    wait_for(bridge, &format!("{want} dead letters"), || {
        letters = dlq_list(config);
        match letters.len() {
            n if n > want => Err(format!("{n} dead letters, expected {want}")),
            n => Ok(n == want),
        }
    });
    letters
}

/// A dead letter's `id`.
pub fn letter_id(letter: &Json) -> i64 {
    letter["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer id: {letter:#}"))
}
