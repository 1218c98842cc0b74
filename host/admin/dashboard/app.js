// Switchboard's operator dashboard: polls the admin API's JSON endpoints and renders them.
// Plain JS, no build step; charts by the vendored uPlot. Everything it shows comes from
// documented endpoints (docs/admin-api.md), so what the page shows a script can read too.
"use strict";

(() => {
  const TOKEN_KEY = "switchboard.token";
  const params = new URLSearchParams(location.search);
  // Poll interval in ms (?interval=), at least 250.
  const INTERVAL = Math.max(250, Number(params.get("interval")) || 2000);
  const CHART_POINTS = 150;
  const TENANT_PAGE = 50;
  const CONN_PAGE = 100;

  const $ = (id) => document.getElementById(id);
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
  const num = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
  const rate = (n) => (n == null ? "–" : n >= 100 ? n.toFixed(0) : n.toFixed(1));
  const ms = (n) => (n == null ? "–" : n < 1 ? `${(n * 1000).toFixed(0)} µs` : `${n.toFixed(1)} ms`);
  const short = (v) => (v ? v.slice(0, 12) : "built-in");
  const bytes = (n) => {
    if (n == null) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  };
  const duration = (s) => {
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), sec = s % 60;
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
  };
  const ago = (atMs, nowMs) => `${duration(Math.max(0, Math.round((nowMs - atMs) / 1000)))} ago`;

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    who: null,
    polls: 0,
    timer: null,
    inflight: false,
    again: false,
    prevNode: null,
    prevTenants: new Map(),
    tenantOffset: 0,
    connOffset: 0,
    tenantTotal: 0,
    connTotal: 0,
    series: { t: [], msgs: [], dels: [], p50a: [], p99a: [], p50b: [], p99b: [] },
    charts: {},
  };

  class ApiError extends Error {
    constructor(status, problem) {
      super(problem?.detail || problem?.title || `HTTP ${status}`);
      this.status = status;
      this.code = problem?.code;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${state.token}` };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    const text = await r.text();
    const json = text ? JSON.parse(text) : null;
    if (!r.ok) throw new ApiError(r.status, json);
    return json;
  }

  function showError(e) {
    const el = $("error");
    el.textContent = e ? `${e.code ? e.code + ": " : ""}${e.message}` : "";
    el.hidden = !e;
  }

  // --- sign in / out ---

  function showLogin(message) {
    stopPolling();
    $("app").hidden = true;
    $("signout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  async function start() {
    try {
      state.who = await api("GET", "/v1/whoami");
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(e.status === 401 ? "That token was not accepted." : e.message);
      return;
    }
    const admin = state.who.role === "admin";
    document.body.dataset.role = state.who.role;
    for (const el of document.querySelectorAll("[data-admin]")) el.hidden = !admin;
    $("who").textContent = admin ? "admin" : `tenant ${state.who.tenant}`;
    $("login").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    poll();
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(TOKEN_KEY, state.token);
    start();
  });

  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showLogin();
  });

  // --- polling ---

  function stopPolling() {
    clearTimeout(state.timer);
    state.timer = null;
  }

  // One poll at a time: a poll asked for while one is in flight (a click, a search) runs
  // right after it, so there is never more than one polling loop.
  async function poll() {
    if (state.inflight) {
      state.again = true;
      return;
    }
    state.inflight = true;
    stopPolling();
    try {
      if (state.who.role === "admin") {
        const [node, tenants, conns] = await Promise.all([
          api("GET", "/v1/node"),
          api("GET", `/v1/traffic?${tenantQuery()}`),
          api("GET", `/v1/connections?${connQuery()}`),
        ]);
        renderNode(node);
        renderTenants(tenants.tenants, node.now_ms, tenants);
        renderConnections(conns, node.now_ms);
      } else {
        const t = encodeURIComponent(state.who.tenant);
        const [health, tenant, conns] = await Promise.all([
          fetch("/healthz", { cache: "no-store" }).then((r) => r.json()),
          api("GET", `/v1/tenants/${t}/traffic`),
          api("GET", `/v1/tenants/${t}/connections?${connQuery()}`),
        ]);
        renderHealth(health);
        const now = Date.now();
        renderTenants([tenant], now, { total: 1, offset: 0, limit: 1 });
        renderConnections(conns, now);
      }
      showError(null);
      state.polls += 1;
      document.body.dataset.polls = String(state.polls);
      $("poll-state").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (e.status === 401) {
        state.inflight = false;
        state.token = null;
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin("The token stopped working (deleted key, or the node's admin token changed).");
        return;
      }
      showError(e);
      $("poll-state").textContent = "update failed";
    }
    state.inflight = false;
    if (!state.token) return; // signed out meanwhile
    if (state.again) {
      state.again = false;
      poll();
    } else {
      state.timer = setTimeout(poll, INTERVAL);
    }
  }

  // --- node ---

  function renderHealth(h) {
    const badge = $("node-health");
    badge.textContent = h.status === "ok" ? "healthy" : `degraded: store ${h.store}`;
    badge.className = `badge ${h.status}`;
    badge.title = h.store_reason || "";
  }

  function renderNode(n) {
    renderHealth(n.health);
    $("node-build").textContent = `v${n.build.version} · ${n.build.commit} · ${n.build.profile}`;
    $("node-uptime").textContent = `up ${duration(n.uptime_s)}`;
    const c = n.counters;
    const fg = n.sessions.foreground, bg = n.sessions.background;
    $("sessions-total").textContent = num(fg + bg);
    $("sessions-fg").textContent = num(fg);
    $("sessions-bg").textContent = num(bg);
    $("connections").textContent = num(c.connections);
    $("messages-total").textContent = num(c.messages_accepted);
    $("auto-rollbacks").textContent = num(n.auto_rollbacks);
    $("queue-bytes").textContent = bytes(n.queues.bytes);
    const level = `${n.load.level}`;
    $("load-level").textContent = level;
    $("load-level-2").textContent = ["0 normal", "1 elevated", "2 high", "3 critical"][n.load.level] || level;
    $("load-forced").textContent = n.load.forced == null ? "measured" : `forced to ${n.load.forced}`;
    $("load-override").textContent = n.load.forced == null ? "no" : `yes, level ${n.load.forced}`;
    $("queue-fill").textContent = `${n.load.commit_queue_percent}% / ${n.load.push_queue_percent}%`;
    $("shedding").textContent =
      `${n.load.tenants_shedding_receipts} · ${n.load.tenants_shedding_presence} · ${n.load.tenants_shedding_background}`;
    for (const b of document.querySelectorAll("#degradation-buttons button")) {
      const v = b.dataset.level === "none" ? null : Number(b.dataset.level);
      b.classList.toggle("active", v === n.load.forced);
    }
    $("latency").innerHTML = n.latency.map((l) =>
      `<tr data-class="${esc(l.class)}"><td>${esc(l.class)}</td><td>${num(l.count)}</td><td>${ms(l.mean_ms)}</td>` +
      `<td>${ms(l.p50_ms)}</td><td>${ms(l.p90_ms)}</td><td>${ms(l.p99_ms)}</td></tr>`).join("");
    const d = n.queues.depth;
    $("queue-depths").innerHTML = ["high", "normal", "low", "notices"].map((s) => `<td>${num(d[s])}</td>`).join("");
    $("slow").innerHTML = n.slow_consumers.length
      ? n.slow_consumers.map((s) => `<tr><td>${s.session}</td><td>${esc(s.tenant)}</td><td>${esc(s.user)}</td>` +
        `<td>${num(s.queued)} (${bytes(s.queued_bytes)})</td><td>${connState(s)}</td></tr>`).join("")
      : `<tr><td colspan="5" class="muted">none: every session keeps up</td></tr>`;
    $("outbox-overflows").textContent = num(c.outbox_overflows);
    $("slow-disconnected").textContent = num(c.slow_consumers_disconnected);

    // Rates: counter deltas over the node's own clock.
    const prev = state.prevNode;
    let msgs = null, dels = null;
    if (prev && n.now_ms > prev.now_ms) {
      const dt = (n.now_ms - prev.now_ms) / 1000;
      msgs = Math.max(0, c.messages_accepted - prev.counters.messages_accepted) / dt;
      dels = Math.max(0, (c.deliveries_live + c.deliveries_catch_up) -
        (prev.counters.deliveries_live + prev.counters.deliveries_catch_up)) / dt;
    }
    state.prevNode = n;
    $("rate-messages").textContent = rate(msgs);
    $("rate-deliveries").textContent = rate(dels);
    const lat = Object.fromEntries(n.latency.map((l) => [l.class, l]));
    pushPoint(n.now_ms / 1000, msgs, dels, lat.active, lat.background);
  }

  // --- charts (uPlot) ---

  function makeCharts() {
    if (state.charts.rates || typeof uPlot === "undefined") return;
    const s = state.series;
    const size = (el) => ({ width: Math.max(300, el.clientWidth - 8), height: 200 });
    const rEl = $("chart-rates"), lEl = $("chart-latency");
    rEl.textContent = "";
    lEl.textContent = "";
    state.charts.rates = new uPlot({
      ...size(rEl),
      series: [{}, { label: "messages/s", stroke: "#2e5bff", width: 2 },
        { label: "deliveries/s", stroke: "#12b76a", width: 2 }],
      axes: [{}, { size: 60 }],
    }, [s.t, s.msgs, s.dels], rEl);
    state.charts.latency = new uPlot({
      ...size(lEl),
      series: [{}, { label: "active p50", stroke: "#2e5bff" }, { label: "active p99", stroke: "#2e5bff", dash: [6, 4] },
        { label: "background p50", stroke: "#f79009" }, { label: "background p99", stroke: "#f79009", dash: [6, 4] }],
      axes: [{}, { size: 60 }],
    }, [s.t, s.p50a, s.p99a, s.p50b, s.p99b], lEl);
    window.addEventListener("resize", () => {
      state.charts.rates.setSize(size(rEl));
      state.charts.latency.setSize(size(lEl));
    });
  }

  function pushPoint(t, msgs, dels, active, background) {
    const s = state.series;
    const add = (arr, v) => { arr.push(v); if (arr.length > CHART_POINTS) arr.shift(); };
    add(s.t, t); add(s.msgs, msgs); add(s.dels, dels);
    add(s.p50a, active?.p50_ms ?? null); add(s.p99a, active?.p99_ms ?? null);
    add(s.p50b, background?.p50_ms ?? null); add(s.p99b, background?.p99_ms ?? null);
    // Drawn from the second point on: an empty time axis is meaningless.
    if (!state.charts.rates && s.t.length >= 2) makeCharts();
    if (state.charts.rates) {
      state.charts.rates.setData([s.t, s.msgs, s.dels]);
      state.charts.latency.setData([s.t, s.p50a, s.p99a, s.p50b, s.p99b]);
    }
  }

  // --- tenants ---

  function tenantQuery() {
    const q = new URLSearchParams({ offset: state.tenantOffset, limit: TENANT_PAGE, sort: $("tenant-sort").value });
    const search = $("tenant-search").value.trim();
    if (search) q.set("q", search);
    return q;
  }

  // The plugin's own counters shown in a cell; the rest are in the policy status.
  const COUNTERS_SHOWN = 5;

  function versionCell(h) {
    if (!h) return `<span class="muted">built-in</span>`;
    const failures = h.traps + h.out_of_fuel + h.deadline + h.invalid_output;
    const counters = Object.entries(h.counters ?? {});
    const more = counters.length > COUNTERS_SHOWN ? ` · +${counters.length - COUNTERS_SHOWN} more` : "";
    const counterLine = counters.length
      ? `<div class="counts" data-field="counters">` +
        counters.slice(0, COUNTERS_SHOWN).map(([k, v]) => `${esc(k)} ${num(v)}`).join(" · ") + `${more}</div>`
      : "";
    const failure = h.last_failure
      ? `<div class="counts" data-field="last-failure" title="${esc(h.last_failure.reason)}">` +
        `<span class="tag bad">${esc(h.last_failure.hook)}</span> ${esc(h.last_failure.reason)}</div>`
      : "";
    return `<code title="${esc(h.version)}">${esc(short(h.version))}</code><div class="counts">` +
      `handled <b data-count="handled">${num(h.handled)}</b> · failed <b data-count="failed">${num(failures)}</b>` +
      ` · fallback <b data-count="fallback">${num(h.failed)}</b></div>${counterLine}${failure}`;
  }

  function renderTenants(list, nowMs, page) {
    const admin = state.who.role === "admin";
    const seen = new Map();
    const rows = list.map((t) => {
      const p = t.policy;
      const dels = t.deliveries_live + t.deliveries_catch_up;
      const prev = state.prevTenants.get(t.tenant);
      let mr = null, dr = null;
      if (prev && nowMs > prev.at) {
        const dt = (nowMs - prev.at) / 1000;
        mr = Math.max(0, t.messages_accepted - prev.messages) / dt;
        dr = Math.max(0, dels - prev.dels) / dt;
      }
      seen.set(t.tenant, { at: nowMs, messages: t.messages_accepted, dels });
      const sheds = [t.shedding.receipts && "receipts", t.shedding.presence && "presence",
        t.shedding.background_delivery && "background"].filter(Boolean);
      const canary = p.canary
        ? `${versionCell(p.canary)}<span class="tag warn">${p.canary.percent}%` +
          `${p.canary.groups.length ? ` + ${p.canary.groups.length} groups` : ""}</span>`
        : `<span class="muted">none</span>`;
      const rb = p.last_rollback
        ? `<span class="tag ${p.last_rollback.automatic ? "bad" : ""}">${p.last_rollback.automatic ? "automatic" : "manual"}</span> ` +
          `<code>${esc(short(p.last_rollback.from))}</code> → <code>${esc(short(p.last_rollback.to))}</code> ` +
          `<span class="muted">${ago(p.last_rollback.at_ms, nowMs)}</span><div class="counts" data-field="rollback-reason">${esc(p.last_rollback.reason)}</div>`
        : `<span class="muted">never</span>`;
      const id = esc(t.tenant);
      const canRollback = p.canary || p.active || p.previous.length;
      const actions = admin
        ? `<td class="buttons">` +
          `<button type="button" data-action="promote" data-tenant="${id}" ${p.canary ? "" : "disabled"}>Promote</button>` +
          `<button type="button" data-action="abort" data-tenant="${id}" ${p.canary ? "" : "disabled"}>Abort canary</button>` +
          `<button type="button" class="danger" data-action="rollback" data-tenant="${id}" ${canRollback ? "" : "disabled"}>Roll back</button></td>`
        : "";
      return `<tr data-tenant="${id}"><td><b>${id}</b>${p.applied_revision === p.revision ? "" : ` <span class="tag warn">applying</span>`}</td>` +
        `<td data-field="sessions">${num(t.sessions.foreground)} / ${num(t.sessions.background)}</td>` +
        `<td>${rate(mr)}</td><td>${rate(dr)}</td>` +
        `<td>${sheds.length ? sheds.map((s) => `<span class="tag warn">${s}</span>`).join(" ") : `<span class="muted">nothing</span>`}</td>` +
        `<td data-field="active" data-version="${esc(p.active?.version ?? "")}">${versionCell(p.active)}</td>` +
        `<td data-field="canary" data-version="${esc(p.canary?.version ?? "")}">${canary}</td>` +
        `<td data-field="rollback">${rb}</td>${actions}</tr>`;
    });
    state.prevTenants = seen;
    $("tenant-rows").innerHTML = rows.join("") ||
      `<tr><td colspan="9" class="muted">no tenant matches</td></tr>`;
    state.tenantTotal = page.total;
    const end = Math.min(page.offset + list.length, page.total);
    $("tenants-range").textContent = page.total ? `${page.offset + 1}–${end} of ${num(page.total)}` : "0 of 0";
    $("tenants-prev").disabled = page.offset === 0;
    $("tenants-next").disabled = end >= page.total;
  }

  $("tenant-rows").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (!b) return;
    const t = b.dataset.tenant, action = b.dataset.action;
    const what = { promote: "promote the canary of", abort: "abort the canary of", rollback: "roll back the policy of" }[action];
    if (!confirm(`Really ${what} tenant ${t}?`)) return;
    const path = `/v1/tenants/${encodeURIComponent(t)}/policy`;
    b.disabled = true;
    try {
      if (action === "abort") await api("DELETE", `${path}/canary`);
      else await api("POST", `${path}/${action}`);
      showError(null);
    } catch (e) {
      showError(e);
    }
    poll();
  });

  $("degradation-buttons").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-level]");
    if (!b) return;
    const level = b.dataset.level === "none" ? null : Number(b.dataset.level);
    try {
      await api("PUT", "/v1/degradation", { level });
      showError(null);
    } catch (e) {
      showError(e);
    }
    poll();
  });

  // --- connections ---

  function connQuery() {
    const q = new URLSearchParams({ offset: state.connOffset, limit: CONN_PAGE, sort: $("conn-sort").value });
    const tenant = $("conn-tenant").value.trim();
    const user = $("conn-user").value.trim();
    const presence = $("conn-presence").value;
    if (tenant && state.who.role === "admin") q.set("tenant", tenant);
    if (user) q.set("user", user);
    if (presence) q.set("presence", presence);
    return q;
  }

  function connState(c) {
    if (c.slow) return `<span class="tag bad">slow: closing</span>`;
    if (c.catching_up) return `<span class="tag warn">catching up</span>`;
    return `<span class="muted">ok</span>`;
  }

  function renderConnections(page, nowMs) {
    $("conn-rows").innerHTML = page.connections.map((c) =>
      `<tr data-session="${c.session}"><td>${c.session}</td><td>${esc(c.tenant)}</td><td>${esc(c.user)}</td>` +
      `<td>${esc(c.presence)}</td><td>${ago(c.connected_at_ms, nowMs)}</td><td class="mono">${esc(c.remote ?? "")}</td>` +
      `<td>${num(c.groups)}</td><td>${num(c.queued)}</td><td>${connState(c)}</td></tr>`).join("") ||
      `<tr><td colspan="9" class="muted">no connection matches</td></tr>`;
    state.connTotal = page.total;
    const end = Math.min(page.offset + page.connections.length, page.total);
    $("conn-range").textContent = page.total ? `${page.offset + 1}–${end} of ${num(page.total)}` : "0 of 0";
    $("conn-prev").disabled = page.offset === 0;
    $("conn-next").disabled = end >= page.total;
  }

  // --- paging and search ---

  const debounce = (f) => { let t; return () => { clearTimeout(t); t = setTimeout(f, 250); }; };
  $("tenants-prev").addEventListener("click", () => { state.tenantOffset = Math.max(0, state.tenantOffset - TENANT_PAGE); poll(); });
  $("tenants-next").addEventListener("click", () => { state.tenantOffset += TENANT_PAGE; poll(); });
  $("conn-prev").addEventListener("click", () => { state.connOffset = Math.max(0, state.connOffset - CONN_PAGE); poll(); });
  $("conn-next").addEventListener("click", () => { state.connOffset += CONN_PAGE; poll(); });
  const refilterTenants = debounce(() => { state.tenantOffset = 0; poll(); });
  const refilterConns = debounce(() => { state.connOffset = 0; poll(); });
  $("tenant-search").addEventListener("input", refilterTenants);
  $("tenant-sort").addEventListener("change", refilterTenants);
  for (const id of ["conn-tenant", "conn-user"]) $(id).addEventListener("input", refilterConns);
  for (const id of ["conn-presence", "conn-sort"]) $(id).addEventListener("change", refilterConns);

  if (state.token) start(); else showLogin();
})();
