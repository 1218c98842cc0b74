//! The records of the directory and the config store as bytes, and the writes a replica
//! needs: for a store that is a copy of a shared one (cluster mode keeps the directory and
//! config in a NATS KV bucket and mirrors it into each node's sled; `switchboard-cluster`).
//!
//! The encodings are sled's own (`codec.rs`), so a record reads back identically whichever
//! side wrote it. A tenant's secret travels sealed with the store key, so every node of a
//! cluster must hold the same key.

use std::collections::BTreeMap;

use switchboard_core::TenantId;

use super::{codec, SledStore};
use crate::config::MAX_PREVIOUS_VERSIONS;
use crate::{
    ApiKeyRecord, FlagRule, GroupMeta, PluginVersion, PolicyBinding, StoreError, TenantQuotas,
    TenantRecord,
};

/// A binding, as stored.
pub fn encode_binding(b: &PolicyBinding) -> Vec<u8> {
    codec::encode_binding(b)
}
pub fn decode_binding(value: &[u8]) -> Result<PolicyBinding, StoreError> {
    codec::decode_binding(value)
}

/// A tenant's flag rules, as stored.
pub fn encode_flags(flags: &BTreeMap<String, FlagRule>) -> Vec<u8> {
    codec::encode_flags(flags)
}
pub fn decode_flags(value: &[u8]) -> Result<BTreeMap<String, FlagRule>, StoreError> {
    codec::decode_flags(value)
}

/// A tenant's quotas, as stored.
pub fn encode_quotas(q: &TenantQuotas) -> Vec<u8> {
    codec::encode_quotas(q)
}
pub fn decode_quotas(value: &[u8]) -> Result<TenantQuotas, StoreError> {
    codec::decode_quotas(value)
}

/// An API key's record (tenant and id included), as stored.
pub fn encode_api_key(k: &ApiKeyRecord) -> Vec<u8> {
    codec::encode_api_key(k)
}
pub fn decode_api_key(value: &[u8]) -> Result<ApiKeyRecord, StoreError> {
    codec::decode_api_key(value)
}

/// A plugin version's metadata (tenant and version are named by the key), as stored.
pub fn encode_plugin(p: &PluginVersion) -> Vec<u8> {
    codec::encode_plugin(p)
}
pub fn decode_plugin(
    tenant: TenantId,
    version: String,
    value: &[u8],
) -> Result<PluginVersion, StoreError> {
    codec::decode_plugin(tenant, version, value)
}

/// A group's settings (without its member count, which each replica keeps itself).
pub fn encode_group_meta(meta: GroupMeta) -> Vec<u8> {
    codec::encode_group(&codec::GroupRecord { meta, members: 0 }).to_vec()
}
pub fn decode_group_meta(value: &[u8]) -> Result<GroupMeta, StoreError> {
    Ok(codec::decode_group(value)?.meta)
}

/// The degradation override level, as stored.
pub fn encode_level(level: u8) -> Vec<u8> {
    codec::encode_level(level).to_vec()
}
pub fn decode_level(value: &[u8]) -> Result<u8, StoreError> {
    codec::decode_level(value)
}

impl SledStore {
    /// The tenant's record with its secret sealed under this store's current key: what a
    /// shared directory holds, so the secret is never in the clear outside a node.
    pub fn seal_tenant(&self, tenant: &TenantRecord) -> Result<Vec<u8>, StoreError> {
        let _sealing = self.inner.rotation.read();
        codec::encode_tenant(&self.keys(), &tenant.id, &tenant.secret)
    }

    /// Opens a record [`SledStore::seal_tenant`] made, here or on another node with the
    /// same store key ([`StoreError::Secrets`] otherwise).
    pub fn open_tenant(&self, id: TenantId, sealed: &[u8]) -> Result<TenantRecord, StoreError> {
        Ok(codec::decode_tenant(&self.keys(), id, sealed)?.0)
    }

    /// Writes `binding` as it is, revision included (a replica copying what the shared
    /// store decided; [`crate::ConfigStore::update_binding`] is the way to change one).
    /// The config watch reports it like any binding change.
    pub fn replace_binding(
        &self,
        tenant: &TenantId,
        binding: &PolicyBinding,
    ) -> Result<(), StoreError> {
        if binding.previous.len() > MAX_PREVIOUS_VERSIONS {
            return Err(codec::corrupt(
                codec::CONFIG,
                format!("binding of {tenant} remembers too many versions"),
            ));
        }
        self.config_put(
            &super::keys::binding(tenant),
            &codec::encode_binding(binding),
        )
    }
}
