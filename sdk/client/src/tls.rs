//! The QUIC + TLS client configuration: TLS 1.3 only, ALPN `switchboard/1`, the roots of a
//! [`Trust`] and optional certificate pins. Nothing is installed process-wide: the crypto
//! provider is passed explicitly, so the SDK cannot clash with an app's own rustls setup.
//!
//! [`client_config`] is the one place a Switchboard client's QUIC config is built: the SDK's
//! [`Client`](crate::Client), the benchmarks' raw clients and the node's integration tests all
//! start from it and change only transport settings.

use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::cert_sha256;
use crate::{ClientConfig, ClientError, Trust};

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
    trusting(&Trust::Roots(vec![server_cert_der.to_vec()]), &[], alpn)
}

/// A QUIC client config for `trust` and `pins` (see [`ClientConfig::pins`]) offering `alpn`.
pub fn trusting(
    trust: &Trust,
    pins: &[[u8; 32]],
    alpn: &[&[u8]],
) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = root_store(trust)?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ClientError::Tls(format!("building the certificate verifier: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut tls = if pins.is_empty() {
        builder.with_webpki_verifier(webpki).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                inner: webpki,
                pins: pins.to_vec(),
            }))
            .with_no_client_auth()
    };
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();

    let quic = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

fn root_store(trust: &Trust) -> Result<rustls::RootCertStore, ClientError> {
    match trust {
        Trust::WebPkiRoots => Ok(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
        Trust::Roots(certs) => {
            if certs.is_empty() {
                return Err(ClientError::Tls("Trust::Roots has no certificate".into()));
            }
            let mut roots = rustls::RootCertStore::empty();
            for der in certs {
                roots
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| ClientError::Tls(format!("root certificate is unusable: {e}")))?;
            }
            Ok(roots)
        }
    }
}

/// The usual chain and name checks, then: the node's own certificate must be a pinned one.
/// Only a certificate that passed both is accepted, so a pin narrows trust, never widens it.
#[derive(Debug)]
struct Pinned {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if self.pins.contains(&cert_sha256(end_entity.as_ref())) {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "the node's certificate is not one of the pinned ones".into(),
            ))
        }
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

/// The SDK client's config: [`trusting`] with its keep-alive and idle timeout.
pub(crate) fn quic_client_config(cfg: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    let mut config = trusting(&cfg.trust, &cfg.pins, &[switchboard_wire::ALPN])?;
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
    fn builds_with_webpki_roots_and_pins() {
        let cfg = ClientConfig::for_server("chat.example.com:7700", "t").with_pin([7; 32]);
        quic_client_config(&cfg).unwrap();
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 100);
    }

    #[test]
    fn refuses_garbage_as_a_root() {
        let e = quic_client_config(&config(b"not a cert".to_vec())).unwrap_err();
        assert!(matches!(e, ClientError::Tls(_)), "{e}");
        let e = client_config(b"not a cert").unwrap_err();
        assert!(matches!(e, ClientError::Tls(_)), "{e}");
        let e = trusting(&Trust::Roots(Vec::new()), &[], &[]).unwrap_err();
        assert!(matches!(e, ClientError::Tls(_)), "{e}");
    }
}
