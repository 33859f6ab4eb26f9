//! Checks of `outbound:` routes and of the destination they share with
//! `dead_letter.publish`.

use std::collections::HashSet;
use std::path::Path;

use serde_saphyr::{Location, Spanned};

use super::super::{
    BrokerKind, Config, ConfigError, Database, Destination, DialectChoice, EnvString, Outbound,
    Visibility, Wake,
};
use super::names::{exists, references};
use crate::connection_string::{has_password, postgres_url, with_password};
use crate::template::Template;

pub(super) fn check_outbound(
    path: &Path,
    config: &Config,
    route: &Spanned<Outbound>,
    names: &mut HashSet<EnvString>,
) -> Result<(), ConfigError> {
    let err = |at: &Location, msg: String| ConfigError::at(path, at, msg);
    let r = &route.value;
    let name = &r.name.value;
    references(
        path,
        config,
        &r.name,
        &r.destination.broker,
        &r.database,
        names,
    )?;
    if r.query.value.trim().is_empty() {
        return Err(err(
            &r.query.referenced,
            format!("route {name}: the query is empty"),
        ));
    }
    if r.max_rows == 0 {
        return Err(err(
            &route.referenced,
            format!("route {name}: max_rows must be at least 1"),
        ));
    }
    let who = format!("route {name}");
    if check_destination(path, config, &r.destination, &route.referenced, &who, None)?
        && r.topic_values_add_levels
    {
        return Err(err(
            &route.referenced,
            format!(
                "route {name}: topic_values_add_levels is for MQTT topics; remove it from this AMQP route"
            ),
        ));
    }
    let track_len = r.track.as_ref().map(|t| t.value.0.len()).unwrap_or(0);
    match (&r.track, &r.start) {
        (Some(track), Some(start)) if start.value.0.len() != track_len => {
            return Err(err(
                &start.referenced,
                format!(
                    "route {name}: start has {} values but track names {track_len} columns",
                    start.value.0.len()
                ),
            ));
        }
        (Some(track), None) => {
            return Err(err(
                &track.referenced,
                format!("route {name}: track needs `start:` (the first position, e.g. start: 0)"),
            ));
        }
        (None, Some(start)) => {
            return Err(err(
                &start.referenced,
                format!("route {name}: start is only used with track"),
            ));
        }
        _ => {}
    }
    if track_len == 0 && (r.after_publish.is_some() || r.delay.is_some()) {
        return Err(err(
            &route.referenced,
            format!("route {name}: after_publish and delay need `track:`"),
        ));
    }
    if let Some(v) = r.visibility.as_ref()
        && v.value == Visibility::Snapshot
    {
        if track_len == 0 {
            return Err(err(
                &v.referenced,
                format!(
                    "route {name}: visibility: snapshot holds the position back; it needs `track:`"
                ),
            ));
        }
        let database = r.database.value.as_str();
        if let Some(other) = config
            .databases
            .get(database)
            .and_then(|d| not_postgres(&d.value))
        {
            return Err(err(
                &v.referenced,
                format!(
                    "route {name}: visibility: snapshot needs PostgreSQL, and database {database} is {other}; remove it (or use delay:)"
                ),
            ));
        }
    }
    if r.csv.delimiter == r.csv.quote {
        return Err(err(
            &route.referenced,
            format!("route {name}: csv delimiter and quote must differ"),
        ));
    }
    if let Some(wake) = &r.wake {
        check_wake(path, config, r, wake)?;
    }
    Ok(())
}

/// The database family a database is known, before connecting, to be when it is not
/// PostgreSQL: from a forced `dialect:`, or the driver its connection string names. A DSN
/// or an unknown driver is found out when the route connects.
fn not_postgres(d: &Database) -> Option<&'static str> {
    d.known_dialect()
        .filter(|k| *k != DialectChoice::Postgres)
        .map(dialect_name)
}

