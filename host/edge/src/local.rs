//! A session without a connection: what `conn.rs` and the push writers do for one client,
//! minus QUIC, driven step by step. For tests and fuzzing of the routing state machine
//! (`fuzz/`'s routing target); the node itself never uses it.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_core::token::Claims;
use switchboard_router::LogError;
use switchboard_wire::{Hello, ServerFrame};
use tokio::sync::{mpsc, Semaphore};

use crate::hub::{Hub, RequestError, SendRequest, Session};
use crate::outbox::{Outbox, Push, PushStream};
use crate::push::PushPlanner;

/// One open session: its hub state, its push planner and outbox, and its response queue.
pub struct LocalSession {
    session: Arc<Session>,
    planner: PushPlanner,
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
    /// Opens a session as an accepted `Hello` does (the caller authenticated the token).
    pub fn open(
        hub: &Arc<Hub>,
        claims: Claims,
        hello: &Hello,
    ) -> Result<(Self, ServerFrame), RequestError> {
        let limits = hub.limits().clone();
        let outbox = Outbox::new(limits.outbox_frames as usize, limits.outbox_bytes as usize);
        let (session, welcome) = hub.open_session(claims, hello, outbox, None)?;
        let (responses_tx, responses) = mpsc::channel(limits.max_inflight_sends as usize + 8);
        Ok((
            Self {
                planner: hub.push_planner(session.clone()),
                session,
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
        self.responses_tx.max_capacity() - 8 - self.inflight.available_permits()
    }

    /// A `Send` as the connection makes it. `Ok` means accepted: its ack (or flush error)
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

    /// What the push writers would write now, encoded (with the length prefix), until they
    /// have nothing more to do, in the order they write it: each stream's queue in priority
    /// order, catch-up with the normal stream, as `push::run` does. Per group this is the
    /// order the planner promises (by `seq`, no gap); on a real connection the streams may
    /// interleave differently on arrival.
    pub fn push_stream(&mut self) -> Result<Vec<Bytes>, LogError> {
        let mut out = Vec::new();
        let mut items: Vec<Push> = Vec::new();
        loop {
            let before = out.len();
            let mut drained = false;
            for stream in PushStream::ALL {
                if stream == PushStream::Normal {
                    self.planner.catch_up(&mut out)?;
                }
                self.session.outbox.take(stream, &mut items, usize::MAX);
                drained |= !items.is_empty();
                for item in items.drain(..) {
                    self.planner.plan(item, &mut out)?;
                }
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
