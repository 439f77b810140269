"""RedisEmitter: a backend publishes and notifies straight through Redis, without the HTTP hop.

It runs the node's own code against the cluster's Redis: publications go through
the backplane's Lua publish script (offset, stream and pub/sub in one atomic
step, so history and recovery work exactly as for a node's publications), and
notifications through the same Notifier (inbox writes, live pushes, fan-out jobs,
dedupe). It never subscribes to anything and runs no jobs: topic and ``all``
fan-outs and scheduled notifications are picked up by the nodes' job workers.

Use the cluster's ``TIDINGS_KEY_PREFIX`` and history settings (``RedisEmitter.from_env()``
reads them from the environment, as a node does).

Errors:
    ProtocolError: bad input (the message names the field), as a 400 from the HTTP API.
    StoreUnavailable (``tidings.server.errors``; BackplaneUnavailable is one): Redis cannot be
        reached; nothing was acknowledged, retry (with a ``dedupe_key`` for notifications).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Mapping
from typing import Any, Self, Unpack

import redis.asyncio as aioredis

from tidings.server.channels import Channel, check_user
from tidings.server.cluster.backplane import HistoryPolicy, StreamPosition
from tidings.server.cluster.backplane.redis import RedisBackplane
from tidings.server.config import Settings
from tidings.server.gateway.protocol import check_data
from tidings.server.jobs.queue_redis import RedisJobQueue
from tidings.server.notify.notifier import Notifier, check_topic, parse_notify_request
from tidings.server.notify.store_redis import RedisNotificationStore

from .publisher import NotifyFields, notify_body

__all__ = ["RedisEmitter"]


class RedisEmitter:
    """Publish and notify through Redis as a node would. Use as an async context manager, or ``aclose()``.

    Args:
        url: the cluster's Redis URL (``TIDINGS_REDIS_URL``).
        key_prefix: the cluster's ``TIDINGS_KEY_PREFIX``.
        policies: history size and TTL per namespace, as the nodes have them (``Settings.history_policies()``).
        inbox_size, inbox_ttl: as the nodes' ``TIDINGS_INBOX_SIZE`` and ``TIDINGS_INBOX_TTL``.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "tidings",
        policies: Mapping[str, HistoryPolicy] | None = None,
        inbox_size: int = 1000,
        inbox_ttl: float = 30 * 86400.0,
    ) -> None:
        emitter_id = f"emitter-{socket.gethostname()[:24]}-{os.getpid()}-{secrets.token_hex(2)}"
        # Never started: no pub/sub link, only its publishing connection and scripts.
        self._backplane = RedisBackplane(url, node_id=emitter_id, key_prefix=key_prefix, policies=policies)
        self._redis = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.notifier = Notifier(
            RedisNotificationStore(
                self._redis, key_prefix=key_prefix, inbox_size=inbox_size, inbox_ttl=inbox_ttl
            ),
            RedisJobQueue(self._redis, key_prefix=key_prefix),
            self._backplane,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RedisEmitter:
        """An emitter configured like the nodes, from the same ``TIDINGS_*`` variables.

        Raises:
            ConfigError: a variable cannot be parsed, or ``TIDINGS_REDIS_URL`` is not set.
        """
        from tidings.server.config import ConfigError

        settings = Settings.from_env(environ)
        if settings.redis_url is None:
            raise ConfigError("TIDINGS_REDIS_URL must be set for a RedisEmitter")
        return cls(
            settings.redis_url,
            key_prefix=settings.key_prefix,
            policies=settings.history_policies(),
            inbox_size=settings.inbox_size,
            inbox_ttl=settings.inbox_ttl,
        )

    async def publish(self, channel: str, data: Any, *, ephemeral: bool = False) -> StreamPosition | None:
        """Publish ``data`` to ``channel``; returns its position (None when ephemeral)."""
        text = Channel.parse(channel).text
        check_data(data)
        return await self._backplane.publish(text, data, ephemeral=ephemeral)

    async def notify(self, **fields: Unpack[NotifyFields]) -> dict[str, Any]:
        """Notify users (arguments as ``Publisher.notify``); returns ``{id, recipients}``."""
        request = parse_notify_request(notify_body(**fields), now=time.time())
        return await self.notifier.notify(request)

    async def subscribe_topic(self, topic: str, user: str) -> None:
        await self.notifier.store.subscribe(check_topic(topic), check_user(user))

    async def unsubscribe_topic(self, topic: str, user: str) -> None:
        await self.notifier.store.unsubscribe(check_topic(topic), check_user(user))

    async def aclose(self) -> None:
        await self._backplane.close()
        await self._redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
