//! Frames to bytes and back.
//!
//! Decoding never trusts its input: the flatbuffers verifier runs first (bounded by
//! [`DecodeLimits`]), then every list and string is checked against its limit before it is
//! copied out. No input can make decoding panic (`tests/never_panics.rs`), and what it
//! allocates is proportional to the frame's size, which the caller has already bounded.
//!
//! Encoding reuses one `FlatBufferBuilder` per thread and yields a single `Bytes` that already
//! carries the length prefix, so a frame pushed to many recipients (a `Deliver`) is encoded once
//! and shared by reference count.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use switchboard_core::id::MAX_ID_LEN;
use switchboard_core::token::MAX_TOKEN_LEN;
use switchboard_core::{Lane, Limits, PresenceState, ReceiptKind};

use crate::generated::switchboard::wire as fb;
use crate::{
    ClientFrame, ErrorFrame, Flag, GroupCursor, Hello, Message, ServerFrame, WireError, LEN_PREFIX,
};

/// Default bound on free-form strings (`Hello.client`, `Error.message`), in bytes.
pub const DEFAULT_MAX_STRING_BYTES: u32 = 1024;

/// How much larger than the frame the verifier's "apparent size" may grow. The verifier counts
/// every vtable lookup, and a vtable shared by many tables once per table, so an honest frame
/// appears larger than it is (factor 1 rejects even a `Ping`; the test frames need up to 2).
/// The bound only has to keep verification work linear in the frame size.
const APPARENT_SIZE_FACTOR: usize = 4;

/// Bounds applied while decoding one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Longest frame accepted (without the length prefix), in bytes.
    pub max_frame_bytes: u32,
    /// Longest list: `Hello.cursors`, `Welcome.groups`, `FetchResult.messages`.
    pub max_list_len: u32,
    /// Longest free-form string: `Hello.client`, `Error.message`. Ids are bounded by
    /// [`MAX_ID_LEN`] and the token by [`MAX_TOKEN_LEN`] regardless.
    pub max_string_bytes: u32,
    /// Deepest table nesting the verifier accepts.
    pub max_depth: usize,
    /// Most tables the verifier visits in one frame.
    pub max_tables: usize,
}

impl DecodeLimits {
    /// The decoding bounds implied by a node's limits.
    pub fn from_limits(l: &Limits) -> Self {
        // Lists are resume cursors / group lists (one per group of the user) or fetched pages.
        let max_list_len = l.max_groups_per_user.max(l.max_fetch_messages);
        Self {
            max_frame_bytes: l.max_frame_bytes,
            max_list_len,
            max_string_bytes: DEFAULT_MAX_STRING_BYTES,
            // Deepest path in the schema: Frame -> FetchResult -> Message.
            max_depth: 8,
            // Two lists of tables (Welcome's groups and resume) plus Frame, its body and a
            // little slack.
            max_tables: usize::try_from(max_list_len)
                .unwrap_or(usize::MAX)
                .saturating_mul(2)
                .saturating_add(8),
        }
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self::from_limits(&Limits::default())
    }
}

// ---- Encoding --------------------------------------------------------------------------------

/// Builders that grew past this are dropped rather than kept for the thread's lifetime.
const RETAINED_BUILDER_BYTES: usize = 256 * 1024;

thread_local! {
    static BUILDER: RefCell<FlatBufferBuilder<'static>> =
        RefCell::new(FlatBufferBuilder::with_capacity(1024));
}

type Body = (fb::Body, WIPOffset<UnionWIPOffset>);

