"""A blocking Tidings protocol client for locust (gevent): one greenlet reads, callers wait for replies.

It uses websocket-client, whose plain sockets gevent's monkey patching (done by
locust on import) makes cooperative, so thousands of users share one process. A
reader greenlet hands replies to the callers waiting on them and every push to
``on_push(message, received_at)``; ``received_at`` is ``time.time()`` right after
the frame arrived, for latency.

Errors:
    CallError: the server answered a command with an error reply.
    ClientClosed: the connection is gone (carries the close code when one came).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import gevent
import msgpack
import websocket
from gevent.event import AsyncResult

from tidings.server.gateway.protocol import Codec

__all__ = ["CallError", "ClientClosed", "ProtocolClient"]

OnPush = Callable[[dict[str, Any], float], None]
OnClose = Callable[[int | None], None]
OnResult = Callable[[dict[str, Any], float], None]


class CallError(Exception):
    """An error reply to a command."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ClientClosed(Exception):
    """The connection ended; ``code`` is the close code the server sent, if any."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"connection closed ({code})")
        self.code = code


class ProtocolClient:
    """One WebSocket connection speaking wire protocol v1.

    Guarantees: every push is handed to ``on_push`` in arrival order, from one greenlet;
    after :meth:`drop` or :meth:`close` nothing more is handed on (a dropped connection's
    late frames must not count as deliveries).
    """

    def __init__(
        self,
        ws_url: str,
        *,
        codec: str = "json",
        on_push: OnPush,
        on_close: OnClose | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.codec = codec
        self.timeout = timeout
        self.on_push = on_push
        self.on_close = on_close
        self.close_code: int | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[AsyncResult, OnResult | None]] = {}
        self._live = True
        subprotocol = "tidings.msgpack" if codec == "msgpack" else "tidings.json"
        self._ws = websocket.create_connection(
            ws_url,
            timeout=timeout,
            subprotocols=[subprotocol],
            enable_multithread=True,
            skip_utf8_validation=True,
            suppress_origin=True,  # not a browser: websocket-client would send an Origin the node refuses
        )
        self._ws.settimeout(
            None
        )  # the reader waits as long as the connection lives; calls have their own timeout
        self._reader = gevent.spawn(self._read)

    # --- commands ----------------------------------------------------------------------------------

    def send_command(self, op: str, *, on_result: OnResult | None = None, **fields: Any) -> AsyncResult:
        """Send one command; the returned AsyncResult gets its ``result`` (or CallError / ClientClosed).

        ``on_result(result, received_at)`` runs in the reader greenlet before any later frame is
        handled: a subscription recorded there sees every publication that follows its reply.
        """
        if not self._live:
            raise ClientClosed(self.close_code)
        command_id = next(self._ids)
        waiter = AsyncResult()
        self._pending[command_id] = (waiter, on_result)
        message = {"id": command_id, "op": op, **fields}
        try:
            if self.codec == "msgpack":
                self._ws.send_binary(msgpack.packb(message, use_bin_type=True))
            else:
                self._ws.send(json.dumps(message, separators=(",", ":")))
        except (OSError, websocket.WebSocketException) as exc:
            self._pending.pop(command_id, None)
            raise ClientClosed(self.close_code) from exc
        return waiter

    def call(self, op: str, *, on_result: OnResult | None = None, **fields: Any) -> dict[str, Any]:
        """Send one command and wait for its reply.

        Raises:
            CallError: an error reply.
            ClientClosed: the connection ended first.
            gevent.Timeout: no reply within ``timeout``.
        """
        result: dict[str, Any] = self.send_command(op, on_result=on_result, **fields).get(
            timeout=self.timeout
        )
        return result

    # --- closing -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close politely; pushes stop being handed on at once."""
        self._live = False
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self._ws.close(timeout=1)
        self._reader.kill(block=False)

    def drop(self) -> None:
        """Lose the connection abruptly, as a network failure would (no close handshake)."""
        self._live = False
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self._ws.shutdown()
        self._reader.kill(block=False)

    @property
    def live(self) -> bool:
        return self._live

    # --- reading -----------------------------------------------------------------------------------

    def _read(self) -> None:
        code: int | None = None
        try:
            while self._live:
                opcode, payload = self._ws.recv_data()
                received_at = time.time()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    break
                self._dispatch(payload, opcode == websocket.ABNF.OPCODE_TEXT, received_at)
        except (OSError, websocket.WebSocketException, ValueError):
            pass
        finally:
            self._finish(code)

    def _dispatch(self, payload: bytes, text: bool, received_at: float) -> None:
        messages = (Codec.JSON if text else Codec.MSGPACK).split(payload)
        for message in messages:
            if not self._live:
                return
            if "push" in message:
                self.on_push(message, received_at)
                continue
            pending = self._pending.pop(message.get("id", 0), None)
            if pending is None:
                continue
            waiter, on_result = pending
            if "error" in message:
                error = message["error"]
                waiter.set_exception(CallError(int(error.get("code", 0)), str(error.get("message", ""))))
                continue
            result = message.get("result", {})
            if on_result is not None:
                try:
                    on_result(result, received_at)
                except Exception as exc:  # handed to the caller, never lost in the reader greenlet
                    waiter.set_exception(exc)
                    continue
            waiter.set(result)

    def _finish(self, code: int | None) -> None:
        was_live, self._live = self._live, False
        self.close_code = code
        for waiter, _ in self._pending.values():
            waiter.set_exception(ClientClosed(code))
        self._pending.clear()
        if was_live and self.on_close is not None:
            self.on_close(code)
