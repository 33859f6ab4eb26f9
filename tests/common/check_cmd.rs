//! `mqdb check` as the tests run it.

use std::path::Path;

use super::mqdb_at;

/// `mqdb -c CONFIG check`: (exit code, stdout, stderr).
pub fn run_check(config: &Path) -> (Option<i32>, String, String) {
    let ran = mqdb_at(config, &["check"]);
    (ran.code, ran.stdout, ran.stderr)
}

/// Runs `check` on `config` and asserts exit `code` and one line for inbound route `route`
/// that starts with `status` (`ok`, `FAIL`). Returns that line in lower case, stderr, and the
/// config with the whole output (for messages).
pub fn check_route(config: &Path, code: i32, route: &str, status: &str) -> [String; 3] {
    let (got, out, err) = run_check(config);
    let text = std::fs::read_to_string(config).expect("read the config");
    let show = format!("{text}\n{out}{err}");
    assert_eq!(got, Some(code), "{show}");
    let name = format!("inbound {route}:");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(&name)).collect();
    assert_eq!(lines.len(), 1, "one line for route {route}:\n{show}");
    assert!(lines[0].starts_with(status), "not {status}:\n{show}");
    [lines[0].to_lowercase(), err, show]
}
