//! Switchboard's edge: the QUIC endpoint (quinn + rustls), the WebTransport endpoint for
//! browsers (wtransport, over the same quinn), and the routing hub behind them.
//!
//! This is the only crate that knows QUIC. [`Node`] binds the endpoints, accepts connections
//! and runs the hub's committer; [`hub`] holds routing, fan-out and catch-up, written against
//! bounded queues rather than sockets.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::{ErrorCode, Limits};
use switchboard_store::Store;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub mod active_first;
mod breaker;
mod clock;
mod commit;
mod conn;
pub mod elsewhere;
mod error;
mod groups;
pub mod histogram;
pub mod hub;
pub mod load;
/// A session without a socket, for the routing fuzz target (feature `local`).
#[cfg(feature = "local")]
pub mod local;
pub mod metrics;
pub mod notify;
mod outbox;
pub mod push;
mod rates;
pub mod receipts;
mod serving;
mod sessions;
mod state;
pub mod tls;
mod transport;
pub mod webhook;
pub mod webtransport;

pub use error::RequestError;
pub use hub::Hub;
pub use hub::{PresenceCounts, SessionInfo};
pub use metrics::{Metrics, MetricsSnapshot, Series, SeriesKind, TenantTrafficSnapshot};
pub use serving::{
    CanarySet, PolicySet, ServingSnapshot, ServingState, VersionedPolicy, FAILURE_LOG_INTERVAL_MS,
};
pub use tls::TlsIdentity;
pub use webtransport::WebTransportConfig;

/// A key scoped to one tenant (tenants share no state).
pub(crate) type Key<T> = (switchboard_core::TenantId, T);

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("config: {0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What a node needs to serve.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub listen: SocketAddr,
    pub limits: Limits,
    pub identity: TlsIdentity,
    /// The WebTransport endpoint for browsers, if any.
    pub webtransport: Option<WebTransportConfig>,
}

/// A running node: endpoint, hub and committer.
#[derive(Debug)]
pub struct Node {
    endpoint: quinn::Endpoint,
    web: Option<WebEndpoint>,
    hub: Arc<Hub>,
    accept_task: JoinHandle<()>,
    committer_task: JoinHandle<()>,
    stop_committer: Arc<Notify>,
}

/// The running WebTransport endpoint.
struct WebEndpoint {
    endpoint: Arc<webtransport::Endpoint>,
    addr: SocketAddr,
    cert_sha256: String,
    accept_task: JoinHandle<()>,
}

impl std::fmt::Debug for WebEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebEndpoint")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// How long shutdown waits for connections to close before giving up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    /// Binds the endpoint and starts serving. Must run inside a tokio runtime.
    pub async fn start(cfg: EdgeConfig, store: Arc<dyn Store>) -> Result<Node, EdgeError> {
        cfg.limits
            .validate()
            .map_err(|e| EdgeError::Config(e.to_string()))?;
        let server_config = tls::server_config(&cfg.identity, &cfg.limits)?;
        let bind_err = |source| EdgeError::Bind {
            addr: cfg.listen,
            source,
        };
        let socket = udp_socket(cfg.listen).map_err(bind_err)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| EdgeError::Config("no async runtime for the endpoint".into()))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(bind_err)?;
        let mut limits = cfg.limits.clone();
        if limits.min_free_disk_bytes < switchboard_core::limits::MIN_FREE_DISK_FLOOR {
            warn!(
                configured = limits.min_free_disk_bytes,
                floor = switchboard_core::limits::MIN_FREE_DISK_FLOOR,
                "min_free_disk_bytes is under its floor; using the floor"
            );
            limits.min_free_disk_bytes = switchboard_core::limits::MIN_FREE_DISK_FLOOR;
        }
        let (hub, committer) = Hub::new(store, limits);
        let stop_committer = Arc::new(Notify::new());
        let committer_task = tokio::spawn(committer.run(stop_committer.clone()));
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), hub.clone()));
        let web = match &cfg.webtransport {
            Some(w) => {
                let endpoint = Arc::new(webtransport::bind(w, &cfg.limits)?);
                let addr = endpoint.local_addr().map_err(|source| EdgeError::Bind {
                    addr: w.listen,
                    source,
                })?;
                let origins: Arc<[String]> = w.allowed_origins.clone().into();
                let accept_task = tokio::spawn(webtransport::accept_loop(
                    endpoint.clone(),
                    hub.clone(),
                    origins,
                ));
                info!(%addr, path = webtransport::PATH, "WebTransport listening");
                Some(WebEndpoint {
                    endpoint,
                    addr,
                    cert_sha256: w.identity.sha256_hex(),
                    accept_task,
                })
            }
            None => None,
        };
        tokio::spawn(store_watch(Arc::downgrade(&hub)));
        if cfg.limits.load_sample_ms > 0 {
            // Ends by itself once the hub is gone.
            let signals: Arc<dyn load::LoadSignals> = hub.clone();
            tokio::spawn(load::monitor(
                Arc::downgrade(&signals),
                cfg.limits.load_sample_ms,
            ));
        }
        info!(addr = %endpoint.local_addr().map_err(|source| EdgeError::Bind { addr: cfg.listen, source })?, "listening");
        Ok(Node {
            endpoint,
            web,
            hub,
            accept_task,
            committer_task,
            stop_committer,
        })
    }

    /// The address the endpoint is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("bound endpoint has an address")
    }

    /// The WebTransport endpoint's address, if it runs.
    pub fn webtransport_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().map(|w| w.addr)
    }

    /// The SHA-256 (hex) of the WebTransport endpoint's certificate, if it runs: what a page
    /// passes as `serverCertificateHashes` for a dev certificate.
    pub fn webtransport_cert_sha256(&self) -> Option<&str> {
        self.web.as_ref().map(|w| w.cert_sha256.as_str())
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Graceful stop: refuse new connections, close open ones with `ShuttingDown`, commit
    /// (flush, ack) everything already accepted, then flush the store.
    pub async fn shutdown(self) {
        self.accept_task.abort();
        let code = u32::from(ErrorCode::ShuttingDown.as_u16());
        self.endpoint.close(code.into(), b"node shutting down");
        if let Some(w) = &self.web {
            w.accept_task.abort();
            w.endpoint.close(code.into(), b"node shutting down");
        }
        let web_idle = async {
            if let Some(w) = &self.web {
                w.endpoint.wait_idle().await;
            }
        };
        let idle = async { tokio::join!(self.endpoint.wait_idle(), web_idle) };
        if tokio::time::timeout(DRAIN_TIMEOUT, idle).await.is_err() {
            warn!("connections did not drain in time");
        }
        self.stop_committer.notify_one();
        let _ = self.committer_task.await;
        if let Err(e) = self.hub.store().flush() {
            warn!(error = %e, "final flush failed");
        }
        info!("stopped");
    }
}

