//! [`SledStore`]: the [`Store`] on sled. Key layout in [`keys`], value encodings in [`codec`].
//!
//! Trees: `directory` (tenants, groups, members and the per-user index of memberships),
//! `log` (messages), `dedupe` (`(sender, client_msg_id)` → seq), `cursors` and `receipts`;
//! for the [`ConfigStore`](crate::ConfigStore) (in [`config`]), `config` (plugin version
//! metadata, bindings, flags, quotas, API keys and their hash index, the degradation
//! override) and `plugins` (plugin bytes only, so scanning config never pages them in).
//!
//! Atomicity: an append writes its log entry, then its dedupe entry, as two writes (a sled
//! transaction would cost an IO-buffer write per append); opening the store restores a
//! dedupe entry a crash left missing (`repair_dedupe`);
//! `add_member` / `remove_member` update the member, the user's index entry and the group's
//! member count in one transaction. Single-key read-modify-writes (cursors, receipts) use
//! compare-and-swap loops, and `create_group` a compare-and-swap from absent. Config:
//! `put_plugin` writes metadata and bytes in one transaction over both trees, API keys and
//! their hash index change in one transaction, `update_binding` is a compare-and-swap loop.
//!
//! Costs worth knowing. sled 0.34 runs every transaction (and `apply_batch`) under one
//! process-wide lock, and once any transaction has run every other sled call takes that lock
//! shared: appends and membership changes serialise on it even across groups. The critical
//! section is in memory and short (no fsync), but it is the ceiling on append throughput.
//! `append` does not consult the directory (the caller has checked membership), and nothing
//! is ever removed from the log or dedupe trees yet (no retention). A config watch is a sled
//! subscriber with a buffer of 1024 events: one that falls that far behind blocks the next
//! config write while it holds that lock (shared, or exclusive inside a transaction), which
//! stalls appends too. Drain watches on a thread of their own and drop the ones not read.

mod codec;
mod config;
#[cfg(test)]
mod config_tests;
mod keys;
pub mod replica;
#[cfg(test)]
mod secrets_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use sled::transaction::{abort, ConflictableTransactionError, TransactionError};
use sled::{IVec, Tree};
use switchboard_core::{GroupId, TenantId, UserId};

use crate::secrets::{KeyRing, SecretsError};
use crate::{
    Appended, GroupMeta, NewMessage, Store, StoreError, StoredMessage, StoredReceipt, TenantRecord,
};
use codec::{corrupt, GroupRecord, CONFIG, CURSORS, DEDUPE, DIRECTORY, LOG, PLUGINS, RECEIPTS};
use keys::Key;

/// Key of the on-disk format marker in sled's default tree.
const FORMAT_KEY: &[u8] = b"switchboard.format";
const FORMAT: &[u8] = &[1];

/// How often an append retries when it finds its sequence number taken. That only happens
/// when callers break the one-appender-per-group contract; each retry re-reads the head.
const MAX_SEQ_RETRIES: usize = 100;

/// How to open a [`SledStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SledStoreConfig {
    /// Directory of the database (created if missing).
    pub path: PathBuf,
    /// Most bytes of page cache kept in memory.
    pub cache_capacity_bytes: u64,
    /// Background flush interval, or `None` for no background flushing. The durability
    /// contract does not rely on it (only [`Store::flush`] promises durability); it bounds
    /// how much is lost on a crash for writes nobody flushed.
    pub flush_every_ms: Option<u64>,
    /// The store key file that seals tenant secrets ([`crate::secrets`]); `None` for the
    /// default, `<path>.key` (next to the store directory, never inside it).
    pub key_file: Option<PathBuf>,
    /// The store key as the key file's text, given by the operator instead of the file
    /// (the node reads it from `SWITCHBOARD_STORE_KEY`): nothing is read from or written to
    /// `key_file` then, and a rotation is refused ([`SecretsError::KeyNotInFile`]).
    pub key_text: Option<String>,
}

impl SledStoreConfig {
    /// Defaults: 256 MiB of cache, background flush every 500 ms.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_capacity_bytes: 256 << 20,
            flush_every_ms: Some(500),
            key_file: None,
            key_text: None,
        }
    }

    /// The store key as the key file's text, instead of the file (see `key_text`).
    pub fn key_text(mut self, text: impl Into<String>) -> Self {
        self.key_text = Some(text.into());
        self
    }

    /// Where the store key file is: the one set, else `<path>.key`.
    pub fn key_file_path(&self) -> PathBuf {
        self.key_file.clone().unwrap_or_else(|| {
            let mut name = self
                .path
                .file_name()
                .map(|n| n.to_owned())
                .unwrap_or_else(|| "store".into());
            name.push(".key");
            self.path.with_file_name(name)
        })
    }

    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    pub fn cache_capacity_bytes(mut self, bytes: u64) -> Self {
        self.cache_capacity_bytes = bytes;
        self
    }

    pub fn flush_every_ms(mut self, every: Option<u64>) -> Self {
        self.flush_every_ms = every;
        self
    }
}

