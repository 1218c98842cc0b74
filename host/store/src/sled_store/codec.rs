//! Value encodings: hand-written, big-endian, each starting with a version byte so the format
//! can change without guessing. Anything that does not decode is [`StoreError::Corrupt`].
//!
//! | record  | layout after the version byte                                               |
//! |---------|-----------------------------------------------------------------------------|
//! | tenant  | version 2: key id u32, nonce [u8; 12], sealed secret and tag (see `secrets`); version 1 (read only): secret (rest) |
//! | group   | flags u8 (bit 0 = open), max_members u32, member count u32                  |
//! | member, user→group | (empty value, no version byte: the key is the record)            |
//! | message | sent_at_ms u64, lane u8, sender len u8, sender, client_msg_id len u32, id, body (rest) |
//! | dedupe, cursor | seq u64                                                              |
//! | receipt | kind u8 (0 delivered, 1 read), at_ms u64                                    |
//!
//! Config records (config and plugins trees). `str` is a `u32` length and UTF-8, `id` a `u8`
//! length and an id, `opt(x)` a `u8` 0 (absent) or 1 followed by `x`, `list(x)` a `u32` count
//! of `x`, `bool` a `u8` 0 or 1.
//!
//! | record          | layout after the version byte                                        |
//! |-----------------|----------------------------------------------------------------------|
//! | plugin version  | size u64, uploaded_at_ms u64, uploader str, imports list(str)        |
//! | plugin bytes    | the component (rest)                                                 |
//! | binding         | active opt(vc), previous list(vc), canary opt(canary), last_rollback opt(rollback), revision u64, updated_at_ms u64 |
//! | ↳ vc            | version str, config list(key str, value str)                         |
//! | ↳ canary        | vc, percent u8, groups list(id), started_at_ms u64                   |
//! | ↳ rollback      | from str, to opt(str), automatic bool, reason str, at_ms u64         |
//! | flags           | list(name str, enabled bool, percent u8, users list(id))             |
//! | quotas          | max_groups u32, max_plugin_versions u32, max_plugin_bytes u32        |
//! | API key (both the record and its hash index) | tenant id, id str, hash [u8; 32], created_at_ms u64, label str |
//! | degradation     | level u8                                                             |

use std::collections::BTreeMap;

use bytes::Bytes;
use sled::IVec;
use switchboard_core::{GroupId, Lane, ReceiptKind, TenantId, UserId};

use crate::secrets::{self, KeyRing};
use crate::{
    ApiKeyRecord, Canary, FlagRule, GroupMeta, NewMessage, PluginVersion, PolicyBinding,
    RollbackRecord, StoreError, StoredMessage, StoredReceipt, TenantQuotas, TenantRecord,
    VersionConfig,
};

const V1: u8 = 1;

/// Names of the trees, for errors.
pub(super) const DIRECTORY: &str = "directory";
pub(super) const LOG: &str = "log";
pub(super) const DEDUPE: &str = "dedupe";
pub(super) const CURSORS: &str = "cursors";
pub(super) const RECEIPTS: &str = "receipts";
pub(super) const CONFIG: &str = "config";
pub(super) const PLUGINS: &str = "plugins";

pub(super) fn corrupt(tree: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree,
        detail: detail.into(),
    }
}

/// Reads a value front to back.
struct Reader<'a> {
    tree: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the version byte.
    fn new(tree: &'static str, buf: &'a [u8]) -> Result<Self, StoreError> {
        match buf.split_first() {
            Some((&V1, rest)) => Ok(Self { tree, buf: rest }),
            Some((v, _)) => Err(corrupt(tree, format!("unknown record version {v}"))),
            None => Err(corrupt(tree, "empty record")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.buf.len() < n {
            return Err(corrupt(self.tree, "record truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn str(&mut self, len: usize) -> Result<&'a str, StoreError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| corrupt(self.tree, "string is not UTF-8"))
    }

    /// Everything left.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless everything was read.
    /// Whether every byte was read (a record may end before its optional last field).
    fn at_end(&self) -> bool {
        self.buf.is_empty()
    }

    fn finish(self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(corrupt(self.tree, "trailing bytes"))
        }
    }

    // --- the config records' building blocks (see the module doc) ---

    fn string(&mut self) -> Result<String, StoreError> {
        let len = self.u32()?;
        Ok(self.str(len as usize)?.to_owned())
    }

    fn id<T>(
        &mut self,
        parse: impl FnOnce(&str) -> Result<T, switchboard_core::IdError>,
    ) -> Result<T, StoreError> {
        let len = self.u8()?;
        parse_id(self.tree, self.take(usize::from(len))?, parse)
    }

    fn bool(&mut self) -> Result<bool, StoreError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(corrupt(self.tree, format!("bad bool or option tag {b}"))),
        }
    }

    fn opt<T>(
        &mut self,
        item: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        if self.bool()? {
            Ok(Some(item(self)?))
        } else {
            Ok(None)
        }
    }

    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let count = self.u32()? as usize;
        // Every item takes at least a byte: a corrupt count cannot make us reserve more.
        let mut out = Vec::with_capacity(count.min(self.buf.len()));
        for _ in 0..count {
            out.push(item(self)?);
        }
        Ok(out)
    }
}

