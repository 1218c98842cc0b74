//! Presence as co-members see it. A user has one state for them: `Foreground` if any of its
//! sessions is, `Background` if all are, and offline once its last session closes, told as
//! `Background` with `online: false` (a field appended to `PresenceNotice`, which older
//! clients ignore; a new `PresenceState` value would be refused by existing decoders,
//! protocol §16). What co-members were last told is kept per
//! user ([`Told`]); a change, an arrival or a departure that makes the user's state differ
//! from it is told to the connected members of the user's groups, and a new session gets a
//! snapshot of its co-members' told states. Protocol §11 is the contract.
//!
//! Cost: a notice per co-member session. Changes and arrivals take a token of the user's
//! presence limit (a departure is free: it follows an arrival or change that paid); all of
//! it is shed under load. Arrivals, departures and snapshots skip large groups
//! (`nudge_background_from_members`): there every member connecting would tell every other,
//! a cost that grows with the square of the group, so only explicit changes are told. Every telling runs under the user's membership lock, so one user's
//! notices are queued in the order its states were decided.

use std::collections::HashSet;

use super::*;

/// Most co-members in a new session's presence snapshot; at most half its notice queue
/// (`outbox_frames`) too, so the snapshot never fills the queue it is written to.
pub const PRESENCE_SNAPSHOT_USERS: usize = 256;
/// Most co-member sessions a snapshot looks at, so that a user in many big groups costs the
/// node a bounded scan per connection, not one over every co-member.
const PRESENCE_SNAPSHOT_SCAN: usize = 4096;

/// What made the user's presence worth telling again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// A `Presence` frame (limited).
    Change,
    /// A new session after `Welcome` (limited).
    Arrival,
    /// A session closed (free).
    Departure,
}

/// The state co-members should know of a user with these sessions; `None` without any.
pub(super) fn user_presence(sessions: &[Arc<Session>]) -> Option<PresenceState> {
    if sessions.is_empty() {
        None
    } else if sessions
        .iter()
        .any(|s| s.presence() == PresenceState::Foreground)
    {
        Some(PresenceState::Foreground)
    } else {
        Some(PresenceState::Background)
    }
}

impl Hub {
    /// `Presence`: records the session's state and tells co-members when it changes its
    /// user's state.
    ///
    /// The new state always counts for delivery planning. Telling co-members costs a notice
    /// per co-member, so it is shed under load and limited per user (`user_presence_*`): a
    /// change over the limit is answered `RateLimited` and co-members are not told of it.
    /// The limit counts notices, not requests: the user's state is compared with the one
    /// co-members were last told of ([`Told`]), never with the session's previous state, so a
    /// return to what they know costs nothing and needs no retry (protocol §11).
    pub fn set_presence(
        &self,
        session: &Session,
        state: PresenceState,
    ) -> Result<(), RequestError> {
        let v = match state {
            PresenceState::Foreground => 0,
            PresenceState::Background => 1,
        };
        let changed = session.presence.swap(v, Ordering::Relaxed) != v;
        if changed && state == PresenceState::Foreground {
            // Whatever was deferred while it was in the background comes now, from the log.
            session.request_catch_up();
        }
        let _membership = self.membership_lock(&session.tenant, &session.user);
        let groups: Vec<GroupId> = session.groups.lock().iter().cloned().collect();
        self.tell_presence(session, &groups, Cause::Change)
    }

    /// Right after `Welcome`: pushes the new session the snapshot of its co-members'
    /// presence, then tells them its user's state if that changed (the user arrived, or came
    /// to the foreground on this device). `RateLimited` as for a change: co-members were not
    /// told, the session is open all the same.
    pub(crate) fn session_arrived(&self, session: &Arc<Session>) -> Result<(), RequestError> {
        self.push_presence_snapshot(session);
        let _membership = self.membership_lock(&session.tenant, &session.user);
        let groups: Vec<GroupId> = session.groups.lock().iter().cloned().collect();
        self.tell_presence(session, &groups, Cause::Arrival)
    }

    /// After `session` was unregistered (its user's membership lock held): tells co-members
    /// in `groups` (the session's) if its user's state changed, or that it is offline if that
    /// was its last session.
    pub(super) fn tell_departure(&self, session: &Session, groups: &[GroupId]) {
        // Free, so never refused.
        let _ = self.tell_presence(session, groups, Cause::Departure);
    }

