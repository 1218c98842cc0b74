//! What the hub queues for a connection: a [`Push`] per frame, on one of the connection's
//! [`PushStream`]s, in the session's bounded [`Outbox`]. The session's push task that drains
//! it is in `push.rs`.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_core::{GroupId, Lane};
use tokio::sync::Notify;

use crate::active_first::GateTicket;

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
    pub(crate) fn priority(self) -> i32 {
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
    /// is in the background): tell it with a `Nudge`, at most once per `NUDGE_INTERVAL_MS`.
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
    pub(crate) fn len(&self) -> usize {
        match self {
            Push::Deliver { frame, .. } | Push::Notice { frame, .. } => frame.len(),
            Push::Nudge { .. } => 32,
        }
    }
}

/// A session's queues of pushes, one per [`PushStream`], each bounded by `outbox_frames`,
/// and all together by `outbox_bytes` of frames (frames are shared between recipients, but
/// a slow session must not pin an unbounded amount of them). Filling one never blocks the
/// fan-out: see `Session::push`.
///
/// One structure and one wake per session, drained by the session's one push task
/// (`push::run`): a queue allocates on its first push and frees its memory when it empties
/// (most sessions never use some of their streams, and an idle one holds no queue memory;
/// four bounded channels allocated a block of slots each up front), and a batch of
/// pushes to an idle session costs one wake however many streams it touches. A push wakes
/// the task only when it makes its queue non-empty, no wake is pending and its stream has
/// no write in flight: the task looks at every queue again when a write completes.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<Queues>,
    wake: Notify,
    per_stream: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Queues {
    lanes: [VecDeque<Push>; 4],
    /// Bytes of frames queued, over all streams.
    bytes: usize,
    /// A wake was given that the push task has not yet answered with a look at the queues.
    woken: bool,
    /// Streams with a write in flight.
    busy: [bool; 4],
    /// Wakes given since the outbox was made (the "one wake per batch" property's witness).
    wakes: u64,
}

impl Queues {
    fn wake(&mut self, notify: &Notify) {
        if !self.woken {
            self.woken = true;
            self.wakes += 1;
            notify.notify_one();
        }
    }
}

/// A push the outbox refused: its stream's queue or the byte bound is full. Handed back so
/// the caller decides (a delivery is recovered from the log, a notice is dropped).
#[derive(Debug)]
pub(crate) struct Full(pub(crate) Push);

