//! The API's listener: accepts TCP connections (optionally TLS), caps how many are open, and
//! serves each with hyper's HTTP/1 connection under the bounds of [`ServerLimits`].
//!
//! Not `axum::serve`: it has no header, body or idle timeout and no connection cap, so a
//! slowloris client (a header sent a byte at a time, or never finished) held a connection
//! and its task forever. Every bound here is hyper's or tokio's own facility:
//!
//! - **header timeout**: hyper's `header_read_timeout`. Its timer runs whenever the
//!   connection waits for a request head — from accept, and again after each response — so
//!   it is also the keep-alive idle timeout. On expiry hyper closes the connection.
//! - **TLS handshake**: bounded by the same timeout (tokio's `timeout` around the
//!   handshake), before hyper sees the connection.
//! - **body timeout**: a deadline on reading a whole request body, applied where bodies are
//!   read (`extract::read_body`); past it the answer is 408 and the connection is closed.
//!   (A per-frame idle timeout, such as tower-http's `RequestBodyTimeoutLayer`, would let a
//!   client trickle a byte just inside each period forever.)
//! - **connections**: at most `max_connections` at once; one accepted beyond that is closed
//!   at once, before any byte is read.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::Control;

/// The HTTP server's bounds. The defaults are documented per field, in `docs/admin-api.md`
/// §4 and in `examples/switchboard.toml` (`[admin]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// From accept (or the end of the previous response) to the end of the next request's
    /// head; also the TLS handshake's deadline and the keep-alive idle timeout. Default 10 s.
    pub header_timeout: Duration,
    /// Reading one request's whole body (a JSON body or a plugin upload). Default 30 s: a
    /// 4 MiB plugin at 140 KB/s.
    pub body_timeout: Duration,
    /// Connections open at once; more are closed on accept. Default 256.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 256,
        }
    }
}

impl ServerLimits {
    /// Refuses bounds that would turn a feature off by accident (a zero timeout or cap).
    pub fn validate(&self) -> Result<(), String> {
        if self.header_timeout.is_zero() {
            return Err("admin header_timeout_ms must be greater than zero".into());
        }
        if self.body_timeout.is_zero() {
            return Err("admin body_timeout_ms must be greater than zero".into());
        }
        if self.max_connections == 0 {
            return Err("admin max_connections must be at least 1".into());
        }
        Ok(())
    }
}

/// How [`serve_with`] serves: its bounds and, optionally, TLS.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub limits: ServerLimits,
    /// Serve HTTPS with this configuration ([`tls_config`]); plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Why the API's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("admin API TLS: {0}")]
pub struct TlsConfigError(String);

/// A TLS 1.2/1.3 server configuration (ring provider, ALPN `http/1.1`) for a certificate
/// chain and its key, e.g. from `switchboard_edge::TlsIdentity::load` (PEM or DER).
pub fn tls_config(
    cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)
        .map_err(|e| TlsConfigError(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How long a graceful stop waits for requests in flight before it drops them.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves the API on `listener` until `shutdown` completes, then stops accepting, closes
/// idle connections and lets requests in flight finish (at most [`DRAIN`]).
pub async fn serve_with(
    listener: TcpListener,
    control: Arc<Control>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let ServeOptions { limits, tls } = options;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr()?, scheme, ?limits, "admin API listening");
    let app = super::router_with(control, &limits);
    let tls = tls.map(TlsAcceptor::from);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: give the node a moment.
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!(
                max = limits.max_connections,
                "admin API connection closed: too many open"
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, service, header_timeout, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, service, header_timeout, watcher).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "admin API TLS handshake failed"),
                        Err(_) => tracing::debug!("admin API TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin API requests still running after {DRAIN:?}; dropping them");
    }
    Ok(())
}

async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<axum::Router>,
    header_timeout: Duration,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "admin API connection ended");
    }
}

/// Accept errors that concern one connection only (the next accept can succeed).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