/// Builds a config value front to back, starting with the version byte.
struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Self {
        Self(vec![V1])
    }

    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn len(&mut self, len: usize) {
        self.u32(u32::try_from(len).expect("config values are shorter than 4 GiB"));
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Ids are at most `MAX_ID_LEN` (64) bytes, so one length byte does.
    fn id(&mut self, id: &str) {
        self.u8(id.len() as u8);
        self.0.extend_from_slice(id.as_bytes());
    }

    fn bool(&mut self, b: bool) {
        self.u8(u8::from(b));
    }

    fn opt<T>(&mut self, v: Option<&T>, item: impl FnOnce(&mut Self, &T)) {
        self.bool(v.is_some());
        if let Some(v) = v {
            item(self, v);
        }
    }

    fn list<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) {
        self.len(items.len());
        for v in items {
            item(self, v);
        }
    }

    fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Decodes an id stored in a key or value.
pub(super) fn parse_id<T>(
    tree: &'static str,
    bytes: &[u8],
    parse: impl FnOnce(&str) -> Result<T, switchboard_core::IdError>,
) -> Result<T, StoreError> {
    let s = std::str::from_utf8(bytes).map_err(|_| corrupt(tree, "id is not UTF-8"))?;
    parse(s).map_err(|e| corrupt(tree, format!("bad id: {e}")))
}

// --- tenant ---

/// A tenant's record: its secret sealed under the ring's current key ([`crate::secrets`]).
pub(super) fn encode_tenant(
    ring: &KeyRing,
    id: &TenantId,
    secret: &[u8],
) -> Result<Vec<u8>, StoreError> {
    Ok(ring.seal(id.as_str(), secret)?)
}

/// A tenant's record as stored, and whether it must be sealed again under the ring's
/// current key (it is in the clear, version 1, or sealed under an older key).
pub(super) fn decode_tenant(
    ring: &KeyRing,
    id: TenantId,
    value: &[u8],
) -> Result<(TenantRecord, bool), StoreError> {
    match value.first() {
        Some(&secrets::PLAIN) => {
            let secret = value[1..].to_vec();
            Ok((TenantRecord { id, secret }, true))
        }
        Some(&secrets::SEALED) => {
            let (secret, key_id) = ring.open(id.as_str(), value)?;
            let stale = key_id != ring.current_id();
            Ok((TenantRecord { id, secret }, stale))
        }
        Some(v) => Err(corrupt(
            DIRECTORY,
            format!("unknown tenant record version {v}"),
        )),
        None => Err(corrupt(DIRECTORY, "empty tenant record")),
    }
}

/// The record of a secret in the clear, as stores wrote it before secrets were sealed (for
/// the migration tests).
#[cfg(test)]
pub(super) fn encode_tenant_plain(secret: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + secret.len());
    v.push(secrets::PLAIN);
    v.extend_from_slice(secret);
    v
}

// --- group ---

/// A group's record: its settings and how many members it has (kept with the member set,
/// in the same transaction, so the limit check never scans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GroupRecord {
    pub(super) meta: GroupMeta,
    pub(super) members: u32,
}

const GROUP_OPEN: u8 = 1;

pub(super) fn encode_group(g: &GroupRecord) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[0] = V1;
    v[1] = if g.meta.open { GROUP_OPEN } else { 0 };
    v[2..6].copy_from_slice(&g.meta.max_members.to_be_bytes());
    v[6..10].copy_from_slice(&g.members.to_be_bytes());
    v
}

