//! State shared by the `Client` handles, `Events`, the connection task and its readers.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use parking_lot::Mutex;
use switchboard_core::PresenceState;
use switchboard_wire::{GroupCursor, Hello};
use tokio::sync::{watch, Notify, Semaphore};

use std::collections::HashSet;

use crate::backoff::Rng;
use crate::outbox::Outbox;
use crate::tracker::DeliveryTracker;
use crate::ClientConfig;

/// Longest `Hello.client` the node accepts, in bytes.
const MAX_CLIENT_NAME: usize = 64;

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Dedupe, resume cursors and pending delivery acks.
    pub(crate) tracker: Mutex<DeliveryTracker>,
    /// Wakes the connection task when an ack is wanted.
    pub(crate) ack_ready: Notify,
    pub(crate) auto_ack: bool,
    /// Free places for data events in the app's buffer (see `Events`).
    pub(crate) event_slots: Semaphore,
    /// Messages queued for the app without a slot of their own: held messages released by
    /// the arrival of their predecessor (each slot covers one arrived frame). The next data
    /// events the app takes pay these back instead of freeing slots.
    pub(crate) slot_debt: AtomicUsize,
    /// What the next `Hello` says.
    pub(crate) token: Mutex<String>,
    pub(crate) presence: Mutex<PresenceState>,
    client_name: String,
    /// From the latest `Welcome`.
    pub(crate) max_payload_bytes: AtomicU32,
    /// Asks the connection task to stop (a stored permit, so it is never missed).
    pub(crate) shutdown: Notify,
    /// `Client::reconnect` was called: the flag says so, the notify wakes the task.
    reconnect_flag: AtomicBool,
    reconnect_wake: Notify,
    /// Set by the connection task when it has stopped.
    pub(crate) stopped: watch::Sender<bool>,
    /// The app paused the client (`Client::pause`): no connection until it resumes.
    paused: watch::Sender<bool>,
    /// The device's network changed (`Client::network_changed`) while connected.
    pub(crate) network_changed: Notify,
    /// Whether a session is up (set by the connection task).
    pub(crate) online: AtomicBool,
    /// Wakes the outbox worker: a session started, or a send was queued or left pending.
    pub(crate) outbox_kick: Notify,
    /// Source of generated `client_msg_id`s.
    pub(crate) rng: Mutex<Rng>,
    /// The offline outbox, when the app gave it a directory.
    pub(crate) outbox: Option<Mutex<Outbox>>,
    /// Outbox keys a `send` call is waiting on (the outbox worker leaves them alone).
    pub(crate) outbox_in_flight: Mutex<HashSet<u64>>,
}

impl Shared {
    #[cfg(test)]
    pub(crate) fn new(cfg: &ClientConfig) -> Self {
        Self::with_outbox(cfg, None)
    }

    pub(crate) fn with_outbox(cfg: &ClientConfig, outbox: Option<Outbox>) -> Self {
        Self {
            tracker: Mutex::new(DeliveryTracker::with_resume(cfg.resume.iter().cloned())),
            ack_ready: Notify::new(),
            auto_ack: cfg.auto_ack,
            event_slots: Semaphore::new(cfg.event_buffer.clamp(1, Semaphore::MAX_PERMITS)),
            slot_debt: AtomicUsize::new(0),
            token: Mutex::new(cfg.token.clone()),
            presence: Mutex::new(cfg.presence),
            client_name: truncate(&cfg.client_name, MAX_CLIENT_NAME).to_owned(),
            max_payload_bytes: AtomicU32::new(u32::MAX),
            shutdown: Notify::new(),
            reconnect_flag: AtomicBool::new(false),
            reconnect_wake: Notify::new(),
            stopped: watch::Sender::new(false),
            paused: watch::Sender::new(false),
            network_changed: Notify::new(),
            online: AtomicBool::new(false),
            outbox_kick: Notify::new(),
            rng: Mutex::new(Rng::from_entropy()),
            outbox: outbox.map(Mutex::new),
            outbox_in_flight: Mutex::new(HashSet::new()),
        }
    }

