"""Hostile requests to every HTTP route of a live node on the real Valkey: never a 500, never a leak.

Each hypothesis example sends a few requests to one real node (uvicorn, Redis backplane,
notifications and jobs on Valkey, an API key configured, dev mode on so ``/api/dev/token``
answers). Every route of the app's ``Route`` list has a strategy of its own, so a new
route without one fails ``test_every_route_has_a_strategy``. A request is mostly
well-shaped for its route, so it gets deep into the handler's rules, with hostile values:
huge and negative numbers, numbers beyond 64 bits, deep nesting, lone surrogates, control
characters, long strings, wrong types; and sometimes bad JSON, invalid UTF-8, another JSON
value than an object, a wrong content type, no or a wrong API key. Checks per response:

  * the status is below 500 (the backplane is up, so not even 503);
  * an error body is ``{"error": {"code": <status>, "message": ...}}`` and the message carries
    no exception text;
  * nothing was logged at ERROR (no "... failed" traceback, no "Exception in ASGI application");
  * the node still answers ``/healthz``.

CI runs a fixed number of examples with a fixed seed (``derandomize``), as tests/test_fuzz.py.
A longer, random run: ``TIDINGS_FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/test_http_fuzz.py -p no:cacheprovider``
(a failure prints the seed; replay it with ``--hypothesis-seed=<seed>``).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Route

from tidings.server.http.app import create_app
from tidings.server.http.routes import MAX_BODY_SIZE

from .support.logs import ErrorLog, error_log
from .support.node import API_KEY, RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT

EXAMPLES = int(os.environ.get("TIDINGS_FUZZ_EXAMPLES", "0"))
LEAK = re.compile(
    r"Traceback|Exception|[A-Z][a-z]+Error\b|File \"|line \d+|has no attribute|not subscriptable|"
    r"unhashable|NoneType|<class|object at 0x|codec can't|/site-packages/|\.py\b"
)
JSON_TYPE = "application/json"

# --- values ---------------------------------------------------------------------------------------------

# Text a JSON body can carry but UTF-8 cannot: lone surrogates (json.dumps writes them as \ud800 escapes).
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
hostile_text = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.builds(lambda a, s: a + s, st.text(max_size=5), surrogates),
    st.text(st.characters(max_codepoint=0x1F), max_size=8),  # control characters
    st.sampled_from(
        ["", " ", "a:b", "../..", "%00", "\x00", "é", "😀" * 40, "ü" * 100, "null", "-1", "1e999"]
    ),
    st.integers(1, 20_000).map(lambda n: "x" * n),
)
hostile_ints = st.one_of(
    st.integers(-5, 5),
    st.integers(-(2**64), 2**64),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**53, 2**53 + 1, 2**63, 2**64, 10**400, -(10**400), 4000, 4999, 4503, 1000, 1001]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    hostile_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), surrogates), inner, max_size=4),
    ),
    max_leaves=12,
)


def deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# Parses (below the recursion limit), but nests deeper than check_data allows.
deep_values = st.integers(30, 400).map(deep)


def weighted(
    usual: st.SearchStrategy[Any], unusual: st.SearchStrategy[Any], one_in: int
) -> st.SearchStrategy[Any]:
    """``usual``, except for about one draw in ``one_in``."""
    return st.integers(1, one_in).flatmap(lambda n: unusual if n == one_in else usual)


def sometimes(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Plausible values most of the time (to get past the first check), anything at all otherwise."""
    return weighted(plausible, st.one_of(json_values, deep_values), 6)


# Plausible values, per kind of field.
users = st.one_of(
    st.sampled_from(["alice", "bob", "fuzz.er@x", "a-b_c", "x" * 100]),
    st.from_regex(r"[a-z0-9_.@\-]{1,12}", fullmatch=True),
)
rooms = st.one_of(
    st.sampled_from(["lobby", "fuzz", "a:b", "r.1"]), st.from_regex(r"[a-z0-9_.@\-]{1,12}", fullmatch=True)
)
channels = st.one_of(
    st.sampled_from(["room:lobby", "room:fuzz", "user:alice", "dm:alice:bob", "broadcast", "room:a:b"]),
    rooms.map(lambda r: f"room:{r}"),
)
topics = st.one_of(
    st.sampled_from(["news", "build.failed", "order:shipped"]),
    st.from_regex(r"[a-z.:]{1,12}", fullmatch=True),
)
notification_ids = st.one_of(st.from_regex(r"[0-9a-f]{21}", fullmatch=True), st.text(max_size=70), surrogates)
times = st.one_of(
    st.integers(0, 2**33),
    hostile_ints,
    st.floats(),
    st.sampled_from(
        [
            "2030-01-01T00:00:00Z",
            "1970-01-01",
            "9999-12-31T23:59:59+14:00",
            "0001-01-01T00:00:00-23:59",
            "now",
        ]
    ),
    st.text(max_size=70),
)
query_numbers = weighted(
    st.integers(-2, 300).map(str),
    st.one_of(
        hostile_ints.map(str),
        st.sampled_from(
            ["", "1.5", "1e3", "0x10", " 5", "+5", "1_000", "٣", "NaN", "-0", "1" * 5000, "true"]
        ),
        st.text(max_size=10),
    ),
    3,
)
flags = st.one_of(st.sampled_from(["1", "0", "true", "false", "yes", "no", "TRUE", ""]), st.text(max_size=6))


