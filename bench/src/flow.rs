//! One sender and its receivers, as the fan-out benchmarks drive them: a session over QUIC,
//! sends with a window in flight (an ack comes once the message is durable), deliveries
//! timestamped against the send time in the body. Included by `main.rs` and, by path, by
//! `cluster/main.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::{BufMut, BytesMut};
use switchboard_wire::{self as wire, ClientFrame, DecodeLimits, ServerFrame};

use crate::{push, session};

pub struct Conn {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub buf: BytesMut,
}

/// A session of the holder of `token` (`Hello` answered by `Welcome`).
pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, token: String) -> Result<Conn> {
    let conn = endpoint.connect(addr, "localhost")?.await?;
    let (send, recv, buf) = session::hello(&conn, token, "bench", 1 << 20).await?;
    Ok(Conn {
        conn,
        send,
        recv,
        buf,
    })
}

/// Sends `messages` bodies of `payload` bytes to `group` with at most `window` unacked;
/// returns once every one is acked. Each body starts with the send time (ns since `start`)
/// and the message's index. The session stays open (the caller drops it).
pub async fn send_window(
    sender: &mut Conn,
    group: &str,
    window: usize,
    messages: u64,
    payload: usize,
    start: Instant,
) -> Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let acker = {
        let permits = permits.clone();
        let mut buf = std::mem::take(&mut sender.buf);
        let recv = &mut sender.recv;
        async move {
            let limits = DecodeLimits::default();
            for _ in 0..messages {
                let f = wire::read_frame(recv, &mut buf, 1 << 20)
                    .await?
                    .context("control stream ended")?;
                match wire::decode_server(&f, &limits)? {
                    ServerFrame::Ack { .. } => permits.add_permits(1),
                    other => bail!("unexpected {other:?}"),
                }
            }
            anyhow::Ok(())
        }
    };
    let send = &mut sender.send;
    let sending = async {
        let filler = vec![b'x'; payload.saturating_sub(16)];
        for i in 0..messages {
            permits.acquire().await?.forget();
            let mut body = BytesMut::with_capacity(payload);
            body.put_u64(start.elapsed().as_nanos() as u64);
            body.put_u64(i);
            body.put_slice(&filler);
            let frame = wire::encode_client(&ClientFrame::Send {
                request_id: i + 1,
                group: group.into(),
                client_msg_id: format!("m{i}"),
                body: body.freeze(),
            });
            send.write_all(&frame).await?;
        }
        anyhow::Ok(())
    };
    tokio::try_join!(acker, sending)?;
    Ok(())
}

/// Reads `messages` deliveries (of `group` only, if given) from the push streams, in
/// order from seq 1; returns their latencies in µs. Keeps the control stream open:
/// finishing it ends the session.
pub async fn receive(
    c: Conn,
    group: Option<String>,
    messages: u64,
    start: Instant,
) -> Result<Vec<u64>> {
    let mut pushes = push::Pushes::new(&c.conn);
    let mut out = Vec::with_capacity(messages as usize);
    let mut expect = 1;
    while out.len() < messages as usize {
        if let ServerFrame::Deliver(m) = pushes.next().await? {
            if group.as_ref().is_some_and(|g| *g != m.group) {
                continue;
            }
            if m.seq != expect {
                bail!("out of order: got {} expected {expect}", m.seq);
            }
            expect += 1;
            let sent = u64::from_be_bytes(m.body[..8].try_into()?);
            let now = start.elapsed().as_nanos() as u64;
            out.push(now.saturating_sub(sent) / 1_000);
        }
    }
    Ok(out)
}
