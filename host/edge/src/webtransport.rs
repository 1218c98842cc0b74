//! Browsers' sessions: a second endpoint, on its own UDP port, that speaks HTTP/3 and accepts
//! WebTransport sessions (wtransport), each then served as a switchboard/1 connection by
//! `conn::run` — the same hello, token, limits and errors as native QUIC (`transport.rs` maps
//! the streams; docs/protocol.md §17 describes the mapping).
//!
//! What differs is only what HTTP/3 needs: ALPN `h3`, a few client-opened unidirectional
//! streams (HTTP/3's control and QPACK streams), QUIC datagrams enabled (browsers require
//! the `H3_DATAGRAM` setting; the node never reads them, so a small buffer bounds them), and
//! the extended CONNECT request that opens the session, answered `404` for a path other than
//! [`PATH`] and `403` for an origin the config does not allow.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::Limits;
use tokio::time::timeout;
use tracing::{debug, info, Instrument};

use crate::conn::Counted;
use crate::hub::Hub;
use crate::transport::Conn;
use crate::{Admit, EdgeError, TlsIdentity};

/// The request path of a switchboard/1 WebTransport session
/// (`https://HOST:PORT/switchboard/1`).
pub const PATH: &str = "/switchboard/1";
/// HTTP/3's ALPN, the only one the WebTransport endpoint offers.
const ALPN_H3: &[u8] = b"h3";
/// Client-opened unidirectional streams at once: HTTP/3's control, QPACK encoder and decoder
/// streams, plus a few WebTransport ones, which the node stops as it accepts them (§3).
const MAX_CLIENT_UNI_STREAMS: u32 = 8;
/// QUIC datagram bytes buffered per connection; the node does not use datagrams, and quinn
/// drops the oldest beyond this.
const DATAGRAM_BUFFER_BYTES: usize = 16 * 1024;

/// wtransport's server endpoint.
pub(crate) type Endpoint = wtransport::Endpoint<wtransport::endpoint::endpoint_side::Server>;

/// The WebTransport endpoint's settings.
#[derive(Debug, Clone)]
pub struct WebTransportConfig {
    /// The UDP address it binds (not the native QUIC one).
    pub listen: SocketAddr,
    /// Its certificate: a CA-issued one in production, or
    /// [`TlsIdentity::webtransport_dev`] for pages that pin it by hash.
    pub identity: TlsIdentity,
    /// Origins (`https://app.example`) allowed to open sessions; empty allows any. A request
    /// without an `Origin` header (not a browser) is allowed only when this is empty.
    pub allowed_origins: Vec<String>,
}

/// The endpoint's QUIC and TLS configuration: TLS 1.3 with ALPN `h3`, and the same
/// per-connection bounds as the native endpoint (`tls::server_config`), plus what HTTP/3 needs.
pub(crate) fn server_config(
    id: &TlsIdentity,
    limits: &Limits,
) -> Result<quinn::ServerConfig, EdgeError> {
    let mut cfg = crate::tls::quic_server_config(id, ALPN_H3)?;
    let mut transport = crate::tls::transport_config(limits)?;
    transport
        // The CONNECT stream that holds the session counts as one of them.
        .max_concurrent_bidi_streams((limits.max_streams_per_connection + 1).into())
        .max_concurrent_uni_streams(MAX_CLIENT_UNI_STREAMS.into())
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER_BYTES));
    cfg.transport_config(Arc::new(transport));
    crate::tls::bound_incoming(&mut cfg, limits);
    Ok(cfg)
}

/// Binds the WebTransport endpoint.
pub(crate) fn bind(cfg: &WebTransportConfig, limits: &Limits) -> Result<Endpoint, EdgeError> {
    let bind_err = |source| EdgeError::Bind {
        addr: cfg.listen,
        source,
    };
    let quic = server_config(&cfg.identity, limits)?;
    let socket = crate::udp_socket(cfg.listen).map_err(bind_err)?;
    let server = wtransport::ServerConfig::builder()
        .with_bind_socket(socket)
        .build_with_quic_config(quic);
    wtransport::Endpoint::server(server).map_err(bind_err)
}

