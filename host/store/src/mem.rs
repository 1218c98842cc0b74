//! [`MemStore`]: the [`Store`] contract in memory, for the routing simulation and unit tests.
//!
//! It keeps the contract's observable behaviour (sequence numbers from 1 with no gap, dedupe
//! of `(sender, client_msg_id)`, member limits, cursors that never go back, receipts that never
//! downgrade) and none of the disk. Flushes can be made to fail ([`MemStore::fail_flushes`])
//! so a test can drive the node's refusal path; a failed flush loses nothing that was written
//! (like a disk that filled up and drained again), which is the case where a resend must be
//! found as a duplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parking_lot::Mutex;
use switchboard_core::{GroupId, TenantId, UserId};

use crate::{
    Appended, GroupMeta, NewMessage, Store, StoreError, StoredMessage, StoredReceipt, TenantRecord,
};

type Group = (TenantId, GroupId);

#[derive(Debug, Default)]
struct Inner {
    tenants: BTreeMap<TenantId, TenantRecord>,
    groups: BTreeMap<Group, GroupMeta>,
    members: BTreeMap<Group, BTreeSet<UserId>>,
    user_groups: BTreeMap<(TenantId, UserId), BTreeSet<GroupId>>,
    logs: HashMap<Group, Vec<StoredMessage>>,
    dedupe: HashMap<(Group, UserId, String), u64>,
    cursors: HashMap<(Group, UserId), u64>,
    receipts: BTreeMap<(Group, u64), BTreeMap<UserId, StoredReceipt>>,
    /// Flushes still to fail.
    failing_flushes: u32,
    flushes: u64,
}

/// The [`Store`] contract in memory (see the module docs).
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `n` flushes fail with [`StoreError::Io`].
    pub fn fail_flushes(&self, n: u32) {
        self.inner.lock().failing_flushes = n;
    }

    /// Flushes that succeeded so far.
    pub fn flushes(&self) -> u64 {
        self.inner.lock().flushes
    }
}

fn key(tenant: &TenantId, group: &GroupId) -> Group {
    (tenant.clone(), group.clone())
}

