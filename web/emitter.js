// emitter.js: named events with isolated handlers.
//
// Guarantee: every handler of an event runs, in the order added, even when an earlier one
// throws (the error is logged); on() returns the function that removes the handler.

export class Emitter {
  constructor() {
    this._handlers = new Map(); // event name → Set of handlers
  }

  on(name, handler) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(handler);
    return () => this._handlers.get(name)?.delete(handler);
  }

  emit(name, detail) {
    for (const handler of this._handlers.get(name) ?? []) {
      try {
        handler(detail);
      } catch (error) {
        // One broken handler must not stop delivery to the others, nor the client itself.
        console.error(`tidings: ${name} handler failed`, error);
      }
    }
  }
}
