//! Key layout of every sled tree. Keys are built on the stack ([`Key`]) so lookups on the
//! message path do not allocate.
//!
//! Every id component except a key's last is length-prefixed (one byte: ids are at most
//! [`MAX_ID_LEN`] bytes), so a key's components can be read back only one way: tenant `a`
//! group `bc` is `01 'a' 02 'b' 'c'`, tenant `ab` group `c` is `02 'a' 'b' 01 'c'`. The last
//! component is the rest of the key, unprefixed, which keeps keys under one prefix sorted the
//! way the ids themselves sort (`members` and `groups_of` return scans in order, unsorted).
//! Sequence numbers are big-endian `u64`, so a group's log scans in sequence order.
//!
//! The config and plugins trees follow the same rules, but their keys are built on the heap:
//! they end in free-form strings (plugin versions, API key ids) of no bounded length, and
//! config is read far less often than the message path.

use switchboard_core::id::MAX_ID_LEN;
use switchboard_core::{GroupId, TenantId, UserId};

use crate::ConfigChange;

/// Tags of the directory tree's record kinds (first key byte).
pub(super) const TAG_TENANT: u8 = b'T';
pub(super) const TAG_GROUP: u8 = b'G';
pub(super) const TAG_MEMBER: u8 = b'M';
pub(super) const TAG_USER_GROUP: u8 = b'U';

/// Tags of the config tree's record kinds (first key byte).
pub(super) const TAG_PLUGIN: u8 = b'P';
pub(super) const TAG_BINDING: u8 = b'B';
pub(super) const TAG_FLAGS: u8 = b'F';
pub(super) const TAG_QUOTAS: u8 = b'Q';
pub(super) const TAG_API_KEY: u8 = b'K';
pub(super) const TAG_API_KEY_HASH: u8 = b'H';
pub(super) const TAG_DEGRADATION: u8 = b'D';

/// Longest key built here: a tag, two length-prefixed ids, a sequence number and a last id.
const CAP: usize = 1 + 2 * (1 + MAX_ID_LEN) + 8 + MAX_ID_LEN;

/// A key under construction, on the stack.
#[derive(Clone, Copy)]
pub(super) struct Key {
    len: usize,
    buf: [u8; CAP],
}

impl Key {
    fn empty() -> Self {
        Self {
            len: 0,
            buf: [0; CAP],
        }
    }

    fn tagged(tag: u8) -> Self {
        Self::empty().bytes(&[tag])
    }

    fn bytes(mut self, bytes: &[u8]) -> Self {
        // Ids are validated to at most MAX_ID_LEN bytes and CAP covers the longest layout,
        // so this cannot overflow; the slice index would panic if that ever changed.
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        self
    }

    /// A length-prefixed id (any component but the last).
    fn id(self, id: &str) -> Self {
        debug_assert!(id.len() <= MAX_ID_LEN);
        self.bytes(&[id.len() as u8]).bytes(id.as_bytes())
    }

    /// The last component: the rest of the key.
    fn last(self, id: &str) -> Self {
        self.bytes(id.as_bytes())
    }

