// Drives the web chat (examples/web-chat) in headless Chromium for web_chat.rs: two pages chat
// through the node over WebTransport (the dev certificate pinned by serverCertificateHashes),
// then one closes its session, misses two messages, reloads, and must show exactly those;
// then its session drops and the SDK reconnects and resumes by itself.
//
// Input (environment): SWITCHBOARD_CHROMIUM, CHAT_PAGE (the page's URL without query),
// WT_URL, WT_HASH, ALICE_TOKEN, BOB_TOKEN. Output: one line `RESULT <json>` on success;
// any failure throws (exit code 1) with what was expected and what the pages showed.
// Every wait is on a condition in the page, never a sleep.

import { createRequire } from "node:module";

// playwright-core comes from NODE_PATH (xtask installs it outside the repository), which
// only require() honours, not import.
const { chromium } = createRequire(import.meta.url)("playwright-core");

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

const chromiumPath = env("SWITCHBOARD_CHROMIUM");
const pageUrl = (token) => {
  const q = new URLSearchParams({ url: env("WT_URL"), hash: env("WT_HASH"), token, group: "general" });
  return `${env("CHAT_PAGE")}?${q}`;
};
const WAIT_MS = 20_000;

function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

async function open(context, token, name) {
  const page = await context.newPage();
  page.on("console", (m) => console.error(`[${name}] ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e}`));
  await page.goto(pageUrl(token));
  await ready(page, name);
  return page;
}

async function ready(page, name) {
  try {
    await page.waitForFunction(
      () => window.chat && (window.chat.joined || window.chat.state === "failed"),
      null,
      { timeout: WAIT_MS },
    );
  } catch (e) {
    throw new Error(`${name} did not connect: ${JSON.stringify(await chatState(page))}: ${e}`);
  }
  const state = await chatState(page);
  if (!state.joined) throw new Error(`${name} failed to connect: ${JSON.stringify(state)}`);
}

async function chatState(page) {
  return page.evaluate(() =>
    window.chat
      ? {
          state: window.chat.state,
          joined: window.chat.joined,
          messages: window.chat.messages,
          errors: window.chat.errors,
        }
      : null,
  );
}

/** Types `text` and presses Send, like a person; resolves with the acknowledged seq. */
async function say(page, text) {
  const before = await page.evaluate(() => window.chat.sent.length);
  await page.fill("#text", text);
  await page.click("#send");
  await page.waitForFunction((n) => window.chat.sent.length > n, before, { timeout: WAIT_MS });
  return page.evaluate((n) => window.chat.sent[n].seq, before);
}

/** Waits until the page shows a message with `text`. */
async function sees(page, text, name) {
  try {
    await page.waitForFunction((t) => window.chat.messages.some((m) => m.text === t), text, {
      timeout: WAIT_MS,
    });
  } catch (e) {
    throw new Error(`${name} never showed ${JSON.stringify(text)}: ${JSON.stringify(await chatState(page))}`);
  }
}

const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  // One browser profile (a fresh one, made by playwright), two tabs.
  const context = await browser.newContext();
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
} finally {
  await browser.close();
}
