//! [`NodeStore`]: the [`Store`] the node runs on. sled keeps the directory, cursors,
//! receipts and the config store; group messages go to the [`SegmentLog`] (or, for
//! `MessageLog::Sled`, stay in sled as before).
//!
//! # The commit order
//!
//! [`Store::flush`] flushes sled first (when anything was written to it since the last
//! flush), then the segment log (one write and one `fdatasync` per shard touched). An
//! acknowledgement waits for both, so an acked message is in a synced segment. sled goes
//! first because a message depends on sled's records and never the other way round: a
//! group created, or a member added, in the same batch as a message is durable before the
//! message can be, so a crash between the two syncs leaves at worst sled records without
//! the message (which was not acked, and is resent), never a message of a group the
//! directory lost. Cursors and receipts only name messages that were delivered, hence
//! durable in an earlier flush.
//!
//! # Upgrading a sled data directory
//!
//! Opening with `MessageLog::Segment` over a sled store whose `log` tree holds messages
//! migrates them: every message is appended (with its seq) to a new log in
//! `<dir>.migrating`, which is synced and renamed to `<dir>`; then sled's `log` and `dedupe`
//! trees are emptied. A crash before the rename leaves sled as it was (the half-made log is
//! deleted at the next open); a crash after it leaves both, which the next open recognises
//! (every group's head agrees) and finishes. Going back (`MessageLog::Sled` over a data
//! directory whose segment log has messages) is refused with [`StoreError::Io`] naming the
//! directory: the node would otherwise start with every group empty.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use switchboard_core::{GroupId, TenantId, UserId};

use crate::segment::{RetentionReport, RetentionStatus, SegmentLog, SegmentLogConfig};
use crate::{
    Appended, GroupMeta, NewMessage, SledStore, Store, StoreError, StoreHealth, StoredMessage,
    StoredReceipt, TenantRecord,
};

/// Where the node keeps group messages.
#[derive(Debug, Clone)]
pub enum MessageLog {
    /// In sled's `log` and `dedupe` trees (the store before the segment log).
    Sled,
    /// In a [`SegmentLog`].
    Segment(SegmentLogConfig),
    /// In a log another crate implements (the cluster's JetStream log). Nothing is migrated
    /// into it.
    Backend(Arc<dyn LogBackend>),
}

