// switchboard/1 frames as plain objects, encoded and decoded with the flatc-generated code in
// `generated/` (docs/protocol.md §2 and §7). A frame on a stream is a u32 big-endian length
// followed by a flatbuffer whose root is `Frame`, file identifier "SB01".

import * as flatbuffers from "flatbuffers";

import { ProtocolError } from "./errors.js";

import {
  Ack,
  AckDelivery,
  Body,
  Deliver,
  Error as ErrorFrame,
  Fetch,
  FetchResult,
  Flags,
  Frame,
  GroupCursor,
  Hello,
  Join,
  Joined,
  Lane,
  Leave,
  Left,
  Message as MessageTable,
  Nudge,
  Ping,
  Pong,
  Presence,
  PresenceNotice,
  PresenceState,
  Receipt,
  ReceiptKind,
  ReceiptNotice,
  ReceiptSummary,
  Resume,
  Send,
  Welcome,
} from "./generated/switchboard/wire.js";

export { Lane, PresenceState, ReceiptKind };

/** `(group, seq)`: everything of `group` up to and including `seq`. */
export interface Cursor {
  group: string;
  seq: bigint;
}

/** A group message as delivered. */
export interface Message {
  group: string;
  seq: bigint;
  sender: string;
  clientMsgId: string;
  sentAtMs: bigint;
  body: Uint8Array;
  /** The lane the tenant's policy chose (informational; docs/protocol.md §7). */
  lane: Lane;
}

/** One feature flag of the user, as the tenant's policy evaluates it. */
export interface Flag {
  name: string;
  enabled: boolean;
}

/** What a client sends. */
export type ClientFrame =
  | { type: "hello"; token: string; presence: PresenceState; cursors: Cursor[]; client: string }
  | { type: "join"; requestId: bigint; group: string }
  | { type: "leave"; requestId: bigint; group: string }
  | { type: "send"; requestId: bigint; group: string; clientMsgId: string; body: Uint8Array }
  | { type: "ackDelivery"; group: string; seq: bigint }
  | { type: "fetch"; requestId: bigint; group: string; afterSeq: bigint; limit: number }
  | { type: "receipt"; group: string; seq: bigint; kind: ReceiptKind }
  | { type: "presence"; state: PresenceState }
  | { type: "ping"; requestId: bigint };

/** What a server sends, as far as this SDK uses it; other frames decode as `other`. */
export type ServerFrame =
  | {
      type: "welcome";
      sessionId: bigint;
      tenant: string;
      user: string;
      maxPayloadBytes: number;
      groups: Cursor[];
      resume: Cursor[];
    }
  | { type: "joined"; requestId: bigint; group: string; headSeq: bigint }
  | { type: "left"; requestId: bigint; group: string }
  | {
      type: "ack";
      requestId: bigint;
      group: string;
      clientMsgId: string;
      seq: bigint;
      duplicate: boolean;
    }
  | { type: "deliver"; message: Message }
  | { type: "resume"; group: string; afterSeq: bigint }
  | {
      type: "fetchResult";
      requestId: bigint;
      group: string;
      messages: Message[];
      headSeq: bigint;
    }
  | { type: "pong"; requestId: bigint }
  | { type: "error"; requestId: bigint; code: number; message: string; retryAfterMs: number }
  | { type: "presence"; user: string; state: PresenceState; online: boolean }
  | { type: "receipt"; group: string; seq: bigint; user: string; kind: ReceiptKind }
  | {
      type: "receiptSummary";
      group: string;
      seq: bigint;
      delivered: number;
      read: number;
      members: number;
    }
  | { type: "nudge"; group: string; headSeq: bigint }
  | { type: "flags"; flags: Flag[] }
  | { type: "other"; body: Body };

/** A frame's length prefix, in bytes. */
export const LEN_PREFIX = 4;

