// examples/typed.ts: a typed use of tidings-client, checked by `tsc --noEmit -p web/` (make web-test).
//
// It is never run; it exists so that the declarations in tidings.d.ts are exercised the way an
// application uses them, and so that a change to them that breaks such code fails the build.

import {
  State,
  TidingsClient,
  TidingsError,
  closeReconnects,
  type Connected,
  type Publication,
  type StreamPosition,
} from "tidings-client";

interface ChatMessage {
  text: string;
}

function isChatMessage(data: unknown): data is ChatMessage {
  return typeof data === "object" && data !== null && typeof (data as { text?: unknown }).text === "string";
}

async function fetchToken(): Promise<string> {
  const response = await fetch("/api/dev/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user: "alice" }),
  });
  const body = (await response.json()) as { token: string };
  return body.token;
}

export async function main(show: (line: string) => void): Promise<TidingsClient> {
  const client = new TidingsClient({ urls: ["ws://127.0.0.1:8000/ws"], token: fetchToken, maxDelay: 10_000 });

  const stop: Array<() => void> = [
    client.on("connected", (detail: Connected) => {
      show(`connected to ${detail.node} as ${detail.user}; ${detail.missed} recovered`);
      for (const channel of detail.unrecovered) show(`reload ${channel}`);
    }),
    client.on("publication", (publication: Publication) => {
      if (isChatMessage(publication.data)) {
        const who = publication.from?.user ?? "backend";
        show(`${publication.channel} #${publication.offset ?? "-"} ${who}: ${publication.data.text}`);
      }
    }),
    client.on("unrecovered", ({ channel, reason }) => show(`reload ${channel} (${reason})`)),
    client.on("disconnected", ({ code, reason, reconnect }) => {
      // The client's own decision is the documented rule, unless the server advised otherwise.
      const expected: boolean = closeReconnects(code);
      show(`closed ${code} ${reason}: ${reconnect ? "reconnecting" : "stopped"} (rule: ${expected})`);
    }),
    client.on("notification", (notification) => show(`[${notification.severity}] ${notification.title}`)),
    client.on("unread", ({ unread }) => show(`${unread} unread`)),
    client.on("state", ({ state, previous }) => {
      if (state === State.CLOSED) show(`closed (was ${previous})`);
    }),
  ];

  client.connect();
  await client.waitConnected(5_000);
  const position: StreamPosition = await client.subscribe("room:general");
  show(`room:general at ${position.epoch}/${position.offset}`);

  try {
    const sent = await client.publish("room:general", { text: "hi" });
    show(`sent as #${sent.offset}`);
    await client.publish("room:general", { typing: true }, { ephemeral: true });
  } catch (error) {
    if (error instanceof TidingsError && error.temporary) show(`try again later: ${error.message}`);
    else throw error;
  }

  const latest = await client.latest("room:general", 20);
  const oldest = latest.publications[0];
  if (oldest !== undefined) {
    const page = await client.older("room:general", { epoch: latest.epoch, before: oldest.offset });
    if (page.reset) show("the channel was reset: reload it");
  }
  const members = await client.presence("room:general");
  show(`${members.length} here: ${members.map((member) => member.user).join(", ")}`);
  const inbox = await client.notifications({ unreadOnly: true, limit: 10 });
  if (inbox.notifications.length > 0) await client.read({ ids: inbox.notifications.map((n) => n.id) });
  await client.read({ all: true });

  for (const remove of stop) remove();
  return client;
}
