//! What the hub queues for a connection: a [`Push`] per frame, on one of the connection's
//! [`PushStream`]s, in the session's bounded [`Outbox`]. The writers that drain it are in
//! `push.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchboard_core::{GroupId, Lane};
use tokio::sync::mpsc;

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
    pub(crate) queues: [mpsc::Receiver<Push>; 4],
    pub(crate) bytes: Arc<AtomicUsize>,
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
pub(crate) fn drain(rx: &mut mpsc::Receiver<Push>, out: &mut Vec<Push>, mut budget: usize) {
    while budget > 0 {
        let Ok(p) = rx.try_recv() else { break };
        budget = budget.saturating_sub(p.len().max(1));
        out.push(p);
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