/// The seam for a group-message log that lives outside this crate (the cluster's JetStream
/// log, `switchboard-cluster`): the group-log half of [`Store`], with the same contract
/// (`contract.rs` runs against it). [`NodeStore::flush`] flushes sled before it, so whatever
/// a message depends on in the directory is durable first.
pub trait LogBackend: Send + Sync + std::fmt::Debug + 'static {
    /// [`Store::append`]. A log that fences writers returns [`StoreError::Fenced`] when
    /// another writer appended to the group.
    fn append(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, StoreError>;
    /// [`Store::find_sent`].
    fn find_sent(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError>;
    /// [`Store::head`].
    fn head(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError>;
    /// [`Store::first_seq`].
    fn first_seq(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError>;
    /// [`Store::read_after`].
    fn read_after(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// [`Store::message`].
    fn message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError>;
    /// [`Store::flush`]: every append that returned before it is durable after it.
    fn flush(&self) -> Result<(), StoreError>;
    /// [`Store::health`].
    fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }
}

/// The segment log behind the seam too, so the seam is tested without another crate
/// (`contract.rs`, `segment_backend`).
impl LogBackend for SegmentLog {
    fn append(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, StoreError> {
        SegmentLog::append(self, tenant, group, msg)
    }
    fn find_sent(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        SegmentLog::find_sent(self, tenant, group, sender, client_msg_id)
    }
    fn head(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        Ok(SegmentLog::head(self, tenant, group))
    }
    fn first_seq(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        Ok(SegmentLog::first_seq(self, tenant, group))
    }
    fn read_after(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        SegmentLog::read_after(self, tenant, group, after, limit)
    }
    fn message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        SegmentLog::message(self, tenant, group, seq)
    }
    fn flush(&self) -> Result<(), StoreError> {
        SegmentLog::flush(self)
    }
    fn health(&self) -> StoreHealth {
        SegmentLog::health(self)
    }
}

/// Which log [`NodeStore`] sends group messages to.
#[derive(Clone, Debug)]
enum Messages {
    Sled,
    Segment(SegmentLog),
    Backend(Arc<dyn LogBackend>),
}

/// The seam for a directory shared by several nodes (the cluster's KV bucket,
/// `switchboard-cluster`): the four directory writes of [`Store`]. The implementation
/// writes the shared copy and returns once this node's sled mirrors the change, so a read
/// from sled right after sees it; reads never go through it.
pub trait DirectoryBackend: Send + Sync + std::fmt::Debug + 'static {
    /// [`Store::put_tenant`].
    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError>;
    /// [`Store::create_group`].
    fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        meta: GroupMeta,
    ) -> Result<(), StoreError>;
    /// [`Store::add_member`].
    fn add_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError>;
    /// [`Store::remove_member`].
    fn remove_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError>;
    /// A read found no such record in sled: returns once sled mirrors the shared copy's
    /// record, if it has one (made on another node a moment ago), so a change made on one
    /// node is read on every other right after. Costs a round trip to the shared copy per
    /// miss; the reads that miss are bounded by the caller's rate limits.
    fn catch_up(&self, record: Record<'_>) -> Result<(), StoreError>;
}

/// A directory record a read looked for ([`DirectoryBackend::catch_up`]).
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    Tenant(&'a TenantId),
    Group(&'a TenantId, &'a GroupId),
    Member(&'a TenantId, &'a GroupId, &'a UserId),
}

/// sled for everything but group messages, which go to the [`SegmentLog`] if there is one.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct NodeStore {
    sled: SledStore,
    log: Messages,
    /// Where directory writes go when the directory is shared (cluster mode); sled mirrors
    /// it and serves the reads.
    directory: Option<Arc<dyn DirectoryBackend>>,
    /// sled was written since its last flush (so the next flush must flush it).
    sled_dirty: Arc<AtomicBool>,
}

impl NodeStore {
    /// Opens the store over an open sled store: with `MessageLog::Segment`, opens (and if
    /// needed migrates to) the segment log; see the module docs.
    pub fn open(
        sled: SledStore,
        messages: MessageLog,
        segment_dir: Option<PathBuf>,
    ) -> Result<Self, StoreError> {
        let log = match messages {
            MessageLog::Backend(backend) => Messages::Backend(backend),
            MessageLog::Sled => {
                if let Some(dir) = segment_dir {
                    if SegmentLog::has_records(&dir)? {
                        return Err(StoreError::Io(format!(
                            "{} holds group messages in the segment log, but the node is \
                             configured with `[store] messages = \"sled\"`; set it to \
                             \"segment\" (a segment log is not migrated back to sled)",
                            dir.display()
                        )));
                    }
                }
                Messages::Sled
            }
            MessageLog::Segment(config) => Messages::Segment(open_with_migration(&sled, config)?),
        };
        Ok(Self {
            sled,
            log,
            directory: None,
            sled_dirty: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Sends the directory's writes (tenants, groups, members) to `directory`, a shared
    /// copy this node's sled mirrors; reads stay on sled.
    pub fn with_directory(mut self, directory: Arc<dyn DirectoryBackend>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// The sled store (directory, cursors, receipts, and the config store).
    pub fn sled(&self) -> &SledStore {
        &self.sled
    }

    /// The segment log, if messages are kept there.
    pub fn segment_log(&self) -> Option<&SegmentLog> {
        match &self.log {
            Messages::Segment(log) => Some(log),
            _ => None,
        }
    }

    /// Passes a sled write's result on, noting that sled needs a flush.
    fn wrote<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.sled_dirty.store(true, Ordering::SeqCst);
        result
    }
}

fn open_with_migration(
    sled: &SledStore,
    config: SegmentLogConfig,
) -> Result<SegmentLog, StoreError> {
    let dir = config.dir.clone();
    let mut aside = dir.clone().into_os_string();
    aside.push(".migrating");
    let aside = PathBuf::from(aside);
    if aside.exists() {
        tracing::warn!(dir = %aside.display(), "deleting an unfinished migration");
        std::fs::remove_dir_all(&aside)
            .map_err(|e| StoreError::Io(format!("delete {}: {e}", aside.display())))?;
    }
    if !sled.has_messages()? {
        return SegmentLog::open(config);
    }
    if SegmentLog::has_records(&dir)? {
        // Both hold messages: a migration that was cut short after its rename, unless
        // someone ran the node on sled again after migrating.
        let log = SegmentLog::open(config)?;
        let mut agree = true;
        sled.export_messages(|tenant, group, m| {
            if m.seq > log.head(tenant, group) {
                agree = false;
            }
            Ok(())
        })?;
        if !agree {
            return Err(StoreError::Io(format!(
                "both sled and the segment log in {} hold messages the other lacks; was the \
                 node run with `messages = \"sled\"` after migrating? Move one of them away",
                dir.display()
            )));
        }
        sled.clear_messages()?;
        tracing::info!("finished an interrupted migration of messages to the segment log");
        return Ok(log);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| StoreError::Io(format!("delete {}: {e}", dir.display())))?;
    }
    tracing::info!(to = %dir.display(), "migrating group messages from sled to the segment log");
    let started = std::time::Instant::now();
    let target = SegmentLog::open(SegmentLogConfig {
        dir: aside.clone(),
        ..config.clone()
    })?;
    let moved = sled.export_messages(|tenant, group, m| {
        let appended = target.append(
            tenant,
            group,
            NewMessage {
                sender: &m.sender,
                lane: m.lane,
                client_msg_id: &m.client_msg_id,
                sent_at_ms: m.sent_at_ms,
                body: &m.body,
            },
        )?;
        match appended {
            Appended::New { seq } if seq == m.seq => Ok(()),
            other => Err(StoreError::Corrupt {
                tree: "log",
                detail: format!(
                    "migrating {tenant}/{group}: seq {} became {other:?} (a gap in sled's log?)",
                    m.seq
                ),
            }),
        }
    })?;
    target.flush()?;
    drop(target);
    std::fs::rename(&aside, &dir)
        .map_err(|e| StoreError::Io(format!("rename {}: {e}", aside.display())))?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::Io(format!("sync {}: {e}", parent.display())))?;
    }
    let log = SegmentLog::open(config)?;
    sled.clear_messages()?;
    tracing::info!(
        messages = moved,
        ms = started.elapsed().as_millis() as u64,
        "migrated group messages from sled to the segment log"
    );
    Ok(log)
}

impl Store for NodeStore {
    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        match &self.directory {
            Some(d) => d.put_tenant(tenant),
            None => self.wrote(self.sled.put_tenant(tenant)),
        }
    }
    fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        match (self.sled.tenant(id)?, &self.directory) {
            (None, Some(d)) => {
                d.catch_up(Record::Tenant(id))?;
                self.sled.tenant(id)
            }
            (found, _) => Ok(found),
        }
    }
    fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.sled.tenants()
    }
    fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        meta: GroupMeta,
    ) -> Result<(), StoreError> {
        match &self.directory {
            Some(d) => d.create_group(tenant, group, meta),
            None => self.wrote(self.sled.create_group(tenant, group, meta)),
        }
    }
    fn group(&self, tenant: &TenantId, group: &GroupId) -> Result<Option<GroupMeta>, StoreError> {
        match (self.sled.group(tenant, group)?, &self.directory) {
            (None, Some(d)) => {
                d.catch_up(Record::Group(tenant, group))?;
                self.sled.group(tenant, group)
            }
            (found, _) => Ok(found),
        }
    }
    fn add_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        match &self.directory {
            Some(d) => d.add_member(tenant, group, user),
            None => self.wrote(self.sled.add_member(tenant, group, user)),
        }
    }
    fn remove_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        match &self.directory {
            Some(d) => d.remove_member(tenant, group, user),
            None => self.wrote(self.sled.remove_member(tenant, group, user)),
        }
    }
    fn is_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        match (self.sled.is_member(tenant, group, user)?, &self.directory) {
            (false, Some(d)) => {
                d.catch_up(Record::Member(tenant, group, user))?;
                self.sled.is_member(tenant, group, user)
            }
            (found, _) => Ok(found),
        }
    }
    fn members(&self, tenant: &TenantId, group: &GroupId) -> Result<Vec<UserId>, StoreError> {
        self.sled.members(tenant, group)
    }
    fn member_count(&self, tenant: &TenantId, group: &GroupId) -> Result<Option<u32>, StoreError> {
        Store::member_count(&self.sled, tenant, group)
    }
    fn groups(&self, tenant: &TenantId) -> Result<Vec<GroupId>, StoreError> {
        self.sled.groups(tenant)
    }
    fn groups_of(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<GroupId>, StoreError> {
        self.sled.groups_of(tenant, user)
    }

    fn append(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, StoreError> {
        match &self.log {
            Messages::Segment(log) => log.append(tenant, group, msg),
            Messages::Backend(log) => log.append(tenant, group, msg),
            Messages::Sled => self.wrote(self.sled.append(tenant, group, msg)),
        }
    }
    fn find_sent(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        match &self.log {
            Messages::Segment(log) => log.find_sent(tenant, group, sender, client_msg_id),
            Messages::Backend(log) => log.find_sent(tenant, group, sender, client_msg_id),
            Messages::Sled => self.sled.find_sent(tenant, group, sender, client_msg_id),
        }
    }
    fn head(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        match &self.log {
            Messages::Segment(log) => Ok(log.head(tenant, group)),
            Messages::Backend(log) => log.head(tenant, group),
            Messages::Sled => self.sled.head(tenant, group),
        }
    }
    fn first_seq(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        match &self.log {
            Messages::Segment(log) => Ok(log.first_seq(tenant, group)),
            Messages::Backend(log) => log.first_seq(tenant, group),
            Messages::Sled => self.sled.first_seq(tenant, group),
        }
    }
    fn read_after(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        match &self.log {
            Messages::Segment(log) => log.read_after(tenant, group, after, limit),
            Messages::Backend(log) => log.read_after(tenant, group, after, limit),
            Messages::Sled => self.sled.read_after(tenant, group, after, limit),
        }
    }
    fn message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        match &self.log {
            Messages::Segment(log) => log.message(tenant, group, seq),
            Messages::Backend(log) => log.message(tenant, group, seq),
            Messages::Sled => self.sled.message(tenant, group, seq),
        }
    }

    fn advance_cursor(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
        seq: u64,
    ) -> Result<u64, StoreError> {
        self.wrote(self.sled.advance_cursor(tenant, group, user, seq))
    }
    fn cursor(&self, tenant: &TenantId, group: &GroupId, user: &UserId) -> Result<u64, StoreError> {
        self.sled.cursor(tenant, group, user)
    }
    fn put_receipt(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
        receipt: &StoredReceipt,
    ) -> Result<(), StoreError> {
        self.wrote(self.sled.put_receipt(tenant, group, seq, receipt))
    }
    fn receipts(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        self.sled.receipts(tenant, group, seq)
    }

    /// sled first (if it was written since its last flush), then the segment log: see the
    /// module docs for why this order.
    fn flush(&self) -> Result<(), StoreError> {
        if self.sled_dirty.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.sled.flush() {
                self.sled_dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        match &self.log {
            Messages::Segment(log) => log.flush(),
            Messages::Backend(log) => log.flush(),
            Messages::Sled => Ok(()),
        }
    }

    fn free_bytes(&self) -> Option<u64> {
        Store::free_bytes(&self.sled)
    }

    fn health(&self) -> StoreHealth {
        match SledStore::health(&self.sled) {
            StoreHealth::Ok => match &self.log {
                Messages::Segment(log) => log.health(),
                Messages::Backend(log) => log.health(),
                Messages::Sled => StoreHealth::Ok,
            },
            failed => failed,
        }
    }

    /// Reopens whichever part failed: sled, the segment log, or both.
    fn recover(&self) -> Result<bool, StoreError> {
        let sled = SledStore::recover(&self.sled)?;
        if sled {
            self.sled_dirty.store(true, Ordering::SeqCst);
        }
        let log = match &self.log {
            Messages::Segment(log) => log.recover()?,
            // A backend reconnects by itself (the NATS client does).
            Messages::Sled | Messages::Backend(_) => false,
        };
        Ok(sled || log)
    }

    /// The secrets live in sled; the message log holds none.
    fn rotate_secrets_key(&self) -> Result<(u32, usize), StoreError> {
        self.sled.rotate_secrets_key()
    }

    fn retention(&self) -> Option<RetentionStatus> {
        self.segment_log().map(SegmentLog::retention_status)
    }

    /// Runs retention on the segment log (nothing to do for messages in sled).
    fn enforce_retention(&self, now_ms: u64) -> Result<RetentionReport, StoreError> {
        match &self.log {
            Messages::Segment(log) => log.enforce_retention(now_ms),
            // A backend keeps its own retention (JetStream's stream limits).
            Messages::Sled | Messages::Backend(_) => Ok(RetentionReport::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{g, msg, open_sled, t, u};

    fn segment(dir: &std::path::Path) -> MessageLog {
        MessageLog::Segment(SegmentLogConfig::new(dir.join("messages")))
    }

    /// A sled store with messages in two groups, flushed, closed.
    fn sled_with_messages(dir: &std::path::Path) {
        let sled = open_sled(dir);
        for i in 0..30 {
            let group = if i % 3 == 0 { "a" } else { "b" };
            sled.append(
                &t("acme"),
                &g(group),
                msg(&u("ann"), &format!("m{i}"), b"body"),
            )
            .unwrap();
        }
        sled.advance_cursor(&t("acme"), &g("a"), &u("ann"), 4)
            .unwrap();
        Store::flush(&sled).unwrap();
    }

    #[test]
    fn a_sled_message_log_is_migrated_on_open_with_seqs_and_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        sled_with_messages(dir.path());
        let store = NodeStore::open(open_sled(dir.path()), segment(dir.path()), None).unwrap();
        assert!(
            !store.sled().has_messages().unwrap(),
            "sled's log was emptied"
        );
        assert_eq!(store.head(&t("acme"), &g("a")).unwrap(), 10);
        assert_eq!(store.head(&t("acme"), &g("b")).unwrap(), 20);
        let b = store.read_after(&t("acme"), &g("b"), 0, 100).unwrap();
        assert_eq!(b.len(), 20);
        assert_eq!(b[0].client_msg_id, "m1");
        assert_eq!(
            store
                .append(&t("acme"), &g("a"), msg(&u("ann"), "m27", b""))
                .unwrap(),
            Appended::Duplicate { seq: 10 }
        );
        assert_eq!(store.cursor(&t("acme"), &g("a"), &u("ann")).unwrap(), 4);
        drop(store);
        // Opening again finds nothing to migrate and the same log.
        let store = NodeStore::open(open_sled(dir.path()), segment(dir.path()), None).unwrap();
        assert_eq!(store.head(&t("acme"), &g("b")).unwrap(), 20);
    }

    #[test]
    fn a_migration_cut_short_is_redone_or_finished() {
        let dir = tempfile::tempdir().unwrap();
        sled_with_messages(dir.path());
        // Cut short before the rename: a half-made log aside, nothing in place.
        let aside = dir.path().join("messages.migrating");
        std::fs::create_dir_all(aside.join("shard-000")).unwrap();
        std::fs::write(aside.join("shard-000").join("junk.seg"), b"junk").unwrap();
        let store = NodeStore::open(open_sled(dir.path()), segment(dir.path()), None).unwrap();
        assert!(!aside.exists());
        assert_eq!(store.head(&t("acme"), &g("b")).unwrap(), 20);
        drop(store);

        // Cut short after the rename: both hold the messages; the next open finishes.
        let dir = tempfile::tempdir().unwrap();
        sled_with_messages(dir.path());
        let log = SegmentLog::open(SegmentLogConfig::new(dir.path().join("messages"))).unwrap();
        open_sled(dir.path())
            .export_messages(|tenant, group, m| {
                log.append(tenant, group, msg(&m.sender, &m.client_msg_id, &m.body))
                    .map(|_| ())
            })
            .unwrap();
        log.flush().unwrap();
        drop(log);
        let store = NodeStore::open(open_sled(dir.path()), segment(dir.path()), None).unwrap();
        assert!(!store.sled().has_messages().unwrap());
        assert_eq!(store.head(&t("acme"), &g("a")).unwrap(), 10);
    }

    #[test]
    fn going_back_to_sled_or_disagreeing_logs_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(open_sled(dir.path()), segment(dir.path()), None).unwrap();
        store
            .append(&t("acme"), &g("a"), msg(&u("ann"), "1", b""))
            .unwrap();
        store.flush().unwrap();
        drop(store);
        let err = NodeStore::open(
            open_sled(dir.path()),
            MessageLog::Sled,
            Some(dir.path().join("messages")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("messages = \"sled\""), "{err}");

        // Messages in both, and sled has one the log lacks: refused, nothing touched.
        let sled = open_sled(dir.path());
        sled.append(&t("acme"), &g("a"), msg(&u("ann"), "x", b""))
            .unwrap();
        sled.append(&t("acme"), &g("a"), msg(&u("ann"), "y", b""))
            .unwrap();
        Store::flush(&sled).unwrap();
        let err = NodeStore::open(sled, segment(dir.path()), None).unwrap_err();
        assert!(
            err.to_string().contains("both sled and the segment log"),
            "{err}"
        );
    }

    #[test]
    fn sled_is_flushed_only_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(open_sled(dir.path()), segment(dir.path()), None).unwrap();
        store.flush().unwrap();
        assert!(!store.sled_dirty.load(Ordering::SeqCst));
        store
            .append(&t("acme"), &g("a"), msg(&u("ann"), "1", b""))
            .unwrap();
        assert!(
            !store.sled_dirty.load(Ordering::SeqCst),
            "appends are not sled's"
        );
        store
            .advance_cursor(&t("acme"), &g("a"), &u("ann"), 1)
            .unwrap();
        assert!(store.sled_dirty.load(Ordering::SeqCst));
        store.flush().unwrap();
        assert!(!store.sled_dirty.load(Ordering::SeqCst));
    }
}