/// Builds one frame with the thread's builder and returns it with its length prefix.
fn encode_with(build: impl Fn(&mut FlatBufferBuilder<'static>) -> Body) -> Bytes {
    let reused = BUILDER.try_with(|cell| {
        // `encode_*` never re-enters, so the borrow always succeeds; no need to panic if not.
        let mut fbb = cell.try_borrow_mut().ok()?;
        fbb.reset();
        let out = finish(&mut fbb, &build);
        if fbb.finished_data().len() > RETAINED_BUILDER_BYTES {
            *fbb = FlatBufferBuilder::with_capacity(1024);
        }
        Some(out)
    });
    match reused {
        Ok(Some(out)) => out,
        // Thread teardown (or a borrow that cannot happen): use a one-off builder.
        _ => finish(&mut FlatBufferBuilder::new(), &build),
    }
}

fn finish(
    fbb: &mut FlatBufferBuilder<'static>,
    build: &impl Fn(&mut FlatBufferBuilder<'static>) -> Body,
) -> Bytes {
    let (body_type, body) = build(fbb);
    let root = fb::Frame::create(
        fbb,
        &fb::FrameArgs {
            body_type,
            body: Some(body),
        },
    );
    fb::finish_frame_buffer(fbb, root);
    let data = fbb.finished_data();
    let len = u32::try_from(data.len()).expect("a flatbuffer is smaller than 2 GiB");
    let mut out = BytesMut::with_capacity(LEN_PREFIX + data.len());
    out.put_u32(len);
    out.extend_from_slice(data);
    out.freeze()
}

fn lane_fb(l: Lane) -> fb::Lane {
    match l {
        Lane::Normal => fb::Lane::Normal,
        Lane::High => fb::Lane::High,
        Lane::Low => fb::Lane::Low,
    }
}

fn presence_fb(s: PresenceState) -> fb::PresenceState {
    match s {
        PresenceState::Foreground => fb::PresenceState::Foreground,
        PresenceState::Background => fb::PresenceState::Background,
    }
}

fn receipt_fb(k: ReceiptKind) -> fb::ReceiptKind {
    match k {
        ReceiptKind::Delivered => fb::ReceiptKind::Delivered,
        ReceiptKind::Read => fb::ReceiptKind::Read,
    }
}

fn cursors_fb<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    cursors: &[GroupCursor],
) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<fb::GroupCursor<'b>>>> {
    let items: Vec<_> = cursors
        .iter()
        .map(|c| {
            let group = Some(fbb.create_string(&c.group));
            fb::GroupCursor::create(fbb, &fb::GroupCursorArgs { group, seq: c.seq })
        })
        .collect();
    fbb.create_vector(&items)
}

fn message_fb<'b>(fbb: &mut FlatBufferBuilder<'b>, m: &Message) -> WIPOffset<fb::Message<'b>> {
    let args = fb::MessageArgs {
        group: Some(fbb.create_string(&m.group)),
        seq: m.seq,
        sender: Some(fbb.create_string(&m.sender)),
        client_msg_id: Some(fbb.create_string(&m.client_msg_id)),
        sent_at_ms: m.sent_at_ms,
        lane: lane_fb(m.lane),
        body: Some(fbb.create_vector(&m.body[..])),
    };
    fb::Message::create(fbb, &args)
}

