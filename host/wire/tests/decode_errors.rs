//! Every way decoding can refuse bytes, and the error code each maps to.

use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, TableFinishedWIPOffset, WIPOffset};
use switchboard_core::ErrorCode;
use switchboard_wire::{
    decode_client, decode_server, encode_client, encode_server, ClientFrame, DecodeLimits,
    ErrorFrame, FrameReader, GroupCursor, Hello, ServerFrame, WireError, LEN_PREFIX,
};

/// The flatbuffer of an encoded frame, without its prefix.
fn client(f: &ClientFrame) -> Bytes {
    encode_client(f).slice(LEN_PREFIX..)
}

fn server(f: &ServerFrame) -> Bytes {
    encode_server(f).slice(LEN_PREFIX..)
}

fn ping() -> ClientFrame {
    ClientFrame::Ping { request_id: 1 }
}

/// Builds a `Frame` by hand, bypassing the generated code, so the tests can say things the
/// encoder never would. Field slots are `4 + 2 * index`: `Frame { body_type, body }`.
fn raw_frame(
    body_type: u8,
    body: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<TableFinishedWIPOffset>,
) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let body = body(&mut fbb);
    let t = fbb.start_table();
    fbb.push_slot_always::<u8>(4, body_type);
    fbb.push_slot_always(6, body);
    let root = fbb.end_table(t);
    fbb.finish(root, Some("SB01"));
    fbb.finished_data().to_vec()
}

fn empty_table(fbb: &mut FlatBufferBuilder<'static>) -> WIPOffset<TableFinishedWIPOffset> {
    let t = fbb.start_table();
    fbb.end_table(t)
}

/// Asserts the error's variant (by its `Debug` prefix), a fragment of its message and its code.
fn check(res: Result<impl std::fmt::Debug, WireError>, variant: &str, says: &str, code: ErrorCode) {
    let err = res.expect_err("decoding should fail");
    let debug = format!("{err:?}");
    assert!(
        debug.starts_with(variant),
        "expected {variant}, got {debug}"
    );
    assert!(err.to_string().contains(says), "expected {says:?} in {err}");
    assert_eq!(err.code(), code, "{err}");
}

const MALFORMED: ErrorCode = ErrorCode::MalformedFrame;

#[test]
fn garbage() {
    let l = DecodeLimits::default();
    check(decode_client(b"", &l), "Malformed", "too short", MALFORMED);
    check(
        decode_client(b"SB01", &l),
        "Malformed",
        "too short",
        MALFORMED,
    );
    check(
        decode_client(b"GET / HTTP/1.1\r\n\r\n", &l),
        "Malformed",
        "file identifier",
        MALFORMED,
    );
    // Right identifier, root offset pointing far outside the buffer.
    check(
        decode_server(b"\xff\xff\xff\x7fSB01\0\0\0\0", &l),
        "Malformed",
        "",
        MALFORMED,
    );
    // Root offset pointing into the identifier itself.
    check(
        decode_client(b"\x04\0\0\0SB01\0\0\0\0", &l),
        "Malformed",
        "",
        MALFORMED,
    );
}

#[test]
fn truncated_buffer() {
    let l = DecodeLimits::default();
    let frame = client(&ClientFrame::Send {
        request_id: 1,
        group: "general".into(),
        client_msg_id: "c-1".into(),
        body: Bytes::from_static(b"hello"),
    });
    for cut in [8, frame.len() / 2, frame.len() - 1] {
        check(decode_client(&frame[..cut], &l), "Malformed", "", MALFORMED);
    }
    // A stream that ends inside a frame.
    let mut r = FrameReader::new(l.max_frame_bytes);
    r.push(&encode_client(&ping())[..6]);
    assert!(r.next_frame().unwrap().is_none());
    check(
        r.finish().map(|()| 0),
        "Truncated",
        "ended inside",
        MALFORMED,
    );
}

#[test]
fn wrong_file_identifier() {
    let mut frame = BytesMut::from(&client(&ping())[..]);
    frame[4..8].copy_from_slice(b"SB02");
    check(
        decode_client(&frame, &DecodeLimits::default()),
        "Malformed",
        "\"SB02\", expected \"SB01\"",
        MALFORMED,
    );
}

