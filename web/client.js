// client.js: TidingsClient, the public API of the browser client: commands over Connection.
//
// Guarantees (besides those of connection.js and subscriptions.js): a command issued while
// reconnecting waits for the connection (up to requestTimeout) and is sent at most once;
// ephemeral publishes and unsubscribes never wait. Every promise rejects with a TidingsError.

import { Connection, State } from "./connection.js";

/** A connection to Tidings that survives node failures. */
export class TidingsClient extends Connection {
  /**
   * @param {object} options
   * @param {string | string[]} options.urls  WebSocket URL(s) of `/ws`; reconnects cycle through them.
   * @param {string | (() => string | Promise<string>)} options.token  a token, or a function called
   *        before every connection attempt (cache inside it; fetch a new one when it is near expiry).
   * @param {number} [options.minDelay] @param {number} [options.maxDelay]
   * @param {number} [options.connectTimeout] @param {number} [options.requestTimeout]
   */
  constructor(options) {
    super(options);
  }

  /**
   * Subscribe to `channel`; resolves with its position {epoch, offset} once the server confirms.
   * The subscription is kept across reconnects (resumed with `since`) until `unsubscribe`.
   * Rejects with TidingsError 403 when the channel is not allowed.
   */
  subscribe(channel) {
    const existing = this._subscriptions.get(channel);
    if (existing?.confirmed) {
      return Promise.resolve(this._subscriptions.position(channel) ?? { epoch: "", offset: 0 });
    }
    return new Promise((resolve, reject) => {
      if (existing) {
        existing.waiters.push({ resolve, reject });
        return;
      }
      const entry = this._subscriptions.add(channel, { resolve, reject });
      // Not connected: the next connect subscribes it (or _onConnected, if a connect is in flight).
      if (this.state === State.CONNECTED) this._sendSubscribe(channel, entry, this._ws);
    });
  }

  /** Stop receiving `channel` and forget its position. */
  async unsubscribe(channel) {
    const entry = this._subscriptions.remove(channel);
    if (!entry) return;
    if (this.state === State.CONNECTED && entry.confirmed) {
      await this._request("unsubscribe", { channel }, { wait: false }).catch(() => {});
    }
  }

  /** Channels this client is subscribed to (or will be on the next connect). */
  channels() {
    return this._subscriptions.channels();
  }

  /** The last {epoch, offset} seen on `channel`, or null. */
  position(channel) {
    return this._subscriptions.position(channel);
  }

  /**
   * Publish `data`; resolves with {epoch, offset} ({} when ephemeral).
   * Ephemeral publications (typing indicators) are not kept in history and fail at once when
   * not connected, rather than arriving late.
   */
  publish(channel, data, { ephemeral = false } = {}) {
    const fields = ephemeral ? { channel, data, ephemeral: true } : { channel, data };
    return this._request("publish", fields, { wait: !ephemeral });
  }

  /**
   * Raw `history`: {epoch, offset, publications, cursor?}; `reverse` gives the newest first,
   * `before` only offsets below it. A page is bounded in bytes too: `cursor`, when present, holds
   * the fields to add to the next request to read on (`since`, or `before` when reading newest first).
   */
  history(channel, { since, limit, reverse, before } = {}) {
    const fields = { channel };
    if (since) fields.since = { epoch: since.epoch, offset: since.offset };
    if (limit !== undefined) fields.limit = limit;
    if (reverse) fields.reverse = true;
    if (before !== undefined) fields.before = before;
    return this._request("history", fields);
  }

  /** The newest `limit` publications, oldest first: {epoch, offset, publications}. */
  async latest(channel, limit = 50) {
    const page = await this.history(channel, { limit, reverse: true });
    return { ...page, publications: page.publications.slice().reverse() };
  }

  /**
   * The page of publications just before `before` (an offset of epoch `epoch`), oldest first.
   * Resolves with {publications, complete, reset}: `complete` when nothing older is left in
   * the history window, `reset` when the channel's epoch is no longer `epoch` (reload it).
   */
  async older(channel, { epoch, before, limit = 50 }) {
    if (before <= 1) return { publications: [], complete: true, reset: false };
    // Newest first: a page cut short by its byte bound still ends right below `before`.
    const page = await this.history(channel, { before, limit, reverse: true });
    if (page.epoch !== epoch) return { publications: [], complete: false, reset: true };
    const publications = page.publications.slice().reverse();
    const oldest = publications[0];
    const complete =
      oldest === undefined || oldest.offset <= 1 || (page.cursor === undefined && publications.length < limit);
    return { publications, complete, reset: false };
  }

  /** Who is subscribed to `channel`: [{user, client, node, info}]. */
  async presence(channel) {
    const result = await this._request("presence", { channel });
    return result.members ?? [];
  }

  /** The user's notifications, newest first: {notifications, unread}. */
  async notifications({ unreadOnly = false, limit, before } = {}) {
    const fields = {};
    if (unreadOnly) fields.unread_only = true;
    if (limit !== undefined) fields.limit = limit;
    if (before !== undefined) fields.before = before;
    const result = await this._request("notifications", fields);
    this._setUnread(result.unread);
    return result;
  }

  /** Mark notifications read: read({ids: [...]}) or read({all: true}); resolves with {unread}. */
  async read({ ids, all = false } = {}) {
    const result = await this._request("read", all ? { all: true } : { ids });
    this._setUnread(result.unread);
    return result;
  }

  ping() {
    return this._request("ping", {});
  }
}
