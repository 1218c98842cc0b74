// Switchboard's client for browsers: switchboard/1 over WebTransport (docs/protocol.md §17).

export {
  MAX_QUEUED_RECEIPTS,
  SwitchboardClient,
  webStorageCursors,
  type ClientOptions,
  type ClientState,
  type CursorStore,
  type FetchResult,
  type Nudge,
  type Presence,
  type Receipt,
  type ReceiptSummary,
  type ReconnectPolicy,
  type SendAck,
  type Welcome,
} from "./client.js";
export {
  ClientClosed,
  ClientError,
  ConnectionLost,
  ErrorCode,
  InvalidArgument,
  PayloadTooLarge,
  ProtocolError,
  SwitchboardError,
  Timeout,
  TooManyRequests,
  codeName,
  type ErrorCodeName,
} from "./errors.js";
export {
  DecodeError,
  FrameReader,
  Lane,
  PresenceState,
  ReceiptKind,
  decodeServer,
  encodeClient,
  type ClientFrame,
  type Cursor,
  type Flag,
  type Message,
  type ServerFrame,
} from "./frames.js";
export { DeliveryTracker, MAX_HELD } from "./tracker.js";
