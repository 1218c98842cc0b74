// The client's calls against a fake node (test/fake-node.mjs): leave, fetch and history
// pages, receipts, presence, and the typed error of every refusal. Each test drives the
// node's side frame by frame; the real node and browser are web_chat.rs's.

import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import {
  ClientClosed,
  ConnectionLost,
  ErrorCode,
  InvalidArgument,
  MAX_QUEUED_RECEIPTS,
  PayloadTooLarge,
  PresenceState,
  ReceiptKind,
  SwitchboardClient,
  SwitchboardError,
  Timeout,
  TooManyRequests,
} from "../dist/index.js";
import { installFakeWebTransport, until } from "./fake-node.mjs";

let sessions;
beforeEach(() => {
  sessions = installFakeWebTransport();
});

const msg = (group, seq, sender = "bob") => ({ group, seq, sender });

/** A client connected to the fake node; `welcome` adds to the node's `Welcome`. */
async function connected(opts = {}, welcome = {}) {
  const client = new SwitchboardClient({
    url: "https://node.test/switchboard/1",
    token: "sb1.test",
    reconnect: { initialBackoffMs: 1, maxBackoffMs: 2 },
    ...opts,
  });
  const events = { messages: [], receipts: [], summaries: [], presence: [], nudges: [], flags: [], errors: [], order: [] };
  client.onMessage = (m) => {
    events.messages.push(m);
    events.order.push(`message ${m.seq}`);
  };
  client.onConnected = (w) => events.order.push(`connected ${w.sessionId}`);
  client.onReceipt = (r) => events.receipts.push(r);
  client.onReceiptSummary = (s) => events.summaries.push(s);
  client.onPresence = (p) => {
    events.presence.push(p);
    events.order.push(`presence ${p.user}`);
  };
  client.onNudge = (n) => events.nudges.push(n);
  client.onFlags = (f) => events.flags.push(f);
  client.onError = (e) => events.errors.push(e);
  const done = client.connect();
  await until(() => sessions.length === 1, "a session");
  const node = sessions[0];
  await node.next("hello");
  node.reply({ type: "welcome", sessionId: 1n, ...welcome });
  await done;
  return { client, node, events };
}

/** Waits for the next session after a drop and welcomes it. */
async function reconnected(n, welcome = {}) {
  await until(() => sessions.length >= n, `session ${n}`);
  const node = sessions[n - 1];
  const hello = await node.next("hello");
  node.reply({ type: "welcome", sessionId: BigInt(n), ...welcome });
  return { node, hello };
}

test("leave sends Leave, forgets the group's cursor, and stops its deliveries", async () => {
  const saved = [];
  const cursors = { load: () => [{ group: "g", seq: 4n }], save: (c) => saved.push(c) };
  const { client, node, events } = await connected({ cursors });
  node.pushFrame({ type: "resume", group: "g", afterSeq: 4n });
  node.pushFrame({ type: "deliver", message: msg("g", 5n) });
  await until(() => events.messages.length === 1, "message 5");

  const left = client.leave("g");
  const f = await node.next("leave");
  assert.equal(f.group, "g");
  node.reply({ type: "left", requestId: f.requestId, group: "g" });
  await left;
  assert.deepEqual(client.cursors(), []);
  assert.deepEqual(saved.at(-1), [], "the cursor store forgot the group");

  // A delivery already on its way when the node answered is not handed on. (The notice
  // behind it on the same stream shows it was read.)
  node.pushFrame({ type: "deliver", message: msg("g", 6n) });
  node.pushFrame({ type: "presence", user: "bob", state: PresenceState.Background });
  await until(() => events.presence.length === 1, "the notice after the delivery");
  assert.deepEqual(events.messages.map((m) => m.seq), [5n]);

  // Leaving a group the user is not in succeeds (a re-sent leave whose answer was lost).
  const again = client.leave("g");
  const f2 = await node.next("leave", 2);
  node.reply({ type: "error", requestId: f2.requestId, code: ErrorCode.NotMember });
  await again;
  // Any other refusal is the caller's, typed.
  const refused = client.leave("h");
  const f3 = await node.next("leave", 3);
  node.reply({ type: "error", requestId: f3.requestId, code: ErrorCode.RateLimited, retryAfterMs: 90 });
  await assert.rejects(refused, (e) => {
    assert.ok(e instanceof SwitchboardError);
    assert.equal(e.code, ErrorCode.RateLimited);
    assert.equal(e.retryAfterMs, 90);
    assert.ok(e.isRetryable);
    return true;
  });
  client.close();
});

