"""Bad input gets a 4xx with a clear message: never a 500, an ERROR in the log, or a broken close.

Each case was a 500 with a traceback (or a close the client saw as 1006) on a real node;
they run against one real node on the real Valkey, over real HTTP and WebSocket sockets.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.frames import Close

from loadtest.protocol_client import ProtocolClient
from tidings.server.gateway.auth import issue_token

from .support.logs import ErrorLog, error_log
from .support.node import API_KEY, SECRET, RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT

AUTH = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
SURROGATE = '"\\ud800"'  # JSON's escape for a lone surrogate: valid JSON, not valid Unicode

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def node(redis_url: str) -> AsyncIterator[RunningNode]:
    settings = node_settings(redis_url=redis_url, key_prefix=f"t-{uuid.uuid4().hex[:12]}")
    async with run_node(settings) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def http(node: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=5 * UNIT) as client:
        yield client


@pytest.fixture
def errors() -> Iterator[ErrorLog]:
    """Fails the test if the node logged anything at ERROR while it ran."""
    with error_log() as log:
        yield log
        assert not log.records, log.messages()


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == response.status_code, body
    return response.status_code, body["error"]["message"]


async def call(client: ProtocolClient, frame: str) -> dict[str, Any]:
    """Send one JSON command (as raw text, so it may hold escapes json.dumps would not make); its reply."""
    command_id = json.loads(frame)["id"]
    await client.ws.send(frame)
    while (message := await client.recv()).get("id") != command_id:
        pass
    return message


async def open_session(node: RunningNode, user: str) -> ProtocolClient:
    client = await ProtocolClient.open(node.ws_url, timeout=5 * UNIT)
    await client.connect(issue_token(user, SECRET))
    return client


async def closed_by_server(client: ProtocolClient) -> tuple[list[dict[str, Any]], Close | None]:
    """Read until the server closes; the messages seen and its close frame."""
    _, messages = await client.closed()
    return messages, client.close_frame


# --- HTTP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", ["-5", "-1", str(2**64)])
async def test_history_since_a_negative_or_huge_offset_is_400(
    http: httpx.AsyncClient, errors: ErrorLog, offset: str
) -> None:
    """GET .../history?since_offset=-5 on Redis: the WebSocket's rule (0 <= offset <= 2**53-1), as a 400."""
    response = await http.get(
        f"/api/channels/room:neg/history?since_epoch=e&since_offset={offset}", headers=AUTH
    )
    code, message = error_of(response)
    assert code == 400 and "since.offset" in message


@pytest.mark.parametrize("deliver_at", ["1" * 400, "-" + "1" * 400, "1e400", "253402300800"])
async def test_deliver_at_out_of_range_is_400(
    http: httpx.AsyncClient, errors: ErrorLog, deliver_at: str
) -> None:
    """A 400-digit deliver_at is refused before float() overflows on it."""
    body = '{"users": ["alice"], "title": "t", "deliver_at": ' + deliver_at + "}"
    code, message = error_of(await http.post("/api/notifications", content=body, headers=AUTH))
    assert code == 400 and "deliver_at" in message


@pytest.mark.parametrize(
    "path",
    [
        "/api/publish",
        "/api/notifications",
        "/api/rooms/deep",
        "/api/users/alice/disconnect",
        "/api/users/alice/notifications/read",
    ],
)
@pytest.mark.parametrize("opener", ["[", '{"a":'])
async def test_deeply_nested_body_is_400(
    http: httpx.AsyncClient, errors: ErrorLog, path: str, opener: str
) -> None:
    """A body nested beyond the JSON parser's recursion limit is 'not valid JSON', not a RecursionError."""
    code, message = error_of(await http.post(path, content=opener * 100_000, headers=AUTH))
    assert code == 400 and "JSON" in message


async def test_http_read_with_a_lone_surrogate_id_is_400(http: httpx.AsyncClient, errors: ErrorLog) -> None:
    """POST .../notifications/read {"ids": ["\\ud800"]} on Redis: a 400 naming ids, not a UnicodeEncodeError."""
    body = '{"ids": [' + SURROGATE + "]}"
    code, message = error_of(
        await http.post("/api/users/alice/notifications/read", content=body, headers=AUTH)
    )
    assert code == 400 and "ids" in message


async def test_http_disconnect_reason_with_a_lone_surrogate_is_400(
    http: httpx.AsyncClient, errors: ErrorLog
) -> None:
    """A close reason must be text a close frame can carry."""
    body = '{"code": 4503, "reason": ' + SURROGATE + "}"
    code, message = error_of(await http.post("/api/users/alice/disconnect", content=body, headers=AUTH))
    assert code == 400 and "reason" in message


