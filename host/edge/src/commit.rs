//! The committer: group commit of queued sends, then publishing in the two active-first
//! phases and acking, in queue order (see ARCHITECTURE.md, "Delivery invariants").
//!
//! The hub queues a [`Commit`] per accepted send while holding the group's append lock, so a
//! group's commits queue in `seq` order. The committer flushes the store once for everything
//! queued (on the blocking pool, never on an async worker), then for each commit publishes
//! to the foreground subscribers (phase 1) and acks the sender; the batch's background
//! subscribers get it from the phase-2 task once the foreground copies are written
//! (`active_first.rs`). Nothing is acked or delivered before the flush that made it durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchboard_core::{ErrorCode, Lane, UserId};
use switchboard_router::commit::{self, Outcome};
use switchboard_router::gate::GateBounds;
use switchboard_store::{Store, StoreError};
use switchboard_wire::{self as wire, ServerFrame};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};

use crate::active_first::{ForegroundGate, PHASE2_QUEUE};
use crate::groups::Groups;
use crate::notify::Notifier;
use crate::state::GroupState;
use crate::RequestError;

/// Most commits one flush covers; more wait for the next flush.
pub(crate) const MAX_COMMIT_BATCH: usize = 4096;

/// A durable-pending append waiting for the committer.
pub(crate) struct Commit {
    pub(crate) group: Arc<GroupState>,
    pub(crate) seq: u64,
    pub(crate) request_id: u64,
    /// The encoded Deliver frame, for new messages.
    pub(crate) deliver: Option<Bytes>,
    pub(crate) lane: Lane,
    /// The sender, when the policy asked to notify offline members (new messages only).
    pub(crate) notify: Option<UserId>,
    /// The encoded Ack frame.
    pub(crate) ack: Bytes,
    /// A slot in the connection's response queue, reserved when the send was accepted, so
    /// the ack (or the flush error) can always be queued without waiting. `None` for
    /// another node's commit (cluster mode), which nobody here waits for.
    pub(crate) reply: Option<mpsc::OwnedPermit<Bytes>>,
    /// One of the sending connection's in-flight slots (none for another node's commit:
    /// those are bounded by this queue's capacity instead).
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
}

/// The commit queue: the hub's end and the committer's. Bounded by design: each commit
/// holds one of its connection's in-flight permits.
pub(crate) fn channel() -> (mpsc::Sender<Commit>, mpsc::Receiver<Commit>) {
    mpsc::channel(MAX_COMMIT_BATCH)
}

