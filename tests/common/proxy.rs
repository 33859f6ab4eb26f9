//! A loopback TCP forwarder that can cut the network on demand.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Forwards `127.0.0.1:port` to a target address on plain std threads (one acceptor, two per
/// connection), independent of any tokio runtime.
///
/// [`TcpProxy::set_down`]`(true)` closes every live connection in both directions at once
/// and then accepts-and-drops new ones until set back up: to the client this looks like a
/// server that went away, without touching the shared service itself.
///
/// [`TcpProxy::freeze`]`(true)` instead stops forwarding bytes in both directions and closes
/// nothing: live connections stay open and silent, and new ones are accepted and connected
/// but hear nothing. To the client this is a path whose packets are dropped. Held bytes
/// flow again once unfrozen.
pub struct TcpProxy {
    pub port: u16,
    pub target: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    down: AtomicBool,
    frozen: AtomicBool,
    stopped: AtomicBool,
    next_id: AtomicU64,
    accepted: AtomicU64,
    /// Live connections: (client side, target side), clones used to shut them down.
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

impl Shared {
    fn cut_all(&self) {
        let mut conns = self.conns.lock().unwrap();
        for (_, (client, server)) in conns.drain() {
            cut(&client, &server);
        }
    }
}

impl TcpProxy {
    pub fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy listener");
        let port = listener.local_addr().expect("proxy local_addr").port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(listener, target, s))
            .expect("spawn proxy thread");
        TcpProxy {
            port,
            target,
            shared,
        }
    }

    /// `true`: close every live connection now (both directions) and refuse new ones
    /// (accept, then drop immediately). `false`: forward new connections again.
    pub fn set_down(&self, down: bool) {
        // Set the flag before cutting, under the lock that registration also takes, so no
        // connection set up concurrently survives the cut.
        {
            let _guard = self.shared.conns.lock().unwrap();
            self.shared.down.store(down, Ordering::SeqCst);
        }
        if down {
            self.shared.cut_all();
        }
    }

    /// `true`: forward nothing, in either direction, on any connection, old or new, and
    /// close nothing. `false`: forward again, the held bytes first.
    pub fn freeze(&self, frozen: bool) {
        self.shared.frozen.store(frozen, Ordering::SeqCst);
    }

    pub fn live_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Connections accepted so far (including the ones refused while down).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.down.store(true, Ordering::SeqCst);
        self.shared.cut_all();
        // Wake the acceptor so it sees `stopped` and exits, closing the listener.
        let _ = TcpStream::connect(self.addr());
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.down.load(Ordering::SeqCst) {
            continue; // refused: `client` is dropped, so closed
        }
        let s = shared.clone();
        let _ = std::thread::Builder::new()
            .name("proxy-conn".into())
            .spawn(move || connect_and_forward(client, target, s));
    }
}

fn connect_and_forward(client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(target) else {
        return; // dropping `client` closes it, as the target would have
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut conns = shared.conns.lock().unwrap();
        if shared.down.load(Ordering::SeqCst) {
            return cut(&client, &server);
        }
        let registry = (client.try_clone(), server.try_clone());
        if let (Ok(c), Ok(s)) = registry {
            conns.insert(id, (c, s));
        }
    }
    // Both directions finish -> the last one out removes the registry entry.
    let remaining = Arc::new(AtomicUsize::new(2));
    let (s2, r2) = (shared.clone(), remaining.clone());
    let _ = std::thread::Builder::new()
        .name("proxy-up".into())
        .spawn(move || {
            pump(client2, server2, &s2);
            finish(&s2, &r2, id);
        });
    pump(server, client, &shared);
    finish(&shared, &remaining, id);
}

/// Copies `from` -> `to` until EOF (then half-closes `to`) or an error (then closes both).
/// While frozen it neither reads nor writes, and a chunk read just before is held.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        thaw(shared);
        match from.read(&mut buf) {
            Ok(0) => {
                thaw(shared);
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                thaw(shared);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    cut(&from, &to);
}

/// Waits while the proxy is frozen (and not being dropped).
fn thaw(shared: &Shared) {
    while shared.frozen.load(Ordering::SeqCst) && !shared.stopped.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Closes both streams in both directions.
fn cut(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

fn finish(shared: &Shared, remaining: &AtomicUsize, id: u64) {
    if remaining.fetch_sub(1, Ordering::SeqCst) == 1
        && let Some((c, s)) = shared.conns.lock().unwrap().remove(&id)
    {
        cut(&c, &s);
    }
}
