//! The optional HTTP endpoint (`http.listen`): `GET /health` and `GET /metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
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
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::app::AppError;
use crate::metrics::{Metrics, Totals};

/// Scrapers are few; more connections than this at once are refused by not accepting.
const MAX_CONNECTIONS: usize = 64;

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
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            _ = stop.changed() => return,
        };
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
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, metrics.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "http connection ended");
            }
            drop(permit);
        });
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