/// The committer's end of the commit queue; run it with [`Committer::run`].
pub struct Committer {
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Commit>,
    groups: Arc<Groups>,
    notifier: Notifier,
    /// Batches whose background subscribers wait for phase 2 (`active_first`).
    phase2: mpsc::Sender<Phase2>,
    phase2_rx: Option<mpsc::Receiver<Phase2>>,
    /// How long a batch's background phase waits for its foreground copies
    /// (`Limits::foreground_gate_ms` without progress, `foreground_gate_max_ms` in all).
    gate_bounds: GateBounds,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        rx: mpsc::Receiver<Commit>,
        groups: Arc<Groups>,
        notifier: Notifier,
        gate_bounds: GateBounds,
    ) -> Self {
        let (phase2, phase2_rx) = phase2_channel();
        Self {
            store,
            rx,
            groups,
            notifier,
            phase2,
            phase2_rx: Some(phase2_rx),
            gate_bounds,
        }
    }

    /// Runs until the hub is dropped (the queue closes) or `stop` is signalled, then commits
    /// what is queued and returns.
    pub async fn run(mut self, stop: Arc<Notify>) {
        let phase2 = self
            .phase2_rx
            .take()
            .map(|rx| tokio::spawn(run_phase2(rx, self.groups.clone(), self.gate_bounds)));
        let mut batch = Vec::with_capacity(256);
        loop {
            let n = tokio::select! {
                n = self.rx.recv_many(&mut batch, MAX_COMMIT_BATCH) => n,
                _ = stop.notified() => {
                    self.rx.close();
                    self.rx.recv_many(&mut batch, MAX_COMMIT_BATCH).await
                }
            };
            if n == 0 {
                break;
            }
            self.commit(&mut batch).await;
        }
        // Background phases still queued are published (each waits at most its gate).
        drop(self.phase2);
        if let Some(task) = phase2 {
            let _ = task.await;
        }
    }

    async fn commit(&mut self, batch: &mut Vec<Commit>) {
        let store = self.store.clone();
        let flushed = tokio::task::spawn_blocking(move || store.flush())
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("flush task failed: {e}"))));
        let groups = &self.groups;
        let metrics = groups.metrics();
        if let Err(e) = &flushed {
            metrics.flush_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, n = batch.len(), "flush failed; refusing the batch");
        } else {
            metrics.flushes.fetch_add(1, Ordering::Relaxed);
        }
        let (gate, publishing) = ForegroundGate::new();
        let mut later = Vec::new();
        // What each send becomes is the router's decision (`router::commit`).
        let sends = commit::outcomes(flushed.is_ok(), batch.drain(..), |c| c.deliver.is_some());
        for (c, outcome) in sends {
            if outcome.acks() {
                // Offline members of a durable new message are notified whether it is
                // published live or revealed (cluster mode: appended past the next seq).
                if let Some(sender) = &c.notify {
                    self.notifier.queue(&c.group, c.seq, sender.clone());
                }
            }
            match (outcome, &c.deliver) {
                (Outcome::Publish, Some(frame)) => {
                    let at = std::time::Instant::now();
                    if groups.publish_active(&c.group, c.seq, c.lane, frame, at, &gate) {
                        later.push(Later {
                            group: c.group.clone(),
                            seq: c.seq,
                            lane: c.lane,
                            frame: frame.clone(),
                            published_at: at,
                        });
                    }
                }
                // A message without a live frame (a resend of one whose first flush failed,
                // or one appended past the next seq): it is durable now, so make it visible
                // (subscribers fetch it from the log).
                (Outcome::Reveal, _) => groups.reveal(&c.group, c.seq),
                (Outcome::Publish, None) | (Outcome::Unknown, _) => {}
            }
            let Some(reply) = c.reply else { continue };
            if outcome.acks() {
                reply.send(c.ack);
            } else {
                // Every message of the batch was appended before the flush failed: some or
                // all of it may be on disk (and be found by a resend's dedupe), so "not
                // stored" would be a lie the client could act on.
                let err = RequestError::new(
                    ErrorCode::OutcomeUnknown,
                    "storage failed before the message was durable; it may be stored: resend \
                     with the same client_msg_id",
                )
                .with_retry_after(commit::OUTCOME_UNKNOWN_RETRY_MS);
                reply.send(wire::encode_server(&ServerFrame::Error(
                    err.frame(c.request_id),
                )));
            }
        }
        if !later.is_empty() {
            gate.await_later();
        }
        drop(publishing);
        if !later.is_empty() {
            // Active first on the wire, not only in the queues: the background sessions get
            // the batch once its foreground copies are written (or the gate's deadline
            // expired), on their own task, so the next batch's phase 1 does not wait for it.
            let _ = self.phase2.send(Phase2 { gate, items: later }).await;
        }
    }
}

/// One message of a batch whose background subscribers wait for phase 2.
pub(crate) struct Later {
    pub(crate) group: Arc<GroupState>,
    pub(crate) seq: u64,
    pub(crate) lane: Lane,
    pub(crate) frame: Bytes,
    pub(crate) published_at: Instant,
}

/// A batch for phase 2.
pub(crate) struct Phase2 {
    pub(crate) gate: Arc<ForegroundGate>,
    pub(crate) items: Vec<Later>,
}

/// The phase-2 queue: the committer's end, and the task that serves it.
fn phase2_channel() -> (mpsc::Sender<Phase2>, mpsc::Receiver<Phase2>) {
    mpsc::channel(PHASE2_QUEUE)
}

/// Serves the phase-2 queue in commit order until the committer drops its end (everything
/// queued is still published).
async fn run_phase2(mut rx: mpsc::Receiver<Phase2>, groups: Arc<Groups>, bounds: GateBounds) {
    while let Some(batch) = rx.recv().await {
        let opened = batch.gate.wait(bounds).await;
        if !opened {
            groups
                .metrics()
                .foreground_gate_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        // Let whatever the last release queued ahead of the background writers run first.
        tokio::task::yield_now().await;
        for l in batch.items {
            groups.publish_background(&l.group, l.seq, l.lane, &l.frame, l.published_at);
        }
    }
}
