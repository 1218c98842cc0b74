// Drives the web chat (examples/web-chat) in headless Chromium for web_chat.rs: the SDK's
// group life between two pages over WebTransport —
// - presence: the page that opens second sees the first in the node's snapshot, the first
//   sees the second arrive; /bg and /fg on one page show on the other; closing a page shows
//   its user gone (offline);
// - receipts: a message from one page is read on the other, whose read receipt comes back;
// - leave and fetch: a page that left stops receiving (and the node refuses it the group's
//   log: NotMember), then on /join fetches exactly what it missed, in order, and receives
//   live again.
//
// Input (environment): what pages.mjs reads, ALICE_TOKEN, BOB_TOKEN. Output: one line
// `RESULT <json>` on success; any failure throws (exit code 1) with what was expected and
// what the pages showed. Every wait is on a condition in the page, never a sleep.

import { assertEqual, chatState, env, open, say, sees, type, until, withBrowser } from "./pages.mjs";

const presenceOf = (page, user, state, name, what) =>
  until(page, name, what, ([u, s]) => window.chat.members[u] === s, [user, state]);

await withBrowser(async (context) => {
  const alice = await open(context, env("ALICE_TOKEN"), "alice");
  const bob = await open(context, env("BOB_TOKEN"), "bob");

  // Presence. Alice connected before Bob and has done nothing since: Bob can only know
  // her from the snapshot the node pushes after his Welcome. Alice hears of Bob's arrival.
  await presenceOf(bob, "alice", "here", "bob", "alice here (the snapshot at connect)");
  await presenceOf(alice, "bob", "here", "alice", "bob here (his arrival)");
  await type(alice, "/bg");
  await presenceOf(bob, "alice", "away", "bob", "alice away after her /bg");
  await type(alice, "/fg");
  await presenceOf(bob, "alice", "here", "bob", "alice here after her /fg");

  // Receipts: Alice's page reads Bob's message and says so; Bob's page shows it.
  const readMe = await say(bob, "read me");
  await sees(alice, "read me", "alice");
  await until(
    bob,
    "bob",
    "alice's read receipt",
    (seq) => window.chat.receipts.some((r) => r.seq === seq && r.user === "alice" && r.kind === "read"),
    readMe,
  );
  const mark = await bob.textContent(`#log li.live[data-seq="${readMe}"] .receipts`);
  if (!mark?.includes("read by alice")) throw new Error(`bob's page shows no receipt: ${mark}`);

  // Leave: Alice is out of the group; Bob writes on.
  await type(alice, "/leave");
  await until(alice, "alice", "leaving", () => !window.chat.joined);
  const out1 = await say(bob, "while you were out 1");
  const out2 = await say(bob, "while you were out 2");
  // The node no longer counts her a member: its log is refused, typed.
  await type(alice, "/fetch 5");
  await until(alice, "alice", "NotMember for /fetch", () =>
    window.chat.errors.some((e) => e.includes("NotMember")),
  );
  // Back in: the page fetches what she missed from the log, in order; live resumes.
  await type(alice, "/join");
  await until(alice, "alice", "the missed messages fetched", () => window.chat.history.length >= 2);
  const back = await say(bob, "welcome back");
  await sees(alice, "welcome back", "alice");
  const state = await chatState(alice);
  assertEqual(
    state.history.map((m) => [m.seq, m.sender, m.text]),
    [
      [out1, "bob", "while you were out 1"],
      [out2, "bob", "while you were out 2"],
    ],
    "what alice's page fetched on /join (exactly what she missed, in order)",
  );
  assertEqual(
    state.messages.map((m) => [m.seq, m.sender, m.text]),
    [
      [readMe, "bob", "read me"],
      [back, "bob", "welcome back"],
    ],
    "alice's live messages (nothing while she was out of the group)",
  );

  // Alice goes away for good: her last session closes, and Bob is told she is offline.
  await alice.evaluate(() => window.chat.client.close());
  await presenceOf(bob, "alice", "gone", "bob", "alice gone after her page closed its session");

  const bobState = await chatState(bob);
  console.log(
    `RESULT ${JSON.stringify({
      history: state.history,
      live: state.messages,
      receipts: bobState.receipts,
      out: [out1, out2],
    })}`,
  );
});
