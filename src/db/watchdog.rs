//! The query timeout for paths that go silent. libpq (under psqlODBC) has no read timeout,
//! and ODBC's query timeout there is a server-side `statement_timeout` the server never
//! hears of when the network is frozen: the driver waits in `recv` forever. So the sockets
//! a connection opened are watched, and one that has moved no data either way for longer
//! than the query timeout while the connection is in use is shut down: the driver then
//! fails the call as a lost connection, and the outage handling takes over. (Not "the last
//! data was ours": a path may freeze in the middle of an answer.)
//!
//! A connection waiting for work is not watched: some requests have no answer (MariaDB's
//! statement close), so an idle connection may look like one waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The sockets of one connection, watched while it lives.
pub struct Watch {
    inner: Arc<Inner>,
}

struct Inner {
    /// (descriptor, its `/proc/self/fd` link), so a descriptor closed and reused by
    /// something else is never touched.
    sockets: Vec<(i32, String)>,
    limit: Duration,
    fired: AtomicBool,
    /// Since when the connection is in use; `None` while it waits for work.
    busy_since: Mutex<Option<Instant>>,
}

impl Watch {
    /// Connects with `connect` and watches the TCP sockets to `port` (any port when `None`)
    /// that appeared meanwhile. Connects to one `endpoint` are serialised so that sockets
    /// of two connections opened at once are not mixed up; connects elsewhere are not held
    /// up by a silent one.
    pub fn around<T, E>(
        endpoint: &str,
        port: Option<u16>,
        limit: Duration,
        connect: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, Watch), E> {
        static CONNECTING: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
        let lock = CONNECTING
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(endpoint.to_string())
            .or_default()
            .clone();
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let before = sockets();
        let connected = connect()?;
        let after = sockets();
        drop(guard);
        let new = after
            .into_iter()
            .filter(|(fd, link)| before.get(fd) != Some(link))
            .filter(|(fd, _)| peer_port(*fd).is_some_and(|p| port.is_none_or(|want| want == p)))
            .collect();
        let inner = Arc::new(Inner {
            sockets: new,
            limit,
            fired: AtomicBool::new(false),
            busy_since: Mutex::new(Some(Instant::now())),
        });
        if !inner.sockets.is_empty() {
            register(&inner);
        }
        Ok((connected, Watch { inner }))
    }

    /// A watch on nothing, for a connection without sockets.
    pub fn none() -> Watch {
        Watch {
            inner: Arc::new(Inner {
                sockets: Vec::new(),
                limit: Duration::MAX,
                fired: AtomicBool::new(false),
                busy_since: Mutex::new(None),
            }),
        }
    }

    /// Runs `wait` (waiting for work, not for the database) unwatched.
    pub fn idle<T>(&self, wait: impl FnOnce() -> T) -> T {
        *self.inner.busy() = None;
        let out = wait();
        *self.inner.busy() = Some(Instant::now());
        out
    }

    /// Whether the watch shut the connection down for want of an answer.
    pub fn fired(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }
}

/// The live watches, checked by one thread.
fn register(inner: &Arc<Inner>) {
    static WATCHES: OnceLock<Mutex<Vec<Weak<Inner>>>> = OnceLock::new();
    let mut started = false;
    let watches = WATCHES.get_or_init(|| {
        started = true;
        Mutex::new(Vec::new())
    });
    watches
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::downgrade(inner));
    if started {
        let _ = std::thread::Builder::new()
            .name("odbc-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    let live: Vec<Arc<Inner>> = {
                        let mut list = watches.lock().unwrap_or_else(|e| e.into_inner());
                        list.retain(|w| w.strong_count() > 0);
                        list.iter().filter_map(Weak::upgrade).collect()
                    };
                    for inner in live {
                        inner.check();
                    }
                }
            });
    }
}

impl Inner {
    fn busy(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.busy_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) {
        if self.fired.load(Ordering::SeqCst) {
            return;
        }
        let Some(busy_for) = self.busy().map(|since| since.elapsed()) else {
            return;
        };
        for (fd, link) in &self.sockets {
            if fd_link(*fd).as_ref() != Some(link) {
                continue;
            }
            let waited = quiet_for(*fd).map(|w| w.min(busy_for));
            if waited.is_some_and(|waited| waited >= self.limit) {
                self.fired.store(true, Ordering::SeqCst);
                // SAFETY: the descriptor is still the socket this connection opened (its
                // link names the same inode); shutdown leaves it open for the driver to close.
                unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
            }
        }
    }
}

/// The socket descriptors of this process, with their links.
fn sockets() -> HashMap<i32, String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return HashMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let link = fd_link(fd)?;
            link.starts_with("socket:").then_some((fd, link))
        })
        .collect()
}

fn fd_link(fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The remote port of a connected TCP socket.
fn peer_port(fd: i32) -> Option<u16> {
    // SAFETY: a zeroed sockaddr_storage is valid, and getpeername writes at most `len`.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
            return None;
        }
        match addr.ss_family as i32 {
            libc::AF_INET => {
                let a = &*(&addr as *const _ as *const libc::sockaddr_in);
                Some(u16::from_be(a.sin_port))
            }
            libc::AF_INET6 => {
                let a = &*(&addr as *const _ as *const libc::sockaddr_in6);
                Some(u16::from_be(a.sin6_port))
            }
            _ => None,
        }
    }
}

/// How long the socket has moved no data, either way; `None` when the kernel cannot say.
#[cfg(target_os = "linux")]
fn quiet_for(fd: i32) -> Option<Duration> {
    // SAFETY: a zeroed tcp_info is valid, and getsockopt writes at most `len`.
    let info = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let ok = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        );
        if ok != 0 {
            return None;
        }
        info
    };
    // Both are milliseconds ago.
    let quiet = info.tcpi_last_data_sent.min(info.tcpi_last_data_recv);
    Some(Duration::from_millis(quiet.into()))
}

#[cfg(not(target_os = "linux"))]
fn quiet_for(_fd: i32) -> Option<Duration> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A peer that accepts and never answers, and a watched connection to it.
    fn silent_peer(limit: Duration) -> (TcpListener, TcpStream, Watch) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stream, watch) = Watch::around("peer", Some(port), limit, || {
            TcpStream::connect(("127.0.0.1", port))
        })
        .unwrap();
        (listener, stream, watch)
    }

    #[test]
    fn a_request_left_unanswered_is_cut() {
        let (_peer, mut stream, watch) = silent_peer(Duration::from_millis(300));
        stream.write_all(b"anyone?").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 8];
        let read = stream.read(&mut buf);
        assert!(matches!(read, Ok(0)), "{read:?}");
        assert!(watch.fired());
    }

    #[test]
    fn a_connection_waiting_for_work_is_left_alone() {
        let (_peer, mut stream, watch) = silent_peer(Duration::from_millis(300));
        stream.write_all(b"no answer expected").unwrap();
        watch.idle(|| std::thread::sleep(Duration::from_secs(1)));
        assert!(!watch.fired());
    }
}
