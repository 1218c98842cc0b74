//! [`ConfigStore`] on sled: the `config` tree (every record but plugin bytes) and the
//! `plugins` tree (plugin bytes). Keys in [`keys`], values in [`codec`].
//!
//! Every write flushes before it returns (config writes are rare; an operator told
//! "activated" must find it so after a crash). The watch is a sled subscription on the whole
//! `config` tree, each event mapped back to a [`ConfigChange`] by its key.

use std::collections::BTreeMap;

use sled::transaction::{ConflictableTransactionError, ConflictableTransactionResult};
use sled::{IVec, Subscriber, Transactional};
use switchboard_core::TenantId;

use super::codec::{self, corrupt, CONFIG};
use super::{cas_update, keys, txn_err, SledStore, Update};
use crate::{
    ApiKeyRecord, BindingRefused, ConfigChange, ConfigStore, ConfigWatch, FlagRule, PluginVersion,
    PolicyBinding, StoreError, TenantQuotas,
};

/// Aborts a transaction with a decode error.
fn abort_on<T>(r: Result<T, StoreError>) -> Result<T, ConflictableTransactionError<StoreError>> {
    r.map_err(ConflictableTransactionError::Abort)
}

impl SledStore {
    /// Makes config writes durable before they are reported done.
    fn durable(&self) -> Result<(), StoreError> {
        self.h()?.db.flush().map_err(|e| self.io(e))?;
        Ok(())
    }

    fn config_get<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match self.h()?.config.get(key).map_err(|e| self.io(e))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    pub(super) fn config_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.h()?
            .config
            .insert(key, value)
            .map_err(|e| self.io(e))?;
        self.durable()
    }
}

impl ConfigStore for SledStore {
    fn put_plugin(&self, meta: &PluginVersion, wasm: &[u8]) -> Result<bool, StoreError> {
        let meta_key = keys::plugin(&meta.tenant, &meta.version);
        let bytes_key = keys::plugin_bytes(&meta.tenant, &meta.version);
        let meta_value = IVec::from(codec::encode_plugin(meta));
        let bytes_value = IVec::from(codec::encode_plugin_bytes(wasm));
        let inner = self.h()?;
        // Trees commit in this order: the bytes are in place before a watcher can see the
        // metadata that announces them.
        let stored = (&inner.plugins, &inner.config)
            .transaction(
                |(plugins, config)| -> ConflictableTransactionResult<_, StoreError> {
                    if config.get(&meta_key)?.is_some() {
                        return Ok(false);
                    }
                    plugins.insert(bytes_key.as_slice(), bytes_value.clone())?;
                    config.insert(meta_key.as_slice(), meta_value.clone())?;
                    Ok(true)
                },
            )
            .map_err(|e| self.note(txn_err(e)))?;
        // Also when it was there already: a concurrent first upload may not have flushed yet,
        // and "already stored" must mean durable too.
        self.durable()?;
        Ok(stored)
    }

    fn plugin(
        &self,
        tenant: &TenantId,
        version: &str,
    ) -> Result<Option<PluginVersion>, StoreError> {
        self.config_get(&keys::plugin(tenant, version), |v| {
            codec::decode_plugin(tenant.clone(), version.to_owned(), v)
        })
    }

    fn plugin_bytes(
        &self,
        tenant: &TenantId,
        version: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self
            .h()?
            .plugins
            .get(keys::plugin_bytes(tenant, version))
            .map_err(|e| self.io(e))?
        {
            Some(v) => Ok(Some(codec::decode_plugin_bytes(&v)?)),
            None => Ok(None),
        }
    }