pub(super) fn decode_group(value: &[u8]) -> Result<GroupRecord, StoreError> {
    let mut r = Reader::new(DIRECTORY, value)?;
    let flags = r.u8()?;
    if flags & !GROUP_OPEN != 0 {
        return Err(corrupt(
            DIRECTORY,
            format!("unknown group flags {flags:#x}"),
        ));
    }
    let max_members = r.u32()?;
    let members = r.u32()?;
    r.finish()?;
    Ok(GroupRecord {
        meta: GroupMeta {
            open: flags & GROUP_OPEN != 0,
            max_members,
        },
        members,
    })
}

// --- message ---

pub(super) fn encode_message(m: &NewMessage<'_>) -> Vec<u8> {
    let sender = m.sender.as_str();
    let id = m.client_msg_id.as_bytes();
    let id_len = u32::try_from(id.len()).expect("client_msg_id shorter than 4 GiB");
    let mut v = Vec::with_capacity(1 + 8 + 1 + 1 + sender.len() + 4 + id.len() + m.body.len());
    v.push(V1);
    v.extend_from_slice(&m.sent_at_ms.to_be_bytes());
    v.push(m.lane.rank());
    v.push(sender.len() as u8);
    v.extend_from_slice(sender.as_bytes());
    v.extend_from_slice(&id_len.to_be_bytes());
    v.extend_from_slice(id);
    v.extend_from_slice(m.body);
    v
}

/// Decodes a message; the body shares the value's buffer instead of copying it.
pub(super) fn decode_message(seq: u64, value: IVec) -> Result<StoredMessage, StoreError> {
    let mut r = Reader::new(LOG, &value)?;
    let sent_at_ms = r.u64()?;
    let lane = r.u8()?;
    let lane = Lane::from_rank(lane).ok_or_else(|| StoreError::Corrupt {
        tree: LOG,
        detail: format!("unknown lane {lane}"),
    })?;
    let sender_len = r.u8()?;
    let sender = parse_id(LOG, r.take(usize::from(sender_len))?, UserId::new)?;
    let id_len = r.u32()?;
    let client_msg_id = r.str(id_len as usize)?.to_owned();
    let body_start = value.len() - r.rest().len();
    let body = Bytes::from_owner(value).slice(body_start..);
    Ok(StoredMessage {
        seq,
        lane,
        sender,
        client_msg_id,
        sent_at_ms,
        body,
    })
}

// --- dedupe, cursor ---

pub(super) fn encode_seq(seq: u64) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[0] = V1;
    v[1..].copy_from_slice(&seq.to_be_bytes());
    v
}

pub(super) fn decode_seq(tree: &'static str, value: &[u8]) -> Result<u64, StoreError> {
    let mut r = Reader::new(tree, value)?;
    let seq = r.u64()?;
    r.finish()?;
    Ok(seq)
}

// --- receipt ---

pub(super) fn encode_receipt(kind: ReceiptKind, at_ms: u64) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[0] = V1;
    v[1] = match kind {
        ReceiptKind::Delivered => 0,
        ReceiptKind::Read => 1,
    };
    v[2..].copy_from_slice(&at_ms.to_be_bytes());
    v
}

pub(super) fn decode_receipt(value: &[u8]) -> Result<(ReceiptKind, u64), StoreError> {
    let mut r = Reader::new(RECEIPTS, value)?;
    let kind = match r.u8()? {
        0 => ReceiptKind::Delivered,
        1 => ReceiptKind::Read,
        k => return Err(corrupt(RECEIPTS, format!("unknown receipt kind {k}"))),
    };
    let at_ms = r.u64()?;
    r.finish()?;
    Ok((kind, at_ms))
}

pub(super) fn receipt(user: UserId, value: &[u8]) -> Result<StoredReceipt, StoreError> {
    let (kind, at_ms) = decode_receipt(value)?;
    Ok(StoredReceipt { user, kind, at_ms })
}

// --- plugin versions ---

pub(super) fn encode_plugin(p: &PluginVersion) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(p.size);
    w.u64(p.uploaded_at_ms);
    w.str(&p.uploader);
    w.list(&p.imports, |w, s| w.str(s));
    // Last and only when set: records written before labels existed end after the imports.
    if let Some(label) = &p.label {
        w.str(label);
    }
    w.finish()
}

