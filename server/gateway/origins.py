"""Who a browser request may come from: allowed Host headers and WebSocket Origins (pure: no I/O).

Host patterns follow Starlette's ``TrustedHostMiddleware``: a hostname without a port
(``chat.example.com``, ``127.0.0.1``, ``[::1]``), ``*.example.com`` for any subdomain,
or ``*`` for any host. The Host check stops DNS rebinding: a hostile page whose name
resolves to a node's address is sent with its own name in ``Host``.

The Origin check stops cross-site WebSocket hijacking (a browser opens a WebSocket to
any site and sends its cookies, and no CORS rule applies). An Origin is accepted when
it is listed in ``TIDINGS_ALLOWED_ORIGINS`` (``*``: any), or when its hostname matches
an explicit allowed host. It is never accepted merely because it equals the request's
``Host``: after a DNS rebinding both name the attacker's site.

Errors:
    ValueError: ``check_host_pattern`` got a pattern a Host header can never match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["LOOPBACK_HOSTS", "check_host_pattern", "host_allowed", "origin_allowed", "parse_host"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # dev mode's default allowed hosts

# RFC 9110 7.2: Host = uri-host [ ":" port ]; an IPv6 literal keeps its brackets. Names are DNS names
# (internationalised ones arrive in punycode); anything else is no host this node answers.
_HOST = re.compile(r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(?P<port>[0-9]{0,5}))?", re.IGNORECASE)


def parse_host(header: str | None) -> str | None:
    """The lower-case hostname of a ``Host`` header without its port, or None if it is not one."""
    if not header:
        return None
    match = _HOST.fullmatch(header.strip())
    return match["host"].lower() if match else None


def check_host_pattern(pattern: str) -> str:
    """Normalise one allowed-host pattern (lower case, IPv6 in brackets).

    Raises:
        ValueError: a scheme, port, path or misplaced ``*``; such a pattern would never match.
    """
    value = pattern.strip().lower()
    if ":" in value and not value.startswith("["):
        value = f"[{value}]"  # "::1" means the IPv6 literal, which a Host header brackets
    if value == "*":
        return value
    wildcard = value.startswith("*.")
    if parse_host(value[2:] if wildcard else value) != (value[2:] if wildcard else value):
        raise ValueError(f"{pattern!r} is not a hostname (no scheme or port) or *.domain")
    return value


def _matches(host: str, pattern: str) -> bool:
    # As TrustedHostMiddleware: "*.example.com" matches "a.example.com", not "example.com".
    return host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))


def host_allowed(header: str | None, patterns: Iterable[str]) -> bool:
    """Whether a request's ``Host`` header names one of ``patterns`` (normalised by check_host_pattern)."""
    patterns = tuple(patterns)
    if "*" in patterns:
        return True
    host = parse_host(header)
    return host is not None and any(_matches(host, pattern) for pattern in patterns)


def origin_allowed(
    origin: str | None, *, allowed_origins: Iterable[str], allowed_hosts: Iterable[str]
) -> bool:
    """Whether a WebSocket handshake with this ``Origin`` header may go on.

    Args:
        origin: the header, None when absent (not a browser: nothing to guard against).
        allowed_origins: ``scheme://host[:port]`` values without a trailing slash; ``*`` allows any.
        allowed_hosts: host patterns; an Origin whose hostname matches one other than ``*`` is allowed.
    """
    if origin is None:
        return True
    allowed = tuple(allowed_origins)
    text = origin.strip().rstrip("/")
    if "*" in allowed or text in allowed:
        return True
    try:
        hostname = urlsplit(text).hostname  # lower case, brackets stripped ("null" has none)
    except ValueError:
        return False
    if not hostname:
        return False
    host = f"[{hostname}]" if ":" in hostname else hostname
    return any(_matches(host, pattern) for pattern in allowed_hosts if pattern != "*")
