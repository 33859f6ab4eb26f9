//! What the demo writes: the database's schema and the configuration file.

use std::net::SocketAddr;
use std::path::Path;

pub const SCHEMA: [&str; 3] = [
    "CREATE TABLE devices (id TEXT PRIMARY KEY, site TEXT NOT NULL)",
    "CREATE TABLE readings (id INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL, \
     device TEXT NOT NULL, celsius REAL, measured_at TIMESTAMP, received_at TIMESTAMP)",
    // A foreign key would need a pragma on every connection; a trigger always holds.
    "CREATE TRIGGER readings_registered BEFORE INSERT ON readings \
     WHEN NOT EXISTS (SELECT 1 FROM devices WHERE id = NEW.device) \
     BEGIN SELECT RAISE(ABORT, 'device is not registered in devices'); END",
];

pub fn config_text(dir: &Path, broker: SocketAddr, connection_string: &str) -> String {
    // `$` starts a variable in the config file.
    let state = format!("sqlite://{}", dir.join("state.db").display()).replace('$', "$$");
    let connection_string = connection_string.replace('$', "$$").replace('"', "\\\"");
    format!(
        r#"# Written by `mqdb demo`. Its broker lived inside the demo: to run this file with
# `mqdb -c THIS_FILE run`, point brokers.demo.url at a broker of yours
# (e.g. mqtt://127.0.0.1:1883).
state: {state}

brokers:
  demo:
    url: mqtt://{broker}
    client_id: mqdb-demo

databases:
  demo:
    connection_string: "{connection_string}"

inbound:
  - name: readings
    broker: demo
    topic: sensors/{{site}}/{{device}}/temperature
    qos: 1
    database: demo
    table: readings
    columns:
      site: topic.site
      device: topic.device
      celsius: payload.value
      measured_at: payload.ts
      received_at: meta.received_at
    batch: {{ max_rows: 100, max_delay: 50ms }}

outbound:
  - name: heat_alerts
    database: demo
    query: SELECT id, site, device, celsius, measured_at FROM readings WHERE id > ? AND celsius > 30 ORDER BY id
    track: id
    start: 0
    interval: 200ms
    broker: demo
    topic: alerts/{{site}}/{{device}}
    qos: 1
"#
    )
}
