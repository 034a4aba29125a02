"""Live results: POST /api/face/sessions/{session_id}/live makes a live search from a selfie, or from the
live_token a search answered (its probe face sealed: core/live_tokens.py); GET
.../live/{live_id}/events streams its new matches as Server-Sent Events (the same match objects as search),
resumable with Last-Event-ID; DELETE .../live/{live_id} ends it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from datetime import UTC, datetime

import numpy as np
from aiohttp import web

from ..core import live, live_tokens
from ..errors import BadRequest, NotReady
from . import multipart
from .access import current_key, signing_keys
from .appkeys import SERVICES
from .common import number, ok
from .route_params import route_id
from .search import match_json

_NOT_AFTER = 2**63 - 1
_END = b"event: end\ndata: {}\n\n"


async def _heartbeats_until_woken(
    response: web.StreamResponse, wake: asyncio.Event, every_s: float, expires_at: datetime
) -> bool:
    """A comment line every every_s until the stream is woken (True), or until the live search expires. The
    first comes a random part of every_s earlier: streams opened together (a node's guests reconnecting to
    another after it went) would otherwise send theirs together every every_s, each burst holding the event
    loop for every stream at once (benchmarks/live.py)."""
    wait_s = every_s * random.uniform(0.5, 1.0)
    while True:
        try:
            async with asyncio.timeout(wait_s):  # no task per wait, unlike wait_for
                await wake.wait()
            return True
        except TimeoutError:
            if datetime.now(UTC) >= expires_at:
                return False
            await response.write(b": heartbeat\n\n")
            wait_s = every_s


async def create_live_search(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = services.settings
    session_id = route_id(request, "session_id")
    selfie: bytes | None = None
    token: str | None = None
    fields: dict[str, str] = {}
    async for part in multipart.parts(request):
        if part.name == "image":
            selfie = await multipart.read_all(part, settings.max_probe_bytes)
        elif part.name == "probe_token":
            token = await multipart.read_field(part, live_tokens.MAX_CHARS)
        elif part.name == "limit":
            fields[part.name] = await multipart.read_field(part)
        else:
            await multipart.skip(part)
    if (selfie is None) == (token is None):
        raise BadRequest(
            "send one of image (the guest's selfie as a multipart file part) or probe_token (a search's "
            "live_token), not both"
            if selfie is not None
            else "image or probe_token is required: the guest's selfie, or the live_token a search answered"
        )
    limit = number(fields.get("limit"), "limit", int, 1, settings.search_max_limit)
    key = current_key(request)
    args = (
        settings.match_threshold,
        settings.search_default_limit if limit is None else int(limit),
        None if key is None else key.prefix,
    )
    if token is not None:
        # the face a search embedded, handed back sealed: no inference, so no search admission either (the
        # route's budget still applies: each call writes a live search and searches the index)
        embedding = _unsealed(request, token, session_id)
        created = await live.create(services, session_id, embedding, *args)
    else:
        if not selfie:
            raise BadRequest("image is empty: the guest's selfie as a multipart file part")
        with services.admission.searches.admit():
            created = await live.create_from_selfie(services, session_id, selfie, *args)
    return ok(
        {
            "live_id": created.live.id,
            "expires_at": created.live.expires_at.isoformat(),
            "matches": [match_json(request, m) for m in created.matches],
        },
        status=201,
    )


def _unsealed(request: web.Request, token: str, session_id: int) -> np.ndarray:
    keys = signing_keys(request)
    if keys is None:  # not loaded yet: no token can be told genuine
        raise NotReady("the service is starting; try again in a moment")
    services = request.app[SERVICES]
    dim, models = services.models.engine.embedding_dim, services.settings.model_pack
    return live_tokens.unseal(keys, token, session_id, dim, time.time(), models)


async def delete_live_search(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    await live.delete(services, route_id(request, "session_id"), route_id(request, "live_id"))
    return web.Response(status=204)


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > _NOT_AFTER:
        raise BadRequest(f"Last-Event-ID must be the id of an event this stream sent (got {raw[:40]!r})")
    return int(raw)


async def live_events(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    session_id, live_id = route_id(request, "session_id"), route_id(request, "live_id")
    after = _last_event_id(request)
    found = await live.require(services, session_id, live_id)  # 404 as JSON, before the stream starts
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx passes each event on at once
        }
    )
    hub = services.live
    heartbeat = services.settings.live_heartbeat_s
    with hub.watch(session_id, live_id) as wake:
        await response.prepare(request)
        # the client learns how soon to reconnect, and that the stream is open before any event
        await response.write(b"retry: 2000\n\n")
        while not hub.closed:
            wake.clear()  # before reading: a wake-up during the read reads again
            alive, matches = await live.new_matches(services, session_id, live_id, after)
            if not alive:
                await response.write(_END)
                break
            for event_id, match in matches:
                data = json.dumps(match_json(request, match), separators=(",", ":"))
                await response.write(f"id: {event_id}\nevent: match\ndata: {data}\n\n".encode())
                after = event_id
            if len(matches) == live.STREAM_BATCH:
                continue  # more are waiting
            # woken by an announcement (or the listener's catch-up) only: a heartbeat costs no query
            if not await _heartbeats_until_woken(response, wake, heartbeat, found.expires_at):
                await response.write(_END)
                break
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
