//! `mqdb check` as the tests run it.

use std::path::Path;

use super::{path_str, run_mqdb};

/// `mqdb -c CONFIG check`: (exit code, stdout, stderr).
pub fn run_check(config: &Path) -> (Option<i32>, String, String) {
    let out = run_mqdb(&["-c", path_str(config), "check"]);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}
