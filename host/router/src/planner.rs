//! What one session's push streams carry next: [`SessionPlanner`].
//!
//! The planner keeps, per subscribed group, the highest sequence number written to the
//! connection. It never writes one at or below it, and before writing a higher one it fills
//! the gap from the log, on the same stream, so a session sees every message of its groups
//! once and in order whether the message came live, from catch-up, or after its queue
//! overflowed. A subscription's first frame is `Resume { group, after_seq }`; the client
//! orders a group's messages by `seq` from there (protocol §9), because a group's messages
//! may travel on several streams (lanes). A subscription whose next messages retention
//! deleted starts at the group's first retained one: its `Resume` names the seq before it
//! (retention deleting more after the `Resume` was written ends the session instead: a
//! second `Resume` could overtake earlier deliveries on other streams).
//!
//! The planner is a plain value: the driver owns it (one per session, behind whatever lock
//! its writers share), hands it work with `now_ms`, and writes the frames it returns.

use std::collections::BTreeMap;

use bytes::Bytes;
use switchboard_core::GroupId;
use switchboard_wire::{self as wire, Message, ServerFrame};

use crate::log::{GroupLog, LogError};

/// A deferred group is nudged at most once per this interval per connection: the nudge is a
/// hint ("there is more, fetch when you need it"), not a copy of the traffic.
pub const NUDGE_INTERVAL_MS: u64 = 1_000;

/// One thing to plan, as the fan-out queued it for the session.
#[derive(Debug, Clone)]
pub enum PlanItem {
    /// Message `seq` of `group`, already encoded as a `Deliver` frame (shared by recipients).
    Deliver {
        group: GroupId,
        seq: u64,
        frame: Bytes,
    },
    /// A best-effort notice, written as it is.
    Notice(Bytes),
    /// `group` has messages up to `seq` that this session is not sent now: a `Nudge`, at
    /// most once per [`NUDGE_INTERVAL_MS`]. One that comes too soon is held, and the newest
    /// held one goes out when the interval ends ([`SessionPlanner::poll_nudges`]): a burst
    /// ends with a nudge naming its last message.
    Nudge { group: GroupId, seq: u64 },
}

/// What planning did besides producing frames, for the driver's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PlanStats {
    /// `Deliver` frames read from the log (gap fills and catch-up).
    pub from_log: u64,
    /// `Nudge` frames written.
    pub nudges: u64,
    /// Live deliveries skipped because the connection had them already.
    pub skipped: u64,
    /// Subscriptions that started past messages retention had deleted (their `Resume`
    /// names the seq before the first retained one).
    pub expired: u64,
}

/// What the driver must do after [`SessionPlanner::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Planned {
    /// Nothing more.
    Done,
    /// A gap could not be closed in one bounded read: run a catch-up.
    NeedsCatchUp,
}

/// One subscribed group as the planner sees it.
#[derive(Debug)]
struct Sub<G> {
    group: G,
    /// Highest seq written to this connection.
    sent: u64,
    /// Whether the `Resume` frame of this subscription was written.
    announced: bool,
    /// Highest seq a `Nudge` told about, and when (ms).
    nudged_seq: u64,
    nudged_at_ms: u64,
    /// The newest seq a nudge held back by the interval would name (0: none).
    held_nudge: u64,
}

impl<G> Sub<G> {
    /// The held nudge, if it still says something new.
    fn held(&self) -> Option<u64> {
        (self.held_nudge > self.sent.max(self.nudged_seq)).then_some(self.held_nudge)
    }
}

/// Decides what a session's push streams carry next; `G` is the driver's handle of a group,
/// passed back to the [`GroupLog`] for reads.
///
/// Subscriptions are kept in id order, so catch-up visits groups in the same order on every
/// run (a simulation replays from its seed).
#[derive(Debug)]
pub struct SessionPlanner<G> {
    subs: BTreeMap<GroupId, Sub<G>>,
}

impl<G> Default for SessionPlanner<G> {
    fn default() -> Self {
        Self {
            subs: BTreeMap::new(),
        }
    }
}

