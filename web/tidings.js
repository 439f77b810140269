// tidings.js: the browser client for the Tidings wire protocol v1 (DESIGN.md "Wire protocol v1").
//
// An ES module with no dependencies and no build step:
//
//   import { TidingsClient } from "/tidings.js";
//   const client = new TidingsClient({ urls: ["wss://chat.example/ws"], token: () => fetchToken() });
//   client.on("publication", (pub) => show(pub));
//   client.connect();
//   await client.subscribe("room:general");
//   await client.publish("room:general", { text: "hi" });
//
// Guarantees (given the server's, DESIGN.md "Guarantees"):
//   * Every publication of a subscribed channel is emitted once, in offset order, across
//     reconnects: the client remembers the last {epoch, offset} per channel, resumes every
//     channel with `since` on reconnect, and drops anything at or below that position.
//   * When the server cannot fill the gap (epoch changed, history window exceeded) or a gap is
//     seen live, the client emits "unrecovered" for that channel: the application reloads it.
//   * Reconnects use exponential backoff with full jitter, cycling through `urls`; close codes
//     4000-4499 (and plain network drops) reconnect, 4500-4999 stop for good.
//   * Several JSON messages in one frame (separated by "\n") are all handled, in order.
//
// Events (client.on(name, handler) returns a function that removes the handler):
//   state         {state, previous, attempt?, delay?, code?, reason?}   every state change
//   connected     {node, user, client, unread, reconnected, missed, unrecovered: [channels]}
//   publication   {channel, epoch?, offset?, data, from?, ts, ephemeral, recovered}
//   join, leave   {channel, member}
//   notification  the notification object (a `notification` push)
//   unread        {unread}   the unread notification count changed (push, read, list)
//   unrecovered   {channel, reason: "epoch" | "window" | "gap"}             reload that channel
//   subscribe-error {channel, error}                                      a resubscribe was refused
//   disconnected  {code, reason, reconnect}
//
// States: "disconnected" (not started) → "connecting" → "connected" ⇄ "reconnecting";
// "closed" is final (close() or a terminal close code).

