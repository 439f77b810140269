"""Structured logs: one JSON object per line, carrying the node id and the connection id.

The connection id travels in a :class:`~contextvars.ContextVar`: the connection
driver binds it once (:func:`bind_connection`) in the task that serves the socket,
and every record logged from that task, or from tasks it starts (they copy the
context), carries it without any logger call passing it along.

``TIDINGS_LOG_FORMAT=json`` (the Docker image's default) selects this format;
``text`` keeps the human one for a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

__all__ = ["JsonFormatter", "PerConnectionNoise", "bind_connection", "configure_logging", "connection_id"]

connection_id: ContextVar[str | None] = ContextVar("tidings_connection_id", default=None)

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class PerConnectionNoise(logging.Filter):
    """Drops the INFO lines uvicorn and websockets write for every WebSocket opened and closed.

    A line per handshake is a syscall and a JSON encoding per connect, several percent of a
    connect storm's CPU, and says nothing ``tidings_connections`` does not. At DEBUG they stay.
    """

    _TEMPLATES = frozenset({'%s - "WebSocket %s" [accepted]', "connection open", "connection closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.INFO or record.msg not in self._TEMPLATES


def bind_connection(client_id: str) -> None:
    """Tag every record logged from now on in this task (and tasks it starts) with ``client_id``."""
    connection_id.set(client_id)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: ``ts, level, logger, message, node, connection`` and extras.

    Exception text goes to the log (``exc``), never to a client.
    """

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "node": self.node_id,
        }
        client = connection_id.get()
        if client is not None:
            entry["connection"] = client
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(
    node_id: str, *, log_format: str = "text", level: str = "info", stream: TextIO | None = None
) -> None:
    """Send every logger (uvicorn's too) to one handler on stderr in the chosen format.

    Args:
        node_id: stamped on every JSON line.
        log_format: ``json`` or ``text``.
        level: a logging level name.
        stream: where to write (default ``sys.stderr``).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(node_id) if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if level.upper() != "DEBUG":
        # websockets' server logger says nothing but per-connection INFO; uvicorn's mixes it with start-up.
        logging.getLogger("websockets.server").setLevel(logging.WARNING)
        noisy = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, PerConnectionNoise) for f in noisy.filters):
            noisy.addFilter(PerConnectionNoise())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's default log config gives these their own handlers; one format for the whole node.
        # A logger uvicorn switched off (``access_log=False``: no handlers, no propagation) stays off.
        uvicorn_logger = logging.getLogger(name)
        if uvicorn_logger.handlers:
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True
