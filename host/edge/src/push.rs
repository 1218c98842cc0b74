//! The push path of one session: what the hub queues for a connection ([`Push`], [`Outbox`]),
//! what goes on the wire next ([`PushPlanner`]), and the writers that put it on the
//! connection's push streams.
//!
//! Each [`PushStream`] is its own QUIC unidirectional stream with its own transport priority,
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
use switchboard_core::{GroupId, Lane};
use switchboard_router::{self as router, LogError};
use switchboard_wire as wire;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::active_first::GateTicket;
use crate::hub::{GroupState, Hub, Session, SubChange};

/// Bytes of pushes a writer takes from its queue per write (more if a single frame is
/// larger): enough to pack many small messages into few packets, small enough that planning
/// (which holds the session's planner lock) stays short.
const WRITE_BUDGET: usize = 64 * 1024;
pub use router::NUDGE_INTERVAL_MS;

/// A connection's push streams, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushStream {
    /// `Flags` and high-lane deliveries.
    High,
    /// Normal-lane deliveries, and catch-up from the log.
    Normal,
    /// Low-lane (bulk) deliveries.
    Low,
    /// Best-effort notices: receipts, receipt summaries, presence, nudges.
    Notices,
}

impl PushStream {
    /// Every stream, most urgent first.
    pub const ALL: [PushStream; 4] = [Self::High, Self::Normal, Self::Low, Self::Notices];

    /// The stream that carries deliveries of `lane`.
    pub fn of_lane(lane: Lane) -> Self {
        match lane {
            Lane::High => Self::High,
            Lane::Normal => Self::Normal,
            Lane::Low => Self::Low,
        }
    }

    /// Position in [`PushStream::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The QUIC send priority (higher is sent first).
    fn priority(self) -> i32 {
        3 - self as i32
    }

    /// For metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
            Self::Notices => "notices",
        }
    }
}

/// What a session's push writers are handed.
#[derive(Debug)]
pub(crate) enum Push {
    /// A new message of `group`, already encoded (shared by every recipient).
    Deliver {
        group: GroupId,
        seq: u64,
        lane: Lane,
        frame: Bytes,
        /// When the message was published (durable): delivery latency is measured from here.
        published_at: Instant,
        /// A foreground copy's ticket: released once written, so the background phase of
        /// its batch can start (`active_first`).
        gate: Option<GateTicket>,
    },
    /// A best-effort notice (receipt, presence, flags): dropped if its queue is full.
    Notice { stream: PushStream, frame: Bytes },
    /// `group` has messages up to `seq` that this session is not sent now (deferred while it
    /// is in the background): tell it with a `Nudge`, at most once per [`NUDGE_INTERVAL_MS`].
    Nudge { group: GroupId, seq: u64 },
}

impl Push {
    pub(crate) fn stream(&self) -> PushStream {
        match self {
            Push::Deliver { lane, .. } => PushStream::of_lane(*lane),
            Push::Notice { stream, .. } => *stream,
            Push::Nudge { .. } => PushStream::Notices,
        }
    }

    /// Encoded size, for write budgets.
    fn len(&self) -> usize {
        match self {
            Push::Deliver { frame, .. } | Push::Notice { frame, .. } => frame.len(),
            Push::Nudge { .. } => 32,
        }
    }
}

