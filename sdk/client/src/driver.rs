//! The connection task: owns the QUIC connection, writes every client frame, matches
//! responses to requests, and reconnects.
//!
//! The decisions live in the pure parts ([`Requests`], [`DeliveryTracker`](crate::tracker),
//! [`Backoff`]); this file is the IO around them. One task owns the connection and its control
//! send stream; one reader task per receive stream decodes frames, hands pushes straight to
//! the app's event stream and forwards everything else here. The connection task never waits
//! on the app, so a slow app cannot stall requests.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use switchboard_core::ErrorCode;
use switchboard_wire::{
    decode_server, encode_client, read_frame, ClientFrame, DecodeLimits, Hello, ServerFrame,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, Rng};
use crate::events::{Event, EventSink};
use crate::requests::{route, Outcome, RequestKind, Requests, Routed};
use crate::shared::Shared;
use crate::{ClientConfig, ClientError};

/// Commands waiting for the connection task (callers wait beyond this: backpressure).
pub(crate) const COMMAND_QUEUE: usize = 64;
/// Most requests awaiting a response; the node's default pipelining depth.
const MAX_PENDING: usize = 256;
/// Receipts kept while disconnected; older ones are dropped first (receipts are cheap to lose).
const MAX_QUEUED_RECEIPTS: usize = 1024;
/// A connection that lasted this long resets the backoff schedule.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long to wait for the node's close reason after a stream failed.
const CLOSE_REASON_WAIT: Duration = Duration::from_secs(1);
/// How long a closing client waits for the node to take its last frames, then for QUIC to
/// deliver the close.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// What the connection task is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    Request {
        kind: RequestKind,
        reply: oneshot::Sender<Outcome>,
    },
    /// A frame without a response (receipt, presence).
    Frame(ClientFrame),
}

/// What a reader tells the connection task.
#[derive(Debug)]
enum Inbound {
    Frame(Routed),
    /// The stream cannot go on; `code` is what to close the connection with.
    Failed {
        reason: String,
        code: Option<ErrorCode>,
    },
}

/// What the client needs from `Welcome`.
#[derive(Debug)]
pub(crate) struct Welcome {
    session_id: u64,
    tenant: String,
    user: String,
    pub(crate) max_payload_bytes: u32,
    groups: Vec<(String, u64)>,
    resume: Vec<(String, u64)>,
}

/// A connection that completed `Hello`/`Welcome`.
#[derive(Debug)]
pub(crate) struct Session {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Bytes of the control stream read past `Welcome`.
    buf: BytesMut,
    pub(crate) welcome: Welcome,
}

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// `close()` or every `Client` dropped.
    Shutdown,
    /// Reconnect.
    Lost(String),
    /// Reconnect: the app asked (`Client::reconnect`), or the path failed after a network change.
    Requested,
    /// The app paused the client: reconnect once it resumes.
    Paused,
    /// The node refused us for good.
    Fatal(ClientError),
}

/// How a wait between reconnect attempts ended.
enum Wait {
    Elapsed,
    /// `Client::reconnect`, `Client::resume` or a network change.
    Now,
    Paused,
}

/// How long a connection has to answer a ping after moving to a new socket (a network
/// change) before the client gives up on migrating it and reconnects.
const MIGRATION_PROBE: Duration = Duration::from_secs(3);

/// Decoding bounds for what the node sends. Generous: the node is authenticated (pinned
/// certificate) and its own limits are the real ones; these only keep a confused node from
/// making the client allocate without bound.
fn decode_limits() -> DecodeLimits {
    let max_list_len = 100_000;
    DecodeLimits {
        max_frame_bytes: 16 * 1024 * 1024,
        max_list_len,
        max_string_bytes: 64 * 1024,
        max_depth: 8,
        max_tables: max_list_len as usize + 8,
    }
}

/// How long Happy Eyeballs waits for one address before also trying the next (RFC 8305's
/// recommended "connection attempt delay").
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Resolves `cfg.server` and connects to one of its addresses, bounded by `connect_timeout`.
pub(crate) async fn establish_within(
    cfg: &ClientConfig,
    quic: quinn::ClientConfig,
    hello: Hello,
) -> Result<Session, ClientError> {
    tokio::time::timeout(cfg.connect_timeout, async {
        let addrs = resolve(&cfg.server).await?;
        race(addrs, cfg.server_name.clone(), quic, hello).await
    })
    .await
    .map_err(|_| ClientError::Timeout)?
}

