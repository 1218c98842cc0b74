// Unit tests of the SDK's pure parts, on the compiled output (`npm run build` first):
// frames round-trip through the generated flatbuffers code, the frame reader's bound, and
// the delivery tracker's invariant (each (group, seq) once, in order, nothing at or below
// the cursor). The browser test (host/switchboard/tests/web_chat.rs) covers the rest.

import assert from "node:assert/strict";
import { test } from "node:test";
import * as flatbuffers from "flatbuffers";

import { DecodeError, DeliveryTracker, FrameReader, decodeServer, encodeClient } from "../dist/index.js";
import { Body, Frame, Ping, Pong } from "../dist/generated/switchboard/wire.js";

const msg = (group, seq) => ({
  group,
  seq,
  sender: "bob",
  clientMsgId: `m${seq}`,
  sentAtMs: 0n,
  body: new Uint8Array([Number(seq)]),
});

test("a client frame is a big-endian length and an SB01 flatbuffer", () => {
  const bytes = encodeClient({ type: "ping", requestId: 7n });
  const n = new DataView(bytes.buffer).getUint32(0, false);
  assert.equal(n, bytes.length - 4);
  const bb = new flatbuffers.ByteBuffer(bytes.subarray(4));
  assert.ok(Frame.bufferHasIdentifier(bb));
  const frame = Frame.getRootAsFrame(bb);
  assert.equal(frame.bodyType(), Body.Ping);
  assert.equal(frame.body(new Ping()).requestId(), 7n);
});

test("server frames decode to plain objects", () => {
  const b = new flatbuffers.Builder(64);
  const pong = Pong.createPong(b, 9n);
  Frame.finishFrameBuffer(b, Frame.createFrame(b, Body.Pong, pong));
  assert.deepEqual(decodeServer(b.asUint8Array()), { type: "pong", requestId: 9n });
  assert.throws(() => decodeServer(new Uint8Array(16)), DecodeError);
});

test("the frame reader splits chunks and refuses an oversize prefix before its body", () => {
  const a = encodeClient({ type: "ping", requestId: 1n });
  const c = encodeClient({ type: "join", requestId: 2n, group: "general" });
  const all = new Uint8Array([...a, ...c]);
  const r = new FrameReader(1 << 20);
  r.push(all.subarray(0, 3));
  assert.equal(r.next(), null);
  r.push(all.subarray(3));
  assert.equal(r.next().length, a.length - 4);
  assert.equal(r.next().length, c.length - 4);
  assert.equal(r.next(), null);
  assert.equal(r.partial, false);
  const small = new FrameReader(16);
  small.push(new Uint8Array([0, 0, 1, 0]));
  assert.throws(() => small.next(), DecodeError);
});

test("deliveries wait for their Resume and their predecessors, then go out in order once", () => {
  const t = new DeliveryTracker();
  const out = [];
  t.arrive(msg("g", 6n), out); // before the Resume: held
  t.arrive(msg("g", 7n), out);
  assert.deepEqual(out, []);
  t.resume("g", 5n, out);
  assert.deepEqual(out.map((m) => m.seq), [6n, 7n]);
  t.arrive(msg("g", 9n), out); // overtook 8: held
  assert.deepEqual(out.map((m) => m.seq), [6n, 7n]);
  t.arrive(msg("g", 8n), out);
  t.arrive(msg("g", 8n), out); // a resend: dropped
  assert.deepEqual(out.map((m) => m.seq), [6n, 7n, 8n, 9n]);
  assert.deepEqual(t.cursors(), [{ group: "g", seq: 9n }]);
});

test("after a reconnect nothing at or below the cursor is handed on again", () => {
  const t = new DeliveryTracker([{ group: "g", seq: 4n }]);
  const out = [];
  t.reset();
  t.resume("g", 2n, out); // the node resumes from an older cursor
  for (const s of [3n, 4n, 5n]) t.arrive(msg("g", s), out);
  assert.deepEqual(out.map((m) => m.seq), [5n]);
  t.adopt({ group: "g", seq: 1n }); // a cursor is never lowered
  t.adopt({ group: "h", seq: 3n });
  assert.deepEqual(t.cursors(), [
    { group: "g", seq: 5n },
    { group: "h", seq: 3n },
  ]);
});