/// Decodes a version's metadata; tenant and version come from its key.
pub(super) fn decode_plugin(
    tenant: TenantId,
    version: String,
    value: &[u8],
) -> Result<PluginVersion, StoreError> {
    let mut r = Reader::new(CONFIG, value)?;
    let size = r.u64()?;
    let uploaded_at_ms = r.u64()?;
    let uploader = r.string()?;
    let imports = r.list(Reader::string)?;
    let label = if r.at_end() { None } else { Some(r.string()?) };
    r.finish()?;
    Ok(PluginVersion {
        tenant,
        version,
        size,
        uploader,
        uploaded_at_ms,
        imports,
        label,
    })
}

pub(super) fn encode_plugin_bytes(wasm: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + wasm.len());
    v.push(V1);
    v.extend_from_slice(wasm);
    v
}

pub(super) fn decode_plugin_bytes(value: &[u8]) -> Result<Vec<u8>, StoreError> {
    Ok(Reader::new(PLUGINS, value)?.rest().to_vec())
}

// --- binding ---

fn write_version(w: &mut Writer, v: &VersionConfig) {
    w.str(&v.version);
    w.len(v.config.len());
    for (key, value) in &v.config {
        w.str(key);
        w.str(value);
    }
}

fn read_version(r: &mut Reader<'_>) -> Result<VersionConfig, StoreError> {
    let version = r.string()?;
    let pairs = r.list(|r| Ok((r.string()?, r.string()?)))?;
    Ok(VersionConfig {
        version,
        config: pairs.into_iter().collect(),
    })
}

pub(super) fn encode_binding(b: &PolicyBinding) -> Vec<u8> {
    let mut w = Writer::new();
    w.opt(b.active.as_ref(), write_version);
    w.list(&b.previous, write_version);
    w.opt(b.canary.as_ref(), |w, c| {
        write_version(w, &c.version);
        w.u8(c.percent);
        w.list(&c.groups, |w, g| w.id(g.as_str()));
        w.u64(c.started_at_ms);
    });
    w.opt(b.last_rollback.as_ref(), |w, r| {
        w.str(&r.from);
        w.opt(r.to.as_ref(), |w, to| w.str(to));
        w.bool(r.automatic);
        w.str(&r.reason);
        w.u64(r.at_ms);
    });
    w.u64(b.revision);
    w.u64(b.updated_at_ms);
    w.finish()
}

pub(super) fn decode_binding(value: &[u8]) -> Result<PolicyBinding, StoreError> {
    let mut r = Reader::new(CONFIG, value)?;
    let active = r.opt(read_version)?;
    let previous = r.list(read_version)?;
    let canary = r.opt(|r| {
        Ok(Canary {
            version: read_version(r)?,
            percent: r.u8()?,
            groups: r.list(|r| r.id(GroupId::new))?,
            started_at_ms: r.u64()?,
        })
    })?;
    let last_rollback = r.opt(|r| {
        Ok(RollbackRecord {
            from: r.string()?,
            to: r.opt(Reader::string)?,
            automatic: r.bool()?,
            reason: r.string()?,
            at_ms: r.u64()?,
        })
    })?;
    let revision = r.u64()?;
    let updated_at_ms = r.u64()?;
    r.finish()?;
    Ok(PolicyBinding {
        active,
        previous,
        canary,
        last_rollback,
        revision,
        updated_at_ms,
    })
}

// --- flags ---

pub(super) fn encode_flags(flags: &BTreeMap<String, FlagRule>) -> Vec<u8> {
    let mut w = Writer::new();
    w.len(flags.len());
    for (name, rule) in flags {
        w.str(name);
        w.bool(rule.enabled);
        w.u8(rule.percent);
        w.list(&rule.users, |w, u| w.id(u.as_str()));
    }
    w.finish()
}

pub(super) fn decode_flags(value: &[u8]) -> Result<BTreeMap<String, FlagRule>, StoreError> {
    let mut r = Reader::new(CONFIG, value)?;
    let rules = r.list(|r| {
        let name = r.string()?;
        let rule = FlagRule {
            enabled: r.bool()?,
            percent: r.u8()?,
            users: r.list(|r| r.id(UserId::new))?,
        };
        Ok((name, rule))
    })?;
    r.finish()?;
    Ok(rules.into_iter().collect())
}

// --- quotas ---

