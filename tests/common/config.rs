//! Typed builders for an `mqdb.yaml`, for tests where the YAML text itself is not under test.
//!
//! A [`Config`] holds the document as JSON values (so numbers stay numbers and every string
//! is quoted) and [`Config::yaml`] writes it as block YAML, one setting a line, in the order
//! the settings were given. A [`Route`] is one `inbound:` or `outbound:` item.
//!
//! ```ignore
//! let config = world
//!     .config(&Db::Postgres)
//!     .inbound(Route::inbound("r", &topic, t).columns(&[("id", "payload.id")]))
//!     .write();
//! ```

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json, json};

#[derive(Clone, Debug, Default)]
pub struct Config {
    root: Map<String, Json>,
    path: Option<PathBuf>,
}

impl Config {
    /// An empty config that [`Config::write`] writes to `path`.
    pub fn at(path: impl Into<PathBuf>) -> Config {
        let path = Some(path.into());
        Config {
            path,
            ..Config::default()
        }
    }

    /// `state:` (e.g. `sqlite:///tmp/x/state.db`).
    pub fn state(self, url: &str) -> Config {
        self.set("state", url)
    }

    /// A broker `name` with its `url`, plus `extra` settings (a JSON object, or `null`).
    pub fn broker(self, name: &str, url: &str, extra: Json) -> Config {
        let mut entry = json!({ "url": url });
        merge(&mut entry, extra);
        self.entry("brokers", name, entry)
    }

    /// A database `name` reached with `connection_string`.
    pub fn database(self, name: &str, connection_string: &str) -> Config {
        let entry = json!({ "connection_string": connection_string });
        self.entry("databases", name, entry)
    }

    pub fn inbound(self, route: Route) -> Config {
        self.push("inbound", route.0)
    }

    pub fn outbound(self, route: Route) -> Config {
        self.push("outbound", route.0)
    }

    /// Any other top-level setting (e.g. `dead_letter`, `http`).
    pub fn set(mut self, key: &str, value: impl Into<Json>) -> Config {
        self.root.insert(key.to_owned(), value.into());
        self
    }

    pub fn yaml(&self) -> String {
        let mut out = String::new();
        emit_map(&self.root, 0, &mut out);
        out
    }

    /// Writes the YAML to the path given to [`Config::at`] and returns that path.
    pub fn write(&self) -> PathBuf {
        let path = self.path.clone().expect("Config::at names the file");
        self.write_to(&path);
        path
    }

    pub fn write_to(&self, path: &Path) {
        let written = std::fs::write(path, self.yaml());
        written.unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn entry(mut self, block: &str, name: &str, value: Json) -> Config {
        let map = self.root.entry(block).or_insert_with(|| json!({}));
        let map = map.as_object_mut().expect("a named block is a map");
        map.insert(name.to_owned(), value);
        self
    }

    fn push(mut self, block: &str, value: Map<String, Json>) -> Config {
        let list = self.root.entry(block).or_insert_with(|| json!([]));
        let list = list.as_array_mut().expect("a route block is a list");
        list.push(Json::Object(value));
        self
    }
}

/// One route: settings in the order given; a later [`Route::set`] of the same key replaces
/// the value in place.
#[derive(Clone, Debug)]
pub struct Route(Map<String, Json>);

impl Route {
    /// A route with only its `name`, for shapes the other constructors do not cover.
    pub fn named(name: &str) -> Route {
        Route(Map::new()).set("name", name)
    }

    /// An inbound route `name` from broker `b` (`topic`, QoS 1) to `table` of database `d`,
    /// JSON payloads.
    pub fn inbound(name: &str, topic: &str, table: &str) -> Route {
        Route::named(name)
            .set("broker", "b")
            .set("topic", topic)
            .set("qos", 1)
            .set("database", "d")
            .set("table", table)
            .set("format", "json")
    }

    /// An outbound route `name` polling `query` on database `d`.
    pub fn outbound(name: &str, query: &str) -> Route {
        Route::named(name).set("database", "d").set("query", query)
    }

