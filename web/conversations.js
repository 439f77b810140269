// Conversations: the room and DM lists, the message log of each, typing indicators and presence.
//
// Each conversation keeps its own <ol role="log">, keyed by publication offset, so a message is
// shown once however it arrives (live, recovered after a reconnect, or from history) and always
// in offset order.

import { badgeText, clear, el, timeElement } from "./dom.js";
import { dmChannel, dmPeer } from "./store.js";

const PAGE_SIZE = 50; // messages per history page
const TYPING_SEND_INTERVAL = 2500; // ms between two "typing" ephemerals from this tab
const TYPING_SHOW = 4000; // ms a "typing" indicator stays without a new one
const MAX_WATCHED_DMS = 50; // DM channels watched in the background to discover new conversations
const LOAD_OLDER_THRESHOLD = 80; // px from the top of the log that loads the previous page

/** The text of a publication: chat messages carry {text}; anything else a backend sent is shown as JSON. */
export function messageText(data) {
  if (data && typeof data === "object" && typeof data.text === "string") return data.text;
  if (typeof data === "string") return data;
  try {
    return JSON.stringify(data);
  } catch {
    return String(data);
  }
}

class Conversation {
  constructor(channel, me) {
    this.channel = channel;
    this.kind = channel.startsWith("dm:") ? "dm" : "room";
    this.title = this.kind === "dm" ? `@${dmPeer(channel, me)}` : `#${channel.slice("room:".length)}`;
    this.list = el("ol", {
      className: "message-list",
      attrs: { role: "log", "aria-live": "polite", "aria-label": `Messages in ${this.title}` },
      dataset: { channel },
    });
    this.items = new Map(); // offset → <li>
    this.epoch = null;
    this.oldest = null; // smallest offset shown
    this.newest = 0; // largest offset shown
    this.top = 0; // the channel's top offset when subscribed
    this.subscribed = false;
    this.loaded = false; // the latest page was loaded since the last reset
    this.complete = false; // nothing older left in history
    this.loadingOlder = false;
    this.visible = false; // listed in the sidebar (background DM watches are not, until they have messages)
    this.unread = 0;
    this.typing = new Map(); // user → timer
    this.members = null; // Map client → member while known
    this.authors = new Set();
    this.note = "";
    this.scrollTop = null;
    this.entry = null;
  }
}

export class Conversations {
  /**
   * @param {import("./tidings.js").TidingsClient} client
   * @param {string} me  the signed-in user
   * @param {import("./store.js").Prefs} prefs
   */
  constructor(client, me, prefs) {
    this.client = client;
    this.me = me;
    this.prefs = prefs;
    this.conversations = new Map();
    this.active = null;
    this.lastTypingSent = 0;
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
    this._unsubscribe = [
      client.on("publication", (p) => this.onPublication(p)),
      client.on("unrecovered", ({ channel }) => this.onUnrecovered(channel)),
      client.on("join", ({ channel, member }) => this.onMembership(channel, member, true)),
      client.on("leave", ({ channel, member }) => this.onMembership(channel, member, false)),
      client.on("subscribe-error", ({ channel, error }) => this.onSubscribeError(channel, error)),
      client.on("connected", ({ reconnected }) => this.onConnected(reconnected)),
    ];
    this._onScroll = () => {
      if (this.active && this.dom.messages.scrollTop < LOAD_OLDER_THRESHOLD) this.loadOlder(this.active);
    };
    this._onLoadOlder = () => this.active && this.loadOlder(this.active);
    this.dom.messages.addEventListener("scroll", this._onScroll, { passive: true });
    this.dom.loadOlder.addEventListener("click", this._onLoadOlder);
    this._onVisibility = () => {
      if (!document.hidden && this.active) this.markRead(this.active);
    };
    document.addEventListener("visibilitychange", this._onVisibility);
  }

  /** Open the conversations remembered for this user (or #general) and show one. */
  start() {
    const saved = this.prefs.channels();
    const channels = saved.length ? saved : ["room:general"];
    for (const channel of channels) this.add(channel, { visible: true });
    const active = this.prefs.active();
    this.activate(this.conversations.has(active) ? active : channels[0], { focus: false });
  }

