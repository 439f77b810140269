"""The floor under a Tidings connect: what uvicorn alone costs to take one, with no Tidings in it.

    flock /tmp/bench.lock .venv/bin/python loadtest/baseline/uvicorn_floor.py

Starts two uvicorn processes on free ports of 127.0.0.1 with the HTTP and WebSocket stack a
Tidings node runs on (httptools, websockets-sansio, uvloop, logs at warning) and an ASGI app
that does nothing but the protocol's shape: accept the WebSocket (``tidings.json``), read the
first frame, answer it with a fixed connect reply, then keep the socket open. No JWT, no
session, no Redis, no presence, no join announcements. It then runs the ``connects`` scenario
(``loadtest/bench/connects.py``, the same code and figures as for Tidings and socket.io):
5,000 connects with 200 in flight.

What it is for: the node CPU per connect it reports is what any server built on Starlette and
uvicorn pays before doing any work of its own; compare it with socket.io's whole connect
(``socketio_bench.py --scenario connects``) measured alongside. Prints one JSON line and the
connects table; every process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from loadtest.bench import connects, driver  # noqa: E402
from loadtest.processes import NodeProcess, free_port, stop_all  # noqa: E402


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accept, answer the first frame with a connect reply, then wait for the close."""
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    offered = scope.get("subprotocols") or []
    await send(
        {"type": "websocket.accept", "subprotocol": "tidings.json" if "tidings.json" in offered else None}
    )
    reply = json.dumps({"id": 1, "result": {"client": "c", "node": os.environ["FLOOR_NODE"], "channels": {}}})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if reply:
            await send({"type": "websocket.send", "text": reply})
            reply = ""


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(
        "loadtest.baseline.uvicorn_floor:app",
        host="127.0.0.1",
        port=port,
        http="httptools",
        ws="websockets-sansio",
        loop="uvloop",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )


async def _measure(nodes: list[NodeProcess], options: argparse.Namespace) -> dict[str, Any]:
    members = options.connections // options.rooms
    rooms = [f"room:floor-{r}" for r in range(options.rooms)]
    urls = [f"ws://127.0.0.1:{node.port}/ws" for node in nodes]
    dialer = connects.TidingsDialer(urls, ["no-token"] * options.connections, rooms, members)
    dialer.server = "uvicorn floor"
    return await connects.run_connects(
        dialer,
        connections=options.connections,
        rooms=options.rooms,
        concurrency=options.concurrency,
        pids=[node.pid for node in nodes],
        redis_pids=[],
        redis_port=None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # one server process (internal)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--connections", type=int, default=connects.SCENARIO["connections"])
    parser.add_argument("--rooms", type=int, default=connects.SCENARIO["rooms"])
    parser.add_argument("--concurrency", type=int, default=connects.SCENARIO["connect_concurrency"])
    options = parser.parse_args(argv)
    if options.serve:
        serve(options.serve)
        return 0
    log_dir = tempfile.mkdtemp(prefix="uvicorn-floor-")
    nodes: list[NodeProcess] = []
    try:
        for i in range(options.nodes):
            port = free_port()
            env = dict(os.environ, FLOOR_NODE=f"node-{i + 1}", PYTHONPATH=str(ROOT))
            command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)]
            nodes.append(
                NodeProcess.spawn(f"node-{i + 1}", port, command, env=env, log=Path(log_dir) / f"{i}.log")
            )
        for node in nodes:
            node.wait_listening(30.0)
        result = driver.run_on_uvloop(lambda: _measure(nodes, options))
    finally:
        stop_all(nodes, 5.0)
        shutil.rmtree(log_dir, ignore_errors=True)
    driver.print_result(result, connects.table)
    return 0 if result.get("complete") else 1


if __name__ == "__main__":
    sys.exit(main())
