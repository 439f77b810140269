// tidings.js: the browser client for the Tidings wire protocol v1 (DESIGN.md "Wire protocol v1").
//
// An ES module with no dependencies and no build step; this file is only the public entry:
//
//   import { TidingsClient } from "/tidings.js";
//   const client = new TidingsClient({ urls: ["wss://chat.example/ws"], token: () => fetchToken() });
//   client.on("publication", (pub) => show(pub));
//   client.connect();
//   await client.subscribe("room:general");
//   await client.publish("room:general", { text: "hi" });
//
// Guarantees (given the server's, DESIGN.md "Guarantees"):
//   * Every publication of a subscribed channel is emitted once, in offset order, across
//     reconnects: the client remembers the last {epoch, offset} per channel, resumes every
//     channel with `since` on reconnect, and drops anything at or below that position.
//   * When the server cannot fill the gap (epoch changed, history window exceeded) or a gap is
//     seen live, the client emits "unrecovered" for that channel: the application reloads it.
//   * Reconnects use exponential backoff with full jitter, cycling through `urls`; every close
//     code (and plain network drops) reconnects except 4500-4999, which stop for good.
//   * Several JSON messages in one frame (separated by "\n") are all handled, in order.
//
// Events (client.on(name, handler) returns a function that removes the handler):
//   state         {state, previous, attempt?, delay?, code?, reason?}   every state change
//   connected     {node, user, client, unread, reconnected, missed, unrecovered: [channels]}
//   publication   {channel, epoch?, offset?, data, from?, ts, ephemeral, recovered}
//   join, leave   {channel, member}
//   notification  the notification object (a `notification` push)
//   unread        {unread}   the unread notification count changed (push, read, list)
//   unrecovered   {channel, reason: "epoch" | "window" | "gap"}             reload that channel
//   subscribe-error {channel, error}                                      a resubscribe was refused
//   disconnected  {code, reason, reconnect}
//
// States: "disconnected" (not started) → "connecting" → "connected" ⇄ "reconnecting";
// "closed" is final (close() or a terminal close code).
//
// Where the parts live (each file's header states what it guarantees):
//   client.js        TidingsClient: the commands (subscribe, publish, history, ...)
//   connection.js    the connection state machine: connect handshake, reconnect, ping, frames
//   subscriptions.js channels and the recovery rule (pure)
//   positions.js     PositionTracker: duplicate/gap/reset per channel (pure)
//   requests.js      replies awaited by id, callers awaiting the connection, with deadlines
//   reconnect.js     closeReconnects, backoffDelay and the retry schedule
//   wire.js          SUBPROTOCOL, TidingsError, splitFrame (pure)
//   emitter.js       named events whose handlers cannot break each other

export { TidingsClient } from "./client.js";
export { State } from "./connection.js";
export { PositionTracker } from "./positions.js";
export { backoffDelay, closeReconnects } from "./reconnect.js";
export { SUBPROTOCOL, TidingsError, splitFrame } from "./wire.js";
