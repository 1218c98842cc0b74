//! Per-group delivery bookkeeping: what was seen (dedupe + resume cursors) and what the app
//! was handed but the node has not been told about yet (coalesced `AckDelivery`).
//!
//! Invariant: a `(group, seq)` passes [`DeliveryTracker::observe`] at most once per tracker,
//! and never at or below the group's cursor — so no message reaches the app twice, whatever
//! the node resends after a reconnect.

use std::collections::BTreeMap;

/// What [`DeliveryTracker::observe`] decided about a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observed {
    /// New and in order: hand it to the app.
    Next,
    /// New, but seqs between the cursor and it never arrived (`missing` of them). The node
    /// promises no gaps, so this is logged; the message is still handed to the app.
    AfterGap { missing: u64 },
    /// At or below the cursor: already handed to the app, drop it.
    Duplicate,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct GroupState {
    /// Highest seq seen; `None` until the first delivery (or resume cursor).
    seen: Option<u64>,
    /// Highest seq the app was handed (or acked by hand) that should reach the node.
    ack_wanted: u64,
    /// Highest seq sent in an `AckDelivery` on the current connection.
    ack_sent: u64,
}

/// See the module docs. Groups are kept sorted so `Hello` and `cursors()` are stable.
#[derive(Debug, Default)]
pub(crate) struct DeliveryTracker {
    groups: BTreeMap<String, GroupState>,
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

    /// Records a delivered `(group, seq)` and says whether it is new.
    pub(crate) fn observe(&mut self, group: &str, seq: u64) -> Observed {
        let g = match self.groups.get_mut(group) {
            Some(g) => g,
            None => self.groups.entry(group.to_owned()).or_default(),
        };
        let verdict = match g.seen {
            Some(seen) if seq <= seen => return Observed::Duplicate,
            Some(seen) if seq > seen + 1 => Observed::AfterGap {
                missing: seq - seen - 1,
            },
            _ => Observed::Next,
        };
        g.seen = Some(seq);
        verdict
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
        }
    }

    /// The user left `group`: forget it, so a later join resumes wherever the node says.
    pub(crate) fn forget(&mut self, group: &str) {
        self.groups.remove(group);
    }
}

#[cfg(test)]
mod adopt_tests {
    use super::*;

    #[test]
    fn resume_points_fill_only_unknown_groups() {
        let mut t = DeliveryTracker::with_resume([("a".to_string(), 5)]);
        t.adopt_resume("a", 2);
        t.adopt_resume("b", 7);
        assert_eq!(
            t.cursors(),
            vec![("a".to_string(), 5), ("b".to_string(), 7)]
        );
        assert_eq!(t.observe("b", 7), Observed::Duplicate);
        assert_eq!(t.observe("b", 8), Observed::Next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `(group, seq)` deliveries and compares the verdicts, then the cursors.
    fn check(
        resume: &[(&str, u64)],
        deliveries: &[(&str, u64)],
        verdicts: &[Observed],
        cursors: &[(&str, u64)],
    ) {
        let mut t = DeliveryTracker::with_resume(resume.iter().map(|(g, s)| (g.to_string(), *s)));
        let got: Vec<Observed> = deliveries.iter().map(|(g, s)| t.observe(g, *s)).collect();
        assert_eq!(got, verdicts, "deliveries {deliveries:?}");
        let want: Vec<(String, u64)> = cursors.iter().map(|(g, s)| (g.to_string(), *s)).collect();
        assert_eq!(t.cursors(), want);
    }

    use Observed::*;

    #[test]
    fn in_order_then_duplicates() {
        check(
            &[],
            &[("a", 1), ("a", 2), ("a", 2), ("a", 1), ("a", 3)],
            &[Next, Next, Duplicate, Duplicate, Next],
            &[("a", 3)],
        );
    }

    #[test]
    fn first_delivery_of_a_group_may_start_anywhere() {
        check(&[], &[("g", 40), ("g", 41)], &[Next, Next], &[("g", 41)]);
    }

    #[test]
    fn resume_cursor_drops_what_the_app_already_has() {
        check(
            &[("a", 5), ("b", 0)],
            &[("a", 4), ("a", 5), ("a", 6), ("b", 1)],
            &[Duplicate, Duplicate, Next, Next],
            &[("a", 6), ("b", 1)],
        );
        // The higher of repeated resume entries wins.
        check(
            &[("a", 5), ("a", 3)],
            &[("a", 4)],
            &[Duplicate],
            &[("a", 5)],
        );
    }

    #[test]
    fn gaps_are_reported_but_delivered() {
        check(
            &[("a", 2)],
            &[("a", 5), ("a", 3), ("a", 6)],
            &[AfterGap { missing: 2 }, Duplicate, Next],
            &[("a", 6)],
        );
    }

    #[test]
    fn groups_are_independent_and_sorted() {
        check(
            &[],
            &[("z", 1), ("a", 1), ("z", 1), ("m", 7)],
            &[Next, Next, Duplicate, Next],
            &[("a", 1), ("m", 7), ("z", 1)],
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
        assert_eq!(t.observe("a", 1), Next);
    }
}
