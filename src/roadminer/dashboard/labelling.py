"""The labelling page: the hard-example queue as a grid, labelled from the keyboard or by click.

Routes (relative to the dashboard's mount point):

* ``GET  label/``                  the page (``static/labelling.html`` + ``labelling.js``)
* ``GET  api/label/items``         ``?status=needs_human|unlabelled|labelled|human|teacher|simulator|skipped|all
  &limit=N``: the items (image id, each tier's probability, reasons, validator, time, current label)
* ``GET  api/label/image/{id}``    the queued image (its sha256 is the id)
* ``POST api/label``               ``{"id", "label": roadwork|no_roadwork|skip, "who"}``: a human label
* ``POST api/label/undo``          ``{"id", "who"}``: undo that item's latest human label

Who may use it: without ``dashboard.label_token`` only loopback clients that did not come through a
proxy (no ``Forwarded``/``X-Forwarded-For``), so the page stays local even on a miner bound to 0.0.0.0.
With a token every client must present it: ``?token=`` on the page once (it becomes an HttpOnly,
SameSite=Strict cookie) or the ``X-Roadminer-Token`` header. POSTs must be JSON from the same origin
(a cross-site form cannot label). Labels go to the durable label log (``roadminer.state.labels``).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from roadminer.state.labelling import STATUSES, label_item, list_items, status_of, undo_item
from roadminer.state.labels import LabelError, check_image_id
from roadminer.state.queue import sniff_image

STATIC_DIR = Path(__file__).resolve().parent / "static"
TOKEN_COOKIE = "roadminer_label_token"
TOKEN_HEADER = "X-Roadminer-Token"
MAX_ITEMS = 500
MAX_BODY = 4096

TOKEN_KEY: web.AppKey[str] = web.AppKey("label_token", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def access_problem(request: web.Request) -> tuple[int, str] | None:
    """``(status, message)`` when this request may not use the labelling page, else None."""
    token = request.app.get(TOKEN_KEY, "")
    if token:
        given = request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return 401, "the labelling page needs its token (open label/?token=... once, or send X-Roadminer-Token)"
        return None
    if "Forwarded" in request.headers or "X-Forwarded-For" in request.headers:
        return 403, "the labelling page came through a proxy and dashboard.label_token is not set; set a token"
    if not _is_loopback(request.remote):
        return 403, "the labelling page answers loopback clients only; set dashboard.label_token to expose it"
    return None


def _guarded(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        problem = access_problem(request)
        if problem is not None:
            return _json_error(*problem)
        return await handler(request)

    return wrapped


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:  # not a browser, or an old one: the JSON content type already rules out forms
        return True
    try:
        return urlsplit(origin).netloc == request.host
    except ValueError:
        return False


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise LabelError("send the label as JSON (Content-Type: application/json)")
    if not _same_origin(request):
        raise LabelError("cross-origin label requests are refused")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise LabelError(f"body over {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise LabelError(f"body over {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise LabelError("body is not valid JSON") from e
    if not isinstance(body, dict):
        raise LabelError("body must be a JSON object")
    for key in ("id", "label", "who"):
        if key in body and not isinstance(body[key], str):
            raise LabelError(f"{key} must be a string")
    return body


def _state(request: web.Request) -> Any:
    from roadminer.dashboard.app import STATE_KEY

    return request.app[STATE_KEY]


async def page(request: web.Request) -> web.StreamResponse:
    token = request.app.get(TOKEN_KEY, "")
    given = request.query.get("token")
    if token and given is not None:
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _json_error(401, "wrong token")
        resp = web.HTTPFound(request.rel_url.with_query({}).path)  # drop the token from the address bar
        resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        raise resp
    problem = access_problem(request)
    if problem is not None:
        return web.Response(status=problem[0], text=problem[1] + "\n", content_type="text/plain")
    return web.FileResponse(STATIC_DIR / "labelling.html", headers={"Cache-Control": "no-store"})


async def items(request: web.Request) -> web.Response:
    status = request.query.get("status", "needs_human")
    if status not in STATUSES:
        return _json_error(400, f"status must be one of {', '.join(STATUSES)}")
    try:
        limit = int(request.query.get("limit", "120"))
    except ValueError:
        return _json_error(400, "limit must be an integer")
    limit = max(1, min(limit, MAX_ITEMS))
    everything = await list_items(_state(request).queue, "all")  # one pass: the page and its counts
    got = [i for i in everything if status_of(i, status)][:limit]
    counts = {s: sum(1 for i in everything if status_of(i, s)) for s in ("needs_human", "labelled", "all")}
    return web.json_response({"status": status, "items": [i.to_json() for i in got], "counts": counts})


async def image(request: web.Request) -> web.Response:
    try:
        h = check_image_id(request.match_info["id"])
    except LabelError as e:
        return _json_error(400, str(e))
    data = await _state(request).queue.image(h)
    if data is None:
        return _json_error(404, "image not stored (expired or never queued)")
    return web.Response(
        body=data,
        content_type=sniff_image(data)[0],
        headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


async def post_label(request: web.Request) -> web.Response:
    try:
        body = await _json_body(request)
        item, changed = await label_item(
            _state(request).queue, body.get("id", ""), body.get("label", ""), body.get("who") or "human"
        )
    except LabelError as e:
        return _json_error(400, str(e))
    return web.json_response({"item": item.to_json(), "changed": changed})


async def post_undo(request: web.Request) -> web.Response:
    try:
        body = await _json_body(request)
        item, changed = await undo_item(_state(request).queue, body.get("id", ""), body.get("who") or "human")
    except LabelError as e:
        return _json_error(400, str(e))
    return web.json_response({"item": item.to_json(), "changed": changed})


async def _redirect_to_slash(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.rel_url.path + "/" + (f"?{request.query_string}" if request.query_string else ""))


def add_labelling(app: web.Application, settings: Any = None) -> None:
    """Add the labelling page and its API to a dashboard app."""
    token = getattr(getattr(settings, "dashboard", None), "label_token", None) or ""
    app[TOKEN_KEY] = str(token)
    app.router.add_get("/label", _redirect_to_slash)
    app.router.add_get("/label/", page)
    app.router.add_get("/label/labelling.js", _guarded(_static("labelling.js", "text/javascript")))
    app.router.add_get("/api/label/items", _guarded(items))
    app.router.add_get("/api/label/image/{id}", _guarded(image))
    app.router.add_post("/api/label", _guarded(post_label))
    app.router.add_post("/api/label/undo", _guarded(post_undo))


def _static(name: str, content_type: str) -> Handler:
    async def serve(_: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    return serve
