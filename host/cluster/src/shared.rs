//! [`SharedStore`]: the directory (tenants, groups, members) and the config store (plugin
//! versions, bindings, flags, quotas, API keys, the degradation override) shared by every
//! node of a cluster, so the admin API works on any node and a change made on one is served
//! by all.
//!
//! # Design
//!
//! The shared copy is one JetStream KV bucket, `<prefix>-dir` (history 1, file storage,
//! `replicas` copies), a key per record (see [`Key`]); plugin bytes are in the object store
//! `<prefix>-plugins`, named by tenant and SHA-256. Every node **mirrors** the bucket into
//! its own sled: a watcher task reads the bucket in order (every key's latest value at
//! start, then each change) and applies each entry with sled's own writes, so sled's config
//! watch fires and the control plane's reconcile path applies a binding, flag or override
//! exactly as it does on one node. Reads are sled's, with no IO.
//!
//! A write goes to the bucket first — compare-and-swap where two nodes could race: a group
//! or member is a `create` (refused when the key exists), a binding an `update` naming the
//! revision it read — and then waits until this node's mirror applied the write's revision,
//! so the caller reads its own write at once. Another node sees it when its watcher gets
//! there (milliseconds; `docs/benchmarks.md` has the figure). Because every mirror applies
//! the same entries in the same order from the same start, every node makes the same
//! decisions: a member key past a group's `max_members` is refused by every mirror alike,
//! and the node that wrote it deletes it again and answers `GroupFull`.
//!
//! A tenant's secret travels sealed with the store key (`SledStore::seal_tenant`), so every
//! node of a cluster must hold the same store key (`SWITCHBOARD_STORE_KEY` or the same key
//! file); a node with another key logs the tenant as unreadable and cannot serve it.
//!
//! Bounds: a record at most [`MAX_RECORD_BYTES`] (the bucket's `max_value_size`), a plugin
//! at most [`MAX_PLUGIN_BYTES`] (checked against the stored size before it is fetched, and
//! while reading), a write waits at most `apply_wait` for the mirror (past it the write is
//! stored but this node has not applied it yet: `OutcomeUnknown`), at most
//! [`MAX_CAS_ATTEMPTS`] compare-and-swap rounds per binding update. Every node holds a copy
//! of the whole directory, as one node does today. Deleted keys (members who left, API
//! keys) leave a marker in the bucket.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use switchboard_core::{GroupId, TenantId, UserId};
use switchboard_store::{
    replica, ApiKeyRecord, BindingRefused, ConfigStore, ConfigWatch, DirectoryBackend, FlagRule,
    GroupMeta, LogBackend, PluginVersion, PolicyBinding, Record, SledStore, Store, StoreError,
    TenantQuotas, TenantRecord,
};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::members::open_bucket;
use crate::names::{decode_kv_token, encode_kv_token, LogNames};
use crate::{ClusterError, JetStreamLog};

/// Largest record in the bucket (a binding with its previous versions and configs is the
/// largest kind).
pub const MAX_RECORD_BYTES: i32 = 1 << 20;

/// Largest plugin the object store hands a node (the node's own upload limit is lower).
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// Longest the mirror waits for one plugin's bytes from the object store. A version whose
/// upload was refused is deleted (key, then object) while other nodes may be reading it, and
/// a read of chunks that were purged under it waits forever: the mirror would stop there and
/// apply nothing after it. Past this the version is not applied on this node (logged, as a
/// mismatch is).
pub const PLUGIN_FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Most compare-and-swap rounds of one binding update before it gives up (each lost round
/// means another node changed the binding in between).
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// How long a write waits for this node's mirror to apply it, by default.
pub const DEFAULT_APPLY_WAIT: Duration = Duration::from_secs(10);

/// The key check's record: an id no tenant can collide with in the bucket (it has a key
/// of its own) and a fixed secret.
const KEY_CHECK_ID: &str = "keycheck";
const KEY_CHECK_SECRET: &[u8] = b"switchboard cluster store key check";

/// How long a node waits at start for its mirror to catch up with the bucket.
const START_SYNC_WAIT: Duration = Duration::from_secs(120);

/// The directory and config store shared through NATS, mirrored in this node's sled. Cheap
/// to clone.
#[derive(Clone)]
pub struct SharedStore {
    inner: Arc<Inner>,
}

struct Inner {
    kv: kv::Store,
    objects: object_store::ObjectStore,
    local: SledStore,
    log: Arc<JetStreamLog>,
    /// The newest bucket revision this node's mirror has applied.
    applied: watch::Receiver<u64>,
    /// The revision of the newest entry the mirror could not apply, and why.
    failed: Arc<Mutex<Option<(u64, String)>>>,
    apply_wait: Duration,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("bucket", &self.inner.kv.name)
            .field("applied", &*self.inner.applied.borrow())
            .finish_non_exhaustive()
    }
}

