//! Cross-checks that serde cannot express: references between blocks, filter and mapping
//! syntax, and settings that only make sense together.

use std::collections::HashSet;
use std::path::Path;

use super::size;
use super::{Config, ConfigError};

mod inbound;
mod names;
mod outbound;
mod shared;

use inbound::check_inbound;
use outbound::{check_mirror, check_outbound};
use shared::check_shared;

pub fn check(path: &Path, config: &Config) -> Result<(), ConfigError> {
    let err = |at: &serde_saphyr::Location, msg: String| ConfigError::at(path, at, msg);
    check_shared(path, config)?;

    for (name, broker) in &config.brokers {
        let url = broker.value.url.value.as_str();
        if broker.value.kind().is_none() {
            return Err(err(
                &broker.value.url.referenced,
                format!(
                    "broker {name}: url `{}` must start with mqtt://, mqtts://, ws://, wss://, amqp:// or amqps://",
                    crate::net::url::redacted(url)
                ),
            ));
        }
        if let Some(plain @ ("mqtt" | "amqp" | "ws")) = url.split_once("://").map(|(s, _)| s)
            && broker.value.tls.is_some()
        {
            return Err(err(
                &broker.value.url.referenced,
                format!(
                    "broker {name}: a tls block needs a TLS url: write {plain}s:// instead of \
                     {plain}:// (with {plain}:// the connection, credentials included, is plain text)"
                ),
            ));
        }
        if let Some(proxy) = &broker.value.proxy {
            let value = proxy.value.expose();
            let problem = match crate::net::HttpProxy::parse(value) {
                // Empty (`${PROXY_URL:-}` unset) means direct, as `none` does.
                _ if value.trim().is_empty() || value.trim().eq_ignore_ascii_case("none") => None,
                Err(e) => Some(e),
                Ok(p) if p.password.is_some() && broker.value.proxy_password_file.is_some() => {
                    Some(
                        "the proxy URL has a password and proxy_password_file is set: keep one"
                            .into(),
                    )
                }
                Ok(_) => None,
            };
            if let Some(problem) = problem {
                return Err(err(&proxy.referenced, format!("broker {name}: {problem}")));
            }
        } else if broker.value.proxy_password_file.is_some() {
            return Err(err(
                &broker.referenced,
                format!(
                    "broker {name}: proxy_password_file needs proxy: http://user@host:port \
                     (a proxy from the environment carries its own credentials)"
                ),
            ));
        }
        if broker.value.password.is_some() && broker.value.password_file.is_some() {
            return Err(err(
                &broker.referenced,
                format!("broker {name}: set password or password_file, not both"),
            ));
        }
        if broker.value.max_in_flight == 0 {
            return Err(err(
                &broker.referenced,
                format!("broker {name}: max_in_flight must be at least 1"),
            ));
        }
        let b = &broker.value;
        if b.max_message_bytes == 0 || b.max_message_bytes > size::MQTT_MAX_PACKET {
            return Err(err(
                &broker.referenced,
                format!(
                    "broker {name}: max_message_bytes must be between 1 and {} (256 MiB, MQTT's own limit)",
                    size::MQTT_MAX_PACKET
                ),
            ));
        }
        if b.max_in_flight_bytes < b.max_message_bytes
            || b.max_in_flight_bytes > u64::from(u32::MAX)
        {
            return Err(err(
                &broker.referenced,
                format!(
                    "broker {name}: max_in_flight_bytes ({}) must be at least max_message_bytes ({}) and below 4 GiB",
                    size::describe(b.max_in_flight_bytes),
                    size::describe(b.max_message_bytes)
                ),
            ));
        }
    }

    for (name, db) in &config.databases {
        let d = &db.value;
        if d.connection_string.is_some() == d.dsn.is_some() {
            return Err(err(
                &db.referenced,
                format!("database {name}: set exactly one of connection_string or dsn"),
            ));
        }
        if d.password.is_some() && d.password_file.is_some() {
            return Err(err(
                &db.referenced,
                format!("database {name}: set password or password_file, not both"),
            ));
        }
    }

    let mut names = HashSet::new();
    for route in &config.inbound {
        check_inbound(path, config, route, &mut names)?;
    }
    for route in &config.outbound {
        check_outbound(path, config, route, &mut names)?;
    }
    if let Some(mirror) = config.dead_letter.as_ref().and_then(|d| d.publish.as_ref()) {
        check_mirror(path, config, mirror)?;
    }
    if let Some(http) = &config.http
        && let Err(e) = http.addr()
    {
        return Err(ConfigError::at(path, &http.listen.referenced, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    const BASE: &str = "brokers:\n  b:\n    url: mqtt://127.0.0.1:1883\ndatabases:\n  d:\n    connection_string: x\n";

    fn problem(routes: &str) -> ConfigError {
        let text = format!("{BASE}inbound:\n{routes}");
        let path = Path::new("c.yaml");
        let config = parse(path, &text).unwrap();
        check(path, &config).unwrap_err()
    }

    #[test]
    fn shared_store_settings_are_checked_where_they_are_written() {
        let path = Path::new("c.yaml");
        let error = |root: &str| {
            let text = format!("{root}{BASE}");
            check(path, &parse(path, &text).unwrap())
                .err()
                .map(|e| e.to_string())
        };
        let bad_name = error("instance: 'a b'\n").expect("refused");
        assert!(
            bad_name.starts_with("c.yaml:1:") && bad_name.contains("bridge-1"),
            "{bad_name}"
        );
        let file_for_sqlite =
            error("state: sqlite://s.db\nstate_password_file: pw\n").expect("refused");
        assert!(
            file_for_sqlite.starts_with("c.yaml:1:"),
            "{file_for_sqlite}"
        );
        let both =
            error("state: postgres://u:pw@h/db\nstate_password_file: pw\n").expect("refused");
        assert!(
            both.contains("keep one") && !both.contains(":pw@"),
            "{both}"
        );
        let scheme = error("state: mysql://h/db\n").expect("refused");
        assert!(scheme.contains("postgres://user@host"), "{scheme}");
        let short = error("lease: 500ms\n").expect("refused");
        assert!(short.contains("lease: must be at least 1s"), "{short}");
        assert_eq!(
            error(
                "instance: bridge-1.eu_west\nlease: 3s\nstate: postgres://u@h/db\nstate_password_file: pw\n"
            ),
            None
        );
    }

    #[test]
    fn unknown_references_name_their_line() {
        let e =
            problem("  - name: r\n    broker: nope\n    topic: a\n    database: d\n    table: t\n");
        assert_eq!(e.line, Some(9), "{e}");
        assert!(e.message.contains("broker `nope` is not defined"), "{e}");
    }

    #[test]
    fn mapping_sources_are_checked() {
        let e = problem(
            "  - name: r\n    broker: b\n    topic: a/{x}\n    database: d\n    table: t\n    columns:\n      c: topic.y\n",
        );
        assert_eq!(e.line, Some(14), "{e}");
    }

    #[test]
    fn rows_and_the_sources_of_its_elements_are_checked() {
        let route = "  - name: r\n    broker: b\n    topic: a\n    database: d\n    table: t\n";
        let refused = |extra: &str, line: u64, words: &[&str]| {
            let e = problem(&format!("{route}{extra}"));
            assert_eq!(e.line, Some(line), "{e}");
            assert!(e.to_string().starts_with(&format!("c.yaml:{line}:")), "{e}");
            for w in words {
                assert!(e.message.contains(w), "{w} not in {e}");
            }
        };
        // Element sources without `rows:` say how to get one.
        refused(
            "    columns:\n      v: item.v\n",
            14,
            &["item.v", "set `rows:`"],
        );
        refused(
            "    columns:\n      i: meta.index\n",
            14,
            &["meta.index", "set `rows:`"],
        );
        refused("    rows: readings\n", 13, &["payload.KEY.PATH"]);
        refused("    rows: payload..x\n", 13, &["empty path segment"]);
        refused(
            "    format: csv\n    rows: payload.x\n",
            14,
            &["needs format: json"],
        );
        refused(
            "    rows: payload.list\n    columns:\n      whole: payload\n",
            15,
            &["use `item`"],
        );
        refused(
            "    rows: payload.list\n    columns:\n      v: item..v\n",
            15,
            &["empty path segment"],
        );
        let text = format!(
            "{BASE}inbound:\n{route}    rows: payload.list\n    columns:\n      v: item.a.b\n      i: meta.index\n      e: item\n      s: payload.site\n"
        );
        let path = Path::new("c.yaml");
        check(path, &parse(path, &text).unwrap()).unwrap();
    }

    #[test]
    fn a_tls_block_on_a_plain_url_is_refused() {
        let path = Path::new("c.yaml");
        for (url, plain) in [("mqtt://h:1883", "mqtt"), ("amqp://h:5672/%2f", "amqp")] {
            let text = format!(
                "brokers:\n  b:\n    url: {url}\n    tls: {{ ca_file: ca.pem }}\ndatabases:\n  d:\n    connection_string: x\n"
            );
            let e = check(path, &parse(path, &text).unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("c.yaml:3:"), "{e}");
            assert!(e.contains(&format!("write {plain}s://")), "{e}");
        }
        let secure = "brokers:\n  b:\n    url: mqtts://h:8883\n    tls: { ca_file: ca.pem }\ndatabases:\n  d:\n    connection_string: x\n";
        assert!(check(path, &parse(path, secure).unwrap()).is_ok());
    }

    #[test]
    fn proxy_settings_are_checked_where_they_are_written() {
        let path = Path::new("c.yaml");
        let error = |broker: &str| {
            let text = format!(
                "brokers:\n  b:\n    url: wss://h/mqtt\n{broker}databases:\n  d:\n    connection_string: x\n"
            );
            check(path, &parse(path, &text).unwrap())
                .err()
                .map(|e| e.to_string())
        };
        let socks = error("    proxy: socks5://u:secret@p:1080\n").expect("refused");
        assert!(
            socks.starts_with("c.yaml:4:") && socks.contains("socks5"),
            "{socks}"
        );
        assert!(!socks.contains("secret"), "{socks}");
        let both = error("    proxy: http://u:pw@p:3128\n    proxy_password_file: f\n");
        assert!(both.is_some_and(|e| e.contains("keep one")));
        let alone = error("    proxy_password_file: f\n").expect("refused");
        assert!(alone.contains("proxy_password_file needs proxy"), "{alone}");
        for fine in [
            "    proxy: none\n",
            "    proxy: ''\n",
            "    proxy: http://u@p:3128\n",
        ] {
            assert_eq!(error(fine), None, "{fine}");
        }
    }

    #[test]
    fn topic_values_add_levels_is_for_mqtt_routes_only() {
        let path = Path::new("c.yaml");
        let text = |url: &str, target: &str| {
            format!(
                "brokers:\n  b:\n    url: {url}\ndatabases:\n  d:\n    connection_string: x\noutbound:\n  - name: o\n    database: d\n    query: SELECT 1\n    broker: b\n    {target}\n    topic_values_add_levels: true\n"
            )
        };
        let amqp = text("amqp://h:5672/%2f", "exchange: x");
        let e = check(path, &parse(path, &amqp).unwrap()).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(
            e.message.contains("topic_values_add_levels is for MQTT"),
            "{e}"
        );
        let mqtt = text("mqtt://h:1883", "topic: a/{x}");
        assert!(check(path, &parse(path, &mqtt).unwrap()).is_ok());
    }

    #[test]
    fn conflict_modes_need_keys() {
        let e = problem(
            "  - name: r\n    broker: b\n    topic: a\n    database: d\n    table: t\n    on_conflict: ignore\n",
        );
        assert!(e.message.contains("needs `key:`"), "{e}");
    }

    #[test]
    fn outbound_routes_and_the_mirror_check_their_destination_alike() {
        let path = Path::new("c.yaml");
        let base = "brokers:\n  m:\n    url: mqtt://h:1883\n  a:\n    url: amqp://h:5672/%2f\ndatabases:\n  d:\n    connection_string: x\n";
        let route = |dest: &str| {
            format!("{base}outbound:\n  - {{ name: o, database: d, query: SELECT 1, {dest} }}\n")
        };
        let mirror = |dest: &str| format!("{base}dead_letter:\n  publish: {{ {dest} }}\n");
        let cases = [
            (
                "broker: m, exchange: x",
                "exchange and routing_key are for AMQP brokers",
            ),
            ("broker: m", "set `topic:`"),
            ("broker: a, topic: t", "topic is for MQTT brokers"),
            ("broker: a", "set `exchange:`"),
            ("broker: m, topic: \"a/{x\"", "{"),
        ];
        for (dest, want) in cases {
            for (text, who) in [
                (route(dest), "route o: "),
                (mirror(dest), "dead_letter.publish: "),
            ] {
                let e = check(path, &parse(path, &text).unwrap()).unwrap_err();
                assert!(e.message.starts_with(who), "{dest}: {e}");
                assert!(e.message.contains(want), "{dest}: {e}");
            }
        }
        let e = check(
            path,
            &parse(path, &mirror("broker: m, topic: \"x/{device}\"")).unwrap(),
        )
        .unwrap_err();
        assert!(
            e.message.contains("`{device}` is not a dead-letter field"),
            "{e}"
        );
        let retained = mirror("broker: m, topic: \"x/{route}\", qos: 2, retain: true");
        let config = parse(path, &retained).unwrap();
        check(path, &config).unwrap();
        let to = &config.dead_letter.unwrap().publish.unwrap().value;
        assert!(to.retain && to.qos == super::super::Qos::ExactlyOnce);
    }
}
