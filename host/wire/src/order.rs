//! Putting a connection's pushes back into per-group order (protocol §9), sans IO.
//!
//! The node spreads a connection's deliveries over several push streams (one per lane), so
//! a group's messages may arrive out of order; each subscription starts with `Resume { group,
//! after_seq }` on the stream of its first delivery. [`PushOrder`] takes frames as they
//! arrive from any stream and hands them on with every group's deliveries in `seq` order
//! from `after_seq + 1`, holding one that overtook its predecessor until that arrives.
//! Used by tools and tests that speak the protocol directly; the client SDK has its own
//! tracker that also dedupes across reconnects.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::ServerFrame;

/// What the node promised and did not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("delivery {group}/{seq} at or below the next expected {next}")]
    Duplicate { group: String, seq: u64, next: u64 },
    #[error("delivery {group}/{seq} arrived twice while held")]
    HeldTwice { group: String, seq: u64 },
    #[error("more than {0} deliveries held")]
    TooManyHeld(usize),
}

/// See the module docs.
#[derive(Debug)]
pub struct PushOrder {
    next: HashMap<String, u64>,
    held: HashMap<String, BTreeMap<u64, ServerFrame>>,
    held_count: usize,
    max_held: usize,
    ready: VecDeque<ServerFrame>,
    /// Deliveries that arrived before an earlier message of their group.
    pub overtaken: u64,
    /// Every `Resume` seen, in arrival order.
    pub resumes: Vec<(String, u64)>,
}

impl PushOrder {
    /// Holds at most `max_held` out-of-order deliveries.
    pub fn new(max_held: usize) -> Self {
        Self {
            next: HashMap::new(),
            held: HashMap::new(),
            held_count: 0,
            max_held,
            ready: VecDeque::new(),
            overtaken: 0,
            resumes: Vec::new(),
        }
    }

    /// Takes one frame as it arrived; what may be handed on goes to the ready queue.
    /// `Resume` frames are consumed (and recorded in `resumes`).
    pub fn arrive(&mut self, f: ServerFrame) -> Result<(), OrderError> {
        match f {
            ServerFrame::Resume { group, after_seq } => {
                self.resumes.push((group.clone(), after_seq));
                self.next.insert(group.clone(), after_seq + 1);
                if let Some(held) = self.held.get_mut(&group) {
                    let before = held.len();
                    held.retain(|&seq, _| seq > after_seq);
                    self.held_count -= before - held.len();
                }
                self.release(&group);
            }
            ServerFrame::Deliver(m) => match self.next.get(&m.group).copied() {
                Some(next) if m.seq == next => {
                    let group = m.group.clone();
                    self.ready.push_back(ServerFrame::Deliver(m));
                    self.next.insert(group.clone(), next + 1);
                    self.release(&group);
                }
                Some(next) if m.seq < next => {
                    return Err(OrderError::Duplicate {
                        group: m.group,
                        seq: m.seq,
                        next,
                    })
                }
                known => {
                    if known.is_some() {
                        self.overtaken += 1;
                    }
                    if self.held_count >= self.max_held {
                        return Err(OrderError::TooManyHeld(self.max_held));
                    }
                    let (group, seq) = (m.group.clone(), m.seq);
                    let slot = self.held.entry(group.clone()).or_default();
                    if slot.insert(seq, ServerFrame::Deliver(m)).is_some() {
                        return Err(OrderError::HeldTwice { group, seq });
                    }
                    self.held_count += 1;
                }
            },
            other => self.ready.push_back(other),
        }
        Ok(())
    }

    fn release(&mut self, group: &str) {
        let (Some(next), Some(held)) = (self.next.get_mut(group), self.held.get_mut(group)) else {
            return;
        };
        while let Some(f) = held.remove(next) {
            self.ready.push_back(f);
            self.held_count -= 1;
            *next += 1;
        }
    }

    /// The next frame in order, if one is ready.
    pub fn pop(&mut self) -> Option<ServerFrame> {
        self.ready.pop_front()
    }

    /// Deliveries held now.
    pub fn held(&self) -> usize {
        self.held_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn d(group: &str, seq: u64) -> ServerFrame {
        ServerFrame::Deliver(Message {
            group: group.into(),
            seq,
            sender: "s".into(),
            client_msg_id: "m".into(),
            sent_at_ms: 0,
            body: Default::default(),
            lane: Default::default(),
        })
    }

    fn r(group: &str, after_seq: u64) -> ServerFrame {
        ServerFrame::Resume {
            group: group.into(),
            after_seq,
        }
    }

    fn drain(o: &mut PushOrder) -> Vec<String> {
        std::iter::from_fn(|| o.pop())
            .map(|f| match f {
                ServerFrame::Deliver(m) => format!("{}/{}", m.group, m.seq),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn overtaking_deliveries_wait_for_their_predecessors() {
        let mut o = PushOrder::new(16);
        for f in [
            d("a", 6),
            r("a", 4),
            d("b", 1),
            d("a", 5),
            r("b", 0),
            d("a", 7),
        ] {
            o.arrive(f).unwrap();
        }
        assert_eq!(drain(&mut o), ["a/5", "a/6", "b/1", "a/7"]);
        assert_eq!(o.held(), 0);
        assert_eq!(o.overtaken, 0, "a/6 came before a's Resume, not after");
        o.arrive(d("a", 9)).unwrap();
        assert_eq!(o.overtaken, 1);
        assert_eq!(o.resumes, [("a".to_string(), 4), ("b".to_string(), 0)]);
    }

    #[test]
    fn broken_promises_are_errors() {
        let mut o = PushOrder::new(1);
        o.arrive(r("a", 0)).unwrap();
        o.arrive(d("a", 1)).unwrap();
        assert!(matches!(
            o.arrive(d("a", 1)),
            Err(OrderError::Duplicate { .. })
        ));
        o.arrive(d("a", 3)).unwrap();
        assert!(matches!(
            o.arrive(d("a", 4)),
            Err(OrderError::TooManyHeld(1))
        ));
        let mut o = PushOrder::new(4);
        o.arrive(d("a", 3)).unwrap();
        assert!(matches!(
            o.arrive(d("a", 3)),
            Err(OrderError::HeldTwice { .. })
        ));
    }

    #[test]
    fn other_frames_pass_through_in_arrival_order() {
        let mut o = PushOrder::new(4);
        o.arrive(ServerFrame::Flags { flags: vec![] }).unwrap();
        o.arrive(d("a", 1)).unwrap();
        o.arrive(ServerFrame::Pong { request_id: 1 }).unwrap();
        o.arrive(r("a", 0)).unwrap();
        assert_eq!(
            drain(&mut o),
            ["Flags { flags: [] }", "Pong { request_id: 1 }", "a/1"]
        );
    }
}
