//! Network abuse over real UDP on loopback: handshake floods, garbage and oversized
//! datagrams, slow hellos, stalled frames and request floods. Each test checks the bound the
//! node holds (docs/reliability.md, "Network abuse") and that a legitimate client is served
//! meanwhile; each prints its figure.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use switchboard_core::{ErrorCode, Limits};
use switchboard_wire::{self as wire, ClientFrame, ServerFrame};
use tokio::net::UdpSocket;

/// Polls `done` until it holds, failing the test after [`WAIT`]; `each` sees every sample.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "not reached in time: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that says hello and proves the session works with a ping.
async fn legit(n: &TestNode, user: &str) -> RawClient {
    let mut c = n.raw().await;
    let w = c.hello(&n.token("acme", user)).await;
    assert!(matches!(w, ServerFrame::Welcome { .. }), "{w:?}");
    c.send(&ClientFrame::Ping { request_id: 1 }).await;
    assert_eq!(c.read().await, Some(ServerFrame::Pong { request_id: 1 }));
    c
}

/// A one-way relay: forwards every datagram from anyone but the node to the node, and drops
/// what the node answers. Clients behind it start handshakes they can never finish, like a
/// flood from spoofed source addresses (which never see the node's answers either).
struct BlackHole {
    addr: SocketAddr,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start(node: SocketAddr) -> BlackHole {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, from)) = sock.recv_from(&mut buf).await {
                if from == node {
                    d.fetch_add(1, Ordering::Relaxed);
                } else {
                    let _ = sock.send_to(&buf[..len], node).await;
                }
            }
        });
        BlackHole {
            addr,
            dropped,
            task,
        }
    }
}

/// Starts `count` handshakes through `hole`; they stay pending (the returned endpoint and
/// connection attempts keep retransmitting their first flight) until dropped.
fn flood(
    n: &TestNode,
    hole: &BlackHole,
    count: usize,
) -> (quinn::Endpoint, Vec<quinn::Connecting>) {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_crypto(&n.cert_der(), wire::ALPN));
    let attempts = (0..count)
        .map(|_| endpoint.connect(hole.addr, "localhost").unwrap())
        .collect();
    (endpoint, attempts)
}

#[tokio::test]
async fn a_handshake_flood_is_held_to_the_validation_threshold_and_clients_still_connect() {
    const VALIDATE_FROM: usize = 16;
    const ATTEMPTS: usize = 400;
    let n = TestNode::start_with(Limits {
        validate_address_from_handshakes: VALIDATE_FROM as u32,
        max_handshakes: 256,
        hello_timeout_ms: 2_000,
        ..Limits::default()
    })
    .await;
    let m = || n.hub().metrics().snapshot();
    let hole = BlackHole::start(n.addr).await;
    let (flood_endpoint, attempts) = flood(&n, &hole, ATTEMPTS);

    // Every attempt past the threshold is answered with a Retry the flood never sees (and
    // its retransmissions get one each): the node holds no state for them.
    let mut peak = 0;
    wait_for("every flood attempt answered", || {
        let s = m();
        peak = peak.max(s.handshakes);
        s.handshake_retries >= (ATTEMPTS - VALIDATE_FROM) as u64
    })
    .await;
    assert!(
        m().handshakes <= VALIDATE_FROM,
        "the flood holds the threshold"
    );

    // A real client, meanwhile, answers its Retry and gets in.
    let started = Instant::now();
    let mut alice = legit(&n, "alice").await;
    let connect_ms = started.elapsed().as_millis();
    let s = m();
    peak = peak.max(s.handshakes);
    assert!(peak <= VALIDATE_FROM + 1, "peak {peak} handshakes");
    assert_eq!(s.handshakes_refused, 0);

    // The flood's handshakes are abandoned after hello_timeout_ms, not the idle timeout.
    hole.task.abort();
    wait_for("flood handshakes abandoned", || m().handshakes == 0).await;
    let s = m();
    assert!(s.handshake_timeouts >= VALIDATE_FROM as u64, "{s:?}");
    assert_eq!(s.connections, 1, "only alice's connection is left");
    alice.send(&ClientFrame::Ping { request_id: 2 }).await;
    assert_eq!(
        alice.read().await,
        Some(ServerFrame::Pong { request_id: 2 })
    );
    eprintln!(
        "handshake flood: {ATTEMPTS} attempts, {} retries, peak {peak} handshakes held \
         (threshold {VALIDATE_FROM}), {} node answers dropped by the flood's black hole, \
         legit client connected in {connect_ms} ms, {} handshakes abandoned",
        s.handshake_retries,
        hole.dropped.load(Ordering::Relaxed),
        s.handshake_timeouts,
    );
    drop(attempts);
    drop(flood_endpoint);
}

