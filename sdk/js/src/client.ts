// The browser client: one switchboard/1 session over WebTransport at a time, reconnected with
// backoff when it drops, resumed from the cursors so the app gets exactly what it missed, with
// unacknowledged sends re-sent under their client message ids (the node dedupes them).
// The same calls as the Rust SDK (`sdk/client/src/client.rs`): join, leave, send, fetch,
// receipts, presence, ping.
//
// Streams as in docs/protocol.md §17: the control stream is a bidirectional WebTransport
// stream the client opens; the node's push streams arrive as unidirectional ones.

import {
  type ClientFrame,
  type Cursor,
  type Flag,
  type Message,
  type ServerFrame,
  FrameReader,
  PresenceState,
  ReceiptKind,
  decodeServer,
  encodeClient,
} from "./frames.js";
import {
  ClientClosed,
  ClientError,
  ConnectionLost,
  ErrorCode,
  InvalidArgument,
  PayloadTooLarge,
  ProtocolError,
  SwitchboardError,
  Timeout,
  TooManyRequests,
} from "./errors.js";
import { DeliveryTracker } from "./tracker.js";

/** Where the client keeps its cursors between page loads (see {@link webStorageCursors}). */
export interface CursorStore {
  load(): Cursor[];
  save(cursors: Cursor[]): void;
}

/**
 * Cursors in a Web Storage (`localStorage`) entry, so a reloaded page resumes where the last
 * one stopped instead of from the node's stored cursor (which every device of the user
 * shares).
 */
export function webStorageCursors(storage: Storage, key: string): CursorStore {
  return {
    load(): Cursor[] {
      const raw = storage.getItem(key);
      if (!raw) return [];
      try {
        const parsed = JSON.parse(raw) as Record<string, string>;
        return Object.entries(parsed).map(([group, seq]) => ({ group, seq: BigInt(seq) }));
      } catch {
        return [];
      }
    },
    save(cursors: Cursor[]): void {
      const out: Record<string, string> = {};
      for (const c of cursors) out[c.group] = c.seq.toString();
      storage.setItem(key, JSON.stringify(out));
    },
  };
}

/** Delays between reconnect attempts: attempt n waits a random time in [c/2, c], where
 * c = min(initialBackoffMs · 2^(n−1), maxBackoffMs) (equal jitter, as the Rust SDK). */
export interface ReconnectPolicy {
  initialBackoffMs: number;
  maxBackoffMs: number;
  /** Give up after this many failed attempts in a row (undefined: never). */
  maxAttempts?: number;
}

export interface ClientOptions {
  /** `https://HOST:PORT/switchboard/1`. */
  url: string;
  token: string;
  /** SHA-256 (hex) of a dev certificate the browser should accept by hash. */
  serverCertificateHashes?: string[];
  cursors?: CursorStore;
  reconnect?: Partial<ReconnectPolicy>;
  /** Presence announced in the first `Hello` (default foreground); see `setPresence`. */
  presence?: PresenceState;
  /** Longest a request (join, leave, send, fetch, ping) may take, waiting for a reconnect
   * included; then it rejects with `Timeout` and is forgotten (default 30 s). */
  requestTimeoutMs?: number;
  /** Acknowledge each message to the node once `onMessage` returned (default true). Off:
   * call `ackDelivery` when the app has processed it. */
  autoAck?: boolean;
  /** How long delivery acks wait to be coalesced, one per group (default 200 ms, as the
   * Rust SDK): the node stores a cursor per ack, so acking each message would cost it a
   * write per delivery. `close()` sends what is waiting. */
  ackDelayMs?: number;
  /** Largest frame accepted from the node (default 1 MiB; the node's default is 128 KiB). */
  maxFrameBytes?: number;
  /** Requests (sends, joins, fetches, pings) waiting for an answer at once (default 1024). */
  maxPendingRequests?: number;
  /** Named in the node's logs. */
  clientName?: string;
}

export type ClientState = "connecting" | "connected" | "reconnecting" | "closed";

/** What the node said when a session opened. */
export interface Welcome {
  sessionId: bigint;
  tenant: string;
  user: string;
  maxPayloadBytes: number;
  /** Every group the user belongs to, with its newest seq. */
  groups: Cursor[];
}

export interface SendAck {
  group: string;
  seq: bigint;
  clientMsgId: string;
  /** The node had this client message id already (a resend): not stored or delivered again. */
  duplicate: boolean;
}