# --- requests -------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One request as hypothesis drew it."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def path_segment(value: str) -> str:
    # Lone surrogates go out as the bytes of their (invalid) UTF-8 form: the server must cope.
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


def path_value(plausible: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return weighted(plausible, hostile_text, 6).map(path_segment)


@st.composite
def bodies(draw: st.DrawFn, shaped: st.SearchStrategy[dict[str, Any]] | None) -> bytes | None:
    """A body: mostly the route's own shape (as JSON), else any JSON value, raw garbage or nothing."""
    usual = "shaped" if shaped is not None else "none"
    kind = draw(weighted(st.just(usual), st.sampled_from(["value", "raw", "none", "nested"]), 3))
    if kind == "shaped":
        assert shaped is not None
        return json.dumps(draw(shaped)).encode()
    if kind == "value":
        return json.dumps(draw(st.one_of(json_values, st.floats()))).encode()  # NaN, Infinity: invalid JSON
    if kind == "none":
        return None
    if kind == "nested":
        depth = draw(st.sampled_from([100_000, 5000]))  # beyond the parser's recursion limit
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + "1" + closer * draw(st.sampled_from([0, depth]))).encode()
    raw = [
        st.binary(max_size=64),
        st.sampled_from(
            [
                b"",
                b"{",
                b"{}",
                b"[]",
                b'"x"',
                b"null",
                b"1" * 5000,
                b'{"a": 1e999}',
                b"\xff\xfe{}",
                b'{"a": NaN}',
            ]
        ),
        st.just(b" " * 16 + b'{"ids": ["\xed\xa0\x80"]}'),  # a surrogate's bytes: invalid UTF-8
        st.just(b'{"x": "' + b"y" * (MAX_BODY_SIZE + 1) + b'"}'),  # over the body limit
    ]
    return draw(st.one_of(*raw))


def shape(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {k: sometimes(v) for k, v in required.items()},
        optional={k: sometimes(v) for k, v in optional.items()},
    )


audiences = weighted(
    st.one_of(
        st.fixed_dictionaries({"users": sometimes(st.lists(users, min_size=1, max_size=3))}),
        st.fixed_dictionaries({"topic": sometimes(topics)}),
        st.fixed_dictionaries({"all": sometimes(st.just(True))}),
    ),
    st.fixed_dictionaries({}, optional={"users": json_values, "topic": json_values, "all": json_values}),
    5,
)
notify_body = st.builds(
    lambda audience, rest: {**audience, **rest},
    audiences,
    shape(
        {"title": hostile_text},
        {
            "type": topics,
            "severity": st.sampled_from(["info", "success", "warn", "error", "fatal", "bad"]),
            "body": hostile_text,
            "data": json_values,
            "dedupe_key": hostile_text,
            "deliver_at": times,
        },
    ),
)

# Path, query and body per (method, route path): every HTTP route of the app must be here.
ROUTES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/publish"): {
        "body": shape({"channel": channels, "data": json_values}, {}),
    },
    ("GET", "/api/channels/{channel}/history"): {
        "params": {"channel": channels},
        "query": {
            "since_offset": query_numbers,
            "since_epoch": hostile_text,
            "limit": query_numbers,
            "reverse": flags,
            "before_offset": query_numbers,
        },
    },
    ("GET", "/api/channels/{channel}/presence"): {"params": {"channel": channels}},
    ("GET", "/api/users/{user}/presence"): {"params": {"user": users}},
    ("POST", "/api/users/{user}/disconnect"): {
        "params": {"user": users},
        "body": shape({}, {"code": st.integers(3990, 5010), "reason": hostile_text}),
    },
    ("POST", "/api/rooms/{room}"): {"params": {"room": rooms}, "body": shape({}, {"private": st.booleans()})},
    ("PUT", "/api/rooms/{room}/members/{user}"): {"params": {"room": rooms, "user": users}},
    ("DELETE", "/api/rooms/{room}/members/{user}"): {"params": {"room": rooms, "user": users}},
    ("POST", "/api/dev/token"): {"body": shape({"user": users}, {})},
    ("GET", "/healthz"): {},
    ("GET", "/readyz"): {},
    ("GET", "/metrics"): {},
    ("GET", "/api/openapi.json"): {},
    ("POST", "/api/notifications"): {"body": notify_body},
    ("PUT", "/api/topics/{topic}/subscribers/{user}"): {"params": {"topic": topics, "user": users}},
    ("DELETE", "/api/topics/{topic}/subscribers/{user}"): {"params": {"topic": topics, "user": users}},
    ("GET", "/api/users/{user}/notifications"): {
        "params": {"user": users},
        "query": {"unread_only": flags, "limit": query_numbers, "before": notification_ids},
    },
    ("POST", "/api/users/{user}/notifications/read"): {
        "params": {"user": users},
        "body": shape({"ids": st.lists(notification_ids, max_size=4)}, {"all": st.booleans()}),
    },
    ("GET", "/api/jobs"): {},
    ("GET", "/api/jobs/dead"): {},
    ("GET", "/api/nodes"): {},
    ("GET", "/admin"): {},
}


