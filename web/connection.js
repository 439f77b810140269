// connection.js: the connection state machine TidingsClient is built on (not public API).
//
// One WebSocket at a time. States: "disconnected" (not started) → "connecting" → "connected"
// ⇄ "reconnecting"; "closed" is final (close() or a terminal close code, reconnect.js).
//
// Guarantees:
//   * A socket that is not the current one (`ws !== this._ws`) can change nothing: every
//     callback checks, so a late event of an abandoned socket is ignored.
//   * Every command in flight is rejected when its connection ends (code 0, temporary); none
//     is sent twice. Channels are resumed with `since` by the next connect (subscriptions.js).
//   * A connection that stays silent (no connect reply within connectTimeout, no pong within
//     pingTimeout) is dropped and handled like a network loss.
//   * Reconnects wait backoffDelay() and go to the next URL; the browser's "online" event
//     retries at once.

import { Emitter } from "./emitter.js";
import { ReconnectSchedule, closeReconnects } from "./reconnect.js";
import { RequestTable, Waiters } from "./requests.js";
import { Subscriptions } from "./subscriptions.js";
import { SUBPROTOCOL, TidingsError, splitFrame } from "./wire.js";

export const State = Object.freeze({
  DISCONNECTED: "disconnected",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

const DEFAULTS = {
  minDelay: 500, // ms; the first retry waits up to this much (full jitter)
  maxDelay: 20000, // ms; the backoff cap
  connectTimeout: 10000, // ms to open the socket and get the connect reply
  requestTimeout: 10000, // ms for any reply
  pingTimeout: 10000, // ms a ping may go unanswered before the connection is dropped
};

export class Connection {
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
    this._events = new Emitter();
    this._subscriptions = new Subscriptions((name, detail) => this._emit(name, detail));
    this._requests = new RequestTable();
    this._connectWaiters = new Waiters();
    this._retry = new ReconnectSchedule(urls, this.options);
    this._everConnected = false;
    this._ws = null;
    this._pingTimer = null;
    this._connectTimer = null;
    this._disconnectPush = null;
    this._onOnline = () => {
      if (this.state === State.RECONNECTING) this._retry.runNow(() => this._open());
    };
  }

  on(name, handler) {
    return this._events.on(name, handler);
  }

  _emit(name, detail) {
    this._events.emit(name, detail);
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
    this._retry.reset();
    this._everConnected = false;
    this._open();
  }

  /** Close for good: pending requests fail, no reconnect. */
  close() {
    globalThis.removeEventListener?.("online", this._onOnline);
    this._retry.cancel();
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
    return this._connectWaiters.wait(timeout, () => new TidingsError(0, "not connected", true));
  }

  async _open() {
    const url = this._retry.url();
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
    const subscribe = this._subscriptions.resumeList();
    const id = this._requests.nextId();
    const handlers = {
      resolve: (result) => this._onConnected(ws, result),
      reject: (error) => {
        if (error.code === 0) return; // the connection ended first; its close is handled already
        // A refused connect (e.g. a 401 reply) is followed by the server's close; make sure.
        console.warn("tidings: connect refused", error);
        this._drop(ws, error.message, error.code === 401 ? 4501 : 4000);
      },
    };
    this._requests.add(id, handlers); // no timeout of its own: connectTimeout covers it
    ws.send(JSON.stringify({ id, op: "connect", token, subscribe }));
  }

  _onConnected(ws, result) {
    if (ws !== this._ws) return;
    clearTimeout(this._connectTimer);
    const reconnected = this._everConnected;
    this._everConnected = true;
    this._retry.reset();
    this.node = result.node;
    this.user = result.user;
    this.clientId = result.client;
    this.unread = result.unread ?? 0;
    const outcomes = result.channels ?? {};
    const { missed, unrecovered, stray } = this._subscriptions.applyConnect(outcomes);
    for (const channel of stray) this._send(ws, "unsubscribe", { channel });
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
    for (const [channel, entry] of this._subscriptions.unsent(outcomes)) this._sendSubscribe(channel, entry, ws);
    this._emit("connected", detail);
    this._connectWaiters.resolveAll();
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
    // A `disconnect` push before the close carries the server's real code and its reconnect advice.
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
    this._retry.nextUrl(); // the next attempt goes to the next node
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
    this._requests.rejectAll(error);
    this._subscriptions.unconfirmAll();
  }

  _failConnectWaiters(error) {
    this._connectWaiters.rejectAll(error);
    this._subscriptions.failWaiters(error);
  }

  _scheduleReconnect(code, reason) {
    const { attempt, delay } = this._retry.next();
    this._setState(State.RECONNECTING, { attempt, delay, code, reason });
    this._retry.start(delay, () => this._open());
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
      else this._requests.settle(message);
    }
  }

  _onPush(message) {
    switch (message.push) {
      case "publication":
        this._subscriptions.onPublication(message);
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

  _setUnread(count) {
    if (typeof count !== "number") return;
    this.unread = Math.max(0, count);
    this._emit("unread", { unread: this.unread });
  }

  // --- outgoing -----------------------------------------------------------------------------------

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
    const id = this._requests.nextId();
    return new Promise((resolve, reject) => {
      this._requests.add(id, { resolve, reject }, { timeout, op });
      ws.send(JSON.stringify({ id, op, ...fields }));
    });
  }

  /** Fire and forget (no reply awaited): used where the outcome does not matter. */
  _send(ws, op, fields) {
    ws.send(JSON.stringify({ id: this._requests.nextId(), op, ...fields }));
  }

  /** Subscribe `entry` on the current connection `ws`; a lost connection leaves it to the next connect. */
  _sendSubscribe(channel, entry, ws) {
    entry.pending = true;
    this._request("subscribe", { channel }, { wait: false }).then(
      (result) => {
        entry.pending = false;
        if (this._subscriptions.get(channel) === entry && ws === this._ws) this._subscriptions.apply(channel, result, []);
      },
      (error) => {
        entry.pending = false;
        if (error.code === 0) return; // connection lost (or timed out): the next connect subscribes it
        this._subscriptions.refuse(channel, entry, error);
      },
    );
  }
}
