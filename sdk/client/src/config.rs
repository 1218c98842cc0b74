//! What a [`Client`](crate::Client) needs to know before it connects.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use switchboard_core::PresenceState;

use crate::ClientError;

/// How to reach a node and who to be there. Build it with [`ClientConfig::for_server`] (a
/// node with a certificate from a public CA) or [`ClientConfig::new`] (a node with a
/// self-signed certificate, e.g. `switchboard dev`'s `dev-data/cert.der`) and adjust the public
/// fields; every default is documented on its field.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where the node is: `"host:port"` with a DNS name (`"chat.example.com:7700"`), an IPv4
    /// address (`"127.0.0.1:7700"`) or a bracketed IPv6 address (`"[::1]:7700"`). Names are
    /// resolved again on every connection attempt (a network change may change the answer);
    /// when a name has several addresses they are tried IPv6/IPv4 interleaved, a new attempt
    /// starting every 250 ms until one answers (Happy Eyeballs, RFC 8305).
    pub server: String,
    /// Name sent for SNI and checked against the certificate. [`ClientConfig::for_server`] takes
    /// the host part of `server`; [`ClientConfig::new`] uses `"localhost"`, a SAN of a node's
    /// self-signed development certificate.
    pub server_name: String,
    /// Which certificate authorities vouch for the node. Default [`Trust::WebPkiRoots`].
    pub trust: Trust,
    /// Certificate pins: when not empty, the node's certificate must also be one of these
    /// (SHA-256 of its DER, see [`cert_sha256`]), on top of [`ClientConfig::trust`]'s checks.
    /// Pin more than one across a certificate rotation.
    pub pins: Vec<[u8; 32]>,
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
    /// Longest one connection attempt (DNS, QUIC handshake + `Hello`/`Welcome`) may take.
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
    /// A directory for the offline outbox: sends not yet acknowledged are kept there, one
    /// file each, and sent again (with their `client_msg_id`, so the node stores them once)
    /// by the next client that opens the same directory — after an app restart too. `None`
    /// (the default): unacknowledged sends live in memory only. See
    /// [`Client::queue_send`](crate::Client::queue_send).
    pub outbox_dir: Option<PathBuf>,
    /// Bounds of the outbox.
    pub outbox_limits: OutboxLimits,
}

/// What the client trusts to vouch for the node's certificate. Either way the certificate
/// must name [`ClientConfig::server_name`] and be valid now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Trust {
    /// The Mozilla root program's CAs as shipped by the `webpki-roots` crate (compiled in,
    /// so it behaves the same on every platform and needs no OS store).
    #[default]
    WebPkiRoots,
    /// Only these certificates (DER) as roots: a private CA, or a node's self-signed
    /// certificate, which is its own root.
    Roots(Vec<Vec<u8>>),
}

/// Bounds of the offline outbox ([`ClientConfig::outbox_dir`]). A send that would pass either
/// is refused with [`ClientError::OutboxFull`](crate::ClientError::OutboxFull).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most pending sends. Default 1000.
    pub max_entries: usize,
    /// Most bytes of pending message bodies. Default 16 MiB.
    pub max_bytes: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_entries: 1000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl ClientConfig {
    /// A config for the node at `server` (`"host:port"`, see [`ClientConfig::server`]) whose
    /// certificate a public CA signed ([`Trust::WebPkiRoots`]), checked against the host part
    /// of `server`. Defaults for everything else.
    pub fn for_server(server: impl Into<String>, token: impl Into<String>) -> Self {
        let server = server.into();
        let server_name = host_of(&server).to_owned();
        Self {
            server,
            server_name,
            trust: Trust::WebPkiRoots,
            pins: Vec::new(),
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
            outbox_dir: None,
            outbox_limits: OutboxLimits::default(),
        }
    }

    /// A config for a node at `addr` with a self-signed certificate (DER): that certificate
    /// is the only root, and it must name `"localhost"` (as `switchboard dev`'s does).
    pub fn new(addr: SocketAddr, server_cert_der: Vec<u8>, token: impl Into<String>) -> Self {
        Self {
            server_name: "localhost".to_owned(),
            trust: Trust::Roots(vec![server_cert_der]),
            ..Self::for_server(addr.to_string(), token)
        }
    }

    /// Sets [`ClientConfig::resume`].
    pub fn with_cursors(mut self, cursors: impl IntoIterator<Item = (String, u64)>) -> Self {
        self.resume = cursors.into_iter().collect();
        self
    }

    /// Trusts only `roots` (DER certificates), see [`Trust::Roots`].
    pub fn with_roots(mut self, roots: Vec<Vec<u8>>) -> Self {
        self.trust = Trust::Roots(roots);
        self
    }

    /// Adds a certificate pin, see [`ClientConfig::pins`].
    pub fn with_pin(mut self, sha256: [u8; 32]) -> Self {
        self.pins.push(sha256);
        self
    }

    /// Sets [`ClientConfig::outbox_dir`].
    pub fn with_outbox(mut self, dir: impl Into<PathBuf>) -> Self {
        self.outbox_dir = Some(dir.into());
        self
    }
}

/// The host part of `"host:port"`, `"[v6]:port"` or a bare host.
pub(crate) fn host_of(server: &str) -> &str {
    if let Some(rest) = server.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match server.rsplit_once(':') {
        // A bare IPv6 address has more than one colon and no port.
        Some((host, _)) if !host.contains(':') => host,
        _ => server,
    }
}

/// The SHA-256 of a certificate (DER): the value [`ClientConfig::pins`] holds.
pub fn cert_sha256(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
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
    fn the_server_name_is_the_host_of_server() {
        for (server, host) in [
            ("chat.example.com:7700", "chat.example.com"),
            ("127.0.0.1:7700", "127.0.0.1"),
            ("[::1]:7700", "::1"),
            ("localhost", "localhost"),
            ("::1", "::1"),
        ] {
            assert_eq!(host_of(server), host, "{server}");
            assert_eq!(ClientConfig::for_server(server, "t").server_name, host);
        }
        let dev = ClientConfig::new("127.0.0.1:7700".parse().unwrap(), vec![0x30], "t");
        assert_eq!(dev.server, "127.0.0.1:7700");
        assert_eq!(dev.server_name, "localhost");
        assert_eq!(dev.trust, Trust::Roots(vec![vec![0x30]]));
        assert_eq!(
            ClientConfig::for_server("a:1", "t").trust,
            Trust::WebPkiRoots
        );
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