/// Admits session attempts under the same bounds as native connections (one count of
/// connections and handshakes for both endpoints), then serves each.
pub(crate) async fn accept_loop(endpoint: Arc<Endpoint>, hub: Arc<Hub>, origins: Arc<[String]>) {
    loop {
        let incoming = endpoint.accept().await;
        let validated = incoming.remote_address_validated();
        match crate::admit(&hub, validated, !validated) {
            Admit::Refuse => incoming.refuse(),
            Admit::Retry => incoming.retry(),
            Admit::Accept => {
                tokio::spawn(serve(hub.clone(), incoming, origins.clone()));
            }
        }
    }
}

/// Drives one attempt: QUIC and TLS handshake, HTTP/3 settings and the CONNECT request (all
/// within `hello_timeout_ms`), then the switchboard/1 session.
async fn serve(
    hub: Arc<Hub>,
    incoming: wtransport::endpoint::IncomingSession,
    origins: Arc<[String]>,
) {
    let remote = incoming.remote_address();
    let _counted = Counted(&hub.metrics().connections);
    hub.metrics()
        .webtransport_connections
        .fetch_add(1, Ordering::Relaxed);
    let _web = Counted(&hub.metrics().webtransport_connections);
    let deadline = Duration::from_millis(hub.limits().hello_timeout_ms);
    let request = {
        let _handshaking = Counted(&hub.metrics().handshakes);
        match timeout(deadline, incoming).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                debug!(%remote, error = %e, "WebTransport handshake failed");
                return;
            }
            Err(_) => {
                hub.metrics()
                    .handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%remote, "WebTransport handshake timed out");
                return;
            }
        }
    };
    if request.path() != PATH {
        debug!(%remote, path = request.path(), "WebTransport session for another path");
        let _ = timeout(deadline, request.not_found()).await;
        return;
    }
    if !origin_allowed(&origins, request.origin()) {
        info!(%remote, origin = request.origin().unwrap_or(""), "WebTransport origin refused");
        hub.metrics()
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        let _ = timeout(deadline, request.forbidden()).await;
        return;
    }
    let conn = match timeout(deadline, request.accept()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "WebTransport session not established");
            return;
        }
        Err(_) => {
            hub.metrics()
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let span = tracing::info_span!(
        "conn",
        %remote,
        transport = "webtransport",
        session = tracing::field::Empty
    );
    crate::conn::run(hub.clone(), Conn::Web(conn))
        .instrument(span)
        .await;
}

/// Whether a session from `origin` may open: any when no origins are configured, else only a
/// listed one (compared exactly, as browsers send it: scheme, host and port if not default).
fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    allowed.is_empty() || origin.is_some_and(|o| allowed.iter().any(|a| a == o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_open_until_listed_then_exact() {
        assert!(origin_allowed(&[], None));
        assert!(origin_allowed(&[], Some("https://evil.example")));
        let listed = ["https://app.example".to_owned()];
        assert!(origin_allowed(&listed, Some("https://app.example")));
        assert!(!origin_allowed(&listed, Some("https://app.example:8443")));
        assert!(!origin_allowed(&listed, Some("https://evil.example")));
        assert!(
            !origin_allowed(&listed, None),
            "no Origin: not a listed page"
        );
    }

    #[test]
    fn dev_certificate_is_what_browsers_pin_by_hash() {
        let id = TlsIdentity::webtransport_dev().unwrap();
        let hash = id.sha256_hex();
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        server_config(&id, &Limits::default()).unwrap();
        // ECDSA P-256: the certificate's key is an EC public key on prime256v1 (OID
        // 1.2.840.10045.3.1.7), which is what `serverCertificateHashes` requires.
        let der = id.cert_chain[0].as_ref();
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert!(der.windows(p256.len()).any(|w| w == p256));
        // Valid now, and for at most 14 days in all (browsers refuse a longer one by hash).
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let validity = cert.validity();
        assert!(validity.is_valid());
        let span = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert!(span <= 14 * 86_400, "valid for {span} s");
        assert!(span >= 13 * 86_400, "valid for {span} s");
    }
}
