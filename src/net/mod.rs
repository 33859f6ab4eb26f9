//! How a broker connection leaves the machine: through which HTTP proxy (`proxy`, the
//! broker's key or the environment), the CONNECT tunnel itself (`tunnel`, for AMQP; rumqttc
//! opens its own), the TLS client settings (`tls`), and the credentials a URL may carry
//! (`url`).

pub mod proxy;
pub mod tls;
pub mod tunnel;
pub mod url;

pub use proxy::{HttpProxy, ProxyChoice};
pub use tls::TlsSettings;
