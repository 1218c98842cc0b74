//! The two transports a session runs over, behind one small adapter: native QUIC (ALPN
//! `switchboard/1`) and WebTransport (HTTP/3, for browsers). `conn.rs` and `push.rs` are written
//! against [`Conn`], [`SendStream`] and [`RecvStream`] only, so both transports get the same
//! hello, auth, limits, bad-input handling and push planning.
//!
//! A WebTransport stream is a QUIC stream whose first bytes are a WebTransport stream header;
//! wtransport writes and reads that header when the stream is opened or accepted, after which
//! the stream carries switchboard/1 frames exactly as a native one does. So both variants hand
//! out the underlying `quinn` stream ([`SendStream::quic`], [`RecvStream::quic`]) and every
//! read and write is quinn's own.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// A connection of either transport.
#[derive(Clone)]
pub(crate) enum Conn {
    Quic(quinn::Connection),
    Web(wtransport::Connection),
}

/// The connection (or session) is gone, and why.
#[derive(Debug)]
pub(crate) struct Closed(pub String);

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Conn {
    /// The client's address (the operator's connection list shows it).
    pub(crate) fn remote_address(&self) -> std::net::SocketAddr {
        match self {
            Conn::Quic(c) => c.remote_address(),
            Conn::Web(c) => c.remote_address(),
        }
    }

    /// The next client-opened bidirectional stream.
    pub(crate) async fn accept_bi(&self) -> Result<(SendStream, RecvStream), Closed> {
        match self {
            Conn::Quic(c) => c
                .accept_bi()
                .await
                .map(|(s, r)| (SendStream::Quic(s), RecvStream::Quic(r)))
                .map_err(|e| Closed(e.to_string())),
            Conn::Web(c) => c
                .accept_bi()
                .await
                .map(|(s, r)| (SendStream::Web(s), RecvStream::Web(r)))
                .map_err(|e| Closed(e.to_string())),
        }
    }

    /// The next client-opened unidirectional stream. Native QUIC clients cannot open one (the
    /// node's limit for them is 0), so this only ever returns for WebTransport.
    pub(crate) async fn accept_uni(&self) -> Result<RecvStream, Closed> {
        match self {
            Conn::Quic(c) => c
                .accept_uni()
                .await
                .map(RecvStream::Quic)
                .map_err(|e| Closed(e.to_string())),
            Conn::Web(c) => c
                .accept_uni()
                .await
                .map(RecvStream::Web)
                .map_err(|e| Closed(e.to_string())),
        }
    }

    /// Opens a server push stream (for WebTransport, with its header already sent).
    pub(crate) async fn open_uni(&self) -> Result<SendStream, Closed> {
        match self {
            Conn::Quic(c) => c
                .open_uni()
                .await
                .map(SendStream::Quic)
                .map_err(|e| Closed(e.to_string())),
            Conn::Web(c) => {
                let opening = c.open_uni().await.map_err(|e| Closed(e.to_string()))?;
                opening
                    .await
                    .map(SendStream::Web)
                    .map_err(|e| Closed(e.to_string()))
            }
        }
    }

    /// Closes the connection with an application error code (for WebTransport, the QUIC
    /// connection under the session: a browser sees the session end, and reads the reason
    /// from the `Error` frame sent before).
    pub(crate) fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Conn::Quic(c) => c.close(code.into(), reason),
            Conn::Web(c) => c.close(code.into(), reason),
        }
    }

    /// Resolves once the connection is closed, for whatever reason.
    pub(crate) async fn closed(&self) -> String {
        match self {
            Conn::Quic(c) => c.closed().await.to_string(),
            Conn::Web(c) => c.closed().await.to_string(),
        }
    }
}

/// The send side of a stream of either transport.
pub(crate) enum SendStream {
    Quic(quinn::SendStream),
    Web(wtransport::SendStream),
}

impl SendStream {
    /// The QUIC stream under it; what is written here is switchboard/1 frames on both.
    pub(crate) fn quic(&mut self) -> &mut quinn::SendStream {
        match self {
            SendStream::Quic(s) => s,
            SendStream::Web(s) => s.quic_stream_mut(),
        }
    }
}

/// The receive side of a stream of either transport.
pub(crate) enum RecvStream {
    Quic(quinn::RecvStream),
    Web(wtransport::RecvStream),
}

impl RecvStream {
    /// The QUIC stream under it.
    pub(crate) fn quic(&mut self) -> &mut quinn::RecvStream {
        match self {
            RecvStream::Quic(s) => s,
            RecvStream::Web(s) => s.quic_stream_mut(),
        }
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(self.get_mut().quic()).poll_read(cx, buf)
    }
}