    /// The `Hello` for a new connection: current token, presence and cursors.
    pub(crate) fn hello(&self) -> Hello {
        let cursors = self
            .tracker
            .lock()
            .cursors()
            .into_iter()
            .map(|(group, seq)| GroupCursor { group, seq })
            .collect();
        Hello {
            token: self.token.lock().clone(),
            presence: *self.presence.lock(),
            cursors,
            client: self.client_name.clone(),
        }
    }

    pub(crate) fn request_reconnect(&self) {
        self.reconnect_flag.store(true, Ordering::Release);
        self.reconnect_wake.notify_one();
    }

    pub(crate) fn clear_reconnect_request(&self) {
        self.reconnect_flag.store(false, Ordering::Release);
    }

    /// Resolves once a reconnect was requested (and consumes the request).
    pub(crate) async fn reconnect_requested(&self) {
        loop {
            self.reconnect_wake.notified().await;
            if self.reconnect_flag.swap(false, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// Pauses or resumes; returns whether that changed anything.
    pub(crate) fn set_paused(&self, paused: bool) -> bool {
        self.paused
            .send_if_modified(|p| std::mem::replace(p, paused) != paused)
    }

    pub(crate) fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Resolves once the client is (or already was) paused, or resumed when `paused` is false.
    pub(crate) async fn until_paused(&self, paused: bool) {
        let mut rx = self.paused.subscribe();
        // Err only if the sender is gone, which it is not while `self` lives.
        let _ = rx.wait_for(|p| *p == paused).await;
    }

    pub(crate) fn max_payload_bytes(&self) -> u32 {
        self.max_payload_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// A fresh client message id: 32 hex digits from a generator seeded randomly per process,
    /// so ids do not repeat across app restarts (the node dedupes by id per sender and group).
    pub(crate) fn new_msg_id(&self) -> String {
        let mut rng = self.rng.lock();
        format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_name_fits_hello() {
        assert_eq!(truncate("chat/0.1", 64), "chat/0.1");
        assert_eq!(truncate(&"x".repeat(70), 64).len(), 64);
        // Never splits a character.
        assert_eq!(truncate("ééé", 5), "éé");
    }

    #[test]
    fn message_ids_are_distinct_and_valid() {
        let cfg = ClientConfig::new("127.0.0.1:1".parse().unwrap(), Vec::new(), "t");
        let a = Shared::new(&cfg);
        let b = Shared::new(&cfg);
        let ids: std::collections::HashSet<String> = (0..1000)
            .flat_map(|_| [a.new_msg_id(), b.new_msg_id()])
            .collect();
        assert_eq!(ids.len(), 2000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 32 && switchboard_core::GroupId::new(id).is_ok()));
    }

    #[test]
    fn hello_carries_token_presence_and_cursors() {
        let mut cfg = ClientConfig::new("127.0.0.1:1".parse().unwrap(), Vec::new(), "tok");
        cfg.resume = vec![("b".into(), 2), ("a".into(), 9)];
        let shared = Shared::new(&cfg);
        *shared.presence.lock() = PresenceState::Background;
        {
            let mut t = shared.tracker.lock();
            let mut out = Vec::new();
            t.resume("b", 2, &mut out);
            t.arrive(
                switchboard_wire::Message {
                    group: "b".into(),
                    seq: 3,
                    sender: "s".into(),
                    client_msg_id: "m".into(),
                    sent_at_ms: 0,
                    body: Default::default(),
                    lane: Default::default(),
                },
                &mut out,
            );
        }
        let hello = shared.hello();
        assert_eq!(hello.token, "tok");
        assert_eq!(hello.presence, PresenceState::Background);
        let cursors: Vec<(String, u64)> = hello
            .cursors
            .into_iter()
            .map(|c| (c.group, c.seq))
            .collect();
        assert_eq!(cursors, vec![("a".into(), 9), ("b".into(), 3)]);
    }
}
