"""Every exception Tidings raises on purpose, in one place (like websockets' ``exceptions.py``).

The hierarchy::

    TidingsError
    ├── StoreUnavailable          a store (Redis/Valkey) cannot be reached right now: temporary;
    │   │                         HTTP answers 503, a command replies ``temporary=True``; retry later.
    │   │                         Raised by presence, rooms, inboxes and topics, the job queue.
    │   └── BackplaneUnavailable  the backplane cannot publish, subscribe or read history
    │                             (also importable from ``tidings.server.cluster.backplane``)
    ├── ProtocolError             a client frame or request breaks the wire protocol; carries the
    │                             error/close code to send (``tidings.server.gateway.protocol``)
    ├── AuthError                 a token is missing, malformed, expired or badly signed
    │                             (``tidings.server.gateway.auth``)
    ├── ConfigError               a setting is invalid, also a ``ValueError`` (``tidings.server.config``)
    └── ApiError                  an HTTP API request is refused with a status and a message
                                  (``tidings.server.http.routes``)

Outside the node, for the development cluster and the client library (not TidingsError):
``ValkeyUnavailable``, ``ClusterError``, ``TopologyError`` and ``RespError``
(``tidings.server.devcluster``), ``PublishError``, ``CallError`` and ``ConnectionClosed``
(``tidings.client``). ``_ReplyError`` (``cluster/backplane/resp.py``) never leaves its module:
an error reply is turned into redis-py's class for it as soon as it is read.

The classes defined here are the ones that several packages raise or catch; the others stay
next to the code that raises them and derive from :class:`TidingsError`. This module imports
nothing, so any module, pure ones included, can use it. Turning a Redis error into
:class:`StoreUnavailable` is ``tidings.server.cluster.redis_errors``.
"""

from __future__ import annotations

__all__ = ["BackplaneUnavailable", "StoreUnavailable", "TidingsError"]


class TidingsError(Exception):
    """The base of every exception Tidings raises on purpose."""


class StoreUnavailable(TidingsError):
    """A store cannot be reached right now; nothing was done, and the operation may be retried.

    Callers answer 503 (HTTP) or an error with ``temporary=True`` (WebSocket); the message names
    the operation that failed and is safe to log, never to send: the cause is chained.
    """


class BackplaneUnavailable(StoreUnavailable):
    """The backplane (Redis pub/sub and streams) cannot be reached right now; the operation may be retried."""
