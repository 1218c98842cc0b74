//! Membership as the hub changes it (`Hub::join` / `add_member` and `Hub::leave` /
//! `remove_member`, with `subscribe` and `unsubscribe`): one admit core and one drop core
//! shared by a user's own `Join`/`Leave` and an admin's add/remove. What each does to the
//! user's sessions is the router's own decision (`switchboard_router::membership`: the
//! [`Change`] for every connected session at once, and the [`SubChange`] queued for each
//! session's planner, which the writer applies before it plans anything), as in the hub;
//! this driver does the store writes and the fan-out. The oracle records each subscription
//! as a [`Span`].

use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;

use switchboard_core::{PresenceState, UserId};
use switchboard_router::membership::{Change, SubChange};
use switchboard_router::Subscriber;
use switchboard_store::Store;

use crate::invariant::Invariant;
use crate::Sim;

pub(crate) struct User {
    pub(crate) id: UserId,
    /// Groups the user is a member of (the store's `groups_of`).
    pub(crate) groups: BTreeSet<usize>,
    /// The user's devices.
    pub(crate) clients: Vec<usize>,
}

/// One subscription of a session to a group, as the oracle saw it made and ended.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    /// The session's change count when it began, and when it ended (`u64::MAX`: live).
    pub(crate) from_gen: u64,
    pub(crate) to_gen: u64,
    /// What its `Resume` must say: the device's cursor, or the head at the join.
    pub(crate) after: u64,
    /// Made by a join or an admin add (else by the connect).
    pub(crate) joined: bool,
    /// The durable head when it ended: nothing above it may reach the session.
    pub(crate) end_head: u64,
}

impl Sim {
    /// The user of a connected device joins a group it is not in (`Join` of an open group).
    pub(crate) fn join(&mut self, c: usize) {
        if self.clients[c].session.is_none() {
            return;
        }
        let u = self.clients[c].user;
        let Some(g) = self.pick_group(u, false) else {
            return;
        };
        self.report.ops += 1;
        self.report.joins += 1;
        self.admit(u, g);
    }

    /// The user of a connected device leaves one of its groups.
    pub(crate) fn leave(&mut self, c: usize) {
        if self.clients[c].session.is_none() {
            return;
        }
        let u = self.clients[c].user;
        let Some(g) = self.pick_group(u, true) else {
            return;
        };
        self.report.ops += 1;
        self.report.leaves += 1;
        self.drop_member(u, g);
    }

    /// An admin adds (or removes) a user, connected or not, to (from) a group.
    pub(crate) fn admin_change(&mut self, u: usize, add: bool) {
        let Some(g) = self.pick_group(u, !add) else {
            return;
        };
        if add {
            self.report.admin_adds += 1;
            self.admit(u, g);
        } else {
            self.report.admin_removes += 1;
            self.drop_member(u, g);
        }
    }