/// Encodes a client frame, length prefix included.
pub fn encode_client(f: &ClientFrame) -> Bytes {
    encode_with(|fbb| match f {
        ClientFrame::Hello(h) => {
            let args = fb::HelloArgs {
                token: Some(fbb.create_string(&h.token)),
                presence: presence_fb(h.presence),
                cursors: Some(cursors_fb(fbb, &h.cursors)),
                client: Some(fbb.create_string(&h.client)),
            };
            let t = fb::Hello::create(fbb, &args);
            (fb::Body::Hello, t.as_union_value())
        }
        ClientFrame::Join { request_id, group } => {
            let group = Some(fbb.create_string(group));
            let args = fb::JoinArgs {
                request_id: *request_id,
                group,
            };
            (
                fb::Body::Join,
                fb::Join::create(fbb, &args).as_union_value(),
            )
        }
        ClientFrame::Leave { request_id, group } => {
            let group = Some(fbb.create_string(group));
            let args = fb::LeaveArgs {
                request_id: *request_id,
                group,
            };
            (
                fb::Body::Leave,
                fb::Leave::create(fbb, &args).as_union_value(),
            )
        }
        ClientFrame::Send {
            request_id,
            group,
            client_msg_id,
            body,
        } => {
            let args = fb::SendArgs {
                request_id: *request_id,
                group: Some(fbb.create_string(group)),
                client_msg_id: Some(fbb.create_string(client_msg_id)),
                body: Some(fbb.create_vector(&body[..])),
            };
            (
                fb::Body::Send,
                fb::Send::create(fbb, &args).as_union_value(),
            )
        }
        ClientFrame::Fetch {
            request_id,
            group,
            after_seq,
            limit,
        } => {
            let args = fb::FetchArgs {
                request_id: *request_id,
                group: Some(fbb.create_string(group)),
                after_seq: *after_seq,
                limit: *limit,
            };
            (
                fb::Body::Fetch,
                fb::Fetch::create(fbb, &args).as_union_value(),
            )
        }
        ClientFrame::AckDelivery { group, seq } => {
            let args = fb::AckDeliveryArgs {
                group: Some(fbb.create_string(group)),
                seq: *seq,
            };
            let t = fb::AckDelivery::create(fbb, &args);
            (fb::Body::AckDelivery, t.as_union_value())
        }
        ClientFrame::Receipt { group, seq, kind } => {
            let args = fb::ReceiptArgs {
                group: Some(fbb.create_string(group)),
                seq: *seq,
                kind: receipt_fb(*kind),
            };
            let t = fb::Receipt::create(fbb, &args);
            (fb::Body::Receipt, t.as_union_value())
        }
        ClientFrame::Presence { state } => {
            let args = fb::PresenceArgs {
                state: presence_fb(*state),
            };
            let t = fb::Presence::create(fbb, &args);
            (fb::Body::Presence, t.as_union_value())
        }
        ClientFrame::Ping { request_id } => {
            let args = fb::PingArgs {
                request_id: *request_id,
            };
            (
                fb::Body::Ping,
                fb::Ping::create(fbb, &args).as_union_value(),
            )
        }
    })
}

