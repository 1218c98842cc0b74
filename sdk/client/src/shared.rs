//! State shared by the `Client` handles, `Events`, the connection task and its readers.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use parking_lot::Mutex;
use switchboard_core::PresenceState;
use switchboard_wire::{GroupCursor, Hello};
use tokio::sync::{watch, Notify, Semaphore};

use crate::backoff::Rng;
use crate::tracker::DeliveryTracker;
use crate::ClientConfig;

#[derive(Debug)]
pub(crate) struct Shared {
    /// Dedupe, resume cursors and pending delivery acks.
    pub(crate) tracker: Mutex<DeliveryTracker>,
    /// Wakes the connection task when an ack is wanted.
    pub(crate) ack_ready: Notify,
    pub(crate) auto_ack: bool,
    /// Free places for data events in the app's buffer (see `Events`).
    pub(crate) event_slots: Semaphore,
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
    /// Source of generated `client_msg_id`s.
    pub(crate) rng: Mutex<Rng>,
}

impl Shared {
    pub(crate) fn new(cfg: &ClientConfig) -> Self {
        Self {
            tracker: Mutex::new(DeliveryTracker::with_resume(cfg.resume.iter().cloned())),
            ack_ready: Notify::new(),
            auto_ack: cfg.auto_ack,
            event_slots: Semaphore::new(cfg.event_buffer.clamp(1, Semaphore::MAX_PERMITS)),
            token: Mutex::new(cfg.token.clone()),
            presence: Mutex::new(cfg.presence),
            client_name: cfg.client_name.clone(),
            max_payload_bytes: AtomicU32::new(u32::MAX),
            shutdown: Notify::new(),
            reconnect_flag: AtomicBool::new(false),
            reconnect_wake: Notify::new(),
            stopped: watch::Sender::new(false),
            rng: Mutex::new(Rng::from_entropy()),
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