test("a rejoined group drops deliveries left over from before the leave", async () => {
  const { client, node, events } = await connected();
  node.pushFrame({ type: "resume", group: "g", afterSeq: 0n });
  node.pushFrame({ type: "deliver", message: msg("g", 1n) });
  await until(() => events.messages.length === 1);
  const left = client.leave("g");
  node.reply({ type: "left", requestId: (await node.next("leave")).requestId, group: "g" });
  await left;
  node.pushFrame({ type: "deliver", message: msg("g", 2n) }); // late: held, no Resume
  // Rejoined at head 3: deliveries continue with 4; 2 is never handed on.
  node.pushFrame({ type: "resume", group: "g", afterSeq: 3n });
  node.pushFrame({ type: "deliver", message: msg("g", 4n) });
  await until(() => events.messages.length === 2, "message 4");
  assert.deepEqual(events.messages.map((m) => m.seq), [1n, 4n]);
  client.close();
});

test("fetch sends Fetch and returns the page and the head; bad arguments send nothing", async () => {
  const { client, node } = await connected();
  const page = client.fetch("g", 3n, 2);
  const f = await node.next("fetch");
  assert.deepEqual([f.group, f.afterSeq, f.limit], ["g", 3n, 2]);
  node.reply({
    type: "fetchResult",
    requestId: f.requestId,
    group: "g",
    messages: [msg("g", 4n), { ...msg("g", 5n), lane: 1 }],
    headSeq: 9n,
  });
  const r = await page;
  assert.deepEqual(r.messages.map((m) => [m.seq, m.sender, m.lane]), [
    [4n, "bob", 0],
    [5n, "bob", 1],
  ]);
  assert.equal(r.headSeq, 9n);
  assert.equal(new TextDecoder().decode(r.messages[0].body), "#4");

  for (const [after, limit] of [
    [-1n, 1],
    [1n << 64n, 1],
    [0n, -1],
    [0n, 1.5],
    [0n, 2 ** 32],
  ]) {
    await assert.rejects(client.fetch("g", after, limit), InvalidArgument);
  }
  const refused = client.fetch("secret", 0n, 10);
  const f2 = await node.next("fetch", 2);
  node.reply({ type: "error", requestId: f2.requestId, code: ErrorCode.NotMember, message: "not a member" });
  await assert.rejects(refused, (e) => e instanceof SwitchboardError && e.codeName === "NotMember");
  assert.equal(node.frames("fetch").length, 2, "refused arguments were not sent");
  client.close();
});

test("history pages on past short pages and stops at the head of its first page", async () => {
  const { client, node } = await connected();
  // The node's log: 1..=10, pages cut at 3 messages (its byte budget), head growing to 12
  // while the history is read.
  const serve = async () => {
    for (let n = 1; ; n++) {
      const f = await node.next("fetch", n);
      const from = Number(f.afterSeq) + 1;
      const head = n === 1 ? 10 : 12;
      const seqs = [];
      for (let s = from; s <= Math.min(head, from + 2, from + f.limit - 1); s++) seqs.push(BigInt(s));
      node.reply({
        type: "fetchResult",
        requestId: f.requestId,
        group: "g",
        messages: seqs.map((s) => msg("g", s)),
        headSeq: BigInt(head),
      });
      if (seqs.length === 0 || seqs.at(-1) >= 10n) return n;
    }
  };
  const served = serve();
  const pages = [];
  for await (const page of client.history("g", 2n, { limit: 100 })) {
    pages.push(page.messages.map((m) => Number(m.seq)));
  }
  assert.deepEqual(pages, [[3, 4, 5], [6, 7, 8], [9, 10]]);
  assert.equal(await served, 3);
  assert.deepEqual(
    node.frames("fetch").map((f) => [f.afterSeq, f.limit]),
    [
      [2n, 100],
      [5n, 100],
      [8n, 100],
    ],
  );
  // Nothing after the cursor: no page at all.
  const empty = client.history("g", 10n);
  const first = empty.next();
  const f = await node.next("fetch", 4);
  node.reply({ type: "fetchResult", requestId: f.requestId, group: "g", messages: [], headSeq: 10n });
  assert.equal((await first).done, true);
  await assert.rejects(client.history("g", 0n, { limit: 0 }).next(), InvalidArgument);
  client.close();
});

