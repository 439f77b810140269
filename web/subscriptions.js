// subscriptions.js: the client's channels and the recovery rule applied to them.
//
// Pure: no I/O, no timers; events go out through the `emit` callback given at construction.
// Guarantees (the client's promise of DESIGN.md "Guarantees"):
//   * Each publication of a subscribed channel is emitted once, in offset order: live ones and
//     recovered ones both pass the same PositionTracker, so an overlap is dropped.
//   * A position never moves backwards when a subscribe reply is older than live publications.
//   * When a stream cannot be continued (new epoch, history window exceeded, a live gap) an
//     "unrecovered" event names the channel once per occurrence: the application reloads it.
//   * Every subscribe() promise is settled once: confirmed, refused, unsubscribed or failed.

import { PositionTracker } from "./positions.js";
import { TidingsError } from "./wire.js";

/** A subscribed channel: `confirmed` by the current connection, `pending` while a subscribe is in flight. */
function newEntry(waiters = []) {
  return { confirmed: false, pending: false, waiters };
}

export class Subscriptions {
  /** @param {(name: string, detail: object) => void} emit  "publication", "unrecovered", "subscribe-error" */
  constructor(emit) {
    this._entries = new Map(); // channel → {confirmed, pending, waiters: [{resolve, reject}]}
    this._tracker = new PositionTracker();
    this._emit = emit;
  }

  get(channel) {
    return this._entries.get(channel);
  }

  /** Start following `channel` with one waiting subscribe() call; it is unconfirmed until a reply. */
  add(channel, waiter) {
    const entry = newEntry([waiter]);
    this._entries.set(channel, entry);
    return entry;
  }

  /** Stop following `channel`: forget its position and reject its waiters; returns the entry it had. */
  remove(channel) {
    const entry = this._entries.get(channel);
    if (!entry) return undefined;
    this._entries.delete(channel);
    this._tracker.delete(channel);
    for (const waiter of entry.waiters) waiter.reject(new TidingsError(0, "unsubscribed"));
    return entry;
  }

  channels() {
    return [...this._entries.keys()];
  }

  /** A copy of the last {epoch, offset} of `channel`, or null. */
  position(channel) {
    const position = this._tracker.get(channel);
    return position ? { ...position } : null;
  }

  /** The `subscribe` list of a connect command: every channel, resumed with `since` where known. */
  resumeList() {
    const subscribe = [];
    for (const channel of this._entries.keys()) {
      const since = this._tracker.get(channel);
      subscribe.push(since ? { channel, since: { epoch: since.epoch, offset: since.offset } } : { channel });
    }
    return subscribe;
  }

  /**
   * Fold a connect reply's per-channel outcomes ({channel: result | {error}}) in.
   * Returns {missed, unrecovered, stray}: publications recovered, channels to reload, and channels
   * unsubscribed while the connect was in flight (the caller unsubscribes them on the server).
   */
  applyConnect(outcomes) {
    let missed = 0;
    const unrecovered = [];
    const stray = [];
    for (const [channel, outcome] of Object.entries(outcomes)) {
      const entry = this._entries.get(channel);
      if (outcome.error) {
        this._entries.delete(channel);
        this._tracker.delete(channel);
        const error = new TidingsError(outcome.error.code, outcome.error.message);
        for (const waiter of entry?.waiters ?? []) waiter.reject(error);
        this._emit("subscribe-error", { channel, error });
        continue;
      }
      if (entry === undefined) {
        if (!channel.startsWith("user:")) {
          stray.push(channel); // unsubscribed while this connect was in flight
          continue;
        }
        // The server subscribed us itself (the personal user:<id> channel): track it like ours.
        this._entries.set(channel, { confirmed: true, pending: false, waiters: [] });
      }
      missed += this.apply(channel, outcome, unrecovered);
    }
    return { missed, unrecovered, stray };
  }

  /** Channels added while a connect was in flight: not in its reply, so they need a subscribe now. */
  unsent(outcomes) {
    return [...this._entries].filter(([channel, entry]) => !entry.confirmed && !entry.pending && !(channel in outcomes));
  }

  /** Fold a subscribe result (fresh, or resumed with `since`) into the channel; returns publications recovered. */
  apply(channel, outcome, unrecovered) {
    const entry = this._entries.get(channel);
    const known = this._tracker.get(channel);
    let recoveredCount = 0;
    if (outcome.publications !== undefined && outcome.recovered) {
      for (const publication of outcome.publications) {
        if (this._tracker.accept(channel, publication.epoch, publication.offset) !== "duplicate") {
          recoveredCount += 1;
          this._emit("publication", { ...publication, channel, ephemeral: false, recovered: true });
        }
      }
    } else if (outcome.publications !== undefined && known !== null) {
      // Not recoverable: start again from the channel's top; the application reloads history.
      this._tracker.set(channel, outcome.epoch, outcome.offset);
      unrecovered.push(channel);
      this._emit("unrecovered", { channel, reason: known.epoch !== outcome.epoch ? "epoch" : "window" });
    }
    // Live publications may already have moved the position past the reply's top (they can be
    // handled before a subscribe reply's promise settles); never move it backwards.
    const now = this._tracker.get(channel);
    if (now === null || now.epoch !== outcome.epoch || now.offset < outcome.offset) {
      this._tracker.set(channel, outcome.epoch, outcome.offset);
    }
    if (entry) {
      entry.confirmed = true;
      const position = { epoch: outcome.epoch, offset: outcome.offset };
      for (const waiter of entry.waiters) waiter.resolve(position);
      entry.waiters = [];
    }
    return recoveredCount;
  }

  /** A subscribe for `entry` was refused: drop it (unless replaced meanwhile) and reject its waiters. */
  refuse(channel, entry, error) {
    if (this._entries.get(channel) === entry) this._entries.delete(channel);
    for (const waiter of entry.waiters) waiter.reject(error);
    entry.waiters = [];
  }

  /** A live `publication` push: emit it unless it is a duplicate; report gaps and resets. */
  onPublication(push) {
    const { channel } = push;
    if (!this._entries.has(channel)) return; // unsubscribed meanwhile
    if (push.offset === undefined || push.offset === null) {
      this._emit("publication", { ...push, ephemeral: true, recovered: false });
      return;
    }
    const verdict = this._tracker.accept(channel, push.epoch, push.offset);
    if (verdict === "duplicate") return;
    if (verdict === "gap" || verdict === "reset") {
      this._emit("unrecovered", { channel, reason: verdict === "gap" ? "gap" : "epoch" });
    }
    this._emit("publication", { ...push, ephemeral: false, recovered: false });
  }

  /** The connection ended: nothing is confirmed until the next connect reply. */
  unconfirmAll() {
    for (const entry of this._entries.values()) {
      entry.confirmed = false;
      entry.pending = false;
    }
  }

  /** The client stopped for good: reject every waiting subscribe() and drop channels never confirmed. */
  failWaiters(error) {
    for (const [channel, entry] of this._entries) {
      for (const waiter of entry.waiters) waiter.reject(error);
      entry.waiters = [];
      if (!entry.confirmed) this._entries.delete(channel);
    }
  }
}
