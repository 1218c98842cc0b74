//! Requests waiting for their response, matched by `request_id`. No IO: the connection task
//! writes the frames this table hands out and feeds it the frames it reads.
//!
//! Invariants: request ids are unique, nonzero and increasing for the client's lifetime (so a
//! response can never be matched to the wrong request, even across reconnects); a request
//! keeps its id when re-issued; re-issue follows id order, so sends to a group reach the node
//! in the order the app made them.

use std::collections::BTreeMap;

use bytes::Bytes;
use switchboard_wire::{ClientFrame, ErrorFrame, Message, ServerFrame};

use crate::ClientError;

/// What a request asks for. Every kind is idempotent on the node (sends through their
/// `client_msg_id`), which is why the client may re-issue any of them after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Join {
        group: String,
    },
    Leave {
        group: String,
    },
    Send {
        group: String,
        client_msg_id: String,
        body: Bytes,
    },
    Fetch {
        group: String,
        after_seq: u64,
        limit: u32,
    },
    Ping,
}

impl RequestKind {
    pub(crate) fn frame(&self, request_id: u64) -> ClientFrame {
        match self.clone() {
            Self::Join { group } => ClientFrame::Join { request_id, group },
            Self::Leave { group } => ClientFrame::Leave { request_id, group },
            Self::Send {
                group,
                client_msg_id,
                body,
            } => ClientFrame::Send {
                request_id,
                group,
                client_msg_id,
                body,
            },
            Self::Fetch {
                group,
                after_seq,
                limit,
            } => ClientFrame::Fetch {
                request_id,
                group,
                after_seq,
                limit,
            },
            Self::Ping => ClientFrame::Ping { request_id },
        }
    }
}

/// A successful response, typed per request kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Response {
    Joined {
        head_seq: u64,
    },
    Left,
    Ack {
        seq: u64,
        duplicate: bool,
    },
    Fetched {
        messages: Vec<Message>,
        head_seq: u64,
    },
    Pong,
}

/// How one request ended.
pub(crate) type Outcome = Result<Response, ClientError>;

/// A server frame, sorted by who handles it.
#[derive(Debug)]
pub(crate) enum Routed {
    /// Answers the request with this id.
    Response(u64, ServerFrame),
    /// An `Error` that answers no request (`request_id` 0).
    ConnectionError(ErrorFrame),
    /// `Deliver`, `ReceiptNotice`, `PresenceNotice` or `Flags`: goes to the app's event stream.
    Push(ServerFrame),
    /// `Welcome` after the handshake.
    Unexpected(ServerFrame),
}

/// Sorts a server frame; see [`Routed`].
pub(crate) fn route(frame: ServerFrame) -> Routed {
    use ServerFrame as F;
    match frame {
        F::Joined { request_id, .. }
        | F::Left { request_id, .. }
        | F::Ack { request_id, .. }
        | F::FetchResult { request_id, .. }
        | F::Pong { request_id } => Routed::Response(request_id, frame),
        F::Error(e) if e.request_id == 0 => Routed::ConnectionError(e),
        F::Error(ref e) => Routed::Response(e.request_id, frame),
        F::Deliver(_)
        | F::Resume { .. }
        | F::ReceiptNotice { .. }
        | F::ReceiptSummary { .. }
        | F::PresenceNotice { .. }
        | F::Nudge { .. }
        | F::Flags { .. } => Routed::Push(frame),
        F::Welcome { .. } => Routed::Unexpected(frame),
    }
}

struct Pending<R> {
    kind: RequestKind,
    reply: R,
}

/// The table. `R` is whatever carries the outcome back to the caller (a oneshot sender in
/// the client, plain values in tests).
pub(crate) struct Requests<R> {
    next_id: u64,
    pending: BTreeMap<u64, Pending<R>>,
}

impl<R> Default for Requests<R> {
    fn default() -> Self {
        Self {
            next_id: 1,
            pending: BTreeMap::new(),
        }
    }
}

impl<R> Requests<R> {
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Registers a request and returns the frame to write for it.
    pub(crate) fn insert(&mut self, kind: RequestKind, reply: R) -> ClientFrame {
        let id = self.next_id;
        self.next_id += 1;
        let frame = kind.frame(id);
        self.pending.insert(id, Pending { kind, reply });
        frame
    }

    /// Matches a response frame to its request. Returns the request's reply handle and
    /// outcome, or `None` if no request has this id (its caller gave up, or the node is
    /// confused) — or if the node said it is shutting down: the request then stays pending
    /// and is re-issued on the next connection.
    pub(crate) fn complete(&mut self, request_id: u64, frame: ServerFrame) -> Option<(R, Outcome)> {
        if let ServerFrame::Error(e) = &frame {
            if e.error_code() == Some(switchboard_core::ErrorCode::ShuttingDown) {
                return None;
            }
        }
        let pending = self.pending.remove(&request_id)?;
        let outcome = outcome(&pending.kind, frame);
        Some((pending.reply, outcome))
    }

