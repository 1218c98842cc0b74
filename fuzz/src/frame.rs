//! Target `frame`: the wire codec and the length-prefix framer under hostile bytes.
//!
//! The first input byte picks a mode; the rest is its input:
//! - raw bytes to `decode_client` and `decode_server` (default and tight limits);
//! - a byte stream, cut into chunks the input chooses, through `FrameReader`;
//! - a frame built from the input (`Unstructured`), encoded, then decoded again.
//!
//! Checks: nothing panics; decoding holds at most [`ALLOC_FACTOR`] times the frame's size
//! (plus [`ALLOC_SLACK`]) allocated at once; whatever decodes re-encodes to bytes that decode
//! to the same value; a frame built within the limits survives encode → decode unchanged;
//! the framer returns exactly the frames a reference split finds, refuses an over-long prefix
//! before buffering its body, and never buffers more than one frame plus one chunk.

use arbitrary::{Result as AResult, Unstructured};
use bytes::Bytes;
use switchboard_core::{Lane, PresenceState, ReceiptKind};
use switchboard_wire::{
    decode_client, decode_server, encode_client, encode_server, ClientFrame, DecodeLimits,
    ErrorFrame, Flag, FrameReader, GroupCursor, Hello, Message, ServerFrame, WireError, LEN_PREFIX,
};

use crate::alloc::measure;

/// Decoding may hold this many bytes per frame byte at its peak...
pub const ALLOC_FACTOR: usize = 32;
/// ...plus this much.
pub const ALLOC_SLACK: usize = 16 * 1024;

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => decode_raw(rest),
        1 => framer(rest),
        _ => {
            let _ = structured(&mut Unstructured::new(rest));
        }
    }
}

/// The largest peak-to-size ratio (in thousandths) seen by [`decode_raw`] in this process for
/// frames of at least 512 bytes (below that the slack dominates), for the figures.
pub static WORST_RATIO_PERMILLE: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

fn check_alloc(what: &str, len: usize, peak: Option<usize>) {
    let Some(peak) = peak else { return };
    if len >= 512 {
        let ratio = peak * 1000 / len;
        WORST_RATIO_PERMILLE.fetch_max(ratio, std::sync::atomic::Ordering::Relaxed);
    }
    assert!(
        peak <= len * ALLOC_FACTOR + ALLOC_SLACK,
        "{what}: decoding a {len}-byte frame held {peak} bytes allocated at once"
    );
}

fn loose() -> DecodeLimits {
    // A hostile frame may share one string between many fields, which the encoder writes
    // out each time, so a re-encoding may be larger than the frame it came from.
    DecodeLimits {
        max_frame_bytes: u32::MAX,
        max_tables: usize::MAX,
        ..DecodeLimits::default()
    }
}

fn decode_raw(bytes: &[u8]) {
    let tight = DecodeLimits {
        max_frame_bytes: 512,
        max_list_len: 4,
        max_string_bytes: 16,
        max_depth: 4,
        max_tables: 8,
    };
    for limits in [DecodeLimits::default(), tight] {
        let (client, peak) = measure(|| decode_client(bytes, &limits));
        check_alloc("decode_client", bytes.len(), peak);
        if let Ok(f) = client {
            let again = encode_client(&f);
            let back = decode_client(&again[LEN_PREFIX..], &loose())
                .unwrap_or_else(|e| panic!("re-encoded {f:?} does not decode: {e}"));
            assert_eq!(back, f, "client frame changed in a round trip");
        }
        let (server, peak) = measure(|| decode_server(bytes, &limits));
        check_alloc("decode_server", bytes.len(), peak);
        if let Ok(f) = server {
            let again = encode_server(&f);
            let back = decode_server(&again[LEN_PREFIX..], &loose())
                .unwrap_or_else(|e| panic!("re-encoded {f:?} does not decode: {e}"));
            assert_eq!(back, f, "server frame changed in a round trip");
        }
    }
}

/// What a correct framer returns for `stream`: the frames, then why it stopped.
fn reference_split(stream: &[u8], max: u32) -> (Vec<&[u8]>, Option<&'static str>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < LEN_PREFIX {
            return (frames, (!rest.is_empty()).then_some("truncated"));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if len > max {
            return (frames, Some("too large"));
        }
        let total = LEN_PREFIX + len as usize;
        if rest.len() < total {
            return (frames, Some("truncated"));
        }
        frames.push(&rest[LEN_PREFIX..total]);
        rest = &rest[total..];
    }
}

