//! Scale-out: one shared MQTT subscription (`share:`) run by one, two and three instances
//! on a PostgreSQL state store, from the first publish to the last row committed, against
//! the bare subscriber; and how long an outbound route takes to fail over after its
//! holder is SIGKILLed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::clients;
use crate::common::{
    Bridge, Db, Mosquitto, StateStore, Subscriber, TempTable, free_port, http, unique,
};
use crate::load;

/// Several `mqdb run` processes on one configuration body, each with its instance name
/// and metrics endpoint.
struct Instances {
    bridges: Vec<Bridge>,
    addrs: Vec<String>,
    configs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Instances {
    fn start(store: &StateStore, body: &str, k: usize) -> Instances {
        let dir = tempfile::tempdir().unwrap();
        let (mut bridges, mut addrs, mut configs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 1..=k {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.path().join(format!("mqdb-i{i}.yaml"));
            let text = format!(
                "state: {}\ninstance: i{i}\nhttp: {{ listen: \"{addr}\" }}\n{body}",
                store.url()
            );
            std::fs::write(&config, text).unwrap();
            bridges.push(Bridge::start(&config));
            addrs.push(addr);
            configs.push(config);
        }
        let instances = Instances {
            bridges,
            addrs,
            configs,
            _dir: dir,
        };
        for (bridge, addr) in instances.bridges.iter().zip(&instances.addrs) {
            let deadline = Instant::now() + Duration::from_secs(60);
            while http::try_get(addr, "/health").map(|(s, _)| s) != Some(200) {
                assert!(Instant::now() < deadline, "not healthy:\n{}", bridge.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        instances
    }

    /// The `bench` route's counter, summed over the instances.
    fn counter(&self, name: &str) -> u64 {
        let series = format!("{name}{{route=\"bench\",");
        self.addrs
            .iter()
            .filter_map(|addr| http::try_get(addr, "/metrics"))
            .filter_map(|(_, text)| {
                let line = text.lines().find(|l| l.starts_with(&series))?.to_string();
                line.rsplit(' ').next()?.parse::<f64>().ok()
            })
            .sum::<f64>() as u64
    }

    fn stop(mut self) {
        for bridge in &mut self.bridges {
            assert!(bridge.terminate().success(), "{}", bridge.log());
        }
    }
}

/// MQTT → PostgreSQL through a shared subscription run by `k` instances.
pub fn shared(broker: &Mosquitto, n: usize, k: usize) -> f64 {
    let store = StateStore::postgres();
    let table = TempTable::create(&Db::Postgres, "bench_scale", load::columns(&Db::Postgres));
    let prefix = unique("scale");
    let block = format!(
        "{{ url: \"{}\", client_id: \"{}\" }}",
        broker.url(),
        unique("mqdb")
    );
    let source = format!("topic: {prefix}/{{site}}/{{device}}\n    share: bench\n    qos: 1\n");
    let body = load::inbound_config(
        &block,
        &source,
        &Db::Postgres.connection_string(),
        &table.name,
        true,
    );
    let instances = Instances::start(&store, &body, k);
    let port = broker.port;
    let start = Instant::now();
    let publishing = std::thread::spawn(move || {
        clients::mqtt_publish(port, load::mqtt_messages(&prefix, n).into_iter(), 1000)
    });
    let deadline = start + Duration::from_secs(900);
    let done = loop {
        let now = Instant::now();
        let ended = instances.counter("mqdb_rows_written_total")
            + instances.counter("mqdb_dead_letters_total");
        if ended >= n as u64 {
            break now;
        }
        assert!(now < deadline, "only {ended} of {n} rows");
        std::thread::sleep(Duration::from_millis(10));
    };
    publishing.join().expect("publisher");
    assert_eq!(table.count(), n as i64, "rows do not reconcile");
    instances.stop();
    n as f64 / (done - start).as_secs_f64()
}

/// An outbound route (interval 1 s, the default 10 s lease) on two instances: the time from
/// SIGKILLing its holder to the next row reaching a subscriber.
pub fn takeover(broker: &Mosquitto) -> Duration {
    let store = StateStore::postgres();
    let table = TempTable::create(
        &Db::Postgres,
        "bench_takeover",
        "id INTEGER PRIMARY KEY, v TEXT",
    );
    let topic = unique("takeover");
    let body = format!(
        r#"brokers:
  src: {{ url: "{url}", client_id: "{id}" }}
databases:
  db: {{ connection_string: "{cs}" }}
outbound:
  - name: bench
    database: db
    query: SELECT id, v FROM {t} WHERE id > ? ORDER BY id
    track: id
    start: 0
    interval: 1s
    broker: src
    topic: {topic}
    qos: 1
"#,
        url = broker.url(),
        id = unique("mqdb"),
        cs = Db::Postgres.connection_string(),
        t = table.name,
    );
    let mut instances = Instances::start(&store, &body, 2);
    let subscriber = Subscriber::connect(broker.port, &topic, 1);
    let insert =
        |id: i64| Db::Postgres.exec(&format!("INSERT INTO {} VALUES ({id}, 'r')", table.name));
    insert(1);
    subscriber.wait_for(1, Duration::from_secs(60));
    let holder = instances
        .bridges
        .iter()
        .position(|b| b.log().contains("lease taken lease=outbound:bench"))
        .expect("one instance holds the route");
    instances.bridges[holder].kill();
    let killed = Instant::now();
    insert(2);
    subscriber.wait_for(2, Duration::from_secs(120));
    let took = killed.elapsed();
    instances.bridges.remove(holder);
    instances.configs.remove(holder);
    instances.addrs.remove(holder);
    instances.stop();
    took
}
