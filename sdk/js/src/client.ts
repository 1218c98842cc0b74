// The browser client: one switchboard/1 session over WebTransport at a time, reconnected with
// backoff when it drops, resumed from the cursors so the app gets exactly what it missed, with
// unacknowledged sends re-sent under their client message ids (the node dedupes them).
//
// Streams as in docs/protocol.md §17: the control stream is a bidirectional WebTransport
// stream the client opens; the node's push streams arrive as unidirectional ones.

import {
  type ClientFrame,
  type Cursor,
  type Message,
  type ServerFrame,
  FrameReader,
  PresenceState,
  decodeServer,
  encodeClient,
} from "./frames.js";
import { ClientClosed, ConnectionLost, SwitchboardError } from "./errors.js";
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
  /** Largest frame accepted from the node (default 1 MiB; the node's default is 128 KiB). */
  maxFrameBytes?: number;
  /** Requests (sends, joins, pings) waiting for an answer at once (default 1024). */
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
  groups: Cursor[];
}

export interface SendAck {
  group: string;
  seq: bigint;
  clientMsgId: string;
  duplicate: boolean;
}

interface Pending {
  frame: ClientFrame;
  resolve: (f: ServerFrame) => void;
  reject: (e: Error) => void;
}

/** One WebTransport session and its streams. */
interface Session {
  transport: WebTransport;
  writer: WritableStreamDefaultWriter<Uint8Array>;
  welcome?: Welcome;
}

const DEFAULT_RECONNECT: ReconnectPolicy = { initialBackoffMs: 250, maxBackoffMs: 30_000 };

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

export class SwitchboardClient {
  /** Called with each message, in `seq` order per group, exactly once per client. */
  onMessage: (m: Message) => void = () => {};
  onStateChange: (s: ClientState) => void = () => {};
  /** Errors not tied to a request: why a session ended, refusals of acks and presence. */
  onError: (e: Error) => void = () => {};

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
  private ackScheduled = false;

  /** Set the handlers (`onMessage` above all) before {@link connect}: catch-up deliveries
   * may follow `Welcome` at once. */
  constructor(opts: ClientOptions) {
    this.opts = {
      serverCertificateHashes: [],
      maxFrameBytes: 1 << 20,
      maxPendingRequests: 1024,
      clientName: "switchboard-js/0.1",
      ...opts,
      reconnect: { ...DEFAULT_RECONNECT, ...opts.reconnect },
    };
    this.tracker = new DeliveryTracker(opts.cursors?.load() ?? []);
  }

  /**
   * Connects and says hello; resolves with the node's `Welcome`. A first connection that
   * fails rejects (with a {@link SwitchboardError} if the node refused it); later losses
   * reconnect by themselves.
   */
  async connect(): Promise<Welcome> {
    if (this.session) throw new Error("already connected");
    return this.open();
  }

  /** The client's cursors (what the next connection resumes after). */
  cursors(): Cursor[] {
    return this.tracker.cursors();
  }

  get connectionState(): ClientState {
    return this.state;
  }

  /** Joins a group; resolves with its head seq. */
  async join(group: string): Promise<bigint> {
    const f = await this.request((requestId) => ({ type: "join", requestId, group }));
    if (f.type !== "joined") throw new ConnectionLost(`unexpected answer ${f.type}`);
    return f.headSeq;
  }

  /**
   * Sends a message; resolves once it is durable, with its seq. Survives reconnects: until
   * acknowledged it is re-sent with the same client message id.
   */
  async send(group: string, body: string | Uint8Array, clientMsgId?: string): Promise<SendAck> {
    const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
    const id = clientMsgId ?? crypto.randomUUID();
    const f = await this.request((requestId) => ({
      type: "send",
      requestId,
      group,
      clientMsgId: id,
      body: bytes,
    }));
    if (f.type !== "ack") throw new ConnectionLost(`unexpected answer ${f.type}`);
    return { group: f.group, seq: f.seq, clientMsgId: f.clientMsgId, duplicate: f.duplicate };
  }

  /** Round trip to the node, in milliseconds. */
  async ping(): Promise<number> {
    const start = performance.now();
    await this.request((requestId) => ({ type: "ping", requestId }));
    return performance.now() - start;
  }

  /** Ends the session and stops reconnecting; pending requests reject with `ClientClosed`. */
  close(): void {
    if (this.state === "closed") return;
    this.setState("closed");
    const s = this.session;
    this.session = undefined;
    if (s) closeQuietly(s.transport, { closeCode: 0, reason: "client closed" });
    for (const p of this.pending.values()) p.reject(new ClientClosed("client closed"));
    this.pending.clear();
  }

  // ---- internals -------------------------------------------------------------------------

  private setState(s: ClientState): void {
    if (this.state === s) return;
    this.state = s;
    this.onStateChange(s);
  }