pub(super) fn encode_quotas(q: &TenantQuotas) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(q.max_groups);
    w.u32(q.max_plugin_versions);
    w.u32(q.max_plugin_bytes);
    w.finish()
}

pub(super) fn decode_quotas(value: &[u8]) -> Result<TenantQuotas, StoreError> {
    let mut r = Reader::new(CONFIG, value)?;
    let quotas = TenantQuotas {
        max_groups: r.u32()?,
        max_plugin_versions: r.u32()?,
        max_plugin_bytes: r.u32()?,
    };
    r.finish()?;
    Ok(quotas)
}

// --- API keys ---

/// The whole record, tenant and id included: the hash index stores it too, so
/// authenticating a key is one lookup that needs nothing from the key.
pub(super) fn encode_api_key(k: &ApiKeyRecord) -> Vec<u8> {
    let mut w = Writer::new();
    w.id(k.tenant.as_str());
    w.str(&k.id);
    w.0.extend_from_slice(&k.hash);
    w.u64(k.created_at_ms);
    w.str(&k.label);
    w.finish()
}

pub(super) fn decode_api_key(value: &[u8]) -> Result<ApiKeyRecord, StoreError> {
    let mut r = Reader::new(CONFIG, value)?;
    let key = ApiKeyRecord {
        tenant: r.id(TenantId::new)?,
        id: r.string()?,
        hash: r.array()?,
        created_at_ms: r.u64()?,
        label: r.string()?,
    };
    r.finish()?;
    Ok(key)
}

// --- degradation override ---

pub(super) fn encode_level(level: u8) -> [u8; 2] {
    [V1, level]
}

