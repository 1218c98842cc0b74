//! TLS for the TCP peers: one self-signed certificate per benchmark run (rcgen), written as
//! PEM for nats-server and mosquitto, and a tokio-rustls connector that pins it.

use std::sync::Arc;

use anyhow::Result;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

/// A certificate for `localhost` and `127.0.0.1`.
pub fn self_signed() -> Result<TestCert> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    Ok(TestCert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
        cert_der: ck.cert.der().to_vec(),
    })
}

/// A client that trusts exactly `cert_der`; TLS 1.3 or 1.2, whichever the server prefers
/// (both peers pick 1.3, like Switchboard's QUIC).
pub fn connector(cert_der: &[u8]) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(cert_der.to_vec()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
