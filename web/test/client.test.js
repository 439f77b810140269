// client.test.js: TidingsClient (the real tidings.js modules) against a live `tidings serve` node.
//
// Run with `node --test web/test/` (make web-test). Covers connect, commands, reconnect after a
// server close and after the node crashed, recovery of what was published while disconnected (in
// order, once), and the client's reconnect decision for every close code the server can send.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { LiveNode, nextEvent, record, until } from "./support/live-node.js";
import { State, TidingsClient, closeReconnects } from "../tidings.js";

const FAST = { minDelay: 20, maxDelay: 200, connectTimeout: 5_000, requestTimeout: 5_000 };

let node;
const clients = [];

before(async () => {
  node = await LiveNode.start();
});

after(async () => {
  for (const client of clients) client.close();
  await node?.stop();
});

/** A client of `user` on the shared node (closed in the after hook). */
function newClient(user, options = {}) {
  const client = new TidingsClient({ urls: node.wsUrl, token: () => node.token(user), ...FAST, ...options });
  clients.push(client);
  return client;
}

async function connected(client) {
  const first = nextEvent(client, "connected");
  client.connect();
  return first;
}

describe("connect", () => {
  test("connects, subscribes, publishes and receives its own publication", async () => {
    const client = newClient("js_alice");
    const states = record(client, "state");
    const hello = await connected(client);
    assert.equal(hello.user, "js_alice");
    assert.equal(hello.reconnected, false);
    assert.equal(client.state, State.CONNECTED);
    assert.deepEqual(
      states.map((s) => s.state),
      [State.CONNECTING, State.CONNECTED],
    );
    assert.ok(client.channels().includes("user:js_alice"), "the personal channel is tracked");

    const position = await client.subscribe("room:js-connect");
    assert.equal(position.offset, 0);
    const arrived = nextEvent(client, "publication", (p) => p.channel === "room:js-connect");
    const sent = await client.publish("room:js-connect", { text: "hello" });
    const publication = await arrived;
    assert.deepEqual(publication.data, { text: "hello" });
    assert.equal(publication.offset, sent.offset);
    assert.equal(publication.from.user, "js_alice");
    assert.equal(publication.recovered, false);

    const page = await client.latest("room:js-connect", 10);
    assert.deepEqual(
      page.publications.map((p) => p.data),
      [{ text: "hello" }],
    );
    const members = await client.presence("room:js-connect");
    assert.deepEqual(
      members.map((m) => m.user),
      ["js_alice"],
    );
  });

  test("a token the node refuses ends the client for good (4501), without retrying", async () => {
    const client = newClient("js_nobody", { token: "not-a-token" });
    const states = record(client, "state");
    const gone = nextEvent(client, "disconnected");
    client.connect();
    const detail = await gone;
    assert.equal(detail.code, 4501);
    assert.equal(detail.reconnect, false);
    assert.equal(client.state, State.CLOSED);
    assert.ok(!states.some((s) => s.state === State.RECONNECTING));
    await assert.rejects(client.waitConnected(100), { name: "TidingsError" });
  });
});

describe("reconnect", () => {
  test("after the server closes the connection (4000) it reconnects and keeps its channels", async () => {
    const client = newClient("js_bob");
    await connected(client);
    await client.subscribe("room:js-reconnect");
    const gone = nextEvent(client, "disconnected");
    const back = nextEvent(client, "connected");
    await node.disconnect("js_bob", 4000, "test: reconnect");
    assert.deepEqual(await gone, { code: 4000, reason: "test: reconnect", reconnect: true });
    const again = await back;
    assert.equal(again.reconnected, true);
    assert.deepEqual(again.unrecovered, []);

    const arrived = nextEvent(client, "publication", (p) => p.channel === "room:js-reconnect");
    await node.publish("room:js-reconnect", { text: "after the reconnect" });
    assert.deepEqual((await arrived).data, { text: "after the reconnect" });
  });

  test("after the node crashed it reconnects to the restarted node and reports the lost stream", async () => {
    const crashing = await LiveNode.start();
    try {
      const client = new TidingsClient({ urls: crashing.wsUrl, token: () => crashing.token("js_carol"), ...FAST });
      clients.push(client);
      await connected(client);
      await client.subscribe("room:js-crash");
      await crashing.publish("room:js-crash", { text: "before the crash" });
      await until(() => client.position("room:js-crash")?.offset === 1, "the live publication");

      const gone = nextEvent(client, "disconnected");
      const unrecovered = nextEvent(client, "unrecovered", (u) => u.channel === "room:js-crash");
      const back = nextEvent(client, "connected");
      await crashing.restart(); // SIGKILL: no close frame, the socket just ends
      const drop = await gone;
      assert.equal(drop.reconnect, true);
      assert.ok(drop.code < 4000, `a network-level close, not a server close code: ${drop.code}`);
      // The in-memory streams died with the process: a new epoch, nothing to recover.
      assert.equal((await unrecovered).reason, "epoch");
      const again = await back;
      assert.equal(again.reconnected, true);
      assert.deepEqual(again.unrecovered.sort(), ["room:js-crash", "user:js_carol"]);
      assert.equal(client.position("room:js-crash").offset, 0);
    } finally {
      await crashing.stop();
    }
  });
});

