// The web chat: one group, over the TypeScript SDK. Everything comes from the query string,
// as `switchboard dev` prints it:
//   ?url=https://127.0.0.1:7701/switchboard/1&hash=<sha-256 hex>&token=<client token>&group=general
// `hash` is needed only for a self-signed dev certificate (serverCertificateHashes).
//
// `window.chat` exposes the page's state (messages shown, connection state, errors) for the
// browser test (host/switchboard/tests/web_chat.rs).

import { SwitchboardClient, webStorageCursors } from "@switchboard/client";

const params = new URLSearchParams(location.search);
const url = params.get("url");
const hash = params.get("hash");
const token = params.get("token");
const group = params.get("group") ?? "general";
const $ = (id) => document.getElementById(id);

const chat = {
  state: "connecting",
  states: ["connecting"],
  joined: false,
  user: null,
  messages: [],
  sent: [],
  errors: [],
  client: null,
};
window.chat = chat;

function showError(e) {
  chat.errors.push(String(e));
  $("errors").textContent = String(e);
}

function setState(s) {
  if (chat.state !== s) chat.states.push(s);
  chat.state = s;
  $("status").textContent = s;
  $("status").dataset.state = s;
  $("text").disabled = $("send").disabled = s !== "connected";
}

function show(m) {
  const text = new TextDecoder().decode(m.body);
  chat.messages.push({ seq: m.seq.toString(), sender: m.sender, text });
  const li = document.createElement("li");
  const seq = document.createElement("span");
  seq.className = "seq";
  seq.textContent = `#${m.seq}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = m.sender;
  li.append(seq, who, document.createTextNode(text));
  $("log").append(li);
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
  const welcome = await client.connect();
  chat.user = welcome.user;
  $("me").textContent = welcome.user;
  await client.join(group);
  chat.joined = true;
  setState(client.connectionState);

  $("form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("text").value;
    if (!text) return;
    $("text").value = "";
    try {
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
