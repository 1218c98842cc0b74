// Typed errors: the node's error codes (docs/protocol.md §12) and the SDK's own.

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

/** An `Error` frame from the node: a refused request, or why it ended the session. */
export class SwitchboardError extends Error {
  override name = "SwitchboardError";

  constructor(
    /** The numeric code (see {@link ErrorCode}). */
    readonly code: number,
    message: string,
    /** The request it answers (0: none, e.g. a refused `Hello`). */
    readonly requestId: bigint = 0n,
    /** For `RateLimited`: wait at least this long before trying again. */
    readonly retryAfterMs: number = 0,
  ) {
    super(`${codeName(code)}: ${message}`);
  }

  /** The code's name, e.g. `"InvalidToken"`. */
  get codeName(): string {
    return codeName(this.code);
  }

  /** Whether the token was refused (reconnecting with the same token cannot help). */
  get isAuth(): boolean {
    return AUTH_CODES.has(this.code);
  }
}

/** The connection ended (or never came up) without an answer from the node. */
export class ConnectionLost extends Error {
  override name = "ConnectionLost";
}

/** The client was closed by the app. */
export class ClientClosed extends Error {
  override name = "ClientClosed";
}
