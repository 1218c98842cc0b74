//! Active-first fan-out: who gets a durable message, when, and as what. Decided here, in one
//! place (see ARCHITECTURE.md, "Active first, on the wire").
//!
//! A flushed batch is published in two phases. Phase 1 ([`GroupFanout::publish_active`])
//! advances the group's durable head and hands the message to every foreground subscriber
//! (every subscriber in naive mode). Phase 2 ([`GroupFanout::publish_background`]) runs once
//! the driver has put phase 1 on the wire, and hands the message to the background
//! subscribers — or a nudge instead, when the group defers them ([`defers_background`]).
//! Presence is read again in phase 2: a session that came to the foreground in between is
//! skipped (its return to the foreground starts a catch-up that brings the message); one that
//! went to the background gets a second copy, which its planner skips.

use switchboard_core::PresenceState;

/// A session as the fan-out sees it.
pub trait Subscriber {
    /// Unique per session on the node.
    fn session_id(&self) -> u64;
    fn presence(&self) -> PresenceState;
}

/// What one subscriber is handed for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// The message itself. `gated`: a phase-1 copy that the batch's background phase waits
    /// for (released by the driver once written).
    Deliver { gated: bool },
    /// A nudge: the message is deferred for this session.
    Nudge,
}

/// How many copies one publish handed out, for the driver's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub live: u64,
    pub deferred: u64,
}

/// Whether background sessions of a group get nudges instead of its messages: the group is
/// large (`nudge_from_members`, 0 = never) or the tenant sheds background delivery now.
pub fn defers_background(members: u32, nudge_from_members: u32, shedding: bool) -> bool {
    (nudge_from_members > 0 && members >= nudge_from_members) || shedding
}

/// A group's durable head and its subscribers (the driver keeps it behind the group's lock).
#[derive(Debug)]
pub struct GroupFanout<S> {
    /// Highest durable (flushed and published) sequence number.
    head: u64,
    subscribers: Vec<S>,
}

impl<S: Subscriber> GroupFanout<S> {
    pub fn new(head: u64) -> Self {
        Self {
            head,
            subscribers: Vec::new(),
        }
    }

    /// The newest durable sequence number: what clients may see.
    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn subscribers(&self) -> &[S] {
        &self.subscribers
    }

    pub fn subscribe(&mut self, s: S) {
        self.subscribers.push(s);
    }

    /// Removes the session's subscription, if any.
    pub fn unsubscribe(&mut self, session_id: u64) {
        // Subscription order is kept: the naive benchmark mode fans out in it.
        self.subscribers.retain(|s| s.session_id() != session_id);
    }

    /// Makes `seq` durable-visible without a live copy (a resend whose first flush failed is
    /// durable now). Returns the subscribers that must catch up from the log, or none when
    /// the head was there already.
    pub fn reveal(&mut self, seq: u64) -> &[S] {
        if self.head >= seq {
            return &[];
        }
        self.head = seq;
        &self.subscribers
    }

    /// Phase 1: advances the head to `seq` and hands `push` the copies that go now: every
    /// foreground subscriber's (everyone's when `naive`, ungated). Returns the copies handed
    /// out and whether subscribers are left for phase 2.
    pub fn publish_active(
        &mut self,
        seq: u64,
        naive: bool,
        mut push: impl FnMut(&S, Copy),
    ) -> (Published, bool) {
        self.head = self.head.max(seq);
        let mut live = 0u64;
        for s in &self.subscribers {
            if naive || s.presence() == PresenceState::Foreground {
                push(s, Copy::Deliver { gated: !naive });
                live += 1;
            }
        }
        let later = live < self.subscribers.len() as u64;
        (Published { live, deferred: 0 }, later)
    }

    /// Phase 2: hands `push` a copy (or a nudge, when `defer`) for every subscriber in the
    /// background now.
    pub fn publish_background(&self, defer: bool, mut push: impl FnMut(&S, Copy)) -> Published {
        let mut n = Published::default();
        for s in &self.subscribers {
            if s.presence() == PresenceState::Foreground {
                continue;
            }
            if defer {
                n.deferred += 1;
                push(s, Copy::Nudge);
            } else {
                n.live += 1;
                push(s, Copy::Deliver { gated: false });
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PresenceState::{Background as Bg, Foreground as Fg};

    #[derive(Debug)]
    struct S(u64, PresenceState);
    impl Subscriber for S {
        fn session_id(&self) -> u64 {
            self.0
        }
        fn presence(&self) -> PresenceState {
            self.1
        }
    }

    fn group(subs: &[(u64, PresenceState)]) -> GroupFanout<S> {
        let mut g = GroupFanout::new(0);
        for &(id, p) in subs {
            g.subscribe(S(id, p));
        }
        g
    }

    fn phase1(g: &mut GroupFanout<S>, naive: bool) -> (Vec<(u64, Copy)>, bool) {
        let mut got = Vec::new();
        let (_, later) = g.publish_active(1, naive, |s, c| got.push((s.0, c)));
        (got, later)
    }

    #[test]
    fn phase_one_reaches_exactly_the_foreground_and_gates_it() {
        let mut g = group(&[(1, Bg), (2, Fg), (3, Bg), (4, Fg)]);
        let (got, later) = phase1(&mut g, false);
        let gated = Copy::Deliver { gated: true };
        assert_eq!(got, vec![(2, gated), (4, gated)]);
        assert!(later);
        assert_eq!(g.head(), 1);
    }

    #[test]
    fn naive_mode_is_one_ungated_phase_in_subscription_order() {
        let mut g = group(&[(3, Bg), (1, Fg), (2, Bg)]);
        let (got, later) = phase1(&mut g, true);
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![3, 1, 2]);
        assert!(got
            .iter()
            .all(|(_, c)| *c == Copy::Deliver { gated: false }));
        assert!(!later);
    }

    #[test]
    fn phase_two_reaches_the_background_with_copies_or_nudges() {
        let g = group(&[(1, Bg), (2, Fg), (3, Bg)]);
        for (defer, copy) in [(false, Copy::Deliver { gated: false }), (true, Copy::Nudge)] {
            let mut got = Vec::new();
            let n = g.publish_background(defer, |s, c| got.push((s.0, c)));
            assert_eq!(got, vec![(1, copy), (3, copy)]);
            assert_eq!(n.live + n.deferred, 2);
        }
    }

    #[test]
    fn all_foreground_needs_no_phase_two() {
        let mut g = group(&[(1, Fg), (2, Fg)]);
        assert!(!phase1(&mut g, false).1);
    }

    #[test]
    fn reveal_never_moves_the_head_back() {
        let mut g = group(&[(1, Fg)]);
        assert_eq!(g.reveal(5).len(), 1);
        assert!(g.reveal(3).is_empty());
        assert_eq!(g.head(), 5);
    }

    #[test]
    fn large_groups_and_shedding_defer_the_background() {
        assert!(!defers_background(10, 0, false), "0 means never");
        assert!(!defers_background(9, 10, false));
        assert!(defers_background(10, 10, false));
        assert!(defers_background(1, 0, true));
    }
}