#[tokio::test]
async fn handshakes_over_the_cap_are_refused_and_the_cap_frees_up() {
    const CAP: usize = 24;
    let n = TestNode::start_with(Limits {
        // Validation off, to show the cap alone.
        validate_address_from_handshakes: u32::MAX,
        max_handshakes: CAP as u32,
        // Long enough that the flood's first handshakes are still held when the client
        // below tries (the flood's retransmissions refill the cap anyway).
        hello_timeout_ms: 4_000,
        ..Limits::default()
    })
    .await;
    let m = || n.hub().metrics().snapshot();
    let hole = BlackHole::start(n.addr).await;
    let (flood_endpoint, attempts) = flood(&n, &hole, 100);
    let mut peak = 0;
    wait_for("attempts over the cap refused", || {
        let s = m();
        peak = peak.max(s.handshakes);
        s.handshakes_refused >= (100 - CAP) as u64
    })
    .await;
    assert!(peak <= CAP, "peak {peak} over the cap {CAP}");
    // A real client is refused too while the cap is full (why validation starts well
    // below the cap): QUIC's CONNECTION_REFUSED, not a hang.
    let refused = RawClient::connect(n.addr, &n.cert_der(), wire::ALPN).await;
    assert!(refused.is_err(), "the cap is full");
    // Once the held handshakes time out, it connects.
    hole.task.abort();
    wait_for("held handshakes abandoned", || m().handshakes == 0).await;
    legit(&n, "alice").await;
    eprintln!(
        "handshake cap: 100 attempts, peak {peak} held (cap {CAP}), {} refused",
        m().handshakes_refused
    );
    drop(attempts);
    drop(flood_endpoint);
}

#[tokio::test]
async fn with_validation_always_on_clients_connect_and_message() {
    let n = TestNode::start_with(Limits {
        validate_address_from_handshakes: 0,
        ..Limits::default()
    })
    .await;
    let mut alice = legit(&n, "alice").await;
    let mut bob = legit(&n, "bob").await;
    assert_eq!(n.hub().metrics().snapshot().handshake_retries, 2);
    alice.send(&send(3, "team", b"after a retry")).await;
    assert!(matches!(alice.read().await, Some(ServerFrame::Ack { .. })));
    assert_eq!(next_deliver(&mut bob).await.body.as_ref(), b"after a retry");
}

/// Datagrams no QUIC stack would send: random bytes of every size up to the largest UDP
/// payload, QUIC-looking long headers with garbage, short headers for unknown connections.
fn garbage(i: u64) -> Vec<u8> {
    // A small xorshift: the content only has to be arbitrary and repeatable.
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let sizes = [1, 2, 7, 21, 40, 1199, 1200, 1350, 1500, 9000, 65_507];
    let len = sizes[(next() % sizes.len() as u64) as usize];
    let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
    match i % 4 {
        // Long header, version 1, Initial, with garbage after the type byte.
        0 if len > 5 => d[..5].copy_from_slice(&[0xc0, 0, 0, 0, 1]),
        // Long header with an unknown version (the node may answer version negotiation).
        1 if len > 5 => d[..5].copy_from_slice(&[0xc0, 0x1a, 0x2a, 0x3a, 0x4a]),
        // Short header: looks like a packet for a connection the node does not have.
        2 => d[0] = 0x40 | (d[0] & 0x3f),
        _ => {}
    }
    d
}