impl Outbox {
    /// An empty outbox with room for `per_stream` pushes in each queue and `max_bytes` of
    /// frames. Allocates no queue.
    pub(crate) fn new(per_stream: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(Queues::default()),
            wake: Notify::new(),
            per_stream,
            max_bytes,
        }
    }

    /// Queues `p`, or hands it back when its queue or the byte bound is full.
    pub(crate) fn try_push(&self, p: Push) -> Result<(), Full> {
        let (len, i) = (p.len(), p.stream().index());
        let mut q = self.state.lock();
        if q.lanes[i].len() >= self.per_stream || q.bytes + len > self.max_bytes {
            return Err(Full(p));
        }
        q.bytes += len;
        q.lanes[i].push_back(p);
        // A queue that was not empty already has its wake coming: pending, or the task's look
        // under way (it takes each idle queue until empty), or its stream's write completing.
        if q.lanes[i].len() == 1 && !q.busy[i] {
            q.wake(&self.wake);
        }
        Ok(())
    }

    /// Wakes the push task for something other than a push (a catch-up request, a
    /// subscription change), unless a wake is already pending.
    pub(crate) fn wake(&self) {
        self.state.lock().wake(&self.wake);
    }

    /// Resolves once a wake was given (at once if one was given while nobody waited).
    pub(crate) async fn notified(&self) {
        self.wake.notified().await
    }

    /// The push task starts a look at every queue: wakes from here on are new.
    pub(crate) fn begin_scan(&self) {
        self.state.lock().woken = false;
    }

    /// Marks whether `stream` has a write in flight (pushes to a busy stream do not wake).
    pub(crate) fn set_busy(&self, stream: PushStream, busy: bool) {
        self.state.lock().busy[stream.index()] = busy;
    }

    /// Takes the oldest push queued on `stream`. A queue that empties gives its memory back:
    /// an idle session holds none, and a burst does not pin its peak for the rest of the
    /// connection (the cost is one small allocation per batch of a busy session).
    pub(crate) fn pop(&self, stream: PushStream) -> Option<Push> {
        let mut guard = self.state.lock();
        let q = &mut *guard;
        let lane = &mut q.lanes[stream.index()];
        let p = lane.pop_front()?;
        q.bytes -= p.len();
        if lane.is_empty() {
            *lane = VecDeque::new();
        }
        Some(p)
    }

    /// Takes pushes queued on `stream` until about `budget` bytes are taken (at least one).
    #[cfg(any(test, feature = "local"))]
    pub(crate) fn take(&self, stream: PushStream, out: &mut Vec<Push>, mut budget: usize) {
        while budget > 0 {
            let Some(p) = self.pop(stream) else { break };
            budget = budget.saturating_sub(p.len().max(1));
            out.push(p);
        }
    }

    /// Bytes of frames queued now.
    pub(crate) fn bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Pushes queued on `stream` now.
    pub(crate) fn depth(&self, stream: PushStream) -> usize {
        self.state.lock().lanes[stream.index()].len()
    }

    /// Wakes given so far.
    #[cfg(test)]
    pub(crate) fn wakes(&self) -> u64 {
        self.state.lock().wakes
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

    fn take_all(o: &Outbox, stream: PushStream) -> Vec<Push> {
        let mut out = Vec::new();
        o.take(stream, &mut out, usize::MAX);
        out
    }

    #[test]
    fn each_push_is_queued_on_the_stream_of_its_kind() {
        let o = Outbox::new(2, 1 << 20);
        o.try_push(d("a", 1, Lane::Low)).unwrap();
        o.try_push(d("b", 1, Lane::Normal)).unwrap();
        o.try_push(d("c", 1, Lane::High)).unwrap();
        o.try_push(Push::Nudge {
            group: GroupId::new("d").unwrap(),
            seq: 9,
        })
        .unwrap();
        o.try_push(Push::Notice {
            stream: PushStream::High,
            frame: Bytes::new(),
        })
        .unwrap();
        assert_eq!(o.depth(PushStream::High), 2);
        assert!(
            matches!(
                o.try_push(d("c", 2, Lane::High)),
                Err(Full(Push::Deliver { seq: 2, .. }))
            ),
            "each queue is bounded on its own, and a refused push is handed back"
        );
        for s in [PushStream::Normal, PushStream::Low, PushStream::Notices] {
            assert_eq!(o.depth(s), 1, "{s:?}");
        }
        assert_eq!(take_all(&o, PushStream::High).len(), 2);
        assert!(matches!(
            take_all(&o, PushStream::Normal)[..],
            [Push::Deliver { seq: 1, .. }]
        ));
        assert!(matches!(
            take_all(&o, PushStream::Low)[..],
            [Push::Deliver { seq: 1, .. }]
        ));
        assert!(matches!(
            take_all(&o, PushStream::Notices)[..],
            [Push::Nudge { seq: 9, .. }]
        ));
        o.try_push(d("c", 2, Lane::High)).unwrap();
    }

    #[test]
    fn take_stops_at_the_budget_but_takes_at_least_one() {
        let o = Outbox::new(8, 1 << 20);
        for seq in 1..=4 {
            o.try_push(d("a", seq, Lane::Normal)).unwrap();
        }
        let mut out = Vec::new();
        o.take(PushStream::Normal, &mut out, 15); // room for two 10-byte frames
        assert_eq!(out.len(), 2);
        out.clear();
        o.take(PushStream::Normal, &mut out, 1);
        assert!(
            matches!(out[..], [Push::Deliver { seq: 3, .. }]),
            "in order"
        );
        assert_eq!(o.depth(PushStream::Normal), 1);
    }

    #[test]
    fn queued_bytes_are_bounded_across_streams() {
        let o = Outbox::new(100, 25);
        o.try_push(d("a", 1, Lane::Normal)).unwrap();
        o.try_push(d("a", 2, Lane::Low)).unwrap();
        assert!(
            matches!(o.try_push(d("a", 3, Lane::High)), Err(Full(_))),
            "30 bytes would exceed 25"
        );
        assert_eq!(o.bytes(), 20, "a refused push leaves no trace");
        assert_eq!(o.depth(PushStream::High), 0);
        let mut out = Vec::new();
        o.take(PushStream::Low, &mut out, 1);
        assert_eq!(o.bytes(), 10, "a taken push frees its bytes");
        o.try_push(d("a", 3, Lane::High)).unwrap();
    }

    #[tokio::test]
    async fn a_batch_of_pushes_to_an_idle_session_is_one_wake() {
        let o = Outbox::new(100, 1 << 20);
        for seq in 1..=10 {
            for lane in [Lane::High, Lane::Normal, Lane::Low] {
                o.try_push(d("a", seq, lane)).unwrap();
            }
        }
        o.wake(); // a catch-up request in the same batch
        assert_eq!(
            o.wakes(),
            1,
            "31 pushes and a request before the task looked"
        );
        o.notified().await; // the wake was kept for the task that was not waiting yet

        // The task looks, takes the high queue and starts writing it.
        o.begin_scan();
        take_all(&o, PushStream::High);
        o.set_busy(PushStream::High, true);
        o.try_push(d("a", 11, Lane::High)).unwrap();
        assert_eq!(o.wakes(), 1, "a push to a busy stream waits for its write");
        o.try_push(d("a", 11, Lane::Normal)).unwrap();
        assert_eq!(
            o.wakes(),
            1,
            "a non-empty queue of an idle stream: the look takes it"
        );

        o.begin_scan();
        take_all(&o, PushStream::Normal);
        o.try_push(d("a", 12, Lane::Low)).unwrap();
        o.try_push(d("a", 12, Lane::Normal)).unwrap();
        assert_eq!(o.wakes(), 2, "after a look, the next batch wakes once");
        o.notified().await;
    }

    #[test]
    fn queues_allocate_on_first_use_and_give_their_memory_back_when_empty() {
        let o = Outbox::new(1000, 1 << 20);
        let caps = |o: &Outbox| o.state.lock().lanes.each_ref().map(VecDeque::capacity);
        assert_eq!(caps(&o), [0; 4], "a new session holds no queue memory");
        o.try_push(d("a", 1, Lane::High)).unwrap();
        for seq in 1..=200 {
            o.try_push(d("a", seq, Lane::Low)).unwrap();
        }
        assert_eq!(
            [1, 3].map(|i| caps(&o)[i]),
            [0; 2],
            "untouched queues stay empty"
        );
        let mut out = Vec::new();
        o.take(PushStream::Low, &mut out, 100);
        assert!(caps(&o)[2] >= 190, "still holding the rest");
        take_all(&o, PushStream::Low);
        assert!(o.pop(PushStream::High).is_some());
        assert_eq!(caps(&o), [0; 4], "an emptied queue gives its memory back");
        assert_eq!(o.bytes(), 0);
    }

    #[test]
    fn priorities_follow_urgency() {
        let p: Vec<i32> = PushStream::ALL.iter().map(|s| s.priority()).collect();
        assert!(p.windows(2).all(|w| w[0] > w[1]), "{p:?}");
    }
}
