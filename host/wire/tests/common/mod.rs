//! Sample frames shared by the integration tests: at least one of every variant.

#![allow(dead_code)] // each test crate uses a different part

use bytes::Bytes;
use switchboard_core::{ErrorCode, Lane, PresenceState, ReceiptKind};
use switchboard_wire::{ClientFrame, ErrorFrame, Flag, GroupCursor, Hello, Message, ServerFrame};

pub fn message(seq: u64, body: &'static [u8]) -> Message {
    Message {
        group: "general".into(),
        seq,
        sender: "alice".into(),
        client_msg_id: format!("m-{seq}"),
        sent_at_ms: 1_700_000_000_000 + seq,
        body: Bytes::from_static(body),
        // Vary the lane so every value round-trips.
        lane: Lane::ALL[(seq % 3) as usize],
    }
}

pub fn client_cases() -> Vec<ClientFrame> {
    vec![
        ClientFrame::Hello(Hello {
            token: "sb1.eyJ0IjoiYWNtZSJ9.c2ln".into(),
            presence: PresenceState::Background,
            cursors: vec![
                GroupCursor {
                    group: "general".into(),
                    seq: 41,
                },
                GroupCursor {
                    group: "random".into(),
                    seq: 0,
                },
            ],
            client: "chat-example/0.1".into(),
        }),
        // Defaults everywhere: empty lists and strings, zero scalars.
        ClientFrame::Hello(Hello {
            token: String::new(),
            presence: PresenceState::Foreground,
            cursors: vec![],
            client: String::new(),
        }),
        ClientFrame::Join {
            request_id: 1,
            group: "general".into(),
        },
        ClientFrame::Leave {
            request_id: u64::MAX,
            group: "general".into(),
        },
        ClientFrame::Send {
            request_id: 2,
            group: "general".into(),
            client_msg_id: "c-0001".into(),
            body: Bytes::from_static(b"hello, world"),
        },
        ClientFrame::Send {
            request_id: 3,
            group: "g".into(),
            client_msg_id: "ünïcode ids are fine".into(),
            body: Bytes::new(),
        },
        ClientFrame::Fetch {
            request_id: 4,
            group: "general".into(),
            after_seq: 10,
            limit: 50,
        },
        ClientFrame::AckDelivery {
            group: "general".into(),
            seq: 42,
        },
        ClientFrame::Receipt {
            group: "general".into(),
            seq: 42,
            kind: ReceiptKind::Delivered,
        },
        ClientFrame::Receipt {
            group: "general".into(),
            seq: 42,
            kind: ReceiptKind::Read,
        },
        ClientFrame::Presence {
            state: PresenceState::Foreground,
        },
        ClientFrame::Presence {
            state: PresenceState::Background,
        },
        ClientFrame::Ping { request_id: 0 },
        ClientFrame::Ping { request_id: 9 },
    ]
}