    /// For a `Send` answered `OutcomeUnknown` (the node wrote the message but could not make
    /// it durable: it may be stored): the request stays pending, and this returns the frame
    /// to send again — same request id, same `client_msg_id`, so the node acks it once
    /// whether or not the first attempt landed — and how long to wait first (the node's
    /// `retry_after_ms`, at least 100 ms). `None` for any other answer.
    pub(crate) fn resend_if_unknown(
        &self,
        request_id: u64,
        frame: &ServerFrame,
    ) -> Option<(ClientFrame, std::time::Duration)> {
        let ServerFrame::Error(e) = frame else {
            return None;
        };
        if e.error_code() != Some(switchboard_core::ErrorCode::OutcomeUnknown) {
            return None;
        }
        let pending = self.pending.get(&request_id)?;
        if !matches!(pending.kind, RequestKind::Send { .. }) {
            return None;
        }
        let wait = std::time::Duration::from_millis(u64::from(e.retry_after_ms).max(100));
        Some((pending.kind.frame(request_id), wait))
    }

    /// The frame of a pending request, if it is still pending.
    pub(crate) fn frame_of(&self, request_id: u64) -> Option<ClientFrame> {
        self.pending
            .get(&request_id)
            .map(|p| p.kind.frame(request_id))
    }

    /// Frames for every pending request, in id order, for a fresh connection.
    pub(crate) fn reissue(&self) -> Vec<ClientFrame> {
        self.pending
            .iter()
            .map(|(id, p)| p.kind.frame(*id))
            .collect()
    }

    /// Drops requests whose caller no longer waits (timed out or cancelled).
    pub(crate) fn retain(&mut self, mut waiting: impl FnMut(&R) -> bool) {
        self.pending.retain(|_, p| waiting(&p.reply));
    }

    /// Removes every request, for failing them all at once.
    pub(crate) fn drain(&mut self) -> Vec<R> {
        std::mem::take(&mut self.pending)
            .into_values()
            .map(|p| p.reply)
            .collect()
    }
}

