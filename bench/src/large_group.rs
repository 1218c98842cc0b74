//! A large group, active first (issue 5).
//!
//! One open group of `members` receivers (every `active_every`-th one, in member order,
//! foreground; the rest background) plus a sender, all connected over QUIC to a node on its
//! own runtime, while a second sender keeps the push path busy with messages at a steady rate
//! to a few small groups of the same sessions. The sender sends one message to the large group
//! at a time, waits until every recipient has it (or [`WAIT_TIMEOUT`]) and a short pause, and
//! then sends the next. Every receiver reads all its push streams (in order, [`Pushes`]) and
//! timestamps each delivery against the send time in the body, on one `Instant`.
//!
//! Three modes, each on a fresh node:
//! - **active first**: the node's fan-out (foreground sessions first), every member gets the
//!   message (`nudge_background_from_members = 0`);
//! - **naive**: the same, but fanned out in subscription (= member) order
//!   ([`Hub::set_naive_fanout`](switchboard_edge::Hub::set_naive_fanout));
//! - **nudges**: active first with the default `nudge_background_from_members` (1,000), so
//!   background members get a `Nudge` (at most one a second) instead of the message.
//!
//! Per message: time until the last active member has it, time until the last member has it,
//! and every active delivery's latency.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::{BufMut, BytesMut};
use clap::ValueEnum;
use switchboard_core::{GroupId, Limits, PresenceState, TenantId, UserId};
use switchboard_edge::{EdgeConfig, MetricsSnapshot, Node, TlsIdentity};
use switchboard_store::{GroupMeta, SledStore, Store, TenantRecord};
use switchboard_wire::{self as wire, ClientFrame, DecodeLimits, ServerFrame};
use tokio::task::JoinHandle;

use crate::push::Pushes;
use crate::{client_config, SECRET};

const TENANT: &str = "bench";
const BIG: &str = "big";
const SENDER: &str = "sender";
const LOADER: &str = "loader";
const PAYLOAD: usize = 64;
/// Longest wait for one message to reach its recipients.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Unmeasured messages first (Resume frames, first use of each push stream).
const WARMUP: usize = 2;
/// QUIC handshakes run ahead of the (ordered) Hellos by this many connections.
const HANDSHAKE_AHEAD: usize = 64;
const CLIENT_RCVBUF: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Foreground sessions first (the node's default); background members get every message.
    ActiveFirst,
    /// Subscription (member) order; background members get every message.
    Naive,
    /// Foreground sessions first; background members of the large group get nudges.
    Nudges,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::ActiveFirst => "(a) active first",
            Mode::Naive => "(b) naive member order",
            Mode::Nudges => "(c) active first + nudges",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LargeArgs {
    pub members: usize,
    pub active_every: usize,
    pub messages: usize,
    pub modes: Vec<Mode>,
    pub bg_groups: usize,
    pub bg_group_size: usize,
    /// Background messages per second (0: no background load).
    pub bg_rate: u32,
    /// Pause after a message reached everyone, before the next (lets the ACKs of the last
    /// fan-out drain).
    pub settle: Duration,
    /// Client UDP sockets: the receivers' connections are spread over them, each with a large
    /// receive buffer, so a 10,000-packet burst is not dropped by the client's kernel.
    pub client_sockets: usize,
    /// Busy processes started beside the node for the whole run (a CPU hog: a busy machine).
    pub cpu_hog: usize,
}

/// Busy-looping child processes, killed when dropped: the CPU hog of `--cpu-hog`. Each is a
/// shell spinning on `:` (no dependency to install; `stress-ng --cpu N` does the same).
struct Hog(Vec<std::process::Child>);

impl Hog {
    fn start(n: usize) -> Result<Self> {
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            children.push(
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()?,
            );
        }
        Ok(Self(children))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    a: LargeArgs,
) -> Result<()> {
    ensure!(a.members >= a.active_every && a.active_every >= 1);
    let active = a.members.div_ceil(a.active_every);
    println!(
        "Large group: {} receivers ({active} foreground: every {}th in member order) + 1 \
         sender, {} measured messages of {PAYLOAD} B (+{WARMUP} warm-up), one at a time \
         ({} ms pause after each reached everyone); background load {} msgs/s over {} groups \
         of {} receivers.",
        a.members,
        a.active_every,
        a.messages,
        a.settle.as_millis(),
        a.bg_rate,
        a.bg_groups,
        a.bg_group_size
    );
    print_load("before");
    let _hog = Hog::start(a.cpu_hog)?;
    if a.cpu_hog > 0 {
        println!(
            "CPU hog: {} busy processes beside the node for the whole run.",
            a.cpu_hog
        );
    }
    let mut results = Vec::new();
    for &mode in &a.modes {
        let r = run_mode(server_rt, client_rt, &a, mode)?;
        print_load(&format!("after {}", mode.name()));
        results.push(r);
    }
    print_table(&results);
    Ok(())
}

fn print_load(when: &str) {
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("Load average {when}: {}", l.trim());
    }
}

