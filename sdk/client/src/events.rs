//! What the client tells the app, in order, through [`Events`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::{PresenceState, ReceiptKind};
use switchboard_wire::{Message, ServerFrame};
use tokio::sync::mpsc;

use crate::shared::Shared;
use crate::tracker::Arrival;
use crate::ClientError;

/// Something that happened on the client. See [`Events`] for the ordering guarantees.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A session started (first connect or reconnect). Catch-up deliveries follow.
    Connected {
        session_id: u64,
        tenant: String,
        user: String,
        /// Groups the user belongs to, each with its newest sequence number.
        groups: Vec<(String, u64)>,
    },
    /// A message of a group: per group in increasing `seq`, each `(group, seq)` once.
    Message(Message),
    /// The aggregated receipts of one of your messages ("read by 37 of 120"), when the
    /// tenant aggregates receipts instead of forwarding each.
    ReceiptSummary {
        group: String,
        seq: u64,
        delivered: u32,
        read: u32,
        members: u32,
    },
    /// `group` has messages up to `head_seq` that were not sent to this (background)
    /// client; they come when it is foreground again, or fetch them now.
    Nudge { group: String, head_seq: u64 },
    /// Someone sent a receipt for one of your messages.
    Receipt {
        group: String,
        seq: u64,
        user: String,
        kind: ReceiptKind,
    },
    /// The presence of a user sharing a group: after each connect, one per connected
    /// co-member (the node's snapshot), then on every change, including its arrival and its
    /// leaving: `online` false (and `state` `Background`) once its last connection closed.
    Presence {
        user: String,
        state: PresenceState,
        online: bool,
    },
    /// The user's complete feature-flag set, as the tenant's policy evaluates it: after each
    /// connect and whenever it changes. Replaces the previous set.
    Flags { flags: Vec<(String, bool)> },
    /// The connection was lost; the client reconnects unless [`Event::Closed`] follows.
    Disconnected { reason: String },
    /// Reconnect attempt `attempt` (1-based) starts after `delay`.
    Reconnecting { attempt: u32, delay: Duration },
    /// A send from the outbox was acknowledged by the node (a send made with
    /// [`Client::queue_send`](crate::Client::queue_send), or one left over by an earlier run or
    /// a timed-out [`Client::send`](crate::Client::send)).
    OutboxSent {
        group: String,
        client_msg_id: String,
        seq: u64,
        /// The node had it already (sent before the app stopped, ack lost).
        duplicate: bool,
    },
    /// The node refused a send from the outbox for good (not a member, policy, …); it was
    /// removed from the outbox.
    OutboxFailed {
        group: String,
        client_msg_id: String,
        error: ClientError,
    },
    /// The client stopped for good: `None` after [`Client::close`](crate::Client::close) (or
    /// when every `Client` handle was dropped), otherwise why (a refused token, reconnect
    /// attempts used up). The stream ends after this event.
    Closed { error: Option<ClientError> },
}

impl Event {
    /// Message, receipt and presence events count against the buffer bound; lifecycle events
    /// do not.
    fn is_data(&self) -> bool {
        matches!(
            self,
            Self::Message(_)
                | Self::Receipt { .. }
                | Self::ReceiptSummary { .. }
                | Self::Nudge { .. }
                | Self::Presence { .. }
                | Self::Flags { .. }
        )
    }
}

