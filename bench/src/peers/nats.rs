//! Lean raw NATS client: the text protocol (`INFO`, `CONNECT`, `PUB`, `SUB`, `MSG`, `PING`,
//! `PONG`, `+OK`, `-ERR`), plaintext or TLS. NATS sends `INFO` in plaintext first and the
//! client upgrades the connection to TLS after it when the server requires TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::load::{AckTally, Encode, Tally};

pub const SUBJECT: &str = "bench.g";

pub type Reader = Box<dyn AsyncRead + Unpin + Send>;
pub type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// One parsed server operation.
#[derive(Debug, PartialEq)]
pub enum Op {
    Msg {
        subject: Bytes,
        reply: Option<Bytes>,
        payload: Bytes,
    },
    Ping,
    Pong,
    Ok,
    Info(Bytes),
    Err(String),
}

/// Parses the next complete operation at the front of `buf` (sans IO).
pub fn parse(buf: &mut BytesMut) -> Result<Option<Op>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[..eol];
    if line.starts_with(b"MSG ") {
        let fields: Vec<&[u8]> = line[4..]
            .split(|&b| b == b' ')
            .filter(|f| !f.is_empty())
            .collect();
        let size: usize = std::str::from_utf8(fields.last().context("MSG without size")?)?
            .parse()
            .context("MSG size")?;
        let total = eol + 2 + size + 2;
        if buf.len() < total {
            return Ok(None);
        }
        let subject = Bytes::copy_from_slice(fields[0]);
        let reply = (fields.len() == 4).then(|| Bytes::copy_from_slice(fields[2]));
        buf.advance(eol + 2);
        let payload = buf.split_to(size).freeze();
        buf.advance(2);
        return Ok(Some(Op::Msg {
            subject,
            reply,
            payload,
        }));
    }
    let op = if line == b"PING" {
        Op::Ping
    } else if line == b"PONG" {
        Op::Pong
    } else if line == b"+OK" {
        Op::Ok
    } else if line.starts_with(b"INFO ") {
        Op::Info(Bytes::copy_from_slice(&line[5..]))
    } else if line.starts_with(b"-ERR") {
        Op::Err(String::from_utf8_lossy(line).into_owned())
    } else {
        bail!("unexpected NATS line {:?}", String::from_utf8_lossy(line));
    };
    buf.advance(eol + 2);
    Ok(Some(op))
}

/// Connects, reads `INFO`, upgrades to TLS if `tls` is given, sends `CONNECT`.
/// Returns the halves and what is buffered.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    name: &str,
) -> Result<(Reader, Writer, BytesMut)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // INFO arrives alone; the server says nothing more until the client speaks (or starts
    // TLS), so reading past it cannot swallow TLS bytes.
    loop {
        if let Some(op) = parse(&mut buf)? {
            match op {
                Op::Info(_) => break,
                other => bail!("expected INFO, got {other:?}"),
            }
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            bail!("connection closed before INFO");
        }
    }
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":{},\"name\":\"{name}\",\
         \"lang\":\"rust\",\"version\":\"0.1\",\"protocol\":1,\"echo\":false}}\r\n",
        tls.is_some()
    );
    let (r, mut w): (Reader, Writer) = match tls {
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
    w.write_all(connect.as_bytes()).await?;
    Ok((r, w, buf))
}

/// Sends `PING` and reads until `PONG`: everything sent before is processed by the server.
pub async fn round_trip(r: &mut Reader, w: &mut Writer, buf: &mut BytesMut) -> Result<()> {
    w.write_all(b"PING\r\n").await?;
    loop {
        while let Some(op) = parse(buf)? {
            match op {
                Op::Pong => return Ok(()),
                Op::Err(e) => bail!("{e}"),
                _ => {}
            }
        }
        if r.read_buf(buf).await? == 0 {
            bail!("connection closed");
        }
    }
}

