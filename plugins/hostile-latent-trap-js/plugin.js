// Hostile: `hostile-latent-trap` in JavaScript. Every hook behaves, so the upload self-test
// passes, until a message's body starts with `!boom`: then `onMessage` throws, and an
// uncaught exception is a trap. A node must fall back on such calls and roll the version
// back when it keeps failing, as it does for the Rust plugin.
//
// Ordinary messages go to the low lane, so tests can tell this version's verdicts apart.

function startsWith(bytes, text) {
  if (bytes.length < text.length) return false;
  for (let i = 0; i < text.length; i++) {
    if (bytes[i] !== text.charCodeAt(i)) return false;
  }
  return true;
}

export const policy = {
  onMessage(message) {
    if (startsWith(message.bodyPrefix, "!boom")) {
      throw new Error("hostile-latent-trap-js: the bug real traffic finds");
    }
    return { tag: "accept", val: { lane: "low", notifyOffline: false } };
  },
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
