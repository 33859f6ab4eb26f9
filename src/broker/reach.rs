//! How a configured broker is reached: its TLS block read from its files, and the proxy
//! its connections take. Shared by the MQTT and AMQP settings.

use crate::config::{self, Broker};
use crate::net::{self, ProxyChoice, TlsSettings};

/// The broker's TLS block read from its files; `name` names the broker in errors.
pub fn tls_settings(name: &str, broker: &Broker) -> Result<TlsSettings, String> {
    let tls = broker.tls.as_ref();
    let read = |what: &str, path: &config::EnvString| {
        std::fs::read(path.as_str()).map_err(|e| {
            format!(
                "broker {name}: cannot read tls.{what} {}: {e}",
                path.as_str()
            )
        })
    };
    let client = match (
        tls.and_then(|t| t.cert_file.as_ref()),
        tls.and_then(|t| t.key_file.as_ref()),
    ) {
        (Some(cert), Some(key)) => Some((read("cert_file", cert)?, read("key_file", key)?)),
        (None, None) => None,
        _ => {
            return Err(format!(
                "broker {name}: tls needs both cert_file and key_file"
            ));
        }
    };
    Ok(TlsSettings {
        ca: tls
            .and_then(|t| t.ca_file.as_ref())
            .map(|ca| read("ca_file", ca))
            .transpose()?,
        client,
        server_name: tls
            .and_then(|t| t.server_name.as_ref())
            .map(|s| s.0.clone())
            .filter(|s| !s.is_empty()),
        alpn: tls
            .map(|t| t.alpn.iter().map(|p| p.0.clone()).collect())
            .unwrap_or_default(),
    })
}

/// The proxy a connection to `host` takes: the broker's `proxy:` key (with the password of
/// `proxy_password_file`), else the process environment.
pub fn proxy_choice(
    name: &str,
    broker: &Broker,
    tls: bool,
    host: &str,
) -> Result<ProxyChoice, String> {
    let configured = broker.proxy.as_ref().map(|p| p.value.expose());
    let mut choice = net::proxy::choose(configured, tls, host, |var| std::env::var(var).ok())
        .map_err(|e| format!("broker {name}: {e}"))?;
    // The file completes the configured proxy only; an environment proxy carries its own.
    if let (Some(proxy), Some(file), net::proxy::ProxySource::Config) = (
        &mut choice.proxy,
        &broker.proxy_password_file,
        &choice.source,
    ) {
        let password = config::read_secret_file(file.as_str()).map_err(|e| {
            format!(
                "broker {name}: cannot read proxy_password_file {}: {e}",
                file.as_str()
            )
        })?;
        proxy.password = Some(password);
    }
    Ok(choice)
}
