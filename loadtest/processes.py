"""Server processes for the benchmarks and the tests: free ports on 127.0.0.1 and one child per node.

:class:`NodeProcess` is any server we start (``tidings serve``, ``node socketio/server.js``):
its output goes to a log file, it dies with us (``PR_SET_PDEATHSIG`` on Linux), and it is
only ever signalled through the pid we started: terminate, wait, kill.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tidings.server.devcluster.valkey import die_with_parent

__all__ = ["NodeProcess", "free_port", "stop_all"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (someone else may take it before we bind it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NodeProcess:
    """One server child process listening on 127.0.0.1:``port``, its output appended to ``log``."""

    node_id: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def spawn(
        cls,
        node_id: str,
        port: int,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path,
        cwd: Path | None = None,
        process_group: bool = False,
    ) -> NodeProcess:
        """Start ``command`` (which must listen on ``port``); ``process_group``: in a group of its own."""
        with open(log, "ab") as out:
            process = subprocess.Popen(
                list(command),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0 if process_group else None,
                preexec_fn=die_with_parent,
            )
        return cls(node_id, port, process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL: no shutdown, no goodbye, as when a machine dies."""
        self.process.kill()
        self.process.wait(timeout)

    def freeze(self) -> None:
        """SIGSTOP: the node holds its sockets but does nothing (a hung node)."""
        self.process.send_signal(signal.SIGSTOP)

    def signal_stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Ask the node to stop with ``sig`` (waking it first: a frozen node cannot act on SIGTERM)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.send_signal(sig)

    def stop(self, timeout: float = 10.0, *, sig: signal.Signals = signal.SIGTERM) -> None:
        """``sig`` (SIGTERM), wait up to ``timeout`` seconds, then SIGKILL."""
        stop_all([self], timeout, sig=sig)

    def wait_listening(self, timeout: float) -> None:
        """Until the port accepts TCP connections; RuntimeError (with the log) if it exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.node_id} exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.node_id} not listening after {timeout} s: {self.log_tail()}"
                    ) from exc
                time.sleep(0.05)

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""


def stop_all(
    nodes: Iterable[NodeProcess], timeout: float = 10.0, *, sig: signal.Signals = signal.SIGTERM
) -> None:
    """Signal every node at once, then wait for each under one deadline; SIGKILL the ones still running."""
    nodes = list(nodes)
    for node in nodes:
        node.signal_stop(sig)
    deadline = time.monotonic() + timeout
    for node in nodes:
        try:
            node.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