#[tokio::test]
async fn garbage_and_oversized_datagrams_are_dropped_and_sessions_go_on() {
    const DATAGRAMS: u64 = 3_000;
    const MESSAGES: u64 = 100;
    let n = TestNode::start().await;
    let mut alice = legit(&n, "alice").await;
    let mut bob = legit(&n, "bob").await;
    let before = n.hub().metrics().snapshot();
    let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = n.addr;
    let sprayer = tokio::spawn(async move {
        let mut sent = 0u64;
        let mut bytes = 0u64;
        for i in 0..DATAGRAMS {
            let d = garbage(i);
            if junk.send_to(&d, addr).await.is_ok() {
                sent += 1;
                bytes += d.len() as u64;
            }
            if i % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        (sent, bytes)
    });
    // Messages flow while the junk arrives.
    for i in 0..MESSAGES {
        alice.send(&send(i + 10, "team", b"through the junk")).await;
    }
    for _ in 0..MESSAGES {
        assert!(matches!(alice.read().await, Some(ServerFrame::Ack { .. })));
    }
    for _ in 0..MESSAGES {
        next_deliver(&mut bob).await;
    }
    let (sent, bytes) = sprayer.await.unwrap();
    assert_eq!(sent, DATAGRAMS, "every datagram left the socket");
    alice.send(&ClientFrame::Ping { request_id: 2 }).await;
    assert_eq!(
        alice.read().await,
        Some(ServerFrame::Pong { request_id: 2 })
    );
    let after = n.hub().metrics().snapshot();
    // None of it became a connection or a handshake the node holds.
    assert_eq!(after.connections, 2);
    assert_eq!(after.handshakes, 0);
    assert_eq!(after.protocol_errors, before.protocol_errors);
    eprintln!(
        "garbage datagrams: {sent} ({} KiB, up to 65,507 B each) while {MESSAGES} messages \
         were acked and delivered; 0 connections or handshakes created",
        bytes / 1024
    );
}

#[tokio::test]
async fn a_hello_dribbled_byte_by_byte_does_not_stretch_the_deadline() {
    const SLOW: usize = 20;
    let n = TestNode::start_with(Limits {
        hello_timeout_ms: 1_000,
        ..Limits::default()
    })
    .await;
    let hello = wire::encode_client(&ClientFrame::Hello(wire::Hello {
        token: n.token("acme", "mallory"),
        presence: switchboard_core::PresenceState::Foreground,
        cursors: vec![],
        client: "slowloris".into(),
    }));
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(n.raw().await);
    }
    // Each sends one more byte of its hello every 100 ms: always active, never done.
    let dribblers: Vec<_> = slow
        .into_iter()
        .map(|mut c| {
            let hello = hello.clone();
            tokio::spawn(async move {
                for b in &hello {
                    c.write_raw(std::slice::from_ref(b)).await;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = c.conn.closed() => break,
                    }
                }
                c.closed_code().await
            })
        })
        .collect();
    // A neighbour is served meanwhile.
    legit(&n, "alice").await;
    for d in dribblers {
        assert_eq!(
            d.await.unwrap(),
            Some(ErrorCode::HelloRequired.as_u16().into()),
            "a dribbled hello is cut off at the deadline"
        );
    }
    let took = started.elapsed();
    assert!(
        hello.len() as u64 * 100 > 2 * 1_000,
        "the hello would take longer than the deadline to dribble"
    );
    eprintln!(
        "slow hello: {SLOW} connections dribbling a {}-byte hello at 10 B/s, all closed \
         with HelloRequired after {} ms (deadline 1,000 ms)",
        hello.len(),
        took.as_millis()
    );
}

#[tokio::test]
async fn a_stalled_frame_costs_one_idle_connection_until_the_idle_timeout() {
    let n = TestNode::start_with(Limits {
        idle_timeout_ms: 1_000,
        ..Limits::default()
    })
    .await;
    let mut stalled = legit(&n, "mallory").await;
    // The length prefix of a 100-byte frame and three bytes of it, then silence.
    stalled.write_raw(&[0, 0, 0, 100, 1, 2, 3]).await;
    let mut alice = legit(&n, "alice").await;
    alice.send(&ClientFrame::Ping { request_id: 2 }).await;
    assert_eq!(
        alice.read().await,
        Some(ServerFrame::Pong { request_id: 2 })
    );
    let e = tokio::time::timeout(WAIT, stalled.conn.closed())
        .await
        .expect("the stalled connection was not closed");
    assert!(matches!(e, quinn::ConnectionError::TimedOut), "{e:?}");
    drop(alice);
    wait_for("the stalled session closed", || {
        n.hub().metrics().snapshot().sessions == 0
    })
    .await;
}

#[tokio::test]
async fn a_request_flood_that_never_reads_is_held_back_by_flow_control() {
    const FLOOD_BYTES: usize = 64 << 20;
    let n = TestNode::start().await;
    let mut flooder = legit(&n, "mallory").await;
    let ping = wire::encode_client(&ClientFrame::Ping { request_id: 9 });
    let chunk: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 2_048)
        .collect();
    let send = flooder.send.as_mut().unwrap();
    // Writes until the node stops taking bytes for a second (it stops reading once its
    // answers back up: the Pongs are never read).
    let mut written = 0usize;
    while written < FLOOD_BYTES {
        // Whole chunks, so frames stay whole (a timed-out chunk is not counted).
        match tokio::time::timeout(Duration::from_secs(1), send.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(e)) => panic!(
                "the node closed the stream: {e}; {:?}",
                flooder.conn.close_reason()
            ),
            Err(_) => break,
        }
    }
    // Bound: the node's stream window (4 × max_frame_bytes), the answers queued for the
    // connection (max_inflight_sends + 8) and what the flooder's own receive window took
    // of Pongs before it filled; a node that kept reading would take all 64 MiB.
    assert!(
        written < 8 << 20,
        "the flooder wrote {written} bytes without reading an answer"
    );
    // Neighbours are served while the flooder is stuck.
    let mut alice = legit(&n, "alice").await;
    let started = Instant::now();
    alice.send(&ClientFrame::Ping { request_id: 2 }).await;
    assert_eq!(
        alice.read().await,
        Some(ServerFrame::Pong { request_id: 2 })
    );
    eprintln!(
        "request flood: the node took {} KiB of pings ({} requests) from a client that \
         never reads, then stopped reading it; a neighbour's ping took {} ms",
        written / 1024,
        written / ping.len(),
        started.elapsed().as_millis()
    );
}