test("receipts go out at once, wait for the reconnect when offline, and come back as events", async () => {
  const { client, node, events } = await connected();
  client.receipt("g", 7n, ReceiptKind.Read);
  assert.deepEqual(await node.next("receipt"), { type: "receipt", group: "g", seq: 7n, kind: ReceiptKind.Read });
  assert.throws(() => client.receipt("g", -1n, ReceiptKind.Read), InvalidArgument);
  assert.throws(() => client.receipt("g", 1n, 7), InvalidArgument);

  node.drop();
  await until(() => client.connectionState === "reconnecting");
  for (let i = 1; i <= MAX_QUEUED_RECEIPTS + 5; i++) client.receipt("g", BigInt(i), ReceiptKind.Delivered);
  const { node: node2 } = await reconnected(2);
  await node2.next("receipt", MAX_QUEUED_RECEIPTS);
  const sent = node2.frames("receipt");
  assert.equal(sent.length, MAX_QUEUED_RECEIPTS, "the bound holds; the oldest were dropped");
  assert.equal(sent[0].seq, 6n);
  assert.equal(sent.at(-1).seq, BigInt(MAX_QUEUED_RECEIPTS + 5));

  node2.pushFrame({ type: "receipt", group: "g", seq: 3n, user: "carol", kind: ReceiptKind.Read });
  node2.pushFrame({ type: "receiptSummary", group: "g", seq: 3n, delivered: 5, read: 2, members: 9 });
  await until(() => events.summaries.length === 1);
  assert.deepEqual(events.receipts, [{ group: "g", seq: 3n, user: "carol", kind: ReceiptKind.Read }]);
  assert.deepEqual(events.summaries, [{ group: "g", seq: 3n, delivered: 5, read: 2, members: 9 }]);

  // The node's refusal of a receipt answers no request: it is reported, typed.
  node2.reply({ type: "error", code: ErrorCode.InvalidArgument, message: "no such message" });
  await until(() => events.errors.some((e) => e instanceof SwitchboardError));
  const e = events.errors.find((e) => e instanceof SwitchboardError);
  assert.equal(e.code, ErrorCode.InvalidArgument);
  assert.equal(e.requestId, 0n);
  client.close();
  assert.throws(() => client.receipt("g", 1n, ReceiptKind.Read), ClientClosed);
});

test("presence: changes are sent, carried by the next Hello, and co-members' come as events", async () => {
  const { client, node, events } = await connected({}, {});
  assert.equal(node.received[0].presence, PresenceState.Foreground);
  // The snapshot after Welcome, then a notice; `onConnected` came first.
  node.pushFrame({ type: "presence", user: "bob", state: PresenceState.Foreground });
  node.pushFrame({ type: "presence", user: "carol", state: PresenceState.Background });
  await until(() => events.presence.length === 2);
  assert.deepEqual(events.order, ["connected 1", "presence bob", "presence carol"]);
  // A co-member whose last connection closed: offline.
  node.pushFrame({ type: "presence", user: "bob", state: PresenceState.Background, online: false });
  await until(() => events.presence.length === 3);
  assert.deepEqual(events.presence.map((p) => [p.user, p.online]), [["bob", true], ["carol", true], ["bob", false]]);

  client.background();
  assert.deepEqual(await node.next("presence"), { type: "presence", state: PresenceState.Background });
  assert.equal(client.presence, PresenceState.Background);
  assert.throws(() => client.setPresence(9), InvalidArgument);

  // Offline: nothing to send; the reconnect's Hello says it.
  node.drop();
  await until(() => client.connectionState === "reconnecting");
  client.foreground();
  const { node: node2, hello } = await reconnected(2);
  assert.equal(hello.presence, PresenceState.Foreground);
  assert.equal(node.frames("presence").length, 1);
  assert.equal(node2.frames("presence").length, 0);

  // The node would not tell co-members (the user's presence limit): stated again after
  // the wait it gave.
  client.background();
  await node2.next("presence");
  node2.reply({ type: "error", code: ErrorCode.RateLimited, retryAfterMs: 20 });
  const again = await node2.next("presence", 2);
  assert.equal(again.state, PresenceState.Background);
  assert.equal(events.errors.filter((e) => e.code === ErrorCode.RateLimited).length, 1);
  client.close();
});

test("a client made in the background says so in its first Hello", async () => {
  const { client, node } = await connected({ presence: PresenceState.Background });
  assert.equal(node.received[0].presence, PresenceState.Background);
  client.close();
});

