//! The push path of one session: what goes on the wire next ([`PushPlanner`]), and the
//! writers that put what the hub queued (`outbox.rs`) on the connection's push streams.
//!
//! Each [`PushStream`] is its own QUIC (or WebTransport) unidirectional stream with its own transport priority,
//! opened on first use. quinn sends buffered data of a higher-priority stream before any of a
//! lower one, and a stream blocked by flow control (a client that stopped reading bulk
//! traffic) blocks only its own writer — so a big low-lane backlog never delays a high-lane
//! message or a feature-flag update.
//!
//! A group's messages may therefore travel on several streams. The planner keeps them
//! exactly-once and gap-free per connection (it never writes a sequence number at or below
//! one it wrote, and fills a gap from the log, on the writing stream, before writing past
//! it), and announces each subscription with a `Resume { group, after_seq }` frame on the
//! stream of its first delivery. The client hands a group's messages to the app in `seq`
//! order from `after_seq + 1`, holding one that overtook its predecessor until that arrives
//! (protocol §9).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_router::{self as router, LogError};
use switchboard_wire as wire;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::active_first::GateTicket;
use crate::groups::Groups;
use crate::outbox::{drain, OutboxRx, Push, PushStream};
use crate::state::{GroupState, Session, SubChange};
use crate::transport::{self, Conn};

/// Bytes of pushes a writer takes from its queue per write (more if a single frame is
/// larger): enough to pack many small messages into few packets, small enough that planning
/// (which holds the session's planner lock) stays short.
const WRITE_BUDGET: usize = 64 * 1024;
pub use router::NUDGE_INTERVAL_MS;

/// A session's [`router::SessionPlanner`] with the session's state it reads (subscription
/// changes, the catch-up flag) and the log it reads through [`Groups`]. Shared by the session's
/// writers (each takes the lock only to plan, never across a write); the transport only
/// writes the frames it returns, on the stream of the writer that asked.
pub(crate) struct PushPlanner {
    groups: Arc<Groups>,
    session: Arc<Session>,
    planner: router::SessionPlanner<Arc<GroupState>>,
}

/// The log and group state as one session's planner sees them.
struct SessionLog<'a> {
    groups: &'a Groups,
    session: &'a Session,
}

impl router::GroupLog<Arc<GroupState>> for SessionLog<'_> {
    fn head(&self, g: &Arc<GroupState>) -> u64 {
        g.head()
    }

    fn defers(&self, g: &Arc<GroupState>) -> bool {
        self.groups.defers(self.session, g)
    }

    fn read(
        &self,
        g: &Arc<GroupState>,
        after: u64,
        upto: u64,
    ) -> Result<Vec<wire::Message>, LogError> {
        let msgs = self
            .groups
            .read_for_catch_up(g, after, upto)
            .map_err(|e| LogError::Read(e.to_string()))?;
        Ok(msgs
            .into_iter()
            .map(|m| crate::groups::to_message(&g.id, m))
            .collect())
    }

    fn first_seq(&self, g: &Arc<GroupState>) -> Result<u64, LogError> {
        self.groups
            .first_seq(g)
            .map_err(|e| LogError::Read(e.to_string()))
    }
}

impl PushPlanner {
    pub(crate) fn new(groups: Arc<Groups>, session: Arc<Session>) -> Self {
        Self {
            groups,
            session,
            planner: router::SessionPlanner::new(),
        }
    }

    fn apply_sub_changes(&mut self) {
        let changes = std::mem::take(&mut *self.session.sub_changes.lock());
        for c in changes.into_values() {
            match c {
                SubChange::Subscribe { group, after } => {
                    self.planner.subscribe(group.id.clone(), group, after);
                }
                SubChange::Unsubscribe(id) => self.planner.unsubscribe(&id),
            }
        }
    }

    /// Counts what planning did in the node's metrics.
    fn count(&self, stats: router::PlanStats) {
        let m = self.groups.metrics();
        if stats.from_log > 0 {
            m.deliveries_catch_up
                .fetch_add(stats.from_log, Ordering::Relaxed);
            m.tenant(&self.session.tenant)
                .deliveries_catch_up
                .fetch_add(stats.from_log, Ordering::Relaxed);
        }
        if stats.nudges > 0 {
            m.nudges.fetch_add(stats.nudges, Ordering::Relaxed);
        }
    }

