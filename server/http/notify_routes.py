"""The HTTP API of notifications, topics and jobs (DESIGN.md "HTTP API").

POST /api/notifications                          {users | topic | all, type, severity, title, body,
                                                  data, dedupe_key?, deliver_at?} → {id, recipients}
PUT | DELETE /api/topics/{topic}/subscribers/{user}
GET  /api/users/{user}/notifications             ?unread_only=&limit=&before= → {notifications, unread}
POST /api/users/{user}/notifications/read        {ids | all: true} → {unread}
GET  /api/jobs                                   cluster-wide counts, plus this node's worker
GET  /api/jobs/dead                              the newest dead letters

A bad request gets a 400 naming the field, and nothing is written: every body
is checked whole before the first write.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.server.channels import check_user
from tidings.server.gateway.protocol import MAX_READ_IDS, is_notification_id
from tidings.server.http.routes import ApiError, endpoint, read_json
from tidings.server.node import NodeState
from tidings.server.notify.notifier import check_topic, parse_notify_request

__all__ = ["notification_routes"]

MAX_PAGE = 200


async def notify(request: Request, state: NodeState) -> Response:
    body = await read_json(request)
    notify_request = parse_notify_request(body, now=time.time())
    return JSONResponse(await state["notifier"].notify(notify_request))


async def subscribe_topic(request: Request, state: NodeState) -> Response:
    topic, user = check_topic(request.path_params["topic"]), check_user(request.path_params["user"])
    await state["notifier"].store.subscribe(topic, user)
    return JSONResponse({"topic": topic, "user": user, "subscribed": True})


async def unsubscribe_topic(request: Request, state: NodeState) -> Response:
    topic, user = check_topic(request.path_params["topic"]), check_user(request.path_params["user"])
    await state["notifier"].store.unsubscribe(topic, user)
    return JSONResponse({"topic": topic, "user": user, "subscribed": False})


async def list_notifications(request: Request, state: NodeState) -> Response:
    user = check_user(request.path_params["user"])
    query = request.query_params
    unread_only = query.get("unread_only", "false").lower()
    if unread_only not in ("1", "0", "true", "false", "yes", "no"):
        raise ApiError(400, "unread_only must be true or false")
    try:
        limit = int(query.get("limit", "50"))
    except ValueError as exc:
        raise ApiError(400, "limit must be an integer") from exc
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, f"limit must be from 1 to {MAX_PAGE}")
    before = query.get("before") or None
    if before is not None and not is_notification_id(before):
        raise ApiError(400, "before must be a notification id")
    page = await state["notifier"].page(
        user,
        unread_only=unread_only in ("1", "true", "yes"),
        limit=limit,
        before=before,
        max_bytes=state["settings"].reply_budget,
    )
    return JSONResponse(page)


async def mark_read(request: Request, state: NodeState) -> Response:
    user = check_user(request.path_params["user"])
    body = await read_json(request)
    ids, read_all = body.get("ids", []), body.get("all", False)
    if not isinstance(read_all, bool):
        raise ApiError(400, "all must be a boolean")
    if (
        not isinstance(ids, list)
        or len(ids) > MAX_READ_IDS
        or not all(isinstance(i, str) and is_notification_id(i) for i in ids)
    ):
        raise ApiError(400, f"ids must be a list of at most {MAX_READ_IDS} notification ids")
    if not ids and not read_all:
        raise ApiError(400, "give ids or all: true")
    unread = await state["notifier"].read(user, ids, read_all=read_all)
    return JSONResponse({"unread": unread})


async def job_counts(request: Request, state: NodeState) -> Response:
    counts = (await state["jobs"].counts()).encode()
    worker = state["job_worker"]
    node = {"id": state["settings"].node_id, "jobs": worker is not None}
    if worker is not None:
        node.update(
            running=worker.running, done=worker.stats.done, failed=worker.stats.failed, lost=worker.stats.lost
        )
    return JSONResponse({**counts, "node": node})


async def dead_jobs(request: Request, state: NodeState) -> Response:
    letters = await state["jobs"].dead_letters(limit=100)
    return JSONResponse({"dead": [job.encode() for job in letters]})


def notification_routes() -> list[Route]:
    return [
        Route("/api/notifications", endpoint(notify), methods=["POST"]),
        Route("/api/topics/{topic}/subscribers/{user}", endpoint(subscribe_topic), methods=["PUT"]),
        Route("/api/topics/{topic}/subscribers/{user}", endpoint(unsubscribe_topic), methods=["DELETE"]),
        Route("/api/users/{user}/notifications", endpoint(list_notifications), methods=["GET"]),
        Route("/api/users/{user}/notifications/read", endpoint(mark_read), methods=["POST"]),
        Route("/api/jobs", endpoint(job_counts), methods=["GET"]),
        Route("/api/jobs/dead", endpoint(dead_jobs), methods=["GET"]),
    ]
