"""The schemas of the OpenAPI document (``openapi.py``): every body the HTTP API takes and returns.

Response objects forbid properties the document does not name, so a test that checks a live
answer against them (tests/test_openapi.py) notices a field added to a route but not here.
The limits come from the modules that enforce them.
"""

from __future__ import annotations

from typing import Any

from tidings.server.channels import _NAME, _USER  # the one user-id and channel-name rule
from tidings.server.gateway.protocol import MAX_ID, MAX_NOTIFICATION_ID_LENGTH, MAX_READ_IDS
from tidings.server.notify.notifier import (
    _NAME_RE,
    MAX_BODY,
    MAX_DATA_SIZE,
    MAX_EPOCH_SECONDS,
    MAX_TITLE,
    MAX_USERS_PER_REQUEST,
    SEVERITIES,
)

__all__ = ["NOTIFY_SCHEMAS", "SCHEMAS", "Schema", "ref"]

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: Schema, *, required: tuple[str, ...] = (), **extra: Any) -> Schema:
    """A JSON object with exactly these properties (the API adds none the document does not name)."""
    result: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        result["required"] = list(required)
    return {**result, **extra}


def _string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _integer(description: str, **extra: Any) -> Schema:
    return {"type": "integer", "description": description, **extra}


_USER_SCHEMA = _string("A user id: 1-100 ASCII letters, digits, '_', '.', '@' or '-'.", pattern=f"^{_USER}$")
_CHANNEL_SCHEMA = _string(
    "A channel: room:<name>, room:<name>:<sub>, user:<id>, dm:<a>:<b> (ids sorted) or broadcast.",
    maxLength=255,
    pattern=f"^(room:{_NAME}(:{_NAME})?|user:{_USER}|dm:{_USER}:{_USER}|broadcast)$",
)
_TOPIC_SCHEMA = _string("A topic: 1-200 letters, digits or _ . : @ -.", pattern=f"^{_NAME_RE.pattern}$")
_DATA_SCHEMA: Schema = {
    "description": "Any JSON value: 64-bit integers, finite numbers, valid Unicode, nested at most 32 deep."
}
_OFFSET_SCHEMA = _integer("A position in the channel's stream.", minimum=0, maximum=MAX_ID)

