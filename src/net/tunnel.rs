//! An HTTP CONNECT tunnel opened on an already connected stream: after it, the stream
//! carries the broker's protocol (TLS, AMQP) as if it were connected to the broker.

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::proxy::HttpProxy;

/// The longest proxy answer read before giving up on it.
const MAX_ANSWER: usize = 16 << 10;

/// Asks `proxy` (already connected on `stream`) for a tunnel to `host:port`. The error says
/// which proxy answered what, for the outage log line and `mqdb check`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    proxy: &HttpProxy,
    host: &str,
    port: u16,
) -> Result<(), String> {
    let target = super::url::authority(host, port);
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(user) = &proxy.user {
        let pair = format!("{user}:{}", proxy.password.as_deref().unwrap_or(""));
        request.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            crate::dlq::base64(pair.as_bytes())
        ));
    }
    request.push_str("\r\n");
    let fail = |what: String| format!("proxy {proxy} {what} (CONNECT {target})");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| fail(format!("did not take the CONNECT request: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| fail(format!("did not take the CONNECT request: {e}")))?;
    // One byte at a time: whatever follows the header belongs to the tunnel.
    let mut answer = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_ANSWER {
            return Err(fail("answered with an over-long header".into()));
        }
        match stream.read(&mut byte).await {
            Ok(0) => {
                return Err(fail(if answer.is_empty() {
                    "closed the connection without answering".into()
                } else {
                    "closed the connection in the middle of its answer".into()
                }));
            }
            Ok(_) => answer.push(byte[0]),
            Err(e) => {
                return Err(fail(format!(
                    "failed while mqdb waited for its answer: {e}"
                )));
            }
        }
    }
    match status(&answer) {
        Some((code, _)) if (200..300).contains(&code) => Ok(()),
        Some((code, reason)) => Err(fail(format!("answered {code} {reason}{}", hint(code)))),
        None => Err(fail("did not answer as an HTTP proxy".into())),
    }
}

/// The status code and reason of an HTTP answer.
pub fn status(answer: &[u8]) -> Option<(u16, String)> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?.parse().ok()?;
    Some((code, parts.next().unwrap_or("").to_string()))
}

/// What an operator can do about a refusal.
pub fn hint(code: u16) -> &'static str {
    match code {
        407 => "; check the proxy user and password (proxy URL or proxy_password_file)",
        403 => "; the proxy's rules do not allow CONNECT to this host and port",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_gives_code_and_reason() {
        assert_eq!(
            status(b"HTTP/1.1 407 Proxy Authentication Required\r\nX: y\r\n\r\n"),
            Some((407, "Proxy Authentication Required".into()))
        );
        assert_eq!(
            status(b"HTTP/1.0 200 Connection established\r\n\r\n"),
            Some((200, "Connection established".into()))
        );
        assert_eq!(status(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(status(b"HTTP/1.1 abc\r\n\r\n"), None);
    }
}
