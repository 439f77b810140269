// conversations.js: the room and DM lists and what happens to them: the controller of the chat.
//
// It turns client events (publications, joins, reconnects) and the reader's actions (join, open,
// leave, send) into changes of Conversation state (conversation.js) and asks the views to draw
// them: MessageList (message-list.js) for messages, ChatView (chat-view.js) for the rest.
// History paging is history.js; members and typing are presence.js.
//
// Guarantees: each conversation keeps its own <ol role="log">, keyed by publication offset, so a
// message is shown once however it arrives and always in offset order; a conversation is
// subscribed once however often it is added; the read position only moves while it is shown.

import { ChatView } from "./chat-view.js";
import { Conversation, conversationTitle, unreadAtSubscribe } from "./conversation.js";
import { HistoryLoader } from "./history.js";
import { MessageList } from "./message-list.js";
import { Presence } from "./presence.js";
import { dmChannel } from "./store.js";

export { messageText } from "./conversation.js";

const MAX_WATCHED_DMS = 50; // DM channels watched in the background to discover new conversations
const LOAD_OLDER_THRESHOLD = 80; // px from the top of the log that loads the previous page

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
    this.view = new ChatView(this);
    this.history = new HistoryLoader(this);
    this.presence = new Presence(this);
    this._unsubscribe = [
      client.on("publication", (p) => this.onPublication(p)),
      client.on("unrecovered", ({ channel }) => this.onUnrecovered(channel)),
      client.on("join", ({ channel, member }) => this.presence.onMembership(channel, member, true)),
      client.on("leave", ({ channel, member }) => this.presence.onMembership(channel, member, false)),
      client.on("subscribe-error", ({ channel, error }) => this.onSubscribeError(channel, error)),
      client.on("connected", ({ reconnected }) => this.onConnected(reconnected)),
    ];
    const { messages, loadOlder } = this.view.dom;
    this._onScroll = () => {
      if (this.active && messages.scrollTop < LOAD_OLDER_THRESHOLD) this.history.loadOlder(this.active);
    };
    this._onLoadOlder = () => this.active && this.history.loadOlder(this.active);
    messages.addEventListener("scroll", this._onScroll, { passive: true });
    loadOlder.addEventListener("click", this._onLoadOlder);
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
    this.view.dom.messages.removeEventListener("scroll", this._onScroll);
    this.view.dom.loadOlder.removeEventListener("click", this._onLoadOlder);
    document.removeEventListener("visibilitychange", this._onVisibility);
    for (const conversation of this.conversations.values()) this.presence.stopAll(conversation);
    this.view.clearAll();
  }

  // --- the list of conversations ----------------------------------------------------------------

  /** Subscribe to `channel` (once) and list it when `visible`. */
  add(channel, { visible }) {
    let conversation = this.conversations.get(channel);
    if (!conversation) {
      const messages = new MessageList(channel, conversationTitle(channel, this.me));
      conversation = new Conversation(channel, this.me, messages);
      this.conversations.set(channel, conversation);
      this.subscribe(conversation);
    }
    if (visible && !conversation.visible) this.show(conversation);
    return conversation;
  }

  subscribe(conversation) {
    this.client.subscribe(conversation.channel).then(
      (position) => this.onSubscribed(conversation, position),
      (error) => this.onSubscribeError(conversation.channel, error),
    );
  }

  /** Put a conversation in the sidebar and remember it. */
  show(conversation) {
    conversation.visible = true;
    this.view.addEntry(conversation);
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
    conversation.messages.element.remove();
    this.presence.stopAll(conversation);
    this.saveChannels();
    if (this.active === conversation) {
      this.active = null;
      const next = [...this.conversations.values()].find((c) => c.visible);
      if (next) this.activate(next.channel, { focus: false });
      else this.view.renderEmpty();
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

  /** Show `channel` in the pane: its messages (loaded if need be), members and read state. */
  activate(channel, { focus }) {
    const conversation = this.conversations.get(channel);
    if (!conversation) return;
    const previous = this.active;
    if (previous && previous !== conversation) {
      this.view.hide(previous);
      previous.members = null; // join/leave pushes keep only the shown conversation's list fresh
    }
    if (!conversation.visible) this.show(conversation);
    this.active = conversation;
    this.prefs.setActive(channel);
    this.view.show(conversation);
    this.markRead(conversation);
    if (conversation.subscribed && !conversation.loaded) this.history.loadLatest(conversation);
    this.presence.load(conversation);
    if (focus) this.view.dom.input.focus();
  }

  // --- messages ---------------------------------------------------------------------------------

  onSubscribed(conversation, position) {
    if (this.conversations.get(conversation.channel) !== conversation) return;
    conversation.subscribed = true;
    conversation.epoch = position.epoch;
    conversation.top = position.offset;
    const unread = unreadAtSubscribe(conversation.kind, this.prefs.readPosition(conversation.channel), position);
    if (unread === null) this.prefs.setReadPosition(conversation.channel, position);
    else conversation.unread = unread;
    if (conversation === this.active) {
      conversation.unread = 0;
      this.markRead(conversation);
    }
    if (!conversation.visible && position.offset > 0) this.show(conversation);
    this.view.renderBadge(conversation);
    if (conversation === this.active && !conversation.loaded) this.history.loadLatest(conversation);
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
    this.view.renderNote(conversation);
  }

  onConnected(reconnected) {
    if (!reconnected || !this.active) return;
    this.presence.load(this.active); // presence may have changed while we were away
    for (const conversation of this.conversations.values()) {
      // A subscribe refused earlier (e.g. 503 while the backplane was down) gets another try.
      if (!conversation.subscribed) this.subscribe(conversation);
    }
  }

  onUnrecovered(channel) {
    const conversation = this.conversations.get(channel);
    if (!conversation) return;
    conversation.note = "Some messages could not be recovered; history was reloaded.";
    this.view.renderNote(conversation);
    this.history.reset(conversation);
  }

  onPublication(publication) {
    const conversation = this.conversations.get(publication.channel);
    if (!conversation) return;
    const author = publication.from?.user;
    if (publication.ephemeral) {
      if (publication.data?.type === "typing" && author && author !== this.me) this.presence.showTyping(conversation, author);
      return;
    }
    if (author) this.presence.stopTyping(conversation, author);
    const stick = conversation === this.active && (this.view.nearBottom() || author === this.me);
    if (!this.insert(conversation, publication)) return;
    if (!conversation.visible) this.show(conversation);
    if (conversation === this.active && !document.hidden) {
      if (stick) this.view.scrollToBottom();
      this.markRead(conversation);
    } else if (author !== this.me) {
      conversation.unread += 1;
      this.view.renderBadge(conversation);
    }
  }

  /** Show one publication in its place (by offset); false when it is already shown. */
  insert(conversation, publication) {
    if (!conversation.messages.insert(publication, this.me)) return false;
    const author = publication.from?.user ?? null;
    if (author && !conversation.authors.has(author)) {
      conversation.authors.add(author);
      this.watchDm(author);
      if (conversation === this.active) this.view.renderPeople(conversation);
    }
    return true;
  }

  markRead(conversation) {
    if (conversation !== this.active || document.hidden || conversation.epoch === null) return;
    const offset = Math.max(conversation.messages.newest, conversation.top);
    this.prefs.setReadPosition(conversation.channel, { epoch: conversation.epoch, offset });
    if (conversation.unread) {
      conversation.unread = 0;
      this.view.renderBadge(conversation);
    }
  }

  /** Publish what the composer holds; resolves false (and keeps the text) when it fails. */
  async send(text) {
    const conversation = this.active;
    if (!conversation || !text.trim()) return true;
    try {
      await this.client.publish(conversation.channel, { type: "message", text });
      this.presence.sent();
      if (conversation.note.startsWith("Not sent")) {
        conversation.note = "";
        this.view.renderNote(conversation);
      }
      return true;
    } catch (error) {
      // A publish in flight when the connection dropped may have landed: say so rather than guess.
      conversation.note =
        error.message === "connection lost"
          ? "Not sent? The connection dropped while sending; check the conversation before sending again."
          : `Not sent: ${error.message}`;
      this.view.renderNote(conversation);
      return false;
    }
  }

  /** The composer changed (app.js): maybe tell the others this user is typing. */
  typed() {
    this.presence.typed();
  }
}