    pub fn set(mut self, key: &str, value: impl Into<Json>) -> Route {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// `columns:` from (column, source) pairs; none leaves the block out.
    pub fn columns(self, columns: &[(&str, &str)]) -> Route {
        if columns.is_empty() {
            return self;
        }
        let map = columns
            .iter()
            .map(|(c, s)| ((*c).to_owned(), Json::from(*s)));
        self.set("columns", map.collect::<Map<_, _>>())
    }

    pub fn broker(self, broker: &str) -> Route {
        self.set("broker", broker)
    }

    pub fn topic(self, topic: &str) -> Route {
        self.set("topic", topic)
    }

    pub fn qos(self, qos: u8) -> Route {
        self.set("qos", qos)
    }

    pub fn format(self, format: &str) -> Route {
        self.set("format", format)
    }

    pub fn exchange(self, exchange: &str) -> Route {
        self.set("exchange", exchange)
    }

    pub fn routing_key(self, routing_key: &str) -> Route {
        self.set("routing_key", routing_key)
    }

    pub fn prefetch(self, prefetch: u32) -> Route {
        self.set("prefetch", prefetch)
    }

    /// Outbound: `track: column` and `start: value`.
    pub fn track(self, column: &str, start: impl Into<Json>) -> Route {
        self.set("track", column).set("start", start)
    }

    /// Outbound: the poll `interval` (e.g. `100ms`).
    pub fn interval(self, interval: &str) -> Route {
        self.set("interval", interval)
    }

    /// `batch: { max_rows, max_delay }`.
    pub fn batch(self, max_rows: u32, max_delay: &str) -> Route {
        let batch = json!({ "max_rows": max_rows, "max_delay": max_delay });
        self.set("batch", batch)
    }

    /// `batch: { max_rows }`, keeping a `max_delay` set before.
    pub fn max_rows(mut self, max_rows: u32) -> Route {
        let batch = self.0.entry("batch").or_insert_with(|| json!({}));
        let batch = batch.as_object_mut().expect("batch is a map");
        batch.insert("max_rows".into(), max_rows.into());
        self
    }

    /// `on_conflict: rule` with its `key` columns (none for `error`).
    pub fn on_conflict(self, rule: &str, key: &[&str]) -> Route {
        let route = self.set("on_conflict", rule);
        if key.is_empty() {
            return route;
        }
        route.set("key", key)
    }

    /// Settings written as `key: value` lines (a scalar or a flow collection per line), for
    /// call sites that list a route's options compactly.
    pub fn lines(mut self, lines: &[&str]) -> Route {
        self.0.extend(settings(lines));
        self
    }

    /// A nested block `key:` (e.g. `csv`) from `key: value` lines; none leaves it out.
    pub fn block(self, key: &str, lines: &[&str]) -> Route {
        if lines.is_empty() {
            return self;
        }
        self.set(key, settings(lines))
    }
}

/// Settings written as `key: value` lines, as a map (each value parsed as YAML).
pub fn settings(lines: &[&str]) -> Map<String, Json> {
    let setting = |line: &&str| {
        let pair = line.split_once(':');
        let (key, value) = pair.unwrap_or_else(|| panic!("{line:?} is not `key: value`"));
        let value: Result<Json, _> = serde_saphyr::from_str(value.trim());
        let value = value.unwrap_or_else(|e| panic!("{line:?}: the value is not YAML: {e}"));
        (key.trim().to_owned(), value)
    };
    lines.iter().map(setting).collect()
}

fn merge(target: &mut Json, extra: Json) {
    if let (Json::Object(t), Json::Object(e)) = (target, extra) {
        t.extend(e);
    }
}

fn emit_map(map: &Map<String, Json>, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (key, value) in map {
        match value {
            Json::Object(inner) if !inner.is_empty() => {
                out.push_str(&format!("{pad}{key}:\n"));
                emit_map(inner, indent + 2, out);
            }
            Json::Array(items) if !items.is_empty() => {
                out.push_str(&format!("{pad}{key}:\n"));
                emit_list(items, indent + 2, out);
            }
            scalar => out.push_str(&format!("{pad}{key}: {scalar}\n")),
        }
    }
}

fn emit_list(items: &[Json], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for item in items {
        match item {
            Json::Object(inner) if !inner.is_empty() => {
                // The first key shares the line with the dash; the rest align under it.
                let mut body = String::new();
                emit_map(inner, indent + 2, &mut body);
                out.push_str(&format!("{pad}- {}", &body[indent + 2..]));
            }
            scalar => out.push_str(&format!("{pad}- {scalar}\n")),
        }
    }
}