test("nudges and flags come as events", async () => {
  const { client, node, events } = await connected();
  node.pushFrame({ type: "nudge", group: "big", headSeq: 40n });
  node.pushFrame({ type: "flags", flags: [{ name: "beta", enabled: true }] });
  await until(() => events.flags.length === 1);
  assert.deepEqual(events.nudges, [{ group: "big", headSeq: 40n }]);
  assert.deepEqual(events.flags, [[{ name: "beta", enabled: true }]]);
  client.close();
});

test("every refusal is typed: timeout, too many requests, payload, closed", async () => {
  const { client, node } = await connected(
    { requestTimeoutMs: 30, maxPendingRequests: 2 },
    { maxPayloadBytes: 8 },
  );
  await assert.rejects(client.send("g", "123456789"), (e) => {
    assert.ok(e instanceof PayloadTooLarge);
    assert.equal(e.code, ErrorCode.PayloadTooLarge);
    assert.deepEqual([e.len, e.max], [9, 8]);
    return true;
  });
  assert.equal(node.frames("send").length, 0);
  const slow = client.join("g");
  const slower = client.join("h");
  await assert.rejects(client.join("i"), TooManyRequests);
  await assert.rejects(slow, (e) => e instanceof Timeout && e.isRetryable);
  await assert.rejects(slower, Timeout);
  // The timed-out requests are forgotten: room again.
  const last = client.ping();
  client.close();
  await assert.rejects(last, ClientClosed);
  await assert.rejects(client.fetch("g", 0n, 1), ClientClosed);
});

test("a send answered ShuttingDown or OutcomeUnknown is sent again with its id", async () => {
  const { client, node } = await connected();
  const sent = client.send("g", "hi", "id-1");
  const first = await node.next("send");
  node.reply({ type: "error", requestId: first.requestId, code: ErrorCode.OutcomeUnknown, retryAfterMs: 1 });
  const second = await node.next("send", 2);
  assert.deepEqual([second.requestId, second.clientMsgId], [first.requestId, "id-1"]);
  node.reply({ type: "error", requestId: second.requestId, code: ErrorCode.ShuttingDown });
  node.drop();
  const { node: node2 } = await reconnected(2);
  const third = await node2.next("send");
  assert.equal(third.clientMsgId, "id-1");
  node2.reply({ type: "ack", requestId: third.requestId, group: "g", clientMsgId: "id-1", seq: 4n, duplicate: true });
  assert.deepEqual(await sent, { group: "g", seq: 4n, clientMsgId: "id-1", duplicate: true });
  client.close();
});

test("acks: automatic and coalesced per group, or the app's with autoAck off", async () => {
  const auto = await connected();
  auto.node.pushFrame({ type: "resume", group: "g", afterSeq: 0n });
  for (const s of [1n, 2n, 3n]) auto.node.pushFrame({ type: "deliver", message: msg("g", s) });
  await until(() => auto.node.frames("ackDelivery").some((a) => a.seq === 3n), "an ack of 3");
  assert.deepEqual(auto.node.frames("ackDelivery"), [{ type: "ackDelivery", group: "g", seq: 3n }]);
  // What is waiting when the app closes goes out first.
  auto.node.pushFrame({ type: "deliver", message: msg("g", 4n) });
  await until(() => auto.events.messages.length === 4);
  auto.client.close();
  await until(() => auto.node.frames("ackDelivery").some((a) => a.seq === 4n), "the ack close sent");

  sessions.length = 0;
  const manual = await connected({ autoAck: false });
  manual.node.pushFrame({ type: "resume", group: "g", afterSeq: 0n });
  manual.node.pushFrame({ type: "deliver", message: msg("g", 1n) });
  await until(() => manual.events.messages.length === 1);
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(manual.node.frames("ackDelivery").length, 0);
  manual.client.ackDelivery("g", 1n);
  assert.deepEqual(await manual.node.next("ackDelivery"), { type: "ackDelivery", group: "g", seq: 1n });
  manual.client.close();
});

test("a session lost is reported as ConnectionLost and pings fail with it", async () => {
  const { client, node, events } = await connected();
  const ping = client.ping();
  await node.next("ping");
  node.drop();
  await assert.rejects(ping, ConnectionLost);
  assert.ok(events.errors.some((e) => e instanceof ConnectionLost && e.isRetryable));
  client.close();
});
