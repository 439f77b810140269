// The kernel floor for Node: what one raw 122-byte write to a loopback TCP socket costs a Node
// process on this machine, the twin of floor.py's server side (uvloop).
//
//   node floor.js [N=1000] [RATE=50] &        # listens on 127.0.0.1:45999
//   python floor.py client 1000 50            # the client side: N sockets that read and discard
//
// Once N sockets are accepted (TCP_NODELAY), it writes one 122-byte buffer (a WebSocket text
// frame header + 120 bytes) to every socket RATE times a second for 10 s, then prints the
// process's CPU (process.cpuUsage(): user + system) per write over that window.

"use strict";

const net = require("node:net");
const { performance } = require("node:perf_hooks");

const N = Number(process.argv[2] || 1000);
const RATE = Number(process.argv[3] || 50);
const DURATION_MS = 10_000;
const PORT = Number(process.env.FLOOR_PORT || 45999);

const payload = Buffer.concat([Buffer.from([0x81, 120]), Buffer.alloc(120, "x")]);
const conns = [];

const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  socket.on("error", () => {});
  socket.on("data", () => {});
  conns.push(socket);
  if (conns.length === N) {
    start();
  }
});
server.listen(PORT, "127.0.0.1");

function start() {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let next = t0;
  let sent = 0;
  const tick = () => {
    if (performance.now() - t0 >= DURATION_MS) {
      finish(c0, t0, sent);
      return;
    }
    for (const socket of conns) {
      socket.write(payload);
    }
    sent += conns.length;
    next += 1000 / RATE;
    setTimeout(tick, Math.max(0, next - performance.now()));
  };
  tick();
}

function finish(c0, t0, sent) {
  const used = process.cpuUsage(c0);
  const seconds = (used.user + used.system) / 1e6;
  const elapsed = (performance.now() - t0) / 1000;
  console.log(`user/sys ${(used.user / 1e6).toFixed(2)} ${(used.system / 1e6).toFixed(2)}`);
  console.log(
    `server(node ${process.version}): ${sent} writes, ${((seconds / sent) * 1e6).toFixed(2)} us/write, ` +
      `cpu ${seconds.toFixed(2)}s over ${elapsed.toFixed(1)}s`,
  );
  setTimeout(() => {
    for (const socket of conns) socket.destroy();
    server.close();
  }, 1000);
}