#[test]
fn oversized() {
    let l = DecodeLimits {
        max_frame_bytes: 64,
        ..DecodeLimits::default()
    };
    // From the prefix alone, before any body byte arrived.
    let mut r = FrameReader::new(64);
    r.push(&65u32.to_be_bytes());
    check(
        r.next_frame(),
        "FrameTooLarge",
        "65 bytes exceeds the limit of 64",
        ErrorCode::FrameTooLarge,
    );
    let mut r = FrameReader::new(64);
    r.push(&[0xff; 4]);
    check(
        r.next_frame(),
        "FrameTooLarge",
        "4294967295",
        ErrorCode::FrameTooLarge,
    );
    // decode_* enforce it too, for callers that frame by other means.
    let big = client(&ClientFrame::Send {
        request_id: 1,
        group: "g".into(),
        client_msg_id: "c".into(),
        body: Bytes::from(vec![0; 64]),
    });
    check(
        decode_client(&big, &l),
        "FrameTooLarge",
        "",
        ErrorCode::FrameTooLarge,
    );
}

#[test]
fn too_long_list() {
    let l = DecodeLimits {
        max_list_len: 2,
        ..DecodeLimits::default()
    };
    let cursors = |n: u64| {
        (0..n)
            .map(|i| GroupCursor {
                group: format!("g{i}"),
                seq: i,
            })
            .collect::<Vec<_>>()
    };
    let hello = |n| {
        ClientFrame::Hello(Hello {
            token: "t".into(),
            presence: Default::default(),
            cursors: cursors(n),
            client: String::new(),
        })
    };
    assert!(decode_client(&client(&hello(2)), &l).is_ok());
    check(
        decode_client(&client(&hello(3)), &l),
        "Malformed",
        "cursors has 3 entries, more than 2",
        MALFORMED,
    );
    let welcome = ServerFrame::Welcome {
        session_id: 1,
        tenant: "t".into(),
        user: "u".into(),
        server_time_ms: 0,
        max_payload_bytes: 0,
        groups: cursors(3),
        resume: vec![],
    };
    check(
        decode_server(&server(&welcome), &l),
        "Malformed",
        "groups has 3",
        MALFORMED,
    );
    let msg = |seq| switchboard_wire::Message {
        group: "g".into(),
        seq,
        sender: "s".into(),
        client_msg_id: "c".into(),
        sent_at_ms: 0,
        body: Bytes::new(),
        lane: Default::default(),
    };
    let fetched = ServerFrame::FetchResult {
        request_id: 1,
        group: "g".into(),
        messages: (1..=3).map(msg).collect(),
        head_seq: 3,
    };
    check(
        decode_server(&server(&fetched), &l),
        "Malformed",
        "messages has 3",
        MALFORMED,
    );
}

#[test]
fn too_long_strings() {
    let l = DecodeLimits::default();
    let long_id = "x".repeat(65);
    let join = ClientFrame::Join {
        request_id: 1,
        group: long_id.clone(),
    };
    check(
        decode_client(&client(&join), &l),
        "Malformed",
        "group is 65 bytes, longer than 64",
        MALFORMED,
    );
    let send = ClientFrame::Send {
        request_id: 1,
        group: "g".into(),
        client_msg_id: long_id.clone(),
        body: Bytes::new(),
    };
    check(
        decode_client(&client(&send), &l),
        "Malformed",
        "client_msg_id is 65",
        MALFORMED,
    );
    let hello = |token: String, client_name: String| {
        ClientFrame::Hello(Hello {
            token,
            presence: Default::default(),
            cursors: vec![],
            client: client_name,
        })
    };
    check(
        decode_client(&client(&hello("t".repeat(1025), String::new())), &l),
        "Malformed",
        "token is 1025 bytes, longer than 1024",
        MALFORMED,
    );
    let too_long_text = "c".repeat(l.max_string_bytes as usize + 1);
    check(
        decode_client(&client(&hello("t".into(), too_long_text.clone())), &l),
        "Malformed",
        "client is 1025 bytes",
        MALFORMED,
    );
    let error = ServerFrame::Error(ErrorFrame::new(0, ErrorCode::Internal, too_long_text));
    check(
        decode_server(&server(&error), &l),
        "Malformed",
        "message is 1025",
        MALFORMED,
    );
    let deliver = ServerFrame::Deliver(switchboard_wire::Message {
        group: "g".into(),
        seq: 1,
        sender: long_id,
        client_msg_id: "c".into(),
        sent_at_ms: 0,
        body: Bytes::new(),
        lane: Default::default(),
    });
    check(
        decode_server(&server(&deliver), &l),
        "Malformed",
        "sender is 65",
        MALFORMED,
    );
}