    fn seq(self, seq: u64) -> Self {
        self.bytes(&seq.to_be_bytes())
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

// --- directory tree ---

/// `T tenant` → tenant record.
pub(super) fn tenant(tenant: &TenantId) -> Key {
    Key::tagged(TAG_TENANT).last(tenant.as_str())
}

/// `G len tenant group` → group record (meta and member count).
pub(super) fn group(tenant: &TenantId, group: &GroupId) -> Key {
    Key::tagged(TAG_GROUP)
        .id(tenant.as_str())
        .last(group.as_str())
}

/// `G`: prefix of every group record.
pub(super) fn all_groups_prefix() -> Key {
    Key::tagged(TAG_GROUP)
}

/// The `(tenant, group)` of a group record's key (see [`group`]).
pub(super) fn parse_group(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&tag, rest) = key.split_first()?;
    let (&len, rest) = rest.split_first()?;
    (tag == TAG_GROUP && rest.len() > usize::from(len)).then(|| rest.split_at(usize::from(len)))
}

/// `G len tenant`: prefix of a tenant's groups.
pub(super) fn groups_prefix(tenant: &TenantId) -> Key {
    Key::tagged(TAG_GROUP).id(tenant.as_str())
}

/// `M len tenant len group` ...
pub(super) fn members_prefix(tenant: &TenantId, group: &GroupId) -> Key {
    Key::tagged(TAG_MEMBER)
        .id(tenant.as_str())
        .id(group.as_str())
}

/// ... `user` → empty (a member).
pub(super) fn member(tenant: &TenantId, group: &GroupId, user: &UserId) -> Key {
    members_prefix(tenant, group).last(user.as_str())
}

/// `U len tenant len user` ...
pub(super) fn user_groups_prefix(tenant: &TenantId, user: &UserId) -> Key {
    Key::tagged(TAG_USER_GROUP)
        .id(tenant.as_str())
        .id(user.as_str())
}

/// ... `group` → empty (the per-user index of memberships).
pub(super) fn user_group(tenant: &TenantId, user: &UserId, group: &GroupId) -> Key {
    user_groups_prefix(tenant, user).last(group.as_str())
}

// --- log, cursors and receipts trees: keys start with `len tenant len group` ---

/// `len tenant len group`: a group's prefix in the log, cursors and receipts trees.
pub(super) fn group_prefix(tenant: &TenantId, group: &GroupId) -> Key {
    Key::empty().id(tenant.as_str()).id(group.as_str())
}

/// Log: `group_prefix seq` → message.
pub(super) fn log(prefix: &Key, seq: u64) -> Key {
    prefix.seq(seq)
}

/// Tenant and group of a log key (`len tenant len group seq`).
pub(super) fn parse_log(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = key.split_first()?;
    let (tenant, rest) = rest.split_at_checked(usize::from(len))?;
    let (&len, rest) = rest.split_first()?;
    let (group, seq) = rest.split_at_checked(usize::from(len))?;
    (seq.len() == 8).then_some((tenant, group))
}

/// The sequence number of a log key.
pub(super) fn log_seq(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Cursors: `group_prefix user` → cursor.
pub(super) fn cursor(tenant: &TenantId, group: &GroupId, user: &UserId) -> Key {
    group_prefix(tenant, group).last(user.as_str())
}

/// Receipts: `group_prefix seq` ...
pub(super) fn receipts_prefix(tenant: &TenantId, group: &GroupId, seq: u64) -> Key {
    group_prefix(tenant, group).seq(seq)
}

/// ... `user` → receipt.
pub(super) fn receipt(tenant: &TenantId, group: &GroupId, seq: u64, user: &UserId) -> Key {
    receipts_prefix(tenant, group, seq).last(user.as_str())
}

/// Dedupe: `group_prefix len sender client_msg_id` → sequence number. The client message id
/// is arbitrary UTF-8 of any length, so this key is built on the heap; as the last component
/// it needs no length prefix.
pub(super) fn dedupe(prefix: &Key, sender: &UserId, client_msg_id: &str) -> Vec<u8> {
    let sender = sender.as_str();
    let mut key = Vec::with_capacity(prefix.len + 1 + sender.len() + client_msg_id.len());
    key.extend_from_slice(prefix.as_slice());
    key.push(sender.len() as u8);
    key.extend_from_slice(sender.as_bytes());
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

// --- config tree (tag first) and plugins tree ---

/// `tag len tenant` + `last` (the last component, unprefixed).
fn tenant_key(tag: Option<u8>, tenant: &TenantId, last: &[u8]) -> Vec<u8> {
    let tenant = tenant.as_str();
    let mut key = Vec::with_capacity(2 + tenant.len() + last.len());
    key.extend(tag);
    key.push(tenant.len() as u8);
    key.extend_from_slice(tenant.as_bytes());
    key.extend_from_slice(last);
    key
}

/// `P len tenant` ...
pub(super) fn plugins_prefix(tenant: &TenantId) -> Vec<u8> {
    tenant_key(Some(TAG_PLUGIN), tenant, b"")
}

/// ... `version` → plugin version metadata.
pub(super) fn plugin(tenant: &TenantId, version: &str) -> Vec<u8> {
    tenant_key(Some(TAG_PLUGIN), tenant, version.as_bytes())
}

/// Plugins tree: `len tenant version` → the component's bytes.
pub(super) fn plugin_bytes(tenant: &TenantId, version: &str) -> Vec<u8> {
    tenant_key(None, tenant, version.as_bytes())
}

/// `B tenant` → binding.
pub(super) fn binding(tenant: &TenantId) -> Vec<u8> {
    tagged_tenant(TAG_BINDING, tenant)
}

/// `F tenant` → flag rules.
pub(super) fn flags(tenant: &TenantId) -> Vec<u8> {
    tagged_tenant(TAG_FLAGS, tenant)
}

/// `Q tenant` → quotas.
pub(super) fn quotas(tenant: &TenantId) -> Vec<u8> {
    tagged_tenant(TAG_QUOTAS, tenant)
}

fn tagged_tenant(tag: u8, tenant: &TenantId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + tenant.as_str().len());
    key.push(tag);
    key.extend_from_slice(tenant.as_str().as_bytes());
    key
}

/// `K len tenant` ...
pub(super) fn api_keys_prefix(tenant: &TenantId) -> Vec<u8> {
    tenant_key(Some(TAG_API_KEY), tenant, b"")
}

/// ... `id` → API key record.
pub(super) fn api_key(tenant: &TenantId, id: &str) -> Vec<u8> {
    tenant_key(Some(TAG_API_KEY), tenant, id.as_bytes())
}

/// `H hash` → the same API key record (the index that authenticates a key in one lookup).
pub(super) fn api_key_hash(hash: &[u8; 32]) -> [u8; 33] {
    let mut key = [TAG_API_KEY_HASH; 33];
    key[1..].copy_from_slice(hash);
    key
}

/// `D` → the node's degradation override.
pub(super) const DEGRADATION: &[u8] = &[TAG_DEGRADATION];

/// What a write to config key `key` changed, for the watch. `None` for the API-key hash
/// index (it is only ever written in one transaction with the `K` record, which reports the
/// change) and for keys that do not decode.
pub(super) fn config_change(key: &[u8]) -> Option<ConfigChange> {
    let (&tag, rest) = key.split_first()?;
    let tenant = |bytes: &[u8]| {
        let id = std::str::from_utf8(bytes).ok()?;
        TenantId::new(id).ok()
    };
    // `len tenant …`: the tenant of a key whose tenant is length-prefixed.
    let prefixed = |rest: &[u8]| {
        let (&len, rest) = rest.split_first()?;
        tenant(rest.get(..usize::from(len))?)
    };
    Some(match tag {
        TAG_BINDING => ConfigChange::Binding(tenant(rest)?),
        TAG_FLAGS => ConfigChange::Flags(tenant(rest)?),
        TAG_QUOTAS => ConfigChange::Quotas(tenant(rest)?),
        TAG_API_KEY => ConfigChange::ApiKeys(prefixed(rest)?),
        TAG_PLUGIN => ConfigChange::PluginVersions(prefixed(rest)?),
        TAG_DEGRADATION if rest.is_empty() => ConfigChange::Degradation,
        _ => return None,
    })
}