/// A record's key in the bucket. Ids are encoded as in subjects (`names::encode_token`)
/// with `=` for `~`, which KV keys do not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Tenant(TenantId),
    Group(TenantId, GroupId),
    Member(TenantId, GroupId, UserId),
    Binding(TenantId),
    Flags(TenantId),
    Quotas(TenantId),
    ApiKey(TenantId, String),
    Plugin(TenantId, String),
    Degradation,
    /// A value sealed with the store key of the node that made the bucket: a node that
    /// cannot open it holds another key, and refuses to start.
    KeyCheck,
}

impl Key {
    pub fn render(&self) -> String {
        match self {
            Key::Tenant(t) => format!("tenant.{}", encode_kv_token(t.as_str())),
            Key::Group(t, g) => format!(
                "group.{}.{}",
                encode_kv_token(t.as_str()),
                encode_kv_token(g.as_str())
            ),
            Key::Member(t, g, u) => format!(
                "member.{}.{}.{}",
                encode_kv_token(t.as_str()),
                encode_kv_token(g.as_str()),
                encode_kv_token(u.as_str())
            ),
            Key::Binding(t) => format!("binding.{}", encode_kv_token(t.as_str())),
            Key::Flags(t) => format!("flags.{}", encode_kv_token(t.as_str())),
            Key::Quotas(t) => format!("quotas.{}", encode_kv_token(t.as_str())),
            Key::ApiKey(t, id) => format!(
                "apikey.{}.{}",
                encode_kv_token(t.as_str()),
                encode_kv_token(id)
            ),
            Key::Plugin(t, v) => format!(
                "plugin.{}.{}",
                encode_kv_token(t.as_str()),
                encode_kv_token(v)
            ),
            Key::Degradation => "degradation".to_owned(),
            Key::KeyCheck => "keycheck".to_owned(),
        }
    }

    /// The key `s` renders, or `None` for anything [`Key::render`] cannot produce.
    pub fn parse(s: &str) -> Option<Key> {
        let parts: Vec<&str> = s.split('.').collect();
        let tenant = |i: usize| TenantId::new(&decode_kv_token(parts.get(i)?)?).ok();
        let group = |i: usize| GroupId::new(&decode_kv_token(parts.get(i)?)?).ok();
        let text = |i: usize| decode_kv_token(parts.get(i)?);
        let key = match (parts[0], parts.len()) {
            ("tenant", 2) => Key::Tenant(tenant(1)?),
            ("group", 3) => Key::Group(tenant(1)?, group(2)?),
            ("member", 4) => Key::Member(tenant(1)?, group(2)?, UserId::new(&text(3)?).ok()?),
            ("binding", 2) => Key::Binding(tenant(1)?),
            ("flags", 2) => Key::Flags(tenant(1)?),
            ("quotas", 2) => Key::Quotas(tenant(1)?),
            ("apikey", 3) => Key::ApiKey(tenant(1)?, text(2)?),
            ("plugin", 3) => Key::Plugin(tenant(1)?, text(2)?),
            ("degradation", 1) => Key::Degradation,
            ("keycheck", 1) => Key::KeyCheck,
            _ => return None,
        };
        Some(key)
    }
}

