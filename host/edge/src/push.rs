//! The push path of one session: what goes on the wire next ([`PushPlanner`]), and the
//! session's push task (`run`) that puts what the hub queued (`outbox.rs`) on the
//! connection's push streams, one write in flight per stream.
//!
//! Each [`PushStream`] is its own QUIC (or WebTransport) unidirectional stream with its own transport priority,
//! opened on first use. quinn sends buffered data of a higher-priority stream before any of a
//! lower one, and a stream blocked by flow control (a client that stopped reading bulk
//! traffic) blocks only its own stream's write — so a big low-lane backlog never delays a high-lane
//! message or a feature-flag update.
//!
//! A group's messages may therefore travel on several streams. The planner keeps them
//! exactly-once and gap-free per connection (it never writes a sequence number at or below
//! one it wrote, and fills a gap from the log, on the writing stream, before writing past
//! it), and announces each subscription with a `Resume { group, after_seq }` frame on the
//! stream of its first delivery. The client hands a group's messages to the app in `seq`
//! order from `after_seq + 1`, holding one that overtook its predecessor until that arrives
//! (protocol §9).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use switchboard_router::{self as router, LogError};
use switchboard_wire as wire;
use tracing::{debug, warn};

use crate::active_first::GateTicket;
use crate::groups::Groups;
use crate::outbox::{Push, PushStream};
use crate::state::{GroupState, Session, SubChange};
use crate::transport::{self, Conn};

/// Bytes of pushes a writer takes from its queue per write (more if a single frame is
/// larger): enough to pack many small messages into few packets, small enough that planning
/// (which holds the session's planner lock) stays short.
const WRITE_BUDGET: usize = 64 * 1024;
pub use router::NUDGE_INTERVAL_MS;

/// A session's [`router::SessionPlanner`] with the session's state it reads (subscription
/// changes, the catch-up flag) and the log it reads through [`Groups`]. Owned by the session's
/// push task, which plans between writes, never across one; the transport only writes the
/// frames it returns, on the stream it planned for.
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

/// Why the push task stopped.
#[derive(Debug)]
pub(crate) enum PushEnd {
    /// The client closed or reset a push stream, or the connection is gone.
    Closed,
    /// Planning failed to read the log.
    Store(LogError),
}

/// One push stream's writing state, moved into its write while one is in flight.
struct Lane {
    kind: PushStream,
    /// Opened on first write.
    stream: Option<transport::SendStream>,
    /// Frames of the next (or current) write. Grown on first use: most connections never use
    /// some of their streams, and 64-slot buffers up front were ~28 KiB of every idle one.
    out: Vec<Bytes>,
    /// Gate tickets of the foreground copies in the write, released after it.
    tickets: Vec<GateTicket>,
    /// When each live delivery in the write was published (latency metrics).
    published: Vec<Instant>,
}

/// A lane's write in flight: the lane comes back with its result.
type Write =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Lane, Result<(), PushEnd>)> + Send>>;