export const State = Object.freeze({
  DISCONNECTED: "disconnected",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

export const SUBPROTOCOL = "tidings.json";

/** An error reply from the server ({code, message, temporary}), or a local failure (code 0). */
export class TidingsError extends Error {
  constructor(code, message, temporary = false) {
    super(message);
    this.name = "TidingsError";
    this.code = code;
    this.temporary = temporary;
  }
}

/** Whether a connection closed with `code` should reconnect: 4500-4999 mean "do not". */
export function closeReconnects(code) {
  return !(code >= 4500 && code <= 4999);
}

/** Full-jitter exponential backoff: a random delay in [0, min(maxDelay, minDelay * 2^attempt)). */
export function backoffDelay(attempt, { minDelay = 500, maxDelay = 20000 } = {}, random = Math.random) {
  const cap = Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/** Every message of one text frame: the server may join several JSON objects with "\n". */
export function splitFrame(text) {
  const messages = [];
  for (const line of text.split("\n")) {
    if (line.trim()) messages.push(JSON.parse(line));
  }
  return messages;
}

/**
 * Where each channel's stream stands for this client (pure, no I/O).
 *
 * accept() classifies a publication: "new" (deliver it), "duplicate" (already seen: drop it),
 * "gap" (offsets were skipped), or "reset" (the stream has a new epoch). The last two are
 * delivered too, but the application must reload the channel's history.
 */
export class PositionTracker {
  constructor() {
    this._positions = new Map();
  }

  get(channel) {
    return this._positions.get(channel) ?? null;
  }

  set(channel, epoch, offset) {
    this._positions.set(channel, { epoch, offset });
  }

  delete(channel) {
    this._positions.delete(channel);
  }

  accept(channel, epoch, offset) {
    const known = this._positions.get(channel);
    if (known === undefined) {
      this.set(channel, epoch, offset);
      return "new";
    }
    if (known.epoch !== epoch) {
      this.set(channel, epoch, offset);
      return "reset";
    }
    if (offset <= known.offset) return "duplicate";
    const verdict = offset === known.offset + 1 ? "new" : "gap";
    known.offset = offset;
    return verdict;
  }
}

const DEFAULTS = {
  minDelay: 500, // ms; the first retry waits up to this much (full jitter)
  maxDelay: 20000, // ms; the backoff cap
  connectTimeout: 10000, // ms to open the socket and get the connect reply
  requestTimeout: 10000, // ms for any reply
  pingTimeout: 10000, // ms a ping may go unanswered before the connection is dropped
};

/** A connection to Tidings that survives node failures. */
export class TidingsClient {
  /**
   * @param {object} options
   * @param {string | string[]} options.urls  WebSocket URL(s) of `/ws`; reconnects cycle through them.
   * @param {string | (() => string | Promise<string>)} options.token  a token, or a function called
   *        before every connection attempt (cache inside it; fetch a new one when it is near expiry).
   * @param {number} [options.minDelay] @param {number} [options.maxDelay]
   * @param {number} [options.connectTimeout] @param {number} [options.requestTimeout]
   */
  constructor(options) {
    const urls = Array.isArray(options.urls) ? options.urls : [options.urls];
    if (!urls.length) throw new TypeError("TidingsClient needs at least one URL");
    this.options = { ...DEFAULTS, ...options, urls };
    this.state = State.DISCONNECTED;
    this.node = null; // the node of the current connection (connect reply `node`)
    this.user = null;
    this.clientId = null;
    this.unread = 0;
    this.url = null;
    this._handlers = new Map();
    this._tracker = new PositionTracker();
    this._channels = new Map(); // channel → {confirmed, pending (a subscribe is in flight), waiters}
    this._pending = new Map(); // command id → {resolve, reject, timer}
    this._connectWaiters = new Set();
    this._nextId = 1;
    this._urlIndex = 0;
    this._attempt = 0;
    this._everConnected = false;
    this._ws = null;
    this._retryTimer = null;
    this._pingTimer = null;
    this._connectTimer = null;
    this._disconnectPush = null;
    this._onOnline = () => {
      if (this.state === State.RECONNECTING) this._retryNow();
    };
  }

  // --- events -------------------------------------------------------------------------------------

  on(name, handler) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(handler);
    return () => this._handlers.get(name)?.delete(handler);
  }

  _emit(name, detail) {
    for (const handler of this._handlers.get(name) ?? []) {
      try {
        handler(detail);
      } catch (error) {
        // One broken handler must not stop delivery to the others, nor the client itself.
        console.error(`tidings: ${name} handler failed`, error);
      }
    }
  }

  _setState(state, detail = {}) {
    const previous = this.state;
    this.state = state;
    this._emit("state", { ...detail, state, previous });
  }

  // --- lifecycle ----------------------------------------------------------------------------------

  /** Start connecting (idempotent). Progress is reported through "state" and "connected" events. */
  connect() {
    if (this.state !== State.DISCONNECTED && this.state !== State.CLOSED) return;
    globalThis.addEventListener?.("online", this._onOnline);
    this._attempt = 0;
    this._everConnected = false;
    this._open();
  }

  /** Close for good: pending requests fail, no reconnect. */
  close() {
    globalThis.removeEventListener?.("online", this._onOnline);
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._ws;
    this._teardown(new TidingsError(0, "client closed"));
    if (ws) ws.close(1000, "client closed");
    this._failConnectWaiters(new TidingsError(0, "client closed"));
    if (this.state !== State.CLOSED) this._setState(State.CLOSED, { code: 1000, reason: "client closed" });
  }

  /** Resolve once connected (at once if already); reject after `timeout` ms or if the client closes. */
  waitConnected(timeout = this.options.requestTimeout) {
    if (this.state === State.CONNECTED) return Promise.resolve();
    if (this.state === State.CLOSED) return Promise.reject(new TidingsError(0, "client closed"));
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => {
          clearTimeout(waiter.timer);
          resolve();
        },
        reject: (error) => {
          clearTimeout(waiter.timer);
          reject(error);
        },
      };
      waiter.timer = setTimeout(() => {
        this._connectWaiters.delete(waiter);
        reject(new TidingsError(0, "not connected", true));
      }, timeout);
      this._connectWaiters.add(waiter);
    });
  }

  async _open() {
    const urls = this.options.urls;
    const url = urls[this._urlIndex % urls.length];
    this.url = url;
    if (!this._everConnected) this._setState(State.CONNECTING, { url });
    let token;
    try {
      const source = this.options.token;
      token = typeof source === "function" ? await source() : source;
    } catch (error) {
      console.warn("tidings: could not get a token", error);
      this._scheduleReconnect(0, "no token");
      return;
    }
    if (this.state === State.CLOSED) return;
    let ws;
    try {
      ws = new WebSocket(url, SUBPROTOCOL);
    } catch (error) {
      console.warn("tidings: bad WebSocket URL", url, error);
      this._scheduleReconnect(0, "bad URL");
      return;
    }
    this._ws = ws;
    this._disconnectPush = null;
    this._connectTimer = setTimeout(() => this._drop(ws, "connect timed out"), this.options.connectTimeout);
    ws.onopen = () => this._sendConnect(ws, token);
    ws.onmessage = (event) => this._onFrame(ws, event.data);
    ws.onclose = (event) => this._onClose(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event always follows
  }

  _sendConnect(ws, token) {
    const subscribe = [];
    for (const channel of this._channels.keys()) {
      const since = this._tracker.get(channel);
      subscribe.push(since ? { channel, since: { epoch: since.epoch, offset: since.offset } } : { channel });
    }
    const id = this._nextId++;
    this._pending.set(id, {
      resolve: (result) => this._onConnected(ws, result),
      reject: (error) => {
        if (error.code === 0) return; // the connection ended first; its close is handled already
        // A refused connect (e.g. a 401 reply) is followed by the server's close; make sure.
        console.warn("tidings: connect refused", error);
        this._drop(ws, error.message, error.code === 401 ? 4501 : 4000);
      },
      timer: null,
    });
    ws.send(JSON.stringify({ id, op: "connect", token, subscribe }));
  }

  _onConnected(ws, result) {
    if (ws !== this._ws) return;
    clearTimeout(this._connectTimer);
    const reconnected = this._everConnected;
    this._everConnected = true;
    this._attempt = 0;
    this.node = result.node;
    this.user = result.user;
    this.clientId = result.client;
    this.unread = result.unread ?? 0;
    let missed = 0;
    const unrecovered = [];
    for (const [channel, outcome] of Object.entries(result.channels ?? {})) {
      const entry = this._channels.get(channel);
      if (outcome.error) {
        this._channels.delete(channel);
        this._tracker.delete(channel);
        const error = new TidingsError(outcome.error.code, outcome.error.message);
        for (const waiter of entry?.waiters ?? []) waiter.reject(error);
        this._emit("subscribe-error", { channel, error });
        continue;
      }
      if (entry === undefined) {
        if (!channel.startsWith("user:")) {
          // Unsubscribed while this connect was in flight.
          this._send(ws, "unsubscribe", { channel });
          continue;
        }
        // The server subscribed us itself (the personal user:<id> channel): track it like ours.
        this._channels.set(channel, { confirmed: true, pending: false, waiters: [] });
      }
      missed += this._applySubscribeResult(channel, outcome, unrecovered);
    }
    this._startPing(ws, result.ping_interval);
    const detail = {
      node: this.node,
      user: this.user,
      client: this.clientId,
      unread: this.unread,
      reconnected,
      missed,
      unrecovered,
    };
    this._setState(State.CONNECTED, detail);
    // Subscribed while this connect was in flight: not in its list, so subscribe now.
    for (const [channel, entry] of this._channels) {
      if (!entry.confirmed && !entry.pending && !(channel in (result.channels ?? {}))) {
        this._sendSubscribe(channel, entry, ws);
      }
    }
    this._emit("connected", detail);
    for (const waiter of [...this._connectWaiters]) waiter.resolve();
    this._connectWaiters.clear();
  }

  /** Fold a subscribe result (fresh, or resumed with `since`) into the channel; returns publications recovered. */
  _applySubscribeResult(channel, outcome, unrecovered) {
    const entry = this._channels.get(channel);
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

  _startPing(ws, intervalSeconds) {
    clearInterval(this._pingTimer);
    const interval = Math.max(1, Number(intervalSeconds) || 25) * 1000;
    // Client-side liveness: a half-open TCP connection (laptop sleep, lost Wi-Fi) shows no close
    // event for minutes; an unanswered ping does.
    this._pingTimer = setInterval(() => {
      if (ws !== this._ws) return;
      this._request("ping", {}, { timeout: this.options.pingTimeout, wait: false }).catch((error) => {
        if (ws === this._ws && error.code === 0 && error.temporary) this._drop(ws, "ping timed out");
      });
    }, interval);
  }

  /** Abandon `ws` now (timeouts, refused connect) and handle it as closed with `code`. */
  _drop(ws, reason, code = 4000) {
    if (ws !== this._ws) return;
    try {
      ws.close(code >= 4000 ? code : 4000, reason.slice(0, 100));
    } catch {
      // already closing
    }
    this._onClose(ws, code, reason);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    const push = this._disconnectPush;
    this._teardown(new TidingsError(0, "connection lost", true));
    if (this.state === State.CLOSED) return;
    const finalCode = push?.code ?? code;
    const finalReason = push?.reason ?? reason;
    const reconnect = push ? Boolean(push.reconnect) && closeReconnects(finalCode) : closeReconnects(finalCode);
    this._emit("disconnected", { code: finalCode, reason: finalReason, reconnect });
    if (!reconnect) {
      globalThis.removeEventListener?.("online", this._onOnline);
      this._failConnectWaiters(new TidingsError(finalCode, finalReason || "closed by the server"));
      this._setState(State.CLOSED, { code: finalCode, reason: finalReason });
      return;
    }
    this._urlIndex += 1; // the next attempt goes to the next node
    this._scheduleReconnect(finalCode, finalReason);
  }

  _teardown(error) {
    clearTimeout(this._connectTimer);
    clearInterval(this._pingTimer);
    this._connectTimer = null;
    this._pingTimer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }
    for (const [id, request] of this._pending) {
      clearTimeout(request.timer);
      this._pending.delete(id);
      request.reject(error);
    }
    for (const entry of this._channels.values()) {
      entry.confirmed = false;
      entry.pending = false;
    }
  }

  _failConnectWaiters(error) {
    for (const waiter of [...this._connectWaiters]) waiter.reject(error);
    this._connectWaiters.clear();
    for (const [channel, entry] of this._channels) {
      for (const waiter of entry.waiters) waiter.reject(error);
      entry.waiters = [];
      if (!entry.confirmed) this._channels.delete(channel);
    }
  }

  _scheduleReconnect(code, reason) {
    const delay = backoffDelay(this._attempt, this.options);
    this._attempt += 1;
    this._setState(State.RECONNECTING, { attempt: this._attempt, delay, code, reason });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._open();
    }, delay);
  }

  _retryNow() {
    if (this._retryTimer === null) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._open();
  }

  // --- incoming -----------------------------------------------------------------------------------

  _onFrame(ws, data) {
    if (ws !== this._ws) return;
    if (typeof data !== "string") {
      this._drop(ws, "binary frame on a JSON connection", 4500);
      return;
    }
    let messages;
    try {
      messages = splitFrame(data);
    } catch {
      this._drop(ws, "unreadable frame");
      return;
    }
    for (const message of messages) {
      if (ws !== this._ws) return; // a message of this frame ended the connection
      if (message.push !== undefined) this._onPush(message);
      else this._onReply(message);
    }
  }

  _onReply(message) {
    const request = this._pending.get(message.id);
    if (request === undefined) return; // timed out already
    this._pending.delete(message.id);
    clearTimeout(request.timer);
    if (message.error) {
      const { code, message: text, temporary } = message.error;
      request.reject(new TidingsError(code, text, Boolean(temporary)));
    } else {
      request.resolve(message.result ?? {});
    }
  }

  _onPush(message) {
    switch (message.push) {
      case "publication":
        this._onPublication(message);
        break;
      case "join":
      case "leave":
        this._emit(message.push, { channel: message.channel, member: message.member });
        break;
      case "notification":
        this._emit("notification", message.notification);
        // The push carries the inbox's unread count; count locally only if it does not.
        this._setUnread(typeof message.unread === "number" ? message.unread : this.unread + 1);
        break;
      case "unread":
        this._setUnread(message.unread); // read elsewhere (another tab, another node)
        break;
      case "disconnect":
        this._disconnectPush = message; // the close follows; it decides with this push's code
        break;
      default:
        break; // pushes added in later protocol versions are ignored
    }
  }

  _onPublication(push) {
    const { channel } = push;
    if (!this._channels.has(channel)) return; // unsubscribed meanwhile
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

  // --- commands -----------------------------------------------------------------------------------

  /**
   * Send one command and await its reply.
   * With `wait` (the default) a command issued while reconnecting waits for the connection
   * (up to `timeout`); it is never sent twice, so a reply lost with the connection rejects.
   */
  async _request(op, fields, { timeout = this.options.requestTimeout, wait = true } = {}) {
    if (this.state !== State.CONNECTED) {
      if (!wait) throw new TidingsError(0, "not connected", true);
      await this.waitConnected(timeout);
    }
    const ws = this._ws;
    if (ws === null) throw new TidingsError(0, "not connected", true);
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new TidingsError(0, `${op} timed out`, true));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ id, op, ...fields }));
    });
  }

  /**
   * Subscribe to `channel`; resolves with its position {epoch, offset} once the server confirms.
   * The subscription is kept across reconnects (resumed with `since`) until `unsubscribe`.
   * Rejects with TidingsError 403 when the channel is not allowed.
   */
  subscribe(channel) {
    const existing = this._channels.get(channel);
    if (existing?.confirmed) {
      const position = this._tracker.get(channel);
      return Promise.resolve(position ? { ...position } : { epoch: "", offset: 0 });
    }
    return new Promise((resolve, reject) => {
      if (existing) {
        existing.waiters.push({ resolve, reject });
        return;
      }
      const entry = { confirmed: false, pending: false, waiters: [{ resolve, reject }] };
      this._channels.set(channel, entry);
      // Not connected: the next connect subscribes it (or _onConnected, if a connect is in flight).
      if (this.state === State.CONNECTED) this._sendSubscribe(channel, entry, this._ws);
    });
  }

  _sendSubscribe(channel, entry, ws) {
    entry.pending = true;
    this._request("subscribe", { channel }, { wait: false }).then(
      (result) => {
        entry.pending = false;
        if (this._channels.get(channel) === entry && ws === this._ws) this._applySubscribeResult(channel, result, []);
      },
      (error) => {
        entry.pending = false;
        if (error.code === 0) return; // connection lost (or timed out): the next connect subscribes it
        if (this._channels.get(channel) === entry) this._channels.delete(channel);
        for (const waiter of entry.waiters) waiter.reject(error);
        entry.waiters = [];
      },
    );
  }

  /** Fire and forget (no reply awaited): used where the outcome does not matter. */
  _send(ws, op, fields) {
    ws.send(JSON.stringify({ id: this._nextId++, op, ...fields }));
  }

  /** Stop receiving `channel` and forget its position. */
  async unsubscribe(channel) {
    const entry = this._channels.get(channel);
    if (!entry) return;
    this._channels.delete(channel);
    this._tracker.delete(channel);
    for (const waiter of entry.waiters) waiter.reject(new TidingsError(0, "unsubscribed"));
    if (this.state === State.CONNECTED && entry.confirmed) {
      await this._request("unsubscribe", { channel }, { wait: false }).catch(() => {});
    }
  }

  /** Channels this client is subscribed to (or will be on the next connect). */
  channels() {
    return [...this._channels.keys()];
  }

  /** The last {epoch, offset} seen on `channel`, or null. */
  position(channel) {
    const position = this._tracker.get(channel);
    return position ? { ...position } : null;
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

  _setUnread(count) {
    if (typeof count !== "number") return;
    this.unread = Math.max(0, count);
    this._emit("unread", { unread: this.unread });
  }

  ping() {
    return this._request("ping", {});
  }
}
