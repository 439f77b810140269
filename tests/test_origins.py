"""Allowed Hosts and WebSocket Origins: the pure rules (origins.py), then the Origin check on a real node.

The Host check on a real node (HTTP and WebSocket) is in test_trusted_host.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from loadtest.protocol_client import ProtocolClient
from tidings.server.config import ConfigError, Settings
from tidings.server.gateway.origins import (
    LOOPBACK_HOSTS,
    check_host_pattern,
    host_allowed,
    origin_allowed,
    parse_host,
)

from .support.node import RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT

Token = Callable[..., str]

# --- pure: Host header ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, host",
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("chat.example.com:443", "chat.example.com"),
        (None, None),
        ("", None),
        ("a b", None),
        ("user@evil.example", None),
        ("evil.example/path", None),
        ("[::1", None),
    ],
)
def test_parse_host(header: str | None, host: str | None) -> None:
    assert parse_host(header) == host


@pytest.mark.parametrize(
    "header, patterns, allowed",
    [
        ("127.0.0.1:8000", LOOPBACK_HOSTS, True),
        ("localhost:8000", LOOPBACK_HOSTS, True),
        ("[::1]:8000", LOOPBACK_HOSTS, True),
        ("evil.example:8000", LOOPBACK_HOSTS, False),  # DNS rebinding: the attacker's name
        ("127.0.0.1.evil.example", LOOPBACK_HOSTS, False),
        (None, LOOPBACK_HOSTS, False),
        ("anything.example", ("*",), True),
        (None, ("*",), True),
        ("a.example.com", ("*.example.com",), True),
        ("a.b.example.com", ("*.example.com",), True),
        ("example.com", ("*.example.com",), False),  # as Starlette: the wildcard needs a subdomain
        ("evilexample.com", ("*.example.com",), False),
        ("CHAT.example.com", ("chat.example.com",), True),
    ],
)
def test_host_allowed(header: str | None, patterns: tuple[str, ...], allowed: bool) -> None:
    assert host_allowed(header, patterns) is allowed


@pytest.mark.parametrize(
    "pattern, normalised",
    [
        ("Chat.Example.com", "chat.example.com"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("*.a.com", "*.a.com"),
        ("*", "*"),
    ],
)
def test_host_patterns_are_normalised(pattern: str, normalised: str) -> None:
    assert check_host_pattern(pattern) == normalised


@pytest.mark.parametrize("pattern", ["http://a.com", "a.com:8000", "a.*.com", "*a.com", "a.com/", "", "*."])
def test_host_patterns_that_never_match_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        check_host_pattern(pattern)


# --- pure: Origin ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin, origins, hosts, allowed",
    [
        (None, (), ("*",), True),  # not a browser
        ("http://evil.example:8000", (), ("*",), False),  # equal to Host or not: never enough by itself
        ("http://evil.example:8000", (), LOOPBACK_HOSTS, False),  # the rebinding page
        ("http://127.0.0.1:8000", (), LOOPBACK_HOSTS, True),  # the UI the node serves, in dev mode
        ("http://127.0.0.1:8001", (), LOOPBACK_HOSTS, True),  # ... and another node of `tidings up`
        ("http://[::1]:8000", (), LOOPBACK_HOSTS, True),
        ("http://localhost.evil.example", (), LOOPBACK_HOSTS, False),
        ("https://app.example.com", (), ("*.example.com",), True),
        ("https://example.com.evil.example", (), ("*.example.com", "example.com"), False),
        ("https://app.example", ("https://app.example",), ("*",), True),
        ("https://app.example/", ("https://app.example",), ("*",), True),
        ("https://app.example.evil.example", ("https://app.example",), ("*",), False),
        ("http://anything.example", ("*",), (), True),
        ("null", (), LOOPBACK_HOSTS, False),  # sandboxed iframes, file:// pages
        ("http://[bad", (), LOOPBACK_HOSTS, False),
    ],
)
def test_origin_allowed(
    origin: str | None, origins: tuple[str, ...], hosts: tuple[str, ...], allowed: bool
) -> None:
    assert origin_allowed(origin, allowed_origins=origins, allowed_hosts=hosts) is allowed


# --- pure: settings -------------------------------------------------------------------------------------


def test_allowed_hosts_default_to_loopback_in_dev_mode_and_any_host_otherwise() -> None:
    assert set(Settings(dev=True).trusted_hosts()) == {"127.0.0.1", "localhost", "[::1]"}
    assert Settings().trusted_hosts() == ("*",)
    assert Settings(dev=True, allowed_hosts=("chat.example",)).trusted_hosts() == ("chat.example",)


def test_allowed_hosts_are_read_from_the_environment() -> None:
    settings = Settings.from_env({"TIDINGS_ALLOWED_HOSTS": " Chat.Example.com, *.example.org ,::1,"})
    assert settings.allowed_hosts == ("chat.example.com", "*.example.org", "[::1]")
    with pytest.raises(ConfigError, match="TIDINGS_ALLOWED_HOSTS"):
        Settings.from_env({"TIDINGS_ALLOWED_HOSTS": "https://chat.example.com"})


# --- live: the WebSocket Origin check -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def socket_to(node: RunningNode, *, host: str, origin: str | None) -> AsyncIterator[ProtocolClient]:
    """A WebSocket to ``node`` whose Host header names ``host`` (as after a DNS rebinding to the node)."""
    uri = f"ws://{host}:{node.port}/ws"
    kwargs: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": node.port,
    }  # where to connect, whatever the URI says
    async with ProtocolClient.connecting(uri, timeout=5 * UNIT, origin=origin, **kwargs) as client:
        yield client


async def connects(client: ProtocolClient, token: str) -> bool:
    return "result" in await client.call("connect", token=token)


async def refused_status(node: RunningNode, *, host: str, origin: str | None) -> int:
    with pytest.raises(InvalidStatus) as caught:
        async with socket_to(node, host=host, origin=origin):
            pass
    return caught.value.response.status_code


async def test_an_origin_equal_to_host_is_not_enough(token: Token) -> None:
    """A node answering any Host accepts a browser's Origin only if listed, not because it equals Host."""
    async with run_node(node_settings()) as node:  # not dev mode: allowed hosts "*"
        rebound = f"http://evil.example:{node.port}"
        assert await refused_status(node, host="evil.example", origin=rebound) == 403
        assert await refused_status(node, host="127.0.0.1", origin=f"http://127.0.0.1:{node.port}") == 403
        async with socket_to(node, host="evil.example", origin=None) as ws:  # not a browser: no Origin
            assert await connects(ws, token("alice"))
    listed = node_settings(allowed_origins=("https://app.example",))
    async with (
        run_node(listed) as node,
        socket_to(node, host="gw.example", origin="https://app.example") as ws,
    ):
        assert await connects(ws, token("alice"))


async def test_an_origin_naming_an_allowed_host_is_accepted(token: Token) -> None:
    """The UI a node serves (dev mode: at 127.0.0.1) and pages of an allowed host may open a WebSocket."""
    async with run_node(node_settings(dev=True)) as node:
        for origin in (f"http://127.0.0.1:{node.port}", "http://localhost:8001"):
            async with socket_to(node, host="127.0.0.1", origin=origin) as ws:
                assert await connects(ws, token("alice"))
        assert await refused_status(node, host="127.0.0.1", origin="http://evil.example") == 403
    async with run_node(node_settings(allowed_hosts=("chat.example",))) as node:
        async with socket_to(node, host="chat.example", origin="https://chat.example") as ws:
            assert await connects(ws, token("alice"))
        assert await refused_status(node, host="chat.example", origin="https://other.example") == 403