/// The client's event stream; call [`Events::next`] in a loop.
///
/// **Order.** Per session: `Connected`, then that session's messages/receipts/presence, then
/// `Disconnected`; `Reconnecting` events precede the next `Connected`. Messages of one group
/// arrive in increasing `seq` without repeats, across reconnects too: the client drops
/// anything at or below the highest `seq` it already passed on.
///
/// **Bound.** At most [`ClientConfig::event_buffer`](crate::ClientConfig::event_buffer)
/// message, receipt and presence events wait here. When the app falls behind, the client stops
/// reading pushes from the node and QUIC flow control slows the node down (which then treats
/// the client as a slow consumer and catches it up from the log later); nothing is dropped.
/// Lifecycle events (`Connected`, `Disconnected`, `Reconnecting`, `Closed`) never wait for
/// space, so the connection task never blocks on a slow app — at most one `Reconnecting` per
/// backoff delay accumulates while the app is not reading.
///
/// With [`ClientConfig::auto_ack`](crate::ClientConfig::auto_ack), a message counts as
/// handled once `next` returned it.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Event>, shared: Arc<Shared>) -> Self {
        Self { rx, shared }
    }

    /// The next event; `None` once the client is closed and every event was taken.
    pub async fn next(&mut self) -> Option<Event> {
        let event = self.rx.recv().await?;
        self.taken(&event);
        Some(event)
    }

    /// The next event if one is waiting, without blocking.
    pub fn try_next(&mut self) -> Option<Event> {
        let event = self.rx.try_recv().ok()?;
        self.taken(&event);
        Some(event)
    }

    fn taken(&self, event: &Event) {
        if !event.is_data() {
            return;
        }
        let paid_debt = self
            .shared
            .slot_debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if !paid_debt {
            self.shared.event_slots.add_permits(1);
        }
        if let (Event::Message(m), true) = (event, self.shared.auto_ack) {
            self.shared.tracker.lock().want_ack(&m.group, m.seq);
            self.shared.ack_ready.notify_one();
        }
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(event)) = &polled {
            self.taken(event);
        }
        polled
    }
}

/// Receives the client's events as callbacks: see [`Events::listen`]. Implemented for every
/// `FnMut(Event) + Send` closure.
pub trait EventListener: Send + 'static {
    /// Called for each event in order, on a tokio task: return quickly (hand heavy work to
    /// another thread); while it runs, further events wait (and count against the bound).
    fn on_event(&mut self, event: Event);
}

impl<F: FnMut(Event) + Send + 'static> EventListener for F {
    fn on_event(&mut self, event: Event) {
        self(event)
    }
}

impl Events {
    /// Hands every event to `listener` from a task of its own, until the stream ends (after
    /// [`Event::Closed`]). The callback style of the same stream; ordering and bounds are
    /// [`Events`]'. Must be called within a tokio runtime.
    pub fn listen(mut self, mut listener: impl EventListener) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(event) = self.next().await {
                listener.on_event(event);
            }
        })
    }
}

/// The sending side, shared by the connection task and the stream readers.
#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    tx: mpsc::UnboundedSender<Event>,
    shared: Arc<Shared>,
}

