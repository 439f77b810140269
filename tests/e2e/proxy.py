"""A TCP forwarder on 127.0.0.1 that a test can cut: real sockets between the browser and a node.

It lets a single-node test drop one tab's connection (as a dying node or a lost
network would) while the node and every other tab carry on. ``cut()`` closes the
open connections; ``refuse()`` makes new ones fail until ``accept()``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from ..support.timing import UNIT

__all__ = ["TcpProxy", "tcp_proxy"]


class TcpProxy:
    """Forwards every connection to ``upstream_port``; bounded by the test's lifetime (``close``)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2 * UNIT)  # wake up to notice close()
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._refusing = False
        self._closed = False
        self._threads = [threading.Thread(target=self._accept_loop, name="e2e-proxy", daemon=True)]
        self._threads[0].start()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuse(self) -> None:
        """Close new connections at once (the node looks down), until ``accept``."""
        self._refusing = True

    def accept(self) -> None:
        self._refusing = False

    def cut(self) -> None:
        """Close every open connection, both ways."""
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self.cut()
        for thread in self._threads:
            thread.join(timeout=5 * UNIT)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._refusing or self._closed:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5 * UNIT)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, target), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            # Shutting down wakes the other direction's recv; then both sockets can be closed.
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._open.discard(source)
                self._open.discard(target)


@contextlib.contextmanager
def tcp_proxy(upstream_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(upstream_port)
    try:
        yield proxy
    finally:
        proxy.close()
