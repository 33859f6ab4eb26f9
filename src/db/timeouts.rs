//! `connect_timeout` and `query_timeout` in the words each driver understands, and the
//! error a timeout becomes.
//!
//! What the drivers honour when the path goes silent (packets dropped, or a server that
//! stops answering):
//! - psqlODBC: the ODBC login timeout bounds a connect. Its query timeout is a server-side
//!   `statement_timeout`, useless when the server hears nothing, and libpq has no read
//!   timeout; TCP keepalives and `tcp_user_timeout` (through `pqopt`) catch a path that
//!   drops packets, the [`super::watchdog`] a peer that takes bytes and never answers.
//! - MariaDB Connector/ODBC: ignores the ODBC login timeout; `CONN_TIMEOUT` bounds a
//!   connect and `READ_TIMEOUT` / `WRITE_TIMEOUT` a statement (error 2013, SQLSTATE 08S01).
//! - SQLite ODBC: no network; `Timeout` (ms) is how long a statement waits for a lock.

use std::time::Duration;

use crate::error::DbError;

/// The connection string with the driver's own timeout options added, unless the user set
/// them.
pub fn with_driver_options(connection_string: &str, connect: Duration, query: Duration) -> String {
    let mut cs = connection_string.trim().trim_end_matches(';').to_string();
    let lower = cs.to_ascii_lowercase();
    let attributes = super::attributes(connection_string);
    let has = |key: &str| {
        attributes
            .iter()
            .any(|(k, _, _)| k.trim().eq_ignore_ascii_case(key))
    };
    let secs = |d: Duration| d.as_secs().max(1);
    let q = secs(query);
    if lower.contains("postgres") {
        // libpq rejects keepalive settings given twice (`pqopt` and psqlODBC's own).
        if !has("pqopt") && !has("KeepaliveTime") && !has("KeepaliveInterval") {
            cs.push_str(&format!(
                ";pqopt={{keepalives=1 keepalives_idle={} keepalives_interval={} \
                 keepalives_count=3 tcp_user_timeout={}}}",
                (q / 3).max(1),
                (q / 6).max(1),
                q * 1000
            ));
        }
    } else if lower.contains("maria") || lower.contains("mysql") {
        if !has("CONN_TIMEOUT") {
            cs.push_str(&format!(";CONN_TIMEOUT={}", secs(connect)));
        }
        // A little later than the watchdog, whose message says what happened; this is for
        // the sockets it cannot see.
        for key in ["READ_TIMEOUT", "WRITE_TIMEOUT"] {
            if !has(key) {
                cs.push_str(&format!(";{key}={}", q + 2));
            }
        }
    } else if lower.contains("sqlite") && !has("Timeout") {
        cs.push_str(&format!(";Timeout={}", query.as_millis().max(1)));
    }
    cs.push(';');
    cs
}

/// A database without a network (SQLite): no sockets to watch, and none of another
/// connection's to take for its own.
pub fn is_local(connection_string: &str) -> bool {
    super::attributes(connection_string)
        .iter()
        .any(|(k, _, v)| {
            k.trim().eq_ignore_ascii_case("Driver") && v.to_ascii_lowercase().contains("sqlite")
        })
}

/// `host:port` of the server, or the DSN it is reached by.
pub fn endpoint(connection_string: &str) -> String {
    let attrs = super::attributes(connection_string);
    let value = |keys: &[&str]| {
        attrs
            .iter()
            .find(|(k, _, _)| keys.iter().any(|key| k.trim().eq_ignore_ascii_case(key)))
            .map(|(_, _, v)| v.clone())
    };
    let host = value(&["Server", "Host", "Servername"]);
    match (host, port(connection_string)) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h,
        (None, _) => value(&["DSN"])
            .map(|d| format!("DSN {d}"))
            .unwrap_or_else(|| "the database".into()),
    }
}