/// The addresses of `server` (`host:port`), IPv6 and IPv4 interleaved starting with the
/// resolver's first choice (RFC 8305 §4).
async fn resolve(server: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map_err(|e| ClientError::Connect(format!("resolving {server}: {e}")))?
        .collect();
    if found.is_empty() {
        return Err(ClientError::Connect(format!("{server} has no address")));
    }
    Ok(interleave(&found))
}

/// `found` with the families alternating, the resolver's first choice first, each address
/// once.
fn interleave(found: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = found.first() else {
        return Vec::new();
    };
    let first_v6 = first.is_ipv6();
    let (mut preferred, mut other): (VecDeque<SocketAddr>, VecDeque<SocketAddr>) =
        found.iter().partition(|a| a.is_ipv6() == first_v6);
    let mut ordered: Vec<SocketAddr> = Vec::with_capacity(found.len());
    while !preferred.is_empty() || !other.is_empty() {
        for addr in [preferred.pop_front(), other.pop_front()]
            .into_iter()
            .flatten()
        {
            if !ordered.contains(&addr) {
                ordered.push(addr);
            }
        }
    }
    ordered
}

/// Connects to the first of `addrs` that answers: attempt `i` starts `i × ATTEMPT_DELAY` in,
/// or as soon as every earlier one failed. A refusal by the node itself (a bad token…) is the
/// answer: the other addresses are the same node. Otherwise the last failure is returned.
async fn race(
    addrs: Vec<SocketAddr>,
    server_name: String,
    quic: quinn::ClientConfig,
    hello: Hello,
) -> Result<Session, ClientError> {
    let mut pending = addrs.into_iter();
    let mut attempts = JoinSet::new();
    let mut last_error = ClientError::Connect("no address to try".into());
    loop {
        if let Some(addr) = pending.next() {
            let (name, quic, hello) = (server_name.clone(), quic.clone(), hello.clone());
            attempts.spawn(async move { (addr, establish(addr, name, quic, hello).await) });
        }
        let next_start = tokio::time::sleep(ATTEMPT_DELAY);
        tokio::select! {
            done = attempts.join_next() => match done {
                None => return Err(last_error),
                Some(Ok((_, Ok(session)))) => return Ok(session),
                Some(Ok((addr, Err(e)))) => {
                    debug!(%addr, error = %e, "connection attempt failed");
                    if matches!(e, ClientError::Server { .. }) {
                        return Err(e);
                    }
                    last_error = e;
                }
                Some(Err(join)) => last_error = ClientError::Connect(join.to_string()),
            },
            _ = next_start, if pending.len() > 0 => {}
        }
    }
}

/// One connection attempt: QUIC handshake, control stream, `Hello`, `Welcome`.
async fn establish(
    addr: SocketAddr,
    server_name: String,
    quic: quinn::ClientConfig,
    hello: Hello,
) -> Result<Session, ClientError> {
    let bind: SocketAddr = if addr.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    // A fresh socket per attempt: after a network change the old one may be useless.
    let endpoint = quinn::Endpoint::client(bind)?;
    let conn = endpoint
        .connect_with(quic, addr, &server_name)
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .await
        .map_err(|e| ClientError::from_connection(&e))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::from_connection(&e))?;
    if send
        .write_all(&encode_client(&ClientFrame::Hello(hello)))
        .await
        .is_err()
    {
        return Err(why_closed(&conn).await);
    }
    let limits = decode_limits();
    let mut buf = BytesMut::new();
    let frame = match read_frame(&mut recv, &mut buf, limits.max_frame_bytes).await {
        Ok(Some(frame)) => frame,
        Ok(None) | Err(switchboard_wire::WireError::Io(_)) => return Err(why_closed(&conn).await),
        Err(e) => return Err(ClientError::Protocol(e.to_string())),
    };
    match decode_server(&frame, &limits).map_err(|e| ClientError::Protocol(e.to_string()))? {
        ServerFrame::Welcome {
            session_id,
            tenant,
            user,
            max_payload_bytes,
            groups,
            resume,
            ..
        } => Ok(Session {
            endpoint,
            conn,
            send,
            recv,
            buf,
            welcome: Welcome {
                session_id,
                tenant,
                user,
                max_payload_bytes,
                groups: groups.into_iter().map(|g| (g.group, g.seq)).collect(),
                resume: resume.into_iter().map(|g| (g.group, g.seq)).collect(),
            },
        }),
        ServerFrame::Error(e) => Err(ClientError::from_frame(&e)),
        other => Err(ClientError::Protocol(format!(
            "expected Welcome, got {}",
            other.name()
        ))),
    }
}

