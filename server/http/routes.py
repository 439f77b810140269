"""The HTTP API for backend services (DESIGN.md "HTTP API").

JSON in, JSON out; errors are ``{"error": {"code", "message"}}``. Every
``/api/`` route but the dev token needs ``Authorization: Bearer <api key>``;
with no key configured the API is closed, except in dev mode where it is open.
Every POST (and a PUT or DELETE with a body) must say ``Content-Type:
application/json``, else 415, even with an empty body: a browser sends no other
type cross-site without a CORS preflight, which this API never grants.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.server.channels import Channel, check_user
from tidings.server.errors import StoreUnavailable, TidingsError
from tidings.server.gateway.auth import check_api_key, issue_token
from tidings.server.gateway.commands import history_result, presence_result
from tidings.server.gateway.protocol import (
    MAX_HISTORY_LIMIT,
    MAX_ID,
    ProtocolError,
    StreamPosition,
    check_data,
    is_unicode,
)
from tidings.server.http.metrics import metrics_endpoint
from tidings.server.node import NodeState

__all__ = ["ApiError", "routes"]

logger = logging.getLogger("tidings.api")

MAX_BODY_SIZE = 1024 * 1024


class ApiError(TidingsError):
    """An HTTP error with a message that is safe to return."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message}}, status_code=status)


Handler = Callable[[Request, NodeState], Awaitable[Response]]


def endpoint(handler: Handler, *, authenticated: bool = True) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``handler``: API key check, node state lookup, and errors as JSON."""

    async def wrapped(request: Request) -> Response:
        state = cast(NodeState, request.scope["state"])  # lifespan state (see app.py)
        settings = state["settings"]
        if (
            authenticated
            and not (settings.dev and not settings.api_keys)
            and not check_api_key(
                request.headers.get("authorization"), [k.reveal() for k in settings.api_keys]
            )
        ):
            return error_response(401, "missing or invalid API key")
        if _needs_json(request) and not _is_json(request.headers.get("content-type")):
            return error_response(415, "Content-Type must be application/json")
        try:
            return await handler(request, state)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        except ProtocolError as exc:
            return error_response(exc.code, exc.message)
        except StoreUnavailable:
            return error_response(503, "backplane unavailable")
        except Exception:
            logger.exception("%s %s failed", request.method, request.url.path)
            return error_response(500, "internal error")

    return wrapped


def _needs_json(request: Request) -> bool:
    """Whether the request must declare a JSON body: every POST, and a PUT/DELETE/PATCH that has a body.

    A web page on any site may send a POST with a text/plain, form or multipart body without
    asking first (a CORS "simple request"); application/json makes the browser ask (preflight),
    and the API answers no CORS preflight. So requiring it refuses cross-site writes even where
    the API is open (dev mode without keys), whatever the route does with its body.
    """
    if request.method == "POST":
        return True
    if request.method not in ("PUT", "DELETE", "PATCH"):
        return False
    length = request.headers.get("content-length")
    return "transfer-encoding" in request.headers or (length is not None and length.strip() != "0")


def _is_json(content_type: str | None) -> bool:
    """``application/json``, with or without parameters (``; charset=utf-8``)."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == "application/json"