/// UDP datagrams the kernel dropped for full receive buffers (all sockets; Linux).
fn udp_rcvbuf_errors() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut lines = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Datagrams dropped for a full receive buffer by the loopback UDP sockets on `ports`, since
/// each was opened (Linux `/proc/net/udp`, last column).
fn socket_drops(ports: &[u16]) -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    s.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            ports
                .contains(&port)
                .then(|| cols.last()?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn bg_group(j: usize) -> String {
    format!("bg{j}")
}

/// Receiver `i`'s user id (`i` is its member index: subscription order).
fn user(i: usize) -> String {
    format!("u{i:05}")
}

fn bg_members(a: &LargeArgs, j: usize) -> impl Iterator<Item = usize> + '_ {
    // Spread over the member order (and so over foreground and background sessions).
    let stride = (a.members / a.bg_group_size.max(1)).max(1);
    (0..a.bg_group_size.min(a.members)).map(move |k| (j + k * stride) % a.members)
}

// --- shared state between receivers and the sender ---

/// What the receivers saw, per message (warm-up included) and member.
struct Board {
    members: usize,
    foreground: Vec<bool>,
    /// Arrival (ns since start; 0 = not yet) of message `k` at member `i`: `k * members + i`.
    arrivals: Vec<AtomicU64>,
    /// First `Nudge` naming message `k` (its head) at member `i`.
    nudges_at: Vec<AtomicU64>,
    got_all: Vec<AtomicUsize>,
    got_active: Vec<AtomicUsize>,
    /// Members whose first nudge named message `k`: its delivery to them was deferred (a
    /// large group in mode (c), or background delivery shed at a high load level).
    nudged: Vec<AtomicUsize>,
    nudges_seen: AtomicU64,
    failed: AtomicBool,
}