/// The bucket's newest revision, asked of the server (`kv::Store::status` answers from
/// what the store learnt when it was opened).
async fn last_revision(js: &jetstream::Context, kv: &kv::Store) -> Result<u64, ClusterError> {
    let stream = js
        .get_stream(kv.stream_name.as_str())
        .await
        .map_err(|e| nats_err("bucket info", e))?;
    Ok(stream.cached_info().state.last_sequence)
}

fn object_name(tenant: &TenantId, version: &str) -> String {
    format!(
        "{}.{}",
        encode_kv_token(tenant.as_str()),
        encode_kv_token(version)
    )
}

fn nats_err(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Config(format!("shared directory: {what}: {e}"))
}

impl SharedStore {
    /// Opens (or creates) the bucket and the object store of `prefix`, starts this node's
    /// mirror into `local`, and returns once the mirror caught up with the bucket as it was
    /// when this call began (every node starts from the same directory).
    pub fn open(
        log: Arc<JetStreamLog>,
        local: SledStore,
        replicas: usize,
    ) -> Result<Self, ClusterError> {
        let names: LogNames = log.names().clone();
        let js = log.jetstream();
        let (kv, objects, head) = log.run("open the shared directory", async move {
            let bucket = format!("{}-dir", names.prefix());
            let kv = open_bucket(
                &js,
                kv::Config {
                    bucket,
                    history: 1,
                    max_value_size: MAX_RECORD_BYTES,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                },
            )
            .await?;
            let objects_name = format!("{}-plugins", names.prefix());
            let objects = match js.get_object_store(objects_name.as_str()).await {
                Ok(o) => o,
                Err(_) => js
                    .create_object_store(object_store::Config {
                        bucket: objects_name.clone(),
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| nats_err(&objects_name, e))?,
            };
            let head = last_revision(&js, &kv).await?;
            Ok((kv, objects, head))
        })?;
        let (applied_tx, applied) = watch::channel(0u64);
        let failed = Arc::new(Mutex::new(None));
        let mirror = Mirror {
            kv: kv.clone(),
            objects: objects.clone(),
            local: local.clone(),
            applied: applied_tx,
            failed: failed.clone(),
        };
        log.runtime().spawn(mirror.run());
        let store = Self {
            inner: Arc::new(Inner {
                kv,
                objects,
                local,
                log,
                applied,
                failed,
                apply_wait: DEFAULT_APPLY_WAIT,
            }),
        };
        store.wait_applied_for(head, START_SYNC_WAIT)?;
        store.check_key()?;
        tracing::info!(revision = head, "shared directory mirrored");
        Ok(store)
    }

    /// Refuses a node whose store key differs from the cluster's: it could neither read
    /// the tenants' secrets other nodes sealed nor seal one they could read.
    fn check_key(&self) -> Result<(), ClusterError> {
        let id = TenantId::new(KEY_CHECK_ID).expect("a valid id");
        let probe = TenantRecord {
            id: id.clone(),
            secret: KEY_CHECK_SECRET.to_vec(),
        };
        let refused = |e: &dyn std::fmt::Display| {
            ClusterError::Config(format!(
                "this node's store key is not the cluster's ({e}): give every node the same \
                 key (SWITCHBOARD_STORE_KEY, or the same store_key_file)"
            ))
        };
        let sealed = self
            .inner
            .local
            .seal_tenant(&probe)
            .map_err(|e| refused(&e))?;
        if self
            .create(&Key::KeyCheck, sealed)
            .map_err(|e| nats_err("key check", e))?
            .is_some()
        {
            return Ok(());
        }
        let (value, _) = self
            .entry(&Key::KeyCheck)
            .map_err(|e| nats_err("key check", e))?
            .ok_or_else(|| nats_err("key check", "the record vanished"))?;
        match self.inner.local.open_tenant(id, &value) {
            Ok(r) if r.secret == KEY_CHECK_SECRET => Ok(()),
            Ok(_) => Err(refused(&"the probe opened to another value")),
            Err(e) => Err(refused(&e)),
        }
    }

    /// The newest bucket revision this node's mirror applied.
    pub fn applied_revision(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// This node's sled, which mirrors the shared copy.
    pub fn local(&self) -> &SledStore {
        &self.inner.local
    }

    fn run<T, F>(&self, op: &'static str, fut: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, ClusterError>> + Send + 'static,
    {
        self.inner.log.run(op, fut).map_err(StoreError::from)
    }

    fn wait_applied(&self, revision: u64) -> Result<(), StoreError> {
        self.wait_applied_for(revision, self.inner.apply_wait)
            .map_err(StoreError::from)?;
        match &*self.inner.failed.lock() {
            Some((r, why)) if *r == revision => Err(StoreError::Io(format!(
                "the shared directory holds the change, but this node could not apply it: {why}"
            ))),
            _ => Ok(()),
        }
    }

    fn wait_applied_for(&self, revision: u64, within: Duration) -> Result<(), ClusterError> {
        if revision == 0 || self.applied_revision() >= revision {
            return Ok(());
        }
        let mut rx = self.inner.applied.clone();
        self.inner.log.run("wait for the directory mirror", async move {
            match tokio::time::timeout(within, rx.wait_for(|r| *r >= revision)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(nats_err("mirror", "the mirror task stopped")),
                Err(_) => Err(ClusterError::Unacknowledged {
                    subject: "directory".into(),
                    detail: format!(
                        "revision {revision} is stored but this node has not applied it within {within:?}"
                    ),
                }),
            }
        })
    }

    /// Waits until this node applied whatever the bucket holds now (after a delete, whose
    /// revision NATS does not return).
    fn wait_head(&self) -> Result<(), StoreError> {
        let (js, kv) = (self.inner.log.jetstream(), self.inner.kv.clone());
        let head = self.run(
            "directory head",
            async move { last_revision(&js, &kv).await },
        )?;
        self.wait_applied(head)
    }

    /// The key's live revision in the bucket (`None`: absent or deleted).
    fn entry(&self, key: &Key) -> Result<Option<(Bytes, u64)>, StoreError> {
        let (kv, k) = (self.inner.kv.clone(), key.render());
        self.run("directory read", async move {
            match kv.entry(k.as_str()).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => Ok(Some((e.value, e.revision))),
                Ok(_) => Ok(None),
                Err(e) => Err(nats_err(&k, e)),
            }
        })
    }

    /// Waits until this node applied the key's live value, if it has one (so a record
    /// another node wrote a moment ago is read here too). Returns whether it exists.
    fn sync_key(&self, key: &Key) -> Result<bool, StoreError> {
        match self.entry(key)? {
            Some((_, revision)) => {
                self.wait_applied(revision)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn put(&self, key: &Key, value: Vec<u8>) -> Result<u64, StoreError> {
        let (kv, k) = (self.inner.kv.clone(), key.render());
        let revision = self.run("directory write", async move {
            kv.put(k.as_str(), value.into())
                .await
                .map_err(|e| ClusterError::Unacknowledged {
                    subject: k.clone(),
                    detail: e.to_string(),
                })
        })?;
        self.wait_applied(revision)?;
        Ok(revision)
    }

    /// Creates the key; `Ok(None)` if it exists already.
    fn create(&self, key: &Key, value: Vec<u8>) -> Result<Option<u64>, StoreError> {
        let revision = self.create_unapplied(key, value)?;
        if let Some(r) = revision {
            self.wait_applied(r)?;
        }
        Ok(revision)
    }

    /// [`SharedStore::create`] without waiting for the mirror.
    fn create_unapplied(&self, key: &Key, value: Vec<u8>) -> Result<Option<u64>, StoreError> {
        let (kv, k) = (self.inner.kv.clone(), key.render());
        self.run("directory create", async move {
            match kv.create(k.as_str(), value.into()).await {
                Ok(r) => Ok(Some(r)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(ClusterError::Unacknowledged {
                    subject: k.clone(),
                    detail: e.to_string(),
                }),
            }
        })
    }

    fn delete(&self, key: &Key, revision: Option<u64>) -> Result<(), StoreError> {
        let (kv, k) = (self.inner.kv.clone(), key.render());
        self.run("directory delete", async move {
            kv.delete_expect_revision(k.as_str(), revision)
                .await
                .map_err(|e| ClusterError::Unacknowledged {
                    subject: k.clone(),
                    detail: e.to_string(),
                })
        })?;
        self.wait_head()
    }

    /// The tenant must be in the directory (here, after syncing its key).
    fn require_group(&self, tenant: &TenantId, group: &GroupId) -> Result<GroupMeta, StoreError> {
        if let Some(meta) = self.inner.local.group(tenant, group)? {
            return Ok(meta);
        }
        self.sync_key(&Key::Group(tenant.clone(), group.clone()))?;
        self.inner
            .local
            .group(tenant, group)?
            .ok_or_else(|| StoreError::GroupNotFound(group.clone()))
    }
}

impl DirectoryBackend for SharedStore {
    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        let sealed = self.inner.local.seal_tenant(tenant)?;
        self.put(&Key::Tenant(tenant.id.clone()), sealed)?;
        Ok(())
    }

    fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        meta: GroupMeta,
    ) -> Result<(), StoreError> {
        let key = Key::Group(tenant.clone(), group.clone());
        match self.create(&key, replica::encode_group_meta(meta))? {
            Some(_) => Ok(()),
            None => {
                self.sync_key(&key)?;
                Err(StoreError::GroupExists(group.clone()))
            }
        }
    }

    fn add_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let meta = self.require_group(tenant, group)?;
        let key = Key::Member(tenant.clone(), group.clone(), user.clone());
        // The group's head as the member joins: every mirror starts the member's stored
        // cursor there, so a session on any node that brings no cursor of its own starts
        // where a new member starts on one node (protocol.md, section 10).
        // Unknown head (the shard's stream not created yet on a forming cluster, or NATS
        // briefly unreachable): the membership still counts, from seq 0, rather than failing
        // a join or a node's start-up over a cursor hint.
        let head = LogBackend::head(&*self.inner.log, tenant, group).unwrap_or_else(|e| {
            tracing::warn!(%tenant, %group, error = %e, "group head unknown; new member's stored cursor starts at 0");
            0
        });
        match self.create(&key, head.to_be_bytes().to_vec())? {
            None => {
                self.sync_key(&key)?;
                Ok(false)
            }
            // Every mirror applies member keys in bucket order and refuses one past the
            // limit alike; the writer of a refused key takes it back out.
            Some(revision) if !self.inner.local.is_member(tenant, group, user)? => {
                self.delete(&key, Some(revision))?;
                Err(StoreError::GroupFull {
                    group: group.clone(),
                    max: meta.max_members,
                })
            }
            Some(_) => Ok(true),
        }
    }

    fn remove_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        self.require_group(tenant, group)?;
        let key = Key::Member(tenant.clone(), group.clone(), user.clone());
        match self.entry(&key)? {
            Some((_, revision)) => {
                self.delete(&key, Some(revision))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn catch_up(&self, record: Record<'_>) -> Result<(), StoreError> {
        let key = match record {
            Record::Tenant(t) => Key::Tenant(t.clone()),
            Record::Group(t, g) => Key::Group(t.clone(), g.clone()),
            Record::Member(t, g, u) => Key::Member(t.clone(), g.clone(), u.clone()),
        };
        self.sync_key(&key).map(|_| ())
    }
}

impl ConfigStore for SharedStore {
    fn put_plugin(&self, meta: &PluginVersion, wasm: &[u8]) -> Result<bool, StoreError> {
        let key = Key::Plugin(meta.tenant.clone(), meta.version.clone());
        if self.sync_key(&key)? {
            return Ok(false);
        }
        // Bytes first: a node that sees the version's key can always fetch them.
        let (objects, name, bytes) = (
            self.inner.objects.clone(),
            object_name(&meta.tenant, &meta.version),
            wasm.to_vec(),
        );
        self.run("plugin upload", async move {
            objects
                .put(name.as_str(), &mut bytes.as_slice())
                .await
                .map(|_| ())
                .map_err(|e| ClusterError::Unacknowledged {
                    subject: name.clone(),
                    detail: e.to_string(),
                })
        })?;
        let Some(revision) = self.create_unapplied(&key, replica::encode_plugin(meta))? else {
            return Ok(false);
        };
        if let Err(refused) = self.wait_applied(revision) {
            // The mirror refused it (the bytes did not match the version): nothing of the
            // refused upload may stay, or the same version could never be stored again.
            if !matches!(refused, StoreError::OutcomeUnknown(_)) {
                self.delete(&key, Some(revision))?;
                let (objects, name) = (
                    self.inner.objects.clone(),
                    object_name(&meta.tenant, &meta.version),
                );
                self.run("plugin delete", async move {
                    objects
                        .delete(name.as_str())
                        .await
                        .map_err(|e| nats_err(&name, e))
                })?;
            }
            return Err(refused);
        }
        Ok(true)
    }

    fn plugin(
        &self,
        tenant: &TenantId,
        version: &str,
    ) -> Result<Option<PluginVersion>, StoreError> {
        self.inner.local.plugin(tenant, version)
    }

    fn plugin_bytes(
        &self,
        tenant: &TenantId,
        version: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.local.plugin_bytes(tenant, version)
    }

    fn plugins(&self, tenant: &TenantId) -> Result<Vec<PluginVersion>, StoreError> {
        self.inner.local.plugins(tenant)
    }

    fn binding(&self, tenant: &TenantId) -> Result<PolicyBinding, StoreError> {
        self.inner.local.binding(tenant)
    }

    fn update_binding(
        &self,
        tenant: &TenantId,
        now_ms: u64,
        change: &mut dyn FnMut(&mut PolicyBinding) -> Result<(), BindingRefused>,
    ) -> Result<Result<PolicyBinding, BindingRefused>, StoreError> {
        let key = Key::Binding(tenant.clone());
        for _ in 0..MAX_CAS_ATTEMPTS {
            // Read from the bucket, not the mirror: the change must build on the newest.
            let current = self.entry(&key)?;
            let mut binding = match &current {
                Some((value, _)) => replica::decode_binding(value)?,
                None => PolicyBinding::default(),
            };
            let revision = binding.revision + 1;
            if let Err(refused) = change(&mut binding) {
                return Ok(Err(refused));
            }
            binding.stamp(revision, now_ms);
            let value = replica::encode_binding(&binding);
            let written = match current {
                None => self.create(&key, value)?,
                Some((_, expected)) => {
                    let (kv, k) = (self.inner.kv.clone(), key.render());
                    let written = self.run("binding update", async move {
                        match kv.update(k.as_str(), value.into(), expected).await {
                            Ok(r) => Ok(Some(r)),
                            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                                Ok(None)
                            }
                            Err(e) => Err(ClusterError::Unacknowledged {
                                subject: k.clone(),
                                detail: e.to_string(),
                            }),
                        }
                    })?;
                    if let Some(r) = written {
                        self.wait_applied(r)?;
                    }
                    written
                }
            };
            if written.is_some() {
                return Ok(Ok(binding));
            }
        }
        Err(StoreError::Io(format!(
            "binding of {tenant}: {MAX_CAS_ATTEMPTS} updates in a row lost to other writers"
        )))
    }

    fn bound_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        self.inner.local.bound_tenants()
    }

    fn flags(
        &self,
        tenant: &TenantId,
    ) -> Result<std::collections::BTreeMap<String, FlagRule>, StoreError> {
        self.inner.local.flags(tenant)
    }

    fn put_flags(
        &self,
        tenant: &TenantId,
        flags: &std::collections::BTreeMap<String, FlagRule>,
    ) -> Result<(), StoreError> {
        self.put(&Key::Flags(tenant.clone()), replica::encode_flags(flags))?;
        Ok(())
    }

    fn quotas(&self, tenant: &TenantId) -> Result<TenantQuotas, StoreError> {
        self.inner.local.quotas(tenant)
    }

    fn put_quotas(&self, tenant: &TenantId, quotas: &TenantQuotas) -> Result<(), StoreError> {
        self.put(&Key::Quotas(tenant.clone()), replica::encode_quotas(quotas))?;
        Ok(())
    }

    fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.put(
            &Key::ApiKey(key.tenant.clone(), key.id.clone()),
            replica::encode_api_key(key),
        )?;
        Ok(())
    }

    fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.local.api_key_by_hash(hash)
    }

    fn api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.inner.local.api_keys(tenant)
    }

