//! What a reload compares: each block of the configuration file as written, with the
//! contents of the files it names (`password_file`, `ca_file`…), so that a rotated secret
//! counts as a change of its block and nothing else does. Line numbers and key order do
//! not count.

use std::collections::BTreeMap;

use serde_json::Value;

/// The blocks of one configuration file, by name.
#[derive(Default)]
pub(super) struct Layout {
    pub brokers: BTreeMap<String, Value>,
    pub databases: BTreeMap<String, Value>,
    pub inbound: BTreeMap<String, Value>,
    pub outbound: BTreeMap<String, Value>,
    /// `dead_letter`.
    pub dead_letter: Value,
    /// Every other top-level key: settings of the whole process.
    pub process: BTreeMap<String, Value>,
}

impl Layout {
    /// The layout of a validated configuration's text.
    pub fn of(text: &str) -> Layout {
        let Ok(Value::Object(root)) = serde_saphyr::from_str::<Value>(text) else {
            return Layout::default();
        };
        let mut layout = Layout::default();
        for (key, value) in root {
            let value = with_files(value);
            match key.as_str() {
                "brokers" => layout.brokers = named_map(value),
                "databases" => layout.databases = named_map(value),
                "inbound" => layout.inbound = named_list(value),
                "outbound" => layout.outbound = named_list(value),
                "dead_letter" => layout.dead_letter = value,
                _ => {
                    layout.process.insert(key, value);
                }
            }
        }
        layout
    }

    /// An inbound route's block with the blocks it uses. An MQTT route leaves its broker
    /// out: the broker's source is reconnected under the running route.
    pub fn inbound_route(&self, name: &str) -> Value {
        let route = self.inbound.get(name).cloned().unwrap_or(Value::Null);
        let broker = match route.get("queue") {
            Some(_) => self.block_of(&self.brokers, &route, "broker"),
            None => Value::Null,
        };
        let database = self.block_of(&self.databases, &route, "database");
        Value::Array(vec![route, broker, database])
    }

    /// An outbound route's block with its broker's and database's.
    pub fn outbound_route(&self, name: &str) -> Value {
        let route = self.outbound.get(name).cloned().unwrap_or(Value::Null);
        let broker = self.block_of(&self.brokers, &route, "broker");
        let database = self.block_of(&self.databases, &route, "database");
        Value::Array(vec![route, broker, database])
    }

    /// The dead-letter mirror's block with its broker's.
    pub fn mirror(&self) -> Value {
        let publish = self
            .dead_letter
            .get("publish")
            .cloned()
            .unwrap_or(Value::Null);
        let broker = self.block_of(&self.brokers, &publish, "broker");
        Value::Array(vec![publish, broker])
    }

    pub fn broker(&self, name: &str) -> Value {
        self.brokers.get(name).cloned().unwrap_or(Value::Null)
    }

    /// The process-wide keys whose values differ between `self` and `next`.
    pub fn process_changes(&self, next: &Layout) -> Vec<String> {
        let mut keys: Vec<&String> = self.process.keys().chain(next.process.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| self.process.get(*k) != next.process.get(*k))
            .cloned()
            .collect()
    }

    fn block_of(&self, blocks: &BTreeMap<String, Value>, route: &Value, key: &str) -> Value {
        route
            .get(key)
            .and_then(Value::as_str)
            .and_then(|name| blocks.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    }
}

fn named_map(value: Value) -> BTreeMap<String, Value> {
    match value {
        Value::Object(map) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

/// A list of routes by their `name` (validation made the names unique).
fn named_list(value: Value) -> BTreeMap<String, Value> {
    let Value::Array(items) = value else {
        return BTreeMap::new();
    };
    items
        .into_iter()
        .filter_map(|item| Some((item.get("name")?.as_str()?.to_string(), item)))
        .collect()
}

/// `value` with each `…_file` path replaced by the path and what the file holds now.
fn with_files(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, v)| match v {
                    Value::String(path) if key.ends_with("_file") => {
                        let content = serde_json::from_value::<crate::config::EnvString>(
                            Value::String(path.clone()),
                        )
                        .ok()
                        .and_then(|p| std::fs::read(p.as_str()).ok())
                        .map(|bytes| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
                        .unwrap_or(Value::Null);
                        (key, serde_json::json!({ "path": path, "content": content }))
                    }
                    v => (key, with_files(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(with_files).collect()),
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "\
brokers:
  m: { url: mqtt://a:1883 }
  q: { url: amqp://a:5672 }
databases:
  d: { connection: DSN=x }
inbound:
  - { name: r1, broker: m, topic: a/#, database: d, table: t }
  - { name: r2, broker: q, queue: qq, database: d, table: t }
outbound:
  - { name: o1, broker: m, topic: x, database: d, query: SELECT 1 }
";

    #[test]
    fn moving_lines_and_reordering_keys_is_no_change() {
        let a = Layout::of(BASE);
        let moved = format!(
            "\n\n{}",
            BASE.replace(
                "{ name: r1, broker: m, topic: a/#, database: d, table: t }",
                "{ table: t, database: d, topic: a/#, broker: m, name: r1 }"
            )
        );
        let b = Layout::of(&moved);
        assert_eq!(a.inbound_route("r1"), b.inbound_route("r1"));
        assert_eq!(a.outbound_route("o1"), b.outbound_route("o1"));
        assert!(a.process_changes(&b).is_empty());
    }

    #[test]
    fn a_route_changes_with_its_database_and_an_amqp_route_with_its_broker() {
        let a = Layout::of(BASE);
        let db = Layout::of(&BASE.replace("DSN=x", "DSN=y"));
        assert_ne!(a.inbound_route("r1"), db.inbound_route("r1"));
        assert_ne!(a.outbound_route("o1"), db.outbound_route("o1"));
        let broker = Layout::of(&BASE.replace("amqp://a:5672", "amqp://b:5672"));
        assert_ne!(a.inbound_route("r2"), broker.inbound_route("r2"));
        let mqtt = Layout::of(&BASE.replace("mqtt://a:1883", "mqtt://b:1883"));
        // The MQTT route keeps running while its broker's source reconnects.
        assert_eq!(a.inbound_route("r1"), mqtt.inbound_route("r1"));
        assert_ne!(a.broker("m"), mqtt.broker("m"));
        assert_ne!(a.outbound_route("o1"), mqtt.outbound_route("o1"));
    }

    #[test]
    fn process_keys_are_named() {
        let a = Layout::of(BASE);
        let b = Layout::of(&format!("lease: 5s\n{BASE}"));
        assert_eq!(a.process_changes(&b), vec!["lease".to_string()]);
    }

    #[test]
    fn a_secret_file_counts_by_its_content() {
        let dir = std::env::temp_dir().join(format!("mqdb-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("pw");
        std::fs::write(&secret, "one").unwrap();
        let text = BASE.replace(
            "{ url: mqtt://a:1883 }",
            &format!(
                "{{ url: mqtt://a:1883, password_file: {} }}",
                secret.display()
            ),
        );
        let before = Layout::of(&text);
        std::fs::write(&secret, "two").unwrap();
        let after = Layout::of(&text);
        assert_ne!(before.broker("m"), after.broker("m"));
        assert_eq!(before.broker("q"), after.broker("q"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