describe("recovery", () => {
  test("publications made while disconnected arrive on reconnect, in order, once", async () => {
    // The token function holds the reconnect until the test has published: no timing involved.
    let tokenAsked;
    let release = null;
    let tokenRequested = new Promise((resolve) => (tokenAsked = resolve));
    const token = async () => {
      if (release !== null) {
        tokenAsked();
        await release;
      }
      return node.token("js_dave");
    };
    const client = newClient("js_dave", { token });
    await connected(client);
    await client.subscribe("room:js-recovery");
    const publications = record(client, "publication");
    const first = await client.publish("room:js-recovery", { n: 1 });
    await until(() => publications.length === 1, "the live publication");

    let open;
    release = new Promise((resolve) => (open = resolve));
    const back = nextEvent(client, "connected");
    await node.disconnect("js_dave", 4000, "test: recovery");
    await tokenRequested; // disconnected, and the next connect waits for us
    assert.equal(client.state, State.RECONNECTING);
    for (const n of [2, 3, 4]) await node.publish("room:js-recovery", { n });
    release = null;
    tokenRequested = null;
    open();

    const again = await back;
    assert.equal(again.missed, 3);
    assert.deepEqual(again.unrecovered, []);
    await node.publish("room:js-recovery", { n: 5 });
    await until(() => publications.length >= 5, "the live publication after the recovery");

    const mine = publications.filter((p) => p.channel === "room:js-recovery");
    assert.deepEqual(
      mine.map((p) => [p.data.n, p.offset, p.recovered]),
      [
        [1, first.offset, false],
        [2, first.offset + 1, true],
        [3, first.offset + 2, true],
        [4, first.offset + 3, true],
        [5, first.offset + 4, false],
      ],
    );
    assert.ok(mine.every((p) => p.epoch === first.epoch));
    assert.deepEqual(client.position("room:js-recovery"), { epoch: first.epoch, offset: first.offset + 4 });
  });
});

describe("close codes", () => {
  // The codes the server sends (protocol.py CLOSE_*), the edges of both ranges, and one in between.
  const codes = [4000, 4001, 4008, 4029, 4499, 4500, 4501, 4503, 4777, 4999];

  for (const code of codes) {
    const reconnects = closeReconnects(code);
    test(`${code}: the client ${reconnects ? "reconnects" : "stops for good"}`, async () => {
      const user = `js_close_${code}`;
      const client = newClient(user);
      await connected(client);
      const states = record(client, "state");
      const gone = nextEvent(client, "disconnected");
      const back = reconnects ? nextEvent(client, "connected") : null;
      await node.disconnect(user, code, `test: ${code}`);
      const detail = await gone;
      assert.deepEqual(detail, { code, reason: `test: ${code}`, reconnect: reconnects });
      if (reconnects) {
        assert.equal((await back).reconnected, true);
        assert.deepEqual(
          states.map((s) => s.state),
          [State.RECONNECTING, State.CONNECTED],
        );
        assert.equal(states[0].code, code);
      } else {
        assert.equal(client.state, State.CLOSED);
        assert.deepEqual(
          states.map((s) => [s.state, s.code]),
          [[State.CLOSED, code]],
        );
        await assert.rejects(client.ping(), { name: "TidingsError" });
      }
    });
  }

  test("closeReconnects: every code outside 4500-4999 reconnects", () => {
    for (const code of [1000, 1001, 1006, 1011, 1012, 4000, 4499]) assert.equal(closeReconnects(code), true, `${code}`);
    for (const code of [4500, 4501, 4503, 4999]) assert.equal(closeReconnects(code), false, `${code}`);
  });
});