  stop() {
    for (const off of this._unsubscribe) off();
    this.dom.messages.removeEventListener("scroll", this._onScroll);
    this.dom.loadOlder.removeEventListener("click", this._onLoadOlder);
    document.removeEventListener("visibilitychange", this._onVisibility);
    for (const conversation of this.conversations.values()) {
      for (const timer of conversation.typing.values()) clearTimeout(timer);
    }
    clear(this.dom.roomList);
    clear(this.dom.dmList);
    clear(this.dom.people);
    for (const list of this.dom.messages.querySelectorAll("ol.message-list")) list.remove();
    this.dom.typing.textContent = "";
  }

  // --- the list of conversations ----------------------------------------------------------------

  /** Subscribe to `channel` (once) and list it when `visible`. */
  add(channel, { visible }) {
    let conversation = this.conversations.get(channel);
    if (!conversation) {
      conversation = new Conversation(channel, this.me);
      this.conversations.set(channel, conversation);
      this.client.subscribe(channel).then(
        (position) => this.onSubscribed(conversation, position),
        (error) => this.onSubscribeError(channel, error),
      );
    }
    if (visible && !conversation.visible) this.show(conversation);
    return conversation;
  }

  /** Put a conversation in the sidebar and remember it. */
  show(conversation) {
    conversation.visible = true;
    const button = el(
      "button",
      {
        className: "channel-button",
        attrs: { type: "button" },
        dataset: { channel: conversation.channel },
        on: { click: () => this.activate(conversation.channel, { focus: true }) },
      },
      el("span", { className: "channel-name", text: conversation.title }),
      el("span", { className: "badge", attrs: { hidden: true } }),
    );
    const leave = el("button", {
      className: "icon-button leave",
      text: "×",
      attrs: { type: "button", "aria-label": `Leave ${conversation.title}`, title: "Leave" },
      on: { click: () => this.leave(conversation.channel) },
    });
    conversation.entry = el("li", { dataset: { channel: conversation.channel } }, button, leave);
    const list = conversation.kind === "dm" ? this.dom.dmList : this.dom.roomList;
    const sorted = [...list.children].find((li) => li.dataset.channel > conversation.channel);
    list.insertBefore(conversation.entry, sorted ?? null);
    this.renderBadge(conversation);
    this.saveChannels();
  }

  saveChannels() {
    this.prefs.setChannels([...this.conversations.values()].filter((c) => c.visible).map((c) => c.channel));
  }

  /** Join (or create: rooms exist once used) `room:<name>` and show it. */
  joinRoom(name) {
    const channel = `room:${name}`;
    this.add(channel, { visible: true });
    this.activate(channel, { focus: true });
  }

  /** Open the direct conversation with `user`. */
  openDm(user) {
    const channel = dmChannel(this.me, user);
    this.add(channel, { visible: true });
    this.activate(channel, { focus: true });
  }

  /** Stop following a conversation. */
  leave(channel) {
    const conversation = this.conversations.get(channel);
    if (!conversation) return;
    this.conversations.delete(channel);
    this.client.unsubscribe(channel);
    conversation.entry?.remove();
    conversation.list.remove();
    for (const timer of conversation.typing.values()) clearTimeout(timer);
    this.saveChannels();
    if (this.active === conversation) {
      this.active = null;
      const next = [...this.conversations.values()].find((c) => c.visible);
      if (next) this.activate(next.channel, { focus: false });
      else this.renderEmpty();
    }
  }

  /** Watch the DM channel with `user` in the background, so that a conversation they start shows up. */
  watchDm(user) {
    if (!user || user === this.me) return;
    const channel = dmChannel(this.me, user);
    if (this.conversations.has(channel)) return;
    const watched = [...this.conversations.values()].filter((c) => c.kind === "dm" && !c.visible).length;
    if (watched >= MAX_WATCHED_DMS) return;
    this.add(channel, { visible: false });
  }

  // --- showing one conversation -----------------------------------------------------------------

