//! Which HTTP proxy a broker connection goes through: the broker's `proxy:` key, else the
//! environment as curl reads it (`https_proxy`/`HTTPS_PROXY` for TLS, `http_proxy`/
//! `HTTP_PROXY` for plain connections, `all_proxy`/`ALL_PROXY` for both, and `no_proxy`/
//! `NO_PROXY` for the hosts reached directly).

use std::fmt;
use std::net::IpAddr;

/// An HTTP proxy that tunnels with CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpProxy {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// `http://user@host:port`: never the password.
impl fmt::Display for HttpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(user) => write!(f, "http://{user}@{}", self.endpoint()),
            None => write!(f, "http://{}", self.endpoint()),
        }
    }
}

impl HttpProxy {
    /// `http://[user[:password]@]host[:port]`; a URL without a scheme is taken as http, as
    /// curl does, and a missing port is 1080 as in curl.
    pub fn parse(url: &str) -> Result<HttpProxy, String> {
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy scheme {scheme}:// is not supported: mqdb tunnels through HTTP \
                     proxies with CONNECT; write http://host:port"
                ));
            }
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        let parts = super::url::credentials(&format!("http://{rest}"));
        let authority = parts.bare.trim_start_matches("http://");
        let shown = || redact(url, parts.password.is_some());
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("proxy `{}` is not http://host:port", shown()));
        }
        let (host, port) = super::url::host_port(authority, 1080)
            .filter(|(host, _)| !host.is_empty())
            .ok_or_else(|| format!("proxy `{}`: bad port", shown()))?;
        Ok(HttpProxy {
            host,
            port,
            user: parts.user.filter(|u| !u.is_empty()),
            password: parts.password,
        })
    }

    pub fn endpoint(&self) -> String {
        super::url::authority(&self.host, self.port)
    }
}

fn redact(url: &str, has_password: bool) -> String {
    if has_password {
        "(a URL with a password)".to_string()
    } else {
        url.to_string()
    }
}

/// Where a connection's proxy setting came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySource {
    /// The broker's `proxy:` key (`none` included).
    Config,
    /// An environment variable, by name.
    Env(&'static str),
    /// `NO_PROXY` (or `no_proxy`) names the host.
    NoProxy(&'static str),
    /// No proxy key and no proxy variable.
    Unset,
}

/// The proxy a connection uses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyChoice {
    pub proxy: Option<HttpProxy>,
    pub source: ProxySource,
}

impl fmt::Display for ProxyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.proxy, &self.source) {
            (Some(p), ProxySource::Env(var)) => write!(f, "{p} (from {var})"),
            (Some(p), _) => write!(f, "{p}"),
            (None, ProxySource::Config) => f.write_str("none (proxy: none)"),
            (None, ProxySource::NoProxy(var)) => write!(f, "none ({var} names the host)"),
            (None, _) => f.write_str("none"),
        }
    }
}

/// The proxy for a connection to `host`. `configured` is the broker's `proxy:` value
/// (`none` turns proxies off, the environment included); `tls` says whether the scheme is a
/// TLS one (`mqtts`, `wss`, `amqps`), which picks `HTTPS_PROXY` over `HTTP_PROXY`.
pub fn choose(
    configured: Option<&str>,
    tls: bool,
    host: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ProxyChoice, String> {
    if let Some(value) = configured {
        let proxy = if value.trim().eq_ignore_ascii_case("none") || value.trim().is_empty() {
            None
        } else {
            Some(HttpProxy::parse(value)?)
        };
        return Ok(ProxyChoice {
            proxy,
            source: ProxySource::Config,
        });
    }
    let var = |names: [&'static str; 2]| {
        names
            .into_iter()
            .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
    };
    let no_proxy = var(["no_proxy", "NO_PROXY"]);
    if let Some((name, list)) = &no_proxy
        && bypasses(list, host)
    {
        return Ok(ProxyChoice {
            proxy: None,
            source: ProxySource::NoProxy(name),
        });
    }
    let scheme_var = if tls {
        var(["https_proxy", "HTTPS_PROXY"])
    } else {
        var(["http_proxy", "HTTP_PROXY"])
    };
    match scheme_var.or_else(|| var(["all_proxy", "ALL_PROXY"])) {
        Some((name, url)) => Ok(ProxyChoice {
            proxy: Some(HttpProxy::parse(&url).map_err(|e| format!("{name}: {e}"))?),
            source: ProxySource::Env(name),
        }),
        None => Ok(ProxyChoice {
            proxy: None,
            source: ProxySource::Unset,
        }),
    }
}

/// Whether a `NO_PROXY` list names `host`: `*`, the host itself, a domain it is in (with or
/// without a leading dot), the same IP address, or a CIDR block holding it. Ports in the
/// list are ignored, as curl does.
pub fn bypasses(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    list.split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some((net, bits)) = entry.split_once('/') {
                return match (host_ip, net.parse::<IpAddr>(), bits.parse::<u8>()) {
                    (Some(ip), Ok(net), Ok(bits)) => in_block(ip, net, bits),
                    _ => false,
                };
            }
            let entry = strip_port(&entry);
            if let (Some(ip), Ok(e)) = (host_ip, entry.parse::<IpAddr>()) {
                return ip == e;
            }
            let domain = entry.trim_start_matches('.').trim_end_matches('.');
            !domain.is_empty()
                && (host == domain
                    || host
                        .strip_suffix(domain)
                        .is_some_and(|head| head.ends_with('.')))
        })
}

