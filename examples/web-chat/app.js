// The web chat: one group, over the TypeScript SDK. Everything comes from the query string,
// as `switchboard dev` prints it:
//   ?url=https://127.0.0.1:7701/switchboard/1&hash=<sha-256 hex>&token=<client token>&group=general
// `hash` is needed only for a self-signed dev certificate (serverCertificateHashes).
//
// Besides text, the input takes commands (README.md): /leave and /join (the messages sent
// meanwhile are fetched on return), /fetch N, /bg and /fg. The page shows who shares a group
// with the user and whether they are here (foreground) or away, and read receipts under the
// user's own messages.
//
// `window.chat` exposes the page's state (messages shown, members, receipts, connection
// state, errors) for the browser test (host/switchboard/tests/web_chat.rs).

import {
  PresenceState,
  ReceiptKind,
  SwitchboardClient,
  webStorageCursors,
} from "@switchboard/client";

const params = new URLSearchParams(location.search);
const url = params.get("url");
const hash = params.get("hash");
const token = params.get("token");
const group = params.get("group") ?? "general";
const $ = (id) => document.getElementById(id);

const HELP =
  "commands: /leave, /join (shows what you missed), /fetch N (the last N messages), " +
  "/bg and /fg (away / here), /help";

const chat = {
  state: "connecting",
  states: ["connecting"],
  joined: false,
  user: null,
  /** Live messages, in the order shown: { seq, sender, text }. */
  messages: [],
  /** Messages fetched from the group's log (/join after /leave, /fetch N), in order. */
  history: [],
  sent: [],
  /** Receipts for this user's messages: { seq, user, kind: "delivered" | "read" }. */
  receipts: [],
  /** Co-members' presence: user → "here" | "away" | "gone" (offline). */
  members: {},
  /** This page's own presence: "here" | "away". */
  presence: "here",
  notices: [],
  errors: [],
  client: null,
};
window.chat = chat;

const word = (state) => (state === PresenceState.Foreground ? "here" : "away");

function showError(e) {
  chat.errors.push(String(e));
  $("errors").textContent = String(e);
}

function notice(text) {
  chat.notices.push(text);
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  $("log").append(li);
  li.scrollIntoView({ block: "end" });
}

function setState(s) {
  if (chat.state !== s) chat.states.push(s);
  chat.state = s;
  $("status").textContent = s;
  $("status").dataset.state = s;
  $("text").disabled = $("send").disabled = s !== "connected";
}

function setJoined(joined) {
  chat.joined = joined;
  $("group").dataset.joined = String(joined);
  $("group").title = joined ? "" : "not a member: /join";
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  for (const [user, state] of Object.entries(chat.members).sort()) {
    const li = document.createElement("li");
    li.dataset.user = user;
    li.dataset.presence = state;
    li.textContent = `${user} (${state})`;
    list.append(li);
  }
  $("me").dataset.presence = chat.presence;
  $("me").title = chat.presence;
}

function entry(m, kind) {
  const text = new TextDecoder().decode(m.body);
  const li = document.createElement("li");
  li.className = kind;
  li.dataset.seq = m.seq.toString();
  const seq = document.createElement("span");
  seq.className = "seq";
  seq.textContent = `#${m.seq}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = m.sender;
  const receipts = document.createElement("span");
  receipts.className = "receipts";
  li.append(seq, who, document.createTextNode(text), receipts);
  $("log").append(li);
  li.scrollIntoView({ block: "end" });
  return { seq: m.seq.toString(), sender: m.sender, text };
}

function show(m) {
  chat.messages.push(entry(m, "live"));
  // Tell the sender: read if the user is here to see it, else delivered.
  if (m.sender !== chat.user) {
    const kind = chat.presence === "here" ? ReceiptKind.Read : ReceiptKind.Delivered;
    chat.client.receipt(m.group, m.seq, kind);
  }
}

function showReceipt(r) {
  const kind = r.kind === ReceiptKind.Read ? "read" : "delivered";
  chat.receipts.push({ seq: r.seq.toString(), user: r.user, kind });
  const mark = $("log").querySelector(`li.live[data-seq="${r.seq}"] .receipts`);
  if (!mark) return;
  const seq = r.seq.toString();
  const read = chat.receipts.filter((x) => x.seq === seq && x.kind === "read").map((x) => x.user);
  const got = chat.receipts.filter((x) => x.seq === seq && x.kind === "delivered").map((x) => x.user);
  mark.textContent = [read.length ? `✓ read by ${read.join(", ")}` : "", got.length ? `✓ delivered to ${got.join(", ")}` : ""]
    .filter(Boolean)
    .join(" · ");
}

/** The newest seq this page has shown of the group (live or fetched). */
function lastSeen() {
  let last = 0n;
  for (const m of [...chat.messages, ...chat.history]) {
    const seq = BigInt(m.seq);
    if (seq > last) last = seq;
  }
  return last;
}

async function fetchMissed(client, after, head) {
  let n = 0;
  for await (const page of client.history(group, after, { untilSeq: head })) {
    for (const m of page.messages) chat.history.push(entry(m, "history"));
    n += page.messages.length;
  }
  notice(n === 0 ? "nothing missed" : `${n} message(s) you missed, from the group's log`);
}