/// A session's queues of pushes, one per [`PushStream`], each bounded by `outbox_frames`,
/// and all together by `outbox_bytes` of frames (frames are shared between recipients, but
/// a slow session must not pin an unbounded amount of them). Filling one never blocks the
/// fan-out: see [`Session`]'s `push`.
#[derive(Debug)]
pub(crate) struct Outbox {
    queues: [mpsc::Sender<Push>; 4],
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl Outbox {
    /// Queues `p`, or hands it back as `Full` when its queue or the byte bound is full.
    pub(crate) fn try_push(&self, p: Push) -> Result<(), mpsc::error::TrySendError<Push>> {
        let len = p.len();
        if self.bytes.fetch_add(len, Ordering::AcqRel) + len > self.max_bytes {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(mpsc::error::TrySendError::Full(p));
        }
        self.queues[p.stream().index()]
            .try_send(p)
            .inspect_err(|_| {
                self.bytes.fetch_sub(len, Ordering::AcqRel);
            })
    }

    /// Bytes of frames queued now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Pushes queued on `stream` now.
    pub(crate) fn depth(&self, stream: PushStream) -> usize {
        let q = &self.queues[stream.index()];
        q.max_capacity() - q.capacity()
    }
}

/// The writers' end of an [`Outbox`].
#[derive(Debug)]
pub(crate) struct OutboxRx {
    queues: [mpsc::Receiver<Push>; 4],
    bytes: Arc<AtomicUsize>,
}

impl OutboxRx {
    /// Takes what is queued on `stream` now (for `crate::local`; the writers use their own
    /// receivers).
    #[cfg(feature = "local")]
    pub(crate) fn take(&mut self, stream: PushStream, out: &mut Vec<Push>) {
        let q = &mut self.queues[stream.index()];
        while let Ok(p) = q.try_recv() {
            self.bytes.fetch_sub(p.len(), Ordering::AcqRel);
            out.push(p);
        }
    }
}

/// A new outbox with room for `per_stream` pushes in each queue and `max_bytes` of frames.
pub(crate) fn outbox(per_stream: usize, max_bytes: usize) -> (Outbox, OutboxRx) {
    let bytes = Arc::new(AtomicUsize::new(0));
    let (h_tx, h_rx) = mpsc::channel(per_stream);
    let (n_tx, n_rx) = mpsc::channel(per_stream);
    let (l_tx, l_rx) = mpsc::channel(per_stream);
    let (x_tx, x_rx) = mpsc::channel(per_stream);
    (
        Outbox {
            queues: [h_tx, n_tx, l_tx, x_tx],
            bytes: bytes.clone(),
            max_bytes,
        },
        OutboxRx {
            queues: [h_rx, n_rx, l_rx, x_rx],
            bytes,
        },
    )
}

/// Takes queued pushes until about `budget` bytes are taken.
fn drain(rx: &mut mpsc::Receiver<Push>, out: &mut Vec<Push>, mut budget: usize) {
    while budget > 0 {
        let Ok(p) = rx.try_recv() else { break };
        budget = budget.saturating_sub(p.len().max(1));
        out.push(p);
    }
}

/// A session's [`router::SessionPlanner`] with the session's state it reads (subscription
/// changes, the catch-up flag) and the log it reads through the hub. Shared by the session's
/// writers (each takes the lock only to plan, never across a write); the transport only
/// writes the frames it returns, on the stream of the writer that asked.
pub(crate) struct PushPlanner {
    hub: Arc<Hub>,
    session: Arc<Session>,
    planner: router::SessionPlanner<Arc<GroupState>>,
}

/// The log and group state as one session's planner sees them.
struct SessionLog<'a> {
    hub: &'a Hub,
    session: &'a Session,
}

impl router::GroupLog<Arc<GroupState>> for SessionLog<'_> {
    fn head(&self, g: &Arc<GroupState>) -> u64 {
        g.head()
    }

    fn defers(&self, g: &Arc<GroupState>) -> bool {
        self.hub.defers(self.session, g)
    }

    fn read(
        &self,
        g: &Arc<GroupState>,
        after: u64,
        upto: u64,
    ) -> Result<Vec<wire::Message>, LogError> {
        let msgs = self
            .hub
            .read_for_catch_up(g, after, upto)
            .map_err(|e| LogError::Read(e.to_string()))?;
        Ok(msgs
            .into_iter()
            .map(|m| crate::hub::to_message(&g.id, m))
            .collect())
    }
}

