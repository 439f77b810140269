// tidings.d.ts: TypeScript declarations of the public API of tidings.js (the package tidings-client).
//
// Hand-written next to the plain ES modules, which need no build step; `tsc --noEmit -p web/`
// checks them against examples/typed.ts, and web/test/package.test.js checks that the names
// exported here are the names tidings.js exports.

/** The WebSocket subprotocol of the JSON wire protocol v1. */
export declare const SUBPROTOCOL: "tidings.json";

/** Connection states: "disconnected" → "connecting" → "connected" ⇄ "reconnecting"; "closed" is final. */
export declare const State: Readonly<{
  DISCONNECTED: "disconnected";
  CONNECTING: "connecting";
  CONNECTED: "connected";
  RECONNECTING: "reconnecting";
  CLOSED: "closed";
}>;
export type ConnectionState = (typeof State)[keyof typeof State];

/** An error reply from the server ({code, message, temporary}), or a local failure (code 0). */
export declare class TidingsError extends Error {
  constructor(code: number, message: string, temporary?: boolean);
  readonly name: "TidingsError";
  /** The server's error code (400, 401, 403, 404, 413, 429, 503, ...) or a close code; 0: local (not connected, timed out). */
  code: number;
  /** The same command may succeed later. */
  temporary: boolean;
}

/** Every JSON message of one text frame (the server may join several with "\n"). */
export declare function splitFrame(text: string): unknown[];

/** Whether a connection closed with `code` should reconnect: every code but 4500-4999. */
export declare function closeReconnects(code: number): boolean;

/** Full-jitter exponential backoff: a random delay in [0, min(maxDelay, minDelay * 2^attempt)) ms. */
export declare function backoffDelay(
  attempt: number,
  options?: { minDelay?: number; maxDelay?: number },
  random?: () => number,
): number;

/** A position in a channel's stream. */
export interface StreamPosition {
  epoch: string;
  offset: number;
}

export type PositionVerdict = "new" | "duplicate" | "gap" | "reset";

/** Where each channel's stream stands: classifies each {epoch, offset} seen. */
export declare class PositionTracker {
  constructor();
  get(channel: string): StreamPosition | null;
  set(channel: string, epoch: string, offset: number): void;
  delete(channel: string): void;
  accept(channel: string, epoch: string, offset: number): PositionVerdict;
}

/** JSON as the server carries it: publication data, notification data. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Who sent a publication (absent for publications made over the HTTP API). */
export interface Sender {
  user: string;
  client: string;
}

export interface Publication<T = Json> {
  channel: string;
  /** Absent on ephemeral publications (they have no place in the stream). */
  epoch?: string;
  offset?: number;
  data: T;
  from?: Sender;
  /** Milliseconds since the epoch, set by the node that published it. */
  ts: number;
  ephemeral: boolean;
  /** Delivered by recovery after a reconnect, not live. */
  recovered: boolean;
}

export interface Member {
  user: string;
  client: string;
  node: string;
  info?: { [key: string]: Json };
}

export type Severity = "info" | "success" | "warn" | "error" | "fatal";

export interface Notification {
  id: string;
  type: string;
  severity: Severity;
  title: string;
  body: string;
  data: Json;
  /** Milliseconds since the epoch. */
  ts: number;
  /** In a notifications() page; absent on a live push (a new notification is unread). */
  read?: boolean;
}

export interface HistoryPage<T = Json> {
  epoch: string;
  offset: number;
  publications: Array<{ epoch: string; offset: number; data: T; from?: Sender; ts: number }>;
  /** Present when the page left publications out: the fields to add to the next request. */
  cursor?: { since?: StreamPosition; before?: number };
}

export interface OlderPage<T = Json> {
  publications: HistoryPage<T>["publications"];
  /** Nothing older is left in the history window. */
  complete: boolean;
  /** The channel's epoch is no longer the one asked for: reload it. */
  reset: boolean;
}

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  url?: string;
  attempt?: number;
  delay?: number;
  code?: number;
  reason?: string;
}