/// Why `conn` ended (the node's close code when it gave one).
async fn why_closed(conn: &quinn::Connection) -> ClientError {
    match tokio::time::timeout(CLOSE_REASON_WAIT, conn.closed()).await {
        Ok(e) => ClientError::from_connection(&e),
        Err(_) => {
            ClientError::Protocol("control stream ended while the connection stayed open".into())
        }
    }
}

async fn write(send: &mut quinn::SendStream, frame: &ClientFrame) -> Result<(), String> {
    send.write_all(&encode_client(frame))
        .await
        .map_err(|e| format!("writing to the node failed: {e}"))
}

/// Reads one receive stream until it ends. Pushes go to the app; the rest to the driver.
async fn read_stream(
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
    control: bool,
    events: EventSink,
    inbound: mpsc::UnboundedSender<Inbound>,
) {
    let limits = decode_limits();
    let failure = loop {
        let frame = match read_frame(&mut recv, &mut buf, limits.max_frame_bytes).await {
            Ok(Some(frame)) => frame,
            Ok(None) if control => {
                break Inbound::Failed {
                    reason: "the node ended the control stream".into(),
                    code: None,
                }
            }
            Ok(None) => return, // a push stream the node is done with
            Err(switchboard_wire::WireError::Io(e)) => {
                break Inbound::Failed {
                    reason: e.to_string(),
                    code: None,
                }
            }
            Err(e) => {
                break Inbound::Failed {
                    reason: format!("bad framing from the node: {e}"),
                    code: Some(e.code()),
                }
            }
        };
        match decode_server(&frame, &limits) {
            Ok(frame) => match route(frame) {
                Routed::Push(push) => events.push(push).await,
                other => {
                    let _ = inbound.send(Inbound::Frame(other));
                }
            },
            Err(e) => {
                break Inbound::Failed {
                    reason: format!("undecodable frame from the node: {e}"),
                    code: Some(e.code()),
                }
            }
        }
    };
    let _ = inbound.send(failure);
}

pub(crate) struct Driver {
    cfg: Arc<ClientConfig>,
    quic: quinn::ClientConfig,
    shared: Arc<Shared>,
    events: EventSink,
    commands: mpsc::Receiver<Command>,
    requests: Requests<oneshot::Sender<Outcome>>,
    /// Receipts made while disconnected.
    receipts: VecDeque<ClientFrame>,
    backoff: Backoff,
    /// A fatal connection-level `Error` the node sent before closing.
    fatal: Option<ClientError>,
    /// When to state the presence again: the node refused to tell co-members of a change
    /// (`RateLimited`, per-user presence limit) and said when it would.
    presence_retry: Option<Instant>,
    /// Sends the node answered `OutcomeUnknown`: when to send each again (same id), by
    /// request id. A reconnect re-issues every pending request anyway, so it clears them.
    resends: Vec<(Instant, u64)>,
}

impl Driver {
    pub(crate) fn new(
        cfg: ClientConfig,
        quic: quinn::ClientConfig,
        shared: Arc<Shared>,
        events: EventSink,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        let backoff = Backoff::new(cfg.reconnect.clone(), Rng::from_entropy());
        Self {
            cfg: Arc::new(cfg),
            quic,
            shared,
            events,
            commands,
            requests: Requests::default(),
            receipts: VecDeque::new(),
            backoff,
            fatal: None,
            presence_retry: None,
            resends: Vec::new(),
        }
    }

    /// Runs sessions and reconnects until the client stops.
    pub(crate) async fn run(mut self, first: Session) {
        let mut session = first;
        let error = loop {
            let started = Instant::now();
            let reason = match self.run_session(session).await {
                SessionEnd::Shutdown => break None,
                SessionEnd::Fatal(e) => break Some(e),
                SessionEnd::Lost(reason) => {
                    warn!(%reason, "connection lost");
                    if started.elapsed() >= STABLE_AFTER {
                        self.backoff.reset();
                    }
                    reason
                }
                SessionEnd::Requested => {
                    self.backoff.reset();
                    "reconnect requested".to_owned()
                }
                SessionEnd::Paused => {
                    self.backoff.reset();
                    "paused by the app".to_owned()
                }
            };
            self.events.lifecycle(Event::Disconnected {
                reason: reason.clone(),
            });
            session = match self.reconnect(reason).await {
                Ok(s) => s,
                Err(error) => break error,
            };
        };
        self.finish(error);
    }

