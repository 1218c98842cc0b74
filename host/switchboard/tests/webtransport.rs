//! Browsers' transport from the Rust side: a WebTransport client (wtransport, as a browser
//! would connect: HTTP/3, extended CONNECT to `/switchboard/1`, the certificate pinned by its
//! SHA-256) gets the same session, the same chat with native QUIC clients, the same resume and
//! the same typed errors for bad input as a native client (protocol §17). The browser itself
//! is driven in `web_chat.rs`.

mod common;

use bytes::BytesMut;
use common::*;
use switchboard_core::{ErrorCode, Limits, PresenceState};
use switchboard_wire::{self as wire, ClientFrame, DecodeLimits, GroupCursor, ServerFrame};
use wtransport::endpoint::{endpoint_side, ConnectOptions};
use wtransport::error::ConnectingError;
use wtransport::tls::Sha256Digest;

/// A client that speaks switchboard/1 frames over a WebTransport session.
struct WebClient {
    _endpoint: wtransport::Endpoint<endpoint_side::Client>,
    conn: wtransport::Connection,
    send: Option<wtransport::SendStream>,
    recv: Option<wtransport::RecvStream>,
    buf: BytesMut,
    pushes: Option<tokio::sync::mpsc::UnboundedReceiver<ServerFrame>>,
    order: wire::order::PushOrder,
}

fn hash_of(n: &TestNode) -> Sha256Digest {
    let hex = n.web_cert_sha256();
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    Sha256Digest::new(bytes.try_into().unwrap())
}

fn url(n: &TestNode, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", n.web_addr().port())
}

async fn try_connect(n: &TestNode, options: ConnectOptions) -> Result<WebClient, ConnectingError> {
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([hash_of(n)])
        .build();
    let endpoint = wtransport::Endpoint::client(config).unwrap();
    let conn = tokio::time::timeout(WAIT, endpoint.connect(options))
        .await
        .expect("WebTransport connect timed out")?;
    Ok(WebClient {
        _endpoint: endpoint,
        conn,
        send: None,
        recv: None,
        buf: BytesMut::new(),
        pushes: None,
        order: wire::order::PushOrder::new(1 << 20),
    })
}

async fn web(n: &TestNode) -> WebClient {
    let options = ConnectOptions::builder(url(n, "/switchboard/1")).build();
    try_connect(n, options).await.unwrap()
}

impl WebClient {
    async fn write_raw(&mut self, bytes: &[u8]) {
        if self.send.is_none() {
            let (s, r) = self.conn.open_bi().await.unwrap().await.unwrap();
            self.send = Some(s);
            self.recv = Some(r);
        }
        // The node may already have closed; tests check what it said.
        let _ = self.send.as_mut().unwrap().write_all(bytes).await;
    }

    async fn send(&mut self, f: &ClientFrame) {
        self.write_raw(&wire::encode_client(f)).await;
    }

    async fn hello_with(&mut self, token: &str, cursors: Vec<GroupCursor>) -> ServerFrame {
        self.send(&ClientFrame::Hello(wire::Hello {
            token: token.into(),
            presence: PresenceState::Foreground,
            cursors,
            client: "webtransport-test".into(),
        }))
        .await;
        self.read().await.expect("an answer to hello")
    }

    async fn hello(&mut self, token: &str) -> ServerFrame {
        self.hello_with(token, Vec::new()).await
    }

    async fn read(&mut self) -> Option<ServerFrame> {
        let recv = self.recv.as_mut()?;
        let frame = tokio::time::timeout(WAIT, wire::read_frame(recv, &mut self.buf, 1 << 20))
            .await
            .expect("timed out reading the control stream")
            .ok()??;
        Some(wire::decode_server(&frame, &DecodeLimits::default()).unwrap())
    }

    /// The next `Deliver`, in per-group order, from whichever push stream it came on.
    async fn next_deliver(&mut self) -> wire::Message {
        if self.pushes.is_none() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(read_push_streams(self.conn.clone(), tx));
            self.pushes = Some(rx);
        }
        loop {
            if let Some(ServerFrame::Deliver(m)) = self.order.pop() {
                return m;
            }
            let f = tokio::time::timeout(WAIT, self.pushes.as_mut().unwrap().recv())
                .await
                .expect("timed out reading push streams")
                .expect("push streams ended");
            self.order.arrive(f).expect("the node broke its order");
        }
    }

    /// The application code the node closed the connection with.
    async fn closed_code(&self) -> Option<u64> {
        let e = tokio::time::timeout(WAIT, self.conn.quic_connection().closed())
            .await
            .expect("connection did not close");
        match e {
            quinn::ConnectionError::ApplicationClosed(a) => Some(a.error_code.into_inner()),
            _ => None,
        }
    }
}

