// A stand-in for the browser's WebTransport and a node behind it, for the client's unit tests
// under Node.js: `installFakeWebTransport()` puts a `WebTransport` class on globalThis whose
// sessions a test drives frame by frame (decoded client frames in, server frames out). The
// real transport and node are exercised by the browser test (host/switchboard/tests/web_chat.rs).

import * as flatbuffers from "flatbuffers";

import {
  Ack,
  AckDelivery,
  Body,
  Deliver,
  Error as ErrorFrame,
  Fetch,
  FetchResult,
  Flag,
  Flags,
  Frame,
  GroupCursor,
  Hello,
  Join,
  Joined,
  Leave,
  Left,
  Message,
  Nudge,
  Ping,
  Pong,
  Presence,
  PresenceNotice,
  Receipt,
  ReceiptNotice,
  ReceiptSummary,
  Resume,
  Send,
  Welcome,
} from "../dist/generated/switchboard/wire.js";
import { FrameReader } from "../dist/index.js";

/** A client frame as a plain object (what the test asserts on). */
function decodeClient(bytes) {
  const frame = Frame.getRootAsFrame(new flatbuffers.ByteBuffer(bytes));
  switch (frame.bodyType()) {
    case Body.Hello: {
      const h = frame.body(new Hello());
      const cursors = [];
      for (let i = 0; i < h.cursorsLength(); i++) {
        const c = h.cursors(i);
        cursors.push({ group: c.group(), seq: c.seq() });
      }
      return { type: "hello", token: h.token(), presence: h.presence(), cursors, client: h.client() };
    }
    case Body.Join: {
      const j = frame.body(new Join());
      return { type: "join", requestId: j.requestId(), group: j.group() };
    }
    case Body.Leave: {
      const l = frame.body(new Leave());
      return { type: "leave", requestId: l.requestId(), group: l.group() };
    }
    case Body.Send: {
      const s = frame.body(new Send());
      return {
        type: "send",
        requestId: s.requestId(),
        group: s.group(),
        clientMsgId: s.clientMsgId(),
        body: s.bodyArray()?.slice() ?? new Uint8Array(),
      };
    }
    case Body.Fetch: {
      const f = frame.body(new Fetch());
      return {
        type: "fetch",
        requestId: f.requestId(),
        group: f.group(),
        afterSeq: f.afterSeq(),
        limit: f.limit(),
      };
    }
    case Body.Receipt: {
      const r = frame.body(new Receipt());
      return { type: "receipt", group: r.group(), seq: r.seq(), kind: r.kind() };
    }
    case Body.Presence:
      return { type: "presence", state: frame.body(new Presence()).state() };
    case Body.AckDelivery: {
      const a = frame.body(new AckDelivery());
      return { type: "ackDelivery", group: a.group(), seq: a.seq() };
    }
    case Body.Ping:
      return { type: "ping", requestId: frame.body(new Ping()).requestId() };
    default:
      throw new Error(`the fake node cannot decode body type ${frame.bodyType()}`);
  }
}

function message(b, m) {
  const group = b.createString(m.group);
  const sender = b.createString(m.sender ?? "bob");
  const id = b.createString(m.clientMsgId ?? `m${m.seq}`);
  const body = Message.createBodyVector(b, m.body ?? new TextEncoder().encode(`#${m.seq}`));
  return Message.createMessage(b, group, m.seq, sender, id, m.sentAtMs ?? 0n, body, m.lane ?? 0);
}

function cursorList(b, list, create) {
  return create(
    b,
    list.map((c) => GroupCursor.createGroupCursor(b, b.createString(c.group), c.seq)),
  );
}