/// `wake`: a channel PostgreSQL accepts, on a database known to be PostgreSQL, and a URL
/// for the LISTEN connection (given, or derived from the connection string).
fn check_wake(
    path: &Path,
    config: &Config,
    r: &Outbound,
    wake: &Spanned<Wake>,
) -> Result<(), ConfigError> {
    let err = |at: &Location, msg: String| ConfigError::at(path, at, msg);
    let name = &r.name.value;
    let w = &wake.value;
    if let Err(why) = channel_problem(&w.listen.value) {
        return Err(err(
            &w.listen.referenced,
            format!("route {name}: wake.listen `{}` {why}", w.listen.value),
        ));
    }
    let db_name = r.database.value.as_str();
    let db = &config.databases[db_name].value;
    match (db.known_dialect(), &w.url) {
        (Some(DialectChoice::Postgres), _) | (None, Some(_)) => {}
        (Some(other), _) => {
            return Err(err(
                &wake.referenced,
                format!(
                    "route {name}: wake listens for PostgreSQL notifications, but database {db_name} is {}; \
                     remove wake (the route still polls every interval)",
                    dialect_name(other)
                ),
            ));
        }
        (None, None) => {
            return Err(err(
                &wake.referenced,
                format!(
                    "route {name}: wake needs PostgreSQL, and the configuration does not tell that \
                     database {db_name} is: set `dialect: postgres` on it, or wake.url"
                ),
            ));
        }
    }
    match &w.url {
        Some(url) => {
            let text = url.value.expose();
            if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
                return Err(err(
                    &url.referenced,
                    format!("route {name}: wake.url must start with postgres:// or postgresql://"),
                ));
            }
            if w.password_file.is_some() {
                let problem = if has_password(text) {
                    Some("wake.url has a password and password_file is set: keep one".to_string())
                } else {
                    with_password(text, "x").err()
                };
                if let Some(problem) = problem {
                    return Err(err(&url.referenced, format!("route {name}: {problem}")));
                }
            }
        }
        None => {
            let derived = match &db.connection_string {
                Some(cs) => postgres_url(cs.expose()).map(drop),
                None => Err("a DSN names no host for the LISTEN connection: set wake.url".into()),
            };
            if let Err(why) = derived {
                return Err(err(&wake.referenced, format!("route {name}: wake: {why}")));
            }
        }
    }
    Ok(())
}

/// Why `channel` is not a plain PostgreSQL identifier, if it is not.
fn channel_problem(channel: &str) -> Result<(), &'static str> {
    if channel.is_empty() {
        return Err("is empty");
    }
    if channel.len() > 63 {
        return Err("is longer than 63 bytes, PostgreSQL's limit for a name");
    }
    if !channel
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err("may hold only letters, digits and `_`");
    }
    if channel.as_bytes()[0].is_ascii_digit() {
        return Err("must not start with a digit");
    }
    Ok(())
}

fn dialect_name(d: DialectChoice) -> &'static str {
    match d {
        DialectChoice::Postgres => "PostgreSQL",
        DialectChoice::Mysql => "MySQL/MariaDB",
        DialectChoice::Sqlite => "SQLite",
        DialectChoice::Generic => "a generic ODBC database",
        DialectChoice::Auto => "not PostgreSQL",
    }
}

/// `dead_letter.publish`: a destination whose templates name only what a dead letter has.
pub(super) fn check_mirror(
    path: &Path,
    config: &Config,
    mirror: &Spanned<Destination>,
) -> Result<(), ConfigError> {
    exists(
        path,
        &mirror.value.broker,
        config
            .brokers
            .contains_key(mirror.value.broker.value.as_str()),
        "broker",
        "brokers",
    )?;
    check_destination(
        path,
        config,
        &mirror.value,
        &mirror.referenced,
        "dead_letter.publish",
        Some(&crate::dlq::MIRROR_FIELDS[..]),
    )
    .map(drop)
}