/** A page of a group's log (`fetch`). */
export interface FetchResult {
  /** Messages with `seq > afterSeq`, in order: at most `limit`, and at most what fits one
   * frame (docs/protocol.md §9), so a short page is not by itself the end. */
  messages: Message[];
  /** The group's newest seq when the page was read. */
  headSeq: bigint;
}

/** Someone sent a receipt for one of your messages. */
export interface Receipt {
  group: string;
  seq: bigint;
  /** Who sent the receipt. */
  user: string;
  kind: ReceiptKind;
}

/** The aggregated receipts of one of your messages ("read by 37 of 120"), when the tenant's
 * policy aggregates receipts instead of forwarding each. */
export interface ReceiptSummary {
  group: string;
  seq: bigint;
  delivered: number;
  read: number;
  members: number;
}

/** A co-member's presence: after each connect one per connected co-member (the node's
 * snapshot), then on each change, its arrival and its leaving (`online` false, `state`
 * `Background`, once its last connection closed). */
export interface Presence {
  user: string;
  state: PresenceState;
  /** False once the user's last connection closed. */
  online: boolean;
}

/** `group` has messages up to `headSeq` that were not sent to this background client: they
 * come when it is foreground again, or fetch them now. */
export interface Nudge {
  group: string;
  headSeq: bigint;
}

