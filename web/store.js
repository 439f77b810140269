// What the UI remembers per user in localStorage: joined conversations and how far each was read.
// Only this browser's preferences live here; messages always come from the server.

// The server's one user-id rule (server/protocol.py check_user).
export const USER_RE = /^[A-Za-z0-9_.@-]{1,100}$/;
export const ROOM_RE = /^[A-Za-z0-9_.@-]{1,200}$/;

/** The direct-message channel of two users: ids sorted, as the server requires. */
export function dmChannel(a, b) {
  const [first, second] = a < b ? [a, b] : [b, a];
  return `dm:${first}:${second}`;
}

/** The other user of a DM channel, from `me`'s point of view. */
export function dmPeer(channel, me) {
  const [, a, b] = channel.split(":");
  return a === me ? b : a;
}

function read(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key) ?? "null");
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // storage full or disabled (private mode): the UI works, it just forgets on reload
  }
}

export class Prefs {
  constructor(user) {
    this.prefix = `tidings:${user}:`;
  }

  channels() {
    const value = read(this.prefix + "channels", []);
    return Array.isArray(value) ? value.filter((c) => typeof c === "string") : [];
  }

  setChannels(channels) {
    write(this.prefix + "channels", [...new Set(channels)]);
  }

  active() {
    return read(this.prefix + "active", null);
  }

  setActive(channel) {
    write(this.prefix + "active", channel);
  }

  /** The last read position {epoch, offset} of `channel`, or null. */
  readPosition(channel) {
    const all = read(this.prefix + "read", {});
    return all[channel] ?? null;
  }

  setReadPosition(channel, position) {
    const all = read(this.prefix + "read", {});
    all[channel] = { epoch: position.epoch, offset: position.offset };
    write(this.prefix + "read", all);
  }
}
