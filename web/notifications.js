// The notification bell: unread count, the list (newest first, severity by colour and by word),
// mark one or all read. Works from the `notifications` and `read` ops and `notification` pushes;
// while the server answers 404 ("not enabled") it says so and still shows pushed notifications.

import { badgeText, clear, el, timeElement } from "./dom.js";

const SEVERITIES = new Set(["info", "success", "warn", "error", "fatal"]);
const PAGE_SIZE = 30;

export class NotificationBell {
  /** @param {import("./tidings.js").TidingsClient} client */
  constructor(client) {
    this.client = client;
    this.items = new Map(); // id → notification, newest first (insertion order is display order)
    this.loaded = false;
    this.loading = false;
    this.unread = 0;
    this.dom = {
      bell: document.getElementById("bell"),
      count: document.getElementById("bell-count"),
      panel: document.getElementById("notifications"),
      list: document.getElementById("notification-list"),
      note: document.getElementById("notifications-note"),
      more: document.getElementById("notifications-more"),
      readAll: document.getElementById("read-all"),
    };
    this._listeners = [
      [this.dom.bell, "click", () => (this.isOpen() ? this.close() : this.open())],
      [this.dom.readAll, "click", () => this.markRead({ all: true })],
      [this.dom.more, "click", () => this.load({ older: true })],
      [document, "keydown", (event) => event.key === "Escape" && this.isOpen() && this.close({ focusBell: true })],
      [document, "click", (event) => this.isOpen() && !event.target.closest?.(".bell-wrap") && this.close()],
    ];
    for (const [target, name, handler] of this._listeners) target.addEventListener(name, handler);
    this._off = [
      client.on("connected", ({ unread }) => {
        this.setUnread(unread);
        if (this.isOpen()) this.load();
        else this.loaded = false; // reload on next open: we may have missed read marks from other tabs
      }),
      client.on("notification", (notification) => this.onPush(notification)),
      client.on("unread", ({ unread }) => {
        // Fewer unread without a click here: read on another tab or node, so the list is stale.
        if (unread < this.unread) this.loaded = false;
        this.setUnread(unread);
        if (this.isOpen() && !this.loaded) this.load();
      }),
    ];
  }

  stop() {
    for (const [target, name, handler] of this._listeners) target.removeEventListener(name, handler);
    for (const off of this._off) off();
    this.close();
    clear(this.dom.list);
    this.setUnread(0);
  }

  isOpen() {
    return !this.dom.panel.hidden;
  }

  open() {
    this.dom.panel.hidden = false;
    this.dom.bell.setAttribute("aria-expanded", "true");
    if (!this.loaded) this.load();
    this.dom.panel.focus(); // screen readers start at the panel's heading; Tab reaches its buttons
  }

  close({ focusBell = false } = {}) {
    this.dom.panel.hidden = true;
    this.dom.bell.setAttribute("aria-expanded", "false");
    if (focusBell) this.dom.bell.focus();
  }

  setUnread(count) {
    this.unread = Math.max(0, Number(count) || 0);
    this.dom.count.textContent = badgeText(this.unread);
    this.dom.count.hidden = !this.unread;
    this.dom.bell.dataset.unread = String(this.unread);
    this.dom.bell.setAttribute("aria-label", `Notifications, ${this.unread} unread`);
  }

  async load({ older = false } = {}) {
    if (this.loading) return;
    this.loading = true;
    this.dom.note.textContent = "Loading…";
    const last = older ? [...this.items.keys()].at(-1) : undefined;
    try {
      const result = await this.client.notifications({ limit: PAGE_SIZE, before: last });
      if (!older) this.items.clear();
      for (const notification of result.notifications ?? []) this.items.set(notification.id, notification);
      this.setUnread(result.unread);
      this.loaded = true;
      this.dom.more.hidden = (result.notifications ?? []).length < PAGE_SIZE;
      this.dom.note.textContent = this.items.size ? "" : "No notifications yet.";
    } catch (error) {
      this.dom.more.hidden = true;
      this.dom.note.textContent =
        error.code === 404
          ? "Notifications are not enabled on this server."
          : `Could not load notifications: ${error.message}`;
    } finally {
      this.loading = false;
    }
    this.render();
  }

  onPush(notification) {
    if (!notification || typeof notification.id !== "string") return;
    // Newest first; the count comes with the push (the client's "unread" event).
    this.items = new Map([[notification.id, notification], ...[...this.items].filter(([id]) => id !== notification.id)]);
    if (this.dom.note.textContent === "No notifications yet.") this.dom.note.textContent = "";
    this.render();
  }

  async markRead({ ids, all = false }) {
    try {
      const result = await this.client.read(all ? { all: true } : { ids });
      for (const notification of this.items.values()) {
        if (all || ids.includes(notification.id)) notification.read = true;
      }
      this.setUnread(result.unread);
      this.render();
    } catch (error) {
      this.dom.note.textContent =
        error.code === 404 ? "Notifications are not enabled on this server." : `Could not mark read: ${error.message}`;
    }
  }

  render() {
    clear(this.dom.list);
    for (const notification of this.items.values()) this.dom.list.append(this.renderItem(notification));
    this.dom.readAll.disabled = this.unread === 0;
  }

  renderItem(notification) {
    const severity = SEVERITIES.has(notification.severity) ? notification.severity : "info";
    const item = el(
      "li",
      {
        className: `notification sev-${severity}${notification.read ? "" : " unread"}`,
        dataset: { id: notification.id, severity },
      },
      el("span", { className: "severity", text: severity }),
      el("div", { className: "notification-body" },
        el("strong", { className: "notification-title", text: notification.title || notification.type || "Notification" }),
        notification.body ? el("p", { text: notification.body }) : null,
        el("div", { className: "meta" }, notification.type ? el("span", { text: notification.type }) : null, " ",
          timeElement(notification.ts)),
      ),
    );
    if (!notification.read) {
      item.append(
        el("button", {
          className: "link-button",
          text: "Mark read",
          attrs: { type: "button", "aria-label": `Mark “${notification.title || "notification"}” read` },
          on: { click: () => this.markRead({ ids: [notification.id] }) },
        }),
      );
    }
    return item;
  }
}
