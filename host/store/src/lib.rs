//! Switchboard's storage: the [`Store`] trait the node is written against; [`NodeStore`], the
//! node's store (group messages in the append-only [`segment`] log, the rest in sled);
//! [`SledStore`], which keeps everything in sled (messages too, before the segment log);
//! [`LogBackend`], the seam through which a group log of another crate (the cluster's
//! JetStream log) serves `NodeStore`'s group messages.
//!
//! What is stored: the tenant directory (tenants and their secrets, groups and members),
//! per-group message logs with per-sender dedupe of client message ids, per-member delivery
//! cursors, and receipts (in a tree of their own so receipt volume never slows the log).
//! [`ConfigStore`] (in [`config`]) holds what operators and tenants change live: plugin
//! versions, policy bindings, flags, quotas, API keys and the degradation override.
//!
//! Durability contract: writes are buffered; they are durable only once [`Store::flush`] has
//! returned after them. The node acknowledges a message only after a flush that covers it
//! (group commit: one flush covers every write made before it started). [`ConfigStore`]
//! writes are the exception: each is durable before it returns.
//!
//! # On disk ([`SledStore`])
//!
//! Seven sled trees: `directory` (tenants; groups with their member count; members; a per-user
//! index of memberships, so `groups_of` is a prefix scan), `log`, `dedupe`, `cursors`,
//! `receipts`, `config` (every config record, tagged by kind like the directory) and `plugins`
//! (plugin bytes alone, so config scans never page them in). Keys are built from components:
//! every id but the last is length-prefixed with one byte (ids are at most 64 bytes; config
//! keys end in free-form strings), the last component runs to the end of the key, and
//! sequence numbers are big-endian `u64`. So two different component lists never share a key
//! (tenant `a` + group `bc` is not tenant `ab` + group `c`), a group's log scans in sequence
//! order, and member and group lists come out of a scan already sorted.
//!
//! | tree      | key (`‹x›`: length-prefixed)            | value                                  |
//! |-----------|-----------------------------------------|----------------------------------------|
//! | directory | `T` tenant                              | secret, sealed ([`secrets`])           |
//! |           | `G` ‹tenant› group                      | open flag, max_members, member count   |
//! |           | `M` ‹tenant› ‹group› user               | empty                                  |
//! |           | `U` ‹tenant› ‹user› group               | empty                                  |
//! | log       | ‹tenant› ‹group› seq                    | sent_at_ms, ‹sender›, ‹client_msg_id›, body |
//! | dedupe    | ‹tenant› ‹group› ‹sender› client_msg_id | seq                                    |
//! | cursors   | ‹tenant› ‹group› user                   | seq                                    |
//! | receipts  | ‹tenant› ‹group› seq user               | kind, at_ms                            |
//! | config    | `P` ‹tenant› version                    | size, uploaded_at_ms, uploader, imports |
//! |           | `B` tenant                              | binding (active, previous, canary, last rollback, revision, updated_at_ms) |
//! |           | `F` tenant                              | flag rules                             |
//! |           | `Q` tenant                              | quotas                                 |
//! |           | `K` ‹tenant› key id                     | API key record (tenant, id, hash, created_at_ms, label) |
//! |           | `H` key hash (32 bytes)                 | the same API key record (the index)    |
//! |           | `D`                                     | degradation level                      |
//! | plugins   | ‹tenant› version                        | component bytes                        |
//!
//! Values are hand-written big-endian binary that starts with a version byte (now 1); the
//! empty marker values have none. A value that does not decode is [`StoreError::Corrupt`].
//! An API key's record and its hash index hold the same bytes and change in one transaction,
//! as do a plugin version's metadata and bytes; the config watch maps each `config` key back
//! to a [`ConfigChange`] by its tag (`H` is skipped: its `K` record reports the change).
//! sled's default tree holds a format marker, checked on open.
//!
//! Only this crate knows sled.

use bytes::Bytes;
use switchboard_core::{GroupId, Lane, ReceiptKind, TenantId, UserId};

pub mod config;
#[cfg(any(test, feature = "contract"))]
pub mod contract;
mod mem;
mod node_store;
pub mod secrets;
pub mod segment;
mod sled_store;
#[cfg(any(test, feature = "contract"))]
mod test_ids;