  activate(channel, { focus }) {
    const conversation = this.conversations.get(channel);
    if (!conversation) return;
    const previous = this.active;
    if (previous && previous !== conversation) {
      previous.scrollTop = this.dom.messages.scrollTop;
      previous.list.remove();
      previous.members = null; // join/leave pushes keep only the shown conversation's list fresh
      previous.entry?.querySelector(".channel-button")?.removeAttribute("aria-current");
    }
    if (!conversation.visible) this.show(conversation);
    this.active = conversation;
    this.prefs.setActive(channel);
    conversation.entry?.querySelector(".channel-button")?.setAttribute("aria-current", "page");
    this.dom.messages.append(conversation.list);
    this.dom.messages.dataset.channel = channel;
    this.dom.title.textContent = conversation.title;
    this.dom.input.disabled = false;
    this.dom.send.disabled = false;
    this.dom.input.placeholder = `Message ${conversation.title}`;
    this.renderNote(conversation);
    this.renderTyping(conversation);
    this.renderLoadOlder(conversation);
    if (conversation.scrollTop === null) this.scrollToBottom();
    else this.dom.messages.scrollTop = conversation.scrollTop;
    this.markRead(conversation);
    if (conversation.subscribed && !conversation.loaded) this.loadLatest(conversation);
    this.loadPresence(conversation);
    if (focus) this.dom.input.focus();
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
    if (conversation === this.active) this.dom.note.textContent = conversation.note;
  }