    /// Appends the frames for one push to `out`, filling a gap from the log first.
    pub(crate) fn plan(&mut self, push: Push, out: &mut Vec<Bytes>) -> Result<(), LogError> {
        self.apply_sub_changes();
        let item = match push {
            Push::Notice { frame, .. } => router::PlanItem::Notice(frame),
            Push::Nudge { group, seq } => router::PlanItem::Nudge { group, seq },
            Push::Deliver {
                group, seq, frame, ..
            } => router::PlanItem::Deliver { group, seq, frame },
        };
        let mut stats = router::PlanStats::default();
        let log = SessionLog {
            groups: &self.groups,
            session: &self.session,
        };
        let planned = self
            .planner
            .plan(item, crate::clock::now_ms(), &log, out, &mut stats);
        self.count(stats);
        if planned? == router::Planned::NeedsCatchUp {
            self.session.request_catch_up();
        }
        Ok(())
    }

    /// When the earliest held nudge is due (wall-clock ms), if any.
    pub(crate) fn next_nudge_at(&self) -> Option<u64> {
        self.planner.next_nudge_at()
    }

    /// Appends the held nudges that are due now (the trailing edge of a burst).
    pub(crate) fn poll_nudges(&mut self, out: &mut Vec<Bytes>) {
        let mut stats = router::PlanStats::default();
        self.planner
            .poll_nudges(crate::clock::now_ms(), out, &mut stats);
        self.count(stats);
    }

    /// If a catch-up was requested, appends up to one batch of log messages per group that is
    /// behind its durable head (except groups whose delivery is deferred for this session).
    /// Returns true if more remain (call again after writing `out`).
    pub(crate) fn catch_up(&mut self, out: &mut Vec<Bytes>) -> Result<bool, LogError> {
        self.apply_sub_changes();
        if !self.session.catch_up.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let mut stats = router::PlanStats::default();
        let log = SessionLog {
            groups: &self.groups,
            session: &self.session,
        };
        let more = self.planner.catch_up(&log, out, &mut stats);
        self.count(stats);
        let more = more?;
        if more {
            self.session.catch_up.store(true, Ordering::Release);
        }
        Ok(more)
    }
}

/// Why the push writers stopped.
#[derive(Debug)]
pub(crate) enum PushEnd {
    /// The client closed or reset a push stream, or the connection is gone.
    Closed,
    /// Planning failed to read the log.
    Store(LogError),
}

/// Runs the session's push writers until its outbox is dropped (session closed) or one of
/// them fails. Whatever the high queue holds at start (the session's `Flags`) is written
/// before catch-up begins.
pub(crate) async fn run(conn: Conn, planner: PushPlanner, rx: OutboxRx) -> Result<(), PushEnd> {
    let session = planner.session.clone();
    let planner = Mutex::new(planner);
    let bytes = rx.bytes;
    let [mut high, normal, low, notices] = rx.queues;
    let mut first = Writer::new(&conn, PushStream::High, &planner, &bytes);
    let mut items = Vec::new();
    while let Ok(p) = high.try_recv() {
        items.push(p);
    }
    first.plan_and_write(&mut items).await?;
    let result = tokio::try_join!(
        first.run(high, None),
        Writer::new(&conn, PushStream::Normal, &planner, &bytes).run(normal, Some(&session)),
        Writer::new(&conn, PushStream::Low, &planner, &bytes).run(low, None),
        Writer::new(&conn, PushStream::Notices, &planner, &bytes).run(notices, None),
    );
    result.map(|_| ())
}

/// One push stream's writer.
struct Writer<'a> {
    conn: &'a Conn,
    kind: PushStream,
    planner: &'a Mutex<PushPlanner>,
    groups: Arc<Groups>,
    session: Arc<Session>,
    queued_bytes: Arc<AtomicUsize>,
    /// When each live delivery in the current write was published (latency metrics).
    published: Vec<Instant>,
    /// Gate tickets of the foreground copies in the current write, released after it.
    tickets: Vec<GateTicket>,
    /// Opened on first write.
    stream: Option<transport::SendStream>,
    out: Vec<Bytes>,
}