fn strip_port(entry: &str) -> &str {
    if let Some(inner) = entry.strip_prefix('[') {
        return inner.split(']').next().unwrap_or(inner);
    }
    match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => entry,
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn a_proxy_url_gives_host_port_and_credentials_and_shows_no_password() {
        let p = HttpProxy::parse("http://u%40corp:p%3Ass@proxy.corp:3128").unwrap();
        assert_eq!(p.host, "proxy.corp");
        assert_eq!(p.port, 3128);
        assert_eq!(p.user.as_deref(), Some("u@corp"));
        assert_eq!(p.password.as_deref(), Some("p:ss"));
        assert_eq!(p.to_string(), "http://u@corp@proxy.corp:3128");
        let bare = HttpProxy::parse("proxy.corp:8080").unwrap();
        assert_eq!((bare.host.as_str(), bare.port), ("proxy.corp", 8080));
        assert_eq!(HttpProxy::parse("http://proxy/").unwrap().port, 1080);
        let v6 = HttpProxy::parse("http://[::1]:3128").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 3128));
        assert_eq!(v6.endpoint(), "[::1]:3128");
        let e = HttpProxy::parse("socks5://u:secret@h:1080").unwrap_err();
        assert!(e.contains("socks5") && !e.contains("secret"), "{e}");
        let e = HttpProxy::parse("http://u:secret@h:notaport").unwrap_err();
        assert!(e.contains("bad port") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn the_proxy_key_wins_over_the_environment_and_none_turns_proxies_off() {
        let vars = env(&[("HTTPS_PROXY", "http://envproxy:1"), ("NO_PROXY", "*")]);
        let c = choose(Some("http://cfg:2"), true, "h", &vars).unwrap();
        assert_eq!(c.proxy.unwrap().host, "cfg");
        let off = choose(
            Some("none"),
            true,
            "h",
            env(&[("HTTPS_PROXY", "http://e:1")]),
        )
        .unwrap();
        assert_eq!((off.proxy, off.source), (None, ProxySource::Config));
    }

    #[test]
    fn tls_schemes_take_https_proxy_and_plain_ones_http_proxy_then_all_proxy() {
        let vars = env(&[("HTTPS_PROXY", "http://s:1"), ("http_proxy", "http://p:2")]);
        let tls = choose(None, true, "broker", &vars).unwrap();
        assert_eq!(tls.proxy.unwrap().host, "s");
        assert_eq!(tls.source, ProxySource::Env("HTTPS_PROXY"));
        let plain = choose(None, false, "broker", &vars).unwrap();
        assert_eq!(plain.proxy.unwrap().host, "p");
        let lower_first = env(&[
            ("https_proxy", "http://low:1"),
            ("HTTPS_PROXY", "http://up:1"),
        ]);
        assert_eq!(
            choose(None, true, "b", &lower_first)
                .unwrap()
                .proxy
                .unwrap()
                .host,
            "low"
        );
        let all = env(&[("ALL_PROXY", "http://a:3")]);
        assert_eq!(
            choose(None, false, "b", &all).unwrap().proxy.unwrap().host,
            "a"
        );
        assert_eq!(
            choose(None, true, "b", &all).unwrap().proxy.unwrap().host,
            "a"
        );
        let nothing = choose(None, true, "b", env(&[])).unwrap();
        assert_eq!((nothing.proxy, nothing.source), (None, ProxySource::Unset));
        let bad = choose(None, true, "b", env(&[("HTTPS_PROXY", "socks5://x:1")])).unwrap_err();
        assert!(bad.starts_with("HTTPS_PROXY: "), "{bad}");
    }

    #[test]
    fn no_proxy_matches_hosts_domains_addresses_blocks_and_star() {
        let cases = [
            ("*", "anything.example", true),
            ("example.com", "example.com", true),
            ("example.com", "mqtt.example.com", true),
            (".example.com", "mqtt.example.com", true),
            ("example.com", "badexample.com", false),
            ("example.com:8883", "example.com", true),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("10.0.0.0/8", "10.20.30.40", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("::1", "[::1]", true),
            ("fd00::/8", "fd12::1", true),
            ("localhost, .corp", "broker.corp", true),
            ("localhost, .corp", "broker.example", false),
            ("", "h", false),
        ];
        for (list, host, expected) in cases {
            assert_eq!(
                bypasses(list, host),
                expected,
                "NO_PROXY={list:?} host={host}"
            );
        }
        let vars = env(&[("HTTPS_PROXY", "http://s:1"), ("NO_PROXY", "127.0.0.1")]);
        let direct = choose(None, true, "127.0.0.1", &vars).unwrap();
        assert_eq!(
            (direct.proxy, direct.source),
            (None, ProxySource::NoProxy("NO_PROXY"))
        );
        assert!(choose(None, true, "broker", &vars).unwrap().proxy.is_some());
    }
}
