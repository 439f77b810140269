"""The reconnect storm of issue 16: a node dies under 6,000 clients; how fast do its ~2,000 come back?

    python -m loadtest.storm                      # make bench runs it too
    python -m loadtest.storm --clients 600 --rooms 30 --warmup 3

Starts, on 127.0.0.1 only, an embedded Valkey and 3 ``tidings serve`` nodes
(loadtest/processes.py: each a child of this process, stopped by pid however the run ends),
then opens 6,000 clients (``loadtest/bench/storm_clients.py``: lean FastWebSockets) in 300
rooms of 20, client ``i`` on node ``i % 3`` in room ``i // 20`` (a room's members spread over
the 3 nodes), 200 handshakes in flight. One more connection, on node 1, publishes to the rooms
round-robin at 50 msg/s in all. After 5 s of that, node 3 is SIGKILLed. Its clients see their sockets drop and reconnect as the SDK does (full-jitter
backoff from 0.1 s up to 5 s, a refused handshake retried after the backoff) to the two
survivors, with ``since`` for each channel, and must recover.

Reported: the time from the kill until each of them had its connect reply with its
recovered publications (p50 / p99 / max, and when the last one finished), the survivors' CPU
over that window (seconds, and % of one core per node), Redis's and the bench's CPU (when the
bench's CPU nears the window, the bench set the pace: the table says so), failed reconnect
attempts by reason (``HTTP 503``...), close codes (4008, 4029...), channels answered
``recovered: false``, and loss: after publishing stops and the last deliveries arrive, every
client must hold every acknowledged publication of its room exactly once, in order, across
its reconnect. Errors in the nodes' logs are reported too.

One JSON line on stdout, a table on stderr; exit status 1 on any loss, duplicate, reordering,
``recovered: false``, or a client that did not come back. The whole run is bounded
(``--max-run``, 90 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python loadtest/storm.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.bench.dial import dial
from loadtest.bench.driver import run_on_uvloop, settle
from loadtest.bench.machine import process_ticks, top_users
from loadtest.bench.storm_clients import Client, Pool, Publisher
from loadtest.benchkit import CpuSnapshot, latency_ms, raise_open_file_limit
from loadtest.processes import NodeProcess, free_port, stop_all
from tidings.server.devcluster.valkey import ValkeyServer
from tidings.server.gateway.auth import issue_token

__all__ = ["StormOptions", "main", "parse_args", "summarize_log", "table"]

# The publisher sends more commands than a browser may (50/s): lift its limit, as make bench does.
NODE_ENV = {"TIDINGS_COMMAND_RATE": "1000000", "TIDINGS_COMMAND_BURST": "1000000"}


@dataclass
class StormOptions:
    clients: int = 6000
    rooms: int = 300
    nodes: int = 3
    rate: float = 50.0  # publications a second, in all
    warmup: float = 5.0  # seconds of publishing before the kill
    after: float = 3.0  # seconds of publishing after the last client came back
    storm_timeout: float = 30.0  # seconds at most waiting for the clients of the killed node
    drain: float = 10.0  # seconds at most for the last deliveries once publishing stops
    connect_concurrency: int = 200
    min_backoff: float = 0.1
    max_backoff: float = 5.0
    target_s: float = 10.0  # every client back within this (issue 16's target on a 2-core machine)
    max_run: float = 90.0
    keep_logs: str | None = None


@dataclass
class _Run:
    """The cluster the run uses."""

    nodes: list[NodeProcess]
    node_ids: list[str]
    valkey_pid: int
    secret: str
    key_prefix: str
    log_dir: Path
    log_marks: dict[str, int] | None = None  # log sizes when the clients were closed


# --- the cluster -------------------------------------------------------------------------------------


def _healthz(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1.0) as response:
            node = json.loads(response.read()).get("node")
    except (OSError, ValueError):
        return None
    return node if isinstance(node, str) else None


def start_nodes(count: int, redis_url: str, log_dir: Path) -> _Run:
    """``count`` nodes on free ports; returns once each answers /healthz with its id (30 s at most)."""
    secret, prefix = secrets.token_urlsafe(32), f"storm-{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(NODE_ENV, TIDINGS_REDIS_URL=redis_url, TIDINGS_KEY_PREFIX=prefix, TIDINGS_JWT_SECRET=secret)
    nodes, ids = [], [f"node-{i + 1}" for i in range(count)]
    for node_id in ids:
        port = free_port()
        command = [sys.executable, "-m", "tidings.server", "serve", "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning"]  # fmt: skip
        nodes.append(
            NodeProcess.spawn(
                node_id,
                port,
                command,
                env={**env, "TIDINGS_NODE_ID": node_id},
                log=log_dir / f"{node_id}.log",
                process_group=True,
            )
        )
    run = _Run(nodes, ids, 0, secret, prefix, log_dir)
    deadline = time.monotonic() + 30.0
    for node in nodes:
        while _healthz(node.port) != node.node_id:
            if not node.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{node.node_id} did not start: {node.log_tail()}")
            time.sleep(0.05)
    return run


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")
_IDS = re.compile(r"\b(?=[0-9a-f-]*\d)[0-9a-f-]{3,}\b|\d+")


def summarize_log(text: str) -> dict[str, int]:
    """Log records counted by shape (level, logger, message with ids and numbers as ``N``); an ERROR's
    traceback adds its last line (the exception) to the shape."""
    counts: dict[str, int] = {}
    shape = None
    for line in [*text.splitlines(), "9999-01-01 00:00:00,000 INFO end"]:
        match = _RECORD.match(line)
        if match is None:
            if shape is not None and line and not line.startswith((" ", "Traceback", "The above", "During")):
                shape = f"{shape.split(' | ')[0]} | {_IDS.sub('N', line)[:160]}"  # the traceback's last line
            continue
        if shape is not None:
            counts[shape] = counts.get(shape, 0) + 1
        level, message = match.groups()
        shape = f"{level} {_IDS.sub('N', message)[:160]}"
    return counts


def _log_sizes(nodes: list[NodeProcess]) -> dict[str, int]:
    sizes = {}
    for node in nodes:
        try:
            sizes[node.node_id] = node.log.stat().st_size
        except OSError:
            continue
    return sizes


def node_logs(nodes: list[NodeProcess], marks: dict[str, int] | None, limit: int = 12) -> dict[str, Any]:
    """What the nodes logged (warning level and up: they run with --log-level warning), by shape: up to
    ``marks`` (the log sizes when the bench closed its clients), and from there to the end."""
    during: dict[str, int] = {}
    closing: dict[str, int] = {}
    for node in nodes:
        try:
            data = node.log.read_bytes()
        except OSError:
            continue
        cut = (marks or {}).get(node.node_id, len(data))
        for part, summary in ((data[:cut], during), (data[cut:], closing)):
            for shape, count in summarize_log(part.decode(errors="replace")).items():
                summary[f"{node.node_id} {shape}"] = count
    errors = [count for shape, count in during.items() if " ERROR " in shape or " CRITICAL " in shape]
    return {
        "log_records": sum(during.values()),
        "log_errors": sum(errors),
        "log_summary": dict(sorted(during.items(), key=lambda item: -item[1])[:limit]),
        "log_summary_closing": dict(sorted(closing.items(), key=lambda item: -item[1])[:limit]),
    }


def node_metrics(nodes: list[NodeProcess]) -> dict[str, dict[str, float]]:
    """Closes and refusals the live nodes counted (``/metrics``)."""
    found: dict[str, dict[str, float]] = {}
    for node in nodes:
        if not node.alive():
            continue
        try:
            with urllib.request.urlopen(f"{node.http_url}/metrics", timeout=5.0) as response:
                text = response.read().decode()
        except OSError:
            continue
        wanted = ("tidings_disconnects_total{", "tidings_connections_refused_total{")
        found[node.node_id] = {
            line.split()[0]: float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted)
        }
    return found


# --- the run -----------------------------------------------------------------------------------------


async def _until(done: Any, limit: float) -> bool:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if done():
            return True
        await asyncio.sleep(0.01)
    return bool(done())


async def _open(o: StormOptions, run: _Run, pool: Pool, publisher: Publisher) -> dict[str, Any]:
    """Connect the clients and the publisher; wait until the nodes are quiet."""
    n = len(run.nodes)
    members = o.clients // o.rooms
    user = f"storm-{secrets.token_hex(3)}"
    clients = [
        Client(i, i % n, i // members, issue_token(f"{user}-{i}", run.secret, ttl=3600))
        for i in range(o.clients)
    ]
    started = time.perf_counter()
    failures = await pool.open_all(clients, o.connect_concurrency)
    open_s = time.perf_counter() - started

    def first(ws: Any, frame: bytes) -> Any:
        return True if b'"id":1,' in frame else None

    token = issue_token(f"{user}-publisher", run.secret, ttl=3600)
    message = json.dumps({"id": 1, "op": "connect", "token": token})
    publisher.ws, _, _ = await dial(
        pool.ws_urls[0],
        "tidings.json",
        message,
        first,
        timeout=30.0,
        then=lambda ws: (publisher.on_message, publisher.on_close),
    )
    quiet = await settle([node.pid for node in run.nodes], 1.0, 20.0)
    return {
        "open_s": round(open_s, 2),
        "opens_per_s": round(o.clients / open_s, 1),
        "open_failures": failures,
        "settled": quiet,
    }


async def _storm(o: StormOptions, run: _Run, pool: Pool) -> dict[str, Any]:
    """Kill the last node; wait until its clients are back; the survivors' CPU meanwhile."""
    victim = run.nodes[-1]
    survivors = [node.pid for node in run.nodes[:-1]]
    index = len(run.nodes) - 1
    moved = [client for client in pool.clients if client.node == index and client.ws is not None]
    for client in moved:
        client.moved = True
    processes = process_ticks()
    before = CpuSnapshot.take(survivors, [run.valkey_pid])
    killed_at = time.perf_counter()
    victim.kill()
    back = await _until(lambda: all(c.recovered_at for c in moved), o.storm_timeout)
    window = time.perf_counter() - killed_at
    after = CpuSnapshot.take(survivors, [run.valkey_pid])
    ours = [*survivors, run.valkey_pid, victim.pid, os.getpid()]
    others = top_users(processes, process_ticks(), exclude=ours)
    await asyncio.sleep(o.after)
    tail = before.figures_until(CpuSnapshot.take(survivors, [run.valkey_pid]))
    cpu = before.figures_until(after)
    return {
        "killed": victim.node_id,
        **_recovery(moved, killed_at, run.node_ids),
        "all_back": back,
        "window_s": round(window, 3),
        **cpu,
        "survivor_cpu_pct": {
            run.node_ids[i]: _pct(cpu["node_cpu"].get(str(pid)), window) for i, pid in enumerate(survivors)
        },
        "bench_bound": cpu["bench_cpu_s"] > 0.85 * window,
        "others_top": others,  # who used the CPU that others_cpu_s counts
        "tail_s": round(window + o.after, 3),
        "tail_node_cpu_s": tail["node_cpu_s"],
        "tail_redis_cpu_s": tail["redis_cpu_s"],
    }


