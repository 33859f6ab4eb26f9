//! Memory under a database outage: MQTT → PostgreSQL at a steady rate while the database
//! is cut off (through a TCP proxy) for a while; mqdb's RSS before, during and after, and
//! every published message a row once the database is back.

use std::time::{Duration, Instant};

use crate::common::{Db, Mosquitto, Publisher, TcpProxy, TempTable, unique};
use crate::load;
use crate::running::Running;

pub struct Outage {
    pub messages: usize,
    pub rate: usize,
    pub outage: Duration,
    /// Peak RSS (kB) before the cut, during it, and until every row was written.
    pub before_kb: u64,
    pub during_kb: u64,
    pub after_kb: u64,
    pub retries: u64,
}

pub fn run(broker: &Mosquitto, rate: usize, steady: Duration, outage: Duration) -> Outage {
    let db = Db::Postgres;
    let table = TempTable::create(&db, "bench_outage", load::columns(&db));
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap());
    let prefix = unique("outage");
    let running = Running::start(&load::inbound_config(
        &format!(
            "{{ url: \"{}\", client_id: \"{}\" }}",
            broker.url(),
            unique("mqdb")
        ),
        &format!("topic: {prefix}/{{site}}/{{device}}\n    qos: 1\n"),
        &db.connection_string_via(proxy.addr().port()),
        &table.name,
        true,
    ));
    let total = steady * 2 + outage;
    let messages = (rate as f64 * total.as_secs_f64()) as usize;
    let port = broker.port;
    let publishing = std::thread::spawn(move || {
        let publisher = Publisher::connect(port);
        let start = Instant::now();
        let tick = Duration::from_millis(100);
        for (k, (topic, payload)) in load::mqtt_messages(&prefix, messages)
            .into_iter()
            .enumerate()
        {
            // Paced: message k leaves at k / rate seconds.
            let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now())
                && wait >= tick / 10
            {
                std::thread::sleep(wait);
            }
            publisher.publish(&topic, 1, payload);
        }
        publisher.wait_confirmed();
    });
    let started = running.started;
    let at = |t: Instant| (t - started).as_secs_f64();
    let cut = Instant::now() + steady;
    std::thread::sleep(steady);
    proxy.set_down(true);
    std::thread::sleep(outage);
    proxy.set_down(false);
    let back = Instant::now();
    publishing.join().expect("publisher");
    let done = running.wait_counters(
        &["mqdb_rows_written_total", "mqdb_dead_letters_total"],
        messages as u64,
        Duration::from_secs(600),
    );
    let retries = running.counter("mqdb_retries_total");
    let usage = running.usage();
    assert_eq!(
        table.count(),
        messages as i64,
        "rows do not reconcile after the outage"
    );
    assert_eq!(
        running.dead_letters(),
        0,
        "an outage must not make dead letters"
    );
    running.stop();
    assert!(retries > 0, "the outage was not noticed");
    Outage {
        messages,
        rate,
        outage,
        before_kb: usage.rss_between(0.0, at(cut)),
        during_kb: usage.rss_between(at(cut), at(back)),
        after_kb: usage.rss_between(at(back), at(done)),
        retries,
    }
}
