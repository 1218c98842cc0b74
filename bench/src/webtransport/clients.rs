//! The load generator's raw sessions, one kind per transport: native QUIC (quinn, as the
//! SDKs connect) and WebTransport (wtransport: HTTP/3, extended `CONNECT` to
//! `/switchboard/1`, the certificate pinned by its SHA-256, as a browser connects). Each says
//! `Hello` and reads `Welcome`; a receiver counts the `Deliver`s on every push stream the node
//! opens; the sender keeps a window of sends waiting for their `Ack`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use switchboard_core::PresenceState;
use switchboard_wire::{self as wire, ClientFrame, DecodeLimits, ServerFrame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::servers::SECRET;

const MAX_FRAME: u32 = 1 << 20;
/// Below the node's 30 s idle timeout: idle sessions stay up however long a run takes.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Longest one connection attempt may take before it is tried again (a node still starting).
const ATTEMPT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    Quic,
    WebTransport,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Quic => "QUIC",
            Transport::WebTransport => "WebTransport",
        }
    }
}

/// Where the node is and how to trust it, for both kinds of client.
pub struct Target {
    pub quic: SocketAddr,
    pub web: SocketAddr,
    pub cert_der: Vec<u8>,
    pub cert_sha256: [u8; 32],
}

/// Client endpoints: one UDP socket per transport for all its sessions (the node's cost per
/// session does not depend on how clients spread over sockets).
pub struct Endpoints {
    quic: quinn::Endpoint,
    web: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

impl Endpoints {
    pub fn new(target: &Target) -> Result<Self> {
        let mut quic = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let mut config = switchboard_client::tls::client_config(&target.cert_der)?;
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(KEEP_ALIVE));
        config.transport_config(Arc::new(transport));
        quic.set_default_client_config(config);
        let web_config = wtransport::ClientConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(
                target.cert_sha256,
            )])
            .keep_alive_interval(Some(KEEP_ALIVE))
            .build();
        let web = wtransport::Endpoint::client(web_config)?;
        Ok(Self { quic, web })
    }
}

/// A session's control stream, whatever carries it.
pub struct Session {
    send: Box<dyn AsyncWrite + Send + Unpin>,
    recv: Box<dyn AsyncRead + Send + Unpin>,
    buf: BytesMut,
    conn: Conn,
}

enum Conn {
    Quic(quinn::Connection),
    Web(wtransport::Connection),
}

/// A session's connection and its control stream, whichever transport carries them.
type Parts = (
    Conn,
    Box<dyn AsyncWrite + Send + Unpin>,
    Box<dyn AsyncRead + Send + Unpin>,
);

