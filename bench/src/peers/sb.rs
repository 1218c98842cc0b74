//! Lean raw Switchboard client (`switchboard/1` over QUIC), as in `bench/src/main.rs`, except
//! that it reads every push stream the node opens: the node may open one per lane, so each
//! connection accepts unidirectional streams in a loop and reads each on its own task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use switchboard_core::ErrorCode;
use switchboard_wire::{self as wire, ClientFrame, DecodeLimits, ServerFrame};

use crate::load::{AckTally, Encode, Tally};
use crate::servers::SECRET;

const MAX_FRAME: u32 = 1 << 20;

pub fn endpoint(cert: &[u8]) -> Result<quinn::Endpoint> {
    endpoint_with_keep_alive(cert, None)
}

/// A client endpoint whose connections send a QUIC `PING` after `keep_alive` without traffic.
/// Without one an idle connection ends after 30 s (quinn's and the node's default idle
/// timeout, the smaller of the two applies); the seconds-long publishing runs never idle.
pub fn endpoint_with_keep_alive(
    cert: &[u8],
    keep_alive: Option<Duration>,
) -> Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let mut config = switchboard_client::tls::client_config(cert)?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(keep_alive);
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

pub struct Session {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub buf: BytesMut,
}

/// Connects as `user` and reads `Welcome`. Retries the handshake for a while: the node may
/// still be starting.
pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, user: &str) -> Result<Session> {
    let mut tries = 0;
    let conn = loop {
        match endpoint.connect(addr, "localhost")?.await {
            Ok(c) => break c,
            Err(e) if tries < 100 => {
                tries += 1;
                tracing_sleep(&e).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let token = crate::session::token("bench", user, SECRET.as_bytes())?;
    let (send, recv, buf) = crate::session::hello(&conn, token, "peers-bench", MAX_FRAME).await?;
    Ok(Session {
        conn,
        send,
        recv,
        buf,
    })
}

async fn tracing_sleep(_e: &quinn::ConnectionError) {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Subscriber `sub` (user `u{sub+1}`): every `Deliver` on every push stream goes to the tally.
pub async fn subscribe(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    sub: usize,
    tally: Arc<Tally>,
) -> Result<()> {
    let s = connect(endpoint, addr, &format!("u{}", sub + 1)).await?;
    tokio::spawn(async move {
        // The control stream stays open for the session's life (finishing it ends the
        // session).
        let _control = (s.send, s.recv);
        while let Ok(push) = s.conn.accept_uni().await {
            let tally = tally.clone();
            tokio::spawn(async move {
                let _ = read_push(push, sub, &tally).await;
            });
        }
    });
    Ok(())
}

async fn read_push(mut push: quinn::RecvStream, sub: usize, tally: &Tally) -> Result<()> {
    let mut buf = BytesMut::new();
    let limits = DecodeLimits::default();
    while let Some(f) = wire::read_frame(&mut push, &mut buf, MAX_FRAME).await? {
        if let ServerFrame::Deliver(m) = wire::decode_server(&f, &limits)? {
            tally.deliver(sub, &m.body);
        }
    }
    Ok(())
}

/// The publisher (user `u0`, a member like the subscribers): its control stream's send
/// side, plus tasks that count `Ack`s and drain (without decoding) the pushes the node sends
/// to the sender's own session.
pub struct Publisher {
    pub send: quinn::SendStream,
    pub acks: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
    _conn: quinn::Connection,
}

/// With `acks_to`, every `Ack` (and `Error`) is also reported to it by message index.
pub async fn publisher(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    acks_to: Option<Arc<AckTally>>,
) -> Result<Publisher> {
    let s = connect(endpoint, addr, "u0").await?;
    let acks = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    {
        let (acks, errors) = (acks.clone(), errors.clone());
        let (mut recv, mut buf) = (s.recv, s.buf);
        tokio::spawn(async move {
            let limits = DecodeLimits::default();
            while let Ok(Some(f)) = wire::read_frame(&mut recv, &mut buf, MAX_FRAME).await {
                match wire::decode_server(&f, &limits) {
                    Ok(ServerFrame::Ack { request_id, .. }) => {
                        acks.fetch_add(1, Ordering::Relaxed);
                        if let Some(t) = &acks_to {
                            t.ack(request_id.saturating_sub(1), true);
                        }
                    }
                    Ok(ServerFrame::Error(e)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(t) = &acks_to {
                            t.ack(e.request_id.saturating_sub(1), false);
                        }
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let conn = s.conn.clone();
    tokio::spawn(async move {
        while let Ok(mut push) = conn.accept_uni().await {
            tokio::spawn(async move {
                while let Ok(Some(_)) = push.read_chunk(usize::MAX, true).await {}
            });
        }
    });
    Ok(Publisher {
        send: s.send,
        acks,
        errors,
        _conn: s.conn,
    })
}

/// `Send` frames to group `g`.
pub struct Encoder;

impl Encode for Encoder {
    fn encode(&mut self, buf: &mut BytesMut, index: u64, body: &[u8]) {
        encode_send(buf, "g", index, body);
    }
}

/// A `Send` of message `index` (request id `index + 1`) to `group`.
pub fn encode_send(buf: &mut BytesMut, group: &str, index: u64, body: &[u8]) {
    let frame = wire::encode_client(&ClientFrame::Send {
        request_id: index + 1,
        group: group.into(),
        client_msg_id: format!("m{index}"),
        body: bytes::Bytes::copy_from_slice(body),
    });
    buf.extend_from_slice(&frame);
}

/// Waits until the tenant's policy plugin is active: the node binds a config file's plugin
/// only after its endpoint is up. Probes as `u0` with a `!spam` body, which the reference
/// `priority` plugin refuses and the built-in default accepts (the probe bodies are shorter
/// than [`crate::load::HEADER`], so subscribers that see them through catch-up ignore them).
/// `u0` must be a member of `group`.
pub async fn wait_for_plugin(cert: &[u8], addr: SocketAddr, group: &str) -> Result<()> {
    let ep = endpoint(cert)?;
    let mut s = connect(&ep, addr, "u0").await?;
    let limits = DecodeLimits::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for request_id in 1.. {
        s.send
            .write_all(&wire::encode_client(&ClientFrame::Send {
                request_id,
                group: group.into(),
                client_msg_id: format!("probe{request_id}"),
                body: bytes::Bytes::from_static(b"!spam probe"),
            }))
            .await?;
        loop {
            let f = wire::read_frame(&mut s.recv, &mut s.buf, MAX_FRAME)
                .await?
                .context("node closed the probe's stream")?;
            match wire::decode_server(&f, &limits)? {
                ServerFrame::Error(e) if e.request_id == request_id => {
                    if e.code != ErrorCode::PolicyRejected as u16 {
                        bail!("policy probe to {group}: {} ({})", e.message, e.code);
                    }
                    ep.close(0u32.into(), b"done");
                    return Ok(());
                }
                ServerFrame::Ack { request_id: r, .. } if r == request_id => break,
                _ => {}
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("the node accepts `!spam` after 20 s: is the priority plugin bound?");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("request ids do not run out")
}