impl<G> SessionPlanner<G> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts (or restarts) a subscription: the connection has everything up to `after`.
    pub fn subscribe(&mut self, id: GroupId, group: G, after: u64) {
        self.subs.insert(
            id,
            Sub {
                group,
                sent: after,
                announced: false,
                nudged_seq: 0,
                nudged_at_ms: 0,
                held_nudge: 0,
            },
        );
    }

    pub fn unsubscribe(&mut self, id: &GroupId) {
        self.subs.remove(id);
    }

    /// Highest seq of `group` written to the connection, if subscribed.
    pub fn sent(&self, id: &GroupId) -> Option<u64> {
        self.subs.get(id).map(|s| s.sent)
    }

    /// Appends the frames for one item to `out`, filling a gap from the log first.
    pub fn plan(
        &mut self,
        item: PlanItem,
        now_ms: u64,
        log: &impl GroupLog<G>,
        out: &mut Vec<Bytes>,
        stats: &mut PlanStats,
    ) -> Result<Planned, LogError> {
        match item {
            PlanItem::Notice(frame) => out.push(frame),
            PlanItem::Nudge { group, seq } => self.nudge(&group, seq, now_ms, out, stats),
            PlanItem::Deliver { group, seq, frame } => {
                let Some(sub) = self.subs.get_mut(&group) else {
                    return Ok(Planned::Done); // left the group since
                };
                if seq <= sub.sent {
                    stats.skipped += 1;
                    return Ok(Planned::Done);
                }
                if seq > sub.sent + 1 {
                    fill(&group, sub, seq - 1, log, out, stats)?;
                }
                // Only write it if the gap is closed (a fill is bounded per call).
                if sub.sent + 1 != seq {
                    return Ok(Planned::NeedsCatchUp);
                }
                announce(&group, sub, out);
                out.push(frame);
                sub.sent = seq;
            }
        }
        Ok(Planned::Done)
    }

    fn nudge(
        &mut self,
        group: &GroupId,
        seq: u64,
        now_ms: u64,
        out: &mut Vec<Bytes>,
        stats: &mut PlanStats,
    ) {
        let Some(sub) = self.subs.get_mut(group) else {
            return;
        };
        if seq <= sub.sent || seq <= sub.nudged_seq {
            return;
        }
        if sub.nudged_at_ms != 0 && now_ms < sub.nudged_at_ms + NUDGE_INTERVAL_MS {
            sub.held_nudge = sub.held_nudge.max(seq);
            return;
        }
        write_nudge(group, sub, seq, now_ms, out, stats);
    }

    /// When the earliest held nudge is due (ms), if any: the driver calls
    /// [`SessionPlanner::poll_nudges`] then (a timer; nothing else would wake it).
    pub fn next_nudge_at(&self) -> Option<u64> {
        self.subs
            .values()
            .filter(|s| s.held().is_some())
            .map(|s| s.nudged_at_ms + NUDGE_INTERVAL_MS)
            .min()
    }

    /// Writes the held nudges whose interval has ended (the trailing edge of a burst).
    pub fn poll_nudges(&mut self, now_ms: u64, out: &mut Vec<Bytes>, stats: &mut PlanStats) {
        for (id, sub) in self.subs.iter_mut() {
            match sub.held() {
                Some(seq) if now_ms >= sub.nudged_at_ms + NUDGE_INTERVAL_MS => {
                    write_nudge(id, sub, seq, now_ms, out, stats);
                }
                Some(_) => {}
                None => sub.held_nudge = 0,
            }
        }
    }

    /// Appends up to one bounded batch of log messages per group that is behind its durable
    /// head, except groups whose delivery is deferred for this session now. Returns whether
    /// more remain (call again after writing `out`).
    pub fn catch_up(
        &mut self,
        log: &impl GroupLog<G>,
        out: &mut Vec<Bytes>,
        stats: &mut PlanStats,
    ) -> Result<bool, LogError> {
        let mut more = false;
        for (id, sub) in self.subs.iter_mut() {
            if log.defers(&sub.group) {
                continue;
            }
            let head = log.head(&sub.group);
            fill(id, sub, head, log, out, stats)?;
            more |= sub.sent < head;
        }
        Ok(more)
    }
}

fn write_nudge<G>(
    group: &GroupId,
    sub: &mut Sub<G>,
    seq: u64,
    now_ms: u64,
    out: &mut Vec<Bytes>,
    stats: &mut PlanStats,
) {
    sub.nudged_seq = seq;
    sub.nudged_at_ms = now_ms;
    sub.held_nudge = 0;
    out.push(wire::encode_server(&ServerFrame::Nudge {
        group: group.to_string(),
        head_seq: seq,
    }));
    stats.nudges += 1;
}

