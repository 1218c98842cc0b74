//! The QUIC + TLS client configuration: TLS 1.3 only, ALPN `switchboard/1`, and exactly one
//! trust anchor — the pinned node certificate. Nothing is installed process-wide: the crypto
//! provider is passed explicitly, so the SDK cannot clash with an app's own rustls setup.
//!
//! [`client_config`] is the one place a Switchboard client's QUIC config is built: the SDK's
//! [`Client`](crate::Client), the benchmarks' raw clients and the node's integration tests all
//! start from it and change only transport settings.

use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;

use crate::{ClientConfig, ClientError};

/// A QUIC client config that trusts only `server_cert_der` (the node's certificate, DER, as
/// [`load_cert`](crate::load_cert) reads it), speaks TLS 1.3 with the ring provider and offers
/// ALPN `switchboard/1`. Transport settings are quinn's defaults; set your own with
/// [`quinn::ClientConfig::transport_config`].
pub fn client_config(server_cert_der: &[u8]) -> Result<quinn::ClientConfig, ClientError> {
    client_config_with_alpn(server_cert_der, &[switchboard_wire::ALPN])
}

/// [`client_config`] offering `alpn` instead of `switchboard/1` (for tests of what a node does
/// with other protocols).
pub fn client_config_with_alpn(
    server_cert_der: &[u8],
    alpn: &[&[u8]],
) -> Result<quinn::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(server_cert_der.to_vec()))
        .map_err(|e| ClientError::Tls(format!("pinned certificate is unusable: {e}")))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();

    let quic = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// The SDK client's config: [`client_config`] with its keep-alive and idle timeout.
pub(crate) fn quic_client_config(cfg: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    let mut config = client_config(&cfg.server_cert_der)?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(cfg.keep_alive));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(cfg.idle_timeout)
            .map_err(|_| ClientError::Connect("idle_timeout is too large".to_owned()))?,
    ));
    // The node opens the push streams; the client opens only the control stream.
    transport.max_concurrent_bidi_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(der: Vec<u8>) -> ClientConfig {
        ClientConfig::new("127.0.0.1:7700".parse().unwrap(), der, "sb1.x.y")
    }

    #[test]
    fn builds_with_a_self_signed_cert() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        quic_client_config(&config(ck.cert.der().to_vec())).unwrap();
        client_config(ck.cert.der()).unwrap();
        client_config_with_alpn(ck.cert.der(), &[b"h3"]).unwrap();
    }

    #[test]
    fn refuses_garbage_as_a_pin() {
        let e = quic_client_config(&config(b"not a cert".to_vec())).unwrap_err();
        assert!(matches!(e, ClientError::Tls(_)), "{e}");
        let e = client_config(b"not a cert").unwrap_err();
        assert!(matches!(e, ClientError::Tls(_)), "{e}");
    }
}