async function fetchLast(client, n) {
  const { headSeq } = await client.fetch(group, 0n, 0); // limit 0: just the head
  const after = headSeq > BigInt(n) ? headSeq - BigInt(n) : 0n;
  notice(`the last ${n} of ${group}:`);
  for await (const page of client.history(group, after, { untilSeq: headSeq })) {
    for (const m of page.messages) chat.history.push(entry(m, "history"));
  }
}

async function command(client, line) {
  const [cmd, arg] = line.split(/\s+/);
  switch (cmd) {
    case "/leave":
      await client.leave(group);
      setJoined(false);
      notice(`you left ${group}`);
      return;
    case "/join": {
      const wasIn = chat.joined;
      const since = lastSeen();
      const head = await client.join(group);
      setJoined(true);
      notice(`you joined ${group}`);
      // Messages after `head` come live; the ones sent while the user was out are in the
      // log. (A member gets everything live: nothing to fetch.)
      if (!wasIn && since > 0n && head > since) await fetchMissed(client, since, head);
      return;
    }
    case "/fetch": {
      const n = Number(arg);
      if (!Number.isInteger(n) || n < 1) throw new Error("usage: /fetch N");
      await fetchLast(client, n);
      return;
    }
    case "/bg":
      client.background();
      chat.presence = "away";
      renderMembers();
      return;
    case "/fg":
      client.foreground();
      chat.presence = "here";
      renderMembers();
      return;
    default:
      notice(HELP);
  }
}

async function main() {
  $("group").textContent = group;
  if (!url || !token) throw new Error("the page needs ?url=…&token=… (see examples/web-chat/README.md)");
  // Cursors survive a reload: the page resumes with exactly what it missed.
  const storageKey = `switchboard-cursors:${url}:${token.slice(-16)}`;
  const client = new SwitchboardClient({
    url,
    token,
    serverCertificateHashes: hash ? [hash] : [],
    cursors: webStorageCursors(localStorage, storageKey),
    clientName: "web-chat/0.1",
  });
  chat.client = client;
  client.onMessage = show;
  client.onError = showError;
  client.onStateChange = setState;
  client.onReceipt = showReceipt;
  // Each session starts with the node's snapshot of who is connected: start over.
  client.onConnected = (w) => {
    chat.user = w.user;
    chat.members = {};
    renderMembers();
  };
  client.onPresence = (p) => {
    // Offline: the user's last session closed.
    chat.members[p.user] = p.online ? word(p.state) : "gone";
    renderMembers();
  };
  // A hidden page (another tab, a minimised window) is away, a shown one here; /bg and /fg
  // override it until the next change.
  client.followVisibility(document);
  document.addEventListener("visibilitychange", () => {
    chat.presence = word(client.presence);
    renderMembers();
  });
  chat.presence = word(client.presence);
  const welcome = await client.connect();
  chat.user = welcome.user;
  $("me").textContent = welcome.user;
  await client.join(group);
  setJoined(true);
  setState(client.connectionState);
  notice(HELP);

  $("form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("text").value.trim();
    if (!text) return;
    $("text").value = "";
    $("errors").textContent = "";
    try {
      if (text.startsWith("/")) {
        await command(client, text);
        return;
      }
      const ack = await client.send(group, text);
      chat.sent.push({ seq: ack.seq.toString(), text });
    } catch (e) {
      showError(e);
    }
  });
}

main().catch((e) => {
  setState("failed");
  showError(e);
});
