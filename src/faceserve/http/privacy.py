"""POST /api/face/sessions/{id}/forget, and the task that deletes expired sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from .. import privacy
from ..errors import BadRequest, SessionNotFound
from . import uploads
from .access import current_key
from .common import number, ok, path_id
from .keys import SERVICES


async def forget(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = services.settings
    session_id = path_id(request, "session_id", SessionNotFound)
    selfie: bytes | None = None
    threshold_field: str | None = None
    async for part in uploads.parts(request):
        if part.name == "image":
            selfie = await uploads.read_all(part, settings.max_upload_bytes)
        elif part.name == "threshold":
            threshold_field = await uploads.read_field(part)
        else:
            await part.release()
    if not selfie:
        raise BadRequest("image is required: a selfie of the person to forget, as a multipart file part")
    threshold = number(threshold_field, "threshold", float, 0.0, 2.0)
    key = current_key(request)
    result = await privacy.forget(
        services,
        session_id,
        selfie,
        settings.match_threshold if threshold is None else float(threshold),
        None if key is None else key.prefix,
    )
    return ok({"faces_erased": result.faces_erased, "images_touched": result.images_touched})


async def expiry_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    task = asyncio.create_task(privacy.delete_expired_forever(services, services.settings.session_expiry_check_s))
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
