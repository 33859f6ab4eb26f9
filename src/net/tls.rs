//! The TLS client settings of a broker connection (MQTT over TCP or WebSockets, AMQP): whom
//! to trust (a CA file, else the system's store), the client certificate, the name the
//! broker's certificate must carry and the ALPN protocols to offer. Verification is always
//! on.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A TLS block read from its files.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// PEM certificate authorities; `None` trusts the system's store.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate chain and private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify (and send in SNI where the client library lets mqdb choose it)
    /// instead of the host in the URL.
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

impl TlsSettings {
    /// The rustls client configuration; `what` names the broker in errors.
    pub fn client_config(&self, what: &str) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(self.roots(what)?);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("{what}: TLS: {e}"))?;
        let builder = match &self.server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone())
                    .map_err(|_| format!("{what}: tls.server_name `{name}` is not a host name"))?;
                let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("{what}: TLS: {e}"))?;
                // Still the full WebPKI verification, only against the configured name.
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, name }))
            }
            None => builder.with_root_certificates(roots),
        };
        let mut config = match &self.client {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{what}: tls.cert_file is not PEM: {e}"))?;
                if chain.is_empty() {
                    return Err(format!("{what}: tls.cert_file holds no certificate"));
                }
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("{what}: tls.key_file holds no usable key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{what}: tls.cert_file and tls.key_file: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Arc::new(config))
    }

    fn roots(&self, what: &str) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(pem) => {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{what}: tls.ca_file is not PEM: {e}"))?;
                roots.add_parsable_certificates(certs);
                if roots.is_empty() {
                    return Err(format!("{what}: tls.ca_file holds no usable certificate"));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(format!(
                        "{what}: the system trust store has no certificate; set tls.ca_file"
                    ));
                }
            }
        }
        Ok(roots)
    }

    /// The name the TLS session is for: the configured server name, else the URL's host.
    pub fn name_for<'a>(&'a self, host: &'a str) -> &'a str {
        self.server_name.as_deref().unwrap_or(host)
    }
}

/// WebPKI verification against a fixed name, whatever host was dialled.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
