//! MQTT over WebSockets in front of a private Mosquitto, for MQTT 5 over `ws://` and
//! `wss://`: Debian's Mosquitto has no websockets listener and RabbitMQ 3.10 speaks no
//! MQTT 5. The gateway is only a transport (the broker is the real Mosquitto): it accepts the
//! upgrade on one path with the `mqtt` subprotocol, answers `Sec-WebSocket-Protocol: mqtt`,
//! and relays binary frames to and from the broker's TCP port, one broker connection per
//! WebSocket.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::{Message, http};
use futures_lite::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The path MQTT clients use by default.
pub const WS_PATH: &str = "/mqtt";

/// A WebSocket-to-TCP gateway on a free `127.0.0.1` port, serving [`WS_PATH`], on a thread
/// of its own with its own tokio runtime. Dropping it closes the listener and every relayed
/// connection.
pub struct WsGateway {
    pub port: u16,
    pub tls: bool,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Counters {
    upgrades: AtomicU64,
    refused: AtomicU64,
}

impl WsGateway {
    /// Plain `ws://` to `broker`.
    pub fn start(broker: SocketAddr) -> WsGateway {
        WsGateway::spawn(broker, None)
    }

    /// `wss://` to `broker`, serving `server.pem` / `server.key` of `pki` (see `make_pki`:
    /// valid for localhost and 127.0.0.1).
    pub fn start_tls(broker: SocketAddr, pki: &Path) -> WsGateway {
        WsGateway::spawn(broker, Some(acceptor(pki)))
    }

    /// `ws://127.0.0.1:PORT/mqtt` (or `wss://`).
    pub fn url(&self) -> String {
        self.url_with_path(WS_PATH)
    }

    pub fn url_with_path(&self, path: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// WebSocket upgrades accepted so far.
    pub fn upgrades(&self) -> u64 {
        self.counters.upgrades.load(Ordering::SeqCst)
    }

    /// Upgrades refused so far (wrong path or no `mqtt` subprotocol).
    pub fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::SeqCst)
    }

    fn spawn(broker: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> WsGateway {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the gateway");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("gateway local_addr").port();
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel();
        let (c, secure) = (counters.clone(), tls.is_some());
        let thread = std::thread::Builder::new()
            .name(format!("ws-gateway-{port}"))
            .spawn(move || {
                let rt = super::runtime();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        _ = accept_loop(listener, broker, tls, c) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels every relay task, closing its sockets.
            })
            .expect("spawn the gateway thread");
        WsGateway {
            port,
            tls: secure,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for WsGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    broker: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let (tls, counters) = (tls.clone(), counters.clone());
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    // A failed TLS handshake is the client's to report.
                    if let Ok(stream) = acceptor.accept(client).await {
                        serve(stream, broker, &counters).await;
                    }
                }
                None => serve(client, broker, &counters).await,
            }
        });
    }
}

/// Upgrades one connection and relays it to a new connection to `broker`.
async fn serve<S>(stream: S, broker: SocketAddr, counters: &Counters)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let upgraded = async_tungstenite::tokio::accept_hdr_async(stream, check_upgrade).await;
    let Ok(ws) = upgraded else {
        counters.refused.fetch_add(1, Ordering::SeqCst);
        return;
    };
    counters.upgrades.fetch_add(1, Ordering::SeqCst);
    let Ok(tcp) = TcpStream::connect(broker).await else {
        return; // dropping `ws` closes it, as a broker that is down would
    };
    let _ = tcp.set_nodelay(true);
    relay(ws, tcp).await;
}

/// Accepts only [`WS_PATH`] with `mqtt` among the offered subprotocols, and names it in the
/// answer (MQTT clients check that it is there).
#[allow(clippy::result_large_err)] // the signature of tungstenite's handshake callback
fn check_upgrade(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let refuse = |status: u16, why: &str| {
        let mut answer = ErrorResponse::new(Some(why.to_owned()));
        *answer.status_mut() = http::StatusCode::from_u16(status).expect("a status code");
        answer
    };
    if request.uri().path() != WS_PATH {
        return Err(refuse(404, "no such path"));
    }
    let offered = request.headers().get_all("Sec-WebSocket-Protocol");
    let offered = offered.iter().filter_map(|v| v.to_str().ok());
    let mqtt = offered
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "mqtt");
    if !mqtt {
        return Err(refuse(400, "the mqtt subprotocol is required"));
    }
    let protocol = http::HeaderValue::from_static("mqtt");
    response
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol);
    Ok(response)
}

/// Copies binary frames to the broker and the broker's bytes back as binary frames until
/// either side closes.
async fn relay<S>(mut ws: WebSocketStream<TokioAdapter<S>>, mut tcp: TcpStream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Binary(bytes))) => {
                    if tcp.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // Pings are answered by the WebSocket layer; MQTT never travels as text.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                _ => break,
            },
            read = tcp.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    if ws.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
    let closing = ws.close(None);
    let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
}

/// A TLS acceptor for `server.pem` / `server.key` in `pki`.
fn acceptor(pki: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_path = pki.join("server.pem");
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("read {}: {e}", cert_path.display()));
    let key_path = pki.join("server.key");
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", key_path.display()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("the gateway's certificate and key");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
