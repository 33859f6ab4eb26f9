//! A minimal HTTP/1.0 client on a std `TcpStream`, for the bridge's `/health` and
//! `/metrics` endpoint (no HTTP client dependency).
//!
//! Each call opens one connection, sends one request with `Connection: close` semantics
//! (HTTP/1.0), reads the answer to EOF and returns the status code and the body.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long one request may take before it fails (a hang detector, not a speed assertion).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// `METHOD path` on `addr` (`127.0.0.1:PORT`): the status code and the body, or the I/O
/// error (e.g. nothing listens yet).
pub fn try_request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let body_header = if method == "GET" || method == "HEAD" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{body_header}\r\n"
    )?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("answer is not UTF-8: {e}"),
        )
    })?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no end of headers in {text:?}"),
        )
    })?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad status line {status_line:?}"),
        )
    })?;
    Ok((status, body.to_string()))
}

/// Like [`try_request`]; panics on an I/O error.
pub fn request(addr: &str, method: &str, path: &str) -> (u16, String) {
    try_request(addr, method, path).unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// `GET path` on `addr`: the status code and the body. Panics on an I/O error.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    request(addr, "GET", path)
}

/// Like [`get`], `None` on an I/O error (e.g. the server is not listening yet).
pub fn try_get(addr: &str, path: &str) -> Option<(u16, String)> {
    try_request(addr, "GET", path).ok()
}

/// Waits until `addr` accepts TCP connections; panics after `timeout` (a liveness deadline).
pub fn wait_listening(addr: &str, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if start.elapsed() >= timeout {
            panic!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