    fn plugins(&self, tenant: &TenantId) -> Result<Vec<PluginVersion>, StoreError> {
        let prefix = keys::plugins_prefix(tenant);
        let mut versions = self
            .h()?
            .config
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                let version = std::str::from_utf8(&k[prefix.len()..])
                    .map_err(|_| corrupt(CONFIG, "plugin version is not UTF-8"))?;
                codec::decode_plugin(tenant.clone(), version.to_owned(), &v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Keys sort by version (a hash); the contract is upload order. Ties by version keep
        // the order stable.
        versions
            .sort_by(|a, b| (a.uploaded_at_ms, &a.version).cmp(&(b.uploaded_at_ms, &b.version)));
        Ok(versions)
    }

    fn binding(&self, tenant: &TenantId) -> Result<PolicyBinding, StoreError> {
        Ok(self
            .config_get(&keys::binding(tenant), codec::decode_binding)?
            .unwrap_or_default())
    }

    fn update_binding(
        &self,
        tenant: &TenantId,
        now_ms: u64,
        change: &mut dyn FnMut(&mut PolicyBinding) -> Result<(), BindingRefused>,
    ) -> Result<Result<PolicyBinding, BindingRefused>, StoreError> {
        let key = keys::binding(tenant);
        let outcome = cas_update(self, &self.h()?.config, &key, |current| {
            // Decoded afresh on every attempt: `change` never sees its own earlier edits.
            let mut binding = current
                .map(codec::decode_binding)
                .transpose()?
                .unwrap_or_default();
            let revision = binding
                .revision
                .checked_add(1)
                .ok_or_else(|| corrupt(CONFIG, format!("binding revision of {tenant} at max")))?;
            if let Err(refused) = change(&mut binding) {
                return Ok(Update::Keep(Err(refused)));
            }
            binding.stamp(revision, now_ms);
            Ok(Update::Write(codec::encode_binding(&binding), Ok(binding)))
        })?;
        if outcome.is_ok() {
            self.durable()?;
        }
        Ok(outcome)
    }

    fn bound_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let prefix = [keys::TAG_BINDING];
        self.h()?
            .config
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, _) = kv.map_err(|e| self.io(e))?;
                codec::parse_id(CONFIG, &k[prefix.len()..], TenantId::new)
            })
            .collect()
    }

    fn flags(&self, tenant: &TenantId) -> Result<BTreeMap<String, FlagRule>, StoreError> {
        Ok(self
            .config_get(&keys::flags(tenant), codec::decode_flags)?
            .unwrap_or_default())
    }

    /// Stores the rules as given: the caller validates them (including
    /// [`MAX_FLAG_RULES`](crate::config::MAX_FLAG_RULES)).
    fn put_flags(
        &self,
        tenant: &TenantId,
        flags: &BTreeMap<String, FlagRule>,
    ) -> Result<(), StoreError> {
        self.config_put(&keys::flags(tenant), &codec::encode_flags(flags))
    }

    fn quotas(&self, tenant: &TenantId) -> Result<TenantQuotas, StoreError> {
        Ok(self
            .config_get(&keys::quotas(tenant), codec::decode_quotas)?
            .unwrap_or_default())
    }

    fn put_quotas(&self, tenant: &TenantId, quotas: &TenantQuotas) -> Result<(), StoreError> {
        self.config_put(&keys::quotas(tenant), &codec::encode_quotas(quotas))
    }

    /// Creates or replaces the key `(tenant, id)`. A hash belongs to one key: if another
    /// record has the same hash, the index moves to this one (the other then no longer
    /// authenticates).
    fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let record_key = keys::api_key(&key.tenant, &key.id);
        let hash_key = keys::api_key_hash(&key.hash);
        let value = IVec::from(codec::encode_api_key(key));
        self.h()?
            .config
            .transaction(|tx| -> ConflictableTransactionResult<_, StoreError> {
                // Replacing a key's hash: its old hash must stop authenticating.
                if let Some(old) = tx.insert(record_key.as_slice(), value.clone())? {
                    let old_hash = abort_on(codec::decode_api_key(&old))?.hash;
                    let old_hash_key = keys::api_key_hash(&old_hash);
                    // Record and index hold the same bytes, so equal bytes mean "points here".
                    if old_hash != key.hash && tx.get(old_hash_key)?.as_ref() == Some(&old) {
                        tx.remove(&old_hash_key[..])?;
                    }
                }
                tx.insert(&hash_key[..], value.clone())?;
                Ok(())
            })
            .map_err(|e| self.note(txn_err(e)))?;
        self.durable()
    }

    fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.config_get(&keys::api_key_hash(hash), codec::decode_api_key)
    }

    fn api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.h()?
            .config
            .scan_prefix(keys::api_keys_prefix(tenant))
            .map(|kv| codec::decode_api_key(&kv.map_err(|e| self.io(e))?.1))
            .collect()
    }

    fn delete_api_key(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let record_key = keys::api_key(tenant, id);
        let deleted = self
            .h()?
            .config
            .transaction(|tx| -> ConflictableTransactionResult<_, StoreError> {
                let Some(old) = tx.remove(record_key.as_slice())? else {
                    return Ok(false);
                };
                let hash_key = keys::api_key_hash(&abort_on(codec::decode_api_key(&old))?.hash);
                // Leave the index alone if a later record took the hash over.
                if tx.get(hash_key)?.as_ref() == Some(&old) {
                    tx.remove(&hash_key[..])?;
                }
                Ok(true)
            })
            .map_err(|e| self.note(txn_err(e)))?;
        if deleted {
            self.durable()?;
        }
        Ok(deleted)
    }

    fn degradation_override(&self) -> Result<Option<u8>, StoreError> {
        self.config_get(keys::DEGRADATION, codec::decode_level)
    }

    fn set_degradation_override(&self, level: Option<u8>) -> Result<(), StoreError> {
        match level {
            Some(level) => self.config_put(keys::DEGRADATION, &codec::encode_level(level)),
            None => {
                self.h()?
                    .config
                    .remove(keys::DEGRADATION)
                    .map_err(|e| self.io(e))?;
                self.durable()
            }
        }
    }

    /// One change per record written; a write that leaves a record as it was is not
    /// reported. The watch must be drained: 1024 events behind, it blocks config writers,
    /// and with them the whole store (see "Costs worth knowing" in the `sled_store` module). Drop a watch
    /// that is no longer read.
    fn watch(&self) -> Result<Box<dyn ConfigWatch>, StoreError> {
        let (next, reopened) = std::sync::mpsc::channel();
        // Under the watchers' lock, so a reopen cannot slip between the subscription and
        // the registration.
        let mut watchers = self.inner.watchers.lock();
        let events = self.h()?.config.watch_prefix(b"");
        watchers.push(next);
        Ok(Box::new(SledConfigWatch { events, reopened }))
    }
}

/// [`ConfigWatch`] over a sled subscription to the whole `config` tree. It holds no
/// reference to the database. When the database is reopened after a failure
/// ([`SledStore::recover`]) the subscription ends and the reopen hands over one to the new
/// database (through `reopened`) before anything is written to it; once the last
/// [`SledStore`] clone is dropped there is none to come, and the watch ends (`None`).
pub(super) struct SledConfigWatch {
    events: Subscriber,
    reopened: std::sync::mpsc::Receiver<Subscriber>,
}

impl ConfigWatch for SledConfigWatch {
    fn next_change(&mut self) -> Option<ConfigChange> {
        loop {
            let change = self.events.by_ref().find_map(|event| {
                let key = event.key();
                let change = keys::config_change(key);
                if change.is_none() && key.first() != Some(&keys::TAG_API_KEY_HASH) {
                    tracing::warn!(?key, "config watch: skipping a key that does not decode");
                }
                change
            });
            if change.is_some() {
                return change;
            }
            // The database went away: reopened (a new subscription comes) or closed.
            self.events = self.reopened.recv().ok()?;
        }
    }
}
