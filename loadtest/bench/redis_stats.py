"""What Redis says it did: ``INFO commandstats`` before and after a phase, per command name.

The connect benchmark (``connects.py``) reads the table before and after the connect phase:
the difference, divided by the connects, is how many round trips of each command one
connect costs, and ``usec`` how long Redis spent in them. ``INFO`` itself is left out
(the reads are ours). The Redis port may be given, or found from the server's pid (the
socket it listens on, from ``/proc``), since ``run_cluster`` passes the pid only.

The ``parse_*`` functions are pure and unit-tested on sample text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tidings.server.devcluster import resp

__all__ = [
    "CommandStats",
    "listening_ports",
    "parse_commandstats",
    "parse_listening_ports",
    "read_commandstats",
]

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
_OURS = ("info",)  # the commands this module sends itself


@dataclass(frozen=True)
class CommandStats:
    """Calls and microseconds per command name (``get``, ``evalsha``, ``client|setname``...)."""

    calls: dict[str, int]
    usec: dict[str, int]

    def until(self, after: CommandStats) -> CommandStats:
        """What happened between this reading and ``after`` (commands with no new call left out)."""
        calls = {
            name: count - self.calls.get(name, 0)
            for name, count in after.calls.items()
            if count > self.calls.get(name, 0) and name not in _OURS
        }
        usec = {name: after.usec.get(name, 0) - self.usec.get(name, 0) for name in calls}
        return CommandStats(calls, usec)

    def per(self, count: int, digits: int = 3) -> dict[str, float]:
        """Calls of each command per ``count`` (e.g. per connect), most frequent first."""
        if count <= 0:
            return {}
        ordered = sorted(self.calls.items(), key=lambda item: (-item[1], item[0]))
        return {name: round(calls / count, digits) for name, calls in ordered}

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_usec(self) -> int:
        return sum(self.usec.values())


def parse_commandstats(text: str) -> CommandStats:
    """The ``INFO commandstats`` section: ``cmdstat_<name>:calls=N,usec=U,...`` lines."""
    calls: dict[str, int] = {}
    usec: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("cmdstat_") or ":" not in line:
            continue
        name, _, fields = line[len("cmdstat_") :].partition(":")
        values = dict(field.split("=", 1) for field in fields.split(",") if "=" in field)
        calls[name] = int(values.get("calls", "0"))
        usec[name] = int(values.get("usec", "0"))
    return CommandStats(calls, usec)


def read_commandstats(port: int, timeout: float = 5.0) -> CommandStats:
    """Ask the server on ``127.0.0.1:port``.

    Raises:
        OSError: the server does not answer.
    """
    return parse_commandstats(resp.text(resp.command(port, "INFO", "commandstats", timeout=timeout)))


def parse_listening_ports(text: str, inodes: set[int]) -> list[int]:
    """Ports that the sockets ``inodes`` listen on, from the text of ``/proc/net/tcp`` (or tcp6)."""
    ports = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 10 and parts[3] == _LISTEN and int(parts[9]) in inodes:
            ports.append(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(set(ports))


def listening_ports(pid: int, proc: str = "/proc") -> list[int]:
    """The TCP ports process ``pid`` listens on (the same user, or root, to read its fds)."""
    inodes = set()
    for fd in os.listdir(f"{proc}/{pid}/fd"):
        try:
            target = os.readlink(f"{proc}/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/{pid}/net/{name}") as fh:
                ports.update(parse_listening_ports(fh.read(), inodes))
        except FileNotFoundError:
            continue
    return sorted(ports)
