// Drives headless Chromium (playwright-core over CDP) against a running node's dashboard; run
// by tests/dashboard.rs, which sets the environment below. Every wait is on an event or a
// condition (a response, a DOM state, the page's poll counter), never a fixed sleep.
//
// Prints one JSON line of measurements; exits non-zero with the failed check on stderr.

import { createRequire } from "node:module";
import assert from "node:assert/strict";

// playwright-core lives in the NODE_PATH folder, which ES module imports do not search.
const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run through tests/dashboard.rs)`);
  return v;
};
const BASE = env("DASHBOARD_URL");
const ADMIN = env("DASHBOARD_ADMIN_TOKEN");
// `walk` (default): the whole page against a small node. `scale`: load times on a big one.
const MODE = process.env.DASHBOARD_MODE || "walk";
const TIMEOUT = 20_000;

async function api(method, path, token = ADMIN, json = undefined) {
  const headers = { Authorization: `Bearer ${token}` };
  if (json !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(BASE + path, { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
  const body = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(body)}`);
  return body;
}

const polls = (page) => page.evaluate(() => Number(document.body.dataset.polls || 0));
// Resolves once the page has rendered a poll that started after this call.
async function nextRender(page) {
  const now = await polls(page);
  await page.waitForFunction((n) => Number(document.body.dataset.polls || 0) >= n + 2, now, { timeout: TIMEOUT });
}
const text = (page, sel) => page.locator(sel).first().innerText();
const attr = (page, sel, name) => page.locator(sel).first().getAttribute(name);
const row = (t) => `#tenant-rows tr[data-tenant="${t}"]`;

