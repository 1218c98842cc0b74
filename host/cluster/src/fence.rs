//! The writer's side of fencing, without IO: what a writer knows of a group's tail and of
//! its hold on a shard, the append it plans from them (the next group seq, the group
//! predecessor and the shard's last stream seq it names), and what it learns from the
//! server's answer. [`crate::JetStreamLog`] drives it; the tests drive it against a model of
//! JetStream's two expected-sequence checks (stream-wide and per subject), with two writers
//! taking the shard, appending to two of its groups and losing acknowledgements, interleaved
//! in every possible order.

/// A writer's view of one group's tail.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    /// Newest group seq, 0 for none.
    pub(crate) head: u64,
    /// Stream seq of the newest message on the group's subject, 0 for none: the predecessor
    /// the next append names.
    pub(crate) last_stream_seq: u64,
}

/// An append as planned from a [`Tail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    /// The group seq the message carries.
    pub(crate) seq: u64,
    /// `Nats-Expected-Last-Subject-Sequence`.
    pub(crate) predecessor: u64,
}

impl Tail {
    pub(crate) fn plan(&self) -> Planned {
        Planned {
            seq: self.head + 1,
            predecessor: self.last_stream_seq,
        }
    }

    /// The server stored `planned` at `stream_seq`.
    pub(crate) fn stored(&mut self, planned: Planned, stream_seq: u64) {
        self.head = planned.seq;
        self.last_stream_seq = stream_seq;
    }
}

/// A writer's hold on a shard: the chain of its own writes to the shard's stream since the
/// fence marker it wrote when it took the shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Never taken, or fenced out: appends are refused without asking the server.
    #[default]
    Released,
    /// Taken: `marker` is the stream seq of this writer's fence marker, `last` the stream
    /// seq of its newest write to the stream (the marker, or an append after it), which the
    /// next append names as the stream's last sequence.
    Chained { marker: u64, last: u64 },
    /// An append's outcome is unknown, so the chain's end is: the next append first takes
    /// the shard again on condition that `marker` is still the newest marker.
    Unsynced { marker: u64 },
}

/// What a writer does next for an append to a shard, given its [`Hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Refuse without IO: the writer does not hold the shard.
    Refuse,
    /// Write a marker naming `marker` as the marker subject's last, then reload and append.
    Retake { marker: u64 },
    /// Append naming `last` as the stream's last sequence.
    Append { last: u64 },
}