/** Encodes `f` with its length prefix, ready for a stream. */
export function encodeClient(f: ClientFrame): Uint8Array {
  const b = new flatbuffers.Builder(256);
  let type: Body;
  let body: flatbuffers.Offset;
  switch (f.type) {
    case "hello": {
      const token = b.createString(f.token);
      const cursors = f.cursors.map((c) => {
        const g = b.createString(c.group);
        return GroupCursor.createGroupCursor(b, g, c.seq);
      });
      const list = Hello.createCursorsVector(b, cursors);
      const client = b.createString(f.client);
      body = Hello.createHello(b, token, f.presence, list, client);
      type = Body.Hello;
      break;
    }
    case "join": {
      const g = b.createString(f.group);
      body = Join.createJoin(b, f.requestId, g);
      type = Body.Join;
      break;
    }
    case "leave": {
      const g = b.createString(f.group);
      body = Leave.createLeave(b, f.requestId, g);
      type = Body.Leave;
      break;
    }
    case "send": {
      const g = b.createString(f.group);
      const id = b.createString(f.clientMsgId);
      const bytes = Send.createBodyVector(b, f.body);
      body = Send.createSend(b, f.requestId, g, id, bytes);
      type = Body.Send;
      break;
    }
    case "ackDelivery": {
      const g = b.createString(f.group);
      body = AckDelivery.createAckDelivery(b, g, f.seq);
      type = Body.AckDelivery;
      break;
    }
    case "fetch": {
      const g = b.createString(f.group);
      body = Fetch.createFetch(b, f.requestId, g, f.afterSeq, f.limit);
      type = Body.Fetch;
      break;
    }
    case "receipt": {
      const g = b.createString(f.group);
      body = Receipt.createReceipt(b, g, f.seq, f.kind);
      type = Body.Receipt;
      break;
    }
    case "presence":
      body = Presence.createPresence(b, f.state);
      type = Body.Presence;
      break;
    case "ping":
      body = Ping.createPing(b, f.requestId);
      type = Body.Ping;
      break;
  }
  const root = Frame.createFrame(b, type, body);
  Frame.finishFrameBuffer(b, root);
  const fb = b.asUint8Array();
  const out = new Uint8Array(LEN_PREFIX + fb.length);
  new DataView(out.buffer).setUint32(0, fb.length, false);
  out.set(fb, LEN_PREFIX);
  return out;
}

function cursors(n: number, at: (i: number) => GroupCursor | null): Cursor[] {
  const out: Cursor[] = [];
  for (let i = 0; i < n; i++) {
    const c = at(i);
    if (c) out.push({ group: c.group() ?? "", seq: c.seq() });
  }
  return out;
}

function message(m: MessageTable): Message {
  return {
    group: m.group() ?? "",
    seq: m.seq(),
    sender: m.sender() ?? "",
    clientMsgId: m.clientMsgId() ?? "",
    sentAtMs: m.sentAtMs(),
    // Copied: the frame's buffer is not kept.
    body: m.bodyArray()?.slice() ?? new Uint8Array(),
    lane: m.lane(),
  };
}

/** Why a frame from the node could not be decoded (the session is then closed). */
export class DecodeError extends ProtocolError {
  override name = "DecodeError";
}

