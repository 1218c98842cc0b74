//! The admit/drop core of membership as values: what a user's `Join`/`Leave` and an admin's
//! add/remove do to each of the user's connected sessions. One admit path (a `Join` of an
//! open group and an admin's add) and one drop path (a `Leave` and an admin's removal), each
//! moving every session of the user at once. The driver does the store writes, holds the
//! user's membership lock and the group's fan-out lock, and applies the changes (edge's hub;
//! the simulation's driver calls the same functions).

/// What a `Join` does, from whether the user is a member and whether the group is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// A member already (e.g. of a closed group the tenant manages): its sessions follow
    /// the membership from its stored cursor ([`Change::Follow`]).
    Follow,
    /// Not a member of an open group: admitted ([`Change::Admit`]).
    Admit,
}

/// Why a `Join` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    /// Displayed after the group's name: "group g1 is closed; …".
    #[error("is closed; membership is managed by the tenant")]
    Closed,
}

/// Decides a `Join` (after the user's join rate limit and the group's existence).
pub fn join(is_member: bool, open: bool) -> Result<Join, JoinRefused> {
    match (is_member, open) {
        (true, _) => Ok(Join::Follow),
        (false, true) => Ok(Join::Admit),
        (false, false) => Err(JoinRefused::Closed),
    }
}

/// Whether a user in `groups` groups may become a member of one more.
pub fn within_group_limit(groups: usize, max_groups_per_user: u32) -> bool {
    groups < max_groups_per_user as usize
}

/// One user's membership change in one group, for every one of its connected sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new member, admitted when the group's durable head was `head`: its cursor is stored
    /// there and every session subscribes from there, so it gets everything after the head
    /// once and nothing at or below it.
    Admit { head: u64 },
    /// A member's sessions following its membership (a `Join` of a group it is in, a new
    /// session): from `after` (the stored cursor, or the device's own resume cursor).
    Follow { after: u64 },
    /// Not a member any more: every session unsubscribes at once.
    Drop,
}

/// A change to one session's subscription to one group, queued for its planner (which
/// applies queued changes before it plans anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubChange {
    /// Deliver what comes after `after` (never above the durable head).
    Subscribe {
        after: u64,
    },
    Unsubscribe,
}

impl Change {
    /// The cursor to store for the user, if the change sets one.
    pub fn cursor(self) -> Option<u64> {
        match self {
            Change::Admit { head } => Some(head),
            Change::Follow { .. } | Change::Drop => None,
        }
    }

    /// What one session's planner is told, given the group's durable head when the session
    /// joins (or leaves) the fan-out: a subscription starts at most at the head.
    pub fn sub_change(self, head_now: u64) -> SubChange {
        match self {
            Change::Admit { head: after } | Change::Follow { after } => SubChange::Subscribe {
                after: after.min(head_now),
            },
            Change::Drop => SubChange::Unsubscribe,
        }
    }

    /// The change for each of the user's connected sessions: every one of them, at once.
    pub fn for_sessions<S>(self, sessions: impl IntoIterator<Item = S>) -> Vec<(S, Change)> {
        sessions.into_iter().map(|s| (s, self)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_admits_into_open_groups_and_follows_a_membership_it_has() {
        assert_eq!(join(false, true), Ok(Join::Admit));
        assert_eq!(join(true, true), Ok(Join::Follow));
        // A closed group's members (added by the tenant) may join their sessions to it.
        assert_eq!(join(true, false), Ok(Join::Follow));
        assert_eq!(join(false, false), Err(JoinRefused::Closed));
    }

    #[test]
    fn the_group_limit_counts_the_groups_the_user_is_in() {
        assert!(within_group_limit(0, 1));
        assert!(!within_group_limit(1, 1));
        assert!(!within_group_limit(0, 0));
    }

    #[test]
    fn an_admitted_member_starts_at_the_head_it_was_admitted_at() {
        let change = Change::Admit { head: 7 };
        assert_eq!(change.cursor(), Some(7));
        assert_eq!(change.sub_change(7), SubChange::Subscribe { after: 7 });
        // A publish between the read of the head and the subscription: the new member
        // still starts at 7 and gets 8 from the log.
        assert_eq!(change.sub_change(8), SubChange::Subscribe { after: 7 });
    }

    #[test]
    fn a_follow_never_starts_above_the_head() {
        let change = Change::Follow { after: 12 };
        assert_eq!(change.cursor(), None);
        assert_eq!(change.sub_change(9), SubChange::Subscribe { after: 9 });
        assert_eq!(change.sub_change(20), SubChange::Subscribe { after: 12 });
    }

    #[test]
    fn every_session_of_the_user_moves_at_once() {
        let sessions = [3_u64, 5, 8];
        let admitted = Change::Admit { head: 2 }.for_sessions(sessions);
        assert_eq!(
            admitted.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            sessions
        );
        assert!(admitted
            .iter()
            .all(|(_, c)| c.sub_change(2) == SubChange::Subscribe { after: 2 }));
        let dropped = Change::Drop.for_sessions(sessions);
        assert_eq!(dropped.len(), 3);
        assert!(dropped
            .iter()
            .all(|(_, c)| c.sub_change(2) == SubChange::Unsubscribe));
        assert_eq!(Change::Drop.cursor(), None);
    }
}
