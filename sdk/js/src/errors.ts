// Typed errors: the node's error codes (docs/protocol.md §12) and the SDK's own. Every
// promise the client rejects, and every error it reports through `onError`, is a
// `ClientError`; the subclass says where it came from (the node, the connection, the app's
// own call), as the Rust SDK's `ClientError` variants do.

/** The node's error codes by name (docs/protocol.md §12). */
export const ErrorCode = {
  MalformedFrame: 1,
  FrameTooLarge: 2,
  UnknownFrameType: 3,
  UnexpectedFrame: 4,
  HelloRequired: 5,
  UnexpectedStream: 6,
  InvalidToken: 10,
  TokenExpired: 11,
  UnknownTenant: 12,
  TokenNotYetValid: 13,
  NotMember: 20,
  GroupNotFound: 21,
  GroupFull: 22,
  JoinRefused: 23,
  PayloadTooLarge: 24,
  InvalidArgument: 25,
  PolicyRejected: 26,
  RateLimited: 30,
  Overloaded: 31,
  StoreUnavailable: 32,
  Internal: 33,
  ShuttingDown: 34,
  SlowConsumer: 35,
  OutcomeUnknown: 36,
} as const;

export type ErrorCodeName = keyof typeof ErrorCode;

/** The name of a numeric code, or `Unknown(<n>)` for one this SDK does not know. */
export function codeName(code: number): string {
  for (const [name, n] of Object.entries(ErrorCode)) {
    if (n === code) return name;
  }
  return `Unknown(${code})`;
}

/** Codes that refuse the token itself: reconnecting with it cannot succeed. */
const AUTH_CODES: ReadonlySet<number> = new Set([
  ErrorCode.InvalidToken,
  ErrorCode.TokenExpired,
  ErrorCode.UnknownTenant,
  ErrorCode.TokenNotYetValid,
]);

/** Codes after which the same request may succeed later (§12's "retryable" column). */
const RETRYABLE_CODES: ReadonlySet<number> = new Set([
  ErrorCode.RateLimited,
  ErrorCode.Overloaded,
  ErrorCode.StoreUnavailable,
  ErrorCode.ShuttingDown,
  ErrorCode.SlowConsumer,
  ErrorCode.OutcomeUnknown,
]);

/** Every error the SDK rejects a call with or reports through `onError`. */
export abstract class ClientError extends Error {
  /** The protocol error code (see {@link ErrorCode}) when the failure has one. */
  readonly code: number | undefined;

  constructor(message: string, code?: number) {
    super(message);
    this.code = code;
  }

  /** Whether the same call may succeed later (rate limits, overload, timeouts, network). */
  get isRetryable(): boolean {
    return false;
  }
}

/** An `Error` frame from the node: a refused request, or why it ended the session. */
export class SwitchboardError extends ClientError {
  override name = "SwitchboardError";
  declare readonly code: number;

  constructor(
    /** The numeric code (see {@link ErrorCode}). */
    code: number,
    message: string,
    /** The request it answers (0: none, e.g. a refused `Hello`, receipt or presence). */
    readonly requestId: bigint = 0n,
    /** For retryable codes (always for `RateLimited`): wait at least this long. */
    readonly retryAfterMs: number = 0,
  ) {
    super(`${codeName(code)}: ${message}`, code);
  }

  /** The code's name, e.g. `"InvalidToken"`. */
  get codeName(): string {
    return codeName(this.code);
  }

  /** Whether the token was refused (reconnecting with the same token cannot help). */
  get isAuth(): boolean {
    return AUTH_CODES.has(this.code);
  }

  /** Codes this SDK does not know are not retryable (docs/protocol.md §12). */
  override get isRetryable(): boolean {
    return RETRYABLE_CODES.has(this.code);
  }
}

/** The connection ended (or never came up) without an answer from the node. */
export class ConnectionLost extends ClientError {
  override name = "ConnectionLost";

  override get isRetryable(): boolean {
    return true;
  }
}

/** The client was closed by the app, or stopped after a refused token. */
export class ClientClosed extends ClientError {
  override name = "ClientClosed";
}

/**
 * A request got no answer within `requestTimeoutMs` (waiting for a reconnect included); it
 * is forgotten, not re-sent. A timed-out send may still have been stored: send it again with
 * the same client message id (`send(group, body, id)`) to find out.
 */
export class Timeout extends ClientError {
  override name = "Timeout";

  override get isRetryable(): boolean {
    return true;
  }
}

/** `maxPendingRequests` requests already wait for an answer; nothing was sent. */
export class TooManyRequests extends ClientError {
  override name = "TooManyRequests";

  constructor(readonly limit: number) {
    super(`${limit} requests already wait for an answer`);
  }

  override get isRetryable(): boolean {
    return true;
  }
}

/** The body is larger than the node's `maxPayloadBytes` (checked before sending). */
export class PayloadTooLarge extends ClientError {
  override name = "PayloadTooLarge";

  constructor(
    readonly len: number,
    readonly max: number,
  ) {
    super(`message body is ${len} bytes; the node accepts at most ${max}`, ErrorCode.PayloadTooLarge);
  }
}

/**
 * An argument no node would accept (a seq outside 0..2⁶⁴, a fetch limit outside 0..2³²,
 * a presence or receipt kind that does not exist); nothing was sent. Ids are checked by the
 * node, which refuses bad ones with `SwitchboardError` `InvalidArgument`.
 */
export class InvalidArgument extends ClientError {
  override name = "InvalidArgument";

  constructor(message: string) {
    super(message, ErrorCode.InvalidArgument);
  }
}

/** The node sent something this SDK does not understand (an answer of the wrong kind). */
export class ProtocolError extends ClientError {
  override name = "ProtocolError";
}
