//! The writer's side of fencing, without IO: what a writer knows of a group's tail, the
//! append it plans from that (the next group seq, and the predecessor it names), and what it
//! learns from the server's answer. [`crate::JetStreamLog`] drives it; the tests drive it
//! against a model of JetStream's expected-last-subject-sequence check, with two writers
//! interleaved in every possible order.

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

#[cfg(test)]
mod tests {
    use super::*;

    /// JetStream as far as fencing goes: one subject, a stream seq counter shared with
    /// other subjects (`other` appends elsewhere in the shard), and the check.
    #[derive(Default)]
    struct Server {
        next_stream_seq: u64,
        /// (stream seq, group seq, writer) of the subject's messages, in order.
        subject: Vec<(u64, u64, usize)>,
    }

    impl Server {
        fn last(&self) -> u64 {
            self.subject.last().map_or(0, |m| m.0)
        }
        fn publish(&mut self, p: Planned, writer: usize) -> Result<u64, u64> {
            if p.predecessor != self.last() {
                return Err(self.last()); // "wrong last sequence"
            }
            self.next_stream_seq += 1;
            self.subject.push((self.next_stream_seq, p.seq, writer));
            Ok(self.next_stream_seq)
        }
        fn other(&mut self) {
            self.next_stream_seq += 1;
        }
        /// What a writer that (re)loads the group reads back.
        fn tail(&self) -> Tail {
            self.subject.last().map_or(Tail::default(), |m| Tail {
                head: m.1,
                last_stream_seq: m.0,
            })
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// Writer appends (if it is not fenced).
        Append(usize),
        /// Writer takes the shard again: reloads the tail, unfenced.
        Take(usize),
        /// Another group of the shard gets a message (moves stream seqs on).
        Other,
    }

    struct Writer {
        tail: Tail,
        fenced: bool,
        /// The server's subject length when this writer last loaded or stored.
        synced_at: usize,
    }

    /// Runs one interleaving and checks every fencing invariant after each step.
    fn run(steps: &[Step]) {
        let mut server = Server::default();
        let mut writers: Vec<Writer> = (0..2)
            .map(|_| Writer {
                tail: server.tail(),
                fenced: false,
                synced_at: 0,
            })
            .collect();
        for &step in steps {
            match step {
                Step::Other => server.other(),
                Step::Take(w) => {
                    writers[w] = Writer {
                        tail: server.tail(),
                        fenced: false,
                        synced_at: server.subject.len(),
                    }
                }
                Step::Append(w) if writers[w].fenced => {}
                Step::Append(w) => {
                    let planned = writers[w].tail.plan();
                    let someone_else_appended = server.subject.len() != writers[w].synced_at;
                    match server.publish(planned, w) {
                        Ok(stream_seq) => {
                            assert!(
                                !someone_else_appended,
                                "{steps:?}: writer {w} appended over another's message"
                            );
                            writers[w].tail.stored(planned, stream_seq);
                            writers[w].synced_at = server.subject.len();
                        }
                        Err(_) => {
                            assert!(
                                someone_else_appended,
                                "{steps:?}: writer {w} was fenced with nobody else appending"
                            );
                            writers[w].fenced = true;
                        }
                    }
                }
            }
            // The log: group seqs 1..=n, one message each, in stream order.
            let seqs: Vec<u64> = server.subject.iter().map(|m| m.1).collect();
            assert_eq!(
                seqs,
                (1..=seqs.len() as u64).collect::<Vec<_>>(),
                "{steps:?}"
            );
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
    fn two_writers_interleaved_in_every_order_never_both_extend_one_tail() {
        let alphabet = [
            Step::Append(0),
            Step::Append(1),
            Step::Take(0),
            Step::Take(1),
            Step::Other,
        ];
        let mut count = 0;
        for len in 0..=7 {
            all(len, &alphabet, &mut Vec::new(), &mut count);
        }
        // 5^0 + … + 5^7 interleavings.
        assert_eq!(count, 97_656);
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
}
