//! The devices: what arrives on their push streams, and what their app is handed. A device
//! tracks deliveries as the client SDK does (`sdk/client/src/tracker.rs`): per group a
//! cursor kept across reconnects, the connection's next expected seq (set by `Resume`), and
//! deliveries held until their predecessors arrive. The oracle checks every frame against
//! the subscription it was written under (see the crate docs), and every message the app
//! gets against the log.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use switchboard_store::Store;
use switchboard_wire::{self as wire, DecodeLimits, Message, ServerFrame};

use crate::invariant::Invariant;
use crate::Sim;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    Fast,
    Slow,
    /// Reads nothing until it reconnects.
    Dead,
}

pub(crate) struct Client {
    pub(crate) user: usize,
    pub(crate) session: Option<u64>,
    pub(crate) reader: Reader,
    /// Frames on the wire, per push stream, not yet read, each with the session's count of
    /// subscription changes when it was written.
    pub(crate) inbox: [VecDeque<(u64, Bytes)>; 4],
    pub(crate) tracker: Tracker,
    /// Sends not acknowledged yet: (group, client_msg_id, body).
    pub(crate) unacked: Vec<(usize, String, Bytes)>,
    pub(crate) next_id: u64,
}

#[derive(Debug, Default)]
struct Track {
    /// Highest seq handed to the app: the device's cursor, kept across reconnects.
    seen: Option<u64>,
    /// The next seq that may be handed on, on this connection (set by `Resume`).
    next: Option<u64>,
    held: BTreeMap<u64, Message>,
}

/// Per group delivery tracking of one device.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    groups: BTreeMap<usize, Track>,
}

enum Arrival {
    /// At or below what was handed on: dropped.
    Duplicate,
    /// Handed on, with any held successors.
    Ready(Vec<Message>),
    Held,
}

impl Tracker {
    /// The device's cursor of a group, if it ever had one.
    pub(crate) fn cursor(&self, g: usize) -> Option<u64> {
        self.groups.get(&g).and_then(|t| t.seen)
    }

    /// Whether deliveries of the group are held with no `Resume` to start from.
    pub(crate) fn unannounced(&self, g: usize) -> bool {
        self.groups
            .get(&g)
            .is_some_and(|t| t.next.is_none() && !t.held.is_empty())
    }

    /// A new connection: what the old one promised is gone; cursors stay.
    pub(crate) fn reconnect(&mut self) {
        for t in self.groups.values_mut() {
            t.next = None;
            t.held.clear();
        }
    }

    fn resume(&mut self, g: usize, after: u64) -> Vec<Message> {
        let t = self.groups.entry(g).or_default();
        let seen = t.seen.unwrap_or(after);
        if after > seen {
            t.seen = Some(after); // a new member's start: nothing before it is owed
        }
        // Never back on one connection: a late `Resume` of a subscription that ended (a
        // leave and a rejoin, their frames on different streams) must not reopen what the
        // newer one moved past. (The SDK's `DeliveryTracker::resume` lets it when the device
        // had no cursor of the group: its deliveries are then held until a reconnect.)
        let next = (after.max(seen) + 1).max(t.next.unwrap_or(0));
        t.next = Some(next);
        t.held.retain(|&seq, _| seq >= next);
        release(t)
    }

    fn arrive(&mut self, g: usize, m: Message) -> Arrival {
        let t = self.groups.entry(g).or_default();
        let below = t.seen.is_some_and(|s| m.seq <= s) || t.next.is_some_and(|n| m.seq < n);
        if below || t.held.contains_key(&m.seq) {
            return Arrival::Duplicate;
        }
        if t.next == Some(m.seq) {
            t.held.insert(m.seq, m);
            return Arrival::Ready(release(t));
        }
        t.held.insert(m.seq, m);
        Arrival::Held
    }
}

fn release(t: &mut Track) -> Vec<Message> {
    let mut out = Vec::new();
    let Some(mut next) = t.next else {
        return out;
    };
    while let Some(m) = t.held.remove(&next) {
        t.seen = Some(next);
        next += 1;
        out.push(m);
    }
    t.next = Some(next);
    out
}

