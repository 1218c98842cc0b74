//! What a commit batch's flush means for each of its pending sends. The driver (edge's
//! committer, the simulation's) appends sends, flushes the store once for the batch, and
//! asks [`outcomes`] what each send becomes; it then publishes, reveals, acks or refuses as
//! told. Nothing is acked or made visible before the flush that made it durable.

/// What one pending send of a flushed batch becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new message, durable now: published (the active-first phases, which advance the
    /// group's head), then acked with its seq.
    Publish,
    /// A message without a frame to deliver live, durable now — a resend of one whose
    /// first flush failed, or (cluster mode) one appended past the group's next seq:
    /// revealed (the head moves past it; subscribers catch it up from the log), then acked
    /// with its seq.
    Reveal,
    /// The flush failed: not acked and not visible. Some or all of the batch may be on
    /// disk (and be found by a resend's dedupe), so the sender learns the outcome is
    /// unknown and resends with the same client message id — never "not stored".
    Unknown,
}

impl Outcome {
    /// Whether the sender gets its ack (with the message's seq) now.
    pub fn acks(self) -> bool {
        match self {
            Outcome::Publish | Outcome::Reveal => true,
            Outcome::Unknown => false,
        }
    }
}

/// When to retry a send whose outcome is unknown (ms).
pub const OUTCOME_UNKNOWN_RETRY_MS: u32 = 1_000;

/// Each pending send of a batch, in queue order, with what it becomes after the batch's
/// flush (`flushed`: whether it succeeded). `live`: the send carries a frame to deliver
/// live (a new message in order), else it is revealed.
pub fn outcomes<C>(
    flushed: bool,
    batch: impl IntoIterator<Item = C>,
    live: impl Fn(&C) -> bool,
) -> impl Iterator<Item = (C, Outcome)> {
    batch.into_iter().map(move |c| {
        let outcome = match (flushed, live(&c)) {
            (false, _) => Outcome::Unknown,
            (true, true) => Outcome::Publish,
            (true, false) => Outcome::Reveal,
        };
        (c, outcome)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successful_flush_publishes_new_messages_and_reveals_resends_in_queue_order() {
        // (seq, new?)
        let batch = [(1, true), (2, false), (3, true)];
        let got: Vec<_> = outcomes(true, batch, |c| c.1)
            .map(|((seq, _), o)| (seq, o))
            .collect();
        assert_eq!(
            got,
            [
                (1, Outcome::Publish),
                (2, Outcome::Reveal),
                (3, Outcome::Publish)
            ]
        );
        assert!(got.iter().all(|(_, o)| o.acks()));
    }

    #[test]
    fn a_failed_flush_acks_nothing_and_reveals_nothing() {
        let batch = [(1, true), (2, false)];
        let got: Vec<_> = outcomes(false, batch, |c| c.1).map(|(_, o)| o).collect();
        assert_eq!(got, [Outcome::Unknown, Outcome::Unknown]);
        assert!(!Outcome::Unknown.acks());
    }
}
