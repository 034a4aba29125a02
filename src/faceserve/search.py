"""Search a session for the largest face of a probe photo: one match per image, nearest first."""

from __future__ import annotations

from dataclasses import dataclass

from . import db, imaging
from .errors import NoFaceFound
from .faces import DetectedFace, FaceEngine
from .ingest import require_session
from .services import Services

# Faces fetched from the index per requested match: an image can hold several faces close to the probe.
_OVERFETCH = 4
_MIN_CANDIDATES = 32


@dataclass(frozen=True)
class Match:
    image_id: int
    face_id: int
    identity: str
    distance: float
    box: list[float]


def _probe_face(engine: FaceEngine, data: bytes, max_pixels: int) -> DetectedFace | None:
    imaging.probe(data, max_pixels)
    return engine.largest_face(imaging.decode_bgr(data))


async def search_session(
    services: Services, session_id: int, probe: bytes, threshold: float, limit: int
) -> tuple[DetectedFace, list[Match]]:
    await require_session(services, session_id)
    face = await services.infer(_probe_face, services.engine, probe, services.settings.max_image_pixels)
    if face is None:
        raise NoFaceFound("no face was found in the probe image")
    sims, face_ids = await services.indexes.search(
        session_id, face.embedding[None, :], max(limit * _OVERFETCH, _MIN_CANDIDATES)
    )
    distances = 1.0 - sims[0]
    within = (face_ids[0] >= 0) & (distances <= threshold)
    candidates = face_ids[0][within]
    if not len(candidates):
        return face, []
    hits = await db.faces_with_images(services.pool, session_id, candidates.tolist())
    best: dict[int, Match] = {}
    for face_id, distance in zip(candidates.tolist(), distances[within].tolist()):
        hit = hits.get(face_id)
        if hit is None:  # deleted after the index answered
            continue
        if hit.image_id not in best:  # candidates arrive nearest first
            best[hit.image_id] = Match(
                hit.image_id, face_id, f"{session_id}/db/{hit.stored_name}", max(0.0, distance), hit.box
            )
    matches = sorted(best.values(), key=lambda m: m.distance)[:limit]
    return face, matches


