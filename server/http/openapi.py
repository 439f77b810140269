"""The OpenAPI 3.1 document of the HTTP API, served unauthenticated at ``GET /api/openapi.json``.

Plain data: every route of ``routes.py`` and ``notify_routes.py`` (and this one) with its
parameters, body, responses and errors, and the Bearer API-key scheme; the schemas are in
``openapi_schemas.py``. tests/test_openapi.py validates the document, checks that it names
exactly the app's routes, and runs every example of docs/http-api.md against a live node,
checking each answer against the schema given here.
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.server.gateway.protocol import MAX_HISTORY_LIMIT, MAX_ID, MAX_NOTIFICATION_ID_LENGTH
from tidings.server.http.notify_routes import MAX_PAGE
from tidings.server.http.openapi_schemas import NOTIFY_SCHEMAS, SCHEMAS, Schema, ref
from tidings.server.http.routes import MAX_BODY_SIZE, endpoint
from tidings.server.node import NodeState

__all__ = ["OPENAPI_PATH", "document", "openapi_routes"]

OPENAPI_PATH = "/api/openapi.json"

_DESCRIPTION = f"""\
The HTTP API of a Tidings node, for backend services. JSON in, JSON out.

Every `/api/` route but `/api/dev/token` and this document needs `Authorization: Bearer <key>`,
one of `TIDINGS_API_KEYS`; with no key configured the API is closed, except in dev mode
(`TIDINGS_DEV=1`) where it is open. Every POST, and a PUT or DELETE that has a body, must say
`Content-Type: application/json` (else 415). A body is at most {MAX_BODY_SIZE} bytes (else 413).

