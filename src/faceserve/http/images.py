"""Images of a session: upload, list, delete, resolve an identity, and legacy path URLs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from aiohttp import web

from .. import db, inputs, layout
from ..core import deletes, face_sessions, ingest
from ..errors import BadRequest, ImageNotFound
from . import multipart
from .access import require_key_sees
from .appkeys import SERVICES, URLS
from .common import image_url, ok, query_int
from .parsing import path_text, query_text
from .route_params import route_id


def image_json(request: web.Request, image: db.ImageRecord) -> dict[str, Any]:
    return {
        "image_id": image.id,
        "identity": image.identity,
        "original_name": image.original_name,
        "faces": image.face_count,
        "url": image_url(request, image.id),
        "content_type": image.content_type,
        "byte_size": image.byte_size,
        "width": image.width,
        "height": image.height,
        "created_at": image.created_at.isoformat(),
    }


async def _files(request: web.Request) -> AsyncGenerator[tuple[str, AsyncIterator[bytes]], None]:
    """Each part named `file`, as (its name, its bytes); other parts are skipped."""
    async for part in multipart.parts(request):
        if part.name != "file":
            await multipart.skip(part)
            continue
        # informational only (the stored name is made from the hash): cleaned, never a reason to refuse
        yield inputs.cleaned_text(part.filename or "") or "upload", multipart.chunks(part)


async def upload_images(request: web.Request) -> web.Response:
    """Each part named `file` is streamed to disk, checked and embedded before the next is read; they are
    recorded once the body has ended with its closing boundary, all or none (core/ingest.py)."""
    session_id = route_id(request, "session_id")
    async with contextlib.aclosing(_files(request)) as files:
        outcomes = await ingest.upload(request.app[SERVICES], session_id, files)
    return ok({"images": [{**image_json(request, o.image), "created": o.created} for o in outcomes]}, status=201)


async def list_images(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = services.settings
    session_id = route_id(request, "session_id")
    await face_sessions.require_session(services, session_id)
    limit = query_int(request, "limit", settings.page_default_limit, 1, settings.page_max_limit)
    after = query_int(request, "after", 0, 0, 2**63 - 1)
    images = await db.list_images(services.pool, session_id, after, limit)
    next_after = images[-1].id if len(images) == limit else None
    return ok({"images": [image_json(request, i) for i in images], "next_after": next_after})


async def delete_image(request: web.Request) -> web.Response:
    image_id = route_id(request, "image_id")
    image = await deletes.delete_image(request.app[SERVICES], image_id)
    return ok({"image_id": image.id, "identity": image.identity, "deleted": True})


async def resolve(request: web.Request) -> web.Response:
    identity = query_text(request, "path")
    parsed = layout.parse_identity(identity)
    if parsed is None:
        raise BadRequest("path must look like '{session_id}/db/{file name}'")
    # the key's session before the lookup: a 404 for another session's path would say what it holds
    require_key_sees(request, parsed[0])
    image = await db.find_image_by_path(request.app[SERVICES].pool, layout.file_path(*parsed))
    if image is None:
        raise ImageNotFound(f"no image has the path {identity!r}")
    return ok({"image_id": image.id, "identity": image.identity, "url": image_url(request, image.id)})


async def legacy_redirect(request: web.Request) -> web.Response:
    """Old app builds asked for /storage/face_sessions/{id}/db/{name}; send them to the image by id."""
    session_id = route_id(request, "session_id")
    name = path_text(request, "name")
    image = await db.find_image_by_path(request.app[SERVICES].pool, layout.file_path(session_id, name))
    if image is None:
        raise ImageNotFound(f"no image has the path {layout.identity(session_id, name)}")
    # a signed target expires: the redirect must not outlive it in any cache
    cache = "public, max-age=86400" if request.app[URLS].keys is None else "private, no-store"
    raise web.HTTPMovedPermanently(image_url(request, image.id), headers={"Cache-Control": cache})
