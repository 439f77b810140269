// message-list.js: the message log of one conversation, an <ol role="log"> keyed by offset.
//
// Guarantee: a publication is shown once however it arrives (live, recovered after a reconnect,
// or from history) and always in offset order. Text goes in through textContent only (dom.js).

import { clear, el, timeElement } from "./dom.js";
import { messageText } from "./conversation.js";

export class MessageList {
  constructor(channel, title) {
    this.element = el("ol", {
      className: "message-list",
      attrs: { role: "log", "aria-live": "polite", "aria-label": `Messages in ${title}` },
      dataset: { channel },
    });
    this.items = new Map(); // offset → <li>
    this.oldest = null; // smallest offset shown
    this.newest = 0; // largest offset shown
  }

  /** Show one publication in its place (by offset); false when it is already shown. */
  insert(publication, me) {
    const { offset } = publication;
    if (typeof offset !== "number" || this.items.has(offset)) return false;
    const author = publication.from?.user ?? null;
    const mine = author === me;
    const item = el(
      "li",
      {
        className: mine ? "message mine" : author ? "message" : "message system",
        dataset: { offset, from: author ?? "" },
      },
      el(
        "div",
        { className: "meta" },
        el("span", { className: "author", text: author ?? "system" }),
        " ",
        timeElement(publication.ts),
      ),
      el("p", { className: "text", text: messageText(publication.data) }),
    );
    // Find the first shown message with a larger offset; new messages almost always go last.
    let next = null;
    if (offset < this.newest) {
      for (const [shown, node] of this.items) {
        if (shown > offset && (next === null || shown < Number(next.dataset.offset))) next = node;
      }
    }
    this.element.insertBefore(item, next);
    this.items.set(offset, item);
    this.newest = Math.max(this.newest, offset);
    this.oldest = this.oldest === null ? offset : Math.min(this.oldest, offset);
    return true;
  }

  /** Forget every message shown. */
  clear() {
    clear(this.element);
    this.items.clear();
    this.oldest = null;
    this.newest = 0;
  }
}