/// Appends one bounded batch of messages (sent, upto] of a group from the log.
fn fill<G>(
    id: &GroupId,
    sub: &mut Sub<G>,
    upto: u64,
    log: &impl GroupLog<G>,
    out: &mut Vec<Bytes>,
    stats: &mut PlanStats,
) -> Result<(), LogError> {
    if sub.sent >= upto {
        return Ok(());
    }
    for m in log.read(&sub.group, sub.sent, upto)? {
        if m.seq > sub.sent + 1 && !sub.announced && m.seq == log.first_seq(&sub.group)? {
            // Retention deleted (sent, m.seq): the subscription starts after the gap, and
            // its `Resume` says so, before any delivery of the group on this connection.
            sub.sent = m.seq - 1;
            stats.expired += 1;
        }
        if m.seq != sub.sent + 1 {
            // A hole in the log would break the order promise: stop and say so.
            return Err(LogError::Hole {
                group: id.clone(),
                expected: sub.sent + 1,
                found: m.seq,
            });
        }
        announce(id, sub, out);
        sub.sent = m.seq;
        out.push(wire::encode_server(&ServerFrame::Deliver(m)));
        stats.from_log += 1;
    }
    Ok(())
}

/// Writes the subscription's `Resume` before its first delivery on this connection.
fn announce<G>(id: &GroupId, sub: &mut Sub<G>, out: &mut Vec<Bytes>) {
    if !sub.announced {
        sub.announced = true;
        out.push(wire::encode_server(&ServerFrame::Resume {
            group: id.to_string(),
            after_seq: sub.sent,
        }));
    }
}

