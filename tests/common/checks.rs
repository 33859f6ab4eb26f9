//! Assertion helpers shared by the bridge tests: waits that print the bridge log on
//! failure, and the dead letters as `mqdb dlq list --json` shows them.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::{Bridge, Db};

/// Liveness deadline for waits: a hang detector, never a speed assertion.
pub const LIVENESS: Duration = Duration::from_secs(60);

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// `mqdb -c CONFIG dlq list --json`: one JSON object per line.
pub fn dlq_list(config: &Path) -> Vec<Json> {
    dlq_list_in(config, Path::new("."))
}

/// [`dlq_list`] run in `cwd` (where a config's relative state store is).
pub fn dlq_list_in(config: &Path, cwd: &Path) -> Vec<Json> {
    let out = super::mqdb_command()
        .args(["-c", path_str(config), "dlq", "list", "--json"])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run mqdb dlq list: {e}"));
    let stdout = String::from_utf8(out.stdout).expect("dlq list prints UTF-8");
    let (status, stderr) = (out.status, String::from_utf8_lossy(&out.stderr));
    assert!(
        status.success(),
        "dlq list failed ({status}): {stdout}{stderr}"
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
            let log = bridge.log();
            panic!("mqdb exited while waiting for {what}; log:\n{log}");
        }
        if start.elapsed() >= LIVENESS {
            let log = bridge.log();
            panic!("timed out after {LIVENESS:?} waiting for {what}; mqdb log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The single integer `sql` returns, or `None` while the database cannot answer.
pub fn try_scalar(db: &Db, sql: &str) -> Option<i64> {
    let rows = db.try_query(sql).ok()?;
    rows.first()?.first()?.as_deref()?.trim().parse().ok()
}

/// The single integer `sql` returns; panics naming the query otherwise.
pub fn scalar(db: &Db, sql: &str) -> i64 {
    let rows = db.query(sql);
    let label = db.label();
    let text = rows.first().and_then(|r| r.first()?.as_deref());
    let text = text.unwrap_or_else(|| panic!("[{label}] {sql}: no value"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("[{label}] {sql}: {text:?} is not an integer: {e}"))
}

/// Waits until `count_sql` returns exactly `want`; a larger value fails at once (it can only
/// mean duplicate or misrouted rows).
pub fn wait_for_count(bridge: &mut Bridge, db: &Db, count_sql: &str, want: i64) {
    let what = format!("`{count_sql}` = {want}");
    wait_for(bridge, &what, || match try_scalar(db, count_sql) {
        Some(n) if n > want => Err(format!("{n} rows, more than the {want} expected")),
        Some(n) => Ok(n == want),
        None => Ok(false),
    });
}

/// Stops the bridge with SIGTERM and asserts it exits with status 0.
pub fn terminate_ok(bridge: &mut Bridge) {
    let status = bridge.terminate();
    let log = bridge.log();
    assert!(
        status.success(),
        "mqdb exited with {status} on SIGTERM; log:\n{log}"
    );
}

/// Runs the binary with `args` in `cwd` until it exits (panics after `timeout`, which only
/// bounds a hang); output goes through files, so a full pipe never blocks it. Returns the
/// status, stdout and stderr.
pub fn run_bounded(args: &[&str], cwd: &Path, timeout: Duration) -> (ExitStatus, String, String) {
    let files = super::temp_dir("run");
    let (out_path, err_path) = (files.path().join("stdout"), files.path().join("stderr"));
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let mut child = super::mqdb_command()
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("create stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn mqdb {args:?}: {e}"));
    let Some(status) = super::wait_child(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        let (out, err) = (read(&out_path), read(&err_path));
        panic!("mqdb {args:?} did not exit within {timeout:?}; stdout:\n{out}\nstderr:\n{err}");
    };
    (status, read(&out_path), read(&err_path))
}

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