pub use config::{
    ApiKeyRecord, BindingRefused, Canary, ConfigChange, ConfigStore, ConfigWatch, FlagRule,
    PluginVersion, PolicyBinding, RollbackRecord, TenantQuotas, VersionConfig,
    MAX_PLUGIN_LABEL_CHARS,
};
pub use mem::MemStore;
pub use node_store::{DirectoryBackend, LogBackend, MessageLog, NodeStore, Record};
pub use secrets::{KeyRing, SecretsError};
pub use segment::{
    Retention, RetentionLimits, RetentionReport, RetentionStatus, SegmentLog, SegmentLogConfig,
};
pub use sled_store::{replica, SledStore, SledStoreConfig, StoreHealth};

/// Why a storage operation failed. Never means "partially applied" (every write is atomic),
/// except [`StoreError::OutcomeUnknown`], which says the write may have been applied.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying storage failed (I/O error, disk full, corruption).
    #[error("storage failure: {0}")]
    Io(String),
    /// A stored record could not be decoded (corruption or a version mismatch).
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    /// The group does not exist.
    #[error("group {0} not found")]
    GroupNotFound(GroupId),
    /// The group already exists.
    #[error("group {0} already exists")]
    GroupExists(GroupId),
    /// Adding the member would exceed the group's member limit.
    #[error("group {group} is full ({max} members)")]
    GroupFull { group: GroupId, max: u32 },
    /// Tenant secrets could not be sealed or opened: a missing or wrong store key file
    /// ([`secrets`]).
    #[error("tenant secrets: {0}")]
    Secrets(#[from] SecretsError),
    /// A write was made but could not be made durable, and may or may not survive (an
    /// append whose second write failed). The caller cannot tell the client "not stored".
    #[error("storage failure after the write (outcome unknown): {0}")]
    OutcomeUnknown(String),
    /// A replicated log refused the append because another writer appended to the group
    /// since this one last did (the expected-predecessor check): this node no longer owns the
    /// group's shard. Nothing was written; the node must stop appending to the shard.
    #[error("fenced: {0}")]
    Fenced(String),
}

/// A tenant: an app's backend with its own token-signing secret. Its `Debug` shows the
/// secret's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: TenantId,
    /// HMAC-SHA256 key for client tokens. Sealed at rest ([`secrets`]).
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TenantRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRecord")
            .field("id", &self.id)
            .field(
                "secret",
                &format_args!("<redacted, {} bytes>", self.secret.len()),
            )
            .finish()
    }
}

/// Settings of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupMeta {
    /// Any user of the tenant may join an open group; closed groups are managed by the tenant.
    pub open: bool,
    /// Most members the group may have.
    pub max_members: u32,
}

/// A message as stored in a group's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    /// The lane the tenant's policy chose when the message was accepted.
    pub lane: Lane,
    pub sender: UserId,
    pub client_msg_id: String,
    pub sent_at_ms: u64,
    pub body: Bytes,
}

/// A message to append to a group's log.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    pub sender: &'a UserId,
    pub lane: Lane,
    pub client_msg_id: &'a str,
    pub sent_at_ms: u64,
    pub body: &'a [u8],
}

/// The outcome of [`Store::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Written with this new sequence number.
    New { seq: u64 },
    /// `(sender, client_msg_id)` was already in the log with this sequence number; nothing
    /// was written.
    Duplicate { seq: u64 },
}

impl Appended {
    pub fn seq(self) -> u64 {
        match self {
            Self::New { seq } | Self::Duplicate { seq } => seq,
        }
    }
}

/// Whether a stored receipt of kind `stored` stays when a receipt of kind `new` arrives: a
/// receipt is never downgraded (`Read` stays), and a repeated one keeps the time it was first
/// recorded. Every [`Store`] follows this rule.
pub(crate) fn keeps_stored_receipt(stored: Option<ReceiptKind>, new: ReceiptKind) -> bool {
    match stored {
        None => false,
        Some(ReceiptKind::Read) => true,
        Some(ReceiptKind::Delivered) => new == ReceiptKind::Delivered,
    }
}

/// A receipt as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    pub user: UserId,
    pub kind: ReceiptKind,
    pub at_ms: u64,
}

