// The baseline of issue 9: the minimal socket.io app a team would write, clustered with the
// Redis adapter. A client joins the room named in its handshake query (?room=...); "pub" with
// data and an ack emits "msg" to everyone in that room, on every node, then acknowledges.
//
//   PORT=3001 REDIS_URL=redis://127.0.0.1:6379 node server.js
//
// WebSocket transport only (no long-polling), permessage-deflate off (as on the Tidings nodes).
//
// ANNOUNCE_JOINS=1: a joining client is announced to the room's other members on every node
// ("join" with the room and its id), as Tidings announces every member of a room; the
// connects benchmark runs socket.io both ways (issue 16).

"use strict";

const { createServer } = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const PORT = Number(process.env.PORT || 3000);
const HOST = process.env.HOST || "127.0.0.1";
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const ANNOUNCE_JOINS = process.env.ANNOUNCE_JOINS === "1";

async function main() {
  const pubClient = createClient({ url: REDIS_URL });
  const subClient = pubClient.duplicate();
  pubClient.on("error", (err) => console.error("redis pub:", err));
  subClient.on("error", (err) => console.error("redis sub:", err));
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const httpServer = createServer();
  const io = new Server(httpServer, {
    transports: ["websocket"],
    perMessageDeflate: false,
    adapter: createAdapter(pubClient, subClient),
  });

  io.on("connection", (socket) => {
    const room = socket.handshake.query.room;
    if (typeof room === "string" && room) {
      socket.join(room);
      if (ANNOUNCE_JOINS) {
        socket.to(room).emit("join", { room, member: socket.id });
      }
    }
    socket.on("pub", (data, ack) => {
      if (room) {
        io.to(room).emit("msg", data);
      }
      if (typeof ack === "function") {
        ack();
      }
    });
  });

  httpServer.listen(PORT, HOST, () => {
    console.log(`socket.io listening on ${HOST}:${PORT} (pid ${process.pid}), redis ${REDIS_URL}`);
  });

  const stop = () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