impl EventSink {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Event>, shared: Arc<Shared>) -> Self {
        Self { tx, shared }
    }

    /// Lifecycle events: never wait (see [`Events`]).
    pub(crate) fn lifecycle(&self, event: Event) {
        debug_assert!(!event.is_data());
        // The app dropped `Events`: it does not want to know.
        let _ = self.tx.send(event);
    }

    /// A push from the node: waits for buffer space, then (for `Deliver`) drops what was seen
    /// already. Deciding and queueing happen under one lock without awaiting in between, so a
    /// reader cancelled at any point leaves either both done or neither.
    pub(crate) async fn push(&self, frame: ServerFrame) {
        let Ok(slot) = self.shared.event_slots.acquire().await else {
            return; // never closed
        };
        let event = match frame {
            ServerFrame::Deliver(m) => {
                let mut tracker = self.shared.tracker.lock();
                let mut ready = Vec::new();
                let (group, seq) = (m.group.clone(), m.seq);
                match tracker.arrive(m, &mut ready) {
                    Arrival::Duplicate => {
                        tracing::debug!(%group, seq, "dropping duplicate delivery");
                    }
                    Arrival::Held => {
                        tracing::trace!(%group, seq, "holding a delivery that overtook an earlier one");
                    }
                    Arrival::TooManyHeld => {
                        tracing::warn!(%group, seq, "too many out-of-order deliveries; reconnecting");
                        self.shared.request_reconnect();
                    }
                    Arrival::Ready => {}
                }
                self.hand_on(ready, slot);
                return;
            }
            ServerFrame::Resume { group, after_seq } => {
                let mut tracker = self.shared.tracker.lock();
                let mut ready = Vec::new();
                let skipped = tracker.resume(&group, after_seq, &mut ready);
                if skipped > 0 {
                    tracing::warn!(%group, after_seq, skipped, "the node resumed past this client's cursor");
                }
                self.hand_on(ready, slot);
                return;
            }
            ServerFrame::ReceiptSummary {
                group,
                seq,
                delivered,
                read,
                members,
            } => Event::ReceiptSummary {
                group,
                seq,
                delivered,
                read,
                members,
            },
            ServerFrame::Nudge { group, head_seq } => Event::Nudge { group, head_seq },
            ServerFrame::ReceiptNotice {
                group,
                seq,
                user,
                kind,
            } => Event::Receipt {
                group,
                seq,
                user,
                kind,
            },
            ServerFrame::PresenceNotice {
                user,
                state,
                online,
            } => Event::Presence {
                user,
                state,
                online,
            },
            ServerFrame::Flags { flags } => Event::Flags {
                flags: flags.into_iter().map(|f| (f.name, f.enabled)).collect(),
            },
            other => {
                tracing::warn!(?other, "not a push; ignored");
                return;
            }
        };
        if self.tx.send(event).is_ok() {
            slot.forget();
        }
    }

    /// Queues messages for the app, in order. The frame's own slot covers the first; any
    /// more (held ones it released) are owed (`slot_debt`). Called with the tracker locked,
    /// so deciding and queueing are one step.
    fn hand_on(&self, ready: Vec<Message>, slot: tokio::sync::SemaphorePermit<'_>) {
        let mut ready = ready.into_iter();
        let Some(first) = ready.next() else {
            return; // nothing for the app: the slot goes back
        };
        if self.tx.send(Event::Message(first)).is_ok() {
            slot.forget();
        }
        for m in ready {
            if self.tx.send(Event::Message(m)).is_ok() {
                self.shared.slot_debt.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::ClientConfig;

    fn pair(event_buffer: usize, resume: &[(&str, u64)]) -> (EventSink, Events) {
        let mut cfg = ClientConfig::new("127.0.0.1:1".parse().unwrap(), Vec::new(), "t");
        cfg.event_buffer = event_buffer;
        cfg.resume = resume.iter().map(|(g, s)| (g.to_string(), *s)).collect();
        let shared = Arc::new(Shared::new(&cfg));
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink::new(tx, shared.clone()), Events::new(rx, shared))
    }

    fn deliver(group: &str, seq: u64) -> ServerFrame {
        ServerFrame::Deliver(Message {
            group: group.into(),
            seq,
            sender: "alice".into(),
            client_msg_id: format!("m{seq}"),
            sent_at_ms: 0,
            body: Bytes::from_static(b"hi"),
            lane: Default::default(),
        })
    }

    fn resume(group: &str, after_seq: u64) -> ServerFrame {
        ServerFrame::Resume {
            group: group.into(),
            after_seq,
        }
    }

    fn seq_of(e: Option<Event>) -> u64 {
        match e {
            Some(Event::Message(m)) => m.seq,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn deliveries_are_deduped_against_resume_and_each_other() {
        let (sink, mut events) = pair(16, &[("g", 1)]);
        // The node resumes from an older position than the client's cursor.
        sink.push(resume("g", 0)).await;
        for seq in [1, 2, 2, 3, 1, 4] {
            sink.push(deliver("g", seq)).await;
        }
        let got: Vec<u64> = (0..3).map(|_| seq_of(events.try_next())).collect();
        assert_eq!(got, vec![2, 3, 4]);
        assert!(events.try_next().is_none());
    }

    #[tokio::test]
    async fn a_full_buffer_holds_pushes_but_not_lifecycle_events() {
        let (sink, mut events) = pair(2, &[]);
        sink.push(resume("g", 0)).await;
        sink.push(deliver("g", 1)).await;
        sink.push(deliver("g", 2)).await;
        let third = sink.push(deliver("g", 3));
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut third)
                .await
                .is_err(),
            "a push went past the bound"
        );
        sink.lifecycle(Event::Disconnected {
            reason: "test".into(),
        });
        assert_eq!(seq_of(events.next().await), 1);
        // Taking one event frees one place.
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("push still blocked after the app took an event");
        assert_eq!(seq_of(events.next().await), 2);
        assert!(matches!(
            events.next().await,
            Some(Event::Disconnected { .. })
        ));
        assert_eq!(seq_of(events.next().await), 3);
    }

    #[tokio::test]
    async fn handed_messages_are_acked_when_auto_ack_is_on() {
        let (sink, mut events) = pair(16, &[]);
        sink.push(resume("g", 0)).await;
        for seq in 1..=3 {
            sink.push(deliver("g", seq)).await;
        }
        assert_eq!(seq_of(events.next().await), 1);
        assert_eq!(seq_of(events.next().await), 2);
        // Only what the app took is acked, coalesced into one ack.
        let acks = events.shared.tracker.lock().take_acks();
        assert_eq!(acks, vec![("g".to_string(), 2)]);
    }

    #[tokio::test]
    async fn deliveries_from_several_streams_reach_the_app_in_order_within_the_bound() {
        let (sink, mut events) = pair(2, &[]);
        // 3 and 2 came on a more urgent stream than 1, and before the group's Resume.
        sink.push(deliver("g", 3)).await;
        sink.push(resume("g", 0)).await;
        sink.push(deliver("g", 2)).await;
        assert!(events.try_next().is_none(), "nothing before seq 1");
        assert_eq!(
            events.shared.event_slots.available_permits(),
            2,
            "held messages do not take the app's places"
        );
        sink.push(deliver("g", 1)).await;
        let got: Vec<u64> = (0..3).map(|_| seq_of(events.try_next())).collect();
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(
            events.shared.event_slots.available_permits(),
            2,
            "released messages are paid back, not double-counted"
        );
        // Pushes flow normally afterwards.
        sink.push(deliver("g", 4)).await;
        assert_eq!(seq_of(events.try_next()), 4);
    }

    #[tokio::test]
    async fn notices_become_events() {
        let (sink, mut events) = pair(16, &[]);
        sink.push(ServerFrame::ReceiptNotice {
            group: "g".into(),
            seq: 7,
            user: "bob".into(),
            kind: ReceiptKind::Read,
        })
        .await;
        sink.push(ServerFrame::PresenceNotice {
            user: "bob".into(),
            state: PresenceState::Background,
            online: false,
        })
        .await;
        assert!(matches!(
            events.next().await,
            Some(Event::Receipt {
                seq: 7,
                kind: ReceiptKind::Read,
                ..
            })
        ));
        assert!(matches!(
            events.next().await,
            Some(Event::Presence {
                state: PresenceState::Background,
                online: false,
                ..
            })
        ));
        sink.push(ServerFrame::ReceiptSummary {
            group: "g".into(),
            seq: 7,
            delivered: 5,
            read: 3,
            members: 9,
        })
        .await;
        sink.push(ServerFrame::Nudge {
            group: "g".into(),
            head_seq: 12,
        })
        .await;
        assert!(matches!(
            events.next().await,
            Some(Event::ReceiptSummary {
                seq: 7,
                delivered: 5,
                read: 3,
                members: 9,
                ..
            })
        ));
        assert!(matches!(
            events.next().await,
            Some(Event::Nudge { head_seq: 12, .. })
        ));
        // Receipts are never deduped or acked.
        assert!(events.shared.tracker.lock().take_acks().is_empty());
    }
}