pub(super) fn decode_level(value: &[u8]) -> Result<u8, StoreError> {
    let mut r = Reader::new(CONFIG, value)?;
    let level = r.u8()?;
    r.finish()?;
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn round_trips() {
        let g = GroupRecord {
            meta: GroupMeta {
                open: true,
                max_members: 7,
            },
            members: 3,
        };
        assert_eq!(decode_group(&encode_group(&g)).unwrap(), g);
        assert_eq!(decode_seq(DEDUPE, &encode_seq(u64::MAX)).unwrap(), u64::MAX);
        for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
            assert_eq!(
                decode_receipt(&encode_receipt(kind, 42)).unwrap(),
                (kind, 42)
            );
        }
        let t = TenantId::new("t").unwrap();
        let ring = KeyRing::generate(1).unwrap();
        let (record, stale) = decode_tenant(
            &ring,
            t.clone(),
            &encode_tenant(&ring, &t, b"s3cret").unwrap(),
        )
        .unwrap();
        assert_eq!((record.secret.as_slice(), stale), (&b"s3cret"[..], false));
        let (record, stale) =
            decode_tenant(&ring, t.clone(), &encode_tenant_plain(b"s3cret")).unwrap();
        assert_eq!((record.secret.as_slice(), stale), (&b"s3cret"[..], true));
        let sender = user("alice");
        let new = NewMessage {
            sender: &sender,
            lane: Lane::Low,
            client_msg_id: "héllo",
            sent_at_ms: 9,
            body: b"hi",
        };
        let m = decode_message(5, IVec::from(encode_message(&new))).unwrap();
        assert_eq!(
            m,
            StoredMessage {
                seq: 5,
                lane: Lane::Low,
                sender,
                client_msg_id: "héllo".into(),
                sent_at_ms: 9,
                body: Bytes::from_static(b"hi")
            }
        );
    }

    /// Every malformed value is `Corrupt`, never a panic.
    #[test]
    fn malformed_values_are_corrupt() {
        fn check(result: Result<impl std::fmt::Debug, StoreError>, expect: &str) {
            match result {
                Err(StoreError::Corrupt { detail, .. }) => assert_eq!(detail, expect),
                other => panic!("expected Corrupt({expect:?}), got {other:?}"),
            }
        }
        check(decode_seq(CURSORS, &[]), "empty record");
        check(
            decode_seq(CURSORS, &[2, 0, 0, 0, 0, 0, 0, 0, 1]),
            "unknown record version 2",
        );
        check(decode_seq(CURSORS, &[1, 0, 0]), "record truncated");
        check(
            decode_seq(CURSORS, &[1, 0, 0, 0, 0, 0, 0, 0, 1, 9]),
            "trailing bytes",
        );
        check(
            decode_group(&[1, 2, 0, 0, 0, 1, 0, 0, 0, 0]),
            "unknown group flags 0x2",
        );
        check(
            decode_receipt(&[1, 7, 0, 0, 0, 0, 0, 0, 0, 0]),
            "unknown receipt kind 7",
        );
        check(
            decode_message(1, IVec::from(&[1u8, 0, 0][..])),
            "record truncated",
        );
        // lane out of range
        check(
            decode_message(
                1,
                IVec::from(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0][..]),
            ),
            "unknown lane 3",
        );
        // sender length 3 but only 2 bytes
        check(
            decode_message(
                1,
                IVec::from(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, b'a', b'b'][..]),
            ),
            "record truncated",
        );
        // sender is not a valid id
        check(
            decode_message(
                1,
                IVec::from(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, b'/', 0, 0, 0, 0][..]),
            ),
            "bad id: id contains '/'; allowed: ASCII letters, digits, '-', '_', '.', ':', '@'",
        );
        // client_msg_id is not UTF-8
        check(
            decode_message(
                1,
                IVec::from(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, b'a', 0, 0, 0, 1, 0xff][..]),
            ),
            "string is not UTF-8",
        );
    }

    #[test]
    fn config_round_trips() {
        let vc = |v: &str| VersionConfig {
            version: v.into(),
            config: BTreeMap::from([("k".to_string(), "välue".to_string())]),
        };
        let binding = PolicyBinding {
            active: Some(vc("a")),
            previous: vec![vc("p"), VersionConfig::default()],
            canary: Some(Canary {
                version: vc("c"),
                percent: 100,
                groups: vec![GroupId::new("g").unwrap()],
                started_at_ms: 1,
            }),
            last_rollback: Some(RollbackRecord {
                from: "x".into(),
                to: None,
                automatic: false,
                reason: String::new(),
                at_ms: 2,
            }),
            revision: u64::MAX,
            updated_at_ms: 3,
        };
        assert_eq!(decode_binding(&encode_binding(&binding)).unwrap(), binding);
        let empty = PolicyBinding::default();
        assert_eq!(decode_binding(&encode_binding(&empty)).unwrap(), empty);
        let flags = BTreeMap::from([(
            "f".to_string(),
            FlagRule {
                enabled: true,
                percent: 7,
                users: vec![user("ann")],
            },
        )]);
        assert_eq!(decode_flags(&encode_flags(&flags)).unwrap(), flags);
        let q = TenantQuotas::default();
        assert_eq!(decode_quotas(&encode_quotas(&q)).unwrap(), q);
        let key = ApiKeyRecord {
            id: "key id".into(),
            tenant: TenantId::new("t").unwrap(),
            hash: [0xab; 32],
            label: "ci".into(),
            created_at_ms: 4,
        };
        assert_eq!(decode_api_key(&encode_api_key(&key)).unwrap(), key);
        assert_eq!(decode_level(&encode_level(3)).unwrap(), 3);
        assert_eq!(
            decode_plugin_bytes(&encode_plugin_bytes(b"\0asm")).unwrap(),
            b"\0asm"
        );
    }

    #[test]
    fn malformed_config_values_are_corrupt() {
        fn check(result: Result<impl std::fmt::Debug, StoreError>, expect: &str) {
            match result {
                Err(StoreError::Corrupt { detail, .. }) => assert_eq!(detail, expect),
                other => panic!("expected Corrupt({expect:?}), got {other:?}"),
            }
        }
        let mut binding = encode_binding(&PolicyBinding::default());
        binding[1] = 2; // the `active` option tag
        check(decode_binding(&binding), "bad bool or option tag 2");
        // A list claiming 4 billion items in a short value fails, without reserving them.
        check(
            decode_flags(&[1, 0xff, 0xff, 0xff, 0xff, 0]),
            "record truncated",
        );
        // A flag's user that is not an id.
        check(
            decode_flags(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, b'/']),
            "bad id: id contains '/'; allowed: ASCII letters, digits, '-', '_', '.', ':', '@'",
        );
        check(decode_quotas(&[1, 0, 0, 0, 1]), "record truncated");
        check(decode_level(&[1, 1, 0]), "trailing bytes");
        check(decode_plugin_bytes(&[]), "empty record");
        check(
            decode_api_key(&[1, 1, b't', 0, 0, 0, 0]),
            "record truncated",
        );
    }
}