impl Board {
    fn new(a: &LargeArgs, total: usize) -> Self {
        let cells = || (0..total * a.members).map(|_| AtomicU64::new(0)).collect();
        Self {
            members: a.members,
            foreground: (0..a.members).map(|i| i % a.active_every == 0).collect(),
            arrivals: cells(),
            nudges_at: cells(),
            got_all: (0..total).map(|_| AtomicUsize::new(0)).collect(),
            got_active: (0..total).map(|_| AtomicUsize::new(0)).collect(),
            nudged: (0..total).map(|_| AtomicUsize::new(0)).collect(),
            nudges_seen: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }
}

struct ModeResult {
    mode: Mode,
    /// Per measured message: until the last foreground member had it, and the last member.
    last_active_us: Vec<u64>,
    last_any_us: Vec<u64>,
    /// Per measured message: until the first member had it.
    first_us: Vec<u64>,
    active_us: Vec<u64>,
    /// Per measured message: background deliveries that arrived before its last foreground one.
    bg_before_last_active: Vec<usize>,
    timeouts: usize,
    nudges_seen: u64,
    nudged_messages: usize,
    /// Per nudged message: until the last background member got its nudge.
    last_nudge_us: Vec<u64>,
    connect: Duration,
    metrics: MetricsSnapshot,
    rcvbuf_errors: u64,
    /// Of those, at the node's socket and at the clients' sockets.
    node_drops: u64,
    client_drops: u64,
    rss_mib: u64,
}

fn run_mode(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    a: &LargeArgs,
    mode: Mode,
) -> Result<ModeResult> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SledStore::open(&dir.path().join("store"))?);
    seed(&store, a)?;
    let identity = TlsIdentity::self_signed()?;
    let cert = identity.cert_chain[0].to_vec();
    let limits = Limits {
        nudge_background_from_members: match mode {
            Mode::Nudges => Limits::default().nudge_background_from_members,
            Mode::ActiveFirst | Mode::Naive => 0,
        },
        max_group_members: 1_000_000,
        // The connections are opened one after another; none may time out meanwhile.
        hello_timeout_ms: 600_000,
        idle_timeout_ms: 600_000,
        max_connections: 1_000_000,
        tenant_connections_per_sec: 1_000_000,
        tenant_connections_burst: 1_000_000,
        tenant_max_connections: 0,
        ..Limits::default()
    };
    let node = server_rt.block_on(Node::start(
        EdgeConfig {
            listen: "127.0.0.1:0".parse()?,
            limits,
            identity,
            webtransport: None,
        },
        store.clone(),
    ))?;
    node.hub().set_naive_fanout(mode == Mode::Naive);
    let addr = node.local_addr();
    let drops_before = udp_rcvbuf_errors();
    let out = client_rt.block_on(drive(addr, cert, a, mode));
    let rcvbuf_errors = udp_rcvbuf_errors() - drops_before;
    let metrics = node.hub().metrics().snapshot();
    let rss = rss_mib();
    server_rt.block_on(node.shutdown());
    drop(store);
    let mut r = out?;
    r.metrics = metrics;
    r.rcvbuf_errors = rcvbuf_errors;
    r.rss_mib = rss;
    Ok(r)
}

fn seed(store: &SledStore, a: &LargeArgs) -> Result<()> {
    let tenant = TenantId::new(TENANT)?;
    store.put_tenant(&TenantRecord {
        id: tenant.clone(),
        secret: SECRET.to_vec(),
    })?;
    let meta = |open| GroupMeta {
        open,
        max_members: 1_000_000,
    };
    let big = GroupId::new(BIG)?;
    store.create_group(&tenant, &big, meta(true))?;
    store.add_member(&tenant, &big, &UserId::new(SENDER)?)?;
    for i in 0..a.members {
        store.add_member(&tenant, &big, &UserId::new(&user(i))?)?;
    }
    for j in 0..a.bg_groups {
        let g = GroupId::new(&bg_group(j))?;
        store.create_group(&tenant, &g, meta(false))?;
        store.add_member(&tenant, &g, &UserId::new(LOADER)?)?;
        for i in bg_members(a, j) {
            store.add_member(&tenant, &g, &UserId::new(&user(i))?)?;
        }
    }
    store.flush()?;
    Ok(())
}

// --- the clients ---

fn client_endpoint(cert: &[u8]) -> Result<quinn::Endpoint> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: capped by net.core.rmem_max.
    let _ = state.set_recv_buffer_size((&socket).into(), CLIENT_RCVBUF);
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let mut config = client_config(cert)?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(600).try_into()?));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

