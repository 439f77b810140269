// history.js: loading a conversation's messages from the channel history, page by page.
//
// Guarantees: the latest page is loaded at most once per reset (`loaded`), older pages one at a
// time (`loadingOlder`), and the reader's scroll position is kept when older messages are added
// above. A page that arrives after its conversation was left is dropped. When the history can
// no longer be continued (the epoch changed) the conversation is reset and loaded afresh.
// It uses host.client, host.conversations, host.active, host.view, host.insert and host.markRead.

import { latestPageComplete } from "./conversation.js";

export const PAGE_SIZE = 50; // messages per history page

export class HistoryLoader {
  /** @param {import("./conversations.js").Conversations} host */
  constructor(host) {
    this.host = host;
  }

  /** Load the newest page of `conversation`; on failure say so and allow another try. */
  async loadLatest(conversation) {
    const host = this.host;
    conversation.loaded = true;
    try {
      const page = await host.client.latest(conversation.channel, PAGE_SIZE);
      if (host.conversations.get(conversation.channel) !== conversation) return;
      if (page.epoch) conversation.epoch = page.epoch; // "" : nothing was ever published here
      const stick = host.view.nearBottom();
      for (const publication of page.publications) host.insert(conversation, publication);
      conversation.complete = latestPageComplete(page, PAGE_SIZE);
      if (conversation === host.active && (stick || conversation.scrollTop === null)) host.view.scrollToBottom();
      host.markRead(conversation);
    } catch (error) {
      conversation.loaded = false;
      conversation.note = `Could not load messages: ${error.message}`;
      host.view.renderNote(conversation);
    }
    host.view.renderLoadOlder(conversation);
  }

  /** Load the page before the oldest message shown (the reader scrolled up or asked). */
  async loadOlder(conversation) {
    const host = this.host;
    if (!conversation.loaded || conversation.complete || conversation.loadingOlder) return;
    if (conversation.messages.oldest === null) return;
    conversation.loadingOlder = true;
    host.view.renderLoadOlder(conversation);
    try {
      const page = await host.client.older(conversation.channel, {
        epoch: conversation.epoch,
        before: conversation.messages.oldest,
        limit: PAGE_SIZE,
      });
      if (page.reset) {
        this.reset(conversation);
        return;
      }
      const box = host.view.dom.messages;
      const fromBottom = box.scrollHeight - box.scrollTop; // keep what the reader sees in place
      for (const publication of page.publications) host.insert(conversation, publication);
      if (conversation === host.active) box.scrollTop = box.scrollHeight - fromBottom;
      conversation.complete = page.complete;
    } catch (error) {
      conversation.note = `Could not load older messages: ${error.message}`;
      host.view.renderNote(conversation);
    } finally {
      conversation.loadingOlder = false;
      host.view.renderLoadOlder(conversation);
    }
  }

  /** Forget what is shown and load the latest page again (the history could not be continued). */
  reset(conversation) {
    conversation.messages.clear();
    conversation.loaded = false;
    conversation.complete = false;
    conversation.scrollTop = null;
    if (conversation === this.host.active) this.loadLatest(conversation);
    this.host.view.renderLoadOlder(conversation);
  }
}
