"""Settings: every knob of a node, read once from ``TIDINGS_*`` environment variables.

Nothing is read at import time; ``Settings.from_env()`` is called by the CLI (or a
test) and the frozen result is passed down, so one process can run two
differently configured apps.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .backplane import HistoryPolicy

__all__ = ["ConfigError", "Secret", "Settings"]

NAMESPACES = ("room", "user", "dm", "broadcast")


class ConfigError(ValueError):
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
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

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
    allowed_origins: tuple[str, ...] = ()  # browser Origins allowed besides the node's own host; "*" = any
    dev: bool = False  # enables POST /api/dev/token for the demo UI
    max_message_size: int = 64 * 1024  # largest client frame
    outbox_size: int = 1024 * 1024  # bytes queued per connection before it is closed as too slow (4008)
    max_channels: int = 256  # subscriptions per connection
    connect_timeout: float = 10.0  # a socket must send connect within this
    ping_interval: float = 25.0  # WebSocket ping interval (dead peer detection)
    ping_timeout: float = 20.0
    history_size: int = 1000  # publications kept per channel
    history_ttl: float = 86400.0  # seconds a channel's history lives after its last publication
    history_overrides: Mapping[str, HistoryPolicy] = field(default_factory=dict)  # per namespace

    def history_policies(self) -> dict[str, HistoryPolicy]:
        """History policy per namespace; the key "" is the default."""
        policies = {"": HistoryPolicy(self.history_size, self.history_ttl)}
        policies.update(self.history_overrides)
        return policies

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, prefix: str = "TIDINGS_") -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); unknown variables are ignored.

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
            try:
                values[f.name] = _parse(f.name, raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from exc
        if prefix + "JWT_SECRET" not in env and prefix + "JWT_SECRET_FILE" in env:
            with open(env[prefix + "JWT_SECRET_FILE"]) as fh:
                values["jwt_secret"] = Secret(fh.read().strip())
        overrides = {}
        for namespace in NAMESPACES:
            size = env.get(f"{prefix}HISTORY_SIZE_{namespace.upper()}")
            ttl = env.get(f"{prefix}HISTORY_TTL_{namespace.upper()}")
            if size is not None or ttl is not None:
                try:
                    overrides[namespace] = HistoryPolicy(
                        int(size) if size is not None else values.get("history_size", cls.history_size),
                        float(ttl) if ttl is not None else values.get("history_ttl", cls.history_ttl),
                    )
                except ValueError as exc:
                    raise ConfigError(f"{prefix}HISTORY_*_{namespace.upper()}: {exc}") from exc
        values["history_overrides"] = overrides
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ConfigError for values that parse but make no sense."""
        for name in ("max_message_size", "outbox_size", "max_channels", "history_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"TIDINGS_{name.upper()} must be positive")
        if self.outbox_size < self.max_message_size:
            raise ConfigError("TIDINGS_OUTBOX_SIZE must be at least TIDINGS_MAX_MESSAGE_SIZE")
        if not self.key_prefix or "{" in self.key_prefix or "}" in self.key_prefix:
            raise ConfigError("TIDINGS_KEY_PREFIX must be non-empty and hold no braces")


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


def _parse(name: str, raw: str) -> Any:
    if name in ("jwt_secret",):
        return Secret(raw) if raw else None
    if name == "api_keys":
        return tuple(Secret(k.strip()) for k in raw.split(",") if k.strip())
    if name == "allowed_origins":
        return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    if name == "jwt_public_key":
        if raw and not raw.startswith("-----"):
            with open(raw) as fh:  # a path to a PEM file
                return fh.read()
        return raw.replace("\\n", "\n") or None
    if name in ("redis_url",):
        return raw or None
    if name == "dev":
        if raw.lower() not in _BOOLS:
            raise ValueError(f"expected a boolean, got {raw!r}")
        return _BOOLS[raw.lower()]
    if name in ("max_message_size", "outbox_size", "max_channels", "history_size"):
        return int(raw)
    if name in ("connect_timeout", "ping_interval", "ping_timeout", "history_ttl"):
        return float(raw)
    return raw
