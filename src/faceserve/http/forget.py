"""POST /api/face/sessions/{id}/forget: erase every face of a person in a session; the photos stay."""

from __future__ import annotations

from aiohttp import web

from ..core import privacy
from ..errors import BadRequest
from . import multipart
from .access import current_key
from .appkeys import SERVICES
from .common import number, ok
from .route_params import route_id


async def forget(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = services.settings
    session_id = route_id(request, "session_id")
    selfie: bytes | None = None
    threshold_field: str | None = None
    async for part in multipart.parts(request):
        if part.name == "image":
            selfie = await multipart.read_all(part, settings.max_upload_bytes)
        elif part.name == "threshold":
            threshold_field = await multipart.read_field(part)
        else:
            await multipart.skip(part)
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
