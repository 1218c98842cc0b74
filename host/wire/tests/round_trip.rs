//! Every frame variant survives encode -> frame -> decode unchanged.

mod common;

use bytes::Bytes;
use common::{
    client_cases, client_name, server_cases, server_name, CLIENT_VARIANTS, SERVER_VARIANTS,
};
use switchboard_core::PresenceState;
use switchboard_wire::{
    decode_client, decode_server, encode_client, encode_server, ClientFrame, DecodeLimits,
    FrameReader, GroupCursor, Hello, Message, ServerFrame, LEN_PREFIX,
};

/// Strips and checks the length prefix, the way a reader would.
fn unframe(encoded: &Bytes) -> Bytes {
    let mut r = FrameReader::new(DecodeLimits::default().max_frame_bytes);
    r.push(encoded);
    let frame = r.next_frame().unwrap().expect("one whole frame");
    assert_eq!(frame.len() + LEN_PREFIX, encoded.len());
    assert_eq!(r.buffered(), 0);
    frame
}

fn check_client(f: ClientFrame) {
    let frame = unframe(&encode_client(&f));
    assert_eq!(&frame[4..8], b"SB01");
    let back = decode_client(&frame, &DecodeLimits::default()).unwrap();
    assert_eq!(back, f);
    // And it is refused in the wrong direction, under its name in the schema, which is the
    // one `name()` gives.
    let err = decode_server(&frame, &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(err, switchboard_wire::WireError::UnexpectedFrame(n) if n == client_name(&f)),
        "{err}"
    );
}

fn check_server(f: ServerFrame) {
    let frame = unframe(&encode_server(&f));
    assert_eq!(&frame[4..8], b"SB01");
    let back = decode_server(&frame, &DecodeLimits::default()).unwrap();
    assert_eq!(back, f);
    let err = decode_client(&frame, &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(err, switchboard_wire::WireError::UnexpectedFrame(n) if n == server_name(&f)),
        "{err}"
    );
}

#[test]
fn client_frames_round_trip() {
    for f in client_cases() {
        check_client(f);
    }
}

#[test]
fn server_frames_round_trip() {
    for f in server_cases() {
        check_server(f);
    }
}

#[test]
fn every_variant_is_covered() {
    let client: std::collections::BTreeSet<_> = client_cases().iter().map(client_name).collect();
    assert_eq!(client.len(), CLIENT_VARIANTS, "covered: {client:?}");
    let server: std::collections::BTreeSet<_> = server_cases().iter().map(server_name).collect();
    assert_eq!(server.len(), SERVER_VARIANTS, "covered: {server:?}");
}

#[test]
fn limits_at_the_bound_are_accepted() {
    let l = DecodeLimits::default();
    let id = "i".repeat(64);
    check_client(ClientFrame::Send {
        request_id: 1,
        group: id.clone(),
        client_msg_id: id.clone(),
        body: Bytes::from(vec![7u8; 65_536]),
    });
    check_client(ClientFrame::Hello(Hello {
        token: "t".repeat(1024),
        presence: PresenceState::Foreground,
        cursors: (0..l.max_list_len)
            .map(|i| GroupCursor {
                group: format!("g{i}"),
                seq: u64::from(i),
            })
            .collect(),
        client: "c".repeat(l.max_string_bytes as usize),
    }));
    // Many small tables sharing one vtable: the verifier's apparent size exceeds the length.
    check_server(ServerFrame::Welcome {
        session_id: 1,
        tenant: id.clone(),
        user: id,
        server_time_ms: 1,
        max_payload_bytes: 1,
        groups: (0..l.max_list_len)
            .map(|_| GroupCursor {
                group: "g".into(),
                seq: 0,
            })
            .collect(),
        resume: (0..l.max_list_len)
            .map(|_| GroupCursor {
                group: "g".into(),
                seq: 0,
            })
            .collect(),
    });
    check_server(ServerFrame::FetchResult {
        request_id: 1,
        group: "g".into(),
        messages: (0..l.max_list_len)
            .map(|_| Message {
                group: "g".into(),
                seq: 0,
                sender: "s".into(),
                client_msg_id: "c".into(),
                sent_at_ms: 0,
                body: Bytes::new(),
                lane: Default::default(),
            })
            .collect(),
        head_seq: 1,
    });
}
