//! The frames of `switchboard/1` as plain Rust values. `docs/protocol.md` is the spec; the
//! flatbuffers schema (`schema/switchboard.fbs`) is their encoding.
//!
//! Ids are carried as strings and validated by the node (an invalid id is a per-request
//! `InvalidArgument`, not a broken frame); only their length is bounded by the decoder (64
//! bytes, see `DecodeLimits`). A `request_id` is chosen by the client and echoed in the
//! response; 0 means "no request" in `Error`.

use bytes::Bytes;
use switchboard_core::{ErrorCode, Lane, PresenceState, ReceiptKind};

/// A group and a sequence number: "I have everything up to and including `seq`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCursor {
    pub group: String,
    pub seq: u64,
}

/// First frame of every connection, client to server. Its `Debug` never shows the token (a
/// bearer credential: whoever reads it from a log can connect as the user), only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    /// `sb1.…` client token signed by the tenant.
    pub token: String,
    /// Whether the app is in the foreground.
    pub presence: PresenceState,
    /// Where the client is in each group it knows of; the server resumes after these. Groups
    /// not listed resume from the server's stored cursor.
    pub cursors: Vec<GroupCursor>,
    /// Free-form client name/version, for logs. Keep it under 64 bytes; the decoder refuses
    /// more than `DecodeLimits::max_string_bytes`.
    pub client: String,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field(
                "token",
                &format_args!("<redacted, {} bytes>", self.token.len()),
            )
            .field("presence", &self.presence)
            .field("cursors", &self.cursors)
            .field("client", &self.client)
            .finish()
    }
}

/// A message of a group, as delivered and fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub group: String,
    pub seq: u64,
    pub sender: String,
    pub client_msg_id: String,
    /// When the node accepted it, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    pub body: Bytes,
    /// The lane the tenant's policy chose.
    pub lane: Lane,
}

/// A feature flag as evaluated for the connected user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub enabled: bool,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Hello(Hello),
    /// Join a group (open groups) / confirm membership (closed groups).
    Join {
        request_id: u64,
        group: String,
    },
    /// Leave a group.
    Leave {
        request_id: u64,
        group: String,
    },
    /// Send a message; answered by `Ack` once durable.
    Send {
        request_id: u64,
        group: String,
        /// Client-chosen id, unique per sender and group; resends reuse it. 1..=64 bytes.
        client_msg_id: String,
        body: Bytes,
    },
    /// Pull up to `limit` messages with `seq > after_seq`.
    Fetch {
        request_id: u64,
        group: String,
        after_seq: u64,
        limit: u32,
    },
    /// The client has processed everything up to `seq` in `group`: persist the cursor.
    AckDelivery {
        group: String,
        seq: u64,
    },
    /// A delivered/read receipt for one message.
    Receipt {
        group: String,
        seq: u64,
        kind: ReceiptKind,
    },
    /// The app moved to the foreground or background.
    Presence {
        state: PresenceState,
    },
    /// Liveness probe; answered by `Pong`.
    Ping {
        request_id: u64,
    },
}

impl ClientFrame {
    /// The frame's type as the schema's `Body` union and `docs/protocol.md` spell it (`"Send"`),
    /// for logs and errors: it names the frame without showing its content (a token, a body).
    ///
    /// ```
    /// use switchboard_wire::ClientFrame;
    /// assert_eq!(ClientFrame::Ping { request_id: 1 }.name(), "Ping");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::Join { .. } => "Join",
            Self::Leave { .. } => "Leave",
            Self::Send { .. } => "Send",
            Self::Fetch { .. } => "Fetch",
            Self::AckDelivery { .. } => "AckDelivery",
            Self::Receipt { .. } => "Receipt",
            Self::Presence { .. } => "Presence",
            Self::Ping { .. } => "Ping",
        }
    }
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Welcome {
        session_id: u64,
        tenant: String,
        user: String,
        /// Server clock, milliseconds since the Unix epoch.
        server_time_ms: u64,
        max_payload_bytes: u32,
        /// Groups the user belongs to, each with the group's newest sequence number.
        groups: Vec<GroupCursor>,
        /// For each group, the sequence number this session resumes after: delivery starts
        /// at the next one. Clients adopt these for groups they had no cursor for.
        resume: Vec<GroupCursor>,
    },
    Joined {
        request_id: u64,
        group: String,
        head_seq: u64,
    },
    Left {
        request_id: u64,
        group: String,
    },
    /// The message is durable with sequence number `seq`.
    Ack {
        request_id: u64,
        group: String,
        client_msg_id: String,
        seq: u64,
        /// True when this `client_msg_id` had already been accepted (a resend).
        duplicate: bool,
    },
    Deliver(Message),
    FetchResult {
        request_id: u64,
        group: String,
        messages: Vec<Message>,
        head_seq: u64,
    },
    /// Someone sent a receipt for a message (sent to the message's sender).
    ReceiptNotice {
        group: String,
        seq: u64,
        user: String,
        kind: ReceiptKind,
    },
    /// A user sharing a group changed presence.
    PresenceNotice {
        user: String,
        state: PresenceState,
        /// False once the user's last connection closed (then `state` is `Background`).
        online: bool,
    },
    Pong {
        request_id: u64,
    },
    Error(ErrorFrame),
    /// Push: the user's complete feature-flag set (after `Welcome`, and on every change).
    Flags {
        flags: Vec<Flag>,
    },
    /// Push: deliveries of `group` on this connection continue after `after_seq` (written
    /// before the first `Deliver` of each subscription).
    Resume {
        group: String,
        after_seq: u64,
    },
    /// Push: aggregated receipts of message `seq`, to its sender.
    ReceiptSummary {
        group: String,
        seq: u64,
        delivered: u32,
        read: u32,
        members: u32,
    },
    /// Push: `group` has messages up to `head_seq` this connection was not sent; fetch them.
    Nudge {
        group: String,
        head_seq: u64,
    },
}

impl ServerFrame {
    /// The frame's type as the schema's `Body` union and `docs/protocol.md` spell it
    /// (`"Deliver"`), for logs and errors: it names the frame without showing its content.
    ///
    /// ```
    /// use switchboard_wire::ServerFrame;
    /// assert_eq!(ServerFrame::Pong { request_id: 1 }.name(), "Pong");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "Welcome",
            Self::Joined { .. } => "Joined",
            Self::Left { .. } => "Left",
            Self::Ack { .. } => "Ack",
            Self::Deliver(_) => "Deliver",
            Self::FetchResult { .. } => "FetchResult",
            Self::ReceiptNotice { .. } => "ReceiptNotice",
            Self::PresenceNotice { .. } => "PresenceNotice",
            Self::Pong { .. } => "Pong",
            Self::Error(_) => "Error",
            Self::Flags { .. } => "Flags",
            Self::Resume { .. } => "Resume",
            Self::ReceiptSummary { .. } => "ReceiptSummary",
            Self::Nudge { .. } => "Nudge",
        }
    }
}

/// A typed refusal. Fatal codes (see `ErrorCode::is_fatal`) are followed by connection close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The request it answers, 0 if none.
    pub request_id: u64,
    /// The code as sent; unknown codes from newer servers are kept as raw numbers.
    pub code: u16,
    pub message: String,
    /// For retryable codes, how long to wait, in milliseconds (0 = unspecified).
    pub retry_after_ms: u32,
}

impl ErrorFrame {
    pub fn new(request_id: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            request_id,
            code: code.as_u16(),
            message: message.into(),
            retry_after_ms: 0,
        }
    }

    /// The code, if this build knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}