def _recovery(moved: list[Client], killed_at: float, node_ids: list[str]) -> dict[str, Any]:
    """When the clients of the killed node were back, from the kill; how many tries it took."""
    times = sorted(c.recovered_at - killed_at for c in moved if c.recovered_at)
    detected = [c.lost_at - killed_at for c in moved if c.lost_at]
    return {
        "moved": len(moved),
        "recovered": len(times),
        "recovery_ms": latency_ms(times),
        "first_back_s": round(times[0], 3) if times else None,
        "last_back_s": round(times[-1], 3) if times else None,
        "back_within_s": {str(t): sum(1 for x in times if x <= t) for t in (0.5, 1, 2, 5, 10)},
        "detected_max_ms": round(max(detected, default=0.0) * 1000, 1),
        # The successful attempt alone, from its TCP connect to the connect reply: the node's share.
        "reconnect_ms": latency_ms(sorted(c.dial_ms / 1000 for c in moved if c.recovered_at)),
        "attempts": _histogram(c.attempts for c in moved),
        "reconnected_to": _histogram(node_ids[c.node] for c in moved if c.recovered_at),
        "moved_closed_again": sum(1 for c in moved if len(c.closes) > 1),
    }


def _pct(cpu: float | None, window: float) -> float | None:
    return round(100 * cpu / window, 1) if cpu is not None and window > 0 else None


