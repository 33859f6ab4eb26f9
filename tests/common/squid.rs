//! A private Squid HTTP proxy for tests of brokers reached through a firewall: basic
//! authentication, CONNECT allowed only to the ports a test names, and an access log the
//! test reads to see which tunnels went through and which were refused.
//!
//! Squid runs in the foreground (`-N`) in its own process group with everything in a temp
//! dir (config, password file, pid file, logs), under its own service name (`-n`), which
//! also names its shared memory segments, so parallel instances never meet. It caches
//! nothing. Squid refuses to run as root: as root the test starts it as the `proxy` user
//! (Debian's squid package creates it, else `nobody`) and hands the temp dir over to it; any
//! other user runs it as themselves (`cache_effective_user` only matters to a root squid).
//! Dropping it stops it (SIGTERM to the group; SIGKILL after 10 s).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Ran, free_port, temp_dir, wait_child};

const SQUID: &str = "/usr/sbin/squid";
/// Debian's path of Squid's basic authentication helper for htpasswd-style files.
const NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";
const START_DEADLINE: Duration = Duration::from_secs(30);

/// One line of the access log (Squid's native format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// e.g. `TCP_TUNNEL/200`, `TCP_DENIED/407`, `TCP_DENIED/403`.
    pub status: String,
    /// e.g. `CONNECT`.
    pub method: String,
    /// `host:port` for CONNECT.
    pub target: String,
    /// The authenticated (or claimed) user, `-` if none.
    pub user: String,
}

/// A private Squid on a free loopback port.
pub struct Squid {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The ports CONNECT may reach.
    pub allowed_ports: Vec<u16>,
    dir: tempfile::TempDir,
    service: String,
    child: Option<Child>,
}

impl Squid {
    /// Starts a proxy that requires `user`/`password` and tunnels CONNECT only to
    /// `allowed_ports` on any host; every other request is denied (403).
    pub fn start(user: &str, password: &str, allowed_ports: &[u16]) -> Squid {
        assert!(!allowed_ports.is_empty(), "name at least one port to allow");
        let mut squid = Squid {
            port: 0,
            user: user.to_owned(),
            password: password.to_owned(),
            allowed_ports: allowed_ports.to_vec(),
            dir: temp_dir("squid"),
            service: service_name(),
            child: None,
        };
        squid.write_passwd();
        let mut last = String::new();
        for _ in 0..3 {
            squid.port = free_port();
            match squid.spawn() {
                Ok(()) => return squid,
                // Most likely the free port was taken in between.
                Err(log) => last = log,
            }
        }
        panic!("squid did not start in 3 attempts; last log:\n{last}");
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url_with(&self.password)
    }

    /// The proxy URL with another password (e.g. a wrong one).
    pub fn url_with(&self, password: &str) -> String {
        format!("http://{}:{password}@127.0.0.1:{}", self.user, self.port)
    }

    /// `http://USER@127.0.0.1:PORT`, for configs that give the password in a file.
    pub fn url_without_password(&self) -> String {
        format!("http://{}@127.0.0.1:{}", self.user, self.port)
    }

    /// `127.0.0.1:PORT`, as log lines name the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The access log so far, one entry per finished request or tunnel. A tunnel is logged
    /// when it closes, so a live connection is not in it yet.
    pub fn access_log(&self) -> Vec<Access> {
        let text = std::fs::read_to_string(self.path("access.log")).unwrap_or_default();
        text.lines().filter_map(parse_access).collect()
    }

    /// The access log entries for CONNECT to `target` (`host:port`).
    pub fn connects_to(&self, target: &str) -> Vec<Access> {
        let connects = self.access_log().into_iter();
        let to = |a: &Access| a.method == "CONNECT" && a.target == target;
        connects.filter(to).collect()
    }