# --- WebSocket ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ('{"id": 2, "op": "notifications", "before": ' + SURROGATE + "}", "before"),
        ('{"id": 2, "op": "read", "ids": [' + SURROGATE + "]}", "ids"),
        ('{"id": 2, "op": "read", "ids": ["ok", "x' + SURROGATE[1:] + "]}", "ids"),
    ],
)
async def test_lone_surrogate_in_an_identifier_is_400(
    node: RunningNode, errors: ErrorLog, frame: str, field: str
) -> None:
    """notifications.before and read.ids holding "\\ud800" get a 400 reply (redis-py cannot encode them)."""
    ws = await open_session(node, "surrogate")
    try:
        reply = await call(ws, frame)
        assert reply["error"]["code"] == 400 and field in reply["error"]["message"], reply
        assert "result" in await call(ws, '{"id": 3, "op": "ping"}')  # the connection goes on
    finally:
        await ws.close()


async def test_long_disconnect_reason_reaches_the_client_with_its_code(
    node: RunningNode, http: httpx.AsyncClient, errors: ErrorLog
) -> None:
    """POST /api/users/u/disconnect {"code": 4503, "reason": "ü"*100}: the client sees 4503, not 1006.

    200 bytes do not fit a close frame (123 at most); the reason is cut at a character boundary,
    and the disconnect push says the same as the close frame.
    """
    ws = await open_session(node, "longreason")
    body = {"code": 4503, "reason": "ü" * 100}
    response = await http.post("/api/users/longreason/disconnect", json=body, headers=AUTH)
    assert response.status_code == 200
    messages, closed = await closed_by_server(ws)
    assert closed is not None and closed.code == 4503, closed
    reason = closed.reason
    assert reason == "ü" * 61 and len(reason.encode()) <= 123
    assert [m for m in messages if m.get("push") == "disconnect"] == [
        {"push": "disconnect", "code": 4503, "reason": reason, "reconnect": False}
    ]


async def test_unknown_long_op_before_connect_closes_with_4500(node: RunningNode, errors: ErrorLog) -> None:
    """`unknown op` quoting a long op of 4-byte characters: the close still carries 4500 (terminal)."""
    async with ProtocolClient.connecting(node.ws_url, timeout=5 * UNIT) as client:
        await client.ws.send(json.dumps({"id": 1, "op": "\U0010ffff" * 40}))
        messages, closed = await closed_by_server(client)
    assert closed is not None and closed.code == 4500, closed
    assert closed.reason.startswith("unknown op") and len(closed.reason.encode()) <= 123
    assert [m["reason"] for m in messages if m.get("push") == "disconnect"] == [closed.reason]


# --- the one user-id rule -----------------------------------------------------------------------------


async def test_a_user_id_that_could_never_sign_in_is_refused_everywhere(
    http: httpx.AsyncClient, errors: ErrorLog
) -> None:
    """ "a:b" got notifications and topic subscriptions, but no token with sub "a:b" is ever accepted."""
    requests: list[tuple[str, str, Any]] = [
        ("POST", "/api/notifications", {"users": ["a:b"], "title": "t"}),
        ("PUT", "/api/topics/news/subscribers/a:b", None),
        ("GET", "/api/users/a:b/notifications", None),
        ("GET", "/api/users/a:b/presence", None),
        ("PUT", "/api/rooms/r/members/a:b", None),
        ("POST", "/api/publish", {"channel": "user:a:b", "data": 1}),
    ]
    for method, path, body in requests:
        response = await http.request(method, path, json=body, headers=AUTH)
        assert response.status_code == 400, (method, path, response.text)


async def test_dev_tokens_follow_the_same_user_id_rule(errors: ErrorLog) -> None:
    """/api/dev/token mints a token for every id the rule accepts (that id signs in), and for no other."""
    async with (
        run_node(node_settings(dev=True, api_keys=())) as dev_node,
        httpx.AsyncClient(base_url=dev_node.http_url, timeout=5 * UNIT) as client,
    ):
        response = await client.post("/api/dev/token", json={"user": "a.b@c"})
        assert response.status_code == 200, response.text
        ws = await ProtocolClient.open(dev_node.ws_url, timeout=5 * UNIT)
        try:
            reply = await call(ws, json.dumps({"id": 1, "op": "connect", "token": response.json()["token"]}))
            assert reply["result"]["user"] == "a.b@c"
        finally:
            await ws.close()
        for user in ("a:b", "x" * 101):
            code, message = error_of(await client.post("/api/dev/token", json={"user": user}))
            assert code == 400 and "user" in message