def _histogram(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (len(item[0]), item[0])))


async def _run(o: StormOptions, run: _Run, result: dict[str, Any]) -> None:
    """The measured run, then (however it ends) every client closed."""
    rooms = [f"room:storm-{run.key_prefix}-{r}" for r in range(o.rooms)]
    pool = Pool([node.ws_url for node in run.nodes], rooms, o.min_backoff, o.max_backoff)
    publisher = Publisher(rooms)
    result.update(rooms=o.rooms, members_per_room=o.clients // o.rooms, rate=o.rate, warmup_s=o.warmup)
    try:
        await _measure(o, run, pool, publisher, result)
    finally:  # also when cut short: the nodes must not have 6,000 clients to drain when told to stop
        run.log_marks = _log_sizes(run.nodes)  # what the nodes log from here on is about the closing
        pool.close_all()
        if publisher.ws is not None:
            publisher.ws.close()
        await asyncio.sleep(0.3)


async def _measure(
    o: StormOptions, run: _Run, pool: Pool, publisher: Publisher, result: dict[str, Any]
) -> None:
    """Open, warm up, kill, wait for the storm to pass, stop publishing, drain, account (into ``result``)."""
    result.update(await _open(o, run, pool, publisher))
    stop = asyncio.Event()
    publishing = asyncio.get_running_loop().create_task(publisher.run(o.rate, stop))
    try:
        await asyncio.sleep(o.warmup)
        result.update(await _storm(o, run, pool))
    finally:
        stop.set()
        await publishing
    await _until(lambda: not publisher.pending, 5.0)
    complete = await _until(lambda: pool.account(publisher)["lost"] == 0, o.drain)
    result.update(
        published=publisher.sent,
        acked=sum(len(a) for a in publisher.acked),
        publish_errors=publisher.errors,
        publisher_closed=publisher.closed,
        complete=complete,
        **pool.account(publisher),
        closes=dict(sorted((str(k), v) for k, v in pool.closed.items())),
        attempt_failures=pool.attempt_failures,
        handshake_503=pool.attempt_failures.get("HTTP 503", 0),
        unrecovered=pool.unrecovered,
        stayed_clients_closed=sum(1 for c in pool.clients if c.closes and not c.moved),
        connected_at_end=sum(1 for c in pool.clients if c.ws is not None and c.ws.close_code is None),
    )


def _verdict(result: dict[str, Any], o: StormOptions) -> None:
    closes = result.get("closes", {})
    result["close_4008"], result["close_4029"] = closes.get("4008", 0), closes.get("4029", 0)
    failed = (
        result.get("lost", 1) or result.get("duplicates", 1) or result.get("reordered", 1)
        or result.get("pushed_before_reply", 1)
        or sum(result.get("unrecovered", {}).values()) or not result.get("all_back")
        or result.get("epoch_changes", 1) or not result.get("complete")
    )  # fmt: skip
    result["passed"] = not failed and not result.get("timed_out")
    last = result.get("last_back_s")
    result["target_met"] = bool(
        not failed and last is not None and last <= o.target_s and not result["close_4008"]
        and not result["close_4029"]
    )  # fmt: skip


def parse_args(argv: list[str] | None = None) -> StormOptions:
    parser = argparse.ArgumentParser(prog="python -m loadtest.storm", description=__doc__.split("\n\n")[0])
    defaults = StormOptions()
    for f in fields(StormOptions):
        kind = str if f.name == "keep_logs" else type(getattr(defaults, f.name))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=getattr(defaults, f.name))
    options = StormOptions(**vars(parser.parse_args(argv)))
    if options.nodes < 2 or options.clients % options.rooms:
        parser.error("at least 2 nodes, and --clients a multiple of --rooms")
    return options


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    started = time.monotonic()
    raise_open_file_limit(o.clients + 2048)  # the nodes inherit it
    log_dir = Path(tempfile.mkdtemp(prefix="tidings-storm-"))
    valkey = ValkeyServer()
    run: _Run | None = None
    result: dict[str, Any] = {
        "scenario": "storm",
        "nodes": o.nodes,
        "clients": o.clients,
        "target_s": o.target_s,
    }
    try:
        valkey.start()
        run = start_nodes(o.nodes, valkey.url, log_dir)
        run.valkey_pid = valkey.pid or 0
        run_on_uvloop(lambda: _bounded(o, run, started, result))
        result["node_metrics"] = node_metrics(run.nodes)
        result.update(node_logs(run.nodes, run.log_marks))
    finally:
        if run is not None:
            stop_all(run.nodes, 10.0)
        valkey.stop()
        if o.keep_logs:
            shutil.copytree(log_dir, o.keep_logs, dirs_exist_ok=True)
        shutil.rmtree(log_dir, ignore_errors=True)
    result["total_s"] = round(time.monotonic() - started, 1)
    _verdict(result, o)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    print(table(result), file=sys.stderr, flush=True)
    return 0 if result["passed"] else 1