SCHEMAS: dict[str, Schema] = {
    "UserId": _USER_SCHEMA,
    "Channel": _CHANNEL_SCHEMA,
    "RoomName": _string(
        "A room name: 1-200 letters, digits, '_', '.', '@' or '-', maybe :<sub>.",
        pattern=f"^{_NAME}(:{_NAME})?$",
    ),
    "Topic": _TOPIC_SCHEMA,
    "OpenApiDocument": {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "description": "An OpenAPI 3.1 document.",
    },
    "Error": _object(
        {
            "error": _object(
                {
                    "code": _integer("The HTTP status again.", minimum=400, maximum=599),
                    "message": _string("What was wrong; safe to show, names the field at fault."),
                },
                required=("code", "message"),
            )
        },
        required=("error",),
    ),
    "StreamPosition": _object(
        {
            "epoch": _string("The stream's epoch; a new one means its history was lost."),
            "offset": _OFFSET_SCHEMA,
        },
        required=("epoch", "offset"),
        description="A position in a channel's stream.",
    ),
    "PublishRequest": _object(
        {"channel": ref("Channel"), "data": _DATA_SCHEMA}, required=("channel", "data")
    ),
    "Sender": _object(
        {"user": ref("UserId"), "client": _string("The connection id.")}, required=("user", "client")
    ),
    "Publication": _object(
        {
            "channel": ref("Channel"),
            "epoch": _string("The stream's epoch."),
            "offset": _OFFSET_SCHEMA,
            "data": _DATA_SCHEMA,
            "ts": _integer("Milliseconds since the Unix epoch, stamped by the publishing node."),
            "from": ref("Sender"),
        },
        required=("channel", "epoch", "offset", "data", "ts"),
    ),
    "HistoryCursor": {
        "description": "The query parameters of the next request, to read on from where this page stopped.",
        "oneOf": [
            _object({"before_offset": _OFFSET_SCHEMA}, required=("before_offset",)),
            _object(
                {"since_epoch": _string("The epoch."), "since_offset": _OFFSET_SCHEMA},
                required=("since_epoch", "since_offset"),
            ),
        ],
    },
    "HistoryPage": _object(
        {
            "epoch": _string("The channel's epoch now."),
            "offset": {**_OFFSET_SCHEMA, "description": "The channel's last offset now."},
            "publications": {"type": "array", "items": ref("Publication")},
            "cursor": ref("HistoryCursor"),
        },
        required=("epoch", "offset", "publications"),
        description="Publications, oldest first (newest first with reverse); cursor when some were left out.",
    ),
    "Member": _object(
        {
            "user": ref("UserId"),
            "client": _string("The connection id."),
            "node": _string("The node the connection is on."),
            "info": {"type": "object", "description": "What the connection's token put in its info claim."},
        },
        required=("user", "client", "node", "info"),
    ),
    "ChannelPresence": _object(
        {
            "channel": ref("Channel"),
            "members": {"type": "array", "items": ref("Member")},
            "complete": {
                "const": False,
                "description": "Present when members that did not fit were left out.",
            },
            "total": _integer("How many members there are, when some were left out.", minimum=0),
        },
        required=("channel", "members"),
    ),
    "UserPresence": _object(
        {
            "user": ref("UserId"),
            "online": {"type": "boolean"},
            "connections": _integer("Live connections of the user, on every node.", minimum=0),
            "nodes": {"type": "array", "items": {"type": "string"}, "description": "Node ids, sorted."},
        },
        required=("user", "online", "connections", "nodes"),
    ),
    "DisconnectRequest": _object(
        {
            "code": _integer("The WebSocket close code.", minimum=4000, maximum=4999, default=4503),
            "reason": _string("The close reason.", maxLength=120, default="disconnected by the server"),
        }
    ),
    "Disconnected": _object(
        {"user": ref("UserId"), "disconnected": {"const": True}}, required=("user", "disconnected")
    ),
    "RoomRequest": _object({"private": {"type": "boolean", "default": False}}),
    "Room": _object(
        {"room": _string("The room name."), "private": {"type": "boolean"}}, required=("room", "private")
    ),
    "RoomMember": _object(
        {"room": _string("The room name."), "user": ref("UserId"), "member": {"type": "boolean"}},
        required=("room", "user", "member"),
    ),
    "DevTokenRequest": _object({"user": ref("UserId")}, required=("user",)),
    "DevToken": _object(
        {"token": _string("A JWT (HS256) valid for 12 hours."), "user": ref("UserId")},
        required=("token", "user"),
    ),
    "Health": _object(
        {"status": {"const": "ok"}, "node": _string("The node id.")}, required=("status", "node")
    ),
    "Readiness": _object(
        {
            "ready": {"type": "boolean", "description": "The backplane is up and the node is not draining."},
            "node": _string("The node id."),
            "backplane": {"type": "boolean", "description": "The backplane (Redis) is reachable."},
        },
        required=("ready", "node", "backplane"),
    ),
}

