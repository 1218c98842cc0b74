//! TLS material and the QUIC server configuration.
//!
//! The node speaks TLS 1.3 only (QUIC requires it) with the ring provider, built explicitly so
//! nothing depends on a process-wide default provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use switchboard_core::Limits;

use crate::EdgeError;

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Loads a certificate chain and key from PEM or DER files (chosen by content).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, EdgeError> {
        let tls = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
            EdgeError::Tls(format!("{what} {}: {e}", p.display()))
        };
        let cert_bytes = std::fs::read(cert).map_err(|e| tls("reading", cert, &e))?;
        let key_bytes = std::fs::read(key).map_err(|e| tls("reading", key, &e))?;
        let cert_chain = if cert_bytes.starts_with(b"-----") {
            CertificateDer::pem_slice_iter(&cert_bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls("parsing", cert, &e))?
        } else {
            vec![CertificateDer::from(cert_bytes)]
        };
        if cert_chain.is_empty() {
            return Err(tls("parsing", cert, &"no certificate found"));
        }
        let key = if key_bytes.starts_with(b"-----") {
            PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| tls("parsing", key, &e))?
        } else {
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_bytes))
        };
        Ok(Self { cert_chain, key })
    }

    /// A fresh self-signed certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn self_signed() -> Result<Self, EdgeError> {
        Ok(DevCert::generate()?.identity)
    }

    /// Loads the dev certificate from `dir` (`cert.der`, `key.der`), creating it on first use.
    /// `cert.pem` is written too, for tools that want PEM. Returns the identity and cert path.
    /// The directory is created 0700 and the files 0600 (they sit in the node's data
    /// directory, which is its own).
    pub fn dev_in(dir: &Path) -> Result<(Self, PathBuf), EdgeError> {
        let cert_path = dir.join("cert.der");
        let key_path = dir.join("key.der");
        if cert_path.exists() && key_path.exists() {
            return Ok((Self::load(&cert_path, &key_path)?, cert_path));
        }
        let dev = DevCert::generate()?;
        let io = |e: std::io::Error| EdgeError::Tls(format!("writing dev certificate: {e}"));
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(io)?;
        write_private(&key_path, &dev.key_pkcs8_der).map_err(io)?;
        write_private(&cert_path, &dev.cert_der).map_err(io)?;
        write_private(&dir.join("cert.pem"), dev.cert_pem.as_bytes()).map_err(io)?;
        Ok((dev.identity, cert_path))
    }
}

/// How long the dev WebTransport certificate is valid. Browsers accept a certificate by its
/// hash (`serverCertificateHashes`) only if it is valid for at most 14 days; a day is kept in
/// hand for clock skew between the node and the browser.
pub const WEBTRANSPORT_DEV_CERT_DAYS: i64 = 13;