    /// Waits until the access log has a CONNECT to `target` with `status`; panics with the
    /// whole log after `timeout` (a liveness deadline).
    pub fn wait_connect(&self, target: &str, status: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.connects_to(target).iter().any(|a| a.status == status) {
            if start.elapsed() >= timeout {
                let log = self.access_log_text();
                panic!("no CONNECT {target} {status} in squid's access log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn access_log_text(&self) -> String {
        std::fs::read_to_string(self.path("access.log")).unwrap_or_default()
    }

    /// Squid's own log (start-up, errors).
    pub fn cache_log(&self) -> String {
        std::fs::read_to_string(self.path("cache.log")).unwrap_or_default()
    }

    /// Opens a tunnel to `target` as `user`/`password` and returns squid's status code and
    /// the connection (positioned after the response headers).
    pub fn connect(&self, target: &str, user: &str, password: &str) -> (u16, TcpStream) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to squid");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let auth = mqdb::dlq::base64(format!("{user}:{password}").as_bytes());
        let request = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\
             Proxy-Authorization: Basic {auth}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send CONNECT");
        let status = read_response_head(&mut stream);
        (status, stream)
    }

    /// Stops squid and waits for its process group. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        send_signal_group(&group, "TERM");
        if wait_child(&mut child, Duration::from_secs(10)).is_none() {
            send_signal_group(&group, "KILL");
            let _ = child.wait();
        }
        // A killed squid leaves its shared memory segments behind.
        remove_segments(&self.service);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_passwd(&self) {
        let out = Command::new("openssl")
            .args(["passwd", "-apr1", &self.password])
            .output()
            .expect("run openssl passwd");
        assert!(out.status.success(), "openssl passwd: {out:?}");
        let hash = String::from_utf8(out.stdout).expect("UTF-8 hash");
        let line = format!("{}:{}\n", self.user, hash.trim());
        std::fs::write(self.path("passwd"), line).expect("write passwd");
    }

    fn config(&self) -> String {
        let d = self.dir.path().display();
        let ports: Vec<String> = self.allowed_ports.iter().map(u16::to_string).collect();
        let (port, ports) = (self.port, ports.join(" "));
        format!(
            "http_port 127.0.0.1:{port}\n\
             pid_filename {d}/squid.pid\n\
             cache_log {d}/cache.log\n\
             access_log stdio:{d}/access.log squid\n\
             buffered_logs off\n\
             cache_store_log none\n\
             coredump_dir {d}\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             pinger_enable off\n\
             icp_port 0\n\
             shutdown_lifetime 0 seconds\n\
             logfile_rotate 0\n\
             auth_param basic program {NCSA_AUTH} {d}/passwd\n\
             auth_param basic realm mqdb-test\n\
             auth_param basic children 2 startup=1 idle=1\n\
             auth_param basic credentialsttl 1 second\n\
             acl authenticated proxy_auth REQUIRED\n\
             acl broker_ports port {ports}\n\
             acl CONNECT method CONNECT\n\
             http_access deny !authenticated\n\
             http_access allow CONNECT broker_ports\n\
             http_access deny all\n"
        )
    }

    /// Writes the config, starts squid and waits until it accepts. `Err(log)` if it exited.
    fn spawn(&mut self) -> Result<(), String> {
        let config = self.path("squid.conf");
        std::fs::write(&config, self.config()).expect("write squid.conf");
        let mut cmd = Command::new(SQUID);
        cmd.args(["-N", "-n", &self.service, "-f"])
            .arg(&config)
            .current_dir(self.dir.path())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = unprivileged_user() {
            hand_over(self.dir.path(), uid, gid);
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {SQUID}: {e}"));
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                remove_segments(&self.service);
                return Err(format!("squid exited with {status}:\n{}", self.cache_log()));
            }
            // Its log rather than a probe connection, which would be in the access log.
            if self
                .cache_log()
                .contains("Accepting HTTP Socket connections")
            {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_DEADLINE {
                send_signal_group(&format!("-{}", child.id()), "KILL");
                let _ = child.wait();
                let log = self.cache_log();
                panic!("squid did not accept within {START_DEADLINE:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A service name unique to this process and instance (letters and digits only).
fn service_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("mqdbsquid{}x{n}", std::process::id())
}

/// Removes `/dev/shm/SERVICE-*`, the shared memory a squid that did not shut down leaves.
fn remove_segments(service: &str) {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    let prefix = format!("{service}-");
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `kill -SIGNAL -- TARGET` (a negative pid names a process group).
fn send_signal_group(target: &str, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// As root: the uid and gid of `proxy` (else `nobody`) from /etc/passwd. `None` for any
/// other user, who runs squid as themselves.
fn unprivileged_user() -> Option<(u32, u32)> {
    let me = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = me.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    if uid.split_whitespace().next() != Some("0") {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let find = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name) && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    let user = find("proxy").or_else(|| find("nobody"));
    Some(user.expect("neither a proxy nor a nobody user to run squid as"))
}

/// Gives `dir` and everything in it to `uid`:`gid`, so squid can write its logs there.
fn hand_over(dir: &Path, uid: u32, gid: u32) {
    let owner = format!("{uid}:{gid}");
    Ran::of(Command::new("chown").args(["-R", &owner]).arg(dir)).code(0);
}

/// Reads an HTTP response head up to the blank line; the status code.
fn read_response_head(stream: &mut TcpStream) -> u16 {
    // Byte by byte, so nothing after the head (tunnel data) is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let mut first = String::new();
    let _ = BufReader::new(&head[..]).read_line(&mut first);
    let code = first.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    code.unwrap_or_else(|| panic!("not an HTTP response: {:?}", String::from_utf8_lossy(&head)))
}

/// `time elapsed client status bytes method target user hierarchy type`.
fn parse_access(line: &str) -> Option<Access> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let field = |i: usize| f.get(i).map(|s| (*s).to_owned());
    Some(Access {
        status: field(3)?,
        method: field(5)?,
        target: field(6)?,
        user: field(7)?,
    })
}