/// The [`Store`] on sled: one directory on disk. Cheap to clone (the clones share one
/// database).
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// How the store was opened, to open it again after a storage failure.
    config: SledStoreConfig,
    /// The open database; `None` while it is being reopened ([`SledStore::recover`]).
    /// Calls clone the `Arc` for their duration, so a reopen waits for them to let go of
    /// the broken database (sled's file lock goes with its last handle).
    handles: RwLock<Option<Arc<Handles>>>,
    /// Why the store stopped working, once a storage call failed with an I/O error; `None`
    /// while it works. sled 0.34 keeps the first I/O error of its log writer and fails every
    /// later write with it until the database is opened again, so the reason stays until
    /// [`SledStore::recover`] reopens it.
    failure: parking_lot::Mutex<Option<String>>,
    /// One reopen at a time.
    recovering: parking_lot::Mutex<()>,
    /// How many times the database was reopened.
    reopens: AtomicU64,
    /// The config watches' channels: a reopen hands each a subscription to the new `config`
    /// tree before the new database is used (`config::SledConfigWatch`).
    watchers: parking_lot::Mutex<Vec<std::sync::mpsc::Sender<sled::Subscriber>>>,
    /// The keys that seal tenant secrets, and their file ([`crate::secrets`]). Swapped
    /// whole by a rotation.
    keys: RwLock<Arc<KeyRing>>,
    key_file: PathBuf,
    /// Sealing (shared) against a rotation (exclusive): a secret sealed under the old key
    /// and written after the rotation resealed every record would be unreadable once the
    /// old key leaves the file. Also one rotation at a time.
    rotation: parking_lot::RwLock<()>,
    /// Newest sequence number of each group with messages, keyed by the group's prefix
    /// ([`keys::group_prefix`]), loaded lazily from the log's last key. Only ever raised
    /// (`raise_head`), so a reader that loaded an older head from disk cannot lower it.
    /// Emptied by a reopen: what a failed database held in memory may not be on disk.
    heads: DashMap<Box<[u8]>, u64>,
}

/// The open database and its trees.
struct Handles {
    db: sled::Db,
    /// sled's data file, for `fdatasync` after each flush (see [`Store::flush`] below).
    data_file: std::fs::File,
    directory: Tree,
    log: Tree,
    dedupe: Tree,
    cursors: Tree,
    receipts: Tree,
    /// Config records and the plugin-version metadata ([`config`]).
    config: Tree,
    /// Plugin bytes only.
    plugins: Tree,
}

impl Handles {
    /// Opens the database in `config.path` and its trees.
    fn open(config: &SledStoreConfig) -> Result<Handles, StoreError> {
        // Files sled is about to create with the process's umask are not a finding; those of
        // an existing store that others could read are (`tighten_permissions` warns then).
        let existed = config.path.join("db").exists();
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity_bytes)
            .flush_every_ms(config.flush_every_ms)
            .open()
            .map_err(io)?;
        match db
            .compare_and_swap(FORMAT_KEY, None::<&[u8]>, Some(FORMAT))
            .map_err(io)?
        {
            Ok(()) => {}
            Err(e) if e.current.as_deref() == Some(FORMAT) => {}
            Err(e) => {
                return Err(corrupt(
                    "meta",
                    format!("unknown store format {:?}", e.current),
                ));
            }
        }
        let tree = |name: &str| db.open_tree(name).map_err(io);
        // sled writes everything to this one file (values under its blob threshold, which
        // is far above max_payload_bytes). Its directory entry is made durable once here.
        let data_file = std::fs::File::open(config.path.join("db")).map_err(os)?;
        tighten_permissions(&config.path, existed).map_err(os)?;
        std::fs::File::open(&config.path)
            .and_then(|dir| dir.sync_all())
            .map_err(os)?;
        Ok(Handles {
            data_file,
            directory: tree(DIRECTORY)?,
            log: tree(LOG)?,
            dedupe: tree(DEDUPE)?,
            cursors: tree(CURSORS)?,
            receipts: tree(RECEIPTS)?,
            config: tree(CONFIG)?,
            plugins: tree(PLUGINS)?,
            db,
        })
    }
}