fn framer(data: &[u8]) {
    let Some((&max_byte, rest)) = data.split_first() else {
        return;
    };
    let Some((&chunk_byte, stream)) = rest.split_first() else {
        return;
    };
    // Small limits so the fuzzer reaches both sides of the bound.
    let max = u32::from(max_byte) * 4;
    let chunk = usize::from(chunk_byte % 32) + 1;
    let (expected, stop) = reference_split(stream, max);
    let mut reader = FrameReader::new(max);
    let mut got: Vec<Bytes> = Vec::new();
    let mut failed = None;
    'feed: for piece in stream.chunks(chunk) {
        reader.push(piece);
        assert!(
            reader.buffered() <= LEN_PREFIX + max as usize + chunk,
            "framer holds {} bytes with a limit of {max} and {chunk}-byte chunks",
            reader.buffered()
        );
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => got.push(f),
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got.len(), expected.len(), "frame count");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(&g[..], *e, "frame bytes");
    }
    match (stop, failed) {
        (Some("too large"), Some(WireError::FrameTooLarge { len, max: m })) => {
            assert!(len > u64::from(m));
        }
        (Some("too large"), other) => panic!("over-long prefix not refused: {other:?}"),
        (_, Some(e)) => panic!("framer failed on a stream within its limit: {e}"),
        (Some(_), None) => assert!(matches!(reader.finish(), Err(WireError::Truncated))),
        (None, None) => assert!(reader.finish().is_ok()),
    }
}

// ---- Frames built from the input --------------------------------------------------------------

fn id(u: &mut Unstructured) -> AResult<String> {
    // Up to the 64-byte id bound (MAX_ID_LEN), any UTF-8.
    let s: String = u.arbitrary()?;
    Ok(cut(s, switchboard_core::id::MAX_ID_LEN))
}

fn text(u: &mut Unstructured, max: usize) -> AResult<String> {
    let s: String = u.arbitrary()?;
    Ok(cut(s, max))
}

fn cut(mut s: String, max: usize) -> String {
    while s.len() > max {
        s.pop();
    }
    s
}

fn body(u: &mut Unstructured) -> AResult<Bytes> {
    let len = u.int_in_range(0..=2048usize)?;
    let b = u.bytes(len.min(u.len()))?;
    Ok(Bytes::copy_from_slice(b))
}

fn lane(u: &mut Unstructured) -> AResult<Lane> {
    Ok(*u.choose(&Lane::ALL)?)
}

fn presence(u: &mut Unstructured) -> AResult<PresenceState> {
    Ok(if u.arbitrary()? {
        PresenceState::Foreground
    } else {
        PresenceState::Background
    })
}

fn receipt(u: &mut Unstructured) -> AResult<ReceiptKind> {
    Ok(if u.arbitrary()? {
        ReceiptKind::Delivered
    } else {
        ReceiptKind::Read
    })
}

fn cursors(u: &mut Unstructured) -> AResult<Vec<GroupCursor>> {
    let n = u.int_in_range(0..=16usize)?;
    (0..n)
        .map(|_| {
            Ok(GroupCursor {
                group: id(u)?,
                seq: u.arbitrary()?,
            })
        })
        .collect()
}

fn message(u: &mut Unstructured) -> AResult<Message> {
    Ok(Message {
        group: id(u)?,
        seq: u.arbitrary()?,
        sender: id(u)?,
        client_msg_id: id(u)?,
        sent_at_ms: u.arbitrary()?,
        body: body(u)?,
        lane: lane(u)?,
    })
}

/// A client frame within the default decoding limits.
pub fn client_frame(u: &mut Unstructured) -> AResult<ClientFrame> {
    Ok(match u.int_in_range(0..=8u8)? {
        0 => ClientFrame::Hello(Hello {
            token: text(u, switchboard_core::token::MAX_TOKEN_LEN)?,
            presence: presence(u)?,
            cursors: cursors(u)?,
            client: text(u, 64)?,
        }),
        1 => ClientFrame::Join {
            request_id: u.arbitrary()?,
            group: id(u)?,
        },
        2 => ClientFrame::Leave {
            request_id: u.arbitrary()?,
            group: id(u)?,
        },
        3 => ClientFrame::Send {
            request_id: u.arbitrary()?,
            group: id(u)?,
            client_msg_id: id(u)?,
            body: body(u)?,
        },
        4 => ClientFrame::Fetch {
            request_id: u.arbitrary()?,
            group: id(u)?,
            after_seq: u.arbitrary()?,
            limit: u.arbitrary()?,
        },
        5 => ClientFrame::AckDelivery {
            group: id(u)?,
            seq: u.arbitrary()?,
        },
        6 => ClientFrame::Receipt {
            group: id(u)?,
            seq: u.arbitrary()?,
            kind: receipt(u)?,
        },
        7 => ClientFrame::Presence {
            state: presence(u)?,
        },
        _ => ClientFrame::Ping {
            request_id: u.arbitrary()?,
        },
    })
}