    fn pick_group(&mut self, u: usize, member: bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.groups.len())
            .filter(|g| self.users[u].groups.contains(g) == member)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.rng.below(candidates.len() as u64) as usize])
    }

    /// The user's connected sessions, in device order.
    fn sessions_of(&self, u: usize) -> Vec<u64> {
        self.users[u]
            .clients
            .iter()
            .filter_map(|&c| self.clients[c].session)
            .collect()
    }

    /// The one way a user becomes a member: the store, the member count, the stored cursor
    /// at the group's durable head, and every connected session subscribed from that head.
    fn admit(&mut self, u: usize, g: usize) {
        let (gid, uid) = (&self.groups[g].id, &self.users[u].id);
        match self.store.add_member(&self.tenant, gid, uid) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let what = format!("add_member failed: {e}");
                return self.violation(Invariant::MembersAgree, what);
            }
        }
        self.users[u].groups.insert(g);
        self.groups[g].members.push(u);
        let sessions = self.sessions_of(u);
        if sessions.len() > 1 {
            self.report.multi_session_changes += 1;
        }
        if self.commits.iter().any(|c| c.group == g) {
            self.report.joins_racing_publish += 1;
        }
        let change = Change::Admit {
            head: self.groups[g].fanout.head(),
        };
        // The oracle's own record of the head: what the new member must start at.
        let expect = self.visible[g];
        if let Some(cursor) = change.cursor() {
            let _ = self.store.advance_cursor(
                &self.tenant,
                &self.groups[g].id,
                &self.users[u].id,
                cursor,
            );
        }
        if !self.commits.is_empty() && self.rng.pct(25) {
            // The committer runs between the hub's read of the head and the subscription
            // (they take the group's fan-out lock separately): the new member is not a
            // subscriber of that publish, and must get its messages from the log.
            self.report.joins_racing_publish += 1;
            self.flush();
        }
        for (id, change) in change.for_sessions(sessions) {
            self.apply_change(id, g, change, expect, true);
        }
        self.check_membership_agrees();
    }

    /// The one way a user stops being a member: the store, the member count, and every
    /// connected session unsubscribed at once.
    fn drop_member(&mut self, u: usize, g: usize) {
        let (gid, uid) = (&self.groups[g].id, &self.users[u].id);
        match self.store.remove_member(&self.tenant, gid, uid) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let what = format!("remove_member failed: {e}");
                return self.violation(Invariant::MembersAgree, what);
            }
        }
        self.users[u].groups.remove(&g);
        self.groups[g].members.retain(|&m| m != u);
        let sessions = self.sessions_of(u);
        if sessions.len() > 1 {
            self.report.multi_session_changes += 1;
        }
        if self.commits.iter().any(|c| c.group == g) {
            self.report.leaves_racing_publish += 1;
        }
        if !self.commits.is_empty() && self.rng.pct(25) {
            // The committer runs between the store's removal and the unsubscriptions: its
            // copies still reach the user's sessions, and count as committed before the
            // leave (which takes effect, for delivery, when the sessions are unsubscribed).
            self.report.leaves_racing_publish += 1;
            self.flush();
        }
        let cap = self.cfg.queue_frames;
        let full = sessions
            .iter()
            .any(|id| self.sessions[id].queues.iter().any(|q| q.len() >= cap));
        if full {
            self.report.leaves_with_full_queue += 1;
        }
        for (id, change) in Change::Drop.for_sessions(sessions) {
            self.apply_change(id, g, change, 0, false);
        }
        self.check_membership_agrees();
    }

    /// Applies a membership change to one session. A subscription (from where `change`
    /// says, clamped to the durable head) is queued for its planner first, then visible to
    /// the committer, and a catch-up requested; idempotent. `expect` is where the oracle
    /// says the subscription starts.
    pub(crate) fn apply_change(
        &mut self,
        session: u64,
        g: usize,
        change: Change,
        expect: u64,
        joined: bool,
    ) {
        let head = self.groups[g].fanout.head();
        let after = match change.sub_change(head) {
            SubChange::Subscribe { after } => after,
            SubChange::Unsubscribe => return self.unsubscribe(session, g),
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if !s.groups.insert(g) {
            return;
        }
        s.sub_changes.insert(g, SubChange::Subscribe { after });
        s.gen += 1;
        let spans = s.spans.entry(g).or_default();
        if !spans.is_empty() {
            self.report.rejoins += 1;
        }
        spans.push(Span {
            from_gen: s.gen,
            to_gen: u64::MAX,
            after: expect,
            joined,
            end_head: 0,
        });
        // A new subscription's nudges are its own (the planner starts it afresh).
        s.last_nudge.remove(&g);
        s.nudge_asked.remove(&g);
        s.catch_up = true;
        let presence = s.presence.clone();
        self.groups[g].fanout.subscribe(Sub { session, presence });
    }

    /// Unsubscribes a session from a group: out of the fan-out at once, and the change
    /// queued for its planner (which then drops whatever of the group is still queued).
    fn unsubscribe(&mut self, session: u64, g: usize) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if !s.groups.remove(&g) {
            return;
        }
        self.groups[g].fanout.unsubscribe(session);
        s.sub_changes.insert(g, SubChange::Unsubscribe);
        s.gen += 1;
        if let Some(span) = s.spans.get_mut(&g).and_then(|v| v.last_mut()) {
            span.to_gen = s.gen;
            span.end_head = self.durable[g];
        }
        s.last_nudge.remove(&g);
        s.nudge_asked.remove(&g);
    }

    /// Membership and sessions agree: each group's fan-out holds exactly the connected
    /// sessions of its members.
    pub(crate) fn check_membership_agrees(&mut self) {
        let mut problems = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            let mut subscribed: Vec<u64> = group
                .fanout
                .subscribers()
                .iter()
                .map(|s| s.session)
                .collect();
            subscribed.sort_unstable();
            let mut expected: Vec<u64> = group
                .members
                .iter()
                .flat_map(|&u| self.users[u].clients.iter())
                .filter_map(|&c| self.clients[c].session)
                .collect();
            expected.sort_unstable();
            if subscribed != expected {
                problems.push(format!(
                    "g{g}: subscribed {subscribed:?}, members' sessions {expected:?}"
                ));
            }
        }
        for p in problems {
            self.violation(Invariant::MembersAgree, p);
        }
    }
}

/// A session as the router's fan-out sees it.
pub(crate) struct Sub {
    pub(crate) session: u64,
    pub(crate) presence: Rc<Cell<PresenceState>>,
}

impl Subscriber for Sub {
    fn session_id(&self) -> u64 {
        self.session
    }
    fn presence(&self) -> PresenceState {
        self.presence.get()
    }
}