def app_routes(app: Starlette) -> list[tuple[str, str]]:
    """Every (method, path) the app routes to a handler (HEAD is Starlette's automatic twin of GET)."""
    return sorted(
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or ()) - {"HEAD"}
    )


def headers() -> st.SearchStrategy[dict[str, str]]:
    bad_auth = [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "Basic x"},
        {"authorization": "Bearer"},
    ]
    auth = weighted(st.just({"authorization": f"Bearer {API_KEY}"}), st.sampled_from(bad_auth), 12)
    content_type = weighted(
        st.just({"content-type": JSON_TYPE}),
        st.sampled_from(
            [{}, {"content-type": "text/plain"}, {"content-type": "application/json; charset=latin-1"},
             {"content-type": "multipart/form-data; boundary=x"}, {"content-type": "application/x-www-form-urlencoded"}]
        ),
        8,
    )  # fmt: skip
    return st.builds(lambda a, c: {**a, **c}, auth, content_type)


@st.composite
def calls(draw: st.DrawFn, route: tuple[str, str]) -> Call:
    method, template = route
    spec = ROUTES[route]  # a KeyError here: a new route needs a strategy
    path = template
    for name, plausible in spec.get("params", {}).items():
        path = path.replace("{" + name + "}", draw(path_value(plausible)))
    query_spec = spec.get("query", {})
    query = draw(st.fixed_dictionaries({}, optional=query_spec)) if query_spec else {}
    if draw(weighted(st.just(False), st.just(True), 8)):  # an unknown parameter, or a known one with any text
        query[draw(st.sampled_from([*query_spec, "x"]))] = draw(hostile_text)
    # A URL query is bytes percent-encoded: lone surrogates cannot be sent (the server would see U+FFFD).
    query = {name: value.encode("utf-8", "replace").decode() for name, value in query.items()}
    body = draw(bodies(spec.get("body")))
    return Call(method, path, query, body, draw(headers()))


# --- the harness ----------------------------------------------------------------------------------------

# What the app serves, read from the app itself (not from ROUTES): a new route gets fuzzed, or fails for want
# of a strategy.
APP_ROUTES = app_routes(create_app(node_settings()))


@dataclass
class Target:
    node: RunningNode
    http: httpx.AsyncClient
    errors: ErrorLog


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def target(redis_url: str) -> AsyncIterator[Target]:
    """One node for every route's examples (its own key prefix on the shared Valkey), dev mode and an API key."""
    settings = node_settings(redis_url=redis_url, key_prefix=f"t-{uuid.uuid4().hex[:12]}", dev=True)
    with error_log() as errors:
        async with (
            run_node(settings) as node,
            httpx.AsyncClient(base_url=node.http_url, timeout=10 * UNIT) as http,
        ):
            yield Target(node, http, errors)
        # Background work the requests started (fan-out jobs, scheduled notifications) must not fail either.
        assert not errors.records, errors.messages()


def check_response(call: Call, response: httpx.Response) -> None:
    where = f"{call.method} {call.path}?{call.query} -> {response.status_code} {response.text[:300]!r}"
    assert response.status_code < 500, where
    if response.status_code < 400:
        return
    if response.headers.get("content-type", "").startswith(JSON_TYPE):
        body = response.json()
        assert set(body) == {"error"} and body["error"]["code"] == response.status_code, where
        message = body["error"]["message"]
        assert isinstance(message, str) and message and not LEAK.search(message), where
    else:  # not ours: the static files' 404/405 for a path that left the API (an encoded "/"), uvicorn's 400
        assert not LEAK.search(response.text), where


async def send(target: Target, call: Call) -> httpx.Response:
    url = httpx.URL(target.node.http_url + call.path, params=call.query)
    return await target.http.request(call.method, url, content=call.body, headers=call.headers)


def fuzz_settings() -> settings:
    if EXAMPLES:
        return settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    return settings(
        max_examples=40,  # per route
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def test_every_route_has_a_strategy() -> None:
    """The fuzzer knows every HTTP route of the app, and nothing else: a new route needs a strategy here."""
    assert sorted(ROUTES) == APP_ROUTES


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("route", APP_ROUTES, ids=[f"{method} {path}" for method, path in APP_ROUTES])
@fuzz_settings()
@given(data=st.data())
async def test_hostile_requests(target: Target, route: tuple[str, str], data: st.DataObject) -> None:
    """Hostile paths, queries, bodies and headers for one route: below 500, a clean message, nothing at ERROR."""
    target.errors.clear()
    for call in data.draw(st.lists(calls(route), min_size=1, max_size=3)):
        check_response(call, await send(target, call))
    assert not target.errors.records, target.errors.messages()
    assert (await target.http.get("/healthz")).status_code == 200