    fn delete_api_key(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let key = Key::ApiKey(tenant.clone(), id.to_owned());
        match self.entry(&key)? {
            Some((_, revision)) => {
                self.delete(&key, Some(revision))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn degradation_override(&self) -> Result<Option<u8>, StoreError> {
        self.inner.local.degradation_override()
    }

    fn set_degradation_override(&self, level: Option<u8>) -> Result<(), StoreError> {
        match level {
            Some(level) => {
                self.put(&Key::Degradation, replica::encode_level(level))?;
                Ok(())
            }
            None => self.delete(&Key::Degradation, None),
        }
    }

    fn watch(&self) -> Result<Box<dyn ConfigWatch>, StoreError> {
        self.inner.local.watch()
    }
}

/// The watcher that keeps this node's sled a copy of the bucket.
struct Mirror {
    kv: kv::Store,
    objects: object_store::ObjectStore,
    local: SledStore,
    applied: watch::Sender<u64>,
    failed: Arc<Mutex<Option<(u64, String)>>>,
}

impl Mirror {
    /// Reads the bucket in order and applies each entry, until every receiver of the
    /// applied revision is gone (the store was dropped). A broken watch is opened again
    /// from the next revision.
    async fn run(self) {
        let mut after = 0u64;
        loop {
            if self.applied.is_closed() {
                return;
            }
            let watch = if after == 0 {
                self.kv.watch_with_history(">").await
            } else {
                self.kv.watch_all_from_revision(after + 1).await
            };
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "directory watch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(entry) = watch.next().await {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "directory watch broke; reopening");
                        break;
                    }
                };
                if entry.revision <= after {
                    continue;
                }
                let revision = entry.revision;
                if let Err(why) = self.apply(entry).await {
                    tracing::error!(revision, error = %why, "directory change not applied here");
                    *self.failed.lock() = Some((revision, why));
                }
                after = revision;
                self.applied.send_replace(revision);
                if self.applied.is_closed() {
                    return;
                }
            }
        }
    }