async fn read_push_streams(
    conn: wtransport::Connection,
    tx: tokio::sync::mpsc::UnboundedSender<ServerFrame>,
) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Ok(Some(frame)) = wire::read_frame(&mut recv, &mut buf, 1 << 20).await {
                let f = wire::decode_server(&frame, &DecodeLimits::default())
                    .expect("the node sent an undecodable push");
                if tx.send(f).is_err() {
                    return;
                }
            }
        });
    }
}

async fn start() -> TestNode {
    TestNode::start_webtransport(Limits::default(), Vec::new()).await
}

fn cursor(group: &str, seq: u64) -> GroupCursor {
    GroupCursor {
        group: group.into(),
        seq,
    }
}

async fn join(c: &mut WebClient, request_id: u64, group: &str) {
    c.send(&ClientFrame::Join {
        request_id,
        group: group.into(),
    })
    .await;
    assert!(matches!(c.read().await, Some(ServerFrame::Joined { .. })));
}

/// Sends and reads up to the `Ack`; returns its seq.
async fn send_acked(c: &mut WebClient, request_id: u64, group: &str, text: &str) -> u64 {
    c.send(&send(request_id, group, text.as_bytes())).await;
    loop {
        match c.read().await.expect("control stream ended") {
            ServerFrame::Ack { seq, .. } => return seq,
            ServerFrame::Error(e) => panic!("send refused: {e:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_webtransport_client_chats_with_a_native_one() {
    let n = start().await;
    let mut alice = web(&n).await;
    let w = alice.hello(&n.token("acme", "alice")).await;
    assert!(
        matches!(&w, ServerFrame::Welcome { user, .. } if user == "alice"),
        "{w:?}"
    );
    join(&mut alice, 1, "general").await;

    let mut bob = n.raw().await;
    assert!(matches!(
        bob.hello(&n.token("acme", "bob")).await,
        ServerFrame::Welcome { .. }
    ));
    bob.send(&ClientFrame::Join {
        request_id: 1,
        group: "general".into(),
    })
    .await;
    assert!(matches!(bob.read().await, Some(ServerFrame::Joined { .. })));

    let m = n.hub().metrics().snapshot();
    assert_eq!((m.connections, m.webtransport_connections), (2, 1));

    let seq = send_acked(&mut alice, 2, "general", "hi from the browser").await;
    let m = next_deliver(&mut bob).await;
    assert_eq!((m.seq, &m.body[..]), (seq, &b"hi from the browser"[..]));
    assert_eq!(m.sender, "alice");

    bob.send(&send(2, "general", b"hi from QUIC")).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = alice.next_deliver().await;
        got.push((m.seq, String::from_utf8(m.body.to_vec()).unwrap()));
    }
    assert_eq!(
        got,
        vec![
            (seq, "hi from the browser".to_owned()),
            (seq + 1, "hi from QUIC".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_webtransport_client_resumes_with_exactly_what_it_missed() {
    let n = start().await;
    let mut alice = web(&n).await;
    alice.hello(&n.token("acme", "alice")).await;
    join(&mut alice, 1, "general").await;
    let first = send_acked(&mut alice, 2, "general", "one").await;
    assert_eq!(alice.next_deliver().await.seq, first);
    drop(alice);

    let mut bob = n.raw().await;
    bob.hello(&n.token("acme", "bob")).await;
    bob.send(&ClientFrame::Join {
        request_id: 1,
        group: "general".into(),
    })
    .await;
    bob.read().await;
    for (i, text) in ["two", "three"].into_iter().enumerate() {
        bob.send(&send(10 + i as u64, "general", text.as_bytes()))
            .await;
        assert!(matches!(bob.read().await, Some(ServerFrame::Ack { .. })));
    }

    let mut again = web(&n).await;
    let w = again
        .hello_with(&n.token("acme", "alice"), vec![cursor("general", first)])
        .await;
    assert!(matches!(w, ServerFrame::Welcome { .. }), "{w:?}");
    let missed = [again.next_deliver().await, again.next_deliver().await];
    let missed: Vec<(u64, &[u8])> = missed.iter().map(|m| (m.seq, &m.body[..])).collect();
    assert_eq!(
        missed,
        vec![(first + 1, &b"two"[..]), (first + 2, &b"three"[..])]
    );
}

#[tokio::test]
async fn a_frame_before_hello_is_hello_required() {
    let n = start().await;
    let mut c = web(&n).await;
    c.send(&ClientFrame::Ping { request_id: 1 }).await;
    assert_eq!(
        error_code(&c.read().await.unwrap()),
        ErrorCode::HelloRequired
    );
    assert_eq!(
        c.closed_code().await,
        Some(ErrorCode::HelloRequired.as_u16().into())
    );
}

#[tokio::test]
async fn an_oversize_frame_is_refused_before_it_is_read() {
    let n = start().await;
    let mut c = web(&n).await;
    c.hello(&n.token("acme", "alice")).await;
    let too_big = Limits::default().max_frame_bytes + 1;
    c.write_raw(&too_big.to_be_bytes()).await;
    assert_eq!(
        error_code(&c.read().await.unwrap()),
        ErrorCode::FrameTooLarge
    );
    assert_eq!(
        c.closed_code().await,
        Some(ErrorCode::FrameTooLarge.as_u16().into())
    );
}

#[tokio::test]
async fn a_malformed_frame_is_fatal_for_that_session_only() {
    let n = start().await;
    let mut good = web(&n).await;
    good.hello(&n.token("acme", "bob")).await;
    let mut bad = web(&n).await;
    bad.hello(&n.token("acme", "alice")).await;
    bad.write_raw(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).await;
    assert_eq!(
        error_code(&bad.read().await.unwrap()),
        ErrorCode::MalformedFrame
    );
    assert_eq!(
        bad.closed_code().await,
        Some(ErrorCode::MalformedFrame.as_u16().into())
    );
    good.send(&ClientFrame::Ping { request_id: 9 }).await;
    assert_eq!(good.read().await, Some(ServerFrame::Pong { request_id: 9 }));
}

#[tokio::test]
async fn bad_tokens_are_refused_with_typed_errors() {
    let n = start().await;
    let now = now_secs();
    let cases = [
        ("garbage", "not-a-token".to_owned(), ErrorCode::InvalidToken),
        (
            "expired",
            mint("acme", "alice", ACME_SECRET, now - 1, 0),
            ErrorCode::TokenExpired,
        ),
        (
            "unknown tenant",
            mint("initech", "alice", ACME_SECRET, now + 60, 0),
            ErrorCode::UnknownTenant,
        ),
    ];
    for (what, token, code) in cases {
        let mut c = web(&n).await;
        assert_eq!(error_code(&c.hello(&token).await), code, "{what}");
        assert_eq!(c.closed_code().await, Some(code.as_u16().into()), "{what}");
    }
}

#[tokio::test]
async fn extra_streams_are_refused_and_a_flood_closes_the_session() {
    let n = start().await;
    let mut c = web(&n).await;
    c.hello(&n.token("acme", "alice")).await;
    // A second bidirectional stream is answered with `UnexpectedStream`, as over QUIC.
    let (mut s, mut r) = c.conn.open_bi().await.unwrap().await.unwrap();
    s.write_all(&wire::encode_client(&ClientFrame::Ping { request_id: 1 }))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let f = wire::read_frame(&mut r, &mut buf, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let f = wire::decode_server(&f, &DecodeLimits::default()).unwrap();
    assert_eq!(error_code(&f), ErrorCode::UnexpectedStream);
    // Unidirectional ones (which native clients cannot open at all) are stopped and counted;
    // past 64 unexpected streams the session is closed.
    for _ in 0..80 {
        let Ok(opening) = c.conn.open_uni().await else {
            break;
        };
        let Ok(mut u) = opening.await else { break };
        let _ = u.write_all(b"x").await;
        let _ = u.finish().await;
    }
    assert_eq!(
        c.closed_code().await,
        Some(ErrorCode::UnexpectedStream.as_u16().into())
    );
}

#[tokio::test]
async fn sessions_for_other_paths_or_origins_are_refused() {
    let n =
        TestNode::start_webtransport(Limits::default(), vec!["http://localhost:8080".to_owned()])
            .await;
    let wrong_path = ConnectOptions::builder(url(&n, "/elsewhere")).build();
    match try_connect(&n, wrong_path).await {
        Err(ConnectingError::SessionRejected) => {}
        Err(e) => panic!("expected a rejected session, got {e}"),
        Ok(_) => panic!("a session for another path was accepted"),
    }
    let other_origin = ConnectOptions::builder(url(&n, "/switchboard/1"))
        .add_header("origin", "https://evil.example")
        .build();
    match try_connect(&n, other_origin).await {
        Err(ConnectingError::SessionRejected) => {}
        Err(e) => panic!("expected a rejected session, got {e}"),
        Ok(_) => panic!("a session from an unlisted origin was accepted"),
    }
    let listed = ConnectOptions::builder(url(&n, "/switchboard/1"))
        .add_header("origin", "http://localhost:8080")
        .build();
    let mut c = try_connect(&n, listed).await.unwrap();
    assert!(matches!(
        c.hello(&n.token("acme", "alice")).await,
        ServerFrame::Welcome { .. }
    ));
}

/// A raw QUIC client speaking HTTP/3 badly (ALPN `h3`, as a browser connects): its control
/// stream must start with `SETTINGS`, and a `SETTINGS` frame must parse. wtransport closes
/// such a connection with an HTTP/3 error code (RFC 9114 §8.1: 0x100–0x110), and the node
/// serves everyone else.
#[tokio::test]
async fn malformed_http3_settings_close_that_connection_only() {
    let n = start().await;
    let cert = n.web_cert.clone().unwrap();
    let cases: [(&str, &[u8]); 2] = [
        // Control stream (type 0x00), then GOAWAY (0x07) before any SETTINGS.
        ("GOAWAY before SETTINGS", &[0x00, 0x07, 0x01, 0x00]),
        // Control stream, SETTINGS (0x04) of 1 byte: a 2-byte varint cut after its first byte.
        ("truncated SETTINGS", &[0x00, 0x04, 0x01, 0x40]),
    ];
    for (what, bytes) in cases {
        let c = RawClient::connect(n.web_addr(), &cert, b"h3")
            .await
            .unwrap();
        let mut s = c.conn.open_uni().await.unwrap();
        s.write_all(bytes).await.unwrap();
        let _ = s.finish();
        let code = c.closed_code().await;
        assert!(
            code.is_some_and(|c| (0x100..=0x110).contains(&c)),
            "{what}: closed with {code:?}"
        );
    }
    let mut ok = web(&n).await;
    assert!(matches!(
        ok.hello(&n.token("acme", "alice")).await,
        ServerFrame::Welcome { .. }
    ));
}

/// WebTransport sessions count against the node's `max_connections` with native ones: past
/// it, attempts are refused, and a place freed is a place to connect again.
#[tokio::test]
async fn sessions_are_bounded_by_max_connections() {
    let n = TestNode::start_webtransport(
        Limits {
            max_connections: 2,
            ..Limits::default()
        },
        Vec::new(),
    )
    .await;
    let mut a = web(&n).await;
    a.hello(&n.token("acme", "alice")).await;
    let mut b = n.raw().await;
    assert!(matches!(
        b.hello(&n.token("acme", "bob")).await,
        ServerFrame::Welcome { .. }
    ));
    let options = ConnectOptions::builder(url(&n, "/switchboard/1")).build();
    assert!(
        try_connect(&n, options).await.is_err(),
        "a third connection was accepted"
    );
    assert!(n.hub().metrics().snapshot().connections_refused >= 1);
    b.conn.close(0u32.into(), b"bye");
    drop(b);
    // Once the node has counted the native connection out, a session fits again.
    let deadline = tokio::time::Instant::now() + WAIT;
    while n
        .hub()
        .metrics()
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        >= 2
    {
        assert!(tokio::time::Instant::now() < deadline, "no place freed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let options = ConnectOptions::builder(url(&n, "/switchboard/1")).build();
    let mut c = try_connect(&n, options).await.unwrap();
    assert!(matches!(
        c.hello(&n.token("acme", "carol")).await,
        ServerFrame::Welcome { .. }
    ));
}
