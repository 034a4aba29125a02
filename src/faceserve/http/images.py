"""Images of a session: upload, list, delete, resolve an identity, and legacy path URLs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import db, ingest
from ..errors import BadRequest, Busy, ImageNotFound, SessionNotFound
from ..storage import Storage
from . import uploads
from .common import image_url, ok, path_id, query_int
from .keys import SERVICES
from .serving import SERVED_FILES


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


async def upload_images(request: web.Request) -> web.Response:
    """Each part named `file` is streamed to disk, checked, embedded and recorded before the next is read.

    A bad part stops the request with its error; parts before it are kept, and since the same bytes map to
    the same image, a client can simply retry the whole request.
    """
    services = request.app[SERVICES]
    settings = services.settings
    session_id = path_id(request, "session_id", SessionNotFound)
    await ingest.require_session(services, session_id)
    results: list[dict[str, Any]] = []
    async for part in uploads.parts(request):
        if part.name != "file":
            await part.release()
            continue
        if len(results) >= settings.max_files_per_upload:
            raise BadRequest(f"at most {settings.max_files_per_upload} files per request")
        original_name = part.filename or "upload"
        # received first (at the body's minimum pace, http/pace.py), then admitted: a slow client holds a
        # connection and a .part file while its bytes arrive, never a slot of the images being processed
        pending = await services.storage.receive(session_id, uploads.chunks(part), settings.max_upload_bytes)
        try:
            with services.gate.admit():
                outcome = await ingest.add_image(services, session_id, pending, original_name)
        except Busy:
            await services.storage.discard(pending.path)  # refused before add_image took the file over
            raise
        results.append({**image_json(request, outcome.image), "created": outcome.created})
    if not results:
        raise BadRequest("no part named 'file' in the upload")
    return ok({"images": results}, status=201)


async def list_images(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = services.settings
    session_id = path_id(request, "session_id", SessionNotFound)
    await ingest.require_session(services, session_id)
    limit = query_int(request, "limit", settings.page_default_limit, 1, settings.page_max_limit)
    after = query_int(request, "after", 0, 0, 2**63 - 1)
    images = await db.list_images(services.pool, session_id, after, limit)
    next_after = images[-1].id if len(images) == limit else None
    return ok({"images": [image_json(request, i) for i in images], "next_after": next_after})


async def delete_image(request: web.Request) -> web.Response:
    image_id = path_id(request, "image_id", ImageNotFound)
    image = await ingest.delete_image(request.app[SERVICES], image_id)
    request.app[SERVED_FILES].evict(image_id)
    return ok({"image_id": image.id, "identity": image.identity, "deleted": True})


def _file_path_of_identity(identity: str) -> str:
    """'1/db/name.jpg' (or the same with a leading face_sessions/ or /storage/face_sessions/) -> file_path."""
    parts = identity.strip("/").split("/")
    if parts[:2] == ["storage", "face_sessions"]:
        parts = parts[2:]
    elif parts[:1] == ["face_sessions"]:
        parts = parts[1:]
    if len(parts) != 3 or not parts[0].isdigit() or parts[1] != "db" or not parts[2]:
        raise BadRequest("path must look like '{session_id}/db/{file name}'")
    return Storage.relative_path(int(parts[0]), parts[2])


async def resolve(request: web.Request) -> web.Response:
    identity = request.query.get("path", "")
    image = await db.find_image_by_path(request.app[SERVICES].pool, _file_path_of_identity(identity))
    if image is None:
        raise ImageNotFound(f"no image has the path {identity!r}")
    return ok({"image_id": image.id, "identity": image.identity, "url": image_url(request, image.id)})


async def legacy_redirect(request: web.Request) -> web.Response:
    """Old app builds asked for /storage/face_sessions/{id}/db/{name}; send them to the image by id."""
    session_id = path_id(request, "session_id", ImageNotFound)
    name = request.match_info["name"]
    image = await db.find_image_by_path(request.app[SERVICES].pool, Storage.relative_path(session_id, name))
    if image is None:
        raise ImageNotFound(f"no image has the path {session_id}/db/{name}")
    raise web.HTTPMovedPermanently(
        image_url(request, image.id), headers={"Cache-Control": "public, max-age=86400"}
    )