    async fn apply(&self, entry: kv::Entry) -> Result<(), String> {
        let Some(key) = Key::parse(&entry.key) else {
            return Err(format!("unknown key {:?}", entry.key));
        };
        let put = entry.operation == kv::Operation::Put;
        let bytes = match (&key, put) {
            (Key::Plugin(tenant, version), true) => {
                Some(self.fetch_plugin(tenant, version, &entry.value).await?)
            }
            _ => None,
        };
        let local = self.local.clone();
        let value = entry.value;
        tokio::task::spawn_blocking(move || apply_local(&local, key, put, &value, bytes))
            .await
            .map_err(|e| format!("apply task: {e}"))?
            .map_err(|e| e.to_string())
    }

    /// The version's bytes from the object store, checked against its SHA-256 (the
    /// version id) and stored size, or why not.
    async fn fetch_plugin(
        &self,
        tenant: &TenantId,
        version: &str,
        meta: &[u8],
    ) -> Result<Vec<u8>, String> {
        let meta = replica::decode_plugin(tenant.clone(), version.to_owned(), meta)
            .map_err(|e| e.to_string())?;
        if meta.size > MAX_PLUGIN_BYTES {
            return Err(format!(
                "plugin {version} is {} bytes, over {MAX_PLUGIN_BYTES}",
                meta.size
            ));
        }
        let name = object_name(tenant, version);
        let read = async {
            let object = self
                .objects
                .get(name.as_str())
                .await
                .map_err(|e| format!("plugin {version}: {e}"))?;
            let mut bytes = Vec::with_capacity(meta.size as usize);
            object
                .take(meta.size + 1)
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| format!("plugin {version}: {e}"))?;
            Ok::<_, String>(bytes)
        };
        let bytes = tokio::time::timeout(PLUGIN_FETCH_TIMEOUT, read)
            .await
            .map_err(|_| {
                format!(
                    "plugin {version}: its bytes did not arrive within {PLUGIN_FETCH_TIMEOUT:?} \
                     (deleted while read?)"
                )
            })??;
        let hash = hex(&Sha256::digest(&bytes));
        if bytes.len() as u64 != meta.size || hash != version {
            return Err(format!(
                "plugin {version}: the object store's copy does not match (SHA-256 {hash}, {} bytes)",
                bytes.len()
            ));
        }
        Ok(bytes)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Applies one bucket entry to sled with sled's own writes (so its config watch fires).
fn apply_local(
    local: &SledStore,
    key: Key,
    put: bool,
    value: &[u8],
    plugin: Option<Vec<u8>>,
) -> Result<(), StoreError> {
    match (key, put) {
        (Key::Tenant(t), true) => local.put_tenant(&local.open_tenant(t, value)?),
        (Key::Group(t, g), true) => {
            match local.create_group(&t, &g, replica::decode_group_meta(value)?) {
                Ok(()) | Err(StoreError::GroupExists(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
        (Key::Member(t, g, u), true) => match local.add_member(&t, &g, &u) {
            Ok(true) => {
                let head = <[u8; 8]>::try_from(value)
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                local.advance_cursor(&t, &g, &u, head).map(|_| ())
            }
            // Refused alike on every node; its writer deletes the key.
            Ok(false) | Err(StoreError::GroupFull { .. }) => Ok(()),
            Err(e) => Err(e),
        },
        (Key::Member(t, g, u), false) => local.remove_member(&t, &g, &u).map(|_| ()),
        (Key::Binding(t), true) => local.replace_binding(&t, &replica::decode_binding(value)?),
        (Key::Flags(t), true) => local.put_flags(&t, &replica::decode_flags(value)?),
        (Key::Quotas(t), true) => local.put_quotas(&t, &replica::decode_quotas(value)?),
        (Key::ApiKey(_, _), true) => local.put_api_key(&replica::decode_api_key(value)?),
        (Key::ApiKey(t, id), false) => local.delete_api_key(&t, &id).map(|_| ()),
        (Key::Plugin(t, v), true) => {
            let meta = replica::decode_plugin(t, v, value)?;
            let bytes = plugin.unwrap_or_default();
            local.put_plugin(&meta, &bytes).map(|_| ())
        }
        (Key::Degradation, true) => {
            local.set_degradation_override(Some(replica::decode_level(value)?))
        }
        (Key::Degradation, false) => local.set_degradation_override(None),
        (Key::KeyCheck, _) => Ok(()),
        // Tenants, groups, bindings, flags, quotas and plugins are never deleted through
        // this store; a delete made by hand is not mirrored.
        (key, false) => {
            tracing::warn!(?key, "a directory record was deleted by hand; not mirrored");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_to_itself_whatever_its_ids_hold() {
        let t = TenantId::new("demo").unwrap();
        let g = GroupId::new("a.b:c@d").unwrap();
        let u = UserId::new("ann.x-y_z").unwrap();
        for key in [
            Key::Tenant(t.clone()),
            Key::Group(t.clone(), g.clone()),
            Key::Member(t.clone(), g.clone(), u.clone()),
            Key::Binding(t.clone()),
            Key::Flags(t.clone()),
            Key::Quotas(t.clone()),
            Key::ApiKey(t.clone(), "k.1".into()),
            Key::Plugin(t.clone(), "ab12".into()),
            Key::Degradation,
            Key::KeyCheck,
        ] {
            let s = key.render();
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
                "{s} is not a valid KV key"
            );
            assert_eq!(Key::parse(&s), Some(key), "{s}");
        }
        assert_eq!(Key::parse("member.demo.g"), None);
        assert_eq!(Key::parse("nonsense"), None);
    }
}