const context = await chromium.launchPersistentContext(env("DASHBOARD_PROFILE"), {
  executablePath: env("SWITCHBOARD_CHROMIUM"),
  headless: true,
  viewport: { width: 1440, height: 1000 },
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const metrics = MODE === "scale" ? await scale() : await walk();
  console.log(JSON.stringify(metrics));
} finally {
  await context.close();
}

// The page on a node with 1,000 tenants and 10,000 sessions: how long until it shows them,
// signed in already (the token in sessionStorage), over a few loads. Measured, not asserted
// (timings depend on the machine); the totals shown are checked.
async function scale() {
  const loads = [];
  const page = context.pages()[0] ?? (await context.newPage());
  await page.addInitScript((t) => sessionStorage.setItem("switchboard.token", t), ADMIN);
  const node = await api("GET", "/v1/node");
  for (let i = 0; i < 5; i++) {
    const started = Date.now();
    await page.goto(`${BASE}/dashboard`, { waitUntil: "commit" });
    await page.waitForFunction(() => Number(document.body.dataset.polls || 0) >= 1, null, { timeout: TIMEOUT });
    loads.push(Date.now() - started);
  }
  const total = node.sessions.foreground + node.sessions.background;
  assert.equal(await text(page, "#sessions-total"), total.toLocaleString("en-US"));
  const traffic = await api("GET", "/v1/traffic?limit=1");
  assert.match(await text(page, "#tenants-range"), new RegExp(`^1–50 of ${traffic.total.toLocaleString("en-US")}$`));
  assert.match(await text(page, "#conn-range"), new RegExp(`^1–100 of ${total.toLocaleString("en-US")}$`));
  assert.equal(await page.locator("#tenant-rows tr[data-tenant]").count(), 50);
  assert.equal(await page.locator("#conn-rows tr[data-session]").count(), 100);
  await page.screenshot({ path: env("DASHBOARD_SCREENSHOT") });
  const timed = async (path) => {
    const t = Date.now();
    const r = await fetch(BASE + path, { headers: { Authorization: `Bearer ${ADMIN}` } });
    const bytes = (await r.arrayBuffer()).byteLength;
    return { ms: Date.now() - t, bytes };
  };
  return {
    tenants: traffic.total,
    sessions: total,
    load_to_first_render_ms: loads,
    node: await timed("/v1/node"),
    traffic_page: await timed("/v1/traffic"),
    connections_page: await timed("/v1/connections"),
  };
}

// The whole page, its checks against the API and its buttons.
async function walk() {
  const TENANT = env("DASHBOARD_TENANT");
  const TENANT_KEY = env("DASHBOARD_TENANT_KEY");
  const PREVIOUS = env("DASHBOARD_PREVIOUS_VERSION");
  const metrics = {};
  const page = context.pages()[0] ?? (await context.newPage());
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  // Nothing leaves the node's origin: the page and uPlot are served by the node itself.
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(BASE) && !r.url().startsWith("data:")) foreign.push(r.url()); });

  // --- sign in: `/` leads to the page, which asks for a token ---
  const started = Date.now();
  await page.goto(`${BASE}/?interval=500`, { waitUntil: "load" });
  assert.match(page.url(), /\/dashboard/);
  metrics.load_ms = Date.now() - started;
  await page.locator("#login").waitFor({ state: "visible", timeout: TIMEOUT });
  await page.fill("#token", "not-a-token");
  await page.click("#login button[type=submit]");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.length > 0, null, { timeout: TIMEOUT });
  assert.match(await text(page, "#login-error"), /not accepted/);
  // Chromium logs the refused whoami (401) as a failed load: expected, and the only one.
  assert.deepEqual(consoleErrors, ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]);
  consoleErrors.length = 0;

  const signedIn = Date.now();
  await page.fill("#token", ADMIN);
  await page.click("#login button[type=submit]");
  await page.waitForFunction(() => Number(document.body.dataset.polls || 0) >= 1, null, { timeout: TIMEOUT });
  metrics.first_render_ms = Date.now() - signedIn;
  assert.equal(await page.evaluate(() => sessionStorage.getItem("switchboard.token")), ADMIN);

  // --- what the page shows is what the API says ---
  const node = await api("GET", "/v1/node");
  const traffic = await api("GET", "/v1/traffic");
  const conns = await api("GET", "/v1/connections");
  await nextRender(page);
  const build = await text(page, "#node-build");
  assert.ok(build.includes(node.build.version) && build.includes(node.build.commit), build);
  assert.equal(await text(page, "#node-health"), "healthy");
  assert.equal(await text(page, "#sessions-fg"), String(node.sessions.foreground), "foreground sessions");
  assert.equal(await text(page, "#sessions-bg"), String(node.sessions.background), "background sessions");
  assert.equal(await text(page, "#messages-total"), node.counters.messages_accepted.toLocaleString("en-US"), "messages");
  assert.equal(await text(page, "#auto-rollbacks"), String(node.auto_rollbacks), "automatic rollbacks");
  assert.ok(node.auto_rollbacks >= 1);
  // The measured level follows the machine's load (event-loop lag), so only the override,
  // which nothing sets yet, is compared.
  assert.equal(node.load.forced, null);
  assert.equal(await text(page, "#load-forced"), "measured");
  assert.deepEqual(await page.locator("#latency tr").evaluateAll((rs) => rs.map((r) => r.dataset.class)),
    node.latency.map((l) => l.class));
  // Charts drawn by uPlot (canvas), fed by the polls (from the second one on).
  await page.screenshot({ path: env("DASHBOARD_SCREENSHOT").replace(/\.png$/, "-canary.png"), fullPage: true });
  assert.equal(await page.locator("#chart-rates canvas").count(), 1);
  assert.equal(await page.locator("#chart-latency canvas").count(), 1);

  assert.equal(await page.locator("#tenant-rows tr[data-tenant]").count(), traffic.tenants.length);
  for (const t of traffic.tenants) {
    const p = t.policy;
    assert.equal(await text(page, `${row(t.tenant)} [data-field=sessions]`),
      `${t.sessions.foreground} / ${t.sessions.background}`, t.tenant);
    assert.equal(await attr(page, `${row(t.tenant)} [data-field=active]`, "data-version"), p.active?.version ?? "");
    assert.equal(await attr(page, `${row(t.tenant)} [data-field=canary]`, "data-version"), p.canary?.version ?? "");
    if (p.active) {
      assert.equal(await text(page, `${row(t.tenant)} [data-field=active] [data-count=handled]`),
        p.active.handled.toLocaleString("en-US"), `${t.tenant}: handled`);
      assert.equal(await text(page, `${row(t.tenant)} [data-field=active] [data-count=fallback]`),
        p.active.failed.toLocaleString("en-US"), `${t.tenant}: fallback`);
      // The plugin's own counters (a tenant has few here: all are shown).
      const counters = Object.entries(p.active.counters);
      assert.equal(await page.locator(`${row(t.tenant)} [data-field=active] [data-field=counters]`).count(),
        counters.length ? 1 : 0, `${t.tenant}: counters`);
      if (counters.length) {
        assert.equal(await text(page, `${row(t.tenant)} [data-field=active] [data-field=counters]`),
          counters.map(([k, v]) => `${k} ${v.toLocaleString("en-US")}`).join(" · "), `${t.tenant}: counters`);
      }
      assert.equal(await page.locator(`${row(t.tenant)} [data-field=active] [data-field=last-failure]`).count(),
        p.active.last_failure ? 1 : 0, `${t.tenant}: last failure`);
    }
    if (p.last_rollback) {
      assert.equal(await text(page, `${row(t.tenant)} [data-field=rollback-reason]`), p.last_rollback.reason);
    }
  }
  const globex = traffic.tenants.find((t) => t.tenant !== TENANT);
  assert.ok(globex.policy.last_rollback?.automatic, "the other tenant was rolled back by the node");
  assert.equal(globex.policy.active.counters.priority_spam_rejected, 1, "its plugin counted the spam");
  assert.match(await text(page, `${row(globex.tenant)} [data-field=rollback]`), /automatic/);
  assert.equal(await page.locator("#conn-rows tr[data-session]").count(), conns.connections.length);
  assert.match(await text(page, "#conn-range"), new RegExp(`of ${conns.total}$`));

  // --- search and filters narrow the lists ---
  await page.fill("#tenant-search", globex.tenant.slice(0, 3).toUpperCase());
  await page.waitForFunction((t) => {
    const rows = [...document.querySelectorAll("#tenant-rows tr[data-tenant]")];
    return rows.length === 1 && rows[0].dataset.tenant === t;
  }, globex.tenant, { timeout: TIMEOUT });
  await page.fill("#tenant-search", "");
  await page.waitForFunction((n) => document.querySelectorAll("#tenant-rows tr[data-tenant]").length === n,
    traffic.tenants.length, { timeout: TIMEOUT });
  await page.selectOption("#conn-presence", "background");
  const background = conns.connections.filter((c) => c.presence === "background").length;
  await page.waitForFunction((n) => document.getElementById("conn-range").textContent.endsWith(`of ${n}`),
    background, { timeout: TIMEOUT });
  await page.selectOption("#conn-presence", "");

  // --- buttons change the node ---
  page.on("dialog", (d) => d.accept());
  const before = await api("GET", `/v1/tenants/${TENANT}/policy`);
  assert.ok(before.canary, "the tenant has a canary to abort");
  let answered = page.waitForResponse((r) => r.url().endsWith(`/v1/tenants/${TENANT}/policy/canary`) && r.request().method() === "DELETE");
  await page.click(`${row(TENANT)} button[data-action=abort]`);
  assert.equal((await answered).status(), 200);
  assert.equal((await api("GET", `/v1/tenants/${TENANT}/policy`)).canary, null);
  await page.waitForFunction((s) => document.querySelector(s).dataset.version === "",
    `${row(TENANT)} [data-field=canary]`, { timeout: TIMEOUT });

  answered = page.waitForResponse((r) => r.url().endsWith(`/v1/tenants/${TENANT}/policy/rollback`));
  await page.click(`${row(TENANT)} button[data-action=rollback]`);
  assert.equal((await answered).status(), 200);
  const after = await api("GET", `/v1/tenants/${TENANT}/policy`);
  assert.equal(after.active.version, PREVIOUS);
  assert.equal(after.last_rollback.automatic, false);
  await page.waitForFunction(([s, v]) => document.querySelector(s).dataset.version === v,
    [`${row(TENANT)} [data-field=active]`, PREVIOUS], { timeout: TIMEOUT });
  assert.equal(await text(page, `${row(TENANT)} [data-field=rollback-reason]`), after.last_rollback.reason);

  // Promote: the canary aborted above, started again through the API, shows on the page, and
  // its Promote button makes it the active version.
  const CANARY = before.canary.version;
  await api("POST", `/v1/tenants/${TENANT}/policy/canary`, ADMIN, { version: CANARY, percent: 10 });
  await page.waitForFunction(([s, v]) => document.querySelector(s).dataset.version === v,
    [`${row(TENANT)} [data-field=canary]`, CANARY], { timeout: TIMEOUT });
  answered = page.waitForResponse((r) => r.url().endsWith(`/v1/tenants/${TENANT}/policy/promote`));
  await page.click(`${row(TENANT)} button[data-action=promote]`);
  assert.equal((await answered).status(), 200);
  const promoted = await api("GET", `/v1/tenants/${TENANT}/policy`);
  assert.equal(promoted.active.version, CANARY);
  assert.equal(promoted.canary, null);
  await page.waitForFunction(([s, v]) => document.querySelector(s).dataset.version === v,
    [`${row(TENANT)} [data-field=active]`, CANARY], { timeout: TIMEOUT });

  answered = page.waitForResponse((r) => r.url().endsWith("/v1/degradation") && r.request().method() === "PUT");
  await page.click('#degradation-buttons button[data-level="2"]');
  assert.equal((await answered).status(), 200);
  assert.equal((await api("GET", "/v1/degradation")).forced, 2);
  await page.waitForFunction(() => document.getElementById("load-forced").textContent === "forced to 2", null, { timeout: TIMEOUT });
  assert.equal(await text(page, "#load-level"), "2");
  await page.screenshot({ path: env("DASHBOARD_SCREENSHOT"), fullPage: true });
  answered = page.waitForResponse((r) => r.url().endsWith("/v1/degradation") && r.request().method() === "PUT");
  await page.click('#degradation-buttons button[data-level="none"]');
  assert.equal((await answered).status(), 200);
  assert.equal((await api("GET", "/v1/degradation")).forced, null);
  await page.waitForFunction(() => document.getElementById("load-forced").textContent === "measured", null, { timeout: TIMEOUT });

  // Measured: one poll's transfer (the three JSON reads the page makes).
  metrics.poll_bytes = await page.evaluate(() => performance.getEntriesByType("resource")
    .filter((e) => /\/v1\/(node|traffic|connections)/.test(e.name)).slice(-3)
    .reduce((n, e) => n + e.transferSize, 0));
  metrics.page_bytes = await page.evaluate(() => performance.getEntriesByType("resource")
    .filter((e) => /\/dashboard\//.test(e.name)).reduce((n, e) => n + e.transferSize, 0) +
    performance.getEntriesByType("navigation")[0].transferSize);
  assert.deepEqual(consoleErrors, []);
  assert.deepEqual(foreign, []);

  // --- a tenant key sees its own tenant only, and no operator controls ---
  const tpage = await context.newPage(); // a new tab: sessionStorage starts empty
  await tpage.goto(`${BASE}/dashboard?interval=500`);
  await tpage.locator("#login").waitFor({ state: "visible", timeout: TIMEOUT });
  await tpage.fill("#token", TENANT_KEY);
  await tpage.click("#login button[type=submit]");
  await tpage.waitForFunction(() => Number(document.body.dataset.polls || 0) >= 1, null, { timeout: TIMEOUT });
  assert.equal(await text(tpage, "#who"), `tenant ${TENANT}`);
  assert.deepEqual(await tpage.locator("#tenant-rows tr[data-tenant]").evaluateAll((rs) => rs.map((r) => r.dataset.tenant)), [TENANT]);
  assert.equal(await tpage.locator("#node").isVisible(), false);
  assert.equal(await tpage.locator("button[data-action]").count(), 0);
  const own = await api("GET", `/v1/tenants/${TENANT}/connections`, TENANT_KEY);
  assert.ok(own.connections.every((c) => c.tenant === TENANT));
  const shownTenants = await tpage.locator("#conn-rows tr[data-session] td:nth-child(2)").allInnerTexts();
  assert.equal(shownTenants.length, own.total);
  assert.ok(shownTenants.every((t) => t === TENANT), shownTenants.join());
  await tpage.screenshot({ path: env("DASHBOARD_TENANT_SCREENSHOT"), fullPage: true });

  return metrics;
}
