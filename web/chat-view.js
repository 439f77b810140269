// chat-view.js: the DOM around the message lists: the sidebar entries, the chat pane's header,
// note, typing line and "load older" button, and the people list.
//
// Guarantees: only the active conversation is ever drawn in the pane (every render* of another
// conversation does nothing), and user text goes in through textContent only (dom.js).
// It reads `host.active` and `host.me`, and calls host.activate/leave/openDm when clicked.

import { badgeText, clear, el } from "./dom.js";
import { peopleOf, typingText } from "./conversation.js";

export class ChatView {
  /** @param {{active: object | null, me: string, activate: Function, leave: Function, openDm: Function}} host */
  constructor(host) {
    this.host = host;
    this.dom = {
      roomList: document.getElementById("room-list"),
      dmList: document.getElementById("dm-list"),
      messages: document.getElementById("messages"),
      loadOlder: document.getElementById("load-older"),
      title: document.getElementById("channel-title"),
      note: document.getElementById("channel-note"),
      typing: document.getElementById("typing"),
      input: document.getElementById("composer-input"),
      send: document.getElementById("send"),
      people: document.getElementById("people-list"),
      peopleCount: document.getElementById("people-count"),
      peopleNote: document.getElementById("people-note"),
    };
  }

  /** Remove everything drawn (sign out). */
  clearAll() {
    clear(this.dom.roomList);
    clear(this.dom.dmList);
    clear(this.dom.people);
    for (const list of this.dom.messages.querySelectorAll("ol.message-list")) list.remove();
    this.dom.typing.textContent = "";
  }

  // --- the sidebar --------------------------------------------------------------------------------

  /** Add the sidebar entry of `conversation`, in channel order. */
  addEntry(conversation) {
    const button = el(
      "button",
      {
        className: "channel-button",
        attrs: { type: "button" },
        dataset: { channel: conversation.channel },
        on: { click: () => this.host.activate(conversation.channel, { focus: true }) },
      },
      el("span", { className: "channel-name", text: conversation.title }),
      el("span", { className: "badge", attrs: { hidden: true } }),
    );
    const leave = el("button", {
      className: "icon-button leave",
      text: "×",
      attrs: { type: "button", "aria-label": `Leave ${conversation.title}`, title: "Leave" },
      on: { click: () => this.host.leave(conversation.channel) },
    });
    conversation.entry = el("li", { dataset: { channel: conversation.channel } }, button, leave);
    const list = conversation.kind === "dm" ? this.dom.dmList : this.dom.roomList;
    const sorted = [...list.children].find((li) => li.dataset.channel > conversation.channel);
    list.insertBefore(conversation.entry, sorted ?? null);
    this.renderBadge(conversation);
  }

  renderBadge(conversation) {
    const badge = conversation.entry?.querySelector(".badge");
    if (!badge) return;
    badge.textContent = badgeText(conversation.unread);
    badge.hidden = !conversation.unread;
    const button = conversation.entry.querySelector(".channel-button");
    button.setAttribute(
      "aria-label",
      conversation.unread ? `${conversation.title}, ${conversation.unread} unread` : conversation.title,
    );
  }

  // --- the chat pane ------------------------------------------------------------------------------

  /** Take `previous` out of the pane, remembering where its reader was. */
  hide(previous) {
    previous.scrollTop = this.dom.messages.scrollTop;
    previous.messages.element.remove();
    previous.entry?.querySelector(".channel-button")?.removeAttribute("aria-current");
  }

  /** Put `conversation` (the active one) in the pane, scrolled where its reader left it. */
  show(conversation) {
    conversation.entry?.querySelector(".channel-button")?.setAttribute("aria-current", "page");
    this.dom.messages.append(conversation.messages.element);
    this.dom.messages.dataset.channel = conversation.channel;
    this.dom.title.textContent = conversation.title;
    this.dom.input.disabled = false;
    this.dom.send.disabled = false;
    this.dom.input.placeholder = `Message ${conversation.title}`;
    this.renderNote(conversation);
    this.renderTyping(conversation);
    this.renderLoadOlder(conversation);
    if (conversation.scrollTop === null) this.scrollToBottom();
    else this.dom.messages.scrollTop = conversation.scrollTop;
  }

  renderEmpty() {
    this.dom.title.textContent = "Pick a room";
    this.dom.input.disabled = true;
    this.dom.send.disabled = true;
    this.dom.typing.textContent = "";
    this.dom.loadOlder.hidden = true;
    clear(this.dom.people);
    this.dom.peopleCount.textContent = "";
  }

  renderNote(conversation) {
    if (conversation === this.host.active) this.dom.note.textContent = conversation.note;
  }

  renderLoadOlder(conversation) {
    if (conversation !== this.host.active) return;
    this.dom.loadOlder.hidden = !conversation.loaded || conversation.complete;
    this.dom.loadOlder.disabled = conversation.loadingOlder;
  }

  renderTyping(conversation) {
    if (conversation !== this.host.active) return;
    this.dom.typing.textContent = typingText([...conversation.typing.keys()].sort());
  }

  nearBottom() {
    const box = this.dom.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  }

  scrollToBottom() {
    this.dom.messages.scrollTop = this.dom.messages.scrollHeight;
  }

  // --- the people list ----------------------------------------------------------------------------

  /** Why the member list is unknown ("" when it is known). */
  renderPeopleNote(text) {
    this.dom.peopleNote.textContent = text;
  }

  renderPeople(conversation) {
    if (conversation !== this.host.active) return;
    const me = this.host.me;
    const { online, sorted } = peopleOf(conversation, me);
    clear(this.dom.people);
    for (const user of sorted) {
      const entry = online.get(user);
      const status = entry ? "online" : "offline";
      const details = entry ? [...entry.nodes].join(", ") : "";
      const item = el(
        "li",
        { className: `person ${status}`, dataset: { user, status } },
        el("span", { className: "presence-dot", attrs: { "aria-hidden": "true" } }),
        el("span", { className: "person-name", text: user }),
        user === me ? el("span", { className: "muted", text: " (you)" }) : null,
        el("span", { className: "visually-hidden", text: `, ${status}` }),
        details ? el("span", { className: "person-node", text: details, attrs: { title: "connected to node" } }) : null,
      );
      if (user !== me && conversation.kind === "room") {
        item.append(
          el("button", {
            className: "link-button dm-button",
            text: "Message",
            attrs: { type: "button", "aria-label": `Message ${user}` },
            on: { click: () => this.host.openDm(user) },
          }),
        );
      }
      this.dom.people.append(item);
    }
    this.dom.peopleCount.textContent = conversation.members ? `(${online.size} online)` : "";
  }
}
