//! Membership requests: a user's `Join` and `Leave`, an admin's add and remove, and group
//! creation. The decisions are `switchboard_router::membership`'s (one admit path, one drop
//! path, every session of the user moving at once); here are the store writes, the user's
//! membership lock and the group's fan-out lock around them.

use super::*;

impl Hub {
    /// Subscribes `session` to `g`, delivering everything after `after` (clamped to the
    /// durable head). Returns the head. Idempotent for an already-subscribed group.
    /// Applies a membership change (`router::membership`) to every connected session of the
    /// user at once. The caller holds the user's membership lock.
    pub(super) fn move_sessions(&self, g: &Arc<GroupState>, user: &UserId, change: Change) {
        for (s, change) in change.for_sessions(self.sessions_of(&g.tenant, user)) {
            match change {
                Change::Drop => self.unsubscribe(&s, g),
                _ => {
                    self.subscribe(&s, g, change);
                }
            }
        }
    }

    /// Subscribes a session as `change` says (idempotent); returns the group's head.
    pub(super) fn subscribe(
        &self,
        session: &Arc<Session>,
        g: &Arc<GroupState>,
        change: Change,
    ) -> u64 {
        if !session.groups.lock().insert(g.id.clone()) {
            return g.head();
        }
        let mut f = g.fanout.lock();
        if session.closed.load(Ordering::Acquire) {
            // close_session ran (or is running) for this session: never re-add it. It drains
            // `groups` after setting `closed`, so it removes what we inserted above.
            return f.head();
        }
        // Queue the change before becoming visible to the committer, so any push for this
        // group the writer sees finds the subscription already applied.
        let membership::SubChange::Subscribe { after } = change.sub_change(f.head()) else {
            return f.head();
        };
        session.sub_changes.lock().insert(
            g.id.clone(),
            SubChange::Subscribe {
                group: g.clone(),
                after,
            },
        );
        f.subscribe(session.clone());
        let head = f.head();
        drop(f);
        session.request_catch_up();
        head
    }

    pub(super) fn unsubscribe(&self, session: &Arc<Session>, g: &GroupState) {
        if !session.groups.lock().remove(&g.id) {
            return;
        }
        g.fanout.lock().unsubscribe(session.id);
        session
            .sub_changes
            .lock()
            .insert(g.id.clone(), SubChange::Unsubscribe(g.id.clone()));
        session.outbox.wake();
    }

    /// `Join`: adds the user to an open group (or confirms membership of a closed one) and
    /// subscribes the session. A new member starts at the current head; a member's sessions
    /// resume from its stored cursor.
    pub fn join(&self, session: &Arc<Session>, group: &str) -> Result<u64, RequestError> {
        let gid = group_id(group)?;
        self.admit_join(session)?;
        let (tenant, user) = (&session.tenant, &session.user);
        let _membership = self.membership_lock(tenant, user);
        let meta = self.store.group(tenant, &gid)?.ok_or_else(|| {
            RequestError::new(ErrorCode::GroupNotFound, format!("group {gid} not found"))
        })?;
        let g = self.group(tenant, &gid)?;
        match membership::join(self.store.is_member(tenant, &gid, user)?, meta.open) {
            Ok(Join::Follow) => {
                // Other sessions of the same user follow the membership too.
                let after = self.store.cursor(tenant, &gid, user)?;
                self.move_sessions(&g, user, Change::Follow { after });
            }
            Ok(Join::Admit) => {
                self.admit_member(&g, user)?;
            }
            Err(refused) => {
                return Err(RequestError::new(
                    ErrorCode::JoinRefused,
                    format!("group {gid} {refused}"),
                ))
            }
        }
        Ok(g.head())
    }

    /// `Leave`: removes the user from the group and stops deliveries to all its sessions.
    pub fn leave(&self, session: &Arc<Session>, group: &str) -> Result<(), RequestError> {
        let gid = group_id(group)?;
        self.admit_join(session)?;
        let _membership = self.membership_lock(&session.tenant, &session.user);
        let g = self.group(&session.tenant, &gid)?;
        self.require_member(session, &gid)?;
        self.drop_member(&g, &session.user)?;
        Ok(())
    }