impl Sim {
    /// A client reads what arrived: a few frames from streams in random order (streams
    /// interleave on the wire; within one, order holds).
    pub(crate) fn read(&mut self, c: usize) {
        let budget = match self.clients[c].reader {
            Reader::Dead => return,
            Reader::Slow => 1,
            Reader::Fast => 16,
        };
        self.report.ops += 1;
        for _ in 0..budget {
            let s = self.rng.below(4) as usize;
            let Some((gen, frame)) = self.clients[c].inbox[s].pop_front() else {
                continue;
            };
            self.take_frame(c, gen, &frame);
        }
    }

    pub(crate) fn take_frame(&mut self, c: usize, gen: u64, frame: &Bytes) {
        let decoded = wire::decode_server(&frame[wire::LEN_PREFIX..], &DecodeLimits::default());
        let f = match decoded {
            Ok(f) => f,
            Err(e) => {
                let what = format!("client {c}: undecodable push: {e}");
                return self.violation(Invariant::ExactlyOnce, what);
            }
        };
        let group = match &f {
            ServerFrame::Nudge { group, .. } | ServerFrame::Resume { group, .. } => group,
            ServerFrame::Deliver(m) => &m.group,
            _ => return,
        };
        let g = self.group_index(group);
        let span = self.clients[c]
            .session
            .and_then(|id| self.sessions.get(&id))
            .and_then(|s| s.spans.get(&g))
            .and_then(|spans| spans.iter().rev().find(|s| s.from_gen <= gen))
            .filter(|s| gen < s.to_gen)
            .cloned();
        let Some(span) = span else {
            let what = format!("client {c}: {f:?} written with no subscription to {group}");
            return self.violation(Invariant::LeaveStops, what);
        };
        let current = span.to_gen == u64::MAX;
        if !current {
            self.report.stale_frames += 1;
        }
        let start = if span.joined {
            Invariant::JoinFromHead
        } else {
            Invariant::ResumeFirst
        };
        match f {
            ServerFrame::Resume { after_seq, .. } => {
                if after_seq != span.after {
                    let what = format!(
                        "client {c}: Resume of g{g} after {after_seq}, its subscription \
                         starts at {}",
                        span.after
                    );
                    return self.violation(start, what);
                }
                for m in self.clients[c].tracker.resume(g, after_seq) {
                    self.app_receives(c, m);
                }
            }
            ServerFrame::Deliver(m) => {
                if m.seq <= span.after {
                    let what = format!(
                        "client {c}: g{g}/{} at or below its subscription's start {}",
                        m.seq, span.after
                    );
                    return self.violation(start, what);
                }
                if !current && m.seq > span.end_head {
                    let what = format!(
                        "client {c}: g{g}/{} committed after the leave (head {})",
                        m.seq, span.end_head
                    );
                    return self.violation(Invariant::LeaveStops, what);
                }
                let seq = m.seq;
                match self.clients[c].tracker.arrive(g, m) {
                    // An ended subscription's frames may come after the new one's Resume:
                    // the device drops them, as the SDK does.
                    Arrival::Duplicate if !current => {}
                    Arrival::Duplicate => {
                        let what = format!("client {c}: g{g}/{seq} delivered twice");
                        self.violation(Invariant::ExactlyOnce, what);
                    }
                    Arrival::Ready(ms) => {
                        for m in ms {
                            self.app_receives(c, m);
                        }
                    }
                    Arrival::Held => {}
                }
            }
            _ => {} // a nudge is a hint; checked where it is written
        }
    }

    fn group_index(&self, id: &str) -> usize {
        self.groups
            .iter()
            .position(|g| g.id.as_str() == id)
            .unwrap_or(usize::MAX)
    }

    /// What the app sees: each message the one the log holds at that seq (order and
    /// exactly-once are the tracker's, checked as frames arrive).
    fn app_receives(&mut self, c: usize, m: Message) {
        let g = self.group_index(&m.group);
        match self.store.message(&self.tenant, &self.groups[g].id, m.seq) {
            Ok(Some(stored))
                if stored.client_msg_id == m.client_msg_id && stored.body == m.body => {}
            other => {
                let what = format!(
                    "client {c}: {}/{} is not the logged message: {other:?}",
                    m.group, m.seq
                );
                return self.violation(Invariant::ExactlyOnce, what);
            }
        }
        self.report.delivered += 1;
    }
}