/// Encodes a server frame, length prefix included. Clone the result to send it to many peers.
pub fn encode_server(f: &ServerFrame) -> Bytes {
    encode_with(|fbb| match f {
        ServerFrame::Welcome {
            session_id,
            tenant,
            user,
            server_time_ms,
            max_payload_bytes,
            groups,
            resume,
        } => {
            let args = fb::WelcomeArgs {
                session_id: *session_id,
                tenant: Some(fbb.create_string(tenant)),
                user: Some(fbb.create_string(user)),
                server_time_ms: *server_time_ms,
                max_payload_bytes: *max_payload_bytes,
                groups: Some(cursors_fb(fbb, groups)),
                resume: Some(cursors_fb(fbb, resume)),
            };
            let t = fb::Welcome::create(fbb, &args);
            (fb::Body::Welcome, t.as_union_value())
        }
        ServerFrame::Joined {
            request_id,
            group,
            head_seq,
        } => {
            let args = fb::JoinedArgs {
                request_id: *request_id,
                group: Some(fbb.create_string(group)),
                head_seq: *head_seq,
            };
            let t = fb::Joined::create(fbb, &args);
            (fb::Body::Joined, t.as_union_value())
        }
        ServerFrame::Left { request_id, group } => {
            let args = fb::LeftArgs {
                request_id: *request_id,
                group: Some(fbb.create_string(group)),
            };
            (
                fb::Body::Left,
                fb::Left::create(fbb, &args).as_union_value(),
            )
        }
        ServerFrame::Ack {
            request_id,
            group,
            client_msg_id,
            seq,
            duplicate,
        } => {
            let args = fb::AckArgs {
                request_id: *request_id,
                group: Some(fbb.create_string(group)),
                client_msg_id: Some(fbb.create_string(client_msg_id)),
                seq: *seq,
                duplicate: *duplicate,
            };
            (fb::Body::Ack, fb::Ack::create(fbb, &args).as_union_value())
        }
        ServerFrame::Deliver(m) => {
            let message = Some(message_fb(fbb, m));
            let t = fb::Deliver::create(fbb, &fb::DeliverArgs { message });
            (fb::Body::Deliver, t.as_union_value())
        }
        ServerFrame::FetchResult {
            request_id,
            group,
            messages,
            head_seq,
        } => {
            let group = Some(fbb.create_string(group));
            let items: Vec<_> = messages.iter().map(|m| message_fb(fbb, m)).collect();
            let args = fb::FetchResultArgs {
                request_id: *request_id,
                group,
                messages: Some(fbb.create_vector(&items)),
                head_seq: *head_seq,
            };
            let t = fb::FetchResult::create(fbb, &args);
            (fb::Body::FetchResult, t.as_union_value())
        }
        ServerFrame::ReceiptNotice {
            group,
            seq,
            user,
            kind,
        } => {
            let args = fb::ReceiptNoticeArgs {
                group: Some(fbb.create_string(group)),
                seq: *seq,
                user: Some(fbb.create_string(user)),
                kind: receipt_fb(*kind),
            };
            let t = fb::ReceiptNotice::create(fbb, &args);
            (fb::Body::ReceiptNotice, t.as_union_value())
        }
        ServerFrame::PresenceNotice {
            user,
            state,
            online,
        } => {
            let args = fb::PresenceNoticeArgs {
                user: Some(fbb.create_string(user)),
                state: presence_fb(*state),
                online: *online,
            };
            let t = fb::PresenceNotice::create(fbb, &args);
            (fb::Body::PresenceNotice, t.as_union_value())
        }
        ServerFrame::Flags { flags } => {
            let items: Vec<_> = flags
                .iter()
                .map(|f| {
                    let args = fb::FlagArgs {
                        name: Some(fbb.create_string(&f.name)),
                        enabled: f.enabled,
                    };
                    fb::Flag::create(fbb, &args)
                })
                .collect();
            let args = fb::FlagsArgs {
                flags: Some(fbb.create_vector(&items)),
            };
            (
                fb::Body::Flags,
                fb::Flags::create(fbb, &args).as_union_value(),
            )
        }
        ServerFrame::Resume { group, after_seq } => {
            let args = fb::ResumeArgs {
                group: Some(fbb.create_string(group)),
                after_seq: *after_seq,
            };
            (
                fb::Body::Resume,
                fb::Resume::create(fbb, &args).as_union_value(),
            )
        }
        ServerFrame::ReceiptSummary {
            group,
            seq,
            delivered,
            read,
            members,
        } => {
            let args = fb::ReceiptSummaryArgs {
                group: Some(fbb.create_string(group)),
                seq: *seq,
                delivered: *delivered,
                read: *read,
                members: *members,
            };
            (
                fb::Body::ReceiptSummary,
                fb::ReceiptSummary::create(fbb, &args).as_union_value(),
            )
        }
        ServerFrame::Nudge { group, head_seq } => {
            let args = fb::NudgeArgs {
                group: Some(fbb.create_string(group)),
                head_seq: *head_seq,
            };
            (
                fb::Body::Nudge,
                fb::Nudge::create(fbb, &args).as_union_value(),
            )
        }
        ServerFrame::Pong { request_id } => {
            let args = fb::PongArgs {
                request_id: *request_id,
            };
            (
                fb::Body::Pong,
                fb::Pong::create(fbb, &args).as_union_value(),
            )
        }
        ServerFrame::Error(e) => {
            let args = fb::ErrorArgs {
                request_id: e.request_id,
                code: e.code,
                message: Some(fbb.create_string(&e.message)),
                retry_after_ms: e.retry_after_ms,
            };
            (
                fb::Body::Error,
                fb::Error::create(fbb, &args).as_union_value(),
            )
        }
    })
}

