"""POST /api/face/search and POST /api/face/sessions/{session_id}/search: the probe's largest face against
one session. The second names the session in its path, so a balancer can route by it (README, A fleet
behind nginx); a session_id form field there must agree with the path."""

from __future__ import annotations

import time

from aiohttp import web

from .. import metrics
from ..core import matching
from ..errors import BadRequest
from . import access, multipart
from .appkeys import SERVICES, URLS
from .common import form_id, image_url, number, ok
from .route_params import route_ids


async def search_faces(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = services.settings
    start = time.perf_counter()
    # the session route: a bad id is a 404 before the body is read
    in_path = route_ids(request).get("session_id")
    fields: dict[str, str] = {}
    probe: bytes | None = None
    async for part in multipart.parts(request):
        if part.name == "image":
            probe = await multipart.read_all(part, settings.max_probe_bytes)
        elif part.name in ("session_id", "threshold", "limit"):
            fields[part.name] = await multipart.read_field(part)
        else:
            await multipart.skip(part)
    session_id = form_id(fields.get("session_id"), "session_id")
    if in_path is not None:
        if session_id is not None and session_id != in_path:
            raise BadRequest(
                f"session_id {session_id} in the form disagrees with session {in_path} in the path"
            )
        session_id = in_path
    if session_id is None:
        raise BadRequest("session_id is required")
    access.require_session(request, int(session_id))
    if not probe:
        raise BadRequest("image is required: the probe photo as a multipart file part")
    threshold = number(fields.get("threshold"), "threshold", float, 0.0, 2.0)
    limit = number(fields.get("limit"), "limit", int, 1, settings.search_max_limit)

    parsed_ms = 1000 * (time.perf_counter() - start)
    # admitted once the probe is in, like uploads: bounds the decodes and detections in flight, not the
    # waiting for slow clients
    with services.search_gate.admit():
        result = await matching.search_session(
            services,
            int(session_id),
            probe,
            settings.match_threshold if threshold is None else float(threshold),
            settings.search_default_limit if limit is None else int(limit),
        )
    response = ok(
        {
            "matches": [
                {
                    "identity": m.identity,
                    "distance": round(m.distance, 6),
                    "image_id": m.image_id,
                    "url": image_url(request, m.image_id),
                    "face_id": m.face_id,
                    "face_url": request.app[URLS].face_url(request, m.face_id),
                    "box": [round(v, 1) for v in m.box],
                }
                for m in result.matches
            ],
            "probe_face": {
                "box": [round(float(v), 1) for v in result.probe_face.box],
                "score": round(result.probe_face.det_score, 4),
            },
        }
    )
    timings = {"parse": parsed_ms, **result.timings}  # parse: receiving and reading the form
    metrics.observe_search_steps(timings)
    response.headers["Server-Timing"] = ", ".join(f"{step};dur={ms:.2f}" for step, ms in timings.items())
    return response