/// The server's TCP port: the `Port` attribute, else the default of the driver named.
pub fn port(connection_string: &str) -> Option<u16> {
    let attrs = super::attributes(connection_string);
    if let Some((_, _, v)) = attrs
        .iter()
        .find(|(k, _, _)| k.trim().eq_ignore_ascii_case("Port"))
    {
        return v.trim().parse().ok();
    }
    let driver = attrs
        .iter()
        .find(|(k, _, _)| k.trim().eq_ignore_ascii_case("Driver"))
        .map(|(_, _, v)| v.to_ascii_lowercase())?;
    if driver.contains("postgres") {
        Some(5432)
    } else if driver.contains("maria") || driver.contains("mysql") {
        Some(3306)
    } else {
        None
    }
}

/// Whether a failed connect ran into its timeout: the driver says so, or it took as long.
pub fn timed_out(error: &DbError, took: Duration, limit: Duration) -> bool {
    let state = error.sqlstate.as_deref().unwrap_or("");
    let m = error.message.to_ascii_lowercase();
    state.starts_with("HYT")
        || m.contains("timeout")
        || m.contains("timed out")
        || took + Duration::from_millis(200) >= limit
}

/// The error of a call left without an answer: an outage (SQLSTATE HYT00) that says where
/// and for how long, with the driver's own words after it.
pub fn no_answer(endpoint: &str, limit: Duration, what: &str, driver: &DbError) -> DbError {
    let mut e = DbError::new(format!(
        "no answer from {endpoint} within {}{what} (timed out; the driver said: {})",
        seconds(limit),
        driver.message
    ));
    e.sqlstate = Some("HYT00".into());
    e.connection_dead = true;
    e
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(5);

    #[test]
    fn each_driver_gets_its_own_options_unless_set() {
        let pg = with_driver_options("Driver={PostgreSQL Unicode};Server=h;Port=1", S, S * 6);
        assert!(pg.contains("tcp_user_timeout=30000"), "{pg}");
        let own = with_driver_options("Driver={PostgreSQL Unicode};pqopt={sslmode=disable}", S, S);
        assert_eq!(own, "Driver={PostgreSQL Unicode};pqopt={sslmode=disable};");
        let maria = with_driver_options("Driver={MariaDB Unicode};READ_TIMEOUT=9;", S, S);
        assert!(
            maria.contains("READ_TIMEOUT=9;CONN_TIMEOUT=5;WRITE_TIMEOUT=7;"),
            "{maria}"
        );
        let lite = with_driver_options("Driver=SQLite3;Database=/x", S, S);
        assert_eq!(lite, "Driver=SQLite3;Database=/x;Timeout=5000;");
        assert_eq!(with_driver_options("DSN=x;", S, S), "DSN=x;");
    }

    #[test]
    fn the_endpoint_names_host_and_port() {
        let cs = "Driver={MariaDB Unicode};Server=db.example;UID=u;";
        assert_eq!(endpoint(cs), "db.example:3306");
        assert_eq!(endpoint("Driver=x;Host=h;Port=7;"), "h:7");
        assert_eq!(endpoint("DSN=prod;"), "DSN prod");
        assert!(is_local("Driver=SQLite3;Database=/x;"));
        assert!(!is_local(cs));
    }

    #[test]
    fn what_the_drivers_say_on_a_silent_path_is_an_outage() {
        use crate::error::{Class, classify};
        // MariaDB past READ_TIMEOUT; psqlODBC on a socket shut down under it, and past its
        // login timeout.
        let said = [
            (Some("08S01"), "Lost connection to server during query"),
            (Some("HY000"), "The connection has been lost"),
            (
                Some("08001"),
                "connection to server at \"h\", port 1 failed: timeout expired",
            ),
            (Some("HYT01"), "Connection timeout expired"),
        ];
        for (state, message) in said {
            assert_eq!(classify(state, message, false), Class::Outage, "{message}");
        }
    }

    #[test]
    fn a_timeout_is_an_outage() {
        let e = no_answer("h:1", S, "", &DbError::new("Lost connection"));
        assert_eq!(e.class(), crate::error::Class::Outage);
        assert!(e.message.starts_with("no answer from h:1 within 5s"), "{e}");
    }
}