// ---- Decoding --------------------------------------------------------------------------------

fn malformed(msg: impl Into<String>) -> WireError {
    WireError::Malformed(msg.into())
}

/// Size checks, file identifier, then the verifier. Only after this are fields read.
fn verify<'a>(frame: &'a [u8], l: &DecodeLimits) -> Result<fb::Frame<'a>, WireError> {
    if frame.len() as u64 > u64::from(l.max_frame_bytes) {
        return Err(WireError::FrameTooLarge {
            len: frame.len() as u64,
            max: l.max_frame_bytes,
        });
    }
    // Root offset + file identifier.
    if frame.len() < 8 {
        return Err(malformed(format!(
            "{} bytes is too short for a flatbuffer",
            frame.len()
        )));
    }
    if !fb::frame_buffer_has_identifier(frame) {
        return Err(malformed(format!(
            "file identifier is {:?}, expected {:?}",
            String::from_utf8_lossy(&frame[4..8]),
            fb::FRAME_IDENTIFIER
        )));
    }
    let opts = flatbuffers::VerifierOptions {
        max_depth: l.max_depth,
        max_tables: l.max_tables,
        max_apparent_size: frame.len().saturating_mul(APPARENT_SIZE_FACTOR),
        ignore_missing_null_terminator: false,
    };
    fb::root_as_frame_with_opts(&opts, frame).map_err(|e| malformed(e.to_string()))
}

/// The error for a body that is not one of the decoding side's variants.
fn foreign_body(t: fb::Body) -> WireError {
    match t.variant_name() {
        _ if t == fb::Body::NONE => malformed("frame has no body"),
        Some(name) => WireError::UnexpectedFrame(name),
        None => WireError::UnknownFrameType(t.0),
    }
}

/// The typed view of the body; always `Some` once the verifier accepted the body type.
fn body<T>(b: Option<T>) -> Result<T, WireError> {
    b.ok_or_else(|| malformed("body does not match its type"))
}

fn bounded(field: &'static str, s: &str, max: usize) -> Result<String, WireError> {
    if s.len() > max {
        return Err(malformed(format!(
            "{field} is {} bytes, longer than {max}",
            s.len()
        )));
    }
    Ok(s.to_owned())
}

/// An id field: at most [`MAX_ID_LEN`] bytes. Its characters are validated by the node, which
/// answers `InvalidArgument` instead of dropping the connection.
fn id(field: &'static str, s: &str) -> Result<String, WireError> {
    bounded(field, s, MAX_ID_LEN)
}

fn text(field: &'static str, s: Option<&str>, l: &DecodeLimits) -> Result<String, WireError> {
    bounded(field, s.unwrap_or(""), l.max_string_bytes as usize)
}

fn list_len(field: &'static str, len: usize, l: &DecodeLimits) -> Result<(), WireError> {
    if len as u64 > u64::from(l.max_list_len) {
        return Err(malformed(format!(
            "{field} has {len} entries, more than {}",
            l.max_list_len
        )));
    }
    Ok(())
}

fn lane(l: fb::Lane) -> Result<Lane, WireError> {
    match l {
        fb::Lane::Normal => Ok(Lane::Normal),
        fb::Lane::High => Ok(Lane::High),
        fb::Lane::Low => Ok(Lane::Low),
        other => Err(malformed(format!("unknown lane {}", other.0))),
    }
}

fn presence(s: fb::PresenceState) -> Result<PresenceState, WireError> {
    match s {
        fb::PresenceState::Foreground => Ok(PresenceState::Foreground),
        fb::PresenceState::Background => Ok(PresenceState::Background),
        other => Err(malformed(format!("unknown presence state {}", other.0))),
    }
}

fn receipt(k: fb::ReceiptKind) -> Result<ReceiptKind, WireError> {
    match k {
        fb::ReceiptKind::Delivered => Ok(ReceiptKind::Delivered),
        fb::ReceiptKind::Read => Ok(ReceiptKind::Read),
        other => Err(malformed(format!("unknown receipt kind {}", other.0))),
    }
}

