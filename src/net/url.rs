//! Broker URLs: the credentials they may carry (`scheme://user:password@host:port/…`), how
//! to show a URL without its password, and the `host:port` part both ways.

/// A URL's user and password (percent-decoded), and the URL without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
    /// `scheme://host:port/…`.
    pub bare: String,
}

/// Splits the user and password off `url`; a URL without them comes back whole.
pub fn credentials(url: &str) -> Credentials {
    let none = || Credentials {
        user: None,
        password: None,
        bare: url.to_string(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return none();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return none();
    };
    let (user, password) = match rest[..at].split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (&rest[..at], None),
    };
    Credentials {
        user: Some(percent_decoded(user)),
        password: password.map(percent_decoded),
        bare: format!("{scheme}://{}", &rest[at + 1..]),
    }
}

/// `url` with its password, if it has one, shown as `***`: for every message that quotes a
/// configured URL.
pub fn redacted(url: &str) -> String {
    let parts = credentials(url);
    match (&parts.user, &parts.password) {
        (Some(_), Some(_)) => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let at = rest[..rest.find('/').unwrap_or(rest.len())]
                .rfind('@')
                .unwrap_or(0);
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// `%XX` escapes decoded; anything else, malformed escapes included, kept as written.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok();
        match (bytes[i], hex().and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `host[:port]` or `[v6]:port` → the host without brackets and the port.
pub fn host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, p)) => Some((host.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

/// `host:port`, with an IPv6 address in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_off_the_url_decoded() {
        let c = credentials("mqtt://plant:p%40ss%3Aw0rd@broker.local:1883/x");
        assert_eq!(c.user.as_deref(), Some("plant"));
        assert_eq!(c.password.as_deref(), Some("p@ss:w0rd"));
        assert_eq!(c.bare, "mqtt://broker.local:1883/x");
        let plain = credentials("mqtts://[::1]:8883");
        assert_eq!(
            (plain.user, plain.bare.as_str()),
            (None, "mqtts://[::1]:8883")
        );
        let user_only = credentials("mqtt://me@h");
        assert_eq!(
            (user_only.user.as_deref(), user_only.password),
            (Some("me"), None)
        );
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redacted("mqtt://plant:s3cret@broker:1883"),
            "mqtt://plant:***@broker:1883"
        );
        assert_eq!(redacted("mqtp://u:hunter2@h/p@x"), "mqtp://u:***@h/p@x");
        assert_eq!(redacted("mqtt://broker:1883"), "mqtt://broker:1883");
        assert!(!redacted("amqp://guest:gu@st@h").contains("gu@st"));
    }
}