    /// Waits and retries until a session is up. `Err(None)`: shutdown requested;
    /// `Err(Some(e))`: give up with `e`.
    async fn reconnect(&mut self, lost: String) -> Result<Session, Option<ClientError>> {
        let mut last_error = lost;
        // The node's own advice (e.g. `RateLimited` at `Hello`): never retry sooner.
        let mut not_before = Duration::ZERO;
        loop {
            if self.shared.is_paused() {
                debug!("paused: not reconnecting until resumed");
                let shared = self.shared.clone();
                self.offline_until(async move { shared.until_paused(false).await })
                    .await
                    .ok_or(None)?;
                self.backoff.reset();
            }
            let Some((attempt, delay)) = self.backoff.next_delay() else {
                return Err(Some(ClientError::Connect(format!(
                    "gave up reconnecting; last error: {last_error}"
                ))));
            };
            let delay = delay.max(not_before);
            self.events
                .lifecycle(Event::Reconnecting { attempt, delay });
            let shared = self.shared.clone();
            let wait = async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => Wait::Elapsed,
                    _ = shared.reconnect_requested() => Wait::Now,
                    _ = shared.until_paused(true) => Wait::Paused,
                }
            };
            match self.offline_until(wait).await.ok_or(None)? {
                Wait::Elapsed => {}
                Wait::Now => {
                    debug!("reconnecting now, as asked");
                    self.backoff.reset();
                }
                Wait::Paused => continue,
            }
            let (cfg, quic, hello) = (self.cfg.clone(), self.quic.clone(), self.shared.hello());
            let attempt_fut = async move { establish_within(&cfg, quic, hello).await };
            match self.offline_until(attempt_fut).await {
                None => return Err(None),
                Some(Ok(session)) => return Ok(session),
                Some(Err(e)) if e.is_terminal() => return Err(Some(e)),
                Some(Err(e)) => {
                    info!(attempt, error = %e, "reconnect attempt failed");
                    not_before = e.retry_after().unwrap_or_default();
                    last_error = e.to_string();
                }
            }
        }
    }

    /// Serves commands (queueing what they would send) while `fut` runs. `None` if the
    /// client is shutting down.
    async fn offline_until<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            self.prune_if_full();
            tokio::select! {
                biased;
                _ = self.shared.shutdown.notified() => return None,
                out = &mut fut => return Some(out),
                cmd = self.commands.recv(), if self.requests.len() < MAX_PENDING => match cmd {
                    None => return None,
                    // Offline nothing is written; requests and receipts wait for the session.
                    Some(cmd) => {
                        let now = self.on_command(cmd, false);
                        debug_assert!(now.is_none());
                    }
                },
                _ = tokio::time::sleep(Duration::from_secs(1)), if self.requests.len() >= MAX_PENDING => {}
            }
        }
    }

    async fn run_session(&mut self, session: Session) -> SessionEnd {
        let Session {
            endpoint,
            conn,
            mut send,
            recv,
            buf,
            welcome,
        } = session;
        info!(session_id = welcome.session_id, user = %welcome.user, "connected");
        self.fatal = None;
        // This connection's `Hello` carried the latest presence.
        self.presence_retry = None;
        // Re-issued below with every pending request.
        self.resends.clear();
        // This connection is the one a reconnect request asked for.
        self.shared.clear_reconnect_request();
        self.shared.online.store(true, Ordering::Release);
        self.shared
            .max_payload_bytes
            .store(welcome.max_payload_bytes, Ordering::Relaxed);
        {
            let mut tracker = self.shared.tracker.lock();
            for (group, seq) in &welcome.resume {
                tracker.adopt_resume(group, *seq);
            }
        }
        // Before any reader runs, so `Connected` precedes this session's pushes.
        self.events.lifecycle(Event::Connected {
            session_id: welcome.session_id,
            tenant: welcome.tenant,
            user: welcome.user,
            groups: welcome.groups,
        });

        let (inbound_tx, mut inbound) = mpsc::unbounded_channel();
        let mut readers = JoinSet::new();
        readers.spawn(read_stream(
            recv,
            buf,
            true,
            self.events.clone(),
            inbound_tx.clone(),
        ));

        let end = 'session: {
            // What piled up while disconnected, in the order it was made.
            self.requests.retain(|reply| !reply.is_closed());
            let mut backlog = self.requests.reissue();
            backlog.extend(self.receipts.drain(..));
            self.shared.tracker.lock().new_connection();
            backlog.extend(self.ack_frames());
            for frame in &backlog {
                if let Err(reason) = write(&mut send, frame).await {
                    break 'session self.ended(&conn, reason).await;
                }
            }

            // Queued sends of the outbox go out now that a session is up.
            self.shared.outbox_kick.notify_one();
            let mut ack_at: Option<Instant> = None;
            // The ping that checks a migrated path, and when it is overdue.
            let mut probe: Option<(Instant, oneshot::Receiver<Outcome>)> = None;
            loop {
                self.prune_if_full();
                let ack_due = sleep_until_some(ack_at);
                let presence_due = sleep_until_some(self.presence_retry);
                let resend_due = sleep_until_some(self.resends.iter().map(|r| r.0).min());
                tokio::select! {
                    biased;
                    _ = self.shared.shutdown.notified() => break 'session SessionEnd::Shutdown,
                    _ = self.shared.reconnect_requested() => break 'session SessionEnd::Requested,
                    _ = self.shared.until_paused(true) => break 'session SessionEnd::Paused,
                    _ = self.shared.network_changed.notified() => {
                        // QUIC migration: the same connection from a fresh socket (the old
                        // one may be bound to an interface that is gone), checked by a ping.
                        if let Err(e) = rebind(&endpoint) {
                            info!(error = %e, "cannot move the connection to a new socket; reconnecting");
                            break 'session SessionEnd::Requested;
                        }
                        let (tx, rx) = oneshot::channel();
                        let frame = self.requests.insert(RequestKind::Ping, tx);
                        probe = Some((Instant::now() + MIGRATION_PROBE, rx));
                        if let Err(reason) = write(&mut send, &frame).await {
                            break 'session self.ended(&conn, reason).await;
                        }
                    }
                    migrated = probe_answer(&mut probe) => {
                        if migrated {
                            info!("the connection moved to the new network path");
                        } else {
                            info!("no answer on the new network path; reconnecting");
                            break 'session SessionEnd::Requested;
                        }
                    }
                    msg = inbound.recv() => match msg {
                        Some(Inbound::Frame(routed)) => self.on_routed(routed),
                        Some(Inbound::Failed { reason, code }) => {
                            if let Some(code) = code {
                                conn.close(u32::from(code.as_u16()).into(), reason.as_bytes());
                            }
                            break 'session self.ended(&conn, reason).await;
                        }
                        None => break 'session self.ended(&conn, "readers stopped".into()).await,
                    },
                    e = conn.closed() => break 'session self.ended_with(ClientError::from_connection(&e)),
                    stream = conn.accept_uni() => match stream {
                        Ok(recv) => {
                            debug!("push stream opened");
                            readers.spawn(read_stream(recv, BytesMut::new(), false, self.events.clone(), inbound_tx.clone()));
                        }
                        Err(e) => break 'session self.ended_with(ClientError::from_connection(&e)),
                    },
                    cmd = self.commands.recv(), if self.requests.len() < MAX_PENDING => match cmd {
                        None => break 'session SessionEnd::Shutdown,
                        Some(cmd) => {
                            if let Some(frame) = self.on_command(cmd, true) {
                                if let Err(reason) = write(&mut send, &frame).await {
                                    break 'session self.ended(&conn, reason).await;
                                }
                            }
                        }
                    },
                    _ = self.shared.ack_ready.notified() => {
                        ack_at.get_or_insert_with(|| Instant::now() + self.cfg.ack_delay);
                    }
                    _ = ack_due => {
                        ack_at = None;
                        for frame in self.ack_frames() {
                            if let Err(reason) = write(&mut send, &frame).await {
                                break 'session self.ended(&conn, reason).await;
                            }
                        }
                    }
                    _ = presence_due => {
                        self.presence_retry = None;
                        let state = *self.shared.presence.lock();
                        if let Err(reason) = write(&mut send, &ClientFrame::Presence { state }).await {
                            break 'session self.ended(&conn, reason).await;
                        }
                    }
                    _ = resend_due => {
                        let now = Instant::now();
                        let (due, later) = std::mem::take(&mut self.resends)
                            .into_iter()
                            .partition::<Vec<_>, _>(|r| r.0 <= now);
                        self.resends = later;
                        for (_, id) in due {
                            // Gone if its caller stopped waiting meanwhile.
                            let Some(frame) = self.requests.frame_of(id) else { continue };
                            debug!(request_id = id, "sending again a send whose outcome was unknown");
                            if let Err(reason) = write(&mut send, &frame).await {
                                break 'session self.ended(&conn, reason).await;
                            }
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)), if self.requests.len() >= MAX_PENDING => {}
                }
            }
        };

        self.shared.online.store(false, Ordering::Release);
        if let SessionEnd::Shutdown | SessionEnd::Paused = end {
            let goodbye = self.say_goodbye(&mut send, &mut inbound);
            if tokio::time::timeout(CLOSE_LINGER, goodbye).await.is_err() {
                debug!("the node did not end the control stream in time");
            }
        }
        // Stop the readers before saying `Disconnected`: nothing of this session follows it.
        readers.shutdown().await;
        match &end {
            SessionEnd::Shutdown => {
                conn.close(0u32.into(), b"client closed");
                let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
            }
            SessionEnd::Paused => conn.close(0u32.into(), b"paused"),
            SessionEnd::Lost(_) | SessionEnd::Requested | SessionEnd::Fatal(_) => {
                conn.close(0u32.into(), b"reconnecting")
            }
        }
        end
    }

    /// A clean close: send the last delivery acks, end the control stream, and wait for the
    /// node to end its side — it has then processed every frame we sent, so its stored
    /// cursors cover everything handed to the app. (Closing the connection right away could
    /// discard frames the node received but had not read yet.)
    async fn say_goodbye(
        &mut self,
        send: &mut quinn::SendStream,
        inbound: &mut mpsc::UnboundedReceiver<Inbound>,
    ) {
        for frame in self.ack_frames() {
            if write(send, &frame).await.is_err() {
                return;
            }
        }
        if send.finish().is_err() {
            return;
        }
        while let Some(msg) = inbound.recv().await {
            match msg {
                Inbound::Frame(routed) => self.on_routed(routed),
                Inbound::Failed { .. } => return,
            }
        }
    }

    /// A stream or write failed: wait briefly for the node's close reason, then classify.
    async fn ended(&mut self, conn: &quinn::Connection, reason: String) -> SessionEnd {
        if self.fatal.is_none() {
            if let Ok(e) = tokio::time::timeout(CLOSE_REASON_WAIT, conn.closed()).await {
                return self.ended_with(ClientError::from_connection(&e));
            }
        }
        self.ended_with(ClientError::Connect(reason))
    }

    fn ended_with(&mut self, error: ClientError) -> SessionEnd {
        // The node's `Error` frame is more precise than its close code.
        let error = self.fatal.take().unwrap_or(error);
        if error.is_terminal() {
            return SessionEnd::Fatal(error);
        }
        SessionEnd::Lost(match error {
            ClientError::Connect(reason) => reason,
            other => other.to_string(),
        })
    }

    /// Registers a command; returns the frame to write now when `online`.
    fn on_command(&mut self, cmd: Command, online: bool) -> Option<ClientFrame> {
        match cmd {
            Command::Request { kind, reply } => {
                let frame = self.requests.insert(kind, reply);
                online.then_some(frame)
            }
            Command::Frame(frame) if online => Some(frame),
            Command::Frame(frame @ ClientFrame::Receipt { .. }) => {
                if self.receipts.len() == MAX_QUEUED_RECEIPTS {
                    self.receipts.pop_front();
                    debug!("dropping the oldest receipt queued while disconnected");
                }
                self.receipts.push_back(frame);
                None
            }
            // Presence: the reconnect's `Hello` carries the latest state.
            Command::Frame(_) => None,
        }
    }

    fn on_routed(&mut self, routed: Routed) {
        match routed {
            Routed::Response(id, frame) => {
                if let Some((_, wait)) = self.requests.resend_if_unknown(id, &frame) {
                    warn!(
                        request_id = id,
                        "send outcome unknown (node storage failed); sending it again with the same id"
                    );
                    self.resends.push((Instant::now() + wait, id));
                    return;
                }
                match self.requests.complete(id, frame) {
                    Some((reply, outcome)) => {
                        let _ = reply.send(outcome);
                    }
                    None => debug!(request_id = id, "response to no waiting request"),
                }
            }
            Routed::ConnectionError(e) => {
                let error = ClientError::from_frame(&e);
                if e.error_code().is_some_and(ErrorCode::is_fatal) {
                    warn!(%error, "node is closing the connection");
                    self.fatal = Some(error);
                } else {
                    warn!(%error, "node reported an error");
                    // Receipts and presence changes get their errors here (no request id).
                    // Stating the presence again is free on the node when co-members already
                    // know it, so any retry hint schedules it.
                    if e.error_code() == Some(ErrorCode::RateLimited) && e.retry_after_ms > 0 {
                        let at = Instant::now() + Duration::from_millis(e.retry_after_ms.into());
                        self.presence_retry.get_or_insert(at);
                    }
                }
            }
            Routed::Push(_) => {} // readers deliver pushes themselves
            Routed::Unexpected(frame) => {
                warn!(frame = frame.name(), "unexpected frame ignored")
            }
        }
    }

    fn ack_frames(&self) -> Vec<ClientFrame> {
        self.shared
            .tracker
            .lock()
            .take_acks()
            .into_iter()
            .map(|(group, seq)| ClientFrame::AckDelivery { group, seq })
            .collect()
    }

    /// At capacity, make room by forgetting requests nobody waits for any more.
    fn prune_if_full(&mut self) {
        if self.requests.len() >= MAX_PENDING {
            self.requests.retain(|reply| !reply.is_closed());
        }
    }

    /// Stops the client: fails everything still waiting and ends the event stream.
    fn finish(mut self, error: Option<ClientError>) {
        match &error {
            None => info!("client closed"),
            Some(e) => warn!(error = %e, "client stopped"),
        }
        let failure = || {
            error
                .as_ref()
                .map_or(ClientError::Closed, ClientError::duplicate)
        };
        self.commands.close();
        for reply in self.requests.drain() {
            let _ = reply.send(Err(failure()));
        }
        while let Ok(cmd) = self.commands.try_recv() {
            if let Command::Request { reply, .. } = cmd {
                let _ = reply.send(Err(failure()));
            }
        }
        self.shared.stopped.send_replace(true);
        // The outbox worker sees `stopped` and ends.
        self.shared.outbox_kick.notify_one();
        self.events.lifecycle(Event::Closed { error });
    }
}