  private request(make: (requestId: bigint) => ClientFrame): Promise<ServerFrame> {
    if (this.state === "closed") return Promise.reject(new ClientClosed("client closed"));
    if (this.pending.size >= this.opts.maxPendingRequests) {
      return Promise.reject(new RangeError("too many requests waiting for an answer"));
    }
    const requestId = this.nextRequestId++;
    const frame = make(requestId);
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, { frame, resolve, reject });
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
      this.write(session, {
        type: "hello",
        token: this.opts.token,
        presence: PresenceState.Foreground,
        cursors: this.tracker.cursors(),
        client: this.opts.clientName,
      });
      const welcome = new Promise<Welcome>((resolve, reject) => {
        void this.readControl(session, bidi.readable, resolve, reject);
      });
      void this.readPushes(session);
      const w = await welcome;
      if (this.state === "closed") {
        closeQuietly(transport);
        throw new ClientClosed("client closed");
      }
      this.session = session;
      session.welcome = w;
      this.attempts = 0;
      this.setState("connected");
      // Requests made while disconnected, and unanswered ones of the last session (sends
      // keep their client message ids, so a send that did land is acknowledged, not
      // stored twice).
      for (const p of this.pending.values()) this.write(session, p.frame);
      void transport.closed.then(
        () => this.lost(session, new ConnectionLost("the session closed")),
        (e: unknown) => this.lost(session, new ConnectionLost(`the session failed: ${String(e)}`)),
      );
      return w;
    } catch (e) {
      closeQuietly(transport);
      throw e instanceof Error ? e : new ConnectionLost(String(e));
    }
  }

  private lost(s: Session, why: Error): void {
    if (this.session !== s || this.state === "closed") return;
    this.session = undefined;
    this.onError(why);
    for (const [id, p] of this.pending) {
      // Pings are not worth repeating; sends and joins are (both are idempotent).
      if (p.frame.type === "ping") {
        this.pending.delete(id);
        p.reject(why);
      }
    }
    this.setState("reconnecting");
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    const r = this.opts.reconnect;
    if (r.maxAttempts !== undefined && this.attempts >= r.maxAttempts) {
      this.onError(new ConnectionLost(`gave up after ${this.attempts} attempts`));
      this.close();
      return;
    }
    this.attempts++;
    const ceiling = Math.min(r.initialBackoffMs * 2 ** (this.attempts - 1), r.maxBackoffMs);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    setTimeout(() => {
      if (this.state === "closed") return;
      this.open().catch((e: unknown) => {
        const err = e instanceof Error ? e : new ConnectionLost(String(e));
        this.onError(err);
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
    refused: (e: Error) => void,
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
              welcomed(f);
            } else if (f.type === "error") {
              refused(new SwitchboardError(f.code, f.message, 0n, f.retryAfterMs));
              return;
            }
            continue;
          }
          this.answer(f);
        }
      }
    } catch (e) {
      if (hello) refused(e instanceof Error ? e : new ConnectionLost(String(e)));
    }
    if (hello) refused(new ConnectionLost("the control stream ended before Welcome"));
    // A session without its control stream is over; `transport.closed` reconnects.
    closeQuietly(s.transport);
  }

  private answer(f: ServerFrame): void {
    const requestId = "requestId" in f ? f.requestId : 0n;
    if (f.type === "error") {
      const err = new SwitchboardError(f.code, f.message, f.requestId, f.retryAfterMs);
      const p = f.requestId !== 0n ? this.pending.get(f.requestId) : undefined;
      if (p) {
        this.pending.delete(f.requestId);
        p.reject(err);
      } else {
        this.onError(err);
      }
      return;
    }
    const p = requestId !== 0n ? this.pending.get(requestId) : undefined;
    if (p) {
      this.pending.delete(requestId);
      p.resolve(f);
    }
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
          if (this.session !== s && this.session !== undefined) return; // a stale session
          this.push(s, decodeServer(bytes));
        }
      }
    } catch (e) {
      if (this.session === s) {
        this.onError(e instanceof Error ? e : new ConnectionLost(String(e)));
        closeQuietly(s.transport);
      }
    }
  }

  private push(s: Session, f: ServerFrame): void {
    const ready: Message[] = [];
    if (f.type === "resume") {
      this.tracker.resume(f.group, f.afterSeq, ready);
    } else if (f.type === "deliver") {
      if (!this.tracker.arrive(f.message, ready)) {
        this.onError(new ConnectionLost("too many deliveries held out of order; reconnecting"));
        closeQuietly(s.transport);
        return;
      }
    } else {
      return;
    }
    if (ready.length === 0) return;
    this.saveCursors();
    for (const m of ready) {
      this.acksDue.set(m.group, m.seq);
      this.onMessage(m);
    }
    this.scheduleAcks();
  }

  private saveCursors(): void {
    this.opts.cursors?.save(this.tracker.cursors());
  }

  /** One `AckDelivery` per group for what was handed on in this turn of the event loop. */
  private scheduleAcks(): void {
    if (this.ackScheduled) return;
    this.ackScheduled = true;
    queueMicrotask(() => {
      this.ackScheduled = false;
      const s = this.session;
      if (!s?.welcome) return;
      for (const [group, seq] of this.acksDue) this.write(s, { type: "ackDelivery", group, seq });
      this.acksDue.clear();
    });
  }
}
