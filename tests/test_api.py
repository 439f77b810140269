"""The HTTP API against a real uvicorn node, with httpx and the Publisher clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from loadtest.processes import free_port
from tidings.client import AsyncPublisher, Connection, Publisher, PublishError
from tidings.server.gateway.auth import TokenVerifier
from tidings.server.gateway.protocol import StreamPosition
from tidings.server.node import NodeState

from .support.node import API_KEY, SECRET, RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT

AUTH = {"authorization": f"Bearer {API_KEY}"}

# One node serves the whole module (starting and stopping uvicorn costs ~0.3 s); each test uses its
# own channels, and tests that need other settings or change the node's state start their own.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def node() -> AsyncIterator[RunningNode]:
    async with run_node(node_settings()) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def http(node: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=5 * UNIT) as client:
        yield client


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == response.status_code
    return response.status_code, body["error"]["message"]


# --- publish ----------------------------------------------------------------------------------------


async def test_publish_with_api_key_reaches_subscribers(
    node: RunningNode, http: httpx.AsyncClient, token
) -> None:  # type: ignore[no-untyped-def]
    """POST /api/publish returns {epoch, offset}; subscribers get it without a from (a backend sent it)."""
    async with Connection(node.ws_url, token("alice")) as alice:
        await alice.subscribe("room:news")
        body = {"channel": "room:news", "data": {"headline": "hi"}}
        first = await http.post("/api/publish", json=body, headers=AUTH)
        second = await http.post("/api/publish", json={"channel": "room:news", "data": 2}, headers=AUTH)
        assert first.status_code == 200 and second.status_code == 200
        assert first.json()["offset"] == 1 and second.json() == {"epoch": first.json()["epoch"], "offset": 2}
        push = await alice.publications("room:news", timeout=5 * UNIT)
        assert push["data"] == {"headline": "hi"} and push["offset"] == 1 and "from" not in push


async def test_backends_may_publish_where_clients_may_not(http: httpx.AsyncClient) -> None:
    """broadcast and user:<id> are read-only for clients, writable for backends."""
    for channel in ("broadcast", "user:alice", "dm:alice:bob"):
        response = await http.post("/api/publish", json={"channel": channel, "data": "x"}, headers=AUTH)
        assert response.status_code == 200, channel


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"authorization": "Bearer wrong-key"}, id="wrong-key"),
        pytest.param({"authorization": f"Basic {API_KEY}"}, id="wrong-scheme"),
        pytest.param({"authorization": API_KEY}, id="no-scheme"),
    ],
)
async def test_publish_without_a_valid_api_key_is_401(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """Without the key nothing is published."""
    response = await http.post(
        "/api/publish", json={"channel": "room:unauthorized", "data": 1}, headers=headers
    )
    assert error_of(response)[0] == 401
    history = await http.get("/api/channels/room:unauthorized/history", headers=AUTH)
    assert history.json()["publications"] == []


async def test_bearer_scheme_is_case_insensitive(http: httpx.AsyncClient) -> None:
    """RFC 7235: 'bearer <key>' is as good as 'Bearer <key>'."""
    response = await http.post(
        "/api/publish",
        json={"channel": "room:bearer", "data": 1},
        headers={"authorization": f"bearer {API_KEY}"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        pytest.param({"data": 1}, 400, "channel", id="no-channel"),
        pytest.param({"channel": 5, "data": 1}, 400, "channel", id="channel-int"),
        pytest.param({"channel": "nowhere", "data": 1}, 400, "channel", id="bad-channel"),
        pytest.param({"channel": "room:bad b", "data": 1}, 400, "channel", id="channel-with-space"),
        pytest.param({"channel": "room:bad"}, 400, "data", id="no-data"),
        pytest.param('{"channel": "room:bad", "data": NaN}', 400, "data", id="data-nan"),
        pytest.param('{"channel": "room:bad", "data": "\\ud800"}', 400, "data", id="data-lone-surrogate"),
        pytest.param({"channel": "room:bad", "data": 2**64}, 400, "data", id="data-int-too-big"),
        pytest.param(
            '{"channel": "room:bad", "data": ' + "[" * 40 + "]" * 40 + "}", 400, "data", id="data-too-deep"
        ),
        pytest.param({"channel": "room:bad", "data": "x" * 70_000}, 413, "data", id="data-too-large"),
        pytest.param("not json", 400, "JSON", id="not-json"),
        pytest.param("", 400, "JSON", id="empty-body"),
        pytest.param("[1, 2]", 400, "object", id="array-body"),
        pytest.param('"room:bad"', 400, "object", id="string-body"),
        pytest.param(
            "{" + '"channel": "room:bad", "data": "' + "y" * (1024 * 1024) + '"}',
            413,
            "body",
            id="body-over-1-MiB",
        ),
    ],
)
async def test_bad_publish_is_refused_naming_the_field(
    http: httpx.AsyncClient, body: object, status: int, field: str
) -> None:
    """Each refusal says which part of the request is wrong, and nothing is published."""
    content = body if isinstance(body, str) else json.dumps(body)
    response = await http.post(
        "/api/publish", content=content, headers={**AUTH, "content-type": "application/json"}
    )
    code, message = error_of(response)
    assert code == status and field in message, message
    assert "Traceback" not in message
    history = await http.get("/api/channels/room:bad/history", headers=AUTH)
    assert history.json()["publications"] == []


# --- history ----------------------------------------------------------------------------------------


async def test_history_limit_reverse_since(http: httpx.AsyncClient) -> None:
    """GET history pages like the history op: limit, reverse, since_epoch/since_offset."""
    for i in range(1, 6):
        await http.post("/api/publish", json={"channel": "room:h", "data": i}, headers=AUTH)

    async def offsets(**params: str | int) -> list[int]:
        response = await http.get("/api/channels/room:h/history", params=params, headers=AUTH)
        assert response.status_code == 200 and response.json()["offset"] == 5
        return [p["offset"] for p in response.json()["publications"]]

    everything = (await http.get("/api/channels/room:h/history", headers=AUTH)).json()
    epoch = everything["epoch"]
    assert [p["data"] for p in everything["publications"]] == [1, 2, 3, 4, 5]
    assert (
        everything["publications"][0]["channel"] == "room:h"
        and everything["publications"][0]["epoch"] == epoch
    )
    assert await offsets(limit=2) == [1, 2]
    assert await offsets(limit=2, reverse="true") == [5, 4]
    assert await offsets(since_epoch=epoch, since_offset=3) == [4, 5]
    assert await offsets(since_epoch=epoch, since_offset=5) == []


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/channels/room:h/history?limit=0", "limit"),
        ("/api/channels/room:h/history?limit=1001", "limit"),
        ("/api/channels/room:h/history?limit=ten", "limit"),
        ("/api/channels/room:h/history?since_offset=x", "since_offset"),
        ("/api/channels/nowhere/history", "channel"),
    ],
)
async def test_bad_history_requests_name_the_field(http: httpx.AsyncClient, path: str, field: str) -> None:
    """A bad query parameter or channel is a 400 that names it."""
    code, message = error_of(await http.get(path, headers=AUTH))
    assert code == 400 and field in message


async def test_history_needs_the_api_key(http: httpx.AsyncClient) -> None:
    """History is not public."""
    assert (await http.get("/api/channels/room:h/history")).status_code == 401


# --- health -----------------------------------------------------------------------------------------


async def test_healthz_and_readyz() -> None:
    """Both answer without a key; readyz fails with 503 once the node drains."""
    async with run_node(node_settings()) as node, httpx.AsyncClient(base_url=node.http_url) as http:
        await check_health(node, http)


async def check_health(node: RunningNode, http: httpx.AsyncClient) -> None:
    health = await http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["node"] == node.settings.node_id
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    state: NodeState = node.server.lifespan.state  # type: ignore[assignment]
    state["draining"].set()
    draining = await http.get("/readyz")
    assert draining.status_code == 503 and draining.json()["ready"] is False
    assert (await http.get("/healthz")).status_code == 200  # alive, just not taking traffic


# --- dev mode ---------------------------------------------------------------------------------------


async def test_nodes_lists_this_node_alone_without_redis(http: httpx.AsyncClient) -> None:
    """GET /api/nodes (the ops page's source): needs the key; an in-memory node lists itself."""
    assert (await http.get("/api/nodes")).status_code == 401
    response = await http.get("/api/nodes", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"node", "time", "nodes"} and len(body["nodes"]) == 1
    node = body["nodes"][0]
    assert node["node"] == body["node"] and node["incarnation"].startswith(f"{body['node']}~")
    numbers = ("connections", "channels", "subscriptions", "published", "publications", "deliveries",
               "slow_disconnects")  # fmt: skip
    assert set(node) == {"node", "incarnation", "started", "updated", *numbers}
    assert all(isinstance(node[name], int) and node[name] >= 0 for name in numbers)


async def test_dev_token_is_404_outside_dev_mode(http: httpx.AsyncClient) -> None:
    """Outside dev mode nobody can mint tokens over HTTP, key or not."""
    assert (await http.post("/api/dev/token", json={"user": "alice"})).status_code == 404
    assert (await http.post("/api/dev/token", json={"user": "alice"}, headers=AUTH)).status_code == 404


async def test_dev_mode_mints_tokens_that_connect_and_opens_the_api() -> None:
    """In dev mode without API keys: /api/dev/token gives a working token and the API is open."""
    settings = node_settings(dev=True, api_keys=(), jwt_secret=None)
    async with (
        run_node(settings) as node,
        httpx.AsyncClient(base_url=node.http_url, timeout=5 * UNIT) as http,
    ):
        response = await http.post("/api/dev/token", json={"user": "alice_1"})
        assert response.status_code == 200 and response.json()["user"] == "alice_1"
        async with Connection(node.ws_url, response.json()["token"]) as alice:
            assert alice.info["user"] == "alice_1"
        assert (await http.post("/api/publish", json={"channel": "room:a", "data": 1})).status_code == 200
        # The one user-id rule (channels.check_user): what a token's sub may be.
        for user in ("", "a b", "a:b", "x" * 101, "josé", 7, None):
            code, message = error_of(await http.post("/api/dev/token", json={"user": user}))
            assert code == 400 and "user" in message


async def test_dev_mode_with_api_keys_still_needs_them() -> None:
    """Dev mode opens the API only when no key is configured."""
    async with (
        run_node(node_settings(dev=True)) as node,
        httpx.AsyncClient(base_url=node.http_url, timeout=5 * UNIT) as http,
    ):
        assert (await http.post("/api/publish", json={"channel": "room:a", "data": 1})).status_code == 401
        response = await http.post("/api/dev/token", json={"user": "bob"})
        assert TokenVerifier(secret=SECRET).verify(response.json()["token"]).user == "bob"


async def test_no_api_keys_outside_dev_mode_closes_the_api() -> None:
    """Without keys and without dev mode, the API refuses everything rather than standing open."""
    async with (
        run_node(node_settings(api_keys=())) as node,
        httpx.AsyncClient(base_url=node.http_url, timeout=5 * UNIT) as http,
    ):
        for headers in ({}, {"authorization": "Bearer"}, {"authorization": "Bearer anything"}):
            response = await http.post("/api/publish", json={"channel": "room:a", "data": 1}, headers=headers)
            assert response.status_code == 401


# --- Python publishers ------------------------------------------------------------------------------


async def test_async_and_sync_publishers(node: RunningNode) -> None:
    """AsyncPublisher and Publisher return the position; a refusal raises PublishError with the status."""
    async with AsyncPublisher(node.http_url, api_key=API_KEY, timeout=5 * UNIT) as publisher:
        position = await publisher.publish("room:p", {"n": 1})
        assert isinstance(position, StreamPosition) and position.offset == 1
        with pytest.raises(PublishError) as caught:
            await publisher.publish("nowhere", 1)
        assert caught.value.status == 400 and not caught.value.temporary and "channel" in caught.value.message

    def sync_publish() -> StreamPosition:
        with Publisher(node.http_url, api_key=API_KEY, timeout=5 * UNIT) as publisher:
            return publisher.publish("room:p", {"n": 2})

    # The node runs in this event loop: the blocking client must run in a thread.
    assert (await asyncio.to_thread(sync_publish)).offset == 2

    async with AsyncPublisher(node.http_url, api_key="wrong", timeout=5 * UNIT) as publisher:
        with pytest.raises(PublishError) as caught:
            await publisher.publish("room:p", 1)
        assert caught.value.status == 401 and not caught.value.temporary


async def test_publisher_reports_an_unreachable_gateway_as_temporary() -> None:
    """No answer is status 0 and temporary: the caller may retry; nothing is silently dropped."""
    async with AsyncPublisher(
        f"http://127.0.0.1:{free_port()}", api_key=API_KEY, timeout=2 * UNIT
    ) as publisher:
        with pytest.raises(PublishError) as caught:
            await publisher.publish("room:p", 1)
    assert caught.value.status == 0 and caught.value.temporary


# --- cross-site requests ----------------------------------------------------------------------------

SIMPLE_TYPES = (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")


async def test_dev_mode_refuses_a_cross_site_post_and_publishes_nothing(token) -> None:  # type: ignore[no-untyped-def]
    """Without keys a dev node's API is open, yet a POST any web page can send (not JSON) gets 415."""
    async with (
        run_node(node_settings(dev=True, api_keys=())) as node,
        httpx.AsyncClient(base_url=node.http_url, timeout=5 * UNIT) as http,
        Connection(node.ws_url, token("alice")) as alice,
    ):
        await alice.subscribe("broadcast")
        body = json.dumps({"channel": "broadcast", "data": "pwned"}).encode()
        for content_type in SIMPLE_TYPES:
            headers = {} if content_type is None else {"content-type": content_type}
            code, message = error_of(await http.post("/api/publish", content=body, headers=headers))
            assert code == 415 and "application/json" in message, content_type
            response = await http.post("/api/dev/token", content=b'{"user": "x"}', headers=headers)
            assert response.status_code == 415 and "token" not in response.json()
        history = await http.get("/api/channels/broadcast/history")
        assert history.json()["offset"] == 0 and history.json()["publications"] == []
        sent = await http.post("/api/publish", content=body, headers={"content-type": "application/json"})
        assert sent.status_code == 200 and sent.json()["offset"] == 1
        push = await alice.publications("broadcast", timeout=5 * UNIT)
        assert push["offset"] == 1 and push["data"] == "pwned"  # the first thing broadcast carried


async def test_every_post_needs_json_even_with_an_empty_body(
    node: RunningNode, http: httpx.AsyncClient
) -> None:
    """POSTs always, PUT and DELETE when they carry a body; a charset parameter is fine."""
    for path in ("/api/users/u/disconnect", "/api/rooms/ct", "/api/notifications"):
        code, message = error_of(await http.post(path, headers=AUTH))
        assert code == 415 and "application/json" in message, path
    assert (await http.post("/api/users/u/disconnect", json={}, headers=AUTH)).status_code == 200
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        headers = {**AUTH, "content-type": content_type}
        assert (await http.post("/api/users/u/disconnect", content=b"", headers=headers)).status_code == 200
    assert (await http.put("/api/rooms/ct/members/u", headers=AUTH)).status_code == 200  # no body
    plain = {**AUTH, "content-type": "text/plain"}
    assert (await http.put("/api/rooms/ct/members/u", content=b"{}", headers=plain)).status_code == 415
    delete = await http.request("DELETE", "/api/rooms/ct/members/u", content=b"{}", headers=plain)
    assert delete.status_code == 415
    assert (await http.delete("/api/rooms/ct/members/u", headers=AUTH)).status_code == 200

    def disconnect_without_a_body() -> dict[str, object]:
        with Publisher(node.http_url, api_key=API_KEY, timeout=5 * UNIT) as publisher:
            return publisher.request("POST", "/api/users/u/disconnect")

    assert (await asyncio.to_thread(disconnect_without_a_body))["disconnected"] is True