    /// Adds `user` to a group on the tenant's behalf (admin API), like a `Join` of an open
    /// group. Ok(false) if the user was a member already.
    pub fn add_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, RequestError> {
        let _membership = self.membership_lock(tenant, user);
        let g = self.group(tenant, group)?;
        if self.store.is_member(tenant, group, user)? {
            return Ok(false);
        }
        self.admit_member(&g, user)
    }

    /// Removes `user` from a group on the tenant's behalf; its sessions stop receiving the
    /// group at once. Ok(false) if it was not a member.
    pub fn remove_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, RequestError> {
        let _membership = self.membership_lock(tenant, user);
        let g = self.group(tenant, group)?;
        self.drop_member(&g, user)
    }

    /// The one way a user becomes a member (`Join` and the admin API): within
    /// `max_groups_per_user` and the group's member limit (enforced by the store
    /// atomically: `GroupFull`), starting at the group's head, with every connected session
    /// of the user subscribed at once. Ok(false) if the store found it a member already.
    /// The caller holds the user's membership lock.
    pub(super) fn admit_member(
        &self,
        g: &Arc<GroupState>,
        user: &UserId,
    ) -> Result<bool, RequestError> {
        let tenant = &g.tenant;
        let groups = self.store.groups_of(tenant, user)?.len();
        if !membership::within_group_limit(groups, self.limits.max_groups_per_user) {
            return Err(RequestError::new(
                ErrorCode::InvalidArgument,
                format!("{user} is in max_groups_per_user groups already"),
            ));
        }
        if !self.store.add_member(tenant, &g.id, user)? {
            return Ok(false);
        }
        g.members.fetch_add(1, Ordering::Relaxed);
        let change = Change::Admit { head: g.head() };
        if let Some(cursor) = change.cursor() {
            self.store.advance_cursor(tenant, &g.id, user, cursor)?;
        }
        self.move_sessions(g, user, change);
        Ok(true)
    }

    /// The one way a user stops being a member (`Leave` and the admin API): removed from
    /// the store, uncounted, every session of the user unsubscribed at once. Ok(false) if it
    /// was not a member. The caller holds the user's membership lock.
    pub(super) fn drop_member(
        &self,
        g: &Arc<GroupState>,
        user: &UserId,
    ) -> Result<bool, RequestError> {
        if !self.store.remove_member(&g.tenant, &g.id, user)? {
            return Ok(false);
        }
        g.members.fetch_sub(1, Ordering::Relaxed);
        self.move_sessions(g, user, Change::Drop);
        Ok(true)
    }

    /// Takes a token of the user's `user_joins` limit (shared by `Join` and `Leave`).
    pub(super) fn admit_join(&self, session: &Session) -> Result<(), RequestError> {
        self.admit_user(session, Limited::Joins)
    }

    /// Takes a token of one of the session's user's buckets, or the typed refusal.
    pub(super) fn admit_user(&self, session: &Session, kind: Limited) -> Result<(), RequestError> {
        self.rates
            .admit_user(&self.metrics, &session.rates.user, kind, &session.user)
    }

    /// Creates a group (admin API). `GroupExists` comes back as a store error.
    pub fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        meta: GroupMeta,
    ) -> Result<(), StoreError> {
        self.store.create_group(tenant, group, meta)
    }

    /// See [`Sessions::membership_lock`].
    pub(super) fn membership_lock(&self, tenant: &TenantId, user: &UserId) -> MutexGuard<'_, ()> {
        self.sessions.membership_lock(tenant, user)
    }

    pub(crate) fn sessions_of(&self, tenant: &TenantId, user: &UserId) -> Vec<Arc<Session>> {
        self.sessions.sessions_of(tenant, user)
    }
}
