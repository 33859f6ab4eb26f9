//! A minimal HTTP/1.0 client on a std `TcpStream`, for the bridge's `/health` and
//! `/metrics` endpoint (no HTTP client dependency).
//!
//! Each call opens one connection, sends one request with `Connection: close` semantics
//! (HTTP/1.0), reads the answer to EOF and returns the status code and the body.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long one request may take before it fails (a hang detector, not a speed assertion).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// `METHOD path` on `addr` (`127.0.0.1:PORT`): the status code and the body, or the I/O
/// error (e.g. nothing listens yet).
pub fn try_request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let body_header = match method {
        "GET" | "HEAD" => "",
        _ => "Content-Length: 0\r\n",
    };
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{body_header}\r\n"
    )?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let text = String::from_utf8(raw).map_err(|e| bad(format!("answer is not UTF-8: {e}")))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad(format!("no end of headers in {text:?}")))?;
    let status_line = head.lines().next().unwrap_or("");
    let status = match status_line.split_whitespace().collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/") => code.parse().ok(),
        _ => None,
    };
    let status = status.ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
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