#[test]
fn unknown_union_type() {
    let l = DecodeLimits::default();
    let frame = raw_frame(200, empty_table);
    check(
        decode_client(&frame, &l),
        "UnknownFrameType(200)",
        "unknown frame type 200",
        ErrorCode::UnknownFrameType,
    );
    check(
        decode_server(&frame, &l),
        "UnknownFrameType(200)",
        "",
        ErrorCode::UnknownFrameType,
    );
    // The next number after the schema's last member (Nudge = 23).
    check(
        decode_client(&raw_frame(24, empty_table), &l),
        "UnknownFrameType(24)",
        "",
        ErrorCode::UnknownFrameType,
    );
    // NONE with a body: no variant at all.
    check(
        decode_client(&raw_frame(0, empty_table), &l),
        "Malformed",
        "no body",
        MALFORMED,
    );
}

#[test]
fn missing_required_field() {
    let l = DecodeLimits::default();
    // Join (2) without its group.
    let join = raw_frame(2, |fbb| {
        let t = fbb.start_table();
        fbb.push_slot::<u64>(4, 7, 0);
        fbb.end_table(t)
    });
    check(
        decode_client(&join, &l),
        "Malformed",
        "Missing required field `group`",
        MALFORMED,
    );
    // A Frame without a body.
    let mut fbb = FlatBufferBuilder::new();
    let root = empty_table(&mut fbb);
    fbb.finish(root, Some("SB01"));
    check(
        decode_client(fbb.finished_data(), &l),
        "Malformed",
        "Missing required field `body`",
        MALFORMED,
    );
}

#[test]
fn unknown_enum_values() {
    let l = DecodeLimits::default();
    // Presence (8) { state: 7 }.
    let presence = raw_frame(8, |fbb| {
        let t = fbb.start_table();
        fbb.push_slot::<u8>(4, 7, 0);
        fbb.end_table(t)
    });
    check(
        decode_client(&presence, &l),
        "Malformed",
        "unknown presence state 7",
        MALFORMED,
    );
    // Receipt (7) { group: "g", seq: 1, kind: 9 }.
    let receipt = raw_frame(7, |fbb| {
        let group = fbb.create_string("g");
        let t = fbb.start_table();
        fbb.push_slot_always(4, group);
        fbb.push_slot::<u64>(6, 1, 0);
        fbb.push_slot::<u8>(8, 9, 0);
        fbb.end_table(t)
    });
    check(
        decode_client(&receipt, &l),
        "Malformed",
        "unknown receipt kind 9",
        MALFORMED,
    );
}

#[test]
fn wrong_direction() {
    let l = DecodeLimits::default();
    check(
        decode_client(&server(&ServerFrame::Pong { request_id: 1 }), &l),
        "UnexpectedFrame(\"Pong\")",
        "unexpected Pong frame",
        ErrorCode::UnexpectedFrame,
    );
    check(
        decode_server(&client(&ping()), &l),
        "UnexpectedFrame(\"Ping\")",
        "",
        ErrorCode::UnexpectedFrame,
    );
}

#[test]
fn verifier_limits() {
    let hello = client(&ClientFrame::Hello(Hello {
        token: "t".into(),
        presence: Default::default(),
        cursors: vec![
            GroupCursor {
                group: "a".into(),
                seq: 1,
            };
            10
        ],
        client: String::new(),
    }));
    let few_tables = DecodeLimits {
        max_tables: 5,
        ..DecodeLimits::default()
    };
    check(
        decode_client(&hello, &few_tables),
        "Malformed",
        "",
        MALFORMED,
    );
    let shallow = DecodeLimits {
        max_depth: 2,
        ..DecodeLimits::default()
    };
    check(decode_client(&hello, &shallow), "Malformed", "", MALFORMED);
    assert!(decode_client(&hello, &DecodeLimits::default()).is_ok());
}

#[test]
fn invalid_utf8_is_malformed() {
    let mut frame = BytesMut::from(
        &client(&ClientFrame::Join {
            request_id: 1,
            group: "grp".into(),
        })[..],
    );
    let at = frame.windows(3).position(|w| w == b"grp").unwrap();
    frame[at] = 0xff;
    check(
        decode_client(&frame, &DecodeLimits::default()),
        "Malformed",
        "",
        MALFORMED,
    );
}
