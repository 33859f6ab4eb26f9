//! ODBC connection strings: their `key=value` attributes, and the PostgreSQL URL (for
//! sqlx) that reaches the same database as the same user, since an outbound route's `wake`
//! LISTENs over sqlx, not ODBC.

/// `postgres://user:password@host:port/database` from the connection string's attributes
/// (keys matched without regard to case); user, password and database percent-encoded, and
/// psqlODBC's `SSLmode` as `?sslmode=`.
pub fn postgres_url(connection_string: &str) -> Result<String, String> {
    let attrs = attributes(connection_string);
    let value = |keys: &[&str]| {
        attrs
            .iter()
            .find(|(k, _, _)| keys.iter().any(|key| k.trim().eq_ignore_ascii_case(key)))
            .map(|(_, _, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let host = value(&["Server", "Host", "Servername"])
        .ok_or("the connection string names no Server or Host: set wake.url (postgres://…)")?;
    let mut url = String::from("postgres://");
    if let Some(user) = value(&["Uid", "User", "Username"]) {
        url.push_str(&encoded(&user));
        if let Some(password) = value(&["Pwd", "Password"]) {
            url.push(':');
            url.push_str(&encoded(&password));
        }
        url.push('@');
    }
    if host.contains(':') && !host.starts_with('[') {
        url.push_str(&format!("[{host}]"));
    } else {
        url.push_str(&host);
    }
    if let Some(port) = value(&["Port"]) {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("the connection string's Port `{port}` is not a port"))?;
        url.push_str(&format!(":{port}"));
    }
    if let Some(database) = value(&["Database", "Dbname"]) {
        url.push('/');
        url.push_str(&encoded(&database));
    }
    // psqlODBC's SSLmode takes libpq's values, as does sqlx.
    if let Some(mode) = value(&["SSLmode"]) {
        url.push_str("?sslmode=");
        url.push_str(&encoded(&mode.to_ascii_lowercase()));
    }
    Ok(url)
}

/// `url` with `password` as its password (replacing one already there).
pub fn with_password(url: &str, password: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("the wake url must start with postgres:// or postgresql://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return Err(
            "password_file needs a user name in the wake url (postgres://user@host/db)".into(),
        );
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    Ok(format!(
        "{scheme}://{user}:{}@{host}{tail}",
        encoded(password)
    ))
}

/// Whether `url` carries a password.
pub fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// The `key=value` attributes of a connection string: each key, its value as written, and
/// its value (without braces, a doubled `}` single), by the ODBC grammar where a braced
/// value may hold `;`.
pub fn attributes(connection_string: &str) -> Vec<(&str, &str, String)> {
    let mut out = Vec::new();
    let mut rest = connection_string;
    while let Some((key, after)) = rest.split_once('=') {
        let (raw, value, next) = match after.strip_prefix('{') {
            Some(body) => {
                let mut end = None;
                let mut i = 0;
                let bytes = body.as_bytes();
                while i < bytes.len() {
                    if bytes[i] == b'}' {
                        if bytes.get(i + 1) == Some(&b'}') {
                            i += 2;
                            continue;
                        }
                        end = Some(i);
                        break;
                    }
                    i += 1;
                }
                let end = end.unwrap_or(body.len());
                let raw = &after[..(end + 2).min(after.len())];
                let next = after[raw.len()..].trim_start_matches(';');
                (raw, body[..end].replace("}}", "}"), next)
            }
            None => {
                let (raw, next) = after.split_once(';').unwrap_or((after, ""));
                (raw, raw.to_string(), next)
            }
        };
        out.push((key.trim_start_matches(';'), raw, value));
        rest = next;
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_is_taken_from_its_odbc_key_whatever_its_case() {
        let url = postgres_url(
            "Driver={PostgreSQL Unicode};SERVER=db.local;port=5433;DataBase=plant;uid=mqdb;pwd=s3cret;BoolsAsChar=0",
        )
        .unwrap();
        assert_eq!(url, "postgres://mqdb:s3cret@db.local:5433/plant");
        let url = postgres_url("Host=h;Username=u;Password=p;Dbname=d;sslmode=Require").unwrap();
        assert_eq!(url, "postgres://u:p@h/d?sslmode=require");
    }

    #[test]
    fn odd_characters_are_percent_encoded() {
        let url = postgres_url(
            "Driver={PostgreSQL Unicode};Server=h;Database=my db;UID=us@r;PWD={p;w}}d@:/?#%é}",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://us%40r:p%3Bw%7Dd%40%3A%2F%3F%23%25%C3%A9@h/my%20db"
        );
    }

    #[test]
    fn the_url_is_what_sqlx_reads_back() {
        use sqlx::postgres::PgConnectOptions;
        let url =
            postgres_url("Server=h;Port=6000;Database=d b;UID=u:x;PWD={a;b}}c%d e@}").unwrap();
        let options: PgConnectOptions = url.parse().unwrap();
        assert_eq!(options.get_host(), "h");
        assert_eq!(options.get_port(), 6000);
        assert_eq!(options.get_username(), "u:x");
        assert_eq!(options.get_database(), Some("d b"));
    }

    #[test]
    fn without_user_password_or_port_those_parts_are_left_out() {
        assert_eq!(postgres_url("Server=::1").unwrap(), "postgres://[::1]");
        assert_eq!(postgres_url("Server=h;PWD=p").unwrap(), "postgres://h");
        assert!(postgres_url("DSN=plant").unwrap_err().contains("wake.url"));
        assert!(
            postgres_url("Server=h;Port=x")
                .unwrap_err()
                .contains("Port")
        );
    }

    #[test]
    fn a_password_file_replaces_or_adds_the_password() {
        assert_eq!(
            with_password("postgres://u@h:1/d?sslmode=disable", "a@b").unwrap(),
            "postgres://u:a%40b@h:1/d?sslmode=disable"
        );
        assert_eq!(
            with_password("postgresql://u:old@h", "n").unwrap(),
            "postgresql://u:n@h"
        );
        assert!(with_password("postgres://h/d", "p").is_err());
        assert!(has_password("postgres://u:p@h/d"));
        assert!(!has_password("postgres://u@h/d"));
        assert!(!has_password("postgres://h/d?x=a:b@c"));
    }
}