fn cursors(
    field: &'static str,
    v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::GroupCursor<'_>>>>,
    l: &DecodeLimits,
) -> Result<Vec<GroupCursor>, WireError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    list_len(field, v.len(), l)?;
    v.iter()
        .map(|c| {
            Ok(GroupCursor {
                group: id("cursor group", c.group())?,
                seq: c.seq(),
            })
        })
        .collect()
}

fn message(m: fb::Message<'_>) -> Result<Message, WireError> {
    Ok(Message {
        group: id("group", m.group())?,
        seq: m.seq(),
        sender: id("sender", m.sender())?,
        client_msg_id: id("client_msg_id", m.client_msg_id())?,
        sent_at_ms: m.sent_at_ms(),
        body: Bytes::copy_from_slice(m.body().bytes()),
        lane: lane(m.lane())?,
    })
}

/// Decodes a frame a client sent (`frame` excludes the length prefix).
pub fn decode_client(frame: &[u8], l: &DecodeLimits) -> Result<ClientFrame, WireError> {
    let root = verify(frame, l)?;
    Ok(match root.body_type() {
        fb::Body::Hello => {
            let h = body(root.body_as_hello())?;
            ClientFrame::Hello(Hello {
                token: bounded("token", h.token(), MAX_TOKEN_LEN)?,
                presence: presence(h.presence())?,
                cursors: cursors("cursors", h.cursors(), l)?,
                client: text("client", h.client(), l)?,
            })
        }
        fb::Body::Join => {
            let j = body(root.body_as_join())?;
            ClientFrame::Join {
                request_id: j.request_id(),
                group: id("group", j.group())?,
            }
        }
        fb::Body::Leave => {
            let j = body(root.body_as_leave())?;
            ClientFrame::Leave {
                request_id: j.request_id(),
                group: id("group", j.group())?,
            }
        }
        fb::Body::Send => {
            let s = body(root.body_as_send())?;
            ClientFrame::Send {
                request_id: s.request_id(),
                group: id("group", s.group())?,
                client_msg_id: id("client_msg_id", s.client_msg_id())?,
                // The payload limit is the node's (a per-request PayloadTooLarge); the frame
                // limit already bounds the copy.
                body: Bytes::copy_from_slice(s.body().bytes()),
            }
        }
        fb::Body::Fetch => {
            let f = body(root.body_as_fetch())?;
            ClientFrame::Fetch {
                request_id: f.request_id(),
                group: id("group", f.group())?,
                after_seq: f.after_seq(),
                limit: f.limit(),
            }
        }
        fb::Body::AckDelivery => {
            let a = body(root.body_as_ack_delivery())?;
            ClientFrame::AckDelivery {
                group: id("group", a.group())?,
                seq: a.seq(),
            }
        }
        fb::Body::Receipt => {
            let r = body(root.body_as_receipt())?;
            ClientFrame::Receipt {
                group: id("group", r.group())?,
                seq: r.seq(),
                kind: receipt(r.kind())?,
            }
        }
        fb::Body::Presence => {
            let p = body(root.body_as_presence())?;
            ClientFrame::Presence {
                state: presence(p.state())?,
            }
        }
        fb::Body::Ping => {
            let p = body(root.body_as_ping())?;
            ClientFrame::Ping {
                request_id: p.request_id(),
            }
        }
        other => return Err(foreign_body(other)),
    })
}