/// Whether a store works. See [`SledStore::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// Reads and writes work.
    Ok,
    /// A storage call failed (an I/O error such as a full disk): writes fail until the store
    /// is reopened ([`crate::Store::recover`]).
    Failed { reason: String },
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn os(e: std::io::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn txn_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => io(e),
    }
}

/// Decision of a compare-and-swap update ([`cas_update`]).
enum Update<T, V> {
    /// Leave the value as it is and return this.
    Keep(T),
    /// Write the value and return this.
    Write(V, T),
}

/// Read-modify-write of one key without a transaction: `decide` sees the current value and
/// is asked again if the value changed before the write landed.
fn cas_update<T, V: AsRef<[u8]>>(
    store: &SledStore,
    tree: &Tree,
    key: &[u8],
    mut decide: impl FnMut(Option<&[u8]>) -> Result<Update<T, V>, StoreError>,
) -> Result<T, StoreError> {
    let mut current = tree.get(key).map_err(|e| store.io(e))?;
    loop {
        match decide(current.as_deref())? {
            Update::Keep(out) => return Ok(out),
            Update::Write(new, out) => {
                match tree
                    .compare_and_swap(key, current.as_ref(), Some(new.as_ref()))
                    .map_err(|e| store.io(e))?
                {
                    Ok(()) => return Ok(out),
                    Err(conflict) => current = conflict.current,
                }
            }
        }
    }
}

/// The key id of the first sealed tenant secret, if any.
fn first_sealed_key_id(directory: &Tree) -> Result<Option<u32>, StoreError> {
    for kv in directory.scan_prefix([keys::TAG_TENANT]) {
        let (_, v) = kv.map_err(io)?;
        if let Some(id) = KeyRing::sealed_key_id(&v) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Creates `path` (and missing parents) readable by this user only; tightens an existing
/// one that others may enter.
fn private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)?;
    set_mode(path, 0o700, true)
}

/// Sets `path`'s mode; `warn`s when it was open to other users.
#[cfg(unix)]
fn set_mode(path: &Path, mode: u32, warn: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current != mode {
        if warn && current & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{current:o}"),
                "store file was accessible to other users; made it private"
            );
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32, _: bool) -> std::io::Result<()> {
    Ok(())
}

/// Makes everything sled made under `dir` private: directories 0700, files 0600. sled
/// creates its files with the process's umask (usually 0644); the node's binary also sets
/// a umask of 077, but a library user (a test, a benchmark) may not. `warn` when the store
/// existed before (a new store's files are tightened silently).
fn tighten_permissions(dir: &Path, warn: bool) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            set_mode(&entry.path(), 0o700, warn)?;
            tighten_permissions(&entry.path(), warn)?;
        } else if kind.is_file() {
            set_mode(&entry.path(), 0o600, warn)?;
        }
    }
    Ok(())
}

