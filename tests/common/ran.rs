//! One finished run of the `mqdb` binary, kept whole so that a failed assertion prints its
//! exit code, stdout and stderr.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{mqdb_command, run_bounded};

/// The exit code (`None` after a signal), stdout and stderr.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// `mqdb -c CONFIG ARGS...` to completion, stdin closed.
pub fn mqdb_at(config: &Path, args: &[&str]) -> Ran {
    mqdb_env(config, args, &[])
}

/// Like [`mqdb_at`] with extra environment variables.
pub fn mqdb_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut cmd = mqdb_command();
    cmd.arg("-c").arg(config).args(args);
    Ran::of(cmd.envs(env.iter().copied()))
}

/// [`run_bounded`]: `mqdb ARGS...` in `cwd`, killed (and the test failed) after `timeout`.
pub fn mqdb_bounded(args: &[&str], cwd: &Path, timeout: Duration) -> Ran {
    let (status, stdout, stderr) = run_bounded(args, cwd, timeout);
    Ran {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// The 1-based number of the first line of `text` that contains `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
        + 1
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (code, out, err) = (self.code, &self.stdout, &self.stderr);
        write!(f, "status {code:?}\n--- stdout\n{out}--- stderr\n{err}")
    }
}

impl Ran {
    /// Runs `cmd` to completion with stdin closed.
    pub fn of(cmd: &mut Command) -> Ran {
        let output = cmd.stdin(Stdio::null()).output();
        let o = output.unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
        Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Asserts the exit code.
    pub fn code(&self, want: i32) -> &Ran {
        assert_eq!(self.code, Some(want), "{self}");
        self
    }

    pub fn stdout_has(&self, needle: &str) -> &Ran {
        let found = self.stdout.contains(needle);
        assert!(found, "{needle:?} not in stdout\n{self}");
        self
    }

    /// Asserts stderr contains every needle.
    pub fn stderr_has(&self, needles: &[&str]) -> &Ran {
        for needle in needles {
            let found = self.stderr.contains(needle);
            assert!(found, "{needle:?} not in stderr\n{self}");
        }
        self
    }

    /// Asserts that neither stdout nor stderr contains `secret`.
    pub fn never_shows(&self, secret: &str) -> &Ran {
        let all = format!("{}{}", self.stdout, self.stderr);
        assert!(!all.contains(secret), "{secret:?} was printed\n{self}");
        self
    }

    /// `check`'s one line for `route` (`inbound r1`, or a bare route name).
    pub fn route_line(&self, route: &str) -> &str {
        let tag = format!(" {route}:");
        let lines: Vec<&str> = self.stdout.lines().filter(|l| l.contains(&tag)).collect();
        assert_eq!(lines.len(), 1, "one line for {route}\n{self}");
        lines[0]
    }

    /// Asserts `check` exits 1 with a `FAIL` line for `route` that contains every needle.
    pub fn fails(&self, route: &str, needles: &[&str]) -> &Ran {
        self.code(1).route_is(route, "FAIL", needles)
    }

    /// Asserts `check`'s line for `route` starts with `verdict` (`ok`, `FAIL`) and contains
    /// every needle.
    pub fn route_is(&self, route: &str, verdict: &str, needles: &[&str]) -> &Ran {
        let line = self.route_line(route);
        assert!(line.starts_with(verdict), "{route}: not {verdict}\n{self}");
        for n in needles {
            assert!(line.contains(n), "{route}: {n:?} not in its line\n{self}");
        }
        self
    }
}

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