impl TlsIdentity {
    /// A fresh self-signed ECDSA P-256 certificate for `localhost`, `127.0.0.1` and `::1`,
    /// valid from an hour ago for [`WEBTRANSPORT_DEV_CERT_DAYS`] days: what browsers' WebTransport
    /// accepts by its hash (`serverCertificateHashes`). Made anew at each start (it is not
    /// stored: it would expire), so pages learn its hash from the node ([`Self::sha256_hex`]).
    pub fn webtransport_dev() -> Result<Self, EdgeError> {
        let gen = |e: rcgen::Error| EdgeError::Tls(format!("generating certificate: {e}"));
        let names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let mut params = rcgen::CertificateParams::new(names).map_err(gen)?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(WEBTRANSPORT_DEV_CERT_DAYS);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen)?;
        let cert = params.self_signed(&key).map_err(gen)?;
        Ok(Self {
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// The SHA-256 of the leaf certificate (DER), in lower-case hex: the value a page passes
    /// to `new WebTransport(url, { serverCertificateHashes: [{ algorithm: "sha-256", value }] })`.
    pub fn sha256_hex(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.cert_chain.first().map_or(&[][..], |c| c.as_ref()));
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A fresh self-signed certificate and its encodings, all from rcgen.
struct DevCert {
    identity: TlsIdentity,
    cert_der: Vec<u8>,
    cert_pem: String,
    key_pkcs8_der: Vec<u8>,
}

impl DevCert {
    fn generate() -> Result<Self, EdgeError> {
        let names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| EdgeError::Tls(format!("generating certificate: {e}")))?;
        let key_pkcs8_der = ck.key_pair.serialize_der();
        Ok(Self {
            identity: TlsIdentity {
                cert_chain: vec![ck.cert.der().clone()],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8_der.clone())),
            },
            cert_der: ck.cert.der().to_vec(),
            cert_pem: ck.cert.pem(),
            key_pkcs8_der,
        })
    }
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file renamed into place, so a
/// reader — a test or a tool waiting for the dev certificate — never sees a partial file, and
/// a crash mid-write leaves no torn certificate for the next start to refuse.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The quinn server configuration: TLS 1.3 with the `switchboard/1` ALPN and transport limits
/// taken from [`Limits`].
pub fn server_config(id: &TlsIdentity, limits: &Limits) -> Result<quinn::ServerConfig, EdgeError> {
    let mut cfg = quic_server_config(id, switchboard_wire::ALPN)?;
    cfg.transport_config(Arc::new(transport_config(limits)?));
    bound_incoming(&mut cfg, limits);
    Ok(cfg)
}

/// TLS 1.3 with the ring provider, `id`'s certificate and the one ALPN `alpn`, no 0-RTT: the
/// crypto of both endpoints (`switchboard/1` here, `h3` for WebTransport).
pub(crate) fn quic_server_config(
    id: &TlsIdentity,
    alpn: &[u8],
) -> Result<quinn::ServerConfig, EdgeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| EdgeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(id.cert_chain.clone(), id.key.clone_key())
        .map_err(|e| EdgeError::Tls(format!("certificate/key: {e}")))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    // 0-RTT would let a replayed Send reach the node before the handshake completes.
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| EdgeError::Tls(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// Attempts waiting for the accept loop (which answers each at once): bounded like the
/// handshakes they become, with what they may buffer meanwhile (quinn: 65,536 and 100 MiB).
pub(crate) fn bound_incoming(cfg: &mut quinn::ServerConfig, limits: &Limits) {
    cfg.max_incoming(limits.max_handshakes as usize)
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(8 * 1024 * 1024);
}

/// The per-connection transport bounds from [`Limits`], shared by the native and the
/// WebTransport endpoint (which adjusts the stream counts and datagrams HTTP/3 needs).
pub(crate) fn transport_config(limits: &Limits) -> Result<quinn::TransportConfig, EdgeError> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_streams_per_connection.into())
        // Clients never open unidirectional streams in switchboard/1.
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            Duration::from_millis(limits.idle_timeout_ms)
                .try_into()
                .map_err(|_| EdgeError::Config("idle_timeout_ms too large".into()))?,
        ))
        // A stream may hold a few maximum-size frames in flight; the connection a few more.
        .stream_receive_window((limits.max_frame_bytes.saturating_mul(4)).into())
        .receive_window((limits.max_frame_bytes.saturating_mul(16)).into())
        // What one connection may have sent but not acknowledged, or buffered to send (a
        // client that stops reading holds this much of the node's memory, not quinn's 10 MB
        // default): 2 MiB at the defaults, far above a phone link's bandwidth-delay product.
        .send_window(u64::from(limits.max_frame_bytes) * 16)
        .datagram_receive_buffer_size(None);
    Ok(transport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cert_round_trips_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, path) = TlsIdentity::dev_in(dir.path()).unwrap();
        let (b, _) = TlsIdentity::dev_in(dir.path()).unwrap();
        assert_eq!(
            a.cert_chain, b.cert_chain,
            "second call reuses the stored cert"
        );
        let pem =
            TlsIdentity::load(&dir.path().join("cert.pem"), &dir.path().join("key.der")).unwrap();
        assert_eq!(pem.cert_chain, a.cert_chain);
        assert!(path.ends_with("cert.der"));
        server_config(&a, &Limits::default()).unwrap();
        #[cfg(unix)]
        for name in ["cert.der", "cert.pem", "key.der"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // Written through temporary files renamed into place: none is left behind.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["cert.der", "cert.pem", "key.der"]);
    }
}