/// A server frame within the default decoding limits.
pub fn server_frame(u: &mut Unstructured) -> AResult<ServerFrame> {
    Ok(match u.int_in_range(0..=10u8)? {
        0 => ServerFrame::Welcome {
            session_id: u.arbitrary()?,
            tenant: id(u)?,
            user: id(u)?,
            server_time_ms: u.arbitrary()?,
            max_payload_bytes: u.arbitrary()?,
            groups: cursors(u)?,
            resume: cursors(u)?,
        },
        1 => ServerFrame::Joined {
            request_id: u.arbitrary()?,
            group: id(u)?,
            head_seq: u.arbitrary()?,
        },
        2 => ServerFrame::Left {
            request_id: u.arbitrary()?,
            group: id(u)?,
        },
        3 => ServerFrame::Ack {
            request_id: u.arbitrary()?,
            group: id(u)?,
            client_msg_id: id(u)?,
            seq: u.arbitrary()?,
            duplicate: u.arbitrary()?,
        },
        4 => ServerFrame::Deliver(message(u)?),
        5 => {
            let n = u.int_in_range(0..=8usize)?;
            ServerFrame::FetchResult {
                request_id: u.arbitrary()?,
                group: id(u)?,
                messages: (0..n).map(|_| message(u)).collect::<AResult<_>>()?,
                head_seq: u.arbitrary()?,
            }
        }
        6 => ServerFrame::ReceiptNotice {
            group: id(u)?,
            seq: u.arbitrary()?,
            user: id(u)?,
            kind: receipt(u)?,
        },
        7 => ServerFrame::PresenceNotice {
            user: id(u)?,
            state: presence(u)?,
            online: u.arbitrary()?,
        },
        8 => ServerFrame::Pong {
            request_id: u.arbitrary()?,
        },
        9 => ServerFrame::Error(ErrorFrame {
            request_id: u.arbitrary()?,
            code: u.arbitrary()?,
            message: text(u, 1024)?,
            retry_after_ms: u.arbitrary()?,
        }),
        _ => {
            let n = u.int_in_range(0..=16usize)?;
            ServerFrame::Flags {
                flags: (0..n)
                    .map(|_| {
                        Ok(Flag {
                            name: id(u)?,
                            enabled: u.arbitrary()?,
                        })
                    })
                    .collect::<AResult<_>>()?,
            }
        }
    })
}

fn structured(u: &mut Unstructured) -> AResult<()> {
    let limits = DecodeLimits::default();
    let mut stream = Vec::new();
    let mut frames = 0;
    while !u.is_empty() && frames < 8 {
        frames += 1;
        let encoded = if u.arbitrary()? {
            let f = client_frame(u)?;
            let e = encode_client(&f);
            let back = decode_client(&e[LEN_PREFIX..], &limits)
                .unwrap_or_else(|err| panic!("{f:?} encodes to bytes that do not decode: {err}"));
            assert_eq!(back, f, "client frame changed in a round trip");
            // Not the other direction's frame.
            assert!(decode_server(&e[LEN_PREFIX..], &limits).is_err());
            e
        } else {
            let f = server_frame(u)?;
            let e = encode_server(&f);
            let back = decode_server(&e[LEN_PREFIX..], &limits)
                .unwrap_or_else(|err| panic!("{f:?} encodes to bytes that do not decode: {err}"));
            assert_eq!(back, f, "server frame changed in a round trip");
            assert!(decode_client(&e[LEN_PREFIX..], &limits).is_err());
            e
        };
        assert_eq!(
            u32::from_be_bytes(encoded[..LEN_PREFIX].try_into().unwrap()) as usize,
            encoded.len() - LEN_PREFIX,
            "length prefix"
        );
        stream.extend_from_slice(&encoded);
    }
    // The concatenation splits back into the same frames, however it arrives.
    let chunk = usize::from(u.arbitrary::<u8>().unwrap_or(0)) + 1;
    let mut reader = FrameReader::new(limits.max_frame_bytes);
    let mut n = 0;
    for piece in stream.chunks(chunk) {
        reader.push(piece);
        while reader
            .next_frame()
            .expect("own frames are in bounds")
            .is_some()
        {
            n += 1;
        }
    }
    assert_eq!(n, frames, "frames out of the framer");
    assert!(reader.finish().is_ok());
    Ok(())
}
