//! The names of the routing invariants the oracle checks (`oracle.rs`).

/// The routing invariants the simulation checks; a violation starts with `[name]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// An ack only after a flush that began after the append; a resend keeps its seq; an
    /// ack names the logged message.
    AckAfterDurable,
    /// The head clients see is exactly what was published or revealed, all of it durable.
    VisibleAfterDurable,
    /// No message reaches a device twice, and each is the logged one.
    ExactlyOnce,
    /// Each group's messages in order with no gap: once settled, every member has every
    /// message (gaps are filled from the log, overflows caught up, nothing held forever).
    InOrderNoGap,
    /// `Resume` before a subscription's first delivery, naming where it starts.
    ResumeFirst,
    /// Phase 1 reaches exactly the foreground, gated; phase 2 only the background; no copy
    /// of a batch is written while one of its foreground copies waits (unless the gate
    /// expired).
    ActiveFirst,
    /// At most one nudge per group and connection a second, never for what was sent.
    NudgeRate,
    /// A burst ends with a nudge naming its last message (held nudges are told).
    TrailingNudge,
    /// A nudge never moves the planner's position; catch-up skips deferred groups.
    DeferralNoGap,
    /// A group's fan-out holds exactly the connected sessions of its members.
    MembersAgree,
    /// A new member's subscription starts at the group's durable head and carries nothing
    /// at or below it.
    JoinFromHead,
    /// Nothing is written for a subscription after the leave that ended it.
    LeaveStops,
    /// The measured load level rises at once to a sample's pressure and drops one step
    /// after `CALM_SAMPLES` calm samples in a row, never otherwise.
    LoadLevel,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Self::AckAfterDurable => "ack after durability",
            Self::VisibleAfterDurable => "visible after durability",
            Self::ExactlyOnce => "exactly once",
            Self::InOrderNoGap => "in order, no gap",
            Self::ResumeFirst => "resume first",
            Self::ActiveFirst => "active first",
            Self::NudgeRate => "nudge rate limit",
            Self::TrailingNudge => "trailing nudge",
            Self::DeferralNoGap => "deferral never makes a gap",
            Self::MembersAgree => "membership and sessions agree",
            Self::JoinFromHead => "a new member starts at the head",
            Self::LeaveStops => "a leave stops delivery",
            Self::LoadLevel => "load level: up at once, down slowly",
        }
    }
}