NOTIFY_SCHEMAS: dict[str, Schema] = {  # the notification and job routes' own; the shared ones are in SCHEMAS
    "NotifyRequest": _object(
        {
            "users": {
                "type": "array",
                "items": ref("UserId"),
                "minItems": 1,
                "maxItems": MAX_USERS_PER_REQUEST,
            },
            "topic": ref("Topic"),
            "all": {"const": True, "description": "Every user that ever connected."},
            "type": {
                **_TOPIC_SCHEMA,
                "description": "What kind of notification (1-200 letters, digits or _ . : @ -).",
                "default": "notification",
            },
            "severity": {"enum": list(SEVERITIES), "default": "info"},
            "title": _string("The title.", minLength=1, maxLength=MAX_TITLE),
            "body": _string("The text.", maxLength=MAX_BODY, default=""),
            "data": {**_DATA_SCHEMA, "description": f"Any JSON value of at most {MAX_DATA_SIZE} bytes."},
            "dedupe_key": _string(
                "A repeat with this key within a day notifies nobody again.", minLength=1, maxLength=200
            ),
            "deliver_at": {
                "description": "When to deliver (at most a year ahead): epoch seconds or an ISO 8601 time (UTC if no offset).",
                "oneOf": [
                    {"type": "number", "minimum": 0, "maximum": MAX_EPOCH_SECONDS},
                    {"type": "string", "maxLength": 64},
                ],
            },
        },
        required=("title",),
        description="Exactly one audience: users, topic or all.",
        oneOf=[{"required": ["users"]}, {"required": ["topic"]}, {"required": ["all"]}],
    ),
    "NotifyResult": _object(
        {
            "id": _string("The notification id."),
            "recipients": _integer("How many users it goes to (for a topic or all: counted now).", minimum=0),
            "deliver_at": {"type": "number", "description": "Epoch seconds, when scheduled."},
            "duplicate": {"const": True, "description": "A repeat of an earlier dedupe_key: its result."},
        },
        required=("id", "recipients"),
    ),
    "TopicSubscription": _object(
        {"topic": ref("Topic"), "user": ref("UserId"), "subscribed": {"type": "boolean"}},
        required=("topic", "user", "subscribed"),
    ),
    "Notification": _object(
        {
            "id": _string("The notification id; ids sort by creation time."),
            "type": _string("The kind given."),
            "severity": {"enum": list(SEVERITIES)},
            "title": {"type": "string"},
            "body": {"type": "string"},
            "data": _DATA_SCHEMA,
            "ts": _integer("Milliseconds since the Unix epoch."),
            "read": {"type": "boolean"},
        },
        required=("id", "type", "severity", "title", "body", "data", "ts", "read"),
    ),
    "NotificationPage": _object(
        {
            "notifications": {"type": "array", "items": ref("Notification"), "description": "Newest first."},
            "unread": _integer("The inbox's unread count.", minimum=0),
            "cursor": _string("Pass as before to read on; present when the page is full or was cut short."),
        },
        required=("notifications", "unread"),
    ),
    "MarkReadRequest": _object(
        {
            "ids": {
                "type": "array",
                "maxItems": MAX_READ_IDS,
                "items": {"type": "string", "minLength": 1, "maxLength": MAX_NOTIFICATION_ID_LENGTH},
            },
            "all": {"type": "boolean", "description": "Mark every notification read."},
        },
        description="ids, or all: true.",
        anyOf=[{"required": ["ids"]}, {"required": ["all"]}],
    ),
    "Unread": _object({"unread": _integer("The inbox's unread count now.", minimum=0)}, required=("unread",)),
    "JobCounts": _object(
        {
            **{
                name: _integer(f"Jobs {name}, across the cluster.", minimum=0)
                for name in ("pending", "running", "delayed", "done", "failed", "dead")
            },
            "node": _object(
                {
                    "id": _string("This node's id."),
                    "jobs": {"type": "boolean", "description": "Whether this node runs jobs."},
                    **{
                        name: _integer(f"This node's worker: {name}.", minimum=0)
                        for name in ("running", "done", "failed", "lost")
                    },
                },
                required=("id", "jobs"),
            ),
        },
        required=("pending", "running", "delayed", "done", "failed", "dead", "node"),
    ),
    "Job": _object(
        {
            "id": _string("The job id."),
            "kind": _string("What the job does (notify: a fan-out)."),
            "attempts": _integer("Runs so far.", minimum=0),
            "enqueued_at": {"type": "number", "description": "Epoch seconds."},
            "error": _string("The last failure."),
        },
        required=("id", "kind", "attempts", "enqueued_at"),
    ),
    "NodeStats": _object(
        {
            "node": _string("The node id."),
            "incarnation": _string("This process of the node (node id and boot id)."),
            "started": {"type": "number", "description": "When the process started, epoch seconds."},
            "updated": {
                "type": "number",
                "description": "When its heartbeat wrote these numbers, epoch seconds.",
            },
            **{
                name: _integer(description, minimum=0)
                for name, description in (
                    ("connections", "Connected sessions now."),
                    ("channels", "Channels with a local subscriber now."),
                    ("subscriptions", "Subscriptions of its connections now."),
                    ("published", "Publications it sent, since it started."),
                    ("publications", "Publications it received for local subscribers, since it started."),
                    ("deliveries", "Frames it queued for subscribers, since it started."),
                    ("slow_disconnects", "Connections it closed as too slow (4008), since it started."),
                )
            },
        },
        required=(
            "node",
            "incarnation",
            "started",
            "updated",
            "connections",
            "channels",
            "subscriptions",
            "published",
            "publications",
            "deliveries",
            "slow_disconnects",
        ),
    ),
    "Nodes": _object(
        {
            "node": _string("The node that answered."),
            "time": {"type": "number", "description": "Its clock, epoch seconds."},
            "nodes": {
                "type": "array",
                "items": ref("NodeStats"),
                "description": "The live nodes, by node id.",
            },
        },
        required=("node", "time", "nodes"),
    ),
    "DeadJobs": _object(
        {"dead": {"type": "array", "items": ref("Job"), "description": "The newest 100, newest first."}},
        required=("dead",),
    ),
}
