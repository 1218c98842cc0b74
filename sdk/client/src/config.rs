//! What a [`Client`](crate::Client) needs to know before it connects.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use switchboard_core::PresenceState;

use crate::ClientError;

/// How to reach a node and who to be there. Build it with [`ClientConfig::new`] and adjust
/// the public fields; every default is documented on its field.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The node's QUIC address.
    pub addr: SocketAddr,
    /// Name sent for SNI and checked against the certificate. Default `"localhost"`, the SAN
    /// of a node's self-signed development certificate.
    pub server_name: String,
    /// The node's certificate (DER). It is the only trust anchor: the client pins it. See
    /// [`load_cert`] to read it from a node's data dir.
    pub server_cert_der: Vec<u8>,
    /// The `sb1.…` client token minted by the tenant. Replace it for later reconnects with
    /// [`Client::set_token`](crate::Client::set_token).
    pub token: String,
    /// Presence announced in `Hello`. Default foreground.
    pub presence: PresenceState,
    /// Free-form client name/version for the node's logs (at most 64 bytes).
    pub client_name: String,
    /// Resume cursors `(group, seq)`: "I already have everything up to `seq`". Persist
    /// [`Client::cursors`](crate::Client::cursors) (or the seqs you processed) and pass them
    /// back here to resume after a restart without duplicates. Groups not listed resume from
    /// the node's stored cursor (what [`ClientConfig::auto_ack`] keeps up to date).
    pub resume: Vec<(String, u64)>,
    /// How to reconnect after the connection is lost.
    pub reconnect: ReconnectPolicy,
    /// Longest a request (join, send, fetch, ...) may take, including waiting for a
    /// reconnect. Default 30 s.
    pub request_timeout: Duration,
    /// Longest one connection attempt (QUIC handshake + `Hello`/`Welcome`) may take.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// Send `AckDelivery` for every message handed to the app by
    /// [`Events::next`](crate::Events::next), coalesced per group (one frame per group per
    /// [`ClientConfig::ack_delay`]). Off: call [`Client::ack_delivery`](crate::Client::ack_delivery)
    /// yourself. Default on.
    pub auto_ack: bool,
    /// How long delivery acks are held to coalesce them. Default 200 ms.
    pub ack_delay: Duration,
    /// QUIC keep-alive interval; must stay below the node's idle timeout (30 s by default).
    /// Default 10 s.
    pub keep_alive: Duration,
    /// The connection counts as lost after this long without hearing from the node.
    /// Default 30 s.
    pub idle_timeout: Duration,
    /// Most message/receipt/presence events buffered for the app; see [`Events`](crate::Events).
    /// Default 1024.
    pub event_buffer: usize,
}

impl ClientConfig {
    /// A config with defaults for everything but where to connect, what to trust and who to be.
    pub fn new(addr: SocketAddr, server_cert_der: Vec<u8>, token: impl Into<String>) -> Self {
        Self {
            addr,
            server_name: "localhost".to_owned(),
            server_cert_der,
            token: token.into(),
            presence: PresenceState::Foreground,
            client_name: concat!("switchboard-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            resume: Vec::new(),
            reconnect: ReconnectPolicy::default(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            auto_ack: true,
            ack_delay: Duration::from_millis(200),
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            event_buffer: 1024,
        }
    }

    /// Sets [`ClientConfig::resume`].
    pub fn with_cursors(mut self, cursors: impl IntoIterator<Item = (String, u64)>) -> Self {
        self.resume = cursors.into_iter().collect();
        self
    }
}

/// Exponential backoff with jitter between reconnect attempts.
///
/// Attempt `n` (1-based) waits a random delay in `[d/2, d]` where
/// `d = min(max_backoff, initial_backoff * 2^(n-1))`, but never less than the `retry_after` of
/// the node's last refusal (e.g. `RateLimited` when the tenant is opening too many sessions).
/// The count restarts once a connection has stayed up for 10 s, so `max_attempts` bounds
/// consecutive failures, not a lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Upper bound of the first delay. Default 250 ms.
    pub initial_backoff: Duration,
    /// Upper bound of any delay. Default 30 s.
    pub max_backoff: Duration,
    /// Give up (and emit [`Event::Closed`](crate::Event::Closed)) after this many
    /// consecutive failed attempts; `None` retries forever. `Some(0)` never reconnects.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// Never reconnect: the first connection loss closes the client.
    pub fn never() -> Self {
        Self {
            max_attempts: Some(0),
            ..Self::default()
        }
    }
}

/// Reads a node's certificate for [`ClientConfig::server_cert_der`]: DER (`cert.der`) or the
/// first `CERTIFICATE` block of a PEM file (`cert.pem`), told apart by content.
pub fn load_cert(path: &Path) -> Result<Vec<u8>, ClientError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ClientError::Io(std::io::Error::new(
            e.kind(),
            format!("reading {}: {e}", path.display()),
        ))
    })?;
    parse_cert(&bytes).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))
}

fn parse_cert(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let text_start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let is_pem = text_start.is_some_and(|i| bytes[i..].starts_with(b"-----BEGIN"));
    if is_pem {
        let cert = CertificateDer::from_pem_slice(bytes)
            .map_err(|e| format!("no usable CERTIFICATE in PEM: {e}"))?;
        return Ok(cert.as_ref().to_vec());
    }
    // DER certificates are an ASN.1 SEQUENCE; catch obviously wrong files early.
    if bytes.first() != Some(&0x30) {
        return Err("not a DER certificate or a PEM file".to_owned());
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> rcgen::CertifiedKey {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap()
    }

    #[test]
    fn loads_der_and_pem() {
        let ck = self_signed();
        let der = ck.cert.der().to_vec();
        let dir = tempfile::tempdir().unwrap();
        let der_path = dir.path().join("cert.der");
        let pem_path = dir.path().join("cert.pem");
        std::fs::write(&der_path, &der).unwrap();
        std::fs::write(&pem_path, ck.cert.pem()).unwrap();
        assert_eq!(load_cert(&der_path).unwrap(), der);
        assert_eq!(load_cert(&pem_path).unwrap(), der);
    }

    #[test]
    fn refuses_what_is_not_a_cert() {
        assert!(parse_cert(b"").is_err());
        assert!(parse_cert(b"hello").is_err());
        assert!(
            parse_cert(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err()
        );
        let missing = Path::new("/nonexistent/cert.der");
        assert!(matches!(load_cert(missing), Err(ClientError::Io(_))));
    }
}