/// Runs the session's push streams until one of them fails (the connection ends the task
/// otherwise). Whatever the high queue holds at start (the session's `Flags`) is written
/// before catch-up begins.
///
/// One task per session, woken by its [`Outbox`](crate::outbox::Outbox): each turn it looks
/// at every stream without a write in flight, plans what that stream's queue holds (plus
/// catch-up on the normal stream and due nudges on the notices stream), and starts the
/// stream's write. Writes run concurrently and are polled only when they make progress, so a
/// stream blocked by flow control (a client that stopped reading bulk traffic) holds up only
/// its own queue.
pub(crate) async fn run(conn: Conn, mut planner: PushPlanner) -> Result<(), PushEnd> {
    let session = planner.session.clone();
    let outbox = &session.outbox;
    let mut lanes: [Option<Lane>; 4] = PushStream::ALL.map(|kind| {
        Some(Lane {
            kind,
            stream: None,
            out: Vec::new(),
            tickets: Vec::new(),
            published: Vec::new(),
        })
    });
    let mut writes: FuturesUnordered<Write> = FuturesUnordered::new();
    // The `Flags` first, alone.
    outbox.begin_scan();
    let mut first = lanes[PushStream::High.index()]
        .take()
        .expect("idle at start");
    while let Some(item) = outbox.pop(PushStream::High) {
        plan(&mut planner, &mut first, item)?;
    }
    let (first, result) = write(conn.clone(), first).await;
    result?;
    finish(&planner, &mut lanes, first);
    loop {
        outbox.begin_scan();
        for kind in PushStream::ALL {
            let Some(mut lane) = lanes[kind.index()].take() else {
                continue; // a write in flight; the task looks again when it completes
            };
            if kind == PushStream::Normal {
                // Catch-up (after hello, a join, an overflow, a return to the foreground):
                // one bounded batch per turn so live pushes keep flowing in between.
                if let Err(e) = planner.catch_up(&mut lane.out) {
                    warn!(error = %e, "catch-up failed");
                    return Err(PushEnd::Store(e));
                }
            }
            if kind == PushStream::Notices
                && planner
                    .next_nudge_at()
                    .is_some_and(|at| at <= crate::clock::now_ms())
            {
                planner.poll_nudges(&mut lane.out);
            }
            // About `WRITE_BUDGET` bytes, and on until there is something to write or the
            // queue is empty (what is taken may plan to nothing, e.g. copies already sent from
            // the log): a push to an empty queue wakes the task, one to a non-empty queue
            // relies on this. One item at a time, so no batch buffer outlives the turn.
            let mut budget = WRITE_BUDGET;
            while budget > 0 || lane.out.is_empty() {
                let Some(item) = outbox.pop(kind) else { break };
                budget = budget.saturating_sub(item.len().max(1));
                plan(&mut planner, &mut lane, item)?;
            }
            if lane.out.is_empty() {
                lane.tickets.clear();
                lanes[kind.index()] = Some(lane);
            } else {
                outbox.set_busy(kind, true);
                writes.push(Box::pin(write(conn.clone(), lane)));
            }
        }
        // What is more to do after catch-up's batch is written: look again at once.
        let more_catch_up =
            lanes[PushStream::Normal.index()].is_some() && session.catch_up.load(Ordering::Acquire);
        if more_catch_up {
            continue;
        }
        // The trailing edge of held nudges, when the notices stream is free to send them.
        let nudge_due = lanes[PushStream::Notices.index()]
            .as_ref()
            .and_then(|_| planner.next_nudge_at());
        let nudge_timer = async {
            match nudge_due {
                Some(at) => {
                    let wait = at.saturating_sub(crate::clock::now_ms());
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((lane, result)) = writes.next(), if !writes.is_empty() => {
                result?;
                outbox.set_busy(lane.kind, false);
                finish(&planner, &mut lanes, lane);
            }
            () = outbox.notified() => {}
            () = nudge_timer => {}
        }
    }
}

/// Plans `item` (taken from `lane`'s queue) into the lane's next write.
fn plan(planner: &mut PushPlanner, lane: &mut Lane, mut item: Push) -> Result<(), PushEnd> {
    if let Push::Deliver {
        published_at, gate, ..
    } = &mut item
    {
        lane.published.push(*published_at);
        lane.tickets.extend(gate.take());
    }
    planner.plan(item, &mut lane.out).map_err(|e| {
        warn!(error = %e, "delivery planning failed");
        PushEnd::Store(e)
    })
}

/// Writes `lane`'s frames on its stream (opened on first use), then releases its gate tickets.
async fn write(conn: Conn, mut lane: Lane) -> (Lane, Result<(), PushEnd>) {
    if lane.out.is_empty() {
        lane.tickets.clear();
        return (lane, Ok(()));
    }
    if lane.stream.is_none() {
        match conn.open_uni().await {
            Ok(mut s) => {
                let _ = s.quic().set_priority(lane.kind.priority());
                lane.stream = Some(s);
            }
            Err(_) => return (lane, Err(PushEnd::Closed)),
        }
    }
    let stream = lane.stream.as_mut().expect("opened above").quic();
    if stream.write_all_chunks(&mut lane.out).await.is_err() {
        debug!(stream = lane.kind.name(), "push stream closed");
        return (lane, Err(PushEnd::Closed));
    }
    lane.out.clear();
    if lane.tickets.iter().any(GateTicket::awaited) {
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
    lane.tickets.clear();
    (lane, Ok(()))
}

/// Records a finished write's latencies and puts its lane back, idle.
fn finish(planner: &PushPlanner, lanes: &mut [Option<Lane>; 4], mut lane: Lane) {
    if !lane.published.is_empty() {
        // One clock read per write, not per message.
        let now = Instant::now();
        let m = planner.groups.metrics();
        let class = match planner.session.presence() {
            switchboard_core::PresenceState::Foreground => &m.latency_active,
            switchboard_core::PresenceState::Background => &m.latency_background,
        };
        for at in lane.published.drain(..) {
            class.observe(now.saturating_duration_since(at));
        }
    }
    let i = lane.kind.index();
    lanes[i] = Some(lane);
}
