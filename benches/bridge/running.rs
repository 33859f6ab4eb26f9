//! One mqdb process under measurement: its config (with `http.listen` for its counters),
//! its readiness, its counters, and its process figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::{Bridge, free_port, http};
use crate::report::{Sampler, Usage};

pub struct Running {
    pub bridge: Bridge,
    pub config: PathBuf,
    addr: String,
    sampler: Option<Sampler>,
    /// When sampling started: the zero of [`Usage::rss`].
    pub started: Instant,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts `mqdb run` on `body` (brokers, databases, routes) with a private state store
    /// and metrics endpoint, and waits until `/health` says every route is up.
    pub fn start(body: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("bench.yaml");
        std::fs::write(
            &config,
            format!(
                "state: sqlite://{}\nhttp: {{ listen: \"{addr}\" }}\n{body}",
                dir.path().join("state.db").display()
            ),
        )
        .unwrap();
        let bridge = Bridge::start(&config);
        let started = Instant::now();
        let sampler = Sampler::start(bridge.pid().expect("running"));
        let running = Running {
            bridge,
            config,
            addr,
            sampler: Some(sampler),
            started,
            _dir: dir,
        };
        running.wait_healthy();
        running
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while http::try_get(&self.addr, "/health").map(|(s, _)| s) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "mqdb did not become healthy in 60 s:\n{}",
                self.bridge.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A counter of the `bench` route (0 before it first moves).
    pub fn counter(&self, name: &str) -> u64 {
        let Some((200, text)) = http::try_get(&self.addr, "/metrics") else {
            return 0;
        };
        let series = format!("{name}{{route=\"bench\",");
        text.lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    /// Waits until the counter reaches `n`, polling every 10 ms; the instant it was seen.
    pub fn wait_counter(&self, name: &str, n: u64, timeout: Duration) -> Instant {
        self.wait_counters(&[name], n, timeout)
    }

    /// Waits until the counters together reach `n` (rows and dead letters: every message
    /// has ended one way or the other, so a wrong one fails the run instead of hanging it).
    pub fn wait_counters(&self, names: &[&str], n: u64, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            let value: u64 = names.iter().map(|name| self.counter(name)).sum();
            if value >= n {
                return now;
            }
            assert!(
                now < deadline,
                "{names:?} reached only {value} of {n} in {timeout:?}:\n{}",
                self.bridge.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn usage(&self) -> Usage {
        self.sampler.as_ref().expect("sampling").usage()
    }

    /// The dead letters in the state store (`dlq list --json`, one per line).
    pub fn dead_letters(&self) -> usize {
        let out = crate::common::run_mqdb(&[
            "-c",
            self.config.to_str().unwrap(),
            "dlq",
            "list",
            "--json",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .count()
    }

    /// Stops mqdb (SIGTERM, which must exit 0) and returns its process figures.
    pub fn stop(mut self) -> Usage {
        let usage = self.usage();
        let status = self.bridge.terminate();
        assert!(
            status.success(),
            "mqdb exited {status}:\n{}",
            self.bridge.log()
        );
        if let Some(s) = self.sampler.take() {
            s.finish();
        }
        usage
    }
}