async def read_json(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, or ApiError 400/413.

    The size is checked while reading (and from Content-Length first): an oversized body is refused
    without being buffered whole.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_SIZE:
        raise ApiError(413, f"body exceeds {MAX_BODY_SIZE} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_SIZE:
            raise ApiError(413, f"body exceeds {MAX_BODY_SIZE} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if optional and not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to parse
        raise ApiError(400, "body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "body must be a JSON object")
    return value


async def publish(request: Request, state: NodeState) -> Response:
    body = await read_json(request)
    channel = Channel.parse(body.get("channel")).text
    if "data" not in body:
        raise ApiError(400, "data is required")
    data = body["data"]
    check_data(data)
    if len(json.dumps(data)) > state["settings"].max_message_size:
        raise ApiError(413, "data exceeds TIDINGS_MAX_MESSAGE_SIZE")
    started = time.perf_counter()
    position = await state["backplane"].publish(channel, data)
    state["runner"].metrics.publish_latency.observe(time.perf_counter() - started)
    assert position is not None
    return JSONResponse(position.encode())


async def history(request: Request, state: NodeState) -> Response:
    channel = Channel.parse(request.path_params["channel"]).text
    query = request.query_params
    since = None
    try:
        offset = int(query["since_offset"]) if "since_offset" in query else None
        limit = int(query.get("limit", "100"))
    except ValueError as exc:
        raise ApiError(400, "since_offset and limit must be integers") from exc
    if offset is not None:
        # The WebSocket's rule: 0 <= offset <= MAX_ID (a negative one made an invalid stream id on Redis).
        position = {"epoch": query.get("since_epoch", ""), "offset": offset}
        since = StreamPosition.parse(position, field_name="since")
    if not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise ApiError(400, f"limit must be from 1 to {MAX_HISTORY_LIMIT}")
    reverse = query.get("reverse", "false").lower() in ("1", "true", "yes")
    before = _query_offset(query.get("before_offset"), "before_offset")
    page = await state["backplane"].history(
        channel,
        since=since,
        limit=limit,
        reverse=reverse,
        before=before,
        max_bytes=state["settings"].reply_budget,
    )
    result = history_result(page, reverse=reverse)
    if "cursor" in result:  # as query parameters of the next request
        cursor = result["cursor"]
        result["cursor"] = (
            {"before_offset": cursor["before"]}
            if "before" in cursor
            else {"since_epoch": cursor["since"]["epoch"], "since_offset": cursor["since"]["offset"]}
        )
    return JSONResponse(result)


def _query_offset(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 16 or not 0 < int(raw) <= MAX_ID:
        raise ApiError(400, f"{name} must be a positive integer")
    return int(raw)


def _room(request: Request) -> str:
    return Channel.room(request.path_params["room"]).name


def _user(request: Request) -> str:
    return check_user(request.path_params["user"])


async def presence(request: Request, state: NodeState) -> Response:
    channel = Channel.parse(request.path_params["channel"]).text
    members = await state["presence"].members(channel)
    return JSONResponse(
        {"channel": channel, **presence_result(members, max_bytes=state["settings"].reply_budget)}
    )


async def user_presence(request: Request, state: NodeState) -> Response:
    user = _user(request)
    members = await state["presence"].members(Channel.personal(user).text)
    nodes = sorted({m.node for m in members})
    return JSONResponse({"user": user, "online": bool(members), "connections": len(members), "nodes": nodes})


async def create_room(request: Request, state: NodeState) -> Response:
    room = _room(request)
    body = await read_json(request, optional=True)
    private = body.get("private", False)
    if not isinstance(private, bool):
        raise ApiError(400, "private must be a boolean")
    await state["rooms"].directory.create(room, private=private)
    await state["control"].broadcast("invalidate_room", room=room)
    return JSONResponse({"room": room, "private": private})


async def add_room_member(request: Request, state: NodeState) -> Response:
    room, user = _room(request), _user(request)
    await state["rooms"].directory.add_member(room, user)
    await state["control"].broadcast("invalidate_room", room=room)
    return JSONResponse({"room": room, "user": user, "member": True})


async def remove_room_member(request: Request, state: NodeState) -> Response:
    room, user = _room(request), _user(request)
    await state["rooms"].directory.remove_member(room, user)
    # One message does both on every node: drop the cached answer, end the user's live subscriptions.
    await state["control"].broadcast("kick", user=user, channel=Channel.room(room).text)
    return JSONResponse({"room": room, "user": user, "member": False})


async def disconnect_user(request: Request, state: NodeState) -> Response:
    user = _user(request)
    body = await read_json(request, optional=True)
    code = body.get("code", 4503)
    if not isinstance(code, int) or isinstance(code, bool) or not 4000 <= code <= 4999:
        raise ApiError(400, "code must be a close code from 4000 to 4999")
    reason = body.get("reason", "disconnected by the server")
    if not isinstance(reason, str) or len(reason) > 120 or not is_unicode(reason):
        raise ApiError(400, "reason must be a string of at most 120 characters")
    await state["control"].broadcast("disconnect_user", user=user, code=code, reason=reason)
    return JSONResponse({"user": user, "disconnected": True})


async def nodes(request: Request, state: NodeState) -> Response:
    """The live nodes with their numbers (cluster/nodes.py); rates are for the reader to compute."""
    listed = await state["nodes"].live()
    return JSONResponse({"node": state["settings"].node_id, "time": round(time.time(), 3), "nodes": listed})


async def dev_token(request: Request, state: NodeState) -> Response:
    settings = state["settings"]
    if not settings.dev or settings.jwt_secret is None:
        raise ApiError(404, "not found")
    body = await read_json(request)
    user = check_user(body.get("user"))  # the rule the token's sub must follow to sign in
    return JSONResponse(
        {"token": issue_token(user, settings.jwt_secret.reveal(), ttl=12 * 3600), "user": user}
    )


async def healthz(request: Request, state: NodeState) -> Response:
    return JSONResponse({"status": "ok", "node": state["settings"].node_id})


async def readyz(request: Request, state: NodeState) -> Response:
    ready = state["backplane"].ready and not state["draining"].is_set()
    body = {"ready": ready, "node": state["settings"].node_id, "backplane": state["backplane"].ready}
    return JSONResponse(body, status_code=200 if ready else 503)


def routes() -> list[Route]:
    return [
        Route("/api/publish", endpoint(publish), methods=["POST"]),
        Route("/api/channels/{channel}/history", endpoint(history), methods=["GET"]),
        Route("/api/channels/{channel}/presence", endpoint(presence), methods=["GET"]),
        Route("/api/users/{user}/presence", endpoint(user_presence), methods=["GET"]),
        Route("/api/users/{user}/disconnect", endpoint(disconnect_user), methods=["POST"]),
        Route("/api/rooms/{room}", endpoint(create_room), methods=["POST"]),
        Route("/api/rooms/{room}/members/{user}", endpoint(add_room_member), methods=["PUT"]),
        Route("/api/rooms/{room}/members/{user}", endpoint(remove_room_member), methods=["DELETE"]),
        Route("/api/nodes", endpoint(nodes), methods=["GET"]),
        Route("/api/dev/token", endpoint(dev_token, authenticated=False), methods=["POST"]),
        Route("/healthz", endpoint(healthz, authenticated=False), methods=["GET"]),
        Route("/readyz", endpoint(readyz, authenticated=False), methods=["GET"]),
        Route("/metrics", endpoint(metrics_endpoint, authenticated=False), methods=["GET"]),
    ]