impl<'a> Writer<'a> {
    fn new(
        conn: &'a Conn,
        kind: PushStream,
        planner: &'a Mutex<PushPlanner>,
        queued_bytes: &Arc<AtomicUsize>,
    ) -> Self {
        let (groups, session) = {
            let p = planner.lock();
            (p.groups.clone(), p.session.clone())
        };
        Self {
            conn,
            kind,
            planner,
            groups,
            session,
            queued_bytes: queued_bytes.clone(),
            published: Vec::new(),
            tickets: Vec::new(),
            stream: None,
            // Grown on first use: most connections never use some of their streams, and
            // 64-slot buffers up front were ~28 KiB of every idle connection.
            out: Vec::new(),
        }
    }

    /// Serves `rx`; the writer given the session also does its catch-up (woken by it).
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Push>,
        catch_up: Option<&Session>,
    ) -> Result<(), PushEnd> {
        let mut items = Vec::new();
        loop {
            if catch_up.is_some() {
                // Catch-up (after hello, a join, an overflow, a return to the foreground):
                // one bounded batch per turn so live pushes keep flowing in between.
                let more = self.planner.lock().catch_up(&mut self.out);
                if let Err(e) = more {
                    warn!(error = %e, "catch-up failed");
                    return Err(PushEnd::Store(e));
                }
            }
            if self.out.is_empty() {
                // The notices writer also wakes for the trailing edge of held nudges.
                let nudge_due = match self.kind {
                    PushStream::Notices => self.planner.lock().next_nudge_at(),
                    _ => None,
                };
                let nudge_timer = async {
                    match nudge_due {
                        Some(at) => {
                            let wait = at.saturating_sub(crate::clock::now_ms());
                            tokio::time::sleep(std::time::Duration::from_millis(wait)).await
                        }
                        None => std::future::pending().await,
                    }
                };
                let woken = async {
                    match catch_up {
                        Some(session) => session.wake.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    p = rx.recv() => match p {
                        Some(p) => items.push(p),
                        None => return Ok(()),
                    },
                    _ = woken => {}
                    _ = nudge_timer => self.planner.lock().poll_nudges(&mut self.out),
                }
            }
            drain(&mut rx, &mut items, WRITE_BUDGET);
            self.plan_and_write(&mut items).await?;
        }
    }

    async fn plan_and_write(&mut self, items: &mut Vec<Push>) -> Result<(), PushEnd> {
        if !items.is_empty() {
            let taken: usize = items.iter().map(Push::len).sum();
            self.queued_bytes.fetch_sub(taken, Ordering::AcqRel);
            let mut planner = self.planner.lock();
            for mut item in items.drain(..) {
                if let Push::Deliver {
                    published_at, gate, ..
                } = &mut item
                {
                    self.published.push(*published_at);
                    self.tickets.extend(gate.take());
                }
                if let Err(e) = planner.plan(item, &mut self.out) {
                    warn!(error = %e, "delivery planning failed");
                    return Err(PushEnd::Store(e));
                }
            }
        }
        if self.out.is_empty() {
            self.tickets.clear();
            return Ok(());
        }
        if self.stream.is_none() {
            let mut s = self.conn.open_uni().await.map_err(|_| PushEnd::Closed)?;
            let _ = s.quic().set_priority(self.kind.priority());
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("opened above").quic();
        if stream.write_all_chunks(&mut self.out).await.is_err() {
            debug!(stream = self.kind.name(), "push stream closed");
            return Err(PushEnd::Closed);
        }
        self.out.clear();
        if self.tickets.iter().any(GateTicket::awaited) {
            // Handed to QUIC and the connection driver woken (it runs next on this worker).
            // Yield so it sends before the release can wake the phase-2 task: releasing right
            // after the write let that wake run ahead of the driver, and a background packet
            // went before the last foreground one in 4 of 15 runs of the crowd test
            // (delivery_planning.rs); releasing before the write, 1 of 45; only the writer
            // of a gate's last copies yielding, 2 of 15. Only for gates a background phase
            // waits on: yielding on every write slowed fast readers of all-foreground groups
            // enough to overflow their queues (messaging.rs, slow-consumer test, 6 of 10).
            tokio::task::yield_now().await;
        }
        self.tickets.clear();
        if !self.published.is_empty() {
            // One clock read per write, not per message.
            let now = Instant::now();
            let m = self.groups.metrics();
            let class = match self.session.presence() {
                switchboard_core::PresenceState::Foreground => &m.latency_active,
                switchboard_core::PresenceState::Background => &m.latency_background,
            };
            for at in self.published.drain(..) {
                class.observe(now.saturating_duration_since(at));
            }
        }
        Ok(())
    }
}