/** Encodes a server frame (with its length prefix) from a plain object. */
export function encodeServer(f) {
  const b = new flatbuffers.Builder(256);
  let type;
  let body;
  switch (f.type) {
    case "welcome":
      body = Welcome.createWelcome(
        b,
        f.sessionId ?? 1n,
        b.createString(f.tenant ?? "acme"),
        b.createString(f.user ?? "alice"),
        0n,
        f.maxPayloadBytes ?? 65536,
        cursorList(b, f.groups ?? [], Welcome.createGroupsVector),
        cursorList(b, f.resume ?? [], Welcome.createResumeVector),
      );
      type = Body.Welcome;
      break;
    case "joined":
      body = Joined.createJoined(b, f.requestId, b.createString(f.group), f.headSeq);
      type = Body.Joined;
      break;
    case "left":
      body = Left.createLeft(b, f.requestId, b.createString(f.group));
      type = Body.Left;
      break;
    case "ack":
      body = Ack.createAck(
        b,
        f.requestId,
        b.createString(f.group),
        b.createString(f.clientMsgId),
        f.seq,
        f.duplicate ?? false,
      );
      type = Body.Ack;
      break;
    case "fetchResult": {
      const list = FetchResult.createMessagesVector(
        b,
        f.messages.map((m) => message(b, m)),
      );
      body = FetchResult.createFetchResult(b, f.requestId, b.createString(f.group), list, f.headSeq);
      type = Body.FetchResult;
      break;
    }
    case "error":
      body = ErrorFrame.createError(
        b,
        f.requestId ?? 0n,
        f.code,
        b.createString(f.message ?? "refused"),
        f.retryAfterMs ?? 0,
      );
      type = Body.Error;
      break;
    case "pong":
      body = Pong.createPong(b, f.requestId);
      type = Body.Pong;
      break;
    case "deliver":
      body = Deliver.createDeliver(b, message(b, f.message));
      type = Body.Deliver;
      break;
    case "resume":
      body = Resume.createResume(b, b.createString(f.group), f.afterSeq);
      type = Body.Resume;
      break;
    case "presence":
      body = PresenceNotice.createPresenceNotice(b, b.createString(f.user), f.state, f.online ?? true);
      type = Body.PresenceNotice;
      break;
    case "receipt":
      body = ReceiptNotice.createReceiptNotice(
        b,
        b.createString(f.group),
        f.seq,
        b.createString(f.user),
        f.kind,
      );
      type = Body.ReceiptNotice;
      break;
    case "receiptSummary":
      body = ReceiptSummary.createReceiptSummary(
        b,
        b.createString(f.group),
        f.seq,
        f.delivered,
        f.read,
        f.members,
      );
      type = Body.ReceiptSummary;
      break;
    case "nudge":
      body = Nudge.createNudge(b, b.createString(f.group), f.headSeq);
      type = Body.Nudge;
      break;
    case "flags": {
      const flags = f.flags.map((x) => Flag.createFlag(b, b.createString(x.name), x.enabled));
      body = Flags.createFlags(b, Flags.createFlagsVector(b, flags));
      type = Body.Flags;
      break;
    }
    default:
      throw new Error(`the fake node cannot encode ${f.type}`);
  }
  Frame.finishFrameBuffer(b, Frame.createFrame(b, type, body));
  const fb = b.asUint8Array();
  const out = new Uint8Array(4 + fb.length);
  new DataView(out.buffer).setUint32(0, fb.length, false);
  out.set(fb, 4);
  return out;
}

/** Resolves when `cond()` is true (checked after each macrotask), or rejects after 2 s. */
export async function until(cond, what = "condition") {
  const deadline = Date.now() + 2000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** The node's side of one WebTransport session. */
export class FakeSession {
  constructor(transport) {
    this.transport = transport;
    /** Every client frame received on the control stream, in order. */
    this.received = [];
    this.closedByClient = false;
    let closed;
    transport.closed = new Promise((resolve) => {
      closed = resolve;
    });
    this.finish = closed;
    let pushes;
    transport.incomingUnidirectionalStreams = new ReadableStream({
      start: (c) => {
        pushes = c;
      },
    });
    this.pushStreams = pushes;
    const reader = new FrameReader(1 << 20);
    let control;
    const readable = new ReadableStream({
      start: (c) => {
        control = c;
      },
    });
    this.control = control;
    const writable = new WritableStream({
      write: (chunk) => {
        reader.push(chunk);
        for (let f = reader.next(); f; f = reader.next()) this.received.push(decodeClient(f));
      },
    });
    this.bidi = { readable, writable };
    this.push = undefined;
  }

  /** Client frames of `type` received so far. */
  frames(type) {
    return this.received.filter((f) => f.type === type);
  }

  /** Waits for the `n`-th (1-based) client frame of `type` and returns it. */
  async next(type, n = 1) {
    await until(() => this.frames(type).length >= n, `client frame ${type} #${n}`);
    return this.frames(type)[n - 1];
  }

  /** Answers on the control stream. */
  reply(f) {
    this.control.enqueue(encodeServer(f));
  }

  /** Sends on the (single) push stream, opening it on first use. */
  pushFrame(f) {
    if (!this.push) {
      let c;
      this.pushStreams.enqueue(
        new ReadableStream({
          start: (ctl) => {
            c = ctl;
          },
        }),
      );
      this.push = c;
    }
    this.push.enqueue(encodeServer(f));
  }

  /** Ends the session from the node's side (the client reconnects). */
  drop() {
    this.finish();
  }
}

/**
 * Installs the fake `WebTransport`; returns the list of sessions the client opened (each a
 * {@link FakeSession}), newest last.
 */
export function installFakeWebTransport() {
  const sessions = [];
  globalThis.WebTransport = class {
    constructor(url, options) {
      this.url = url;
      this.options = options;
      this.ready = Promise.resolve();
      this.session = new FakeSession(this);
      sessions.push(this.session);
    }

    async createBidirectionalStream() {
      return this.session.bidi;
    }

    close() {
      this.session.closedByClient = true;
      this.session.finish();
    }
  };
  return sessions;
}