export interface Connected {
  node: string;
  user: string;
  client: string;
  unread: number;
  /** Not the first connection of this client: channels were resumed. */
  reconnected: boolean;
  /** Publications recovered by this connect (emitted as "publication" with recovered: true). */
  missed: number;
  /** Channels whose gap could not be filled: reload them. */
  unrecovered: string[];
}

export interface Disconnected {
  code: number;
  reason: string;
  /** The client reconnects (closeReconnects(code), unless the server's disconnect push said not to). */
  reconnect: boolean;
}

/** Event names and what their handlers receive. */
export interface TidingsEvents {
  state: StateChange;
  connected: Connected;
  publication: Publication;
  join: { channel: string; member: Member };
  leave: { channel: string; member: Member };
  notification: Notification;
  unread: { unread: number };
  unrecovered: { channel: string; reason: "epoch" | "window" | "gap" };
  "subscribe-error": { channel: string; error: TidingsError };
  disconnected: Disconnected;
}

export interface TidingsClientOptions {
  /** WebSocket URL(s) of `/ws`; reconnects cycle through them. */
  urls: string | string[];
  /** A token, or a function called before every connection attempt (cache inside it). */
  token: string | (() => string | Promise<string>);
  /** ms; the first retry waits up to this much (full jitter). Default 500. */
  minDelay?: number;
  /** ms; the backoff cap. Default 20000. */
  maxDelay?: number;
  /** ms to open the socket and get the connect reply. Default 10000. */
  connectTimeout?: number;
  /** ms for any reply. Default 10000. */
  requestTimeout?: number;
  /** ms a ping may go unanswered before the connection is dropped. Default 10000. */
  pingTimeout?: number;
}

/** A connection to Tidings that survives node failures. Needs a global `WebSocket` (browsers, Node 22+). */
export declare class TidingsClient {
  constructor(options: TidingsClientOptions);

  readonly options: Required<Omit<TidingsClientOptions, "urls">> & { urls: string[] };
  readonly state: ConnectionState;
  /** The node of the current connection, the user and this connection's client id (null before the first connect). */
  readonly node: string | null;
  readonly user: string | null;
  readonly clientId: string | null;
  /** The unread notification count, kept current by pushes. */
  readonly unread: number;
  /** The URL of the current (or last) connection attempt. */
  readonly url: string | null;

  /** Add a handler; returns the function that removes it. */
  on<K extends keyof TidingsEvents>(name: K, handler: (detail: TidingsEvents[K]) => void): () => void;

  /** Start connecting (idempotent). */
  connect(): void;
  /** Close for good: pending requests fail, no reconnect. */
  close(): void;
  /** Resolves once connected; rejects after `timeout` ms or if the client closes. */
  waitConnected(timeout?: number): Promise<void>;

  /** Subscribe; resolves with the channel's position once confirmed. Kept across reconnects. */
  subscribe(channel: string): Promise<StreamPosition>;
  unsubscribe(channel: string): Promise<void>;
  channels(): string[];
  position(channel: string): StreamPosition | null;

  /** Resolves with {epoch, offset}; ephemeral publications resolve with {} and fail at once when not connected. */
  publish(channel: string, data: Json): Promise<StreamPosition>;
  publish(channel: string, data: Json, options: { ephemeral: true }): Promise<Record<string, never>>;
  publish(channel: string, data: Json, options: { ephemeral?: boolean }): Promise<StreamPosition | Record<string, never>>;

  history(
    channel: string,
    options?: { since?: StreamPosition; limit?: number; reverse?: boolean; before?: number },
  ): Promise<HistoryPage>;
  /** The newest `limit` publications, oldest first. */
  latest(channel: string, limit?: number): Promise<HistoryPage>;
  /** The page just before offset `before` of epoch `epoch`, oldest first. */
  older(channel: string, options: { epoch: string; before: number; limit?: number }): Promise<OlderPage>;

  presence(channel: string): Promise<Member[]>;
  notifications(options?: { unreadOnly?: boolean; limit?: number; before?: string }): Promise<{
    notifications: Notification[];
    unread: number;
    /** Present when more are left: pass it as `before` to read on. */
    cursor?: string;
  }>;
  read(options: { ids: string[] } | { all: true }): Promise<{ unread: number }>;
  ping(): Promise<Record<string, never>>;
}