/// Decodes a frame a server sent (`frame` excludes the length prefix).
pub fn decode_server(frame: &[u8], l: &DecodeLimits) -> Result<ServerFrame, WireError> {
    let root = verify(frame, l)?;
    Ok(match root.body_type() {
        fb::Body::Welcome => {
            let w = body(root.body_as_welcome())?;
            ServerFrame::Welcome {
                session_id: w.session_id(),
                tenant: id("tenant", w.tenant())?,
                user: id("user", w.user())?,
                server_time_ms: w.server_time_ms(),
                max_payload_bytes: w.max_payload_bytes(),
                groups: cursors("groups", w.groups(), l)?,
                resume: cursors("resume", w.resume(), l)?,
            }
        }
        fb::Body::Joined => {
            let j = body(root.body_as_joined())?;
            ServerFrame::Joined {
                request_id: j.request_id(),
                group: id("group", j.group())?,
                head_seq: j.head_seq(),
            }
        }
        fb::Body::Left => {
            let j = body(root.body_as_left())?;
            ServerFrame::Left {
                request_id: j.request_id(),
                group: id("group", j.group())?,
            }
        }
        fb::Body::Ack => {
            let a = body(root.body_as_ack())?;
            ServerFrame::Ack {
                request_id: a.request_id(),
                group: id("group", a.group())?,
                client_msg_id: id("client_msg_id", a.client_msg_id())?,
                seq: a.seq(),
                duplicate: a.duplicate(),
            }
        }
        fb::Body::Deliver => {
            let d = body(root.body_as_deliver())?;
            ServerFrame::Deliver(message(d.message())?)
        }
        fb::Body::FetchResult => {
            let f = body(root.body_as_fetch_result())?;
            let messages = match f.messages() {
                None => Vec::new(),
                Some(v) => {
                    list_len("messages", v.len(), l)?;
                    v.iter().map(message).collect::<Result<_, _>>()?
                }
            };
            ServerFrame::FetchResult {
                request_id: f.request_id(),
                group: id("group", f.group())?,
                messages,
                head_seq: f.head_seq(),
            }
        }
        fb::Body::ReceiptNotice => {
            let r = body(root.body_as_receipt_notice())?;
            ServerFrame::ReceiptNotice {
                group: id("group", r.group())?,
                seq: r.seq(),
                user: id("user", r.user())?,
                kind: receipt(r.kind())?,
            }
        }
        fb::Body::PresenceNotice => {
            let p = body(root.body_as_presence_notice())?;
            ServerFrame::PresenceNotice {
                user: id("user", p.user())?,
                state: presence(p.state())?,
                online: p.online(),
            }
        }
        fb::Body::Pong => {
            let p = body(root.body_as_pong())?;
            ServerFrame::Pong {
                request_id: p.request_id(),
            }
        }
        fb::Body::Flags => {
            let f = body(root.body_as_flags())?;
            let flags = match f.flags() {
                None => Vec::new(),
                Some(v) => {
                    list_len("flags", v.len(), l)?;
                    v.iter()
                        .map(|f| {
                            Ok(Flag {
                                name: id("flag name", f.name())?,
                                enabled: f.enabled(),
                            })
                        })
                        .collect::<Result<_, WireError>>()?
                }
            };
            ServerFrame::Flags { flags }
        }
        fb::Body::Resume => {
            let r = body(root.body_as_resume())?;
            ServerFrame::Resume {
                group: id("group", r.group())?,
                after_seq: r.after_seq(),
            }
        }
        fb::Body::ReceiptSummary => {
            let r = body(root.body_as_receipt_summary())?;
            ServerFrame::ReceiptSummary {
                group: id("group", r.group())?,
                seq: r.seq(),
                delivered: r.delivered(),
                read: r.read(),
                members: r.members(),
            }
        }
        fb::Body::Nudge => {
            let n = body(root.body_as_nudge())?;
            ServerFrame::Nudge {
                group: id("group", n.group())?,
                head_seq: n.head_seq(),
            }
        }
        fb::Body::Error => {
            let e = body(root.body_as_error())?;
            ServerFrame::Error(ErrorFrame {
                request_id: e.request_id(),
                code: e.code(),
                message: text("message", e.message(), l)?,
                retry_after_ms: e.retry_after_ms(),
            })
        }
        other => return Err(foreign_body(other)),
    })
}
