//! Per-group delivery bookkeeping: what was seen (dedupe + resume cursors), deliveries that
//! overtook an earlier message of their group (held until it arrives), and what the app was
//! handed but the node has not been told about yet (coalesced `AckDelivery`).
//!
//! The node spreads a connection's deliveries over several push streams (one per lane), so
//! a group's messages can arrive out of order; each subscription starts with a `Resume
//! { group, after_seq }` (protocol §9). Invariant: a `(group, seq)` is handed on at most once
//! per tracker, in increasing `seq` per group with no gap after the connection's `Resume`,
//! and never at or below the group's cursor — so no message reaches the app twice or out of
//! order, whatever the node resends after a reconnect.

use std::collections::BTreeMap;

use switchboard_wire::Message;

/// Messages one connection may hold back waiting for an earlier one. The node never has
/// more than its outbox bound per stream in flight, so a connection over this is broken
/// (the client reconnects and resumes from its cursors).
pub(crate) const MAX_HELD: usize = 65_536;

/// What [`DeliveryTracker::arrive`] did with a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// It (and any held successors) went to `out`, in order.
    Ready,
    /// An earlier message of its group has not arrived yet (or the group's `Resume`): kept.
    Held,
    /// At or below the cursor: already handed to the app, dropped.
    Duplicate,
    /// Holding it would exceed [`MAX_HELD`]: dropped; reconnect.
    TooManyHeld,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct GroupState {
    /// Highest seq handed on; `None` until the first delivery (or resume cursor).
    seen: Option<u64>,
    /// The next seq that may be handed on, on this connection (set by `Resume`).
    next: Option<u64>,
    /// Deliveries that arrived before `next`'s message, by seq.
    held: BTreeMap<u64, Message>,
    /// Highest seq the app was handed (or acked by hand) that should reach the node.
    ack_wanted: u64,
    /// Highest seq sent in an `AckDelivery` on the current connection.
    ack_sent: u64,
}

/// See the module docs. Groups are kept sorted so `Hello` and `cursors()` are stable.
#[derive(Debug, Default)]
pub(crate) struct DeliveryTracker {
    groups: BTreeMap<String, GroupState>,
    /// Messages held over all groups.
    held: usize,
}

impl DeliveryTracker {
    /// Starts from resume cursors: everything up to each `seq` counts as already seen.
    pub(crate) fn with_resume(resume: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut t = Self::default();
        for (group, seq) in resume {
            let g = t.groups.entry(group).or_default();
            g.seen = Some(g.seen.map_or(seq, |s| s.max(seq)));
        }
        t
    }

    /// Adopts the node's resume point for a group this client had no cursor for, so the next
    /// `Hello` names it (otherwise the node would resume from the user's stored cursor, which
    /// another device of the same user may have moved past what this one has seen).
    pub(crate) fn adopt_resume(&mut self, group: &str, seq: u64) {
        let g = match self.groups.get_mut(group) {
            Some(g) => g,
            None => self.groups.entry(group.to_owned()).or_default(),
        };
        if g.seen.is_none() {
            g.seen = Some(seq);
        }
    }

    fn group(&mut self, group: &str) -> &mut GroupState {
        if !self.groups.contains_key(group) {
            self.groups.insert(group.to_owned(), GroupState::default());
        }
        self.groups.get_mut(group).expect("inserted above")
    }

    /// A `Resume`: this connection's deliveries of `group` follow `after`. Anything held that
    /// may now be handed on goes to `out`. Returns how many messages the node skipped past
    /// this client's cursor (it resumed later than the client had seen; logged by callers).
    pub(crate) fn resume(&mut self, group: &str, after: u64, out: &mut Vec<Message>) -> u64 {
        let g = self.group(group);
        let seen = g.seen.unwrap_or(after);
        let skipped = after.saturating_sub(seen);
        if skipped > 0 {
            g.seen = Some(after);
        }
        // Never backwards on one connection: a join, leave and rejoin can leave the old
        // subscription's `Resume` in flight on another stream, arriving after the new one's.
        // Moving `next` back to it would hold every later delivery, waiting for seqs the
        // node will not send again, until the next reconnect.
        let floor = after.max(seen) + 1;
        let next = g.next.map_or(floor, |n| n.max(floor));
        g.next = Some(next);
        let before = g.held.len();
        g.held.retain(|&seq, _| seq >= next);
        let dropped = before - g.held.len();
        let released = release(g, out);
        self.held -= dropped + released;
        skipped
    }

