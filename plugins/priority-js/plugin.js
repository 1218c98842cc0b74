// Reference policy in JavaScript: the same rules as the Rust `plugins/priority`.
//
// In order, the first that applies:
// 1. a body starting with `!spam` is rejected ("spam is not allowed here") and counted;
// 2. a sender listed in config `vip_users` (comma-separated) -> high lane, offline members
//    are notified;
// 3. a body starting with `!urgent` -> high lane;
// 4. a body larger than config `large_bytes` (default 16384) -> low lane;
// 5. otherwise the normal lane.
//
// Receipts, flags and load get the node's defaults.
//
// Built with componentize-qjs (QuickJS) and WASI stubbed out: the component imports only
// `switchboard:policy/host`. The configuration is read once per instance, on the first call
// (the module's top level runs when the component is built, where there is no host to ask).

import { configGet, counterAdd, log } from "switchboard:policy/host@0.1.0";

const DEFAULT_LARGE_BYTES = 16384;

let config = null;

function readConfig() {
  const vip = configGet("vip_users") ?? "";
  const vipUsers = new Set(
    vip
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s.length > 0),
  );
  let largeBytes = DEFAULT_LARGE_BYTES;
  const raw = configGet("large_bytes");
  if (raw !== undefined && raw !== null) {
    const trimmed = raw.trim();
    if (/^[0-9]+$/.test(trimmed) && Number(trimmed) <= 0xffffffff) {
      largeBytes = Number(trimmed);
    } else {
      log("warn", `large_bytes: ${JSON.stringify(raw)} is not a number; using ${DEFAULT_LARGE_BYTES}`);
    }
  }
  return { vipUsers, largeBytes };
}

function startsWith(bytes, text) {
  if (bytes.length < text.length) return false;
  for (let i = 0; i < text.length; i++) {
    if (bytes[i] !== text.charCodeAt(i)) return false;
  }
  return true;
}

const accept = (lane, notifyOffline) => ({ tag: "accept", val: { lane, notifyOffline } });

export const policy = {
  onMessage(message) {
    const body = message.bodyPrefix;
    if (startsWith(body, "!spam")) {
      counterAdd("priority_spam_rejected", 1);
      return { tag: "reject", val: "spam is not allowed here" };
    }
    if (config === null) config = readConfig();
    if (config.vipUsers.has(message.sender)) return accept("high", true);
    if (startsWith(body, "!urgent")) return accept("high", false);
    if (message.bodySize > config.largeBytes) return accept("low", false);
    return accept("normal", false);
  },

  // The node's defaults for the other hooks.
  onReceipt(_receipt) {
    return "forward";
  },
  evaluateFlags(_context) {
    return [];
  },
  onLoad(load) {
    return {
      receipts: load.level >= 2,
      presence: load.level >= 1,
      backgroundDelivery: load.level >= 3,
    };
  },
};
