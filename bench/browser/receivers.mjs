// Browser receivers for `switchboard-webtransport`'s burst (bench/src/webtransport/main.rs):
// headless Chromium with one page per token, each a SwitchboardClient (sdk/js) connected to
// the node over WebTransport, counting the messages of GROUP. Prints `READY` once every page
// had its Welcome, then `RESULT {"last_ms": …, "pages": […]}` once every page had EXPECT
// messages (`last_ms`: Unix ms when the last page got its last one, by the page's clock,
// which is the machine's).
//
// The pages come from a loopback HTTP server of this script's. Input (environment):
// SWITCHBOARD_CHROMIUM, REPO (the repository's root), WT_URL, WT_HASH, TOKENS (comma
// separated), GROUP, EXPECT, WAIT_MS.

import { readFile } from "node:fs/promises";
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";

// playwright-core comes from NODE_PATH (xtask installs it outside the repository), which
// only require() honours, not import.
const { chromium } = createRequire(import.meta.url)("playwright-core");

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const repo = env("REPO");
const expect = Number(env("EXPECT"));
const waitMs = Number(env("WAIT_MS"));

const PAGE = `<!doctype html>
<meta charset="utf-8">
<script type="importmap">
  { "imports": { "@switchboard/client": "/sdk/index.js", "flatbuffers": "/flatbuffers/flatbuffers.js" } }
</script>
<script type="module">
  import { SwitchboardClient } from "@switchboard/client";
  const q = new URLSearchParams(location.search);
  const bench = { connected: false, count: 0, first: 0, last: 0, errors: [] };
  window.bench = bench;
  const client = new SwitchboardClient({
    url: q.get("url"),
    token: q.get("token"),
    serverCertificateHashes: [q.get("hash")],
    clientName: "receivers-bench",
  });
  const group = q.get("group");
  // What an app does with a message, at the least: take it in order (the SDK's tracker and
  // its acks run as for any page).
  client.onMessage = (m) => {
    if (m.group !== group) return;
    const now = Date.now();
    if (bench.count === 0) bench.first = now;
    bench.count++;
    bench.last = now;
  };
  client.onError = (e) => bench.errors.push(String(e));
  client.connect().then(() => { bench.connected = true; }, (e) => bench.errors.push(String(e)));
</script>`;

const files = {
  "/sdk/": path.join(repo, "sdk/js/dist/"),
  "/flatbuffers/": path.join(repo, "sdk/js/node_modules/flatbuffers/mjs/"),
};

// The page, the SDK's build and flatbuffers, from a loopback HTTP server (a secure context).
// Not playwright's request interception: with it on, Chromium's WebTransport handshakes fail.
async function answer(req, res) {
  const url = new URL(req.url, "http://127.0.0.1");
  if (url.pathname === "/page.html") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    return res.end(PAGE);
  }
  for (const [prefix, dir] of Object.entries(files)) {
    if (url.pathname.startsWith(prefix) && !url.pathname.includes("..")) {
      try {
        const body = await readFile(path.join(dir, url.pathname.slice(prefix.length)));
        res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" });
        return res.end(body);
      } catch {
        break;
      }
    }
  }
  res.writeHead(404);
  res.end();
}
const server = http.createServer((req, res) => void answer(req, res));
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const ORIGIN = `http://127.0.0.1:${server.address().port}`;

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
  const context = await browser.newContext();
  const pages = [];
  for (const token of env("TOKENS").split(",")) {
    const page = await context.newPage();
    page.on("pageerror", (e) => console.error(`page error: ${e}`));
    const q = new URLSearchParams({ url: env("WT_URL"), hash: env("WT_HASH"), token, group: env("GROUP") });
    await page.goto(`${ORIGIN}/page.html?${q}`);
    pages.push(page);
  }
  const state = (p) => p.evaluate(() => window.bench);
  for (const p of pages) {
    try {
      await p.waitForFunction(() => window.bench?.connected, null, { timeout: waitMs });
    } catch (e) {
      throw new Error(`a page did not connect: ${JSON.stringify(await state(p))}`);
    }
  }
  console.log("READY");
  for (const p of pages) {
    try {
      await p.waitForFunction((n) => window.bench.count >= n, expect, { timeout: waitMs, polling: 50 });
    } catch (e) {
      throw new Error(`a page did not get all ${expect} messages: ${JSON.stringify(await state(p))}`);
    }
  }
  const got = await Promise.all(pages.map(state));
  console.log(`RESULT ${JSON.stringify({ last_ms: Math.max(...got.map((b) => b.last)), pages: got })}`);
} finally {
  await browser.close();
  server.close();
}