async def _bounded(o: StormOptions, run: _Run, started: float, result: dict[str, Any]) -> dict[str, Any]:
    """The run, cut short at ``max_run`` (what was measured so far is reported, and the run fails)."""
    try:
        async with asyncio.timeout(o.max_run - (time.monotonic() - started)):
            await _run(o, run, result)
    except TimeoutError:
        result["timed_out"] = True
    return result


def table(result: dict[str, Any]) -> str:
    """The result as a few human lines (``?`` for what a run cut short did not measure)."""
    r: dict[str, Any] = _Missing(result)
    rec = result.get("recovery_ms") or {}
    lines = [
        f"storm: {r['clients']} clients in {r['rooms']} rooms of {r['members_per_room']} over {r['nodes']} nodes, "
        f"{r['rate']} msg/s; opened in {r['open_s']} s ({r['opens_per_s']}/s), failures {r['open_failures'] or 0}",
        f"  killed {r['killed']}: {r['recovered']}/{r['moved']} clients back "
        f"(reconnected to {r['reconnected_to']}); first after {r['first_back_s']} s, last after {r['last_back_s']} s",
        f"  back within (s)           {r['back_within_s']}",
        f"  per client, from the kill  p50 {rec.get('p50')} / p99 {rec.get('p99')} / max {rec.get('max')} ms "
        f"(drop seen within {r['detected_max_ms']} ms); attempts {r['attempts']}",
        f"  the successful attempt    {r['reconnect_ms']} ms (TCP connect to connect reply)",
        f"  survivors' CPU            {r['node_cpu_s']} s over {r['window_s']} s "
        f"({r['survivor_cpu_pct']} % of a core); user {r['node_user_s']} s, sys {r['node_sys_s']} s; "
        f"{r['tail_node_cpu_s']} s up to {r['tail_s']} s",
        f"  Redis / bench / others    {r['redis_cpu_s']} / {r['bench_cpu_s']} / {r['others_cpu_s']} s"
        f"{'  (BENCH-BOUND: the bench used about the whole window)' if r['bench_bound'] else ''}",
        f"  failed attempts           {r['attempt_failures'] or 'none'}; HTTP 503 {r['handshake_503']}; "
        f"closes {r['closes']} (4008: {r['close_4008']}, 4029: {r['close_4029']})",
        f"  recovered: false          {r['unrecovered'] or 'none'}",
        f"  publications before the connect reply (the protocol says never): {r['pushed_before_reply']}",
        f"  published / acked         {r['published']} / {r['acked']}, errors {r['publish_errors'] or 'none'}",
        f"  lost / dups / reordered   {r['lost']} / {r['duplicates']} / {r['reordered']} "
        f"(by group {r['lost_by_group']}); deliveries {r['deliveries']}; complete {r['complete']}",
        f"  node logs                 {r['log_records']} records, {r['log_errors']} at ERROR",
    ]
    lines += [f"    {count:>5} x {shape}" for shape, count in (result.get("log_summary") or {}).items()]
    if result.get("log_summary_closing"):
        lines.append("  node logs after the bench closed all its clients at once (not in the figures):")
        lines += [f"    {count:>5} x {shape}" for shape, count in result["log_summary_closing"].items()]
    for example in (result.get("loss_examples") or [])[:3]:
        lines.append(f"  lost by client {example['client']} (room {example['room']}): {example['missing']}")
        lines += [f"      {step}" for step in example["story"]]
    verdict = "PASS" if r["passed"] else "FAIL"
    if r.get("timed_out"):
        verdict += f" (cut short at --max-run after {r['total_s']} s)"
    lines.append(
        f"  {verdict}; target (all back within {r['target_s']} s, no loss, no 4008/4029) met: {r['target_met']}"
    )
    return "\n".join(lines)


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