    /// A delivered message: hands it (and held successors) to `out` when it is next in its
    /// group, holds it when it overtook an earlier one, drops it when already seen.
    pub(crate) fn arrive(&mut self, m: Message, out: &mut Vec<Message>) -> Arrival {
        let held_now = self.held;
        let g = self.group(&m.group);
        if g.seen.is_some_and(|seen| m.seq <= seen) || g.next.is_some_and(|n| m.seq < n) {
            return Arrival::Duplicate;
        }
        if g.next == Some(m.seq) {
            g.seen = Some(m.seq);
            g.next = Some(m.seq + 1);
            out.push(m);
            let released = release(g, out);
            self.held -= released;
            return Arrival::Ready;
        }
        if held_now >= MAX_HELD {
            return Arrival::TooManyHeld;
        }
        if g.held.insert(m.seq, m).is_none() {
            self.held += 1;
        }
        Arrival::Held
    }

    /// Messages held now, over all groups.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Highest seq seen per group: what `Hello` resumes from.
    pub(crate) fn cursors(&self) -> Vec<(String, u64)> {
        self.groups
            .iter()
            .filter_map(|(group, g)| g.seen.map(|seq| (group.clone(), seq)))
            .collect()
    }

    /// The app has everything up to `seq` in `group`: the node should persist it.
    pub(crate) fn want_ack(&mut self, group: &str, seq: u64) {
        let g = match self.groups.get_mut(group) {
            Some(g) => g,
            None => self.groups.entry(group.to_owned()).or_default(),
        };
        g.ack_wanted = g.ack_wanted.max(seq);
    }

    /// Whether [`DeliveryTracker::take_acks`] would return anything.
    #[cfg(test)]
    pub(crate) fn has_acks(&self) -> bool {
        self.groups.values().any(|g| g.ack_wanted > g.ack_sent)
    }

    /// One `(group, seq)` per group whose wanted ack is ahead of the sent one, marking them
    /// sent. Many handed messages of a group become one ack.
    pub(crate) fn take_acks(&mut self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (group, g) in &mut self.groups {
            if g.ack_wanted > g.ack_sent {
                g.ack_sent = g.ack_wanted;
                out.push((group.clone(), g.ack_wanted));
            }
        }
        out
    }

    /// A new connection: acks sent on the old one may have been lost in flight, so the next
    /// [`DeliveryTracker::take_acks`] repeats the latest of every group (acks are monotonic on
    /// the node, so repeating is harmless).
    pub(crate) fn new_connection(&mut self) {
        for g in self.groups.values_mut() {
            g.ack_sent = 0;
            // The new connection says where it resumes; what the old one left held, the node
            // sends again (it resumes from the cursors, which never pass a held message).
            g.next = None;
            g.held.clear();
        }
        self.held = 0;
    }

    /// The user left `group`: forget it, so a later join resumes wherever the node says.
    pub(crate) fn forget(&mut self, group: &str) {
        if let Some(g) = self.groups.remove(group) {
            self.held -= g.held.len();
        }
    }
}

