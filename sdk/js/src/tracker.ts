// Per-group delivery bookkeeping, as in the Rust SDK (`sdk/client/src/tracker.rs`): the
// cursor of what the app was handed (dedupe, and the `Hello` cursors of the next connection),
// and deliveries that overtook an earlier message of their group on another push stream,
// held until it arrives. Each subscription on a connection starts with a
// `Resume { group, afterSeq }` (docs/protocol.md §9).
//
// Invariant: a `(group, seq)` is handed on at most once, in increasing `seq` per group with
// no gap after the connection's `Resume`, and never at or below the group's cursor.

import type { Cursor, Message } from "./frames.js";

/** Deliveries one connection may hold back; past it the connection is broken (reconnect). */
export const MAX_HELD = 65_536;

interface GroupState {
  /** Highest seq handed on (the cursor); undefined before the first. */
  seen?: bigint;
  /** The next seq that may be handed on, on this connection (set by `Resume`). */
  next?: bigint;
  held: Map<bigint, Message>;
}

export class DeliveryTracker {
  private groups = new Map<string, GroupState>();
  private heldCount = 0;

  constructor(cursors: Iterable<Cursor> = []) {
    for (const c of cursors) this.state(c.group).seen = c.seq;
  }

  private state(group: string): GroupState {
    let g = this.groups.get(group);
    if (!g) {
      g = { held: new Map() };
      this.groups.set(group, g);
    }
    return g;
  }

  /** A new connection: what the last one held or announced is void (it resends from cursors). */
  reset(): void {
    for (const g of this.groups.values()) {
      g.next = undefined;
      g.held.clear();
    }
    this.heldCount = 0;
  }

  /** Adopts the node's resume point for a group this client has no cursor for. */
  adopt(c: Cursor): void {
    const g = this.state(c.group);
    if (g.seen === undefined) g.seen = c.seq;
  }

  /** A `Resume`: deliveries of `group` on this connection start after `afterSeq`. */
  resume(group: string, afterSeq: bigint, out: Message[]): void {
    const g = this.state(group);
    g.next = afterSeq + 1n;
    if (g.seen !== undefined && g.seen >= afterSeq) g.next = g.seen + 1n;
    this.drain(g, out);
  }

  /**
   * A `Deliver`. Appends to `out` what may now go to the app, in order. Returns false if
   * holding it would exceed {@link MAX_HELD} (the caller reconnects).
   */
  arrive(m: Message, out: Message[]): boolean {
    const g = this.state(m.group);
    if (g.seen !== undefined && m.seq <= g.seen) return true; // seen: a resend
    if (g.next !== undefined && m.seq < g.next) return true;
    if (g.next === undefined || m.seq > g.next) {
      if (g.held.has(m.seq)) return true;
      if (this.heldCount >= MAX_HELD) return false;
      g.held.set(m.seq, m);
      this.heldCount++;
      return true;
    }
    out.push(m);
    g.seen = m.seq;
    g.next = m.seq + 1n;
    this.drain(g, out);
    return true;
  }

  /** The user left `group`: forget its cursor and what is held of it, so a later join
   * resumes wherever the node says (its `Resume`). Deliveries of it that were already on
   * their way are held until that `Resume` and dropped by it. */
  forget(group: string): void {
    const g = this.groups.get(group);
    if (!g) return;
    this.heldCount -= g.held.size;
    this.groups.delete(group);
  }

  private drain(g: GroupState, out: Message[]): void {
    if (g.next === undefined) return;
    for (const seq of [...g.held.keys()]) {
      // At or below the cursor, or before this connection's resume point: never handed on.
      if ((g.seen !== undefined && seq <= g.seen) || seq < g.next) {
        g.held.delete(seq);
        this.heldCount--;
      }
    }
    for (;;) {
      const m = g.held.get(g.next);
      if (!m) return;
      g.held.delete(g.next);
      this.heldCount--;
      out.push(m);
      g.seen = m.seq;
      g.next = m.seq + 1n;
    }
  }

  /** Every group's cursor, sorted by group (the next `Hello`'s cursors). */
  cursors(): Cursor[] {
    const out: Cursor[] = [];
    for (const [group, g] of this.groups) {
      if (g.seen !== undefined) out.push({ group, seq: g.seen });
    }
    return out.sort((a, b) => (a.group < b.group ? -1 : a.group > b.group ? 1 : 0));
  }
}
