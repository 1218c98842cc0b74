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
//! Bounds (`switchboard_router::gate` decides them): a gate waits while the batch's foreground
//! copies are being written, `Limits::foreground_gate_ms` (50 ms by default) past the last
//! one written, and never more than `Limits::foreground_gate_max_ms` (2 s) from the batch's
//! publish. So a busy machine's slow foreground phase still goes first, and a foreground
//! session that stopped reading delays background delivery by 50 ms after everyone else's
//! copy. Deadlines run from publish time, so a queue of held batches never adds up their
//! waits. At most [`PHASE2_QUEUE`] batches wait; beyond that the committer waits
//! (back-pressure on commits rather than unbounded memory).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchboard_router::gate::GateBounds;
use tokio::sync::Notify;
use tokio::time::Instant;

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
    /// When the batch was published (phase 1 began): the gate's deadlines count from here.
    published: Instant,
    /// When a foreground copy was last released, in µs since `published` plus one (0: none
    /// yet): the deadline follows this progress.
    last_release_us: AtomicU64,
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
            published: Instant::now(),
            last_release_us: AtomicU64::new(0),
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

    /// When a foreground copy was last released, as time since publish.
    fn last_release(&self) -> Option<Duration> {
        match self.last_release_us.load(Ordering::Acquire) {
            0 => None,
            us => Some(Duration::from_micros(us - 1)),
        }
    }

    /// Waits until the gate opens or expires (`bounds`, decided by `router::gate`: a stall
    /// in the foreground's progress, or the cap from publish); returns whether it opened.
    pub(crate) async fn wait(&self, bounds: GateBounds) -> bool {
        loop {
            if self.is_open() {
                return true;
            }
            let until = self.published + bounds.expires_after(self.last_release());
            // `notify_one` keeps a permit when nobody waits yet, so no last release is missed.
            if tokio::time::timeout_at(until, self.open.notified())
                .await
                .is_ok()
            {
                continue;
            }
            // On a starved machine the timer and the writers become runnable together when
            // the process runs again: let the writers already queued go first, and keep
            // waiting if one of them released a copy meanwhile.
            tokio::task::yield_now().await;
            if self.is_open() {
                return true;
            }
            if bounds.expired(self.published.elapsed(), self.last_release()) {
                return false;
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
        let gate = &self.0;
        // Progress moves the deadline (one clock read per foreground copy).
        let us = gate.published.elapsed().as_micros() as u64 + 1;
        gate.last_release_us.fetch_max(us, Ordering::AcqRel);
        if gate.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            gate.open.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const BOUNDS: GateBounds = GateBounds {
        stall: Duration::from_millis(50),
        max: Duration::from_millis(2_000),
    };

    #[tokio::test]
    async fn the_gate_opens_when_the_publisher_and_every_ticket_are_done() {
        let (gate, publisher) = ForegroundGate::new();
        let a = gate.ticket();
        let b = gate.ticket();
        drop(a);
        drop(b);
        assert!(!gate.is_open(), "the publisher still holds its ticket");
        drop(publisher);
        assert!(gate.wait(BOUNDS).await);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_the_last_release() {
        let (gate, publisher) = ForegroundGate::new();
        let t = gate.ticket();
        drop(publisher);
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.wait(BOUNDS).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(t);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_ticket_delays_the_background_only_for_one_stall() {
        let (gate, publisher) = ForegroundGate::new();
        let _stuck = gate.ticket();
        drop(publisher);
        let t0 = Instant::now();
        assert!(!gate.wait(BOUNDS).await);
        assert_eq!(t0.elapsed(), ms(50));
    }

    /// A batch of `copies` foreground copies released one every `every` (and one more never
    /// released, if `stuck`): whether its gate opened, and when the waiter returned.
    async fn release_slowly(
        copies: usize,
        every: Duration,
        stuck: bool,
        bounds: GateBounds,
    ) -> (bool, Duration) {
        let (gate, publisher) = ForegroundGate::new();
        let _stuck = stuck.then(|| gate.ticket());
        let tickets: Vec<GateTicket> = (0..copies).map(|_| gate.ticket()).collect();
        drop(publisher);
        let t0 = Instant::now();
        let g = gate.clone();
        let waiter = tokio::spawn(async move { (g.wait(bounds).await, t0.elapsed()) });
        for t in tickets {
            tokio::time::sleep(every).await;
            drop(t);
        }
        waiter.await.unwrap()
    }

    /// A busy machine: the foreground copies are written slowly, one every 30 ms for 1.5 s.
    /// The gate stays shut while they are written and opens with the last one; a fixed
    /// deadline from publish would have let the background go after 50 ms.
    #[tokio::test(start_paused = true)]
    async fn a_slow_foreground_phase_holds_the_background_until_it_is_done() {
        let got = release_slowly(50, ms(30), false, BOUNDS).await;
        assert_eq!(got, (true, ms(1_500)), "opened by the last copy");
    }

    /// The same with one copy that is never written: the gate expires one stall after the
    /// last copy that was.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_copy_in_a_slow_phase_delays_the_background_one_stall_past_the_others() {
        let got = release_slowly(20, ms(40), true, BOUNDS).await;
        assert_eq!(got, (false, ms(800 + 50)));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_never_holds_the_background_past_the_cap() {
        let got = release_slowly(100, ms(10), true, GateBounds::from_millis(50, 300)).await;
        assert_eq!(got, (false, ms(300)));
    }
}