/// Subscriber `sub` of `subject`: subscribes (confirmed by a round trip), then feeds every
/// `MSG` to the tally and answers the server's `PING`s.
pub async fn subscribe(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    subject: &str,
    sub: usize,
    tally: Arc<Tally>,
) -> Result<()> {
    let (mut r, mut w, mut buf) = connect(addr, tls, &format!("s{sub}")).await?;
    w.write_all(format!("SUB {subject} 1\r\n").as_bytes())
        .await?;
    round_trip(&mut r, &mut w, &mut buf).await?;
    tokio::spawn(async move {
        let result: Result<()> = async {
            loop {
                while let Some(op) = parse(&mut buf)? {
                    match op {
                        Op::Msg { payload, .. } => tally.deliver(sub, &payload),
                        Op::Ping => w.write_all(b"PONG\r\n").await?,
                        Op::Err(e) => bail!("{e}"),
                        _ => {}
                    }
                }
                if !crate::load::read_more(&mut r, &mut buf).await? {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = result {
            eprintln!("nats subscriber {sub}: {e:#}");
        }
    });
    Ok(())
}

/// A publisher: the write half, with a task draining (and reporting errors from) the read
/// half.
pub async fn publisher(addr: SocketAddr, tls: Option<&TlsConnector>) -> Result<Writer> {
    let (mut r, mut w, mut buf) = connect(addr, tls, "pub").await?;
    round_trip(&mut r, &mut w, &mut buf).await?;
    tokio::spawn(async move {
        loop {
            while let Ok(Some(op)) = parse(&mut buf) {
                if let Op::Err(e) = op {
                    eprintln!("nats publisher: {e}");
                }
            }
            match r.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    });
    Ok(w)
}

/// `PUB bench.g <n>\r\n<body>\r\n`.
pub struct Encoder;

impl Encode for Encoder {
    fn encode(&mut self, buf: &mut BytesMut, _index: u64, body: &[u8]) {
        encode_pub(buf, SUBJECT, body);
    }
}

/// `PUB <subject> <n>\r\n<body>\r\n`.
pub fn encode_pub(buf: &mut BytesMut, subject: &str, body: &[u8]) {
    use std::fmt::Write;
    let _ = write!(buf, "PUB {subject} {}\r\n", body.len());
    buf.extend_from_slice(body);
    buf.extend_from_slice(b"\r\n");
}

/// The subject of the JetStream stream `BENCH`.
pub const JS_SUBJECT: &str = "bench.js";
/// Where the publisher gets JetStream's answers: `_INBOX.b.<message index>`.
const INBOX: &str = "_INBOX.b";

/// A JetStream publisher: creates the stream `BENCH` (file storage, one replica) over
/// [`JS_SUBJECT`] and reports each publish's `PubAck` (or error) to `tally`.
pub async fn jetstream_publisher(addr: SocketAddr, tally: Arc<AckTally>) -> Result<Writer> {
    let (mut r, mut w, mut buf) = connect(addr, None, "js-pub").await?;
    let config = format!(
        "{{\"name\":\"BENCH\",\"subjects\":[\"{JS_SUBJECT}\"],\"storage\":\"file\",\
         \"retention\":\"limits\",\"discard\":\"old\",\"num_replicas\":1}}"
    );
    w.write_all(
        format!(
            "SUB {INBOX}.* 1\r\nPUB $JS.API.STREAM.CREATE.BENCH {INBOX}.create {}\r\n{config}\r\n",
            config.len()
        )
        .as_bytes(),
    )
    .await?;
    'created: loop {
        while let Some(op) = parse(&mut buf)? {
            match op {
                Op::Msg { payload, .. } if is_error(&payload) => {
                    bail!("stream create: {}", String::from_utf8_lossy(&payload))
                }
                Op::Msg { .. } => break 'created,
                Op::Err(e) => bail!("{e}"),
                _ => {}
            }
        }
        if r.read_buf(&mut buf).await? == 0 {
            bail!("connection closed");
        }
    }
    tokio::spawn(async move {
        loop {
            while let Ok(Some(op)) = parse(&mut buf) {
                if let Op::Msg {
                    subject, payload, ..
                } = op
                {
                    let index = subject
                        .rsplit(|&b| b == b'.')
                        .next()
                        .and_then(|i| std::str::from_utf8(i).ok()?.parse().ok());
                    if let Some(i) = index {
                        tally.ack(i, !is_error(&payload));
                    }
                }
            }
            match r.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    });
    Ok(w)
}

fn is_error(payload: &[u8]) -> bool {
    payload.windows(7).any(|w| w == b"\"error\"")
}

/// `PUB bench.js _INBOX.b.<index> <n>\r\n<body>\r\n`: a JetStream publish that wants its ack.
pub struct JsEncoder;

impl Encode for JsEncoder {
    fn encode(&mut self, buf: &mut BytesMut, index: u64, body: &[u8]) {
        use std::fmt::Write;
        let _ = write!(buf, "PUB {JS_SUBJECT} {INBOX}.{index} {}\r\n", body.len());
        buf.extend_from_slice(body);
        buf.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_msg_and_control_lines() {
        let mut buf = BytesMut::from(&b"PING\r\nMSG a.b 1 5\r\nhel"[..]);
        assert_eq!(parse(&mut buf).unwrap(), Some(Op::Ping));
        assert_eq!(parse(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"lo\r\nMSG x 2 _INBOX.1 0\r\n\r\n+OK\r\n");
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(Op::Msg {
                subject: Bytes::from_static(b"a.b"),
                reply: None,
                payload: Bytes::from_static(b"hello")
            })
        );
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(Op::Msg {
                subject: Bytes::from_static(b"x"),
                reply: Some(Bytes::from_static(b"_INBOX.1")),
                payload: Bytes::new()
            })
        );
        assert_eq!(parse(&mut buf).unwrap(), Some(Op::Ok));
        assert!(buf.is_empty());
    }

    #[test]
    fn encodes_pub() {
        let mut buf = BytesMut::new();
        Encoder.encode(&mut buf, 0, b"hi");
        assert_eq!(&buf[..], b"PUB bench.g 2\r\nhi\r\n");
    }
}
