// presence.js: who is in a conversation and who is typing there.
//
// Guarantees: this tab sends at most one "typing" ephemeral per TYPING_SEND_INTERVAL; another
// user's indicator disappears TYPING_SHOW ms after their last one, or at once when their message
// arrives. The member list is fetched for the shown conversation only and kept fresh by
// join/leave pushes; a failure leaves it unknown with a note, never a wrong list.
// It uses host.client, host.conversations, host.active, host.view and host.watchDm.

const TYPING_SEND_INTERVAL = 2500; // ms between two "typing" ephemerals from this tab
const TYPING_SHOW = 4000; // ms a "typing" indicator stays without a new one

export class Presence {
  /** @param {import("./conversations.js").Conversations} host */
  constructor(host) {
    this.host = host;
    this.lastTypingSent = 0;
  }

  // --- typing -----------------------------------------------------------------------------------

  /** The composer changed: tell the others, at most every TYPING_SEND_INTERVAL. */
  typed() {
    const conversation = this.host.active;
    const now = Date.now();
    if (!conversation || now - this.lastTypingSent < TYPING_SEND_INTERVAL) return;
    this.lastTypingSent = now;
    // Ephemeral: no history, no offset; dropped silently when not connected.
    this.host.client.publish(conversation.channel, { type: "typing" }, { ephemeral: true }).catch(() => {});
  }

  /** A message was sent: the next keystroke may say "typing" again at once. */
  sent() {
    this.lastTypingSent = 0;
  }

  showTyping(conversation, user) {
    clearTimeout(conversation.typing.get(user));
    conversation.typing.set(
      user,
      setTimeout(() => this.stopTyping(conversation, user), TYPING_SHOW),
    );
    this.host.view.renderTyping(conversation);
  }

  stopTyping(conversation, user) {
    if (!conversation.typing.has(user)) return;
    clearTimeout(conversation.typing.get(user));
    conversation.typing.delete(user);
    this.host.view.renderTyping(conversation);
  }

  /** Cancel every indicator timer of `conversation` (it is left or the session ends). */
  stopAll(conversation) {
    for (const timer of conversation.typing.values()) clearTimeout(timer);
  }

  // --- members ----------------------------------------------------------------------------------

  /** Fetch the members of `conversation` (the shown one) and draw the people list. */
  async load(conversation) {
    const host = this.host;
    try {
      const members = await host.client.presence(conversation.channel);
      if (conversation !== host.active) return;
      conversation.members = new Map(members.map((m) => [m.client, m]));
      host.view.renderPeopleNote("");
      for (const member of members) host.watchDm(member.user);
    } catch (error) {
      if (conversation !== host.active) return;
      conversation.members = null;
      host.view.renderPeopleNote(
        error.code === 404 ? "Presence is not enabled on this server." : `Presence unavailable: ${error.message}`,
      );
    }
    host.view.renderPeople(conversation);
  }

  /** A join or leave push: update the known member list; anyone who joins may be DMed. */
  onMembership(channel, member, joined) {
    const conversation = this.host.conversations.get(channel);
    if (!conversation || !member) return;
    if (joined) this.host.watchDm(member.user);
    if (!conversation.members) return;
    if (joined) conversation.members.set(member.client, member);
    else conversation.members.delete(member.client);
    if (conversation === this.host.active) this.host.view.renderPeople(conversation);
  }
}