/// Connects as `user` over `transport` and reads `Welcome`. Retries the handshake for a
/// while: the node may still be starting.
pub async fn connect(
    ep: &Endpoints,
    target: &Target,
    transport: Transport,
    user: &str,
) -> Result<Session> {
    let mut tries = 0;
    let (conn, send, recv) = loop {
        let attempt = async {
            let parts: Parts = match transport {
                Transport::Quic => {
                    let c = ep.quic.connect(target.quic, "localhost")?.await?;
                    let (s, r) = c.open_bi().await?;
                    (Conn::Quic(c), Box::new(s), Box::new(r))
                }
                Transport::WebTransport => {
                    let url = format!(
                        "https://127.0.0.1:{}{}",
                        target.web.port(),
                        switchboard_edge::webtransport::PATH
                    );
                    let c = ep.web.connect(url).await?;
                    let (s, r) = c.open_bi().await?.await?;
                    (Conn::Web(c), Box::new(s), Box::new(r))
                }
            };
            anyhow::Ok(parts)
        };
        // A node that is not up yet does not answer at all: try again soon.
        let attempt = async {
            tokio::time::timeout(ATTEMPT, attempt)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {ATTEMPT:?}")))
        };
        match attempt.await {
            Ok(parts) => break parts,
            Err(e) if tries < 100 => {
                tries += 1;
                tracing::debug!(error = %e, "connect failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let mut s = Session {
        send,
        recv,
        buf: BytesMut::new(),
        conn,
    };
    let token = crate::session::token("bench", user, SECRET.as_bytes())?;
    s.write(&ClientFrame::Hello(wire::Hello {
        token,
        presence: PresenceState::Foreground,
        cursors: vec![],
        client: "webtransport-bench".into(),
    }))
    .await?;
    match s.read().await? {
        ServerFrame::Welcome { .. } => Ok(s),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

impl Session {
    pub async fn write(&mut self, f: &ClientFrame) -> Result<()> {
        self.send.write_all(&wire::encode_client(f)).await?;
        Ok(())
    }

    /// The next frame on the control stream.
    pub async fn read(&mut self) -> Result<ServerFrame> {
        let f = wire::read_frame(&mut self.recv, &mut self.buf, MAX_FRAME)
            .await?
            .context("control stream ended")?;
        Ok(wire::decode_server(&f, &DecodeLimits::default())?)
    }

    /// Counts this session's `Deliver`s into `count` from now on (every push stream, each on
    /// a task of its own), and notes in `done_at` when it reached `expect`. The control stream
    /// stays open with the returned handle: finishing it would end the session.
    pub fn count_deliveries(self, count: Arc<AtomicU64>, expect: u64, done: Arc<Done>) -> Session {
        match &self.conn {
            Conn::Quic(c) => {
                let c = c.clone();
                tokio::spawn(async move {
                    while let Ok(recv) = c.accept_uni().await {
                        tokio::spawn(count_stream(recv, count.clone(), expect, done.clone()));
                    }
                });
            }
            Conn::Web(c) => {
                let c = c.clone();
                tokio::spawn(async move {
                    while let Ok(recv) = c.accept_uni().await {
                        tokio::spawn(count_stream(recv, count.clone(), expect, done.clone()));
                    }
                });
            }
        }
        self
    }
}

impl Session {
    /// Reads and drops whatever the node pushes to this session (the sender's copies of its
    /// own messages), so it never becomes a slow consumer.
    pub fn drain_pushes(&self) {
        async fn drain(mut recv: impl AsyncRead + Unpin) {
            let _ = tokio::io::copy(&mut recv, &mut tokio::io::sink()).await;
        }
        match &self.conn {
            Conn::Quic(c) => {
                let c = c.clone();
                tokio::spawn(async move {
                    while let Ok(recv) = c.accept_uni().await {
                        tokio::spawn(drain(recv));
                    }
                });
            }
            Conn::Web(c) => {
                let c = c.clone();
                tokio::spawn(async move {
                    while let Ok(recv) = c.accept_uni().await {
                        tokio::spawn(drain(recv));
                    }
                });
            }
        }
    }
}

/// When the last receiver had all its messages.
#[derive(Default)]
pub struct Done {
    receivers_done: AtomicU64,
    last: std::sync::Mutex<Option<Instant>>,
    notify: tokio::sync::Notify,
}

impl Done {
    fn one_done(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.receivers_done.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Waits until `n` receivers are done (or `timeout`); returns when the last one was.
    pub async fn all(&self, n: u64, timeout: Duration) -> Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if self.receivers_done.load(Ordering::Acquire) >= n {
                let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
                return last.context("no receiver done");
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!(
                    "only {} of {n} receivers got every message within {timeout:?}",
                    self.receivers_done.load(Ordering::Acquire)
                );
            }
        }
    }
}

async fn count_stream(
    mut recv: impl AsyncRead + Unpin,
    count: Arc<AtomicU64>,
    expect: u64,
    done: Arc<Done>,
) {
    let mut buf = BytesMut::new();
    let limits = DecodeLimits::default();
    while let Ok(Some(f)) = wire::read_frame(&mut recv, &mut buf, MAX_FRAME).await {
        if let Ok(ServerFrame::Deliver(_)) = wire::decode_server(&f, &limits) {
            if count.fetch_add(1, Ordering::AcqRel) + 1 == expect {
                done.one_done();
            }
        }
    }
}

/// Sends `messages` bodies of `payload` bytes to `group`, at most `window` waiting for their
/// `Ack`; returns once every one was acknowledged.
pub async fn burst(
    s: &mut Session,
    group: &str,
    messages: u64,
    payload: usize,
    window: u64,
) -> Result<()> {
    let body = bytes::Bytes::from(vec![b'x'; payload]);
    let mut sent = 0;
    let mut acked = 0;
    while acked < messages {
        while sent < messages && sent - acked < window {
            s.write(&ClientFrame::Send {
                request_id: sent + 1,
                group: group.into(),
                client_msg_id: format!("m{sent}"),
                body: body.clone(),
            })
            .await?;
            sent += 1;
        }
        match s.read().await? {
            ServerFrame::Ack { .. } => acked += 1,
            ServerFrame::Error(e) => bail!("send refused: {e:?}"),
            _ => {}
        }
    }
    Ok(())
}
