//! The QUIC + TLS client configuration: TLS 1.3 only, ALPN `switchboard/1`, and exactly one
//! trust anchor — the pinned node certificate. Nothing is installed process-wide: the crypto
//! provider is passed explicitly, so the SDK cannot clash with an app's own rustls setup.

use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;

use crate::{ClientConfig, ClientError};

pub(crate) fn quic_client_config(cfg: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cfg.server_cert_der.clone()))
        .map_err(|e| ClientError::Tls(format!("pinned certificate is unusable: {e}")))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![switchboard_wire::ALPN.to_vec()];

    let quic = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(cfg.keep_alive));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(cfg.idle_timeout)
            .map_err(|_| ClientError::Connect("idle_timeout is too large".to_owned()))?,
    ));
    // The node opens the push streams; the client opens only the control stream.
    transport.max_concurrent_bidi_streams(0u32.into());
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
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
    }

    #[test]
    fn refuses_garbage_as_a_pin() {
        let e = quic_client_config(&config(b"not a cert".to_vec())).unwrap_err();
        assert!(matches!(e, ClientError::Tls(_)), "{e}");
    }
}