/// The typed outcome of `kind` answered by `frame`; a response of the wrong type (or for
/// another group or message) is a protocol error for that request.
fn outcome(kind: &RequestKind, frame: ServerFrame) -> Outcome {
    use RequestKind as K;
    use ServerFrame as F;
    match (kind, frame) {
        (_, F::Error(e)) => Err(ClientError::from_frame(&e)),
        (
            K::Join { group },
            F::Joined {
                group: g, head_seq, ..
            },
        ) if *group == g => Ok(Response::Joined { head_seq }),
        (K::Leave { group }, F::Left { group: g, .. }) if *group == g => Ok(Response::Left),
        (
            K::Send {
                group,
                client_msg_id,
                ..
            },
            F::Ack {
                group: g,
                client_msg_id: id,
                seq,
                duplicate,
                ..
            },
        ) if *group == g && *client_msg_id == id => Ok(Response::Ack { seq, duplicate }),
        (
            K::Fetch { group, .. },
            F::FetchResult {
                group: g,
                messages,
                head_seq,
                ..
            },
        ) if *group == g => Ok(Response::Fetched { messages, head_seq }),
        (K::Ping, F::Pong { .. }) => Ok(Response::Pong),
        (kind, frame) => Err(ClientError::Protocol(format!(
            "{kind:?} answered by {}",
            frame.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::{ErrorCode, PresenceState};

    fn send(group: &str, id: &str) -> RequestKind {
        RequestKind::Send {
            group: group.into(),
            client_msg_id: id.into(),
            body: Bytes::from_static(b"hi"),
        }
    }

    fn ack(request_id: u64, group: &str, id: &str, seq: u64) -> ServerFrame {
        ServerFrame::Ack {
            request_id,
            group: group.into(),
            client_msg_id: id.into(),
            seq,
            duplicate: false,
        }
    }

    fn request_id(f: &ClientFrame) -> u64 {
        match f {
            ClientFrame::Join { request_id, .. }
            | ClientFrame::Leave { request_id, .. }
            | ClientFrame::Send { request_id, .. }
            | ClientFrame::Fetch { request_id, .. }
            | ClientFrame::Ping { request_id } => *request_id,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn a_send_whose_outcome_is_unknown_stays_pending_to_be_sent_again_unchanged() {
        let mut t = Requests::default();
        let first = t.insert(send("g", "m-1"), 0);
        let ping = t.insert(RequestKind::Ping, 1);
        let unknown = |request_id, retry_after_ms| {
            ServerFrame::Error(switchboard_wire::ErrorFrame {
                request_id,
                code: ErrorCode::OutcomeUnknown.as_u16(),
                message: "flush failed".into(),
                retry_after_ms,
            })
        };
        let (again, wait) = t.resend_if_unknown(1, &unknown(1, 1_000)).unwrap();
        assert_eq!(
            again, first,
            "same request id, group, client_msg_id and body"
        );
        assert_eq!(wait, std::time::Duration::from_millis(1_000));
        assert_eq!(
            t.resend_if_unknown(1, &unknown(1, 0)).unwrap().1,
            std::time::Duration::from_millis(100)
        );
        assert_eq!(t.len(), 2, "still pending");
        // Only sends are resent, and only for this code.
        assert!(t.resend_if_unknown(2, &unknown(2, 0)).is_none());
        let not_stored = ServerFrame::Error(switchboard_wire::ErrorFrame {
            request_id: 1,
            code: ErrorCode::StoreUnavailable.as_u16(),
            message: String::new(),
            retry_after_ms: 0,
        });
        assert!(t.resend_if_unknown(1, &not_stored).is_none());
        assert_eq!(t.frame_of(2), Some(ping));
        // The resend's ack completes it.
        let (reply, outcome) = t.complete(1, ack(1, "g", "m-1", 7)).unwrap();
        assert_eq!(reply, 0);
        assert!(matches!(outcome, Ok(Response::Ack { seq: 7, .. })));
    }

    #[test]
    fn ids_are_unique_nonzero_and_increasing() {
        let mut t = Requests::default();
        let ids: Vec<u64> = (0..5)
            .map(|i| request_id(&t.insert(RequestKind::Ping, i)))
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        t.drain();
        // Draining never recycles ids.
        assert_eq!(request_id(&t.insert(RequestKind::Ping, 9)), 6);
    }

    #[test]
    fn responses_match_by_id_in_any_order() {
        let mut t = Requests::default();
        t.insert(send("g", "m1"), "first");
        t.insert(RequestKind::Join { group: "g".into() }, "join");
        t.insert(RequestKind::Ping, "ping");
        let (r, o) = t.complete(3, ServerFrame::Pong { request_id: 3 }).unwrap();
        assert_eq!((r, o.unwrap()), ("ping", Response::Pong));
        let (r, o) = t.complete(1, ack(1, "g", "m1", 42)).unwrap();
        assert_eq!(
            (r, o.unwrap()),
            (
                "first",
                Response::Ack {
                    seq: 42,
                    duplicate: false
                }
            )
        );
        let joined = ServerFrame::Joined {
            request_id: 2,
            group: "g".into(),
            head_seq: 7,
        };
        let (r, o) = t.complete(2, joined).unwrap();
        assert_eq!((r, o.unwrap()), ("join", Response::Joined { head_seq: 7 }));
        assert_eq!(t.len(), 0);
        // A late or unknown response matches nothing.
        assert!(t.complete(1, ack(1, "g", "m1", 42)).is_none());
    }

    #[test]
    fn wrong_response_type_is_a_protocol_error() {
        let mut t = Requests::default();
        t.insert(send("g", "m1"), ());
        let (_, o) = t.complete(1, ServerFrame::Pong { request_id: 1 }).unwrap();
        assert!(matches!(o, Err(ClientError::Protocol(_))), "{o:?}");
        // An ack for another message is not this send's ack.
        t.insert(send("g", "m2"), ());
        let (_, o) = t.complete(2, ack(2, "g", "other", 1)).unwrap();
        assert!(matches!(o, Err(ClientError::Protocol(_))), "{o:?}");
    }

    #[test]
    fn errors_fail_their_request_except_shutting_down() {
        let mut t = Requests::default();
        t.insert(send("g", "m1"), ());
        t.insert(send("g", "m2"), ());
        let refused = ServerFrame::Error(ErrorFrame::new(1, ErrorCode::NotMember, "no"));
        let (_, o) = t.complete(1, refused).unwrap();
        assert_eq!(o.unwrap_err().code(), Some(ErrorCode::NotMember));
        let draining = ServerFrame::Error(ErrorFrame::new(2, ErrorCode::ShuttingDown, "bye"));
        assert!(t.complete(2, draining).is_none());
        assert_eq!(t.len(), 1, "kept for the next connection");
    }

    #[test]
    fn reissue_keeps_ids_and_order() {
        let mut t = Requests::default();
        t.insert(send("g", "m1"), 1);
        t.insert(send("g", "m2"), 2);
        t.insert(send("h", "m3"), 3);
        t.complete(2, ack(2, "g", "m2", 5));
        let again = t.reissue();
        assert_eq!(again.iter().map(request_id).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(again[0], send("g", "m1").frame(1));
        // Re-issuing does not consume anything: the ack still matches.
        assert!(t.complete(3, ack(3, "h", "m3", 1)).is_some());
    }

    #[test]
    fn abandoned_requests_are_dropped() {
        let mut t = Requests::default();
        for waiting in [true, false, true] {
            t.insert(RequestKind::Ping, waiting);
        }
        t.retain(|waiting| *waiting);
        assert_eq!(t.len(), 2);
        assert_eq!(t.drain(), vec![true, true]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn routing() {
        let push = ServerFrame::PresenceNotice {
            user: "u".into(),
            state: PresenceState::Background,
            online: true,
        };
        assert!(matches!(route(push), Routed::Push(_)));
        let conn_err = ServerFrame::Error(ErrorFrame::new(0, ErrorCode::Overloaded, ""));
        assert!(matches!(route(conn_err), Routed::ConnectionError(_)));
        let req_err = ServerFrame::Error(ErrorFrame::new(9, ErrorCode::Overloaded, ""));
        assert!(matches!(route(req_err), Routed::Response(9, _)));
        assert!(matches!(
            route(ServerFrame::Pong { request_id: 4 }),
            Routed::Response(4, _)
        ));
    }
}
