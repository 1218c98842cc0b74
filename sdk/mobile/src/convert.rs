//! The client's values as FFI records and enums.

use switchboard_client::{Event, PresenceState};

use crate::{duration_ms, SwitchboardError};

/// A group message. (Not named `Message`: Kotlin would confuse it with the event variant.)
#[derive(Debug, Clone, uniffi::Record)]
pub struct GroupMessage {
    pub group: String,
    /// Per-group sequence number: messages of a group arrive in increasing seq, each once.
    pub seq: u64,
    pub sender: String,
    pub client_msg_id: String,
    /// The node's clock when it accepted the message (ms since the Unix epoch).
    pub sent_at_ms: u64,
    pub body: Vec<u8>,
}

impl From<switchboard_client::Message> for GroupMessage {
    fn from(m: switchboard_client::Message) -> Self {
        Self {
            group: m.group,
            seq: m.seq,
            sender: m.sender,
            client_msg_id: m.client_msg_id,
            sent_at_ms: m.sent_at_ms,
            body: m.body.to_vec(),
        }
    }
}

/// "I have everything of `group` up to `seq`."
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Cursor {
    pub group: String,
    pub seq: u64,
}

/// A group the user belongs to and its newest seq.
#[derive(Debug, Clone, uniffi::Record)]
pub struct GroupHead {
    pub group: String,
    pub head_seq: u64,
}

/// One feature flag of the user.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Flag {
    pub name: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

impl From<ReceiptKind> for switchboard_client::ReceiptKind {
    fn from(k: ReceiptKind) -> Self {
        match k {
            ReceiptKind::Delivered => Self::Delivered,
            ReceiptKind::Read => Self::Read,
        }
    }
}

impl From<switchboard_client::ReceiptKind> for ReceiptKind {
    fn from(k: switchboard_client::ReceiptKind) -> Self {
        match k {
            switchboard_client::ReceiptKind::Delivered => Self::Delivered,
            switchboard_client::ReceiptKind::Read => Self::Read,
        }
    }
}

/// What happened; see `switchboard_client::Event` for the ordering guarantees.
#[derive(Debug, Clone, uniffi::Enum)]
pub enum ClientEvent {
    /// A session started (first connect or reconnect); catch-up messages follow.
    Connected {
        session_id: u64,
        tenant: String,
        user: String,
        groups: Vec<GroupHead>,
    },
    /// A message, per group in seq order, each once (across reconnects too).
    Message { message: GroupMessage },
    /// Someone's receipt for one of your messages.
    Receipt {
        group: String,
        seq: u64,
        user: String,
        kind: ReceiptKind,
    },
    /// Aggregated receipts of one of your messages.
    ReceiptSummary {
        group: String,
        seq: u64,
        delivered: u32,
        read: u32,
        members: u32,
    },
    /// The group has messages up to `head_seq` not sent to this background client.
    Nudge { group: String, head_seq: u64 },
    /// A co-member's presence; `online` false (and `foreground` false) once its last
    /// connection closed.
    Presence {
        user: String,
        foreground: bool,
        online: bool,
    },
    /// The user's complete flag set, replacing the previous one.
    Flags { flags: Vec<Flag> },
    /// The connection was lost (or paused); reconnecting unless `Closed` follows.
    Disconnected { reason: String },
    /// Reconnect attempt `attempt` starts in `delay_ms`.
    Reconnecting { attempt: u32, delay_ms: u64 },
    /// The node acknowledged a send from the outbox.
    OutboxSent {
        group: String,
        client_msg_id: String,
        seq: u64,
        duplicate: bool,
    },
    /// The node refused a send from the outbox for good; it was removed.
    OutboxFailed {
        group: String,
        client_msg_id: String,
        reason: String,
    },
    /// The client stopped: `reason` is None after `close()`, else why (token refused,
    /// reconnect attempts used up); `code` is the node's protocol code when it gave one.
    Closed {
        reason: Option<String>,
        code: Option<u16>,
    },
}

/// The FFI event for a client event; `None` for kinds this crate does not know yet.
pub(crate) fn event(e: Event) -> Option<ClientEvent> {
    Some(match e {
        Event::Connected {
            session_id,
            tenant,
            user,
            groups,
        } => ClientEvent::Connected {
            session_id,
            tenant,
            user,
            groups: groups
                .into_iter()
                .map(|(group, head_seq)| GroupHead { group, head_seq })
                .collect(),
        },
        Event::Message(m) => ClientEvent::Message { message: m.into() },
        Event::Receipt {
            group,
            seq,
            user,
            kind,
        } => ClientEvent::Receipt {
            group,
            seq,
            user,
            kind: kind.into(),
        },
        Event::ReceiptSummary {
            group,
            seq,
            delivered,
            read,
            members,
        } => ClientEvent::ReceiptSummary {
            group,
            seq,
            delivered,
            read,
            members,
        },
        Event::Nudge { group, head_seq } => ClientEvent::Nudge { group, head_seq },
        Event::Presence {
            user,
            state,
            online,
        } => ClientEvent::Presence {
            user,
            foreground: state == PresenceState::Foreground,
            online,
        },
        Event::Flags { flags } => ClientEvent::Flags {
            flags: flags
                .into_iter()
                .map(|(name, enabled)| Flag { name, enabled })
                .collect(),
        },
        Event::Disconnected { reason } => ClientEvent::Disconnected { reason },
        Event::Reconnecting { attempt, delay } => ClientEvent::Reconnecting {
            attempt,
            delay_ms: duration_ms(delay),
        },
        Event::OutboxSent {
            group,
            client_msg_id,
            seq,
            duplicate,
        } => ClientEvent::OutboxSent {
            group,
            client_msg_id,
            seq,
            duplicate,
        },
        Event::OutboxFailed {
            group,
            client_msg_id,
            error,
        } => ClientEvent::OutboxFailed {
            group,
            client_msg_id,
            reason: SwitchboardError::from(error).to_string(),
        },
        Event::Closed { error } => ClientEvent::Closed {
            code: error.as_ref().and_then(|e| match e {
                switchboard_client::ClientError::Server { code, .. } => Some(*code),
                _ => None,
            }),
            reason: error.map(|e| e.to_string()),
        },
        _ => return None,
    })
}