/// Moves held messages that are next in order to `out`; returns how many.
fn release(g: &mut GroupState, out: &mut Vec<Message>) -> usize {
    let mut n = 0;
    while let Some(next) = g.next {
        let Some(m) = g.held.remove(&next) else { break };
        g.seen = Some(next);
        g.next = Some(next + 1);
        out.push(m);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(group: &str, seq: u64) -> Message {
        Message {
            group: group.into(),
            seq,
            sender: "s".into(),
            client_msg_id: format!("m{seq}"),
            sent_at_ms: 0,
            body: Default::default(),
            lane: Default::default(),
        }
    }

    /// Feeds `Resume`s (`("R", group, after)`) and deliveries (`("D", group, seq)`), and
    /// returns what was handed on, as `group/seq`.
    fn feed(t: &mut DeliveryTracker, events: &[(&str, &str, u64)]) -> Vec<String> {
        let mut out = Vec::new();
        for &(kind, group, n) in events {
            match kind {
                "R" => {
                    t.resume(group, n, &mut out);
                }
                _ => {
                    t.arrive(msg(group, n), &mut out);
                }
            }
        }
        out.iter()
            .map(|m| format!("{}/{}", m.group, m.seq))
            .collect()
    }

    fn cursors(t: &DeliveryTracker) -> Vec<(String, u64)> {
        t.cursors()
    }

    #[test]
    fn in_order_then_duplicates() {
        let mut t = DeliveryTracker::default();
        let got = feed(
            &mut t,
            &[
                ("R", "a", 0),
                ("D", "a", 1),
                ("D", "a", 2),
                ("D", "a", 2),
                ("D", "a", 1),
                ("D", "a", 3),
            ],
        );
        assert_eq!(got, ["a/1", "a/2", "a/3"]);
        assert_eq!(cursors(&t), [("a".to_string(), 3)]);
    }

    #[test]
    fn a_late_resume_of_an_earlier_subscription_never_moves_the_group_backwards() {
        // No cursor for `a`: the rejoin's Resume (after 10) comes first, the old
        // subscription's (after 5) later, from another stream.
        let got = feed(
            &mut DeliveryTracker::default(),
            &[
                ("R", "a", 10),
                ("R", "a", 5),
                ("D", "a", 11),
                ("D", "a", 12),
            ],
        );
        assert_eq!(got, ["a/11", "a/12"], "nothing held waiting for seq 6");
        // The same after a delivery moved `seen`.
        let got = feed(
            &mut DeliveryTracker::default(),
            &[
                ("R", "a", 10),
                ("D", "a", 11),
                ("R", "a", 3),
                ("D", "a", 12),
            ],
        );
        assert_eq!(got, ["a/11", "a/12"]);
    }

    #[test]
    fn a_message_that_overtook_its_predecessor_waits_for_it() {
        let mut t = DeliveryTracker::default();
        let mut out = Vec::new();
        t.resume("a", 4, &mut out);
        assert_eq!(t.arrive(msg("a", 7), &mut out), Arrival::Held);
        assert_eq!(t.arrive(msg("a", 6), &mut out), Arrival::Held);
        assert_eq!(t.held(), 2);
        assert!(out.is_empty());
        assert_eq!(t.arrive(msg("a", 5), &mut out), Arrival::Ready);
        let seqs: Vec<u64> = out.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [5, 6, 7]);
        assert_eq!(t.held(), 0);
        assert_eq!(t.arrive(msg("a", 6), &mut out), Arrival::Duplicate);
    }

    #[test]
    fn deliveries_before_the_resume_wait_for_it() {
        let mut t = DeliveryTracker::default();
        let got = feed(&mut t, &[("D", "g", 41), ("D", "g", 42), ("R", "g", 40)]);
        assert_eq!(got, ["g/41", "g/42"]);
        assert_eq!(t.held(), 0);
    }

    #[test]
    fn resume_cursor_drops_what_the_app_already_has() {
        let mut t = DeliveryTracker::with_resume([("a".to_string(), 5), ("b".to_string(), 0)]);
        // The node resumes `a` from an older position: 4 and 5 are duplicates.
        let got = feed(
            &mut t,
            &[
                ("R", "a", 3),
                ("D", "a", 5),
                ("D", "a", 4),
                ("D", "a", 6),
                ("R", "b", 0),
                ("D", "b", 1),
            ],
        );
        assert_eq!(got, ["a/6", "b/1"]);
        assert_eq!(cursors(&t), [("a".to_string(), 6), ("b".to_string(), 1)]);
        // The higher of repeated resume entries wins.
        let mut t = DeliveryTracker::with_resume([("a".to_string(), 5), ("a".to_string(), 3)]);
        assert_eq!(
            feed(&mut t, &[("R", "a", 3), ("D", "a", 4)]),
            Vec::<String>::new()
        );
        assert_eq!(cursors(&t), [("a".to_string(), 5)]);
    }

    #[test]
    fn a_resume_past_the_cursor_is_reported_and_followed() {
        let mut t = DeliveryTracker::with_resume([("a".to_string(), 2)]);
        let mut out = Vec::new();
        assert_eq!(t.resume("a", 4, &mut out), 2, "3 and 4 were skipped");
        assert_eq!(t.arrive(msg("a", 5), &mut out), Arrival::Ready);
        assert_eq!(t.arrive(msg("a", 3), &mut out), Arrival::Duplicate);
    }

    #[test]
    fn groups_are_independent_and_sorted() {
        let mut t = DeliveryTracker::default();
        let got = feed(
            &mut t,
            &[
                ("R", "z", 0),
                ("R", "a", 0),
                ("R", "m", 6),
                ("D", "z", 1),
                ("D", "a", 1),
                ("D", "z", 1),
                ("D", "m", 7),
            ],
        );
        assert_eq!(got, ["z/1", "a/1", "m/7"]);
        assert_eq!(
            cursors(&t),
            [
                ("a".to_string(), 1),
                ("m".to_string(), 7),
                ("z".to_string(), 1)
            ]
        );
    }

    #[test]
    fn a_new_connection_drops_held_messages_and_waits_for_its_resume() {
        let mut t = DeliveryTracker::default();
        let mut out = Vec::new();
        t.resume("a", 0, &mut out);
        t.arrive(msg("a", 1), &mut out);
        t.arrive(msg("a", 3), &mut out);
        assert_eq!(t.held(), 1);
        t.new_connection();
        assert_eq!(t.held(), 0);
        // Until the new connection's Resume, nothing is handed on.
        assert_eq!(t.arrive(msg("a", 2), &mut out), Arrival::Held);
        t.resume("a", 1, &mut out);
        let seqs: Vec<u64> = out.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn holding_is_bounded() {
        let mut t = DeliveryTracker::default();
        let mut out = Vec::new();
        t.resume("a", 0, &mut out);
        for seq in 2..2 + MAX_HELD as u64 {
            assert_eq!(t.arrive(msg("a", seq), &mut out), Arrival::Held);
        }
        assert_eq!(
            t.arrive(msg("a", 10 * MAX_HELD as u64), &mut out),
            Arrival::TooManyHeld
        );
        t.forget("a");
        assert_eq!(t.held(), 0);
    }

    #[test]
    fn resume_points_fill_only_unknown_groups() {
        let mut t = DeliveryTracker::with_resume([("a".to_string(), 5)]);
        t.adopt_resume("a", 2);
        t.adopt_resume("b", 7);
        assert_eq!(
            t.cursors(),
            vec![("a".to_string(), 5), ("b".to_string(), 7)]
        );
    }

    #[test]
    fn acks_coalesce_per_group() {
        let mut t = DeliveryTracker::default();
        assert!(!t.has_acks());
        for seq in 1..=50 {
            t.want_ack("a", seq);
        }
        t.want_ack("b", 3);
        t.want_ack("a", 10); // older ack never moves the cursor back
        assert!(t.has_acks());
        assert_eq!(t.take_acks(), vec![("a".into(), 50), ("b".into(), 3)]);
        assert!(!t.has_acks());
        assert_eq!(t.take_acks(), vec![]);
        t.want_ack("b", 4);
        assert_eq!(t.take_acks(), vec![("b".into(), 4)]);
    }

    #[test]
    fn a_new_connection_repeats_latest_acks() {
        let mut t = DeliveryTracker::default();
        t.want_ack("a", 7);
        t.want_ack("b", 2);
        t.take_acks();
        t.new_connection();
        assert_eq!(t.take_acks(), vec![("a".into(), 7), ("b".into(), 2)]);
    }

    #[test]
    fn acks_do_not_invent_cursors() {
        let mut t = DeliveryTracker::default();
        t.want_ack("a", 7);
        assert_eq!(t.cursors(), vec![]);
    }

    #[test]
    fn forget_drops_cursor_and_acks() {
        let mut t = DeliveryTracker::with_resume([("a".to_string(), 9)]);
        t.want_ack("a", 9);
        t.forget("a");
        assert_eq!(t.cursors(), vec![]);
        assert!(!t.has_acks());
        let got = feed(&mut t, &[("R", "a", 0), ("D", "a", 1)]);
        assert_eq!(got, ["a/1"]);
    }
}
