"""Settings: every knob of a node, read once from ``TIDINGS_*`` environment variables.

Nothing is read at import time; ``Settings.from_env()`` is called by the CLI (or a
test) and the frozen result is passed down, so one process can run two
differently configured apps.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tidings.server.channels import NAMESPACES
from tidings.server.cluster.backplane import HistoryPolicy
from tidings.server.cluster.redis_target import parse_redis_url
from tidings.server.errors import TidingsError
from tidings.server.gateway.origins import LOOPBACK_HOSTS, check_host_pattern

__all__ = ["CONTROL_HISTORY", "ConfigError", "Secret", "Settings"]


# Control messages between nodes (control.py): enough to repair a pub/sub outage of many minutes.
CONTROL_HISTORY = HistoryPolicy(size=10_000, ttl=3600.0)


class ConfigError(TidingsError, ValueError):
    """An environment variable holds a value that cannot be used; the message names it."""


class Secret:
    """A string that does not show itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        # compare_digest refuses non-ASCII str; bytes work for any secret.
        return isinstance(other, Secret) and secrets.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(self._value)


def _default_node_id() -> str:
    return f"{socket.gethostname()[:24]}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class Settings:
    """A node's configuration. Durations are seconds; sizes are bytes."""

    redis_url: str | None = None  # None → InMemoryBackplane, single node
    key_prefix: str = "tidings"  # every Redis key and channel starts with it (one cluster per prefix)
    node_id: str = field(default_factory=_default_node_id)
    jwt_secret: Secret | None = None  # HS256
    jwt_public_key: str | None = None  # PEM, RS256 or ES256
    api_keys: tuple[Secret, ...] = ()
    allowed_origins: tuple[str, ...] = ()  # browser Origins a WebSocket may come from; "*" = any (origins.py)
    allowed_hosts: tuple[str, ...] = ()  # Host header patterns; () = loopback in dev mode, any host otherwise
    dev: bool = False  # demo mode: POST /api/dev/token, open API without keys; never where it is deployed
    max_message_size: int = 64 * 1024  # largest client frame
    outbox_size: int = 1024 * 1024  # bytes queued per connection before it is closed as too slow (4008)
    # Bytes of publications or notifications one reply may carry (history, recovery, inbox pages);
    # capped at half the outbox, so that a reply never closes its own connection as too slow.
    max_reply_size: int = 256 * 1024
    max_channels: int = 256  # subscriptions per connection
    connect_timeout: float = 10.0  # a socket must send connect within this
    ping_interval: float = 25.0  # WebSocket ping interval (dead peer detection)
    ping_timeout: float = 20.0
    max_connections: int = 100_000  # open WebSockets on this node; more get HTTP 503 (limits.py)
    max_user_connections: int = 100  # sessions of one user on this node; more are closed with 4029
    max_handshakes: int = 500  # WebSockets still before their connect reply; more get HTTP 503 (limits.py)
    command_rate: float = 50.0  # commands a second per connection; over it: 429, then close 4029
    command_burst: int = 100  # commands a connection may send at once before the rate applies
    drain_timeout: float = 30.0  # SIGTERM to exit, at most (drain.py)
    drain_batch_size: int = 100  # connections told to reconnect at once while draining
    drain_interval: float = 0.25  # pause between two such batches
    log_format: str = "text"  # "json": one JSON object per line with node and connection ids (logs.py)
    history_size: int = 1000  # publications kept per channel
    history_ttl: float = 86400.0  # seconds a channel's history lives after its last publication
    history_overrides: Mapping[str, HistoryPolicy] = field(default_factory=dict)  # per namespace
    jobs: bool = True  # TIDINGS_JOBS=off: this node enqueues jobs but never takes one (jobs.py)
    job_visibility_timeout: float = 30.0  # a job untouched this long (its node died) goes to another node
    job_max_attempts: int = 5  # failed runs before a job goes to the dead-letter stream
    job_retry_backoff: float = 1.0  # seconds before the first retry; doubles with each failure
    fanout_batch_size: int = 500  # inboxes per batch of a topic/all fan-out job
    fanout_batch_interval: float = 0.0  # pause between fan-out batches (spares Redis on huge topics)
    inbox_size: int = 1000  # notifications kept per user (the oldest go first)
    inbox_ttl: float = 30 * 86400.0  # seconds an inbox lives after its last notification

    @property
    def reply_budget(self) -> int:
        """Bytes of publications or notifications one reply may carry (``max_reply_size``, at most half the outbox)."""
        return max(1, min(self.max_reply_size, self.outbox_size // 2))

    def trusted_hosts(self) -> tuple[str, ...]:
        """The Host patterns this node answers (origins.py), normalised.

        Unset, dev mode answers loopback names only: its API is open without keys and it
        hands out tokens, so a page on another site must not reach it by DNS rebinding.
        Outside dev mode any host is answered, since the API needs a key and a WebSocket
        a token there; set TIDINGS_ALLOWED_HOSTS to the names clients use all the same.

        Raises:
            ConfigError: a pattern can never match a Host header.
        """
        patterns = self.allowed_hosts or (LOOPBACK_HOSTS if self.dev else ("*",))
        try:
            return tuple(check_host_pattern(pattern) for pattern in patterns)
        except ValueError as exc:
            raise ConfigError(f"TIDINGS_ALLOWED_HOSTS: {exc}") from exc

    def history_policies(self) -> dict[str, HistoryPolicy]:
        """History policy per namespace; the key "" is the default."""
        policies = {
            "": HistoryPolicy(self.history_size, self.history_ttl),
            "sys": CONTROL_HISTORY,
        }
        policies.update(self.history_overrides)
        return policies

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, prefix: str = "TIDINGS_") -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); unknown variables are ignored.

        An empty variable counts as unset (``TIDINGS_X=`` in a compose file keeps the default).

        Raises:
            ConfigError: a variable cannot be parsed; the message names it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = prefix + f.name.upper()
            if name not in env or f.name == "history_overrides":
                continue
            raw = env[name].strip()
            if not raw:
                continue
            try:
                values[f.name] = _parse(f.name, raw)
            except (ValueError, OSError) as exc:  # OSError: a key file that cannot be read
                raise ConfigError(f"{name}: {exc}") from exc
        secret_file = env.get(prefix + "JWT_SECRET_FILE", "").strip()
        if "jwt_secret" not in values and secret_file:
            try:
                with open(secret_file) as fh:
                    values["jwt_secret"] = Secret(fh.read().strip())
            except OSError as exc:
                raise ConfigError(f"{prefix}JWT_SECRET_FILE: {exc}") from exc
        overrides = {}
        default_size = values.get("history_size", cls.history_size)
        default_ttl = values.get("history_ttl", cls.history_ttl)
        for namespace in NAMESPACES:
            size_name = f"{prefix}HISTORY_SIZE_{namespace.upper()}"
            ttl_name = f"{prefix}HISTORY_TTL_{namespace.upper()}"
            size, ttl = env.get(size_name, "").strip(), env.get(ttl_name, "").strip()
            if size or ttl:
                overrides[namespace] = HistoryPolicy(
                    _parse_number(size_name, size, int) if size else default_size,
                    _parse_number(ttl_name, ttl, float) if ttl else default_ttl,
                )
        values["history_overrides"] = overrides
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ConfigError for values that parse but make no sense."""
        for name in _POSITIVE_INTS:
            if getattr(self, name) <= 0:
                raise ConfigError(f"TIDINGS_{name.upper()} must be positive")
        for name in _POSITIVE_SECONDS:
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"TIDINGS_{name.upper()} must be a positive number of seconds")
        for namespace, policy in self.history_overrides.items():
            if policy.size <= 0 or not 0 < policy.ttl < math.inf:
                raise ConfigError(f"TIDINGS_HISTORY_SIZE_{namespace.upper()} and _TTL_ must be positive")
        if not 0 <= self.drain_interval < math.inf:
            raise ConfigError("TIDINGS_DRAIN_INTERVAL must be a number of seconds")
        if not 0 <= self.fanout_batch_interval < math.inf:
            raise ConfigError("TIDINGS_FANOUT_BATCH_INTERVAL must be a number of seconds")
        if self.log_format not in ("text", "json"):
            raise ConfigError("TIDINGS_LOG_FORMAT must be text or json")
        if self.outbox_size < self.max_message_size:
            raise ConfigError("TIDINGS_OUTBOX_SIZE must be at least TIDINGS_MAX_MESSAGE_SIZE")
        if not self.key_prefix or "{" in self.key_prefix or "}" in self.key_prefix:
            raise ConfigError("TIDINGS_KEY_PREFIX must be non-empty and hold no braces")
        self.trusted_hosts()


_POSITIVE_INTS = (
    "max_message_size",
    "outbox_size",
    "max_reply_size",
    "max_channels",
    "history_size",
    "max_connections",
    "max_user_connections",
    "max_handshakes",
    "command_burst",
    "drain_batch_size",
    "job_max_attempts",
    "fanout_batch_size",
    "inbox_size",
)
_POSITIVE_SECONDS = (
    "connect_timeout",
    "ping_interval",
    "ping_timeout",
    "history_ttl",
    "command_rate",  # per second, but the same rule
    "drain_timeout",
    "job_visibility_timeout",
    "job_retry_backoff",
    "inbox_ttl",
)

_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _parse_number(name: str, raw: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def _parse(name: str, raw: str) -> Any:
    if name in ("jwt_secret",):
        return Secret(raw) if raw else None
    if name == "api_keys":
        return tuple(Secret(k.strip()) for k in raw.split(",") if k.strip())
    if name == "allowed_origins":
        return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    if name == "allowed_hosts":
        return tuple(check_host_pattern(h) for h in raw.split(",") if h.strip())
    if name == "jwt_public_key":
        if raw and not raw.startswith("-----"):
            with open(raw) as fh:  # a path to a PEM file
                return fh.read()
        return raw.replace("\\n", "\n") or None
    if name in ("redis_url",):
        if raw:
            parse_redis_url(raw)  # a malformed URL stops the node at start, with the reason
        return raw or None
    if name in ("dev", "jobs"):
        if raw.lower() not in _BOOLS:
            raise ValueError(f"expected a boolean, got {raw!r}")
        return _BOOLS[raw.lower()]
    if name in _POSITIVE_INTS:
        return int(raw)
    if name in (*_POSITIVE_SECONDS, "drain_interval", "fanout_batch_interval"):
        return float(raw)
    return raw
