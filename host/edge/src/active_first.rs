//! Phase 2 of publishing: background sessions get a flushed batch only after its foreground
//! copies are on their way (see ARCHITECTURE.md, "Active first").
//!
//! The committer publishes each batch to the foreground sessions itself (phase 1) and hands
//! the rest to the phase-2 task (`commit.rs`), one [`Phase2`] per batch, in commit order. Every foreground push of
//! the batch carries a [`GateTicket`]; the session's writer releases it after the write and,
//! when a background phase waits on the gate, one yield, so the connection driver the write
//! woke (next to run on that worker) has sent the packet — or when the push is dropped (full
//! queue, session gone). When the last ticket
//! is released the batch's [`ForegroundGate`] opens and phase 2 queues the background pushes.
//!
//! A yield orders tasks, not the wire: with a plain `yield_now` between the phases, background
//! writers woken by a large fan-out still got between foreground writes and their packets
//! (61–93 of 9,000 background members served before the last of 1,000 foreground ones in the
//! large-group benchmark). Waiting on the writers themselves closes that gap. The order
//! argument (a task woken later runs later, one woken from a running task runs right after
//! it) holds per worker thread; with several workers it is best effort, as is the wire.
//!
//! Bounds: a gate waits at most `Limits::foreground_gate_ms` (50 ms by default) from the
//! batch's publish, so a
//! foreground session that stopped reading delays background delivery by that much at most;
//! deadlines run from publish time, so a queue of held batches never adds up their waits.
//! At most [`PHASE2_QUEUE`] batches wait; beyond that the committer waits (back-pressure on
//! commits rather than unbounded memory).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Batches waiting for phase 2.
pub const PHASE2_QUEUE: usize = 1024;

/// Opens when every foreground copy of one batch has been handed to QUIC.
#[derive(Debug)]
pub(crate) struct ForegroundGate {
    /// Tickets not yet released, plus one held by the publisher until phase 1 is queued
    /// (so the gate cannot open while tickets are still being handed out).
    pending: AtomicUsize,
    open: Notify,
    /// Whether a background phase waits on this gate (set before the publisher's ticket is
    /// released); writers only pay their yield for gates that are waited on.
    awaited: AtomicBool,
}

/// One foreground copy in flight; released (dropped) after its write.
#[derive(Debug)]
pub(crate) struct GateTicket(Arc<ForegroundGate>);

impl ForegroundGate {
    /// A closed gate and the publisher's own ticket.
    pub(crate) fn new() -> (Arc<Self>, GateTicket) {
        let gate = Arc::new(Self {
            pending: AtomicUsize::new(1),
            open: Notify::new(),
            awaited: AtomicBool::new(false),
        });
        (gate.clone(), GateTicket(gate))
    }

    pub(crate) fn ticket(self: &Arc<Self>) -> GateTicket {
        self.pending.fetch_add(1, Ordering::AcqRel);
        GateTicket(self.clone())
    }

    /// Marks that a background phase will wait on this gate.
    pub(crate) fn await_later(&self) {
        self.awaited.store(true, Ordering::Release);
    }

    fn is_open(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Waits until the gate opens or `deadline`; returns whether it opened.
    pub(crate) async fn wait(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.is_open() {
                return true;
            }
            // `notify_one` keeps a permit when nobody waits yet, so no release is missed.
            if tokio::time::timeout_at(deadline, self.open.notified())
                .await
                .is_err()
            {
                return self.is_open();
            }
        }
    }
}

impl GateTicket {
    /// Whether a background phase waits for this copy (its writer then yields before the
    /// release).
    pub(crate) fn awaited(&self) -> bool {
        self.0.awaited.load(Ordering::Acquire)
    }
}

impl Drop for GateTicket {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.open.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_gate_opens_when_the_publisher_and_every_ticket_are_done() {
        let (gate, publisher) = ForegroundGate::new();
        let a = gate.ticket();
        let b = gate.ticket();
        drop(a);
        drop(b);
        assert!(!gate.is_open(), "the publisher still holds its ticket");
        drop(publisher);
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        assert!(gate.wait(far).await);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_the_last_release() {
        let (gate, publisher) = ForegroundGate::new();
        let t = gate.ticket();
        drop(publisher);
        let g = gate.clone();
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        let waiter = tokio::spawn(async move { g.wait(far).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(t);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_ticket_delays_the_background_only_until_the_deadline() {
        let (gate, publisher) = ForegroundGate::new();
        let _stuck = gate.ticket();
        drop(publisher);
        let t0 = tokio::time::Instant::now();
        let bound = Duration::from_millis(50);
        assert!(!gate.wait(t0 + bound).await);
        assert_eq!(t0.elapsed(), bound);
    }
}