impl Hold {
    pub(crate) fn next(&self) -> Next {
        match *self {
            Hold::Released => Next::Refuse,
            Hold::Unsynced { marker } => Next::Retake { marker },
            Hold::Chained { last, .. } => Next::Append { last },
        }
    }
    pub(crate) fn holds(&self) -> bool {
        !matches!(self, Hold::Released)
    }
    /// This writer's marker was stored at `marker`.
    pub(crate) fn taken(&mut self, marker: u64) {
        *self = Hold::Chained {
            marker,
            last: marker,
        };
    }
    /// This writer's append was stored at `stream_seq`.
    pub(crate) fn stored(&mut self, stream_seq: u64) {
        if let Hold::Chained { last, .. } = self {
            *last = stream_seq;
        }
    }
    /// An append's acknowledgement was lost: it may or may not be in the stream.
    pub(crate) fn unknown(&mut self) {
        if let Hold::Chained { marker, .. } = *self {
            *self = Hold::Unsynced { marker };
        }
    }
    /// The server refused a check: another writer wrote to the shard (or this writer's view
    /// was stale); stop until the shard is taken again.
    pub(crate) fn fenced(&mut self) {
        *self = Hold::Released;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUPS: usize = 2;
    const WRITERS: usize = 2;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Subject {
        Group(usize),
        Marker,
    }

    /// JetStream as far as fencing goes: one shard's stream with two group subjects and
    /// the marker subject, and the two checks an append carries (`Nats-Expected-Last-
    /// Sequence`, stream-wide; `Nats-Expected-Last-Subject-Sequence`, per subject).
    #[derive(Default)]
    struct Server {
        /// (subject, group seq, writer) in stream order; stream seq = index + 1.
        stream: Vec<(Subject, u64, usize)>,
    }

    impl Server {
        fn last_of(&self, subject: Subject) -> u64 {
            self.stream
                .iter()
                .rposition(|m| m.0 == subject)
                .map_or(0, |i| i as u64 + 1)
        }
        fn publish(
            &mut self,
            subject: Subject,
            seq: u64,
            writer: usize,
            expected_last: Option<u64>,
            expected_subject_last: Option<u64>,
        ) -> Result<u64, ()> {
            if expected_last.is_some_and(|l| l != self.stream.len() as u64)
                || expected_subject_last.is_some_and(|l| l != self.last_of(subject))
            {
                return Err(()); // "wrong last sequence": nothing stored
            }
            self.stream.push((subject, seq, writer));
            Ok(self.stream.len() as u64)
        }
        /// What a writer that (re)loads a group reads back.
        fn tail(&self, g: usize) -> Tail {
            let last = self.last_of(Subject::Group(g));
            Tail {
                head: if last == 0 {
                    0
                } else {
                    self.stream[last as usize - 1].1
                },
                last_stream_seq: last,
            }
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// Writer appends to a group (the log's append, as `JetStreamLog` does it).
        Append(usize, usize),
        /// Like `Append`, but the acknowledgement is lost: the server applies its checks,
        /// the writer learns nothing.
        Unacked(usize, usize),
        /// Writer takes the shard (the lease holder's step): an unconditional marker.
        Take(usize),
    }

    struct Writer {
        hold: Hold,
        tails: [Option<Tail>; GROUPS],
    }

    impl Writer {
        /// One append of group `g`, as `JetStreamLog::append` makes it; `Ok(true)` when
        /// the server stored it (known or not).
        fn append(&mut self, server: &mut Server, w: usize, g: usize, acked: bool) -> bool {
            let tail = *self.tails[g].get_or_insert_with(|| server.tail(g));
            let last = match self.hold.next() {
                Next::Refuse => return false,
                Next::Retake { marker } => {
                    match server.publish(Subject::Marker, 0, w, None, Some(marker)) {
                        Ok(m) => {
                            self.hold.taken(m);
                            self.tails = [None; GROUPS];
                            self.tails[g] = Some(server.tail(g));
                            m
                        }
                        Err(()) => {
                            self.hold.fenced();
                            return false;
                        }
                    }
                }
                Next::Append { last } => last,
            };
            let tail = self.tails[g].unwrap_or(tail);
            let planned = tail.plan();
            let result = server.publish(
                Subject::Group(g),
                planned.seq,
                w,
                Some(last),
                Some(planned.predecessor),
            );
            if !acked {
                self.hold.unknown();
                self.tails[g] = None;
                return result.is_ok();
            }
            match result {
                Ok(stream_seq) => {
                    self.hold.stored(stream_seq);
                    self.tails[g] = Some(Tail {
                        head: planned.seq,
                        last_stream_seq: stream_seq,
                    });
                    true
                }
                Err(()) => {
                    self.hold.fenced();
                    self.tails[g] = None;
                    false
                }
            }
        }
    }

    /// Runs one interleaving and checks every fencing invariant after each step.
    fn run(steps: &[Step]) {
        let mut server = Server::default();
        let mut writers: Vec<Writer> = (0..WRITERS)
            .map(|_| Writer {
                hold: Hold::default(),
                tails: [None; GROUPS],
            })
            .collect();
        // The newest taker: the only writer whose appends may be stored.
        let mut owner: Option<usize> = None;
        for &step in steps {
            match step {
                Step::Take(w) => {
                    let m = server.publish(Subject::Marker, 0, w, None, None).unwrap();
                    writers[w].hold.taken(m);
                    writers[w].tails = [None; GROUPS];
                    owner = Some(w);
                }
                Step::Append(w, g) | Step::Unacked(w, g) => {
                    let acked = matches!(step, Step::Append(..));
                    let holds_alone = owner == Some(w);
                    let stored = writers[w].append(&mut server, w, g, acked);
                    // Shard-wide fence: only the newest taker's appends are stored, to
                    // any group, touched since the takeover or not.
                    assert!(
                        !stored || holds_alone,
                        "{steps:?}: writer {w} appended to group {g} after another took the shard"
                    );
                    // And the newest taker is never refused (an unknown outcome is
                    // repaired by its conditional retake).
                    assert!(
                        stored || !holds_alone || !acked,
                        "{steps:?}: the owner {w} was refused"
                    );
                }
            }
            // Each group's log: seqs 1..=n, one message each, in stream order.
            for g in 0..GROUPS {
                let seqs: Vec<u64> = server
                    .stream
                    .iter()
                    .filter(|m| m.0 == Subject::Group(g))
                    .map(|m| m.1)
                    .collect();
                assert_eq!(
                    seqs,
                    (1..=seqs.len() as u64).collect::<Vec<_>>(),
                    "{steps:?}"
                );
            }
        }
    }

    /// Every sequence of `len` steps over the alphabet, exhaustively.
    fn all(len: usize, alphabet: &[Step], prefix: &mut Vec<Step>, count: &mut usize) {
        if prefix.len() == len {
            run(prefix);
            *count += 1;
            return;
        }
        for &s in alphabet {
            prefix.push(s);
            all(len, alphabet, prefix, count);
            prefix.pop();
        }
    }

    #[test]
    fn two_writers_interleaved_in_every_order_never_both_write_to_one_shard() {
        let mut alphabet = vec![Step::Take(0), Step::Take(1)];
        for w in 0..WRITERS {
            for g in 0..GROUPS {
                alphabet.push(Step::Append(w, g));
                alphabet.push(Step::Unacked(w, g));
            }
        }
        let mut count = 0;
        for len in 0..=6 {
            all(len, &alphabet, &mut Vec::new(), &mut count);
        }
        // 10^0 + … + 10^6 interleavings.
        assert_eq!(count, 1_111_111);
    }

    #[test]
    fn a_planned_append_names_the_tail_it_was_planned_from() {
        let mut tail = Tail::default();
        assert_eq!(
            tail.plan(),
            Planned {
                seq: 1,
                predecessor: 0
            }
        );
        tail.stored(tail.plan(), 17);
        assert_eq!(
            tail.plan(),
            Planned {
                seq: 2,
                predecessor: 17
            }
        );
    }

    #[test]
    fn a_hold_chains_its_own_writes_and_is_lost_by_a_refusal() {
        let mut hold = Hold::default();
        assert_eq!(hold.next(), Next::Refuse);
        hold.taken(5);
        assert_eq!(hold.next(), Next::Append { last: 5 });
        hold.stored(9);
        assert_eq!(hold.next(), Next::Append { last: 9 });
        hold.unknown();
        assert_eq!(hold.next(), Next::Retake { marker: 5 });
        hold.taken(12);
        assert_eq!(hold.next(), Next::Append { last: 12 });
        hold.fenced();
        assert!(!hold.holds());
        assert_eq!(hold.next(), Next::Refuse);
    }
}
