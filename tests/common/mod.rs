//! Shared integration-test harness for `mqdb`: each test binary declares `mod common;` and
//! uses the subset it needs; each type says what it stands for.
//!
//! Everything talks to the real services on loopback (see GUIDE.md, "Test environment").
//! Names come from [`unique`], so tables, topics, queues and client ids never collide across
//! parallel test threads and processes. Tests that look at the state store take a
//! [`StateStore`], so they run against each kind.
//!
//! Waiting: [`wait_until`] is a liveness deadline (a hang detector), never a speed assertion.
#![allow(dead_code)]

mod bridge;
mod cases;
mod checks;
mod config;
mod db;
pub mod http;
mod inbound;
mod mqtt;
mod mqtt5;
mod proxy;
mod rabbit;
mod rabbit_node;
mod ran;
pub mod readme;
mod squid;
mod tls;
mod world;
mod ws_client;
mod ws_gateway;

// Each test binary uses a subset of these re-exports.
#[allow(unused_imports)]
pub use bridge::{Bridge, PROXY_VARIABLES, mqdb_bin, mqdb_command, run_mqdb};
#[allow(unused_imports)]
pub(crate) use cases::cases;
#[allow(unused_imports)]
pub use checks::{
    LIVENESS, dlq_list, dlq_list_in, letter_id, path_str, run_bounded, scalar, terminate_ok,
    try_scalar, wait_dead_letters, wait_for, wait_for_count,
};
#[allow(unused_imports)]
pub use config::{Config, Route, settings};
#[allow(unused_imports)]
pub use db::{
    Db, TempSqlite, TempTable, odbc_connect, odbc_env, odbc_exec, odbc_query, parse_ts,
    pg_lock_waiters, temp_sqlite, ts,
};
#[allow(unused_imports)]
pub use inbound::{
    NULL, base64_decode, lock_holder, pairs, parse_bool, text_rows, wait_lock_waiter,
};
#[allow(unused_imports)]
pub use mqtt::{
    Mosquitto, Publisher, Received, Subscriber, publish_retained, seq_messages, with_mqtt5,
};
#[allow(unused_imports)]
pub use mqtt5::{Received5, Subscriber5};
#[allow(unused_imports)]
pub use proxy::TcpProxy;
#[allow(unused_imports)]
pub use rabbit::{
    AmqpMessage, ExchangeInfo, Header, Outgoing, QueueInfo, Rabbit, amqp_route, id_payloads,
    wait_consuming, wait_queue, wait_queue_drained,
};
#[allow(unused_imports)]
pub use rabbit_node::{RabbitNode, WEB_MQTT_PATH};
#[allow(unused_imports)]
pub use ran::{Ran, check_route, line_of, mqdb_at, mqdb_bounded, mqdb_env, run_check};
#[allow(unused_imports)]
pub use squid::{Access, Squid};
#[allow(unused_imports)]
pub use tls::{make_ca, make_leaf, make_pki, openssl, pki_with_other_ca};
#[allow(unused_imports)]
pub use world::{StateStore, Workdir, World};
#[allow(unused_imports)]
pub use ws_client::WsBroker;
#[allow(unused_imports)]
pub use ws_gateway::{WS_PATH, WsGateway};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A name made of `[a-z0-9_]` that is unique across parallel test threads and processes.
///
/// Built from the sanitized `prefix` (at most 20 characters, forced to start with a letter),
/// the process id, a per-process counter and the low bits of the wall clock in nanoseconds.
/// At most ~50 characters, so it fits PostgreSQL (63) and MariaDB (64) identifier limits and
/// works as an MQTT topic level, a client id or an AMQP queue name.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let sanitize = |c: char| match c.to_ascii_lowercase() {
        c if c.is_ascii_lowercase() || c.is_ascii_digit() => c,
        _ => '_',
    };
    let mut p: String = prefix.chars().map(sanitize).take(20).collect();
    if !p.starts_with(|c: char| c.is_ascii_lowercase()) {
        p.insert(0, 't');
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // 36^8 ns ~ 47 minutes of distinct values; pid + counter carry the real uniqueness.
    let clock = base36(nanos % 36u128.pow(8));
    format!("{p}_{}_{n}_{clock}", std::process::id())
}

fn base36(v: u128) -> String {
    let digit = char::from_digit((v % 36) as u32, 36).expect("a base-36 digit");
    match v / 36 {
        0 => digit.to_string(),
        rest => format!("{}{digit}", base36(rest)),
    }
}

/// A temp dir whose name starts with `mqdb-<label>-`, removed on drop.
pub fn temp_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("mqdb-{label}-"))
        .tempdir()
        .expect("temp dir")
}

/// Polls `f` every 100 ms until it returns true; panics naming `what` after `timeout`.
///
/// This is a liveness deadline: pick it generously (it only bounds a hang), never as a speed
/// assertion.
pub fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A current-thread tokio runtime, for a client that runs on a thread of its own.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().build().expect("tokio runtime")
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, release it).
///
/// Another process could take it before it is used; callers that start servers retry.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Sends `signal` (e.g. "TERM", "KILL") to `pid` with the `kill` command.
pub(crate) fn send_signal(pid: u32, signal: &str) {
    // A process that already exited makes `kill` fail; that is fine for every caller.
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Waits for `child` to exit, polling, for at most `timeout`. `None` if it is still running.
pub(crate) fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    let id = child.id();
    loop {
        let status = child.try_wait();
        let status = status.unwrap_or_else(|e| panic!("waiting for child {id}: {e}"));
        if status.is_some() || start.elapsed() >= timeout {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Peak resident set (kB) and CPU seconds so far of a running process, from /proc.
pub fn process_stats(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:"));
    let hwm = hwm.and_then(|v| v.split_whitespace().next()?.parse().ok());
    let rss = hwm.unwrap_or(0);
    // utime and stime: fields 14 and 15 of /proc/PID/stat, counted after the `(comm)`.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = (11..=12)
        .filter_map(|i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    (rss, ticks / 100.0)
}

/// How many cores this machine has, for benchmark reports.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU model, for benchmark reports.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}
