"""POST /api/face/search and POST /api/face/sessions/{session_id}/search: the probe's largest face (or the
one `face` picks, or with `match=all` all of its faces together) against one session. The second names the session in its path, so a balancer can route by it (README, A fleet
behind nginx); a session_id form field there must agree with the path. An answer for one face carries its
live_token: that face sealed, for a live search without the selfie sent again (http/live.py)."""

from __future__ import annotations

import time

import numpy as np
from aiohttp import web
from prometheus_client import Histogram

from ..core import live_tokens, matching
from ..errors import BadRequest
from . import access, multipart
from .appkeys import SERVICES, URLS
from .common import form_id, image_url, number, ok
from .route_params import route_ids

SEARCH_STEPS = Histogram(
    "faceserve_search_step_seconds",
    "Time of each search step, as in the Server-Timing header (parse, decode, detect, embed, index, db)",
    ["step"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


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
        elif part.name in ("session_id", "threshold", "limit", "face", "match"):
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
    access.require_key_sees(request, int(session_id))
    if not probe:
        raise BadRequest("image is required: the probe photo as a multipart file part")
    threshold = number(fields.get("threshold"), "threshold", float, 0.0, 2.0)
    limit = number(fields.get("limit"), "limit", int, 1, settings.search_max_limit)
    pick = number(fields.get("face"), "face", int, 0, _MOST_FACES)
    together = _together(fields.get("match"))
    if together and pick is not None:
        raise BadRequest("face picks one face; match=all matches all of them: send one or the other")

    parsed_ms = 1000 * (time.perf_counter() - start)
    # admitted once the probe is in, like uploads: bounds the decodes and detections in flight, not the
    # waiting for slow clients
    with services.admission.searches.admit():
        result = await matching.search_session(
            services,
            int(session_id),
            probe,
            settings.match_threshold if threshold is None else float(threshold),
            settings.search_default_limit if limit is None else int(limit),
            None if pick is None else int(pick),
            together,
        )
    used = result.used
    response = ok(
        {
            "matches": [match_json(request, m) for m in result.matches],
            "probe_face": _probe_face(result.probe_faces[used[0]]),
            "probe_faces": [_probe_face(face) for face in result.probe_faces],
            "used": used,
            "live_token": None if together else _live_token(request, int(session_id), result.embeddings[0]),
        }
    )
    timings = {"parse": parsed_ms, **result.timings}  # parse: receiving and reading the form
    for step, ms in timings.items():
        SEARCH_STEPS.labels(step).observe(ms / 1000)
    response.headers["Server-Timing"] = ", ".join(f"{step};dur={ms:.2f}" for step, ms in timings.items())
    return response


# `face` indexes the probe's faces: a larger number is refused as a bad request, not looked for
_MOST_FACES = 1000


def _together(raw: str | None) -> bool:
    if raw in (None, "", "one"):
        return False
    if raw == "all":
        return True
    raise BadRequest("match must be one (the default: the largest or picked face) or all (every face together)")


def _live_token(request: web.Request, session_id: int, embedding: np.ndarray) -> str | None:
    """The searched face sealed for POST .../live (core/live_tokens.py): the guest may opt in to live results
    within LIVE_TOKEN_MINUTES without sending the selfie again, and nothing of this search is kept here."""
    keys = access.signing_keys(request)
    if keys is None:
        return None
    settings = request.app[SERVICES].settings
    expires = int(time.time()) + 60 * settings.live_token_minutes
    return live_tokens.seal(keys, session_id, embedding, expires, settings.model_pack)


def _probe_face(face: matching.ProbeFace) -> dict[str, object]:
    return {"index": face.index, "box": [round(float(v), 1) for v in face.box], "score": round(face.score, 4)}


def match_json(request: web.Request, match: matching.Match) -> dict[str, object]:
    answer: dict[str, object] = {
        "identity": match.identity,
        "distance": round(match.distance, 6),
        "image_id": match.image_id,
        "url": image_url(request, match.image_id),
        "face_id": match.face_id,
        "face_url": request.app[URLS].face_url(request, match.face_id),
        "box": [round(v, 1) for v in match.box],
        "quality": match.quality,
    }
    if match.faces:
        answer["faces"] = [
            {
                "probe_index": face.probe_index,
                "face_id": face.face_id,
                "distance": round(face.distance, 6),
                "box": [round(v, 1) for v in face.box],
                "quality": face.quality,
                "face_url": request.app[URLS].face_url(request, face.face_id),
            }
            for face in match.faces
        ]
    return answer
