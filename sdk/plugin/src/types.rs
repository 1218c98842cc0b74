//! The world's types (generated from `wit/policy.wit`) and conveniences on them.

pub use crate::bindings::switchboard::policy::types::{
    Delivery, Flag, FlagContext, Lane, LoadInfo, LogLevel, MessageInfo, ReceiptAction, ReceiptInfo,
    ReceiptKind, Shedding, Verdict,
};

/// How many bytes of a reject reason the node keeps; [`Verdict::reject`] truncates to this.
pub const MAX_REJECT_REASON_BYTES: usize = 256;

/// How many leading bytes of the body the node passes in [`MessageInfo::body_prefix`].
pub const BODY_PREFIX_BYTES: usize = 64;

// Not derivable: the enum is generated.
#[allow(clippy::derivable_impls)]
impl Default for Lane {
    fn default() -> Self {
        Lane::Normal
    }
}

impl Default for Delivery {
    /// The normal lane, without offline notification.
    fn default() -> Self {
        Delivery {
            lane: Lane::Normal,
            notify_offline: false,
        }
    }
}

impl Verdict {
    /// Accept on `lane`, without asking the node to notify offline members.
    pub fn accept(lane: Lane) -> Self {
        Verdict::Accept(Delivery {
            lane,
            notify_offline: false,
        })
    }

    /// Accept on `lane`, and ask the node to emit a push-notification event for offline
    /// members.
    pub fn accept_and_notify(lane: Lane) -> Self {
        Verdict::Accept(Delivery {
            lane,
            notify_offline: true,
        })
    }

    /// Reject; the sender sees `reason`, truncated (at a character boundary) to
    /// [`MAX_REJECT_REASON_BYTES`], as the node would.
    pub fn reject(reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REJECT_REASON_BYTES {
            let mut end = MAX_REJECT_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Verdict::Reject(reason)
    }

    /// Whether this accepts the message.
    pub fn is_accept(&self) -> bool {
        matches!(self, Verdict::Accept(_))
    }

    /// Whether this rejects the message.
    pub fn is_reject(&self) -> bool {
        matches!(self, Verdict::Reject(_))
    }

    /// The delivery, if accepted.
    pub fn delivery(&self) -> Option<Delivery> {
        match self {
            Verdict::Accept(delivery) => Some(*delivery),
            Verdict::Reject(_) => None,
        }
    }

    /// The reason, if rejected.
    pub fn reject_reason(&self) -> Option<&str> {
        match self {
            Verdict::Accept(_) => None,
            Verdict::Reject(reason) => Some(reason),
        }
    }
}

impl Flag {
    /// A flag named `name`.
    pub fn new(name: impl Into<String>, enabled: bool) -> Self {
        Flag {
            name: name.into(),
            enabled,
        }
    }
}

impl Shedding {
    /// Shed nothing.
    pub const NONE: Shedding = Shedding {
        receipts: false,
        presence: false,
        background_delivery: false,
    };

    /// The built-in ladder, the node's default: from load level 1 shed presence, from 2 also
    /// receipts, from 3 also hold deliveries to background members.
    pub fn ladder(level: u8) -> Self {
        Shedding {
            presence: level >= 1,
            receipts: level >= 2,
            background_delivery: level >= 3,
        }
    }
}

impl Default for Shedding {
    /// Shed nothing.
    fn default() -> Self {
        Shedding::NONE
    }
}