/// Moves `endpoint` to a fresh socket of the same address family (QUIC connection migration).
fn rebind(endpoint: &quinn::Endpoint) -> std::io::Result<()> {
    let bind: SocketAddr = if endpoint.local_addr()?.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    endpoint.rebind(std::net::UdpSocket::bind(bind)?)
}

/// Whether the migration probe was answered in time; forever pending without a probe.
async fn probe_answer(probe: &mut Option<(Instant, oneshot::Receiver<Outcome>)>) -> bool {
    let Some((deadline, rx)) = probe else {
        return std::future::pending().await;
    };
    let answered = matches!(tokio::time::timeout_at(*deadline, rx).await, Ok(Ok(Ok(_))));
    *probe = None;
    answered
}

/// Sleeps until `at`, or forever when there is no `at` (a `select!` branch that is off).
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn address_families_alternate_from_the_resolvers_first_choice() {
        let check = |found: &[&str], expect: &[&str]| {
            assert_eq!(interleave(&addrs(found)), addrs(expect), "{found:?}");
        };
        check(
            &["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1"],
            &["[::1]:1", "10.0.0.1:1", "[::2]:1", "[::3]:1"],
        );
        check(
            &["10.0.0.1:1", "10.0.0.2:1", "[::1]:1", "[::2]:1"],
            &["10.0.0.1:1", "[::1]:1", "10.0.0.2:1", "[::2]:1"],
        );
        check(&["10.0.0.1:1", "10.0.0.1:1"], &["10.0.0.1:1"]);
        check(&[], &[]);
    }

    #[tokio::test]
    async fn names_resolve_and_nothing_is_a_clear_error() {
        let found = resolve("127.0.0.1:7700").await.unwrap();
        assert_eq!(found, addrs(&["127.0.0.1:7700"]));
        let found = resolve("[::1]:7700").await.unwrap();
        assert_eq!(found, addrs(&["[::1]:7700"]));
        let e = resolve("no-port").await.unwrap_err();
        assert!(matches!(e, ClientError::Connect(_)), "{e}");
    }
}