interface Pending {
  frame: ClientFrame;
  resolve: (f: ServerFrame) => void;
  reject: (e: ClientError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** One WebTransport session and its streams. */
interface Session {
  transport: WebTransport;
  writer: WritableStreamDefaultWriter<Uint8Array>;
  welcome?: Welcome;
}

const DEFAULT_RECONNECT: ReconnectPolicy = { initialBackoffMs: 250, maxBackoffMs: 30_000 };
/** Receipts kept while disconnected, sent after the reconnect; older ones are dropped first
 * (receipts are cheap to lose). The Rust SDK's bound. */
export const MAX_QUEUED_RECEIPTS = 1024;
/** Largest u64 (seqs) and u32 (fetch limits). */
const U64_MAX = (1n << 64n) - 1n;
const U32_MAX = 0xffff_ffff;
/** A fetch page's default size: the node's `max_fetch_messages`. */
const DEFAULT_PAGE = 256;

function closeQuietly(t: WebTransport, info?: WebTransportCloseInfo): void {
  try {
    t.close(info);
  } catch {
    // Already closed.
  }
}

function hexToBytes(hex: string): Uint8Array<ArrayBuffer> {
  const clean = hex.replace(/[^0-9a-fA-F]/g, "");
  const out = new Uint8Array(new ArrayBuffer(clean.length / 2));
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function asClientError(e: unknown): ClientError {
  return e instanceof ClientError ? e : new ConnectionLost(String(e));
}

function checkSeq(seq: bigint, what: string): void {
  if (typeof seq !== "bigint" || seq < 0n || seq > U64_MAX) {
    throw new InvalidArgument(`${what} must be a bigint in 0..2^64, got ${String(seq)}`);
  }
}

/** Calls an app handler; what it throws is the app's bug, reported, never the SDK's state. */
function callHandler<T>(handler: (v: T) => void, value: T): void {
  try {
    handler(value);
  } catch (e) {
    // Surfaced asynchronously so the SDK's bookkeeping goes on.
    queueMicrotask(() => {
      throw e;
    });
  }
}

export class SwitchboardClient {
  /** Called with each message, in `seq` order per group, exactly once per client. */
  onMessage: (m: Message) => void = () => {};
  /** A session started (the first or a reconnect), before any of its pushes: catch-up
   * messages and the presence snapshot follow. */
  onConnected: (w: Welcome) => void = () => {};
  onStateChange: (s: ClientState) => void = () => {};
  /** Someone's receipt for one of your messages. */
  onReceipt: (r: Receipt) => void = () => {};
  /** Aggregated receipts of one of your messages. */
  onReceiptSummary: (s: ReceiptSummary) => void = () => {};
  /** A co-member's presence (see {@link Presence}). */
  onPresence: (p: Presence) => void = () => {};
  /** A group has messages this background client was not sent. */
  onNudge: (n: Nudge) => void = () => {};
  /** The user's complete feature-flag set, after each connect and on each change. */
  onFlags: (flags: Flag[]) => void = () => {};
  /** Errors not tied to a request: why a session ended, and the node's refusals of
   * receipts, presence and delivery acks (`SwitchboardError`, request id 0). */
  onError: (e: ClientError) => void = () => {};

  private readonly opts: Required<Omit<ClientOptions, "cursors" | "reconnect">> & {
    cursors?: CursorStore;
    reconnect: ReconnectPolicy;
  };
  private readonly tracker: DeliveryTracker;
  private readonly pending = new Map<bigint, Pending>();
  private nextRequestId = 1n;
  private session?: Session;
  private state: ClientState = "connecting";
  private attempts = 0;
  private acksDue = new Map<string, bigint>();
  private ackTimer?: ReturnType<typeof setTimeout>;
  private token: string;
  private presenceState: PresenceState;
  /** Receipts made while disconnected (at most {@link MAX_QUEUED_RECEIPTS}). */
  private receipts: ClientFrame[] = [];
  /** Stating the presence again after the node's `RateLimited` for it. */
  private presenceRetry?: ReturnType<typeof setTimeout>;
  private maxPayloadBytes?: number;

  /** Set the handlers (`onMessage` above all) before {@link connect}: catch-up deliveries
   * may follow `Welcome` at once. */
  constructor(opts: ClientOptions) {
    this.opts = {
      serverCertificateHashes: [],
      presence: PresenceState.Foreground,
      requestTimeoutMs: 30_000,
      autoAck: true,
      ackDelayMs: 200,
      maxFrameBytes: 1 << 20,
      maxPendingRequests: 1024,
      clientName: "switchboard-js/0.1",
      ...opts,
      reconnect: { ...DEFAULT_RECONNECT, ...opts.reconnect },
    };
    this.token = opts.token;
    this.presenceState = this.opts.presence;
    this.tracker = new DeliveryTracker(opts.cursors?.load() ?? []);
  }

  /**
   * Connects and says hello; resolves with the node's `Welcome`. A first connection that
   * fails rejects (with a {@link SwitchboardError} if the node refused it); later losses
   * reconnect by themselves.
   */
  async connect(): Promise<Welcome> {
    if (this.session) throw new ProtocolError("already connected");
    return this.open();
  }

  /** The client's cursors (what the next connection resumes after). */
  cursors(): Cursor[] {
    return this.tracker.cursors();
  }

  get connectionState(): ClientState {
    return this.state;
  }

  /** The presence this client states (what the next `Hello` carries too). */
  get presence(): PresenceState {
    return this.presenceState;
  }

  /** Joins `group` (open groups) or confirms membership (closed groups); resolves with its
   * head seq. Messages after that head are then delivered; earlier ones are `fetch`'s. */
  async join(group: string): Promise<bigint> {
    const f = await this.request((requestId) => ({ type: "join", requestId, group }));
    if (f.type !== "joined") throw new ProtocolError(`unexpected answer ${f.type}`);
    return f.headSeq;
  }

  /**
   * Leaves `group` and forgets its cursor: its deliveries stop on every session of the user.
   * Leaving a group you are not in succeeds (so a leave re-sent after a reconnect, whose
   * first answer was lost, does too).
   */
  async leave(group: string): Promise<void> {
    try {
      const f = await this.request((requestId) => ({ type: "leave", requestId, group }));
      if (f.type !== "left") throw new ProtocolError(`unexpected answer ${f.type}`);
    } catch (e) {
      if (!(e instanceof SwitchboardError && e.code === ErrorCode.NotMember)) throw e;
    }
    this.tracker.forget(group);
    this.acksDue.delete(group);
    this.saveCursors();
  }

  /**
   * Sends a message; resolves once it is durable, with its seq. Survives reconnects: until
   * acknowledged it is re-sent with the same client message id. Pass your own
   * `clientMsgId` (1..=64 bytes, unique per group for this user) to retry a send that timed
   * out, from an earlier page load too: the node answers a known id with the original seq
   * and `duplicate: true`.
   */
  async send(group: string, body: string | Uint8Array, clientMsgId?: string): Promise<SendAck> {
    const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
    if (this.maxPayloadBytes !== undefined && bytes.length > this.maxPayloadBytes) {
      throw new PayloadTooLarge(bytes.length, this.maxPayloadBytes);
    }
    const id = clientMsgId ?? crypto.randomUUID();
    const f = await this.request((requestId) => ({
      type: "send",
      requestId,
      group,
      clientMsgId: id,
      body: bytes,
    }));
    if (f.type !== "ack") throw new ProtocolError(`unexpected answer ${f.type}`);
    return { group: f.group, seq: f.seq, clientMsgId: f.clientMsgId, duplicate: f.duplicate };
  }

  /**
   * One page of `group`'s log: up to `limit` messages with `seq > afterSeq`, in order, and
   * the group's head. The node also cuts a page by bytes (docs/protocol.md §9): page on with
   * the last seq until the head ({@link history} does). Members only; fetched messages do
   * not move the delivery cursor. `limit` 0 reads just the head.
   */
  async fetch(group: string, afterSeq: bigint, limit: number): Promise<FetchResult> {
    checkSeq(afterSeq, "afterSeq");
    if (!Number.isInteger(limit) || limit < 0 || limit > U32_MAX) {
      throw new InvalidArgument(`limit must be an integer in 0..2^32, got ${limit}`);
    }
    const f = await this.request((requestId) => ({
      type: "fetch",
      requestId,
      group,
      afterSeq,
      limit,
    }));
    if (f.type !== "fetchResult") throw new ProtocolError(`unexpected answer ${f.type}`);
    return { messages: f.messages, headSeq: f.headSeq };
  }

  /**
   * Pages through `group`'s log after `afterSeq`, oldest first, up to `untilSeq` (default:
   * the head when the first page was read), one `fetch` of `limit` (default 256) per page:
   * `for await (const page of client.history("general", 40n)) render(page.messages)`.
   * Only one page is in memory at a time.
   */
  async *history(
    group: string,
    afterSeq: bigint = 0n,
    opts: { untilSeq?: bigint; limit?: number } = {},
  ): AsyncGenerator<FetchResult, void, undefined> {
    const limit = opts.limit ?? DEFAULT_PAGE;
    if (limit === 0) throw new InvalidArgument("a history page needs a limit above 0");
    let after = afterSeq;
    let until = opts.untilSeq;
    for (;;) {
      if (until !== undefined && after >= until) return;
      const page = await this.fetch(group, after, limit);
      until ??= page.headSeq;
      const last = page.messages[page.messages.length - 1];
      if (!last) return; // nothing after `after`: the log ends there
      const end = until;
      const messages = page.messages.filter((m) => m.seq <= end);
      if (messages.length > 0) yield { messages, headSeq: page.headSeq };
      after = last.seq;
    }
  }

  /**
   * Sends a delivered or read receipt for message `seq` of `group` to its sender
   * (fire-and-forget; the node's refusal — `NotMember`, `InvalidArgument` for no such
   * message, `RateLimited` — comes to `onError`). Made while disconnected, it is sent after
   * the reconnect (the latest {@link MAX_QUEUED_RECEIPTS} are kept).
   */
  receipt(group: string, seq: bigint, kind: ReceiptKind): void {
    this.checkOpen();
    checkSeq(seq, "seq");
    if (kind !== ReceiptKind.Delivered && kind !== ReceiptKind.Read) {
      throw new InvalidArgument(`no receipt kind ${String(kind)}`);
    }
    const frame: ClientFrame = { type: "receipt", group, seq, kind };
    if (this.session?.welcome) {
      this.write(this.session, frame);
      return;
    }
    if (this.receipts.length >= MAX_QUEUED_RECEIPTS) this.receipts.shift();
    this.receipts.push(frame);
  }

  /**
   * Tells the node the app moved to the foreground or background (fire-and-forget): it
   * delivers to foreground clients first and may only nudge background ones in large
   * groups, and co-members see the change (`onPresence`). Kept for every later reconnect's
   * `Hello`. If the node refuses to tell co-members (`RateLimited`, the user's presence
   * limit), the client states it again after the wait the node gives.
   */
  setPresence(state: PresenceState): void {
    this.checkOpen();
    if (state !== PresenceState.Foreground && state !== PresenceState.Background) {
      throw new InvalidArgument(`no presence state ${String(state)}`);
    }
    this.presenceState = state;
    // Offline, the reconnect's `Hello` carries it.
    if (this.session?.welcome) this.write(this.session, { type: "presence", state });
  }

  /** The app is in use again: `setPresence(Foreground)`. */
  foreground(): void {
    this.setPresence(PresenceState.Foreground);
  }

  /** The app was put away: `setPresence(Background)`. */
  background(): void {
    this.setPresence(PresenceState.Background);
  }

  /**
   * Follows the page's visibility: `background()` when the page is hidden (another tab, a
   * minimised window, a locked phone), `foreground()` when it is shown, starting with its
   * state now. Returns a function that stops following.
   */
  followVisibility(doc: Document = document): () => void {
    const apply = (): void => {
      if (this.state === "closed") return;
      this.setPresence(
        doc.visibilityState === "hidden" ? PresenceState.Background : PresenceState.Foreground,
      );
    };
    doc.addEventListener("visibilitychange", apply);
    apply();
    return () => doc.removeEventListener("visibilitychange", apply);
  }

  /**
   * Asks the node to store `group`'s cursor at `seq` (monotonic; coalesced per group for
   * `ackDelayMs`). Only needed with `autoAck: false`.
   */
  ackDelivery(group: string, seq: bigint): void {
    this.checkOpen();
    checkSeq(seq, "seq");
    const due = this.acksDue.get(group);
    if (due === undefined || seq > due) this.acksDue.set(group, seq);
    this.scheduleAcks();
  }

  /** Round trip to the node, in milliseconds. */
  async ping(): Promise<number> {
    const start = performance.now();
    await this.request((requestId) => ({ type: "ping", requestId }));
    return performance.now() - start;
  }

  /** Replaces the token used by later reconnects (e.g. before the current one expires). */
  setToken(token: string): void {
    this.token = token;
  }

  /** Ends the session and stops reconnecting; pending requests reject with `ClientClosed`. */
  close(): void {
    if (this.state === "closed") return;
    this.setState("closed");
    // The acks still waiting go out first (best effort: closing the session may cut them).
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.flushAcks();
    const s = this.session;
    this.session = undefined;
    if (s) closeQuietly(s.transport, { closeCode: 0, reason: "client closed" });
    clearTimeout(this.presenceRetry);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ClientClosed("client closed"));
    }
    this.pending.clear();
    this.receipts = [];
  }

  // ---- internals -------------------------------------------------------------------------

  private checkOpen(): void {
    if (this.state === "closed") throw new ClientClosed("client closed");
  }

  private setState(s: ClientState): void {
    if (this.state === s) return;
    this.state = s;
    callHandler(this.onStateChange, s);
  }

  private request(make: (requestId: bigint) => ClientFrame): Promise<ServerFrame> {
    if (this.state === "closed") return Promise.reject(new ClientClosed("client closed"));
    if (this.pending.size >= this.opts.maxPendingRequests) {
      return Promise.reject(new TooManyRequests(this.opts.maxPendingRequests));
    }
    const requestId = this.nextRequestId++;
    const frame = make(requestId);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // Forgotten, not re-sent: the caller decides (a send again with the same id).
        if (this.pending.delete(requestId)) {
          reject(new Timeout(`no answer within ${this.opts.requestTimeoutMs} ms`));
        }
      }, this.opts.requestTimeoutMs);
      this.pending.set(requestId, { frame, resolve, reject, timer });
      // Written now if a session is up; otherwise by the next `Welcome`.
      if (this.session?.welcome) this.write(this.session, frame);
    });
  }

  private write(s: Session, f: ClientFrame): void {
    // The writer queues writes in order; a failed write means the session is going away,
    // which `transport.closed` reports.
    s.writer.write(encodeClient(f)).catch(() => {});
  }

  /** Opens one session: resolves on `Welcome`, rejects if it fails first. */
  private async open(): Promise<Welcome> {
    const hashes = this.opts.serverCertificateHashes.map((h) => ({
      algorithm: "sha-256",
      value: hexToBytes(h),
    }));
    const transport = new WebTransport(
      this.opts.url,
      hashes.length > 0 ? { serverCertificateHashes: hashes } : {},
    );
    try {
      await transport.ready;
      const bidi = await transport.createBidirectionalStream();
      const session: Session = { transport, writer: bidi.writable.getWriter() };
      this.tracker.reset();
      const helloPresence = this.presenceState;
      this.write(session, {
        type: "hello",
        token: this.token,
        presence: helloPresence,
        cursors: this.tracker.cursors(),
        client: this.opts.clientName,
      });
      const w = await new Promise<Welcome>((resolve, reject) => {
        void this.readControl(session, bidi.readable, resolve, reject);
      });
      if (this.state === "closed") {
        closeQuietly(transport);
        throw new ClientClosed("client closed");
      }
      this.session = session;
      session.welcome = w;
      this.maxPayloadBytes = w.maxPayloadBytes;
      this.attempts = 0;
      // This session's `Hello` carried the latest presence.
      clearTimeout(this.presenceRetry);
      this.presenceRetry = undefined;
      this.setState("connected");
      callHandler(this.onConnected, w);
      // Pushes only now (the browser holds the streams meanwhile), so `onConnected` comes
      // before the session's messages and presence snapshot (docs/protocol.md §3).
      void this.readPushes(session);
      // Requests made while disconnected, and unanswered ones of the last session (sends
      // keep their client message ids, so a send that did land is acknowledged, not
      // stored twice), then the receipts made meanwhile.
      for (const p of this.pending.values()) this.write(session, p.frame);
      // A change made after the `Hello` went out.
      if (this.presenceState !== helloPresence) {
        this.write(session, { type: "presence", state: this.presenceState });
      }
      for (const r of this.receipts) this.write(session, r);
      this.receipts = [];
      if (this.acksDue.size > 0) this.scheduleAcks();
      void transport.closed.then(
        () => this.lost(session, new ConnectionLost("the session closed")),
        (e: unknown) => this.lost(session, new ConnectionLost(`the session failed: ${String(e)}`)),
      );
      return w;
    } catch (e) {
      closeQuietly(transport);
      throw asClientError(e);
    }
  }

  private lost(s: Session, why: ClientError): void {
    if (this.session !== s || this.state === "closed") return;
    this.session = undefined;
    callHandler(this.onError, why);
    for (const [id, p] of this.pending) {
      // Pings are not worth repeating; every other request is idempotent on the node.
      if (p.frame.type === "ping") {
        this.pending.delete(id);
        clearTimeout(p.timer);
        p.reject(why);
      }
    }
    this.setState("reconnecting");
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    const r = this.opts.reconnect;
    if (r.maxAttempts !== undefined && this.attempts >= r.maxAttempts) {
      callHandler(this.onError, new ConnectionLost(`gave up after ${this.attempts} attempts`));
      this.close();
      return;
    }
    this.attempts++;
    const ceiling = Math.min(r.initialBackoffMs * 2 ** (this.attempts - 1), r.maxBackoffMs);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    setTimeout(() => {
      if (this.state === "closed") return;
      this.open().catch((e: unknown) => {
        const err = asClientError(e);
        callHandler(this.onError, err);
        if (err instanceof SwitchboardError && err.isAuth) {
          this.close();
          return;
        }
        if (this.state !== "closed") this.scheduleReconnect();
      });
    }, delay);
  }

  private async readControl(
    s: Session,
    readable: ReadableStream<Uint8Array>,
    welcomed: (w: Welcome) => void,
    refused: (e: ClientError) => void,
  ): Promise<void> {
    const reader = readable.getReader();
    const frames = new FrameReader(this.opts.maxFrameBytes);
    let hello = true;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        frames.push(value);
        for (let bytes = frames.next(); bytes; bytes = frames.next()) {
          const f = decodeServer(bytes);
          if (hello) {
            if (f.type === "welcome") {
              hello = false;
              for (const c of f.resume) this.tracker.adopt(c);
              this.saveCursors();
              welcomed({
                sessionId: f.sessionId,
                tenant: f.tenant,
                user: f.user,
                maxPayloadBytes: f.maxPayloadBytes,
                groups: f.groups,
              });
            } else if (f.type === "error") {
              refused(new SwitchboardError(f.code, f.message, 0n, f.retryAfterMs));
              return;
            }
            continue;
          }
          this.answer(s, f);
        }
      }
    } catch (e) {
      if (hello) refused(asClientError(e));
      else if (this.session === s) callHandler(this.onError, asClientError(e));
    }
    if (hello) refused(new ConnectionLost("the control stream ended before Welcome"));
    // A session without its control stream is over; `transport.closed` reconnects.
    closeQuietly(s.transport);
  }

  private answer(s: Session, f: ServerFrame): void {
    if (f.type === "error") {
      const err = new SwitchboardError(f.code, f.message, f.requestId, f.retryAfterMs);
      const p = f.requestId !== 0n ? this.pending.get(f.requestId) : undefined;
      if (!p) {
        this.connectionError(err);
        return;
      }
      // The node is draining: the request stays pending and goes out again on the next
      // session, as the Rust SDK does.
      if (f.code === ErrorCode.ShuttingDown) return;
      // Written but maybe not durable: send it again, same request and client message id,
      // never a new one (docs/protocol.md §12).
      if (f.code === ErrorCode.OutcomeUnknown && p.frame.type === "send") {
        setTimeout(
          () => {
            if (this.pending.get(f.requestId) === p && this.session === s) this.write(s, p.frame);
          },
          Math.max(f.retryAfterMs, 100),
        );
        return;
      }
      this.pending.delete(f.requestId);
      clearTimeout(p.timer);
      p.reject(err);
      return;
    }
    const requestId = "requestId" in f ? f.requestId : 0n;
    const p = requestId !== 0n ? this.pending.get(requestId) : undefined;
    if (p) {
      this.pending.delete(requestId);
      clearTimeout(p.timer);
      p.resolve(f);
    }
  }

  /** An `Error` that answers no request: a refused receipt, presence or ack, or why the
   * node is about to close the session. */
  private connectionError(err: SwitchboardError): void {
    // Telling co-members of a presence change was refused: state it again when the node
    // says it would be allowed (free if they already know it, docs/protocol.md §11).
    if (err.code === ErrorCode.RateLimited && err.retryAfterMs > 0 && !this.presenceRetry) {
      this.presenceRetry = setTimeout(() => {
        this.presenceRetry = undefined;
        const s = this.session;
        if (s?.welcome) this.write(s, { type: "presence", state: this.presenceState });
      }, err.retryAfterMs);
    }
    callHandler(this.onError, err);
  }

  private async readPushes(s: Session): Promise<void> {
    const streams = s.transport.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value, done } = await streams.read();
        if (done) return;
        void this.readPushStream(s, value);
      }
    } catch {
      // The session ended; `transport.closed` handles it.
    }
  }

  private async readPushStream(s: Session, stream: ReadableStream<Uint8Array>): Promise<void> {
    const reader = stream.getReader();
    const frames = new FrameReader(this.opts.maxFrameBytes);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        frames.push(value);
        for (let bytes = frames.next(); bytes; bytes = frames.next()) {
          if (this.session !== s) return; // a stale session
          this.push(s, decodeServer(bytes));
        }
      }
    } catch (e) {
      if (this.session === s) {
        callHandler(this.onError, asClientError(e));
        closeQuietly(s.transport);
      }
    }
  }

  private push(s: Session, f: ServerFrame): void {
    const ready: Message[] = [];
    switch (f.type) {
      case "resume":
        this.tracker.resume(f.group, f.afterSeq, ready);
        break;
      case "deliver":
        if (!this.tracker.arrive(f.message, ready)) {
          callHandler(
            this.onError,
            new ConnectionLost("too many deliveries held out of order; reconnecting"),
          );
          closeQuietly(s.transport);
          return;
        }
        break;
      case "receipt":
        callHandler(this.onReceipt, { group: f.group, seq: f.seq, user: f.user, kind: f.kind });
        return;
      case "receiptSummary":
        callHandler(this.onReceiptSummary, {
          group: f.group,
          seq: f.seq,
          delivered: f.delivered,
          read: f.read,
          members: f.members,
        });
        return;
      case "presence":
        callHandler(this.onPresence, { user: f.user, state: f.state, online: f.online });
        return;
      case "nudge":
        callHandler(this.onNudge, { group: f.group, headSeq: f.headSeq });
        return;
      case "flags":
        callHandler(this.onFlags, f.flags);
        return;
      default:
        return;
    }
    if (ready.length === 0) return;
    this.saveCursors();
    for (const m of ready) {
      callHandler(this.onMessage, m);
      if (this.opts.autoAck) this.acksDue.set(m.group, m.seq);
    }
    if (this.opts.autoAck) this.scheduleAcks();
  }

  private saveCursors(): void {
    this.opts.cursors?.save(this.tracker.cursors());
  }

  /** One `AckDelivery` per group for what was handed on within `ackDelayMs`. */
  private scheduleAcks(): void {
    if (this.ackTimer !== undefined) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      this.flushAcks();
    }, this.opts.ackDelayMs);
  }

  private flushAcks(): void {
    const s = this.session;
    // Offline, the next `Hello`'s cursors say the same.
    if (!s?.welcome) return;
    for (const [group, seq] of this.acksDue) this.write(s, { type: "ackDelivery", group, seq });
    this.acksDue.clear();
  }
}