impl SledStore {
    /// Opens (or creates) the store in directory `path` with default settings.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(SledStoreConfig::new(path))
    }

    /// Opens (or creates) the store as `config` says. The directory is created 0700 and
    /// every file in it made 0600 (also those of an existing store). Tenant secrets are
    /// sealed with the store key file (created with the store; a store with sealed secrets
    /// and no key file is refused with [`SecretsError::MissingKey`]); secrets in the clear
    /// or sealed under an older key are sealed again under the newest key here.
    pub fn open_with(config: SledStoreConfig) -> Result<Self, StoreError> {
        private_dir(&config.path).map_err(os)?;
        let key_file = config.key_file_path();
        let handles = Handles::open(&config)?;
        let given = match &config.key_text {
            Some(text) => Some(KeyRing::parse(text).map_err(SecretsError::KeyText)?),
            None => KeyRing::load(&key_file)?,
        };
        let keys = match given {
            Some(keys) => keys,
            None => {
                // A new key only for a store without sealed secrets: one sealed under a
                // lost key must not be silently replaced by unreadable records.
                if let Some(key_id) = first_sealed_key_id(&handles.directory)? {
                    return Err(SecretsError::MissingKey {
                        path: key_file,
                        key_id,
                    }
                    .into());
                }
                let keys = KeyRing::generate(1)?;
                keys.store(&key_file)?;
                tracing::info!(path = %key_file.display(), "created the store key file");
                keys
            }
        };
        let inner = Inner {
            keys: RwLock::new(Arc::new(keys)),
            key_file,
            rotation: parking_lot::RwLock::new(()),
            handles: RwLock::new(Some(Arc::new(handles))),
            failure: parking_lot::Mutex::new(None),
            recovering: parking_lot::Mutex::new(()),
            reopens: AtomicU64::new(0),
            watchers: parking_lot::Mutex::new(Vec::new()),
            heads: DashMap::new(),
            path: config.path.clone(),
            config,
        };
        tracing::debug!(path = %inner.path.display(), "store opened");
        let store = Self {
            inner: Arc::new(inner),
        };
        store.repair_dedupe()?;
        store.reseal_secrets()?;
        Ok(store)
    }

    /// The open database, or an error while it is being reopened.
    fn h(&self) -> Result<Arc<Handles>, StoreError> {
        self.inner.handles.read().clone().ok_or_else(|| {
            StoreError::Io("the store is being reopened after a storage failure".into())
        })
    }

    /// Notes an I/O failure of the database (see `Inner::failure`) and passes the error on.
    fn note(&self, e: StoreError) -> StoreError {
        if let StoreError::Io(reason) = &e {
            let mut failure = self.inner.failure.lock();
            if failure.is_none() {
                tracing::error!(error = %reason, "store failed; writes are refused until it is reopened");
                *failure = Some(reason.clone());
            }
        }
        e
    }

    fn io(&self, e: sled::Error) -> StoreError {
        self.note(io(e))
    }

    fn os(&self, e: std::io::Error) -> StoreError {
        self.note(os(e))
    }

    /// Whether the store works, and if not, why.
    pub fn health(&self) -> StoreHealth {
        match &*self.inner.failure.lock() {
            None => StoreHealth::Ok,
            Some(reason) => StoreHealth::Failed {
                reason: reason.clone(),
            },
        }
    }

    /// How many times the database was reopened after a failure.
    pub fn reopens(&self) -> u64 {
        self.inner.reopens.load(Ordering::Relaxed)
    }

    /// Opens the database again if a storage call failed (see `Inner::failure`): what sled
    /// made durable before the failure is read back, the head cache is emptied (a failed
    /// database may have held appends in memory that never reached the disk), dedupe entries
    /// are repaired as after a crash, and config watches continue on the new database.
    /// Returns `Ok(false)` when the store works. Blocking (it waits, up to 5 s, for calls
    /// still using the failed database, and sled's open reads the log); call it off the
    /// async runtime. On an error the store stays failed and the call may be repeated.
    pub fn recover(&self) -> Result<bool, StoreError> {
        let _one = self.inner.recovering.lock();
        if self.inner.failure.lock().is_none() {
            return Ok(false);
        }
        let old = self.inner.handles.write().take();
        if let Some(mut old) = old {
            // sled's file lock is released with the last handle: wait for calls in flight.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(handles) => {
                        drop(handles);
                        break;
                    }
                    Err(still_shared) if std::time::Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    Err(still_shared) => {
                        drop(still_shared);
                        break;
                    }
                }
            }
        }
        let handles = Handles::open(&self.inner.config)?;
        self.inner.heads.clear();
        {
            // Before the new database is used, so no change is missed.
            let mut watchers = self.inner.watchers.lock();
            watchers.retain(|w| w.send(handles.config.watch_prefix(b"")).is_ok());
        }
        *self.inner.handles.write() = Some(Arc::new(handles));
        *self.inner.failure.lock() = None;
        self.inner.reopens.fetch_add(1, Ordering::Relaxed);
        self.repair_dedupe()?;
        tracing::info!("store reopened after a storage failure; writes are accepted again");
        Ok(true)
    }

    /// Seals again, under the newest key, every tenant secret that is in the clear (a store
    /// written before secrets were sealed) or sealed under an older key (an interrupted
    /// rotation). Opening every record also proves the key file is this store's: a wrong one
    /// fails here with [`SecretsError::WrongKey`] or [`SecretsError::UnknownKey`], not at the
    /// first client's hello. Returns how many records it rewrote.
    fn reseal_secrets(&self) -> Result<usize, StoreError> {
        let ring = self.keys();
        let prefix = [keys::TAG_TENANT];
        let mut resealed = 0;
        for kv in self.h()?.directory.scan_prefix(prefix) {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            let id = codec::parse_id(DIRECTORY, &k[prefix.len()..], TenantId::new)?;
            let (record, stale) = codec::decode_tenant(&ring, id, &v)?;
            if !stale {
                continue;
            }
            let sealed = codec::encode_tenant(&ring, &record.id, &record.secret)?;
            // Only if unchanged since read: a concurrent put_tenant (sealed already) wins.
            let _ = self
                .h()?
                .directory
                .compare_and_swap(&k, Some(&v), Some(sealed))
                .map_err(|e| self.io(e))?;
            resealed += 1;
        }
        if resealed > 0 {
            self.h()?.db.flush().map_err(|e| self.io(e))?;
            self.h()?.data_file.sync_data().map_err(|e| self.os(e))?;
            tracing::info!(
                resealed,
                key_id = ring.current_id(),
                "sealed tenant secrets under the newest store key"
            );
        }
        Ok(resealed)
    }

    fn keys(&self) -> Arc<KeyRing> {
        self.inner.keys.read().clone()
    }

    /// The ids of the store keys in use (the last one seals).
    pub fn key_ids(&self) -> Vec<u32> {
        self.keys().ids()
    }

    /// Rotates the store key: a fresh key is added to the key file (which then holds the old
    /// and the new key, so every record opens whatever happens next), every tenant secret is
    /// sealed again under it and made durable, then the old keys are dropped from the file.
    /// A crash in between leaves a key file with both keys; the next open finishes the
    /// re-sealing. Tokens stay valid: the secrets are the same, only their sealing changes.
    /// Returns the new key's id and how many secrets were sealed again.
    pub fn rotate_secrets_key(&self) -> Result<(u32, usize), StoreError> {
        if self.inner.config.key_text.is_some() {
            return Err(SecretsError::KeyNotInFile.into());
        }
        let _rotation = self.inner.rotation.write();
        let both = Arc::new(self.keys().with_new_key()?);
        both.store(&self.inner.key_file)?;
        *self.inner.keys.write() = both.clone();
        let resealed = self.reseal_secrets()?;
        let new_only = both.current_only()?;
        new_only.store(&self.inner.key_file)?;
        let id = new_only.current_id();
        *self.inner.keys.write() = Arc::new(new_only);
        tracing::info!(key_id = id, resealed, "store key rotated");
        Ok((id, resealed))
    }

    /// An append writes its log entry, then its dedupe entry. A crash between the two can
    /// leave a group's newest messages without their dedupe entries (sled recovers writes in
    /// the order they were made, so only a group's tail); a resend of such a message would
    /// then be stored twice. This restores them, newest first, stopping at the first
    /// message that has its entry: one log and one dedupe read per group when nothing is
    /// missing. Returns how many it restored.
    fn repair_dedupe(&self) -> Result<usize, StoreError> {
        let mut restored = 0;
        for kv in self
            .h()?
            .directory
            .scan_prefix(keys::all_groups_prefix().as_slice())
        {
            let (key, _) = kv.map_err(|e| self.io(e))?;
            let (tenant, group) =
                keys::parse_group(&key).ok_or_else(|| corrupt(DIRECTORY, "short group key"))?;
            let tenant = codec::parse_id(DIRECTORY, tenant, TenantId::new)?;
            let group = codec::parse_id(DIRECTORY, group, GroupId::new)?;
            let prefix = keys::group_prefix(&tenant, &group);
            for kv in self.h()?.log.scan_prefix(prefix.as_slice()).rev() {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                let seq = keys::log_seq(&k).ok_or_else(|| corrupt(LOG, "short log key"))?;
                let m = codec::decode_message(seq, v)?;
                let dedupe_key = keys::dedupe(&prefix, &m.sender, &m.client_msg_id);
                if self
                    .h()?
                    .dedupe
                    .get(&dedupe_key)
                    .map_err(|e| self.io(e))?
                    .is_some()
                {
                    break;
                }
                self.h()?
                    .dedupe
                    .insert(dedupe_key, &codec::encode_seq(seq)[..])
                    .map_err(|e| self.io(e))?;
                restored += 1;
            }
        }
        if restored > 0 {
            self.h()?.db.flush().map_err(|e| self.io(e))?;
            tracing::warn!(
                restored,
                "restored dedupe entries of messages appended before a crash"
            );
        }
        Ok(restored)
    }

    /// Whether the `log` tree holds any message (a store written before the segment log).
    pub fn has_messages(&self) -> Result<bool, StoreError> {
        Ok(!self.h()?.log.is_empty())
    }

    /// Calls `f` with every message of the `log` tree, group by group, each group's in
    /// sequence order (for the migration to the segment log). Returns how many.
    pub fn export_messages(
        &self,
        mut f: impl FnMut(&TenantId, &GroupId, StoredMessage) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in self.h()?.log.iter() {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            let short = || corrupt(LOG, "short log key");
            let (tenant, group) = keys::parse_log(&k).ok_or_else(short)?;
            let tenant = codec::parse_id(LOG, tenant, TenantId::new)?;
            let group = codec::parse_id(LOG, group, GroupId::new)?;
            let seq = keys::log_seq(&k).ok_or_else(short)?;
            f(&tenant, &group, codec::decode_message(seq, v)?)?;
            n += 1;
        }
        Ok(n)
    }

    /// Empties the `log` and `dedupe` trees and makes that durable (after a migration).
    pub fn clear_messages(&self) -> Result<(), StoreError> {
        let h = self.h()?;
        h.log.clear().map_err(|e| self.io(e))?;
        h.dedupe.clear().map_err(|e| self.io(e))?;
        self.inner.heads.clear();
        h.db.flush().map_err(|e| self.io(e))?;
        h.data_file.sync_data().map_err(|e| self.os(e))?;
        Ok(())
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.h()?.db.size_on_disk().map_err(|e| self.io(e))
    }

    /// How many members a group has (a stored count, not a scan), `None` if there is no such
    /// group.
    pub fn member_count(
        &self,
        tenant: &TenantId,
        group: &GroupId,
    ) -> Result<Option<u32>, StoreError> {
        Ok(self.group_record(tenant, group)?.map(|g| g.members))
    }

    fn group_record(
        &self,
        tenant: &TenantId,
        group: &GroupId,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let key = keys::group(tenant, group);
        match self.h()?.directory.get(key).map_err(|e| self.io(e))? {
            Some(v) => Ok(Some(codec::decode_group(&v)?)),
            None => Ok(None),
        }
    }

    /// Ids that are the last key component under `prefix` in the directory, in key order.
    fn directory_ids<T>(
        &self,
        prefix: &[u8],
        parse: impl Fn(&str) -> Result<T, switchboard_core::IdError>,
    ) -> Result<Vec<T>, StoreError> {
        self.h()?
            .directory
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, _) = kv.map_err(|e| self.io(e))?;
                codec::parse_id(DIRECTORY, &k[prefix.len()..], &parse)
            })
            .collect()
    }

    /// The group's head: from the cache, else from the log's last key (then cached).
    fn current_head(&self, prefix: &Key) -> Result<u64, StoreError> {
        if let Some(head) = self.inner.heads.get(prefix.as_slice()) {
            return Ok(*head);
        }
        let head = self.disk_head(prefix)?;
        // Empty groups are not cached: the cache then only grows with groups that have
        // messages, however many ids `head` is asked about.
        if head > 0 {
            self.raise_head(prefix, head);
        }
        Ok(head)
    }

    fn disk_head(&self, prefix: &Key) -> Result<u64, StoreError> {
        match self.h()?.log.scan_prefix(prefix).next_back() {
            None => Ok(0),
            Some(kv) => {
                let (k, _) = kv.map_err(|e| self.io(e))?;
                keys::log_seq(&k).ok_or_else(|| corrupt(LOG, "short log key"))
            }
        }
    }

    fn raise_head(&self, prefix: &Key, seq: u64) {
        if let Some(mut head) = self.inner.heads.get_mut(prefix.as_slice()) {
            *head = (*head).max(seq);
            return;
        }
        self.inner
            .heads
            .entry(prefix.as_slice().into())
            .and_modify(|head| *head = (*head).max(seq))
            .or_insert(seq);
    }
}

