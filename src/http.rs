//! The optional HTTP endpoint (`http.listen`): `GET /health` and `GET /metrics`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::error::AppError;
use crate::metrics::{Metrics, Totals};

/// Scrapers are few and send their request at once; this bounds the sockets and memory
/// that clients can hold. At the bound the oldest connection is closed to admit the new
/// one, so idle or slow clients can delay `/health` by one eviction, never block it.
const MAX_CONNECTIONS: usize = 128;

/// How long a client may take to send a request's headers, from connecting or from the end
/// of its previous request; then the connection is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds now, so a taken port fails start-up, and serves until `stop`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("http.listen {listen}: {e}"))?;
    info!(listen = %listener.local_addr().unwrap_or(listen), "serving /health and /metrics");
    Ok(tokio::spawn(accept(listener, metrics, stop)))
}

async fn accept(listener: TcpListener, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let open = Arc::new(Mutex::new(OpenConnections::new(MAX_CONNECTIONS)));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let (id, evicted) = open.lock().expect("not poisoned").admit();
        let metrics = metrics.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, metrics.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    debug!(%peer, error = %e, "http connection ended");
                },
                _ = evicted => debug!(%peer, "http connection closed to admit a newer one"),
            }
            open.lock().expect("not poisoned").leave(id);
        });
    }
}

/// The open connections, oldest first, each with the sender whose drop closes it.
struct OpenConnections {
    max: usize,
    next_id: u64,
    by_age: BTreeMap<u64, oneshot::Sender<()>>,
}

impl OpenConnections {
    fn new(max: usize) -> Self {
        OpenConnections {
            max,
            next_id: 0,
            by_age: BTreeMap::new(),
        }
    }

    /// Registers a new connection, closing the oldest one when `max` are open; the receiver
    /// completes when this connection is evicted in turn.
    fn admit(&mut self) -> (u64, oneshot::Receiver<()>) {
        while self.by_age.len() >= self.max {
            self.by_age.pop_first();
        }
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.by_age.insert(id, tx);
        (id, rx)
    }

    fn leave(&mut self, id: u64) {
        self.by_age.remove(&id);
    }
}

async fn answer(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/health" => {
            let (healthy, doc) = metrics.health();
            let status = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", format!("{doc}\n"))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /health or /metrics\n".into(),
        ),
    })
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Logs one line of totals every `every` until `stop`, so a bridge without an HTTP endpoint
/// still shows that it works.
pub async fn log_summaries(
    metrics: Arc<Metrics>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut before = Totals::default();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let now = metrics.totals();
        info!(every = ?every, "summary: {}", now.summary_since(&before));
        before = now;
    }
}

/// `mqdb health`: one GET of `/health` on the address `http.listen` names.
pub async fn probe(config: &crate::config::Config) -> Result<(), AppError> {
    let Some(http) = &config.http else {
        return Err(AppError::Usage(
            "http.listen is not set in the config, so there is no /health to ask".into(),
        ));
    };
    let mut addr = http.addr().map_err(AppError::Usage)?;
    // A wildcard listener is reached on loopback from inside its own container.
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: mqdb\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.take(1 << 20).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .map_err(|_| AppError::Runtime(format!("{addr}: no answer within 5 s")))?
        .map_err(|e| AppError::Runtime(format!("{addr}: {e}")))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    println!("{}", body.trim_end());
    if head.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(AppError::Runtime(format!(
            "unhealthy: {}",
            head.lines().next().unwrap_or("no status line")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_bound_the_oldest_connection_is_closed() {
        use oneshot::error::TryRecvError::{Closed, Empty};
        let mut open = OpenConnections::new(2);
        let (_, mut first) = open.admit();
        let (second_id, mut second) = open.admit();
        assert_eq!(first.try_recv(), Err(Empty));
        let (_, mut third) = open.admit();
        assert_eq!(first.try_recv(), Err(Closed), "the oldest is evicted");
        assert_eq!(second.try_recv(), Err(Empty));
        // A connection that ended makes room without evicting another.
        open.leave(second_id);
        let (_, mut fourth) = open.admit();
        assert_eq!(third.try_recv(), Err(Empty));
        assert_eq!(fourth.try_recv(), Err(Empty));
    }
}