Every error is `{{"error": {{"code": <the HTTP status>, "message": "..."}}}}`. A request whose
`Host` header is not allowed (`TIDINGS_ALLOWED_HOSTS`) gets 400 on any route.
docs/http-api.md has a runnable example of every operation."""

# --- errors: one reusable response per status --------------------------------------------------------

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is malformed; the message names the field at fault."),
    401: ("Unauthorized", "No API key, or not one of TIDINGS_API_KEYS."),
    404: ("NotFound", "Not available on this node (the dev token outside dev mode)."),
    413: ("PayloadTooLarge", f"The body exceeds {MAX_BODY_SIZE} bytes, or data a limit of its own."),
    415: ("UnsupportedMediaType", "The body was not declared Content-Type: application/json."),
    500: ("InternalError", "An unexpected failure; the node logged it."),
    503: (
        "Unavailable",
        "The backplane (Redis) is unavailable; nothing was done, the request may be retried.",
    ),
}


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error_responses() -> dict[str, Any]:
    return {
        name: {"description": description, "content": _json(ref("Error"))}
        for name, description in _ERRORS.values()
    }


# --- operations -------------------------------------------------------------------------------------

_AUTHENTICATED = (401, 500, 503)  # every authenticated operation may answer these
_WRITE = (*_AUTHENTICATED, 400, 413, 415)  # and these too when it takes a body


def _param(name: str, where: str, schema: Schema, description: str, *, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


_CHANNEL = _param("channel", "path", ref("Channel"), "The channel, e.g. room:lobby.")
_USER = _param("user", "path", ref("UserId"), "The user id.")
_ROOM = _param("room", "path", ref("RoomName"), "The room name (the channel is room:<name>).")
_TOPIC = _param("topic", "path", ref("Topic"), "The topic.")


def _operation(
    op_id: str,
    summary: str,
    tag: str,
    ok: tuple[str, str] | dict[str, Any],
    *,
    errors: tuple[int, ...] = _AUTHENTICATED,
    more: dict[str, Any] | None = None,
    params: tuple[Schema, ...] = (),
    body: tuple[str, bool] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    """One operation: ``ok`` is its 200 (a response, or the JSON schema's name and a description),
    ``more`` other responses of its own, ``body`` (schema name, required)."""
    if isinstance(ok, tuple):
        ok = {"description": ok[1], "content": _json(ref(ok[0]))}
    responses: dict[str, Any] = {"200": ok, **(more or {})}
    for status in sorted(set(errors)):
        responses[str(status)] = {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}
    result: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses}
    if params:
        result["parameters"] = list(params)
    if body is not None:
        result["requestBody"] = {"required": body[1], "content": _json(ref(body[0]))}
    if public:
        result["security"] = []
    return result


_HISTORY_PARAMS = (
    _CHANNEL,
    _param(
        "since_epoch", "query", {"type": "string"}, "With since_offset: read what came after this position."
    ),
    _param("since_offset", "query", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "See since_epoch."),
    _param(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY_LIMIT, "default": 100},
        "At most this many publications (a page is also bounded in bytes).",
    ),
    _param("reverse", "query", {"type": "boolean", "default": False}, "Newest first."),
    _param(
        "before_offset",
        "query",
        {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "Only publications before this offset (paging newest first).",
    ),
)

_NOTIFICATION_PARAMS = (
    _USER,
    _param("unread_only", "query", {"type": "boolean", "default": False}, "Only unread notifications."),
    _param(
        "limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}, "Page size."
    ),
    _param(
        "before",
        "query",
        {"type": "string", "minLength": 1, "maxLength": MAX_NOTIFICATION_ID_LENGTH},
        "A notification id (a page's cursor): read older ones.",
    ),
)

_CHANNEL_OPS = {
    "/api/publish": {
        "post": _operation(
            "publish",
            "Publish to a channel; subscribers on every node get it, and its history keeps it",
            "channels",
            ("StreamPosition", "Its position in the channel's stream."),
            errors=_WRITE,
            body=("PublishRequest", True),
        )
    },
    "/api/channels/{channel}/history": {
        "get": _operation(
            "history",
            "Read a channel's history, a page at a time",
            "channels",
            ("HistoryPage", "A page of publications and the channel's top position."),
            errors=(*_AUTHENTICATED, 400),
            params=_HISTORY_PARAMS,
        )
    },
    "/api/channels/{channel}/presence": {
        "get": _operation(
            "channelPresence",
            "Who is subscribed to a channel, on every node",
            "channels",
            ("ChannelPresence", "The members (bounded in bytes: complete false and total when cut short)."),
            errors=(*_AUTHENTICATED, 400),
            params=(_CHANNEL,),
        )
    },
    "/api/users/{user}/presence": {
        "get": _operation(
            "userPresence",
            "Whether a user is connected, with how many connections on which nodes",
            "users",
            ("UserPresence", "The user's presence."),
            errors=(*_AUTHENTICATED, 400),
            params=(_USER,),
        )
    },
    "/api/users/{user}/disconnect": {
        "post": _operation(
            "disconnectUser",
            "Close every connection of a user, on every node",
            "users",
            ("Disconnected", "Every node was told."),
            errors=_WRITE,
            params=(_USER,),
            body=("DisconnectRequest", False),
        )
    },
    "/api/rooms/{room}": {
        "post": _operation(
            "createRoom",
            "Create a room, or make it public or private (private ends non-members' subscriptions)",
            "rooms",
            ("Room", "The room as it is now."),
            errors=_WRITE,
            params=(_ROOM,),
            body=("RoomRequest", False),
        )
    },
    "/api/rooms/{room}/members/{user}": {
        "put": _operation(
            "addRoomMember",
            "Let a user read and write a private room",
            "rooms",
            ("RoomMember", "The user is a member."),
            errors=_WRITE,
            params=(_ROOM, _USER),
        ),
        "delete": _operation(
            "removeRoomMember",
            "Remove a user from a room; its live subscriptions to it end on every node",
            "rooms",
            ("RoomMember", "The user is no member."),
            errors=_WRITE,
            params=(_ROOM, _USER),
        ),
    },
}

_NOTIFY_OPS = {
    "/api/notifications": {
        "post": _operation(
            "notify",
            "Notify users, a topic's subscribers or everyone, now or at deliver_at",
            "notifications",
            ("NotifyResult", "Delivered (users) or enqueued as a fan-out job (topic, all, deliver_at)."),
            errors=_WRITE,
            body=("NotifyRequest", True),
        )
    },
    "/api/topics/{topic}/subscribers/{user}": {
        "put": _operation(
            "subscribeTopic",
            "Subscribe a user to a topic",
            "notifications",
            ("TopicSubscription", "Subscribed."),
            errors=_WRITE,
            params=(_TOPIC, _USER),
        ),
        "delete": _operation(
            "unsubscribeTopic",
            "Unsubscribe a user from a topic",
            "notifications",
            ("TopicSubscription", "Unsubscribed."),
            errors=_WRITE,
            params=(_TOPIC, _USER),
        ),
    },
    "/api/users/{user}/notifications": {
        "get": _operation(
            "listNotifications",
            "A user's inbox, newest first, a page at a time",
            "notifications",
            ("NotificationPage", "A page of the inbox and its unread count."),
            errors=(*_AUTHENTICATED, 400),
            params=_NOTIFICATION_PARAMS,
        )
    },
    "/api/users/{user}/notifications/read": {
        "post": _operation(
            "markRead",
            "Mark notifications read; the user's connections get the new unread count",
            "notifications",
            ("Unread", "The unread count now."),
            errors=_WRITE,
            params=(_USER,),
            body=("MarkReadRequest", True),
        )
    },
    "/api/jobs": {
        "get": _operation(
            "jobCounts",
            "The job queue across the cluster, and this node's worker",
            "jobs",
            ("JobCounts", "Counts."),
        )
    },
    "/api/jobs/dead": {
        "get": _operation(
            "deadJobs", "The newest dead-lettered jobs", "jobs", ("DeadJobs", "Dead letters, newest first.")
        )
    },
    "/api/nodes": {
        "get": _operation(
            "nodes", "The live nodes of the cluster with their numbers", "ops", ("Nodes", "The live nodes.")
        )
    },
}


_PUBLIC_OPS = {
    "/api/dev/token": {
        "post": _operation(
            "devToken",
            "Dev mode only: a client token for any user, without an API key",
            "dev",
            ("DevToken", "A token to connect to /ws with."),
            errors=(400, 404, 413, 415, 500),
            body=("DevTokenRequest", True),
            public=True,
        )
    },
    "/admin": {
        "get": _operation(
            "admin",
            "The ops page (it reads everything through the API, with the key)",
            "ops",
            {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
            errors=(),
            public=True,
        )
    },
    "/healthz": {
        "get": _operation(
            "healthz", "Liveness: the process answers", "ops", ("Health", "Alive."), errors=(), public=True
        )
    },
    "/readyz": {
        "get": _operation(
            "readyz",
            "Readiness: whether a load balancer should send traffic here",
            "ops",
            ("Readiness", "Ready."),
            errors=(),
            more={
                "503": {
                    "description": "Not ready: draining, or the backplane is down.",
                    "content": _json(ref("Readiness")),
                }
            },
            public=True,
        )
    },
    "/metrics": {
        "get": _operation(
            "metrics",
            "Prometheus metrics of this node (keep it off the public listener)",
            "ops",
            {
                "description": "The Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            errors=(500, 503),
            public=True,
        )
    },
    OPENAPI_PATH: {
        "get": _operation(
            "openapi",
            "This document",
            "ops",
            ("OpenApiDocument", "The OpenAPI 3.1 document."),
            errors=(),
            public=True,
        )
    },
}


def _components() -> dict[str, Any]:
    return {
        "schemas": {**SCHEMAS, **NOTIFY_SCHEMAS},
        "responses": _error_responses(),
        "securitySchemes": {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the node's TIDINGS_API_KEYS: Authorization: Bearer <key>.",
            }
        },
    }


@functools.cache
def document() -> dict[str, Any]:
    """The whole document (built once; callers must not change it)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tidings HTTP API", "version": "0.1.0", "description": _DESCRIPTION},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"apiKey": []}],
        "tags": [
            {"name": name} for name in ("channels", "users", "rooms", "notifications", "jobs", "dev", "ops")
        ],
        "paths": {**_CHANNEL_OPS, **_NOTIFY_OPS, **_PUBLIC_OPS},
        "components": _components(),
    }


async def openapi_json(request: Request, state: NodeState) -> Response:
    return JSONResponse(document())


def openapi_routes() -> list[Route]:
    return [Route(OPENAPI_PATH, endpoint(openapi_json, authenticated=False), methods=["GET"])]
