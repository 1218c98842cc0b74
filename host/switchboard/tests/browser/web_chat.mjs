// Drives the web chat (examples/web-chat) in headless Chromium for web_chat.rs: two pages chat
// through the node over WebTransport (the dev certificate pinned by serverCertificateHashes),
// then one closes its session, misses two messages, reloads, and must show exactly those;
// then its session drops and the SDK reconnects and resumes by itself.
//
// Input (environment): what pages.mjs reads, ALICE_TOKEN, BOB_TOKEN. Output: one line
// `RESULT <json>` on success; any failure throws (exit code 1) with what was expected and
// what the pages showed. Every wait is on a condition in the page, never a sleep.

import {
  WAIT_MS,
  assertEqual,
  chatState,
  env,
  open,
  ready,
  say,
  sees,
  withBrowser,
} from "./pages.mjs";

await withBrowser(async (context) => {
  const alice = await open(context, env("ALICE_TOKEN"), "alice");
  const bob = await open(context, env("BOB_TOKEN"), "bob");

  const hello = await say(alice, "hello bob");
  await sees(bob, "hello bob", "bob");
  await sees(alice, "hello bob", "alice");
  const hi = await say(bob, "hi alice");
  await sees(alice, "hi alice", "alice");
  await sees(bob, "hi alice", "bob");
  const before = (await chatState(alice)).messages;
  assertEqual(
    before.map((m) => [m.seq, m.sender, m.text]),
    [
      [hello, "alice", "hello bob"],
      [hi, "bob", "hi alice"],
    ],
    "alice's messages before the reload",
  );

  // Alice's session ends (as when a tab is put away); Bob goes on.
  await alice.evaluate(() => window.chat.client.close());
  await alice.waitForFunction(() => window.chat.state === "closed", null, { timeout: WAIT_MS });
  const missed1 = await say(bob, "missed one");
  const missed2 = await say(bob, "missed two");

  // Reload: a new page, a new session, the cursors from localStorage.
  await alice.reload();
  await ready(alice, "alice after reload");
  // Alice's own next message marks the end: anything resent before it would show up first.
  const back = await say(alice, "back again");
  await sees(alice, "back again", "alice after reload");
  assertEqual(
    (await chatState(alice)).messages.map((m) => [m.seq, m.sender, m.text]),
    [
      [missed1, "bob", "missed one"],
      [missed2, "bob", "missed two"],
      [back, "alice", "back again"],
    ],
    "alice's messages after the reload (exactly what she missed, then live)",
  );
  await sees(bob, "back again", "bob");

  // The session drops under the page (as on a network change; the test reaches into the
  // client for its transport): the SDK reconnects by itself, with backoff, and resumes from
  // its cursors while Bob writes, so Alice sees each message once, in order.
  await alice.evaluate(() => window.chat.client.session.transport.close());
  const during = await say(bob, "during the drop");
  try {
    await alice.waitForFunction(
      () => window.chat.states.includes("reconnecting") && window.chat.state === "connected",
      null,
      { timeout: WAIT_MS },
    );
  } catch (e) {
    throw new Error(`alice did not reconnect: ${JSON.stringify(await chatState(alice))}`);
  }
  const again = await say(alice, "reconnected");
  await sees(alice, "reconnected", "alice after the drop");
  const after = (await chatState(alice)).messages;
  assertEqual(
    after.map((m) => [m.seq, m.sender, m.text]),
    [
      [missed1, "bob", "missed one"],
      [missed2, "bob", "missed two"],
      [back, "alice", "back again"],
      [during, "bob", "during the drop"],
      [again, "alice", "reconnected"],
    ],
    "alice's messages after the reload and the drop (each once, in order)",
  );
  await sees(bob, "reconnected", "bob");
  console.log(
    `RESULT ${JSON.stringify({ before, after, bob: (await chatState(bob)).messages })}`,
  );
});