/// Everything the node needs from storage. Implementations are cheap to share (`Arc`) and
/// safe to call from many threads; calls are synchronous and short except [`Store::flush`].
pub trait Store: Send + Sync + 'static {
    // --- directory ---
    /// Creates or replaces a tenant.
    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError>;
    fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError>;
    fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;
    /// Creates a group; `GroupExists` if it is there already.
    fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        meta: GroupMeta,
    ) -> Result<(), StoreError>;
    fn group(&self, tenant: &TenantId, group: &GroupId) -> Result<Option<GroupMeta>, StoreError>;
    /// Adds a member; Ok(false) if already a member; `GroupFull` / `GroupNotFound` otherwise.
    fn add_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError>;
    /// Removes a member; Ok(false) if it was not a member.
    fn remove_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError>;
    fn is_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError>;
    /// Members of a group, sorted.
    fn members(&self, tenant: &TenantId, group: &GroupId) -> Result<Vec<UserId>, StoreError>;
    /// How many members a group has (a stored count, not a scan); `None` for no such group.
    fn member_count(&self, tenant: &TenantId, group: &GroupId) -> Result<Option<u32>, StoreError>;
    /// A tenant's groups, sorted.
    fn groups(&self, tenant: &TenantId) -> Result<Vec<GroupId>, StoreError>;
    /// Groups a user belongs to, sorted.
    fn groups_of(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<GroupId>, StoreError>;

    // --- group logs ---
    /// Appends a message with the next sequence number (the first is 1), or finds the earlier
    /// append of the same `(sender, client_msg_id)`. Atomic. Callers serialise appends to one
    /// group (the node holds the group's lock); appends to different groups may run at once.
    fn append(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, StoreError>;
    /// The sequence number an earlier append of `(sender, client_msg_id)` got, if any.
    fn find_sent(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError>;
    /// Newest sequence number of a group, 0 when empty.
    fn head(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError>;
    /// Up to `limit` messages with `seq > after`, in order.
    fn read_after(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// Oldest retained sequence number of a group: 1 unless retention deleted older
    /// messages ([`segment`]); `head + 1` when every message is gone. Reads below it find
    /// nothing: [`Store::read_after`] of a trimmed range starts at this seq.
    fn first_seq(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        let _ = (tenant, group);
        Ok(1)
    }
    /// One message.
    fn message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError>;

    // --- cursors ---
    /// Raises a member's delivery cursor to `seq` (never lowers it). Returns the new value.
    fn advance_cursor(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
        seq: u64,
    ) -> Result<u64, StoreError>;
    /// A member's delivery cursor, 0 if none.
    fn cursor(&self, tenant: &TenantId, group: &GroupId, user: &UserId) -> Result<u64, StoreError>;

    // --- receipts (own tree) ---
    /// Records `user`'s receipt for message `seq`; a later `Read` supersedes `Delivered`.
    fn put_receipt(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
        receipt: &StoredReceipt,
    ) -> Result<(), StoreError>;
    fn receipts(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Vec<StoredReceipt>, StoreError>;

    // --- durability ---
    /// Makes every write that returned before this call durable (fsync). Blocking.
    fn flush(&self) -> Result<(), StoreError>;

    /// Bytes free for the store on its file system, if the store lives on one. The node
    /// refuses new writes while this is under its reserve (`min_free_disk_bytes`): sled
    /// blocks forever, rather than failing, when the disk is completely full.
    fn free_bytes(&self) -> Option<u64> {
        None
    }

    /// Whether the store works. A store whose storage failed (an I/O error such as a full
    /// disk) refuses writes until [`Store::recover`] has reopened it.
    fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }

    /// Reopens a failed store (see [`SledStore::recover`]); `Ok(false)` when it works.
    /// Blocking.
    fn recover(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Rotates the store key while the store is in use (see
    /// [`SledStore::rotate_secrets_key`]): returns the new key's id and how many tenant
    /// secrets were sealed again. A store that seals no secrets refuses with
    /// [`SecretsError::NotSealed`]. Blocking (it rewrites and syncs the key file and the
    /// records).
    fn rotate_secrets_key(&self) -> Result<(u32, usize), StoreError> {
        Err(SecretsError::NotSealed.into())
    }

    /// Retention of group messages, if this store deletes old ones itself (the segment
    /// log): its limits and what the retained messages take on disk. `None` for a store that
    /// keeps every message, or whose backend keeps its own limits (JetStream).
    fn retention(&self) -> Option<RetentionStatus> {
        None
    }

    /// Runs a retention pass now (the node also runs one every `retention_check_s`):
    /// deletes the whole segments every group in them is done with. Blocking. A store
    /// without retention deletes nothing.
    fn enforce_retention(&self, now_ms: u64) -> Result<RetentionReport, StoreError> {
        let _ = now_ms;
        Ok(RetentionReport::default())
    }
}