impl Store for SledStore {
    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        let key = keys::tenant(&tenant.id);
        let _sealing = self.inner.rotation.read();
        let sealed = codec::encode_tenant(&self.keys(), &tenant.id, &tenant.secret)?;
        self.h()?
            .directory
            .insert(key, sealed)
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        match self
            .h()?
            .directory
            .get(keys::tenant(id))
            .map_err(|e| self.io(e))?
        {
            Some(v) => Ok(Some(codec::decode_tenant(&self.keys(), id.clone(), &v)?.0)),
            None => Ok(None),
        }
    }

    fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let prefix = [keys::TAG_TENANT];
        let ring = self.keys();
        self.h()?
            .directory
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                let id = codec::parse_id(DIRECTORY, &k[prefix.len()..], TenantId::new)?;
                Ok(codec::decode_tenant(&ring, id, &v)?.0)
            })
            .collect()
    }

    fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        meta: GroupMeta,
    ) -> Result<(), StoreError> {
        let key = keys::group(tenant, group);
        let record = codec::encode_group(&GroupRecord { meta, members: 0 });
        match self
            .h()?
            .directory
            .compare_and_swap(key, None::<&[u8]>, Some(&record[..]))
            .map_err(|e| self.io(e))?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::GroupExists(group.clone())),
        }
    }

    fn group(&self, tenant: &TenantId, group: &GroupId) -> Result<Option<GroupMeta>, StoreError> {
        Ok(self.group_record(tenant, group)?.map(|g| g.meta))
    }

    fn add_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let group_key = keys::group(tenant, group);
        let member_key = keys::member(tenant, group, user);
        let index_key = keys::user_group(tenant, user, group);
        self.h()?
            .directory
            .transaction(|tx| {
                let Some(raw) = tx.get(group_key)? else {
                    return abort(StoreError::GroupNotFound(group.clone()));
                };
                let mut record =
                    codec::decode_group(&raw).map_err(ConflictableTransactionError::Abort)?;
                if tx.get(member_key)?.is_some() {
                    return Ok(false);
                }
                if record.members >= record.meta.max_members {
                    return abort(StoreError::GroupFull {
                        group: group.clone(),
                        max: record.meta.max_members,
                    });
                }
                record.members += 1;
                tx.insert(member_key.as_slice(), &[][..])?;
                tx.insert(index_key.as_slice(), &[][..])?;
                tx.insert(group_key.as_slice(), &codec::encode_group(&record)[..])?;
                Ok(true)
            })
            .map_err(|e| self.note(txn_err(e)))
    }

    fn remove_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let group_key = keys::group(tenant, group);
        let member_key = keys::member(tenant, group, user);
        let index_key = keys::user_group(tenant, user, group);
        self.h()?
            .directory
            .transaction(|tx| {
                if tx.get(member_key)?.is_none() {
                    return Ok(false);
                }
                let Some(raw) = tx.get(group_key)? else {
                    return abort(corrupt(
                        DIRECTORY,
                        format!("member of missing group {group}"),
                    ));
                };
                let mut record =
                    codec::decode_group(&raw).map_err(ConflictableTransactionError::Abort)?;
                let Some(members) = record.members.checked_sub(1) else {
                    return abort(corrupt(
                        DIRECTORY,
                        format!("member count of {group} below zero"),
                    ));
                };
                record.members = members;
                tx.remove(member_key.as_slice())?;
                tx.remove(index_key.as_slice())?;
                tx.insert(group_key.as_slice(), &codec::encode_group(&record)[..])?;
                Ok(true)
            })
            .map_err(|e| self.note(txn_err(e)))
    }

    fn is_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        self.h()?
            .directory
            .contains_key(keys::member(tenant, group, user))
            .map_err(|e| self.io(e))
    }

    fn members(&self, tenant: &TenantId, group: &GroupId) -> Result<Vec<UserId>, StoreError> {
        self.directory_ids(keys::members_prefix(tenant, group).as_slice(), UserId::new)
    }

    fn member_count(&self, tenant: &TenantId, group: &GroupId) -> Result<Option<u32>, StoreError> {
        SledStore::member_count(self, tenant, group)
    }

    fn groups(&self, tenant: &TenantId) -> Result<Vec<GroupId>, StoreError> {
        self.directory_ids(keys::groups_prefix(tenant).as_slice(), GroupId::new)
    }

    fn groups_of(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<GroupId>, StoreError> {
        self.directory_ids(
            keys::user_groups_prefix(tenant, user).as_slice(),
            GroupId::new,
        )
    }

    fn find_sent(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let prefix = keys::group_prefix(tenant, group);
        let key = keys::dedupe(&prefix, sender, client_msg_id);
        match self.h()?.dedupe.get(key).map_err(|e| self.io(e))? {
            Some(v) => Ok(Some(codec::decode_seq(DEDUPE, &v)?)),
            None => Ok(None),
        }
    }

    fn append(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, StoreError> {
        let prefix = keys::group_prefix(tenant, group);
        let dedupe_key = keys::dedupe(&prefix, msg.sender, msg.client_msg_id);
        let value = IVec::from(codec::encode_message(&msg));
        for _ in 0..MAX_SEQ_RETRIES {
            let seq = self.current_head(&prefix)? + 1;
            let log_key = keys::log(&prefix, seq);
            // Two plain writes, log entry first, not a sled transaction: in sled 0.34 every
            // transaction or batch writes out the IO buffer before and after itself, which
            // made an append ~6x dearer than both writes (docs/benchmarks.md). Nothing reads
            // either entry before the flush that makes the message visible, and a crash
            // between them is mended at open (`repair_dedupe`).
            if let Some(earlier) = self.h()?.dedupe.get(&dedupe_key).map_err(|e| self.io(e))? {
                return Ok(Appended::Duplicate {
                    seq: codec::decode_seq(DEDUPE, &earlier)?,
                });
            }
            let placed = self
                .h()?
                .log
                .compare_and_swap(log_key.as_slice(), None::<&[u8]>, Some(value.clone()))
                .map_err(|e| self.io(e))?;
            if placed.is_err() {
                tracing::warn!(
                    %tenant, %group, seq,
                    "sequence number taken: concurrent appends to one group"
                );
                let head = self.disk_head(&prefix)?;
                self.raise_head(&prefix, head);
                continue;
            }
            // The log entry is written: if the dedupe entry is not, the message may still
            // become durable (and its dedupe entry be restored at the next open), so the
            // outcome is unknown rather than "not stored".
            self.h()
                .and_then(|h| {
                    h.dedupe
                        .insert(dedupe_key.as_slice(), &codec::encode_seq(seq)[..])
                        .map_err(|e| self.io(e))
                })
                .map_err(|e| StoreError::OutcomeUnknown(e.to_string()))?;
            self.raise_head(&prefix, seq);
            return Ok(Appended::New { seq });
        }
        Err(StoreError::Io(format!(
            "append to {tenant}/{group}: sequence number taken {MAX_SEQ_RETRIES} times"
        )))
    }

    fn head(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        self.current_head(&keys::group_prefix(tenant, group))
    }

    fn read_after(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = keys::group_prefix(tenant, group);
        let start = keys::log(&prefix, first);
        let end = keys::log(&prefix, u64::MAX);
        let mut out = Vec::with_capacity(limit.min(64));
        for kv in self
            .h()?
            .log
            .range(start.as_slice()..=end.as_slice())
            .take(limit)
        {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            let seq = keys::log_seq(&k).ok_or_else(|| corrupt(LOG, "short log key"))?;
            out.push(codec::decode_message(seq, v)?);
        }
        Ok(out)
    }

    fn message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let key = keys::log(&keys::group_prefix(tenant, group), seq);
        match self.h()?.log.get(key).map_err(|e| self.io(e))? {
            Some(v) => Ok(Some(codec::decode_message(seq, v)?)),
            None => Ok(None),
        }
    }

    fn advance_cursor(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
        seq: u64,
    ) -> Result<u64, StoreError> {
        let key = keys::cursor(tenant, group, user);
        cas_update(self, &self.h()?.cursors, key.as_slice(), |current| {
            let current = current
                .map(|v| codec::decode_seq(CURSORS, v))
                .transpose()?
                .unwrap_or(0);
            Ok(if seq > current {
                Update::Write(codec::encode_seq(seq), seq)
            } else {
                Update::Keep(current)
            })
        })
    }

    fn cursor(&self, tenant: &TenantId, group: &GroupId, user: &UserId) -> Result<u64, StoreError> {
        match self
            .h()?
            .cursors
            .get(keys::cursor(tenant, group, user))
            .map_err(|e| self.io(e))?
        {
            Some(v) => codec::decode_seq(CURSORS, &v),
            None => Ok(0),
        }
    }

    fn put_receipt(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
        receipt: &StoredReceipt,
    ) -> Result<(), StoreError> {
        let key = keys::receipt(tenant, group, seq, &receipt.user);
        cas_update(self, &self.h()?.receipts, key.as_slice(), |current| {
            let stored = current.map(codec::decode_receipt).transpose()?;
            let keep = crate::keeps_stored_receipt(stored.map(|(kind, _)| kind), receipt.kind);
            Ok(if keep {
                Update::Keep(())
            } else {
                Update::Write(codec::encode_receipt(receipt.kind, receipt.at_ms), ())
            })
        })
    }

    fn receipts(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        let prefix = keys::receipts_prefix(tenant, group, seq);
        self.h()?
            .receipts
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                let user = codec::parse_id(RECEIPTS, &k[prefix.as_slice().len()..], UserId::new)?;
                codec::receipt(user, &v)
            })
            .collect()
    }

    fn free_bytes(&self) -> Option<u64> {
        fs2::available_space(&self.inner.path).ok()
    }

    fn health(&self) -> StoreHealth {
        SledStore::health(self)
    }

    fn recover(&self) -> Result<bool, StoreError> {
        SledStore::recover(self)
    }

    fn rotate_secrets_key(&self) -> Result<(u32, usize), StoreError> {
        SledStore::rotate_secrets_key(self)
    }

    /// sled's flush writes its buffers and calls `sync_file_range`, which neither flushes
    /// the device's write cache nor records the file's new size: enough for a process
    /// crash, not for a power cut. The `fdatasync` after it makes what was flushed durable
    /// against both (one per commit batch, so its cost is shared by the batch).
    fn flush(&self) -> Result<(), StoreError> {
        self.h()?.db.flush().map_err(|e| self.io(e))?;
        self.h()?.data_file.sync_data().map_err(|e| self.os(e))?;
        Ok(())
    }
}
