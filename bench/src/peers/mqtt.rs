//! Lean raw MQTT 3.1.1 client: `CONNECT`/`CONNACK`, `SUBSCRIBE`/`SUBACK`, `PUBLISH` at QoS 0
//! or 1 with `PUBACK`, plaintext or TLS. Clean sessions, keep-alive off (runs are seconds
//! long).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::load::{Encode, Tally};

pub const TOPIC: &str = "bench/g";

pub type Reader = Box<dyn AsyncRead + Unpin + Send>;
pub type Writer = Box<dyn AsyncWrite + Unpin + Send>;

const CONNECT: u8 = 0x10;
const CONNACK: u8 = 0x20;
const PUBLISH: u8 = 0x30;
const PUBACK: u8 = 0x40;
const SUBSCRIBE: u8 = 0x82;
const SUBACK: u8 = 0x90;

fn put_len(buf: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

/// Parses the next complete packet at the front of `buf`: (first byte, body).
pub fn parse(buf: &mut BytesMut) -> Result<Option<(u8, Bytes)>> {
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            bail!("bad remaining length");
        }
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(i);
    Ok(Some((first, buf.split_to(len).freeze())))
}

/// A `PUBLISH` body → (packet id if QoS > 0, payload).
pub fn publish_payload(first: u8, body: &Bytes) -> Result<(Option<u16>, Bytes)> {
    let qos = (first >> 1) & 3;
    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2 + topic_len;
    let id = if qos > 0 {
        let id = u16::from_be_bytes([body[at], body[at + 1]]);
        at += 2;
        Some(id)
    } else {
        None
    };
    Ok((id, body.slice(at..)))
}

async fn read_packet(r: &mut Reader, buf: &mut BytesMut) -> Result<(u8, Bytes)> {
    loop {
        if let Some(p) = parse(buf)? {
            return Ok(p);
        }
        if r.read_buf(buf).await? == 0 {
            bail!("connection closed");
        }
    }
}

/// Connects (TLS if `tls`), sends `CONNECT` with a clean session, reads `CONNACK`.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    client_id: &str,
) -> Result<(Reader, Writer, BytesMut)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut r, mut w): (Reader, Writer) = match tls {
        Some(c) => {
            let server = rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = c.connect(server, tcp).await?;
            let (r, w) = tokio::io::split(stream);
            (Box::new(r), Box::new(w))
        }
        None => {
            let (r, w) = tcp.into_split();
            (Box::new(r), Box::new(w))
        }
    };
    let mut body = BytesMut::new();
    put_str(&mut body, "MQTT");
    body.put_u8(4); // protocol level 3.1.1
    body.put_u8(0x02); // clean session
    body.put_u16(0); // keep-alive off
    put_str(&mut body, client_id);
    let mut p = BytesMut::new();
    p.put_u8(CONNECT);
    put_len(&mut p, body.len());
    p.put_slice(&body);
    w.write_all(&p).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let (first, body) = read_packet(&mut r, &mut buf).await?;
    if first != CONNACK || body.len() != 2 || body[1] != 0 {
        bail!("connect refused: {first:#x} {body:?}");
    }
    Ok((r, w, buf))
}

/// Subscriber `sub` of `topic` at `qos`: subscribes (confirmed by `SUBACK`), then feeds every
/// `PUBLISH` to the tally, answering QoS 1 ones with `PUBACK` (batched per read).
pub async fn subscribe(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    topic: &str,
    qos: u8,
    sub: usize,
    tally: Arc<Tally>,
) -> Result<()> {
    let (mut r, mut w, mut buf) = connect(addr, tls, &format!("s{sub}")).await?;
    let mut p = BytesMut::new();
    p.put_u8(SUBSCRIBE);
    put_len(&mut p, 2 + 2 + topic.len() + 1);
    p.put_u16(1);
    put_str(&mut p, topic);
    p.put_u8(qos);
    w.write_all(&p).await?;
    let (first, body) = read_packet(&mut r, &mut buf).await?;
    if first != SUBACK || body.get(2).is_none_or(|&granted| granted != qos) {
        bail!("subscribe refused: {first:#x} {body:?}");
    }
    tokio::spawn(async move {
        let result: Result<()> = async {
            let mut acks = BytesMut::new();
            loop {
                while let Some((first, body)) = parse(&mut buf)? {
                    if first & 0xf0 == PUBLISH {
                        let (id, payload) = publish_payload(first, &body)?;
                        tally.deliver(sub, &payload);
                        if let Some(id) = id {
                            acks.put_slice(&[PUBACK, 2]);
                            acks.put_u16(id);
                        }
                    }
                }
                if !acks.is_empty() {
                    w.write_all(&acks).await?;
                    acks.clear();
                }
                if !crate::load::read_more(&mut r, &mut buf).await? {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = result {
            eprintln!("mqtt subscriber {sub}: {e:#}");
        }
    });
    Ok(())
}

/// A publisher: the write half, with a task counting `PUBACK`s.
pub async fn publisher(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
) -> Result<(Writer, Arc<AtomicU64>)> {
    let (mut r, w, mut buf) = connect(addr, tls, "pub").await?;
    let acks = Arc::new(AtomicU64::new(0));
    let counter = acks.clone();
    tokio::spawn(async move {
        loop {
            while let Ok(Some((first, _))) = parse(&mut buf) {
                if first == PUBACK {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            match r.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    });
    Ok((w, acks))
}

/// `PUBLISH` to `bench/g` at `qos` (packet ids cycle through 1..=65535).
pub struct Encoder {
    pub qos: u8,
    next_id: u16,
}

impl Encoder {
    pub fn new(qos: u8) -> Encoder {
        Encoder { qos, next_id: 0 }
    }
}

impl Encode for Encoder {
    fn encode(&mut self, buf: &mut BytesMut, _index: u64, body: &[u8]) {
        self.publish(buf, TOPIC, body);
    }
}

impl Encoder {
    /// `PUBLISH` of `body` to `topic`.
    pub fn publish(&mut self, buf: &mut BytesMut, topic: &str, body: &[u8]) {
        let id_len = if self.qos > 0 { 2 } else { 0 };
        buf.put_u8(PUBLISH | (self.qos << 1));
        put_len(buf, 2 + topic.len() + id_len + body.len());
        put_str(buf, topic);
        if self.qos > 0 {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            buf.put_u16(self.next_id);
        }
        buf.put_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_through_the_parser() {
        let body = vec![7u8; 300]; // a two-byte remaining length
        let mut buf = BytesMut::new();
        let mut enc = Encoder::new(1);
        enc.encode(&mut buf, 0, &body);
        enc.encode(&mut buf, 1, b"x");
        let (first, p) = parse(&mut buf).unwrap().unwrap();
        assert_eq!(first, 0x32);
        assert_eq!(
            publish_payload(first, &p).unwrap(),
            (Some(1), Bytes::from(body))
        );
        let (first, p) = parse(&mut buf).unwrap().unwrap();
        assert_eq!(
            publish_payload(first, &p).unwrap(),
            (Some(2), Bytes::from_static(b"x"))
        );
        assert!(parse(&mut buf).unwrap().is_none());
    }

    #[test]
    fn partial_packets_wait_for_more() {
        let mut buf = BytesMut::from(&[0x30u8, 0x85][..]);
        assert!(parse(&mut buf).unwrap().is_none());
    }
}