/// Encodes a log message as its `Deliver` frame (what live publishing shares between
/// recipients).
pub fn deliver_frame(m: Message) -> Bytes {
    wire::encode_server(&ServerFrame::Deliver(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log with nothing in it: nudges never read.
    struct NoLog;
    impl GroupLog<()> for NoLog {
        fn head(&self, _: &()) -> u64 {
            0
        }
        fn defers(&self, _: &()) -> bool {
            true
        }
        fn read(&self, _: &(), _: u64, _: u64) -> Result<Vec<Message>, LogError> {
            Ok(Vec::new())
        }
        fn first_seq(&self, _: &()) -> Result<u64, LogError> {
            Ok(1)
        }
    }

    /// A log holding `first..=head` of one group, or, with `hole`, one that skips a seq
    /// retention did not delete (it answers reads from `first` but says nothing is gone).
    struct Retained {
        first: u64,
        head: u64,
        hole: bool,
    }
    impl GroupLog<()> for Retained {
        fn head(&self, _: &()) -> u64 {
            self.head
        }
        fn defers(&self, _: &()) -> bool {
            false
        }
        fn read(&self, _: &(), after: u64, upto: u64) -> Result<Vec<Message>, LogError> {
            // As the store's `read_after`: from the first retained seq above `after`.
            let from = (after + 1).max(self.first);
            Ok((from..=upto.min(self.head)).map(message).collect())
        }
        fn first_seq(&self, _: &()) -> Result<u64, LogError> {
            Ok(if self.hole { 1 } else { self.first })
        }
    }

    fn message(seq: u64) -> Message {
        Message {
            group: "g".into(),
            seq,
            sender: "ann".into(),
            client_msg_id: format!("m{seq}"),
            sent_at_ms: 0,
            body: Bytes::new(),
            lane: switchboard_core::Lane::Normal,
        }
    }

    /// `Resume` and `Deliver` frames as (after_seq or seq, is_resume).
    fn frames(out: &[Bytes]) -> Vec<(u64, bool)> {
        let limits = wire::DecodeLimits::default();
        out.iter()
            .map(
                |f| match wire::decode_server(&f[wire::LEN_PREFIX..], &limits) {
                    Ok(ServerFrame::Resume { after_seq, .. }) => (after_seq, true),
                    Ok(ServerFrame::Deliver(m)) => (m.seq, false),
                    other => panic!("unexpected frame: {other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn a_subscription_behind_deleted_messages_resumes_at_the_first_retained_one() {
        let g = GroupId::new("g").unwrap();
        let log = Retained {
            first: 6,
            head: 8,
            hole: false,
        };
        let mut p = SessionPlanner::new();
        p.subscribe(g, (), 2);
        let (mut out, mut stats) = (Vec::new(), PlanStats::default());
        let more = p.catch_up(&log, &mut out, &mut stats).unwrap();
        assert!(!more);
        assert_eq!(
            frames(&out),
            vec![(5, true), (6, false), (7, false), (8, false)]
        );
        assert_eq!((stats.expired, stats.from_log), (1, 3));
    }

    #[test]
    fn a_live_message_after_deleted_ones_starts_the_subscription_past_them() {
        let g = GroupId::new("g").unwrap();
        let log = Retained {
            first: 4,
            head: 4,
            hole: false,
        };
        let mut p = SessionPlanner::new();
        p.subscribe(g.clone(), (), 0);
        let (mut out, mut stats) = (Vec::new(), PlanStats::default());
        let item = PlanItem::Deliver {
            group: g,
            seq: 4,
            frame: deliver_frame(message(4)),
        };
        // (0, 3] is gone: the bounded fill up to 3 reads nothing, so catch-up takes over.
        assert_eq!(
            p.plan(item, 0, &log, &mut out, &mut stats).unwrap(),
            Planned::NeedsCatchUp
        );
        let _ = p.catch_up(&log, &mut out, &mut stats).unwrap();
        assert_eq!(frames(&out), vec![(3, true), (4, false)]);
    }

    #[test]
    fn a_skipped_seq_retention_did_not_delete_is_a_hole() {
        let g = GroupId::new("g").unwrap();
        let log = Retained {
            first: 6,
            head: 8,
            hole: true,
        };
        let mut p = SessionPlanner::new();
        p.subscribe(g, (), 2);
        let (mut out, mut stats) = (Vec::new(), PlanStats::default());
        let err = p.catch_up(&log, &mut out, &mut stats).unwrap_err();
        assert!(
            matches!(
                err,
                LogError::Hole {
                    expected: 3,
                    found: 6,
                    ..
                }
            ),
            "{err}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn messages_deleted_after_the_resume_end_the_subscription() {
        // The connection has 1 and its Resume; retention then deleted 2..=5 unsent. A second
        // Resume could overtake 1 on another stream, so the session ends instead and its
        // reconnect starts past the gap.
        let g = GroupId::new("g").unwrap();
        let mut p = SessionPlanner::new();
        p.subscribe(g.clone(), (), 0);
        let (mut out, mut stats) = (Vec::new(), PlanStats::default());
        let early = Retained {
            first: 1,
            head: 1,
            hole: false,
        };
        let _ = p.catch_up(&early, &mut out, &mut stats).unwrap();
        assert_eq!(frames(&out), vec![(0, true), (1, false)]);
        let later = Retained {
            first: 6,
            head: 7,
            hole: false,
        };
        let err = p.catch_up(&later, &mut out, &mut stats).unwrap_err();
        assert!(
            matches!(
                err,
                LogError::Hole {
                    expected: 2,
                    found: 6,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(p.sent(&g), Some(1));
    }

    fn nudged(out: &[Bytes]) -> Vec<u64> {
        let limits = wire::DecodeLimits::default();
        out.iter()
            .map(
                |f| match wire::decode_server(&f[wire::LEN_PREFIX..], &limits) {
                    Ok(ServerFrame::Nudge { head_seq, .. }) => head_seq,
                    other => panic!("not a nudge: {other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn a_burst_of_nudges_ends_with_one_naming_its_last_message() {
        let g = GroupId::new("g").unwrap();
        let mut p = SessionPlanner::new();
        p.subscribe(g.clone(), (), 0);
        let (mut out, mut stats) = (Vec::new(), PlanStats::default());
        for (seq, at) in [(1, 1_000), (2, 1_100), (3, 1_200)] {
            let item = PlanItem::Nudge {
                group: g.clone(),
                seq,
            };
            let _ = p.plan(item, at, &NoLog, &mut out, &mut stats).unwrap();
        }
        assert_eq!(
            nudged(&out),
            vec![1],
            "the leading edge only, within the interval"
        );
        assert_eq!(p.next_nudge_at(), Some(1_000 + NUDGE_INTERVAL_MS));
        p.poll_nudges(1_999, &mut out, &mut stats);
        assert_eq!(nudged(&out), vec![1], "not due yet");
        p.poll_nudges(2_000, &mut out, &mut stats);
        assert_eq!(
            nudged(&out),
            vec![1, 3],
            "the trailing edge names the newest"
        );
        assert_eq!(p.next_nudge_at(), None);
        assert_eq!(stats.nudges, 2);
    }

    #[test]
    fn a_held_nudge_is_dropped_once_the_messages_were_sent() {
        let g = GroupId::new("g").unwrap();
        let mut p = SessionPlanner::new();
        p.subscribe(g.clone(), (), 0);
        let (mut out, mut stats) = (Vec::new(), PlanStats::default());
        for (seq, at) in [(1, 1_000), (2, 1_100)] {
            let item = PlanItem::Nudge {
                group: g.clone(),
                seq,
            };
            let _ = p.plan(item, at, &NoLog, &mut out, &mut stats).unwrap();
        }
        // The session came to the foreground and got both messages live.
        for seq in 1..=2 {
            let frame = Bytes::from_static(b"deliver");
            let item = PlanItem::Deliver {
                group: g.clone(),
                seq,
                frame,
            };
            let _ = p.plan(item, 1_200, &NoLog, &mut out, &mut stats).unwrap();
        }
        assert_eq!(p.next_nudge_at(), None, "nothing new to say");
        let before = out.len();
        p.poll_nudges(5_000, &mut out, &mut stats);
        assert_eq!(out.len(), before);
    }
}
