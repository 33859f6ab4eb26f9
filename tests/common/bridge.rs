//! The `mqdb` binary under test.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use super::{send_signal, wait_child};

/// The `mqdb` binary cargo built for this test run.
pub fn mqdb_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mqdb"))
}

/// The proxy variables mqdb follows (curl's convention, either case).
pub const PROXY_VARIABLES: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A `Command` for the binary with a clean environment for logging, config selection and
/// proxies: `RUST_LOG`, `MQDB_CONFIG` and the [`PROXY_VARIABLES`] are removed, so tests see
/// the binary's own defaults (and no developer's proxy) unless they set them explicitly on
/// the returned command.
pub fn mqdb_command() -> Command {
    let mut cmd = Command::new(mqdb_bin());
    cmd.env_remove("RUST_LOG").env_remove("MQDB_CONFIG");
    for name in PROXY_VARIABLES {
        cmd.env_remove(name);
    }
    cmd
}

/// Runs the binary to completion with `args` (e.g. `["-c", path, "check"]`), stdin closed,
/// and returns its exit status and output.
pub fn run_mqdb(args: &[&str]) -> Output {
    mqdb_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {} {args:?}: {e}", mqdb_bin().display()))
}

/// A running `mqdb -c CONFIG run`.
///
/// stdout and stderr go (appended) to `<config without extension>.log` next to the config,
/// so a restarted bridge keeps one log. The working directory is the config file's directory,
/// so relative paths such as the default `state: sqlite://mqdb-state.db` stay private to the
/// test (they never land in the crate root shared by parallel tests).
pub struct Bridge {
    pub config: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl Bridge {
    pub fn start(config_path: &Path) -> Bridge {
        Bridge::start_with_env(config_path, &[])
    }

    /// Like [`Bridge::start`] with extra environment variables (e.g. for `${VAR}` in the
    /// config).
    pub fn start_with_env(config_path: &Path, env: &[(&str, &str)]) -> Bridge {
        Bridge::start_with(config_path, &[], env)
    }

    /// Like [`Bridge::start_with_env`] with global options before `run` (e.g.
    /// `--log-format json`).
    pub fn start_with(config_path: &Path, options: &[&str], env: &[(&str, &str)]) -> Bridge {
        let config = std::path::absolute(config_path)
            .unwrap_or_else(|e| panic!("absolute path of {}: {e}", config_path.display()));
        let dir = config.parent().expect("config file has a parent directory");
        let log_path = config.with_extension("log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("clone log file handle");
        let mut cmd = mqdb_command();
        cmd.arg("-c")
            .arg(&config)
            .args(options)
            .arg("run")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .envs(env.iter().copied());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", mqdb_bin().display()));
        Bridge {
            config,
            log_path,
            child: Some(child),
        }
    }

    /// SIGKILL (no drain, no goodbye) and wait. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit (up to 30 s, then SIGKILL and panic with the log).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("bridge is not running");
        send_signal(child.id(), "TERM");
        let Some(status) = wait_child(&mut child, Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            let log = self.log();
            panic!("mqdb did not exit within 30 s of SIGTERM; log:\n{log}");
        };
        status
    }

    /// stdout and stderr so far, interleaved.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let start = std::time::Instant::now();
        while !self.log().contains(needle) {
            if start.elapsed() >= timeout {
                let log = self.log();
                panic!("mqdb log did not contain {needle:?} within {timeout:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill();
    }
}