pub fn server_cases() -> Vec<ServerFrame> {
    vec![
        ServerFrame::Welcome {
            session_id: 77,
            tenant: "acme".into(),
            user: "alice".into(),
            server_time_ms: 1_700_000_000_000,
            max_payload_bytes: 65_536,
            groups: vec![GroupCursor {
                group: "general".into(),
                seq: 42,
            }],
            resume: vec![GroupCursor {
                group: "general".into(),
                seq: 40,
            }],
        },
        ServerFrame::Welcome {
            session_id: 0,
            tenant: "acme".into(),
            user: "bob".into(),
            server_time_ms: 0,
            max_payload_bytes: 0,
            groups: vec![],
            resume: vec![],
        },
        ServerFrame::Joined {
            request_id: 1,
            group: "general".into(),
            head_seq: 42,
        },
        ServerFrame::Left {
            request_id: 2,
            group: "general".into(),
        },
        ServerFrame::Ack {
            request_id: 3,
            group: "general".into(),
            client_msg_id: "c-0001".into(),
            seq: 43,
            duplicate: false,
        },
        ServerFrame::Ack {
            request_id: 4,
            group: "general".into(),
            client_msg_id: "c-0001".into(),
            seq: 43,
            duplicate: true,
        },
        ServerFrame::Deliver(message(43, b"hello, world")),
        ServerFrame::Deliver(message(1, b"")),
        ServerFrame::FetchResult {
            request_id: 5,
            group: "general".into(),
            messages: vec![message(11, b"a"), message(12, &[0, 1, 2, 255])],
            head_seq: 43,
        },
        ServerFrame::FetchResult {
            request_id: 6,
            group: "general".into(),
            messages: vec![],
            head_seq: 0,
        },
        ServerFrame::ReceiptNotice {
            group: "general".into(),
            seq: 43,
            user: "bob".into(),
            kind: ReceiptKind::Read,
        },
        ServerFrame::PresenceNotice {
            user: "bob".into(),
            state: PresenceState::Background,
            online: true,
        },
        ServerFrame::PresenceNotice {
            user: "carol".into(),
            state: PresenceState::Background,
            online: false,
        },
        ServerFrame::Pong { request_id: 9 },
        ServerFrame::Flags {
            flags: vec![
                Flag {
                    name: "new-composer".into(),
                    enabled: true,
                },
                Flag {
                    name: "beta.reactions".into(),
                    enabled: false,
                },
            ],
        },
        ServerFrame::Flags { flags: vec![] },
        ServerFrame::Resume {
            group: "general".into(),
            after_seq: 41,
        },
        ServerFrame::Resume {
            group: "general".into(),
            after_seq: 0,
        },
        ServerFrame::ReceiptSummary {
            group: "general".into(),
            seq: 43,
            delivered: 37,
            read: 12,
            members: 120,
        },
        ServerFrame::Nudge {
            group: "general".into(),
            head_seq: 99,
        },
        ServerFrame::Error(ErrorFrame::new(
            3,
            ErrorCode::NotMember,
            "not a member of general",
        )),
        ServerFrame::Error(ErrorFrame {
            request_id: 0,
            code: ErrorCode::Overloaded.as_u16(),
            message: String::new(),
            retry_after_ms: 250,
        }),
        // A code from a newer server survives as a raw number.
        ServerFrame::Error(ErrorFrame {
            request_id: 1,
            code: 999,
            message: "new".into(),
            retry_after_ms: 0,
        }),
    ]
}

// Exhaustive matches: a new variant does not compile until it is listed here, and
// `round_trip::every_variant_is_covered` then fails until it has a round-trip case. The names
// are the frames' own (`name()`); `round_trip` checks them against the schema's.
pub fn client_name(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Hello(_)
        | ClientFrame::Join { .. }
        | ClientFrame::Leave { .. }
        | ClientFrame::Send { .. }
        | ClientFrame::Fetch { .. }
        | ClientFrame::AckDelivery { .. }
        | ClientFrame::Receipt { .. }
        | ClientFrame::Presence { .. }
        | ClientFrame::Ping { .. } => f.name(),
    }
}
pub const CLIENT_VARIANTS: usize = 9;

pub fn server_name(f: &ServerFrame) -> &'static str {
    match f {
        ServerFrame::Welcome { .. }
        | ServerFrame::Joined { .. }
        | ServerFrame::Left { .. }
        | ServerFrame::Ack { .. }
        | ServerFrame::Deliver(_)
        | ServerFrame::FetchResult { .. }
        | ServerFrame::ReceiptNotice { .. }
        | ServerFrame::PresenceNotice { .. }
        | ServerFrame::Pong { .. }
        | ServerFrame::Error(_)
        | ServerFrame::Flags { .. }
        | ServerFrame::Resume { .. }
        | ServerFrame::ReceiptSummary { .. }
        | ServerFrame::Nudge { .. } => f.name(),
    }
}
pub const SERVER_VARIANTS: usize = 14;
