// conversation.js: the state of one conversation and the pure rules the UI applies to it.
//
// No DOM access and no I/O: a Conversation holds the handles its views give it (`messages`, the
// MessageList of message-list.js; `entry`, its sidebar item from chat-view.js) but never touches
// them. The functions below are the UI's rules, each a plain function of its arguments.

import { dmPeer } from "./store.js";

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

/** How a channel is shown: "@peer" for a DM, "#name" for a room. */
export function conversationTitle(channel, me) {
  return channel.startsWith("dm:") ? `@${dmPeer(channel, me)}` : `#${channel.slice("room:".length)}`;
}

/**
 * Unread messages of a channel just subscribed at `position`, given the last `read` position this
 * browser remembers; null when there is nothing to count from (the caller marks `position` read).
 */
export function unreadAtSubscribe(kind, read, position) {
  if (read && read.epoch === position.epoch) return Math.max(0, position.offset - read.offset);
  if (kind === "dm" && !read) return position.offset; // a conversation someone else started
  return null;
}

/** Whether a page of the latest publications (oldest first) holds the channel's whole history. */
export function latestPageComplete(page, limit) {
  const first = page.publications[0];
  // A page cut short by its byte bound carries a cursor: older messages are still there.
  return first === undefined || first.offset <= 1 || (page.cursor === undefined && page.publications.length < limit);
}

/** The typing line for `users` (sorted): "", one name, two names, or "Several people". */
export function typingText(users) {
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length === 2) return `${users[0]} and ${users[1]} are typing…`;
  if (users.length > 2) return "Several people are typing…";
  return "";
}

/**
 * The people list of `conversation`: `online` maps each present user to {nodes, connections};
 * `sorted` is me first, then online users, then the offline (authors, the DM peer), by name.
 */
export function peopleOf(conversation, me) {
  const online = new Map(); // user → {nodes, connections}
  for (const member of conversation.members?.values() ?? []) {
    const entry = online.get(member.user) ?? { nodes: new Set(), connections: 0 };
    entry.connections += 1;
    if (member.node) entry.nodes.add(member.node);
    online.set(member.user, entry);
  }
  const people = new Set([...online.keys(), ...conversation.authors]);
  if (conversation.kind === "dm") people.add(dmPeer(conversation.channel, me));
  const sorted = [...people].sort((a, b) => {
    const rank = (user) => (user === me ? 0 : online.has(user) ? 1 : 2);
    return rank(a) - rank(b) || a.localeCompare(b);
  });
  return { online, sorted };
}

export class Conversation {
  /**
   * @param {string} channel  `room:<name>` or `dm:<a>:<b>`
   * @param {string} me  the signed-in user
   * @param {import("./message-list.js").MessageList} messages  the view of its messages
   */
  constructor(channel, me, messages) {
    this.channel = channel;
    this.kind = channel.startsWith("dm:") ? "dm" : "room";
    this.title = conversationTitle(channel, me);
    this.messages = messages; // the <ol role="log">, and the oldest/newest offsets it shows
    this.epoch = null;
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
    this.entry = null; // its <li> in the sidebar, once shown there
  }
}