    /// Tells the connected members of `groups` the state of `session`'s user if it differs
    /// from what they were told. The caller holds the user's membership lock.
    fn tell_presence(
        &self,
        session: &Session,
        groups: &[GroupId],
        cause: Cause,
    ) -> Result<(), RequestError> {
        let here = user_presence(&self.sessions_of(&session.tenant, &session.user));
        self.tell_elsewhere(&session.tenant, &session.user, here);
        // In cluster mode co-members are told the user's state over every node: a user
        // leaving here but connected to another node is still online.
        let elsewhere =
            crate::elsewhere::presence_elsewhere(&self.elsewhere, &session.tenant, &session.user);
        let now = crate::elsewhere::combined(here, elsewhere);
        let mut told = session.told.0.lock();
        if *told == now {
            // Also a user never told of (its arrival was shed or refused) that left.
            return Ok(());
        }
        if self.shedding(&session.tenant).presence {
            // Not told while shedding; a user who left is forgotten all the same, so its
            // return is told again.
            self.metrics.presence_shed.fetch_add(1, Ordering::Relaxed);
            if now.is_none() {
                *told = None;
            }
            return Ok(());
        }
        if cause != Cause::Departure {
            self.admit_user(session, Limited::Presence)
                .map_err(|mut e| {
                    e.message
                        .push_str(" (the new state is kept; co-members were not told)");
                    e
                })?;
        }
        *told = now;
        // Released before the fan-out: a snapshot that read the old state pushed it under
        // this lock, so it is queued before the notice below.
        drop(told);
        let frame = wire::encode_server(&ServerFrame::PresenceNotice {
            user: session.user.to_string(),
            state: now.unwrap_or(PresenceState::Background),
            online: now.is_some(),
        });
        let mut reached = HashSet::new();
        for gid in groups {
            let Some(g) = self.groups.loaded(&session.tenant, gid) else {
                continue;
            };
            if cause != Cause::Change && self.large_for_presence(&g) {
                continue;
            }
            let subs = g.fanout.lock().subscribers().to_vec();
            for s in subs {
                if s.user != session.user && reached.insert(s.id) {
                    let notice = Push::Notice {
                        stream: PushStream::Notices,
                        frame: frame.clone(),
                    };
                    s.push(notice, &self.metrics);
                }
            }
        }
        Ok(())
    }

    /// Whether `g` is large (`nudge_background_from_members`, 0 = never): arrivals,
    /// departures and snapshots skip it.
    fn large_for_presence(&self, g: &GroupState) -> bool {
        let from = self.limits.nudge_background_from_members;
        from > 0 && g.members.load(Ordering::Relaxed) >= from
    }

    /// Queues one `PresenceNotice` per connected co-member (other users sharing a group with
    /// `session`, whose state co-members were told) with that told state: at most
    /// [`PRESENCE_SNAPSHOT_USERS`] users (and half of `outbox_frames`), looking at most at
    /// [`PRESENCE_SNAPSHOT_SCAN`] sessions, groups in id order, large groups skipped. Shed
    /// under load like every presence notice.
    fn push_presence_snapshot(&self, session: &Arc<Session>) {
        if self.shedding(&session.tenant).presence {
            self.metrics.presence_shed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut groups: Vec<GroupId> = session.groups.lock().iter().cloned().collect();
        groups.sort();
        let cap = PRESENCE_SNAPSHOT_USERS.min(self.limits.outbox_frames as usize / 2);
        let mut seen: HashSet<UserId> = HashSet::new();
        let mut scanned = 0usize;
        'groups: for gid in groups {
            let Some(g) = self.groups.loaded(&session.tenant, &gid) else {
                continue;
            };
            if self.large_for_presence(&g) {
                continue;
            }
            let fanout = g.fanout.lock();
            for s in fanout.subscribers() {
                scanned += 1;
                if scanned > PRESENCE_SNAPSHOT_SCAN || seen.len() >= cap {
                    break 'groups;
                }
                if s.user == session.user || seen.contains(&s.user) {
                    continue;
                }
                // Read and queued under the told lock: a change of that user's state is
                // decided before or after, and its notice queued after this one.
                let told = s.told.0.lock();
                let Some(state) = *told else { continue };
                seen.insert(s.user.clone());
                let frame = wire::encode_server(&ServerFrame::PresenceNotice {
                    user: s.user.to_string(),
                    state,
                    online: true,
                });
                session.push(
                    Push::Notice {
                        stream: PushStream::Notices,
                        frame,
                    },
                    &self.metrics,
                );
            }
        }
    }
}
