// live-node.js: a real `tidings serve` node for the client's tests, and the helpers they share.
//
// The node is the project's own (.venv/bin/tidings, or $TIDINGS_BIN), on a free loopback port, in
// dev mode with a known JWT secret and API key: tokens come from POST /api/dev/token, the HTTP API
// needs the key. It uses the in-memory backplane (one node holds every stream). Node 20 has no
// global WebSocket: the `ws` package (a dev dependency) stands in for the browser's here only.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

globalThis.WebSocket ??= WebSocket;

export const API_KEY = "node-test-api-key";
const SECRET = "node-test-secret-which-is-long-enough-for-hs256";
const TIDINGS = process.env.TIDINGS_BIN ?? fileURLToPath(new URL("../../../.venv/bin/tidings", import.meta.url));

/** A free TCP port on 127.0.0.1 (the kernel's pick; released before the node binds it). */
async function freePort() {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** Resolve once `check()` is true; poll every 25 ms; reject after `timeout` ms with `what`. */
export async function until(check, what, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

export class LiveNode {
  /** Start a node; `port` reuses one (a restart), else a free one is picked. */
  static async start(port) {
    const node = new LiveNode(port ?? (await freePort()));
    await node._spawn();
    return node;
  }

  constructor(port) {
    this.port = port;
    this.httpUrl = `http://127.0.0.1:${port}`;
    this.wsUrl = `ws://127.0.0.1:${port}/ws`;
    this.process = null;
    this.stderr = "";
  }

  async _spawn() {
    const env = {
      ...process.env,
      TIDINGS_DEV: "1",
      TIDINGS_JWT_SECRET: SECRET,
      TIDINGS_API_KEYS: API_KEY,
      TIDINGS_DRAIN_TIMEOUT: "2",
    };
    delete env.TIDINGS_REDIS_URL; // the in-memory backplane, whatever the caller's environment says
    const child = spawn(TIDINGS, ["serve", "--host", "127.0.0.1", "--port", String(this.port), "--log-level", "warning"], {
      env,
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.process = child;
    this.exited = once(child, "exit");
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (text) => {
      this.stderr = (this.stderr + text).slice(-4000);
    });
    await until(
      async () => {
        if (child.exitCode !== null) throw new Error(`tidings serve exited (${child.exitCode}): ${this.stderr}`);
        try {
          return (await fetch(`${this.httpUrl}/healthz`)).ok;
        } catch {
          return false; // not listening yet
        }
      },
      "the node to answer /healthz",
    );
  }

  /** Stop this node (the process this helper started, by its handle): SIGTERM drains, SIGKILL crashes. */
  async stop(signal = "SIGTERM") {
    const child = this.process;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    await this.exited;
  }

  /** Start the node again on the same port: a fresh process, so fresh in-memory streams (new epochs). */
  async restart() {
    await this.stop("SIGKILL");
    await this._spawn();
  }

  async api(method, path, body) {
    const response = await fetch(`${this.httpUrl}${path}`, {
      method,
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const reply = await response.json();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(reply)}`);
    return reply;
  }

  async token(user) {
    const response = await fetch(`${this.httpUrl}/api/dev/token`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user }),
    });
    if (!response.ok) throw new Error(`dev token: ${response.status}`);
    return (await response.json()).token;
  }

  publish(channel, data) {
    return this.api("POST", "/api/publish", { channel, data });
  }

  disconnect(user, code, reason) {
    return this.api("POST", `/api/users/${encodeURIComponent(user)}/disconnect`, { code, reason });
  }
}

/** The next `name` event of `client` whose detail passes `test`; rejects after `timeout` ms. */
export function nextEvent(client, name, test = () => true, timeout = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      remove();
      reject(new Error(`no "${name}" event within ${timeout} ms`));
    }, timeout);
    const remove = client.on(name, (detail) => {
      if (!test(detail)) return;
      clearTimeout(timer);
      remove();
      resolve(detail);
    });
  });
}

/** Every `name` event of `client` from now on, in order. */
export function record(client, name) {
  const events = [];
  client.on(name, (detail) => events.push(detail));
  return events;
}