/// The address keys the broker's protocol uses, and templates that parse (naming only
/// `fields`, when given). The broker is known. Returns whether the broker speaks AMQP.
fn check_destination(
    path: &Path,
    config: &Config,
    d: &Destination,
    at: &Location,
    who: &str,
    fields: Option<&[&str]>,
) -> Result<bool, ConfigError> {
    let err = |at: &Location, msg: String| ConfigError::at(path, at, msg);
    let amqp = config.brokers[d.broker.value.as_str()].value.kind() == Some(BrokerKind::Amqp);
    let templates: Vec<&Spanned<EnvString>> = if amqp {
        if let Some(topic) = &d.topic {
            return Err(err(
                &topic.referenced,
                format!(
                    "{who}: topic is for MQTT brokers; an AMQP broker takes exchange and routing_key"
                ),
            ));
        }
        let Some(exchange) = &d.exchange else {
            return Err(err(
                at,
                format!("{who}: set `exchange:` (and optionally routing_key)"),
            ));
        };
        std::iter::once(exchange)
            .chain(d.routing_key.as_ref())
            .collect()
    } else {
        if let Some(x) = d.exchange.as_ref().or(d.routing_key.as_ref()) {
            return Err(err(
                &x.referenced,
                format!(
                    "{who}: exchange and routing_key are for AMQP brokers; an MQTT broker takes topic"
                ),
            ));
        }
        let Some(topic) = &d.topic else {
            return Err(err(
                at,
                format!("{who}: set `topic:` (a template such as alarms/{{device}})"),
            ));
        };
        vec![topic]
    };
    for t in templates {
        let template =
            Template::parse(&t.value).map_err(|e| err(&t.referenced, format!("{who}: {e}")))?;
        if let Some(fields) = fields
            && let Some(bad) = template.columns().find(|c| !fields.contains(c))
        {
            let known: Vec<String> = fields.iter().map(|f| format!("{{{f}}}")).collect();
            return Err(err(
                &t.referenced,
                format!(
                    "{who}: `{{{bad}}}` is not a dead-letter field; use {}",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(amqp)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::super::parse;
    use super::super::check;

    /// The problem `check` finds with one outbound route on a database reached with
    /// `database`, or `None`.
    fn problem(database: &str, route: &str) -> Option<String> {
        let text = format!(
            "brokers:\n  b:\n    url: mqtt://127.0.0.1:1883\ndatabases:\n  d: {database}\noutbound:\n  - name: o\n    database: d\n    broker: b\n    topic: t\n{route}"
        );
        let path = Path::new("c.yaml");
        check(path, &parse(path, &text).expect("parses"))
            .err()
            .map(|e| e.to_string())
    }

    /// The error for an outbound route with `wake` on a database, or `None` if accepted.
    fn wake_error(database: &str, wake: &str) -> Option<String> {
        let text = format!(
            "brokers:\n  b:\n    url: mqtt://127.0.0.1:1883\ndatabases:\n  d:\n{database}\
             outbound:\n  - name: r\n    broker: b\n    topic: t\n    database: d\n    query: SELECT 1\n\
             {wake}"
        );
        let path = Path::new("c.yaml");
        check(path, &parse(path, &text).expect("parses"))
            .err()
            .map(|e| e.to_string())
    }

    const TRACKED: &str =
        "    query: SELECT id FROM t WHERE id > ? ORDER BY id\n    track: id\n    start: 0\n";
    const PG: &str = "{ connection_string: \"Driver={PostgreSQL Unicode};Server=h\" }";

    #[test]
    fn snapshot_visibility_is_taken_on_postgres_and_refused_elsewhere_at_its_line() {
        let snapshot = format!("{TRACKED}    visibility: snapshot\n");
        assert_eq!(problem(PG, &snapshot), None);
        assert_eq!(
            problem("{ dsn: plant }", &snapshot),
            None,
            "found out at run time"
        );
        assert_eq!(
            problem("{ dsn: plant, dialect: postgres }", &snapshot),
            None
        );
        for database in [
            "{ connection_string: \"Driver={MariaDB Unicode};Server=h\" }",
            "{ connection_string: \"DRIVER={SQLite3};Database=x.db\" }",
            "{ dsn: plant, dialect: mysql }",
            "{ dsn: plant, dialect: generic }",
        ] {
            let e = problem(database, &snapshot).expect("refused");
            assert!(e.starts_with("c.yaml:14:"), "{database}: {e}");
            assert!(e.contains("needs PostgreSQL"), "{e}");
        }
        for other in ["default", "none"] {
            let route = format!("{TRACKED}    visibility: {other}\n");
            let database = "{ connection_string: \"Driver={MariaDB Unicode}\" }";
            assert_eq!(problem(database, &route), None, "{other}");
        }
    }

    #[test]
    fn snapshot_visibility_needs_track_and_a_known_value() {
        let untracked = "    query: SELECT id FROM t\n    visibility: snapshot\n";
        let e = problem(PG, untracked).expect("refused");
        assert!(
            e.starts_with("c.yaml:12:") && e.contains("needs `track:`"),
            "{e}"
        );
        let text = format!(
            "databases:\n  d: {PG}\noutbound:\n  - name: o\n    database: d\n    broker: b\n    topic: t\n    query: SELECT 1\n    visibility: serializable\n"
        );
        let e = parse(Path::new("c.yaml"), &text).unwrap_err().to_string();
        assert!(e.starts_with("c.yaml:9:") && e.contains("snapshot"), "{e}");
    }

    const WAKE_PG: &str =
        "    connection_string: Driver={PostgreSQL Unicode};Server=h;Database=d;UID=u;PWD=p\n";

    #[test]
    fn wake_on_postgres_is_accepted_and_elsewhere_refused_with_its_line() {
        assert_eq!(
            wake_error(WAKE_PG, "    wake: { listen: rows_changed }\n"),
            None
        );
        let maria = "    connection_string: Driver={MariaDB Unicode};Server=h;Database=d;UID=u\n";
        let e = wake_error(maria, "    wake: { listen: rows_changed }\n").expect("refused");
        assert!(e.starts_with("c.yaml:13:"), "{e}");
        assert!(
            e.contains("MySQL/MariaDB") && e.contains("remove wake"),
            "{e}"
        );
        let forced = "    connection_string: Driver={X};Server=h\n    dialect: sqlite\n";
        let e = wake_error(forced, "    wake: { listen: c }\n").expect("refused");
        assert!(e.contains("SQLite"), "{e}");
    }

    #[test]
    fn a_database_of_unknown_kind_needs_a_dialect_or_a_url() {
        let dsn = "    dsn: plant\n";
        let e = wake_error(dsn, "    wake: { listen: c }\n").expect("refused");
        assert!(e.contains("dialect: postgres"), "{e}");
        let e = wake_error(
            "    dsn: plant\n    dialect: postgres\n",
            "    wake: { listen: c }\n",
        )
        .expect("refused");
        assert!(e.contains("wake.url"), "{e}");
        assert_eq!(
            wake_error(dsn, "    wake: { listen: c, url: 'postgres://u@h/d' }\n"),
            None
        );
    }

    #[test]
    fn channels_are_plain_identifiers() {
        let long = "c".repeat(64);
        for (channel, why) in [
            ("'a-b'", "letters, digits"),
            ("'a\"b'", "letters, digits"),
            ("''", "empty"),
            ("9lives", "digit"),
            (long.as_str(), "63 bytes"),
        ] {
            let e = wake_error(WAKE_PG, &format!("    wake: {{ listen: {channel} }}\n"))
                .expect(channel);
            assert!(e.starts_with("c.yaml:13:") && e.contains(why), "{e}");
        }
        let longest = "c".repeat(63);
        assert_eq!(
            wake_error(
                WAKE_PG,
                &format!("    wake: {{ listen: _{} }}\n", &longest[1..])
            ),
            None
        );
    }

    #[test]
    fn the_url_and_its_password_file_are_checked() {
        let e =
            wake_error(WAKE_PG, "    wake: { listen: c, url: 'mysql://h/d' }\n").expect("refused");
        assert!(e.contains("postgres://"), "{e}");
        let e = wake_error(
            WAKE_PG,
            "    wake: { listen: c, url: 'postgres://u:pw@h/d', password_file: pw }\n",
        )
        .expect("refused");
        assert!(e.contains("keep one") && !e.contains(":pw@"), "{e}");
        assert_eq!(
            wake_error(
                WAKE_PG,
                "    wake: { listen: c, url: 'postgres://u@h/d', password_file: pw }\n"
            ),
            None
        );
        let e = wake_error(
            "    connection_string: Driver={PostgreSQL Unicode};Database=d\n",
            "    wake: { listen: c }\n",
        )
        .expect("refused");
        assert!(e.contains("Server or Host"), "{e}");
    }
}
