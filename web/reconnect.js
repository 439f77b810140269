// reconnect.js: the reconnect policy, shared in meaning with the Python side
// (server/protocol.py close_reconnects; tests/test_close_codes.py checks that both agree).
//
// Pure: no I/O, no timers. The rule: a connection closed with any code reconnects, except
// 4500-4999 ("terminal": protocol violation, unauthenticated, forbidden, ...). Delays use
// exponential backoff with full jitter, capped, so a fleet of tabs does not reconnect in step.

/** Whether a connection closed with `code` should reconnect: 4500-4999 mean "do not". */
export function closeReconnects(code) {
  return !(code >= 4500 && code <= 4999);
}

/** Full-jitter exponential backoff: a random delay in [0, min(maxDelay, minDelay * 2^attempt)). */
export function backoffDelay(attempt, { minDelay = 500, maxDelay = 20000 } = {}, random = Math.random) {
  const cap = Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/**
 * When and where the next connection attempt goes: the backoff of each attempt in a row, the
 * URL (the next one after every close, so a dead node is not retried first), and the one timer.
 */
export class ReconnectSchedule {
  /** @param {string[]} urls  @param {{minDelay?: number, maxDelay?: number}} options */
  constructor(urls, options) {
    this._urls = urls;
    this._options = options;
    this._urlIndex = 0;
    this._attempt = 0;
    this._timer = null;
  }

  url() {
    return this._urls[this._urlIndex % this._urls.length];
  }

  /** The connection closed: the next attempt goes to the next URL. */
  nextUrl() {
    this._urlIndex += 1;
  }

  /** Connected (or started afresh): the next failure waits the shortest backoff again. */
  reset() {
    this._attempt = 0;
  }

  /** Count one more attempt: {attempt, delay} for the caller to report, then start(delay, ...). */
  next() {
    const delay = backoffDelay(this._attempt, this._options);
    this._attempt += 1;
    return { attempt: this._attempt, delay };
  }

  /** Call `open` after `delay` ms, replacing any attempt already scheduled. */
  start(delay, open) {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      open();
    }, delay);
  }

  /** Run the scheduled attempt now (the browser came back online); nothing if none is scheduled. */
  runNow(open) {
    if (this._timer === null) return;
    clearTimeout(this._timer);
    this._timer = null;
    open();
  }

  cancel() {
    clearTimeout(this._timer);
    this._timer = null;
  }
}
