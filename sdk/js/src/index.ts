// Switchboard's client for browsers: switchboard/1 over WebTransport (docs/protocol.md §17).

export {
  SwitchboardClient,
  webStorageCursors,
  type ClientOptions,
  type ClientState,
  type CursorStore,
  type ReconnectPolicy,
  type SendAck,
  type Welcome,
} from "./client.js";
export { ClientClosed, ConnectionLost, ErrorCode, SwitchboardError, codeName } from "./errors.js";
export {
  DecodeError,
  FrameReader,
  PresenceState,
  decodeServer,
  encodeClient,
  type ClientFrame,
  type Cursor,
  type Message,
  type ServerFrame,
} from "./frames.js";
export { DeliveryTracker, MAX_HELD } from "./tracker.js";
