// requests.js: promises waiting on the server, each with its own deadline.
//
// No I/O: the caller sends the frames. Guarantees:
//   * RequestTable settles each command id at most once: by its reply, by its timeout (a
//     temporary TidingsError code 0 "<op> timed out"), or by rejectAll() when the connection
//     ends. A reply that comes after the timeout is ignored.
//   * Waiters (callers of waitConnected) are each settled once: resolveAll, rejectAll or timeout.

import { TidingsError } from "./wire.js";

/** Commands in flight on the current connection, by id. */
export class RequestTable {
  constructor() {
    this._pending = new Map(); // command id → {resolve, reject, timer}
    this._nextId = 1;
  }

  /** A fresh command id; ids are never reused within one client, across connections too. */
  nextId() {
    return this._nextId++;
  }

  /**
   * Wait for the reply to command `id`: `resolve(result)` or `reject(TidingsError)`.
   * With a `timeout` (ms), reject after it with "<op> timed out"; null waits until rejectAll().
   */
  add(id, { resolve, reject }, { timeout = null, op = "request" } = {}) {
    let timer = null;
    if (timeout !== null) {
      timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new TidingsError(0, `${op} timed out`, true));
      }, timeout);
    }
    this._pending.set(id, { resolve, reject, timer });
  }

  /** Settle the request a reply ({id, result} or {id, error}) answers; unknown ids are ignored. */
  settle(message) {
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

  /** Reject every request in flight with `error` (the connection they were sent on ended). */
  rejectAll(error) {
    for (const [id, request] of this._pending) {
      clearTimeout(request.timer);
      this._pending.delete(id);
      request.reject(error);
    }
  }
}

/** Callers waiting for a condition (here: "connected"), each with a deadline. */
export class Waiters {
  constructor() {
    this._waiters = new Set();
  }

  /** A promise settled by resolveAll/rejectAll, or rejected with `timeoutError()` after `timeout` ms. */
  wait(timeout, timeoutError) {
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
        this._waiters.delete(waiter);
        reject(timeoutError());
      }, timeout);
      this._waiters.add(waiter);
    });
  }

  resolveAll() {
    for (const waiter of [...this._waiters]) waiter.resolve();
    this._waiters.clear();
  }

  rejectAll(error) {
    for (const waiter of [...this._waiters]) waiter.reject(error);
    this._waiters.clear();
  }
}
