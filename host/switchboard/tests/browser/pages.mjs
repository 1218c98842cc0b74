// What the web chat's browser scripts share (web_chat.mjs, web_chat_group.mjs): the browser,
// opening a chat page, reading its state (`window.chat`, examples/web-chat/app.js), typing
// into it like a person, and waiting on a condition in the page — never a sleep.
//
// Input (environment): SWITCHBOARD_CHROMIUM, CHAT_PAGE (the page's URL without query),
// WT_URL, WT_HASH.

import { createRequire } from "node:module";

// playwright-core comes from NODE_PATH (xtask installs it outside the repository), which
// only require() honours, not import.
const { chromium } = createRequire(import.meta.url)("playwright-core");

export const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

const pageUrl = (token) => {
  const q = new URLSearchParams({ url: env("WT_URL"), hash: env("WT_HASH"), token, group: "general" });
  return `${env("CHAT_PAGE")}?${q}`;
};
export const WAIT_MS = 20_000;

export function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

/** Runs `body(context)` with a fresh headless Chromium profile; closes the browser after. */
export async function withBrowser(body) {
  const browser = await chromium.launch({
    executablePath: env("SWITCHBOARD_CHROMIUM"),
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
    // One browser profile (a fresh one, made by playwright), a tab per user.
    await body(await browser.newContext());
  } finally {
    await browser.close();
  }
}

export async function open(context, token, name) {
  const page = await context.newPage();
  page.on("console", (m) => console.error(`[${name}] ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e}`));
  await page.goto(pageUrl(token));
  await ready(page, name);
  return page;
}

export async function ready(page, name) {
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

export async function chatState(page) {
  return page.evaluate(() =>
    window.chat
      ? {
          state: window.chat.state,
          joined: window.chat.joined,
          messages: window.chat.messages,
          history: window.chat.history,
          receipts: window.chat.receipts,
          members: window.chat.members,
          presence: window.chat.presence,
          notices: window.chat.notices,
          errors: window.chat.errors,
        }
      : null,
  );
}

/** Types `text` and presses Send, like a person; resolves with the acknowledged seq. */
export async function say(page, text) {
  const before = await page.evaluate(() => window.chat.sent.length);
  await page.fill("#text", text);
  await page.click("#send");
  await page.waitForFunction((n) => window.chat.sent.length > n, before, { timeout: WAIT_MS });
  return page.evaluate((n) => window.chat.sent[n].seq, before);
}

/** Types a command (`/leave`, `/bg`, ...) and presses Send. */
export async function type(page, command) {
  await page.fill("#text", command);
  await page.click("#send");
}

/** Waits until `cond(arg)`, a function run in the page (it reads `window.chat`), holds;
 * says what the page showed if it never does. */
export async function until(page, name, what, cond, arg = null) {
  try {
    await page.waitForFunction(cond, arg, { timeout: WAIT_MS });
  } catch (e) {
    throw new Error(`${name}: ${what} never happened: ${JSON.stringify(await chatState(page))}`);
  }
}

/** Waits until the page shows a message with `text`. */
export async function sees(page, text, name) {
  await until(page, name, `showing ${JSON.stringify(text)}`, (t) =>
    window.chat.messages.some((m) => m.text === t), text);
}