struct Session {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

/// The QUIC handshake and the control stream, without `Hello` (so handshakes can run ahead
/// while Hellos, which decide the subscription order, go one at a time).
async fn handshake(endpoint: quinn::Endpoint, addr: SocketAddr) -> Result<Session> {
    let conn = endpoint.connect(addr, "localhost")?.await?;
    let (send, recv) = conn.open_bi().await?;
    Ok(Session {
        conn,
        send,
        recv,
        buf: BytesMut::new(),
    })
}

async fn hello(s: &mut Session, user: &str, presence: PresenceState) -> Result<()> {
    let token = crate::bench_token(TENANT, user)?;
    s.send
        .write_all(&wire::encode_client(&ClientFrame::Hello(wire::Hello {
            token,
            presence,
            cursors: vec![],
            client: "bench".into(),
        })))
        .await?;
    let f = wire::read_frame(&mut s.recv, &mut s.buf, 1 << 20)
        .await?
        .context("no welcome")?;
    match wire::decode_server(&f, &DecodeLimits::default())? {
        ServerFrame::Welcome { .. } => Ok(()),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

async fn drive(addr: SocketAddr, cert: Vec<u8>, a: &LargeArgs, mode: Mode) -> Result<ModeResult> {
    let total = WARMUP + a.messages;
    let board = Arc::new(Board::new(a, total));
    let start = Instant::now();
    let endpoints = (0..a.client_sockets.max(1))
        .map(|_| client_endpoint(&cert))
        .collect::<Result<Vec<_>>>()?;

    // Receivers, in member order: handshakes run ahead, Hellos one at a time.
    let t_connect = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    let mut next = 0;
    let mut receivers: Vec<JoinHandle<()>> = Vec::with_capacity(a.members);
    for i in 0..a.members {
        while next < a.members && next < i + HANDSHAKE_AHEAD {
            let ep = endpoints[next % endpoints.len()].clone();
            pending.push_back(tokio::spawn(handshake(ep, addr)));
            next += 1;
        }
        let mut s = pending.pop_front().context("handshake queue")?.await??;
        let presence = if board.foreground[i] {
            PresenceState::Foreground
        } else {
            PresenceState::Background
        };
        hello(&mut s, &user(i), presence)
            .await
            .with_context(|| format!("hello of member {i}"))?;
        receivers.push(tokio::spawn(receive(s, i, board.clone(), start)));
        if (i + 1) % 2_000 == 0 {
            eprintln!(
                "{}: {} sessions in {:.1} s, client RSS {} MiB",
                mode.name(),
                i + 1,
                t_connect.elapsed().as_secs_f64(),
                rss_mib()
            );
        }
    }
    let connect = t_connect.elapsed();

    // The background load.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = if a.bg_rate > 0 && a.bg_groups > 0 {
        let mut s = handshake(endpoints[0].clone(), addr).await?;
        hello(&mut s, LOADER, PresenceState::Foreground).await?;
        Some(tokio::spawn(load(s, a.clone(), stop.clone(), start)))
    } else {
        None
    };

    // The sender.
    let mut s = handshake(endpoints[0].clone(), addr).await?;
    hello(&mut s, SENDER, PresenceState::Foreground).await?;
    let sender_pushes = tokio::spawn(drain(Pushes::new(&s.conn)));
    let acked_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let acker = tokio::spawn(acks(
        s.recv,
        std::mem::take(&mut s.buf),
        acked_at.clone(),
        start,
    ));
    // Let the background load reach its pace first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let active = board.foreground.iter().filter(|f| **f).count();
    let want = match mode {
        Mode::Nudges => active,
        Mode::ActiveFirst | Mode::Naive => a.members,
    };
    let filler = vec![b'x'; PAYLOAD - 16];
    let mut sent_ns = Vec::with_capacity(total);
    let mut timeouts = 0;
    for k in 0..total {
        let t = start.elapsed().as_nanos() as u64;
        sent_ns.push(t);
        let mut body = BytesMut::with_capacity(PAYLOAD);
        body.put_u64(t);
        body.put_u64(k as u64);
        body.put_slice(&filler);
        s.send
            .write_all(&wire::encode_client(&ClientFrame::Send {
                request_id: k as u64 + 1,
                group: BIG.into(),
                client_msg_id: format!("m{k}"),
                body: body.freeze(),
            }))
            .await?;
        let deadline = Instant::now() + WAIT_TIMEOUT;
        // A member the node deferred (nudged instead: the load level shed background
        // delivery) is done with this message too; the table counts such messages.
        let reached = |k: usize| {
            board.got_all[k].load(Ordering::Relaxed)
                + match mode {
                    Mode::Nudges => 0,
                    Mode::ActiveFirst | Mode::Naive => board.nudged[k].load(Ordering::Relaxed),
                }
        };
        while reached(k) < want {
            ensure!(
                !board.failed.load(Ordering::Relaxed),
                "a receiver failed (see stderr)"
            );
            if Instant::now() > deadline {
                timeouts += 1;
                // What the sender and the members saw, to tell a slow commit (no ack yet)
                // from a delivery that went missing (acked, not delivered) or a deferral
                // (background members nudged instead: the load level shed them).
                let acked = match acked_at[k].load(Ordering::Relaxed) {
                    0 => "not acked".to_string(),
                    at => format!("acked after {:.1} ms", at.saturating_sub(t) as f64 / 1e6),
                };
                eprintln!(
                    "{}: message {k} reached {} of {want} within {WAIT_TIMEOUT:?} ({} of the \
                     foreground; {acked}; {} members nudged instead)",
                    mode.name(),
                    board.got_all[k].load(Ordering::Relaxed),
                    board.got_active[k].load(Ordering::Relaxed),
                    board.nudged[k].load(Ordering::Relaxed),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(a.settle).await;
    }
    stop.store(true, Ordering::Relaxed);
    let acked = acker.await??;
    ensure!(acked == total as u64, "{acked} acks for {total} messages");
    if let Some(l) = loader {
        let n = l.await??;
        eprintln!("{}: {n} background messages", mode.name());
    }
    let client_ports: Vec<u16> = endpoints
        .iter()
        .filter_map(|e| Some(e.local_addr().ok()?.port()))
        .collect();
    let node_drops = socket_drops(&[addr.port()]);
    let client_drops = socket_drops(&client_ports);
    for r in receivers {
        r.abort();
    }
    sender_pushes.abort();
    for e in &endpoints {
        e.close(0u32.into(), b"done");
    }

    let mut r = summarize(&board, &sent_ns, mode, timeouts, connect);
    let per_message = |v: &[u64]| {
        v.iter()
            .map(|us| format!("{:.0}", *us as f64 / 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!(
        "{}: last active per message (ms): {}; last member: {}",
        mode.name(),
        per_message(&r.last_active_us),
        per_message(&r.last_any_us)
    );
    r.node_drops = node_drops;
    r.client_drops = client_drops;
    Ok(r)
}

fn summarize(
    board: &Board,
    sent_ns: &[u64],
    mode: Mode,
    timeouts: usize,
    connect: Duration,
) -> ModeResult {
    let n = board.members;
    let mut r = ModeResult {
        mode,
        last_active_us: Vec::new(),
        last_any_us: Vec::new(),
        first_us: Vec::new(),
        active_us: Vec::new(),
        bg_before_last_active: Vec::new(),
        timeouts,
        nudges_seen: board.nudges_seen.load(Ordering::Relaxed),
        nudged_messages: 0,
        last_nudge_us: Vec::new(),
        connect,
        metrics: Default::default(),
        rcvbuf_errors: 0,
        node_drops: 0,
        client_drops: 0,
        rss_mib: 0,
    };
    for (k, &sent) in sent_ns.iter().enumerate().skip(WARMUP) {
        let at = |i: usize| board.arrivals[k * n + i].load(Ordering::Relaxed);
        let lat = |t: u64| t.saturating_sub(sent) / 1_000;
        let mut last_active = 0;
        let mut last_any = 0;
        let mut complete = true;
        for i in 0..n {
            let t = at(i);
            if board.foreground[i] {
                if t == 0 {
                    complete = false;
                    continue;
                }
                r.active_us.push(lat(t));
                last_active = last_active.max(t);
            }
            last_any = last_any.max(t);
        }
        if let Some(first) = (0..n).map(at).filter(|&t| t != 0).min() {
            r.first_us.push(lat(first));
        }
        if complete {
            r.last_active_us.push(lat(last_active));
            r.bg_before_last_active.push(
                (0..n)
                    .filter(|&i| !board.foreground[i] && at(i) != 0 && at(i) < last_active)
                    .count(),
            );
        }
        if mode != Mode::Nudges && (0..n).all(|i| at(i) != 0) {
            r.last_any_us.push(lat(last_any));
        }
        let nudged: Vec<u64> = (0..n)
            .map(|i| board.nudges_at[k * n + i].load(Ordering::Relaxed))
            .filter(|&t| t != 0)
            .collect();
        if let Some(&last) = nudged.iter().max() {
            r.nudged_messages += 1;
            r.last_nudge_us.push(lat(last));
        }
    }
    r
}

/// Reads every push of receiver `i` until aborted; records the large group's deliveries and
/// nudges. Keeps the control stream open (finishing it would end the session).
async fn receive(s: Session, i: usize, board: Arc<Board>, start: Instant) {
    let n = board.members;
    let mut pushes = Pushes::new(&s.conn);
    let mut expect = 1;
    loop {
        let f = match pushes.next().await {
            Ok(f) => f,
            Err(e) => {
                // Closing the endpoints at the end ends every stream: not a failure then.
                if !board.failed.swap(true, Ordering::Relaxed) {
                    eprintln!("receiver {i}: {e:#}");
                }
                return;
            }
        };
        let now = (start.elapsed().as_nanos() as u64).max(1);
        match f {
            ServerFrame::Deliver(m) if m.group == BIG => {
                if m.seq != expect {
                    board.failed.store(true, Ordering::Relaxed);
                    eprintln!("receiver {i}: got seq {} expected {expect}", m.seq);
                    return;
                }
                expect += 1;
                let k = u64::from_be_bytes(m.body[8..16].try_into().expect("8 bytes")) as usize;
                if let Some(cell) = board.arrivals.get(k * n + i) {
                    cell.store(now, Ordering::Relaxed);
                    board.got_all[k].fetch_add(1, Ordering::Relaxed);
                    if board.foreground[i] {
                        board.got_active[k].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            ServerFrame::Nudge { group, head_seq } if group == BIG => {
                board.nudges_seen.fetch_add(1, Ordering::Relaxed);
                // Only the sender sends to the large group: message k has seq k + 1.
                if let Some(cell) = (head_seq as usize)
                    .checked_sub(1)
                    .and_then(|k| board.nudges_at.get(k * n + i))
                {
                    if cell
                        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        board.nudged[head_seq as usize - 1].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => {}
        }
    }
}

async fn drain(mut p: Pushes) {
    while p.next().await.is_ok() {}
}

/// Counts acks on a control stream until `n`; fails on errors and duplicates.
/// Reads the sender's acks (request `k + 1` is message `k`), recording when each came (ns
/// since `start`) in `acked_at`; returns how many came.
async fn acks(
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
    acked_at: Arc<Vec<AtomicU64>>,
    start: Instant,
) -> Result<u64> {
    let limits = DecodeLimits::default();
    let n = acked_at.len() as u64;
    let mut acked = 0;
    while acked < n {
        let f = wire::read_frame(&mut recv, &mut buf, 1 << 20)
            .await?
            .context("control stream ended")?;
        match wire::decode_server(&f, &limits)? {
            ServerFrame::Ack {
                duplicate: true, ..
            } => bail!("duplicate ack"),
            ServerFrame::Ack { request_id, .. } => {
                acked += 1;
                if let Some(at) = acked_at.get((request_id as usize).wrapping_sub(1)) {
                    at.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            }
            ServerFrame::Error(e) => bail!("error from the node: {e:?}"),
            _ => {}
        }
    }
    Ok(acked)
}

/// Sends to the background groups, round robin, at `bg_rate` messages/s until `stop`;
/// returns how many were acked.
async fn load(mut s: Session, a: LargeArgs, stop: Arc<AtomicBool>, start: Instant) -> Result<u64> {
    let _pushes = tokio::spawn(drain(Pushes::new(&s.conn)));
    let permits = Arc::new(tokio::sync::Semaphore::new(128));
    let acked = Arc::new(AtomicU64::new(0));
    let acker = {
        let (permits, acked) = (permits.clone(), acked.clone());
        let (mut recv, mut buf) = (s.recv, std::mem::take(&mut s.buf));
        tokio::spawn(async move {
            let limits = DecodeLimits::default();
            loop {
                let Some(f) = wire::read_frame(&mut recv, &mut buf, 1 << 20).await? else {
                    return anyhow::Ok(());
                };
                match wire::decode_server(&f, &limits)? {
                    ServerFrame::Ack { .. } => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        permits.add_permits(1);
                    }
                    ServerFrame::Error(e) => bail!("error from the node (load): {e:?}"),
                    _ => {}
                }
            }
        })
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(a.bg_rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let filler = vec![b'y'; PAYLOAD - 16];
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        permits.acquire().await?.forget();
        let mut body = BytesMut::with_capacity(PAYLOAD);
        body.put_u64(start.elapsed().as_nanos() as u64);
        body.put_u64(i);
        body.put_slice(&filler);
        s.send
            .write_all(&wire::encode_client(&ClientFrame::Send {
                request_id: i + 1,
                group: bg_group(i as usize % a.bg_groups),
                client_msg_id: format!("l{i}"),
                body: body.freeze(),
            }))
            .await?;
        i += 1;
    }
    let _ = permits.acquire_many(128).await?;
    acker.abort();
    Ok(acked.load(Ordering::Relaxed))
}

// --- the report ---

fn pct(v: &[u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    Some(v[((v.len() as f64 - 1.0) * p).round() as usize])
}

fn ms(us: Option<u64>) -> String {
    us.map_or("–".into(), |us| format!("{:.2}", us as f64 / 1e3))
}

fn print_table(results: &[ModeResult]) {
    println!();
    println!(
        "| mode | last active p50 ms | last active p99 ms | all members p50 ms | all members p99 ms | active delivery p50 ms | active delivery p99 ms | background before last active (median) | nudges seen | timeouts |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode.name(),
            ms(pct(&r.last_active_us, 0.5)),
            ms(pct(&r.last_active_us, 0.99)),
            ms(pct(&r.last_any_us, 0.5)),
            ms(pct(&r.last_any_us, 0.99)),
            ms(pct(&r.active_us, 0.5)),
            ms(pct(&r.active_us, 0.99)),
            pct(
                &r.bg_before_last_active
                    .iter()
                    .map(|&c| c as u64)
                    .collect::<Vec<_>>(),
                0.5
            )
            .map_or("–".into(), |c| c.to_string()),
            r.nudges_seen,
            r.timeouts,
        );
    }
    println!();
    let last_active = |m: Mode| {
        results
            .iter()
            .find(|r| r.mode == m)
            .and_then(|r| pct(&r.last_active_us, 0.5))
    };
    if let Some(naive) = last_active(Mode::Naive) {
        for m in [Mode::ActiveFirst, Mode::Nudges] {
            if let Some(x) = last_active(m) {
                println!(
                    "Ratio last active p50, {} / (b): {:.3} (target <= 0.10)",
                    m.name(),
                    x as f64 / naive as f64
                );
            }
        }
    }
    println!();
    println!("| mode | first delivery p50 ms | connect s | last nudge p50 ms (messages nudged) | node: live deliveries | from log | deferred | nudges | outbox overflows | load level changes | gate timeouts | flushes | UDP drops: all / node / clients | RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let m = &r.metrics;
        println!(
            "| {} | {} | {:.1} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |",
            r.mode.name(),
            ms(pct(&r.first_us, 0.5)),
            r.connect.as_secs_f64(),
            ms(pct(&r.last_nudge_us, 0.5)),
            r.nudged_messages,
            m.deliveries_live,
            m.deliveries_catch_up,
            m.deliveries_deferred,
            m.nudges,
            m.outbox_overflows,
            m.load_level_changes,
            m.foreground_gate_timeouts,
            m.flushes,
            r.rcvbuf_errors,
            r.node_drops,
            r.client_drops,
            r.rss_mib,
        );
    }
}