/** Decodes one frame (without its length prefix). */
export function decodeServer(bytes: Uint8Array): ServerFrame {
  const bb = new flatbuffers.ByteBuffer(bytes);
  if (!Frame.bufferHasIdentifier(bb)) {
    throw new DecodeError("not a switchboard/1 frame (file identifier)");
  }
  const frame = Frame.getRootAsFrame(bb);
  const type = frame.bodyType();
  switch (type) {
    case Body.Welcome: {
      const w: Welcome = frame.body(new Welcome());
      return {
        type: "welcome",
        sessionId: w.sessionId(),
        tenant: w.tenant() ?? "",
        user: w.user() ?? "",
        maxPayloadBytes: w.maxPayloadBytes(),
        groups: cursors(w.groupsLength(), (i) => w.groups(i)),
        resume: cursors(w.resumeLength(), (i) => w.resume(i)),
      };
    }
    case Body.Joined: {
      const j: Joined = frame.body(new Joined());
      return { type: "joined", requestId: j.requestId(), group: j.group() ?? "", headSeq: j.headSeq() };
    }
    case Body.Left: {
      const l: Left = frame.body(new Left());
      return { type: "left", requestId: l.requestId(), group: l.group() ?? "" };
    }
    case Body.Ack: {
      const a: Ack = frame.body(new Ack());
      return {
        type: "ack",
        requestId: a.requestId(),
        group: a.group() ?? "",
        clientMsgId: a.clientMsgId() ?? "",
        seq: a.seq(),
        duplicate: a.duplicate(),
      };
    }
    case Body.Deliver: {
      const d: Deliver = frame.body(new Deliver());
      const m = d.message();
      if (!m) throw new DecodeError("Deliver without its message");
      return { type: "deliver", message: message(m) };
    }
    case Body.Resume: {
      const r: Resume = frame.body(new Resume());
      return { type: "resume", group: r.group() ?? "", afterSeq: r.afterSeq() };
    }
    case Body.FetchResult: {
      const r: FetchResult = frame.body(new FetchResult());
      const messages: Message[] = [];
      for (let i = 0; i < r.messagesLength(); i++) {
        const m = r.messages(i);
        if (m) messages.push(message(m));
      }
      return {
        type: "fetchResult",
        requestId: r.requestId(),
        group: r.group() ?? "",
        messages,
        headSeq: r.headSeq(),
      };
    }
    case Body.Pong: {
      const p: Pong = frame.body(new Pong());
      return { type: "pong", requestId: p.requestId() };
    }
    case Body.Error: {
      const e: ErrorFrame = frame.body(new ErrorFrame());
      return {
        type: "error",
        requestId: e.requestId(),
        code: e.code(),
        message: e.message() ?? "",
        retryAfterMs: e.retryAfterMs(),
      };
    }
    case Body.PresenceNotice: {
      const p: PresenceNotice = frame.body(new PresenceNotice());
      return { type: "presence", user: p.user() ?? "", state: p.state(), online: p.online() };
    }
    case Body.ReceiptNotice: {
      const r: ReceiptNotice = frame.body(new ReceiptNotice());
      return {
        type: "receipt",
        group: r.group() ?? "",
        seq: r.seq(),
        user: r.user() ?? "",
        kind: r.kind(),
      };
    }
    case Body.ReceiptSummary: {
      const r: ReceiptSummary = frame.body(new ReceiptSummary());
      return {
        type: "receiptSummary",
        group: r.group() ?? "",
        seq: r.seq(),
        delivered: r.delivered(),
        read: r.read(),
        members: r.members(),
      };
    }
    case Body.Nudge: {
      const n: Nudge = frame.body(new Nudge());
      return { type: "nudge", group: n.group() ?? "", headSeq: n.headSeq() };
    }
    case Body.Flags: {
      const f: Flags = frame.body(new Flags());
      const flags: Flag[] = [];
      for (let i = 0; i < f.flagsLength(); i++) {
        const flag = f.flags(i);
        if (flag) flags.push({ name: flag.name() ?? "", enabled: flag.enabled() });
      }
      return { type: "flags", flags };
    }
    default:
      return { type: "other", body: type };
  }
}

/**
 * Splits a byte stream into frames: feed it chunks as they arrive, take whole frames out.
 * Refuses a frame longer than `maxFrameBytes` as soon as its prefix is read, so a broken or
 * hostile peer cannot make it buffer without bound.
 */
export class FrameReader {
  private buf = new Uint8Array(0);

  constructor(private readonly maxFrameBytes: number) {}

  push(chunk: Uint8Array): void {
    if (this.buf.length === 0) {
      this.buf = chunk.slice();
      return;
    }
    const next = new Uint8Array(this.buf.length + chunk.length);
    next.set(this.buf);
    next.set(chunk, this.buf.length);
    this.buf = next;
  }

  /** The next whole frame (without its prefix), or null until more bytes arrive. */
  next(): Uint8Array | null {
    if (this.buf.length < LEN_PREFIX) return null;
    const n = new DataView(this.buf.buffer, this.buf.byteOffset, LEN_PREFIX).getUint32(0, false);
    if (n > this.maxFrameBytes) {
      throw new DecodeError(`frame of ${n} bytes is over the ${this.maxFrameBytes}-byte limit`);
    }
    if (this.buf.length < LEN_PREFIX + n) return null;
    const frame = this.buf.slice(LEN_PREFIX, LEN_PREFIX + n);
    this.buf = this.buf.subarray(LEN_PREFIX + n);
    return frame;
  }

  /** Whether bytes of an unfinished frame are buffered (a stream ending now was cut short). */
  get partial(): boolean {
    return this.buf.length > 0;
  }
}
