//! Push-notification events for members who are offline when a message is published, when
//! the tenant's policy asks for it (`delivery.notify-offline`, e.g. a VIP sender or an
//! `!urgent` message with the reference priority plugin).
//!
//! The committer only queues the message (after it is durable and published), so the
//! message path never waits for a sink: a worker thread resolves the group's members, skips
//! those with a connected session and the sender, and hands one [`OfflineNotice`] per
//! offline member (in cluster mode, connected to no node: `elsewhere.rs`) to the node's [`NotifySink`] — by default [`LogSink`], which writes a
//! structured log line (target `switchboard::notify`) for a log shipper to turn into APNs/FCM
//! pushes, or [`WebhookSink`](crate::webhook::WebhookSink) (`[notify] webhook` in the
//! config); an embedding app can install its own with `Hub::set_notify_sink`.
//! Bounds: [`NOTIFY_QUEUE`] messages waiting (more are dropped and counted), and a group's
//! member list (at most `max_group_members`) per message.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use switchboard_core::{GroupId, TenantId, UserId};
use switchboard_store::Store;
use tokio::sync::mpsc;
use tracing::warn;

use crate::elsewhere::{presence_elsewhere, SharedElsewhere};
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::state::GroupState;

/// Messages waiting for the notification worker. Beyond this they are dropped (counted in
/// `notifications_dropped`): a push notification is a hint, the message is in the log.
pub const NOTIFY_QUEUE: usize = 4_096;

/// One offline member to notify about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineNotice {
    pub tenant: TenantId,
    pub group: GroupId,
    pub seq: u64,
    pub sender: UserId,
    pub recipient: UserId,
}

/// Where push-notification events go. Called on the notification worker thread; may block
/// (a webhook call), which only delays later notifications.
pub trait NotifySink: Send + Sync + 'static {
    /// One offline member of one message.
    fn notify(&self, notice: &OfflineNotice);

    /// Called after the notices of each message: a sink that batches (one webhook request
    /// per message) sends them here. `Ok(sent)`, or how many were lost and why (counted in
    /// `notifications_failed`; not retried — the message is in the log).
    fn flush(&self) -> Result<usize, (usize, String)> {
        Ok(0)
    }
}

/// The default sink: one `info` log line per notice, target `switchboard::notify`.
#[derive(Debug, Default)]
pub struct LogSink;

impl NotifySink for LogSink {
    fn notify(&self, n: &OfflineNotice) {
        tracing::info!(
            target: "switchboard::notify",
            tenant = %n.tenant,
            group = %n.group,
            seq = n.seq,
            sender = %n.sender,
            recipient = %n.recipient,
            "offline member to notify"
        );
    }
}

/// A published message whose offline members should be notified.
struct NotifyJob {
    tenant: TenantId,
    group: GroupId,
    seq: u64,
    sender: UserId,
}

/// The sink in use, replaceable while the node runs (`Hub::set_notify_sink`).
pub(crate) type SharedSink = Arc<parking_lot::RwLock<Arc<dyn NotifySink>>>;

/// The committer's handle on the notification worker's queue.
pub(crate) struct Notifier {
    tx: mpsc::Sender<NotifyJob>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Queues the notification of `g`'s message `seq` without waiting; a full queue drops
    /// it (counted: a push notification is a hint, the message is in the log).
    pub(crate) fn queue(&self, g: &GroupState, seq: u64, sender: UserId) {
        let job = NotifyJob {
            tenant: g.tenant.clone(),
            group: g.id.clone(),
            seq,
            sender,
        };
        if self.tx.try_send(job).is_err() {
            self.metrics
                .notifications_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the worker thread; it ends when the [`Notifier`] (the committer's) is dropped. It
/// reads the group's members from `store`, skips members connected to this node or (in
/// cluster mode) to another, and hands the rest to the sink.
pub(crate) fn start(
    store: Arc<dyn Store>,
    sessions: Arc<Sessions>,
    elsewhere: SharedElsewhere,
    sink: SharedSink,
    metrics: Arc<Metrics>,
) -> Notifier {
    let (tx, mut rx) = mpsc::channel::<NotifyJob>(NOTIFY_QUEUE);
    let worker_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("switchboard-notify".into())
        .spawn(move || {
            let metrics = worker_metrics;
            while let Some(job) = rx.blocking_recv() {
                let members = match store.members(&job.tenant, &job.group) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "members not read; notifications skipped");
                        continue;
                    }
                };
                let sink = sink.read().clone();
                for recipient in members {
                    if recipient == job.sender
                        || sessions.is_connected(&job.tenant, &recipient)
                        || presence_elsewhere(&elsewhere, &job.tenant, &recipient).is_some()
                    {
                        continue;
                    }
                    sink.notify(&OfflineNotice {
                        tenant: job.tenant.clone(),
                        group: job.group.clone(),
                        seq: job.seq,
                        sender: job.sender.clone(),
                        recipient,
                    });
                    metrics.notifications.fetch_add(1, Ordering::Relaxed);
                }
                if let Err((lost, e)) = sink.flush() {
                    metrics
                        .notifications_failed
                        .fetch_add(lost as u64, Ordering::Relaxed);
                    warn!(lost, error = %e, group = %job.group, seq = job.seq, "push notifications not delivered");
                }
            }
        })
        .expect("spawn the notification worker");
    Notifier { tx, metrics }
}

/// A sink that keeps what it is given (tests, and embedding apps that poll).
#[derive(Debug, Default)]
pub struct MemorySink(pub parking_lot::Mutex<Vec<OfflineNotice>>);

impl NotifySink for MemorySink {
    fn notify(&self, n: &OfflineNotice) {
        self.0.lock().push(n.clone());
    }
}

impl NotifySink for Arc<MemorySink> {
    fn notify(&self, n: &OfflineNotice) {
        self.as_ref().notify(n)
    }
}