impl Store for MemStore {
    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        self.inner
            .lock()
            .tenants
            .insert(tenant.id.clone(), tenant.clone());
        Ok(())
    }

    fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        Ok(self.inner.lock().tenants.get(id).cloned())
    }

    fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        Ok(self.inner.lock().tenants.values().cloned().collect())
    }

    fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        meta: GroupMeta,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let k = key(tenant, group);
        if inner.groups.contains_key(&k) {
            return Err(StoreError::GroupExists(group.clone()));
        }
        inner.groups.insert(k, meta);
        Ok(())
    }

    fn group(&self, tenant: &TenantId, group: &GroupId) -> Result<Option<GroupMeta>, StoreError> {
        Ok(self.inner.lock().groups.get(&key(tenant, group)).copied())
    }

    fn add_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        let k = key(tenant, group);
        let Some(meta) = inner.groups.get(&k).copied() else {
            return Err(StoreError::GroupNotFound(group.clone()));
        };
        let members = inner.members.entry(k).or_default();
        if members.contains(user) {
            return Ok(false);
        }
        if members.len() as u32 >= meta.max_members {
            return Err(StoreError::GroupFull {
                group: group.clone(),
                max: meta.max_members,
            });
        }
        members.insert(user.clone());
        inner
            .user_groups
            .entry((tenant.clone(), user.clone()))
            .or_default()
            .insert(group.clone());
        Ok(true)
    }

    fn remove_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        let removed = inner
            .members
            .get_mut(&key(tenant, group))
            .is_some_and(|m| m.remove(user));
        if removed {
            if let Some(g) = inner.user_groups.get_mut(&(tenant.clone(), user.clone())) {
                g.remove(group);
            }
        }
        Ok(removed)
    }

    fn is_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .lock()
            .members
            .get(&key(tenant, group))
            .is_some_and(|m| m.contains(user)))
    }

    fn members(&self, tenant: &TenantId, group: &GroupId) -> Result<Vec<UserId>, StoreError> {
        Ok(self
            .inner
            .lock()
            .members
            .get(&key(tenant, group))
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default())
    }

    fn member_count(&self, tenant: &TenantId, group: &GroupId) -> Result<Option<u32>, StoreError> {
        let inner = self.inner.lock();
        let k = key(tenant, group);
        if !inner.groups.contains_key(&k) {
            return Ok(None);
        }
        Ok(Some(inner.members.get(&k).map_or(0, |m| m.len() as u32)))
    }

    fn groups(&self, tenant: &TenantId) -> Result<Vec<GroupId>, StoreError> {
        Ok(self
            .inner
            .lock()
            .groups
            .keys()
            .filter(|(t, _)| t == tenant)
            .map(|(_, g)| g.clone())
            .collect())
    }

    fn groups_of(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<GroupId>, StoreError> {
        Ok(self
            .inner
            .lock()
            .user_groups
            .get(&(tenant.clone(), user.clone()))
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default())
    }

    fn append(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, StoreError> {
        let mut inner = self.inner.lock();
        let k = key(tenant, group);
        if !inner.groups.contains_key(&k) {
            return Err(StoreError::GroupNotFound(group.clone()));
        }
        let dedupe = (k.clone(), msg.sender.clone(), msg.client_msg_id.to_owned());
        if let Some(&seq) = inner.dedupe.get(&dedupe) {
            return Ok(Appended::Duplicate { seq });
        }
        let log = inner.logs.entry(k).or_default();
        let seq = log.len() as u64 + 1;
        log.push(StoredMessage {
            seq,
            lane: msg.lane,
            sender: msg.sender.clone(),
            client_msg_id: msg.client_msg_id.to_owned(),
            sent_at_ms: msg.sent_at_ms,
            body: bytes::Bytes::copy_from_slice(msg.body),
        });
        inner.dedupe.insert(dedupe, seq);
        Ok(Appended::New { seq })
    }

    fn find_sent(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let dedupe = (key(tenant, group), sender.clone(), client_msg_id.to_owned());
        Ok(self.inner.lock().dedupe.get(&dedupe).copied())
    }

    fn head(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .lock()
            .logs
            .get(&key(tenant, group))
            .map_or(0, |l| l.len() as u64))
    }

    fn read_after(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let inner = self.inner.lock();
        let Some(log) = inner.logs.get(&key(tenant, group)) else {
            return Ok(Vec::new());
        };
        let from = usize::try_from(after).unwrap_or(usize::MAX).min(log.len());
        Ok(log[from..].iter().take(limit).cloned().collect())
    }

    fn message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let inner = self.inner.lock();
        let Some(i) = seq.checked_sub(1) else {
            return Ok(None);
        };
        Ok(inner
            .logs
            .get(&key(tenant, group))
            .and_then(|l| l.get(usize::try_from(i).ok()?))
            .cloned())
    }

    fn advance_cursor(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
        seq: u64,
    ) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock();
        let c = inner
            .cursors
            .entry((key(tenant, group), user.clone()))
            .or_default();
        *c = (*c).max(seq);
        Ok(*c)
    }

    fn cursor(&self, tenant: &TenantId, group: &GroupId, user: &UserId) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .lock()
            .cursors
            .get(&(key(tenant, group), user.clone()))
            .copied()
            .unwrap_or(0))
    }

    fn put_receipt(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
        receipt: &StoredReceipt,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let at = inner.receipts.entry((key(tenant, group), seq)).or_default();
        let stored = at.get(&receipt.user).map(|r| r.kind);
        if !crate::keeps_stored_receipt(stored, receipt.kind) {
            at.insert(receipt.user.clone(), receipt.clone());
        }
        Ok(())
    }

    fn receipts(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        Ok(self
            .inner
            .lock()
            .receipts
            .get(&(key(tenant, group), seq))
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if inner.failing_flushes > 0 {
            inner.failing_flushes -= 1;
            return Err(StoreError::Io("injected flush failure".into()));
        }
        inner.flushes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::Lane;

    fn ids() -> (TenantId, GroupId, UserId) {
        (
            TenantId::new("t").unwrap(),
            GroupId::new("g").unwrap(),
            UserId::new("u").unwrap(),
        )
    }

    fn msg<'a>(sender: &'a UserId, id: &'a str) -> NewMessage<'a> {
        NewMessage {
            sender,
            lane: Lane::Normal,
            client_msg_id: id,
            sent_at_ms: 0,
            body: b"x",
        }
    }

    #[test]
    fn appends_number_from_one_and_dedupe_resends() {
        let (t, g, u) = ids();
        let s = MemStore::new();
        assert!(matches!(
            s.append(&t, &g, msg(&u, "a")),
            Err(StoreError::GroupNotFound(_))
        ));
        s.create_group(
            &t,
            &g,
            GroupMeta {
                open: true,
                max_members: 2,
            },
        )
        .unwrap();
        assert_eq!(
            s.append(&t, &g, msg(&u, "a")).unwrap(),
            Appended::New { seq: 1 }
        );
        assert_eq!(
            s.append(&t, &g, msg(&u, "b")).unwrap(),
            Appended::New { seq: 2 }
        );
        assert_eq!(
            s.append(&t, &g, msg(&u, "a")).unwrap(),
            Appended::Duplicate { seq: 1 }
        );
        assert_eq!(s.head(&t, &g).unwrap(), 2);
        let after1: Vec<u64> = s
            .read_after(&t, &g, 1, 10)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(after1, vec![2]);
        assert!(s.read_after(&t, &g, 2, 10).unwrap().is_empty());
        assert_eq!(s.message(&t, &g, 2).unwrap().map(|m| m.seq), Some(2));
        assert_eq!(s.message(&t, &g, 0).unwrap(), None);
    }

    #[test]
    fn member_limit_cursors_and_failing_flushes() {
        let (t, g, u) = ids();
        let s = MemStore::new();
        s.create_group(
            &t,
            &g,
            GroupMeta {
                open: true,
                max_members: 1,
            },
        )
        .unwrap();
        assert!(s.add_member(&t, &g, &u).unwrap());
        assert!(!s.add_member(&t, &g, &u).unwrap());
        let v = UserId::new("v").unwrap();
        assert!(matches!(
            s.add_member(&t, &g, &v),
            Err(StoreError::GroupFull { .. })
        ));
        assert_eq!(s.groups_of(&t, &u).unwrap(), vec![g.clone()]);
        assert_eq!(s.member_count(&t, &g).unwrap(), Some(1));
        assert_eq!(s.advance_cursor(&t, &g, &u, 5).unwrap(), 5);
        assert_eq!(s.advance_cursor(&t, &g, &u, 3).unwrap(), 5, "never back");
        s.fail_flushes(1);
        assert!(s.flush().is_err());
        assert!(s.flush().is_ok());
        assert_eq!(s.flushes(), 1);
    }
}
