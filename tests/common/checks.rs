//! Assertion helpers shared by the bridge tests: waits that print the bridge log on
//! failure, and the dead-letter list as JSON.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::{Bridge, run_mqdb};

/// Liveness deadline for waits: a hang detector, never a speed assertion.
pub const LIVENESS: Duration = Duration::from_secs(60);

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// `mqdb -c CONFIG dlq list --json`: one JSON object per line.
pub fn dlq_list(config: &Path) -> Vec<Json> {
    let out = run_mqdb(&["-c", path_str(config), "dlq", "list", "--json"]);
    let stdout = String::from_utf8(out.stdout).expect("dlq list prints UTF-8");
    assert!(
        out.status.success(),
        "dlq list failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object: {l}: {e}")))
        .collect()
}

/// Polls `check` every 100 ms until it returns `Ok(true)`. Panics with the bridge log when
/// `check` returns `Err`, when the bridge exits, or after [`LIVENESS`] (a hang detector).
pub fn wait_for(bridge: &mut Bridge, what: &str, mut check: impl FnMut() -> Result<bool, String>) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => panic!("{what}: {e}; mqdb log:\n{}", bridge.log()),
        }
        if !bridge.is_running() {
            panic!(
                "mqdb exited while waiting for {what}; log:\n{}",
                bridge.log()
            );
        }
        if start.elapsed() >= LIVENESS {
            panic!(
                "timed out after {LIVENESS:?} waiting for {what}; mqdb log:\n{}",
                bridge.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
