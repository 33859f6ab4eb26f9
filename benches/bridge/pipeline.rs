//! mqdb's inbound pipeline with the broker not limiting: the route loop of `mqdb run`
//! (decode, map, batch, the database thread, acknowledgements) fed from memory as fast as
//! it takes messages, into each database, against that driver's raw insert ceiling.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use chrono::Utc;
use mqdb::db::worker;
use mqdb::inbound::InboundRoute;
use mqdb::message::{AckHandle, Message, Origin};
use mqdb::metrics::{Kind, Metrics};
use mqdb::state::State;
use tokio::sync::{mpsc, watch};

use crate::common::{Db, StateStore, TempTable};
use crate::load;
use crate::report::Usage;

/// Messages handed to the route before their rows are committed, as `max_in_flight` does.
const IN_FLIGHT: usize = 10_000;

/// The rate from the first message handed over to the last acknowledgement, and the CPU
/// seconds the whole process used (the feed is a small part).
pub fn run(db: &Db, n: usize) -> (f64, Usage) {
    let table = TempTable::create(db, "bench_pipe", load::columns(db));
    let dir = tempfile::tempdir().unwrap();
    let state = StateStore::sqlite_in(dir.path()).url();
    let config = load::offline_route(dir.path(), db, &table.name, "pipe", &state);
    let messages = load::mqtt_messages("pipe", n);
    let before = cpu_seconds();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rate = runtime.block_on(async move {
        let config = mqdb::config::load(&config).expect("config");
        let plan = mqdb::routes::inbound_plans(&config).unwrap().remove(0);
        let specs = mqdb::app::db_specs(&config).unwrap();
        let state = State::open(config.state.value.as_str()).await.unwrap();
        let metrics = Metrics::new().route("bench", Kind::Inbound, "src", "db");
        let stop = Arc::new(AtomicBool::new(false));
        let sink = worker::start(
            specs["db"].clone(),
            plan.target.clone(),
            stop,
            metrics.clone(),
        )
        .await
        .expect("database reached");
        let route = InboundRoute::new(&plan, sink, state, metrics);
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let (done_tx, mut done_rx) = mpsc::channel(IN_FLIGHT);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let running = tokio::spawn(route.run(rx, stop_rx));
        let broker: Arc<str> = Arc::from("src");
        let start = Instant::now();
        tokio::spawn(async move {
            for (seq, (topic, payload)) in messages.into_iter().enumerate() {
                let message = Message {
                    topic,
                    payload: payload.into(),
                    received_at: Utc::now(),
                    broker: broker.clone(),
                    origin: Origin::Mqtt {
                        qos: 1,
                        retain: false,
                    },
                    headers: Default::default(),
                    ack: AckHandle::new(seq as u64, done_tx.clone()),
                };
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        let mut acked = 0;
        while acked < n {
            let seqs: Vec<u64> = tokio::time::timeout(Duration::from_secs(120), done_rx.recv())
                .await
                .expect("acknowledgements keep coming")
                .expect("the route is running");
            acked += seqs.len();
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        running.abort();
        rate
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(
        table.count(),
        n as i64,
        "rows do not reconcile with messages"
    );
    let usage = Usage {
        peak_rss_kb: 0,
        cpu_s: cpu_seconds() - before,
        rss: Vec::new(),
    };
    (rate, usage)
}

/// CPU seconds this process has used so far.
fn cpu_seconds() -> f64 {
    crate::report::read_proc(std::process::id()).map_or(0.0, |(_, _, cpu)| cpu)
}
