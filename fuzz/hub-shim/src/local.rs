//! A session without a connection: what `conn.rs` does for one client, minus QUIC.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_core::token::Claims;
use switchboard_store::StoreError;
use switchboard_wire::{Hello, ServerFrame};
use tokio::sync::{mpsc, Semaphore};

use crate::hub::{self, Hub, OutboxRx, PushPlanner, RequestError, SendRequest, Session};

/// Bytes a writer turn takes from the outbox, as `conn::WRITE_BUDGET`.
const WRITE_BUDGET: usize = 64 * 1024;

/// One open session: its hub state, its push planner and outbox, and its response queue.
pub struct LocalSession {
    session: Arc<Session>,
    planner: PushPlanner,
    outbox: OutboxRx,
    started: bool,
    responses_tx: mpsc::Sender<Bytes>,
    responses: mpsc::Receiver<Bytes>,
    inflight: Arc<Semaphore>,
}

impl std::fmt::Debug for LocalSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSession")
            .field("session", &self.session.id)
            .finish_non_exhaustive()
    }
}

impl LocalSession {
    /// Opens a session as an accepted `Hello` does (authenticate first, as `conn::run`).
    pub fn open(
        hub: &Arc<Hub>,
        claims: Claims,
        hello: &Hello,
    ) -> Result<(Self, ServerFrame), RequestError> {
        let limits = hub.limits().clone();
        let (tx, outbox) = hub::outbox(limits.outbox_frames as usize);
        let (session, welcome) = hub.open_session(claims, hello, tx)?;
        let (responses_tx, responses) = mpsc::channel(limits.max_inflight_sends as usize + 8);
        Ok((
            Self {
                planner: PushPlanner::new(hub.clone(), session.clone()),
                session,
                outbox,
                started: false,
                responses_tx,
                responses,
                inflight: Arc::new(Semaphore::new(limits.max_inflight_sends as usize)),
            },
            welcome,
        ))
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Sends in flight (accepted, not yet answered by the committer).
    pub fn in_flight(&self) -> usize {
        self.inflight_limit() - self.inflight.available_permits()
    }

    fn inflight_limit(&self) -> usize {
        self.responses_tx.max_capacity() - 8
    }

    /// A `Send` as `conn::handle` makes it. `Ok` means accepted: its ack (or flush error)
    /// arrives later in [`LocalSession::responses`]. `None` when the session is at its
    /// in-flight limit (where the connection would stop reading).
    pub async fn send(&self, hub: &Hub, req: SendRequest) -> Option<Result<(), RequestError>> {
        let permit = self.inflight.clone().try_acquire_owned().ok()?;
        let slot = self.responses_tx.clone().try_reserve_owned().ok()?;
        Some(hub.send(&self.session, req, slot, permit).await)
    }

    /// Responses queued by the committer (acks, flush errors), encoded.
    pub fn responses(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(b) = self.responses.try_recv() {
            out.push(b);
        }
        out
    }

    /// Waits for the next response.
    pub async fn next_response(&mut self) -> Option<Bytes> {
        self.responses.recv().await
    }

    /// What the push writer would write now, encoded (with the length prefix), until it has
    /// nothing more to do: `conn::push_writer`'s loop run to idleness.
    pub fn push_stream(&mut self) -> Result<Vec<Bytes>, StoreError> {
        let mut out = Vec::new();
        let mut items = Vec::new();
        if !self.started {
            self.started = true;
            self.outbox.drain_high(&mut items);
            for item in items.drain(..) {
                self.planner.plan(item, &mut out)?;
            }
        }
        loop {
            let before = out.len();
            self.planner.catch_up(&mut out)?;
            self.outbox.drain(&mut items, WRITE_BUDGET);
            let drained = !items.is_empty();
            for item in items.drain(..) {
                self.planner.plan(item, &mut out)?;
            }
            if out.len() == before && !drained {
                return Ok(out);
            }
        }
    }

    /// Ends the session as a closed connection does.
    pub fn close(self, hub: &Hub) {
        hub.close_session(&self.session);
    }
}