/// Socket buffer the node asks the kernel for, each way. The default (~208 KiB) overflows
/// when thousands of clients ACK one fan-out at once or a handshake storm arrives: the
/// large-group benchmark saw 37k-158k datagrams dropped per run, and the connection storm
/// 1 s handshake retransmits at p99. The kernel caps it at `net.core.rmem_max`/`wmem_max`.
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

pub(crate) fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer than asked for only costs drops under bursts.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    info!(
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
    Ok(socket.into())
}

/// How often [`store_watch`] looks at the disk and the store.
pub const STORE_WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Keeps the hub's view of free disk space current (a `statvfs` every 250 ms), and reopens
/// the store once it failed (an I/O error such as a full disk: sled then refuses every
/// write until it is opened again) and the disk has room above the reserve again, so the
/// node recovers without a restart. Ends with the hub.
async fn store_watch(hub: std::sync::Weak<Hub>) {
    loop {
        let Some(h) = hub.upgrade() else { return };
        let low = h.check_disk();
        let store = h.store().clone();
        drop(h);
        if !low && store.health() != switchboard_store::StoreHealth::Ok {
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || store.recover()).await {
                Ok(Ok(true)) => info!(
                    took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "store reopened after a failure"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(error = %e, "store still failing; will retry"),
                Err(e) => warn!(error = %e, "store reopen task failed; will retry"),
            }
        }
        tokio::time::sleep(STORE_WATCH_INTERVAL).await;
    }
}

/// What to do with a connection attempt.
pub(crate) enum Admit {
    Accept,
    /// Answer with a QUIC `Retry` (prove the address first).
    Retry,
    Refuse,
}

/// Admits connection attempts, native and WebTransport alike: within `max_connections` and
/// `max_handshakes`, and, once `validate_address_from_handshakes` handshakes are in flight,
/// only from addresses that answered a `Retry`. Refusing and retrying are stateless for the
/// node (quinn answers from the one packet), so a flood costs at most the bounded handshakes
/// plus a packet each. An accepted attempt is counted here, before its handshake, so a burst
/// cannot exceed either bound; its task uncounts it (`conn::Counted`).
pub(crate) fn admit(hub: &Hub, validated: bool, may_retry: bool) -> Admit {
    let m = hub.metrics();
    let limits = hub.limits();
    let open = m.connections.load(Ordering::Relaxed);
    if open >= limits.max_connections as usize {
        m.connections_refused.fetch_add(1, Ordering::Relaxed);
        return Admit::Refuse;
    }
    let handshakes = m.handshakes.load(Ordering::Relaxed);
    if handshakes >= limits.validate_address_from_handshakes as usize && !validated && may_retry {
        m.handshake_retries.fetch_add(1, Ordering::Relaxed);
        return Admit::Retry;
    }
    if handshakes >= limits.max_handshakes as usize {
        m.handshakes_refused.fetch_add(1, Ordering::Relaxed);
        m.connections_refused.fetch_add(1, Ordering::Relaxed);
        return Admit::Refuse;
    }
    m.connections.fetch_add(1, Ordering::Relaxed);
    m.handshakes.fetch_add(1, Ordering::Relaxed);
    Admit::Accept
}

async fn accept_loop(endpoint: quinn::Endpoint, hub: Arc<Hub>) {
    while let Some(incoming) = endpoint.accept().await {
        let validated = incoming.remote_address_validated();
        match admit(&hub, validated, incoming.may_retry()) {
            Admit::Refuse => incoming.refuse(),
            Admit::Retry => {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
            }
            Admit::Accept => {
                tokio::spawn(conn::serve(hub.clone(), incoming));
            }
        }
    }
}