  renderLoadOlder(conversation) {
    if (conversation !== this.active) return;
    this.dom.loadOlder.hidden = !conversation.loaded || conversation.complete;
    this.dom.loadOlder.disabled = conversation.loadingOlder;
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

  nearBottom() {
    const box = this.dom.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  }

  scrollToBottom() {
    this.dom.messages.scrollTop = this.dom.messages.scrollHeight;
  }

  // --- messages ---------------------------------------------------------------------------------

  onSubscribed(conversation, position) {
    if (this.conversations.get(conversation.channel) !== conversation) return;
    conversation.subscribed = true;
    conversation.epoch = position.epoch;
    conversation.top = position.offset;
    const read = this.prefs.readPosition(conversation.channel);
    if (read && read.epoch === position.epoch) {
      conversation.unread = Math.max(0, position.offset - read.offset);
    } else if (conversation.kind === "dm" && !read) {
      conversation.unread = position.offset; // a conversation someone else started
    } else {
      this.prefs.setReadPosition(conversation.channel, position);
    }
    if (conversation === this.active) {
      conversation.unread = 0;
      this.markRead(conversation);
    }
    if (!conversation.visible && position.offset > 0) this.show(conversation);
    this.renderBadge(conversation);
    if (conversation === this.active && !conversation.loaded) this.loadLatest(conversation);
  }

  onSubscribeError(channel, error) {
    const conversation = this.conversations.get(channel);
    if (!conversation) return;
    conversation.note =
      error.code === 403 ? `You may not join ${conversation.title}.` : `Could not join ${conversation.title}: ${error.message}`;
    conversation.subscribed = false;
    if (!conversation.visible) {
      this.conversations.delete(channel);
      return;
    }
    this.renderNote(conversation);
  }

  onConnected(reconnected) {
    if (!reconnected || !this.active) return;
    this.loadPresence(this.active); // presence may have changed while we were away
    for (const conversation of this.conversations.values()) {
      if (!conversation.subscribed) {
        // A subscribe refused earlier (e.g. 503 while the backplane was down) gets another try.
        this.client.subscribe(conversation.channel).then(
          (position) => this.onSubscribed(conversation, position),
          (error) => this.onSubscribeError(conversation.channel, error),
        );
      }
    }
  }

  async loadLatest(conversation) {
    conversation.loaded = true;
    try {
      const page = await this.client.latest(conversation.channel, PAGE_SIZE);
      if (this.conversations.get(conversation.channel) !== conversation) return;
      if (page.epoch) conversation.epoch = page.epoch; // "" : nothing was ever published here
      const stick = this.nearBottom();
      for (const publication of page.publications) this.insert(conversation, publication);
      const first = page.publications[0];
      // A page cut short by its byte bound carries a cursor: older messages are still there.
      conversation.complete =
        first === undefined || first.offset <= 1 || (page.cursor === undefined && page.publications.length < PAGE_SIZE);
      if (conversation === this.active && (stick || conversation.scrollTop === null)) this.scrollToBottom();
      this.markRead(conversation);
    } catch (error) {
      conversation.loaded = false;
      conversation.note = `Could not load messages: ${error.message}`;
      this.renderNote(conversation);
    }
    this.renderLoadOlder(conversation);
  }

  async loadOlder(conversation) {
    if (!conversation.loaded || conversation.complete || conversation.loadingOlder) return;
    if (conversation.oldest === null) return;
    conversation.loadingOlder = true;
    this.renderLoadOlder(conversation);
    try {
      const page = await this.client.older(conversation.channel, {
        epoch: conversation.epoch,
        before: conversation.oldest,
        limit: PAGE_SIZE,
      });
      if (page.reset) {
        this.reset(conversation);
        return;
      }
      const box = this.dom.messages;
      const fromBottom = box.scrollHeight - box.scrollTop; // keep what the reader sees in place
      for (const publication of page.publications) this.insert(conversation, publication);
      if (conversation === this.active) box.scrollTop = box.scrollHeight - fromBottom;
      conversation.complete = page.complete;
    } catch (error) {
      conversation.note = `Could not load older messages: ${error.message}`;
      this.renderNote(conversation);
    } finally {
      conversation.loadingOlder = false;
      this.renderLoadOlder(conversation);
    }
  }

  /** Forget what is shown and load the latest page again (the history could not be continued). */
  reset(conversation) {
    clear(conversation.list);
    conversation.items.clear();
    conversation.oldest = null;
    conversation.newest = 0;
    conversation.loaded = false;
    conversation.complete = false;
    conversation.scrollTop = null;
    if (conversation === this.active) this.loadLatest(conversation);
    this.renderLoadOlder(conversation);
  }

  onUnrecovered(channel) {
    const conversation = this.conversations.get(channel);
    if (!conversation) return;
    conversation.note = "Some messages could not be recovered; history was reloaded.";
    this.renderNote(conversation);
    this.reset(conversation);
  }

  onPublication(publication) {
    const conversation = this.conversations.get(publication.channel);
    if (!conversation) return;
    const author = publication.from?.user;
    if (publication.ephemeral) {
      if (publication.data?.type === "typing" && author && author !== this.me) this.showTyping(conversation, author);
      return;
    }
    if (author) this.stopTyping(conversation, author);
    const stick = conversation === this.active && (this.nearBottom() || author === this.me);
    if (!this.insert(conversation, publication)) return;
    if (!conversation.visible) this.show(conversation);
    if (conversation === this.active && !document.hidden) {
      if (stick) this.scrollToBottom();
      this.markRead(conversation);
    } else if (author !== this.me) {
      conversation.unread += 1;
      this.renderBadge(conversation);
    }
  }

  /** Show one publication in its place (by offset); false when it is already shown. */
  insert(conversation, publication) {
    const { offset } = publication;
    if (typeof offset !== "number" || conversation.items.has(offset)) return false;
    const author = publication.from?.user ?? null;
    const mine = author === this.me;
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
    if (offset < conversation.newest) {
      for (const [shown, node] of conversation.items) {
        if (shown > offset && (next === null || shown < Number(next.dataset.offset))) next = node;
      }
    }
    conversation.list.insertBefore(item, next);
    conversation.items.set(offset, item);
    conversation.newest = Math.max(conversation.newest, offset);
    conversation.oldest = conversation.oldest === null ? offset : Math.min(conversation.oldest, offset);
    if (author && !conversation.authors.has(author)) {
      conversation.authors.add(author);
      this.watchDm(author);
      if (conversation === this.active) this.renderPeople(conversation);
    }
    return true;
  }

  markRead(conversation) {
    if (conversation !== this.active || document.hidden || conversation.epoch === null) return;
    const offset = Math.max(conversation.newest, conversation.top);
    this.prefs.setReadPosition(conversation.channel, { epoch: conversation.epoch, offset });
    if (conversation.unread) {
      conversation.unread = 0;
      this.renderBadge(conversation);
    }
  }

  /** Publish what the composer holds; resolves false (and keeps the text) when it fails. */
  async send(text) {
    const conversation = this.active;
    if (!conversation || !text.trim()) return true;
    try {
      await this.client.publish(conversation.channel, { type: "message", text });
      this.lastTypingSent = 0;
      if (conversation.note.startsWith("Not sent")) {
        conversation.note = "";
        this.renderNote(conversation);
      }
      return true;
    } catch (error) {
      // A publish in flight when the connection dropped may have landed: say so rather than guess.
      conversation.note =
        error.message === "connection lost"
          ? "Not sent? The connection dropped while sending; check the conversation before sending again."
          : `Not sent: ${error.message}`;
      this.renderNote(conversation);
      return false;
    }
  }

  // --- typing -----------------------------------------------------------------------------------

  /** The composer changed: tell the others, at most every TYPING_SEND_INTERVAL. */
  typed() {
    const conversation = this.active;
    const now = Date.now();
    if (!conversation || now - this.lastTypingSent < TYPING_SEND_INTERVAL) return;
    this.lastTypingSent = now;
    // Ephemeral: no history, no offset; dropped silently when not connected.
    this.client.publish(conversation.channel, { type: "typing" }, { ephemeral: true }).catch(() => {});
  }

  showTyping(conversation, user) {
    clearTimeout(conversation.typing.get(user));
    conversation.typing.set(
      user,
      setTimeout(() => this.stopTyping(conversation, user), TYPING_SHOW),
    );
    this.renderTyping(conversation);
  }

  stopTyping(conversation, user) {
    if (!conversation.typing.has(user)) return;
    clearTimeout(conversation.typing.get(user));
    conversation.typing.delete(user);
    this.renderTyping(conversation);
  }

  renderTyping(conversation) {
    if (conversation !== this.active) return;
    const users = [...conversation.typing.keys()].sort();
    let text = "";
    if (users.length === 1) text = `${users[0]} is typing…`;
    else if (users.length === 2) text = `${users[0]} and ${users[1]} are typing…`;
    else if (users.length > 2) text = "Several people are typing…";
    this.dom.typing.textContent = text;
  }

  // --- presence ---------------------------------------------------------------------------------

  async loadPresence(conversation) {
    try {
      const members = await this.client.presence(conversation.channel);
      if (conversation !== this.active) return;
      conversation.members = new Map(members.map((m) => [m.client, m]));
      this.dom.peopleNote.textContent = "";
      for (const member of members) this.watchDm(member.user);
    } catch (error) {
      if (conversation !== this.active) return;
      conversation.members = null;
      this.dom.peopleNote.textContent =
        error.code === 404 ? "Presence is not enabled on this server." : `Presence unavailable: ${error.message}`;
    }
    this.renderPeople(conversation);
  }

  onMembership(channel, member, joined) {
    const conversation = this.conversations.get(channel);
    if (!conversation || !member) return;
    if (joined) this.watchDm(member.user);
    if (!conversation.members) return;
    if (joined) conversation.members.set(member.client, member);
    else conversation.members.delete(member.client);
    if (conversation === this.active) this.renderPeople(conversation);
  }

  renderPeople(conversation) {
    if (conversation !== this.active) return;
    const online = new Map(); // user → {nodes, connections}
    for (const member of conversation.members?.values() ?? []) {
      const entry = online.get(member.user) ?? { nodes: new Set(), connections: 0 };
      entry.connections += 1;
      if (member.node) entry.nodes.add(member.node);
      online.set(member.user, entry);
    }
    const people = new Set([...online.keys(), ...conversation.authors]);
    if (conversation.kind === "dm") people.add(dmPeer(conversation.channel, this.me));
    const sorted = [...people].sort((a, b) => {
      const rank = (user) => (user === this.me ? 0 : online.has(user) ? 1 : 2);
      return rank(a) - rank(b) || a.localeCompare(b);
    });
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
        user === this.me ? el("span", { className: "muted", text: " (you)" }) : null,
        el("span", { className: "visually-hidden", text: `, ${status}` }),
        details ? el("span", { className: "person-node", text: details, attrs: { title: "connected to node" } }) : null,
      );
      if (user !== this.me && conversation.kind === "room") {
        item.append(
          el("button", {
            className: "link-button dm-button",
            text: "Message",
            attrs: { type: "button", "aria-label": `Message ${user}` },
            on: { click: () => this.openDm(user) },
          }),
        );
      }
      this.dom.people.append(item);
    }
    this.dom.peopleCount.textContent = conversation.members ? `(${online.size} online)` : "";
  }
}