impl PushPlanner {
    pub(crate) fn new(hub: Arc<Hub>, session: Arc<Session>) -> Self {
        Self {
            hub,
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
        let m = self.hub.metrics();
        if stats.from_log > 0 {
            m.deliveries_catch_up
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
            hub: &self.hub,
            session: &self.session,
        };
        let planned = self
            .planner
            .plan(item, crate::hub::now_ms(), &log, out, &mut stats);
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
            .poll_nudges(crate::hub::now_ms(), out, &mut stats);
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
            hub: &self.hub,
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
pub(crate) async fn run(
    conn: quinn::Connection,
    planner: PushPlanner,
    rx: OutboxRx,
) -> Result<(), PushEnd> {
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
    conn: &'a quinn::Connection,
    kind: PushStream,
    planner: &'a Mutex<PushPlanner>,
    hub: Arc<Hub>,
    session: Arc<Session>,
    queued_bytes: Arc<AtomicUsize>,
    /// When each live delivery in the current write was published (latency metrics).
    published: Vec<Instant>,
    /// Gate tickets of the foreground copies in the current write, released after it.
    tickets: Vec<GateTicket>,
    /// Opened on first write.
    stream: Option<quinn::SendStream>,
    out: Vec<Bytes>,
}

impl<'a> Writer<'a> {
    fn new(
        conn: &'a quinn::Connection,
        kind: PushStream,
        planner: &'a Mutex<PushPlanner>,
        queued_bytes: &Arc<AtomicUsize>,
    ) -> Self {
        let (hub, session) = {
            let p = planner.lock();
            (p.hub.clone(), p.session.clone())
        };
        Self {
            conn,
            kind,
            planner,
            hub,
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
                            let wait = at.saturating_sub(crate::hub::now_ms());
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
            let s = self.conn.open_uni().await.map_err(|_| PushEnd::Closed)?;
            let _ = s.set_priority(self.kind.priority());
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("opened above");
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
            let m = self.hub.metrics();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn d(group: &str, seq: u64, lane: Lane) -> Push {
        Push::Deliver {
            group: GroupId::new(group).unwrap(),
            seq,
            lane,
            frame: Bytes::from(vec![0u8; 10]),
            published_at: Instant::now(),
            gate: None,
        }
    }

    #[tokio::test]
    async fn each_push_is_queued_on_the_stream_of_its_kind() {
        let (tx, rx) = outbox(2, 1 << 20);
        tx.try_push(d("a", 1, Lane::Low)).unwrap();
        tx.try_push(d("b", 1, Lane::Normal)).unwrap();
        tx.try_push(d("c", 1, Lane::High)).unwrap();
        tx.try_push(Push::Nudge {
            group: GroupId::new("d").unwrap(),
            seq: 9,
        })
        .unwrap();
        tx.try_push(Push::Notice {
            stream: PushStream::High,
            frame: Bytes::new(),
        })
        .unwrap();
        assert_eq!(tx.depth(PushStream::High), 2);
        assert!(
            tx.try_push(d("c", 2, Lane::High)).is_err(),
            "each queue is bounded on its own"
        );
        for s in [PushStream::Normal, PushStream::Low, PushStream::Notices] {
            assert_eq!(tx.depth(s), 1, "{s:?}");
        }
        let [mut h, mut n, mut l, mut x] = rx.queues;
        let mut out = Vec::new();
        drain(&mut h, &mut out, 1000);
        assert_eq!(out.len(), 2);
        assert!(matches!(n.try_recv(), Ok(Push::Deliver { seq: 1, .. })));
        assert!(matches!(l.try_recv(), Ok(Push::Deliver { seq: 1, .. })));
        assert!(matches!(x.try_recv(), Ok(Push::Nudge { seq: 9, .. })));
    }

    #[test]
    fn drain_stops_at_the_budget_but_takes_at_least_one() {
        let (tx, rx) = outbox(8, 1 << 20);
        for seq in 1..=4 {
            tx.try_push(d("a", seq, Lane::Normal)).unwrap();
        }
        let [_, mut n, _, _] = rx.queues;
        let mut out = Vec::new();
        drain(&mut n, &mut out, 15); // room for two 10-byte frames
        assert_eq!(out.len(), 2);
        out.clear();
        drain(&mut n, &mut out, 1);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn queued_bytes_are_bounded_across_streams() {
        let (tx, rx) = outbox(100, 25);
        tx.try_push(d("a", 1, Lane::Normal)).unwrap();
        tx.try_push(d("a", 2, Lane::Low)).unwrap();
        assert!(
            matches!(
                tx.try_push(d("a", 3, Lane::High)),
                Err(mpsc::error::TrySendError::Full(_))
            ),
            "30 bytes would exceed 25"
        );
        assert_eq!(tx.bytes(), 20, "a refused push leaves no trace");
        rx.bytes.fetch_sub(10, Ordering::AcqRel); // what a writer does when it takes one
        tx.try_push(d("a", 3, Lane::High)).unwrap();
    }

    #[test]
    fn priorities_follow_urgency() {
        let p: Vec<i32> = PushStream::ALL.iter().map(|s| s.priority()).collect();
        assert!(p.windows(2).all(|w| w[0] > w[1]), "{p:?}");
    }
}
