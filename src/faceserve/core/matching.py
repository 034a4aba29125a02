"""Search a session for the largest face of a probe photo: one match per image, nearest first."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from .. import db, layout
from ..config import Settings
from ..errors import FaceBlurred, FaceTooSmall, FaceTurned, NoFaceFound
from ..media import decoding
from ..vision import quality
from ..vision.engine import DetectedFace, FaceEngine, detected_faces
from .face_sessions import require_session
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


@dataclass(frozen=True)
class SearchResult:
    probe_face: DetectedFace
    matches: list[Match]
    # milliseconds per step (decode, detect, embed, index, db): sent as Server-Timing
    timings: dict[str, float]


def _largest_face(
    engine: FaceEngine, data: bytes, max_pixels: int, timings: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, quality.FaceQuality] | None:
    """FaceEngine.find_largest on the probe's bytes, timed, with the face's quality."""
    start = time.perf_counter()
    decoding.probe(data, max_pixels)
    pixels = decoding.decode_bgr(data)
    decoded = time.perf_counter()
    found = engine.find_largest(pixels)
    timings["decode"], timings["detect"] = 1000 * (decoded - start), 1000 * (time.perf_counter() - decoded)
    if found is None:
        return None
    box, landmarks, crop = found
    return box, landmarks, crop, quality.measure(landmarks[0], crop[0])


def require_quality(measured: quality.FaceQuality, settings: Settings) -> None:
    """A probe face too small, blurred or turned matches poorly: the guest is told what to change instead."""
    if measured.eye_distance < settings.probe_min_eye_distance:
        raise FaceTooSmall(
            f"Move closer: the face is too small to match ({measured.eye_distance:.0f} px between the eyes,"
            f" at least {settings.probe_min_eye_distance:.0f} needed)"
        )
    if measured.sharpness < settings.probe_min_sharpness:
        raise FaceBlurred(
            f"Hold the phone still: the face is too blurred to match (sharpness {measured.sharpness:.1f},"
            f" at least {settings.probe_min_sharpness:g} needed)"
        )
    if measured.turn > settings.probe_max_turn:
        raise FaceTurned(
            f"Look at the camera: the face is turned too far to match (turn {measured.turn:.2f},"
            f" at most {settings.probe_max_turn:g})"
        )


async def _probe_face(services: Services, probe: bytes, timings: dict[str, float]) -> DetectedFace | None:
    with services.recogniser.coming():
        found = await services.infer(
            _largest_face, services.engine, probe, services.settings.max_image_pixels, timings
        )
    if found is None:
        return None
    box, landmarks, crop, measured = found
    require_quality(measured, services.settings)
    start = time.perf_counter()
    # shared with the faces of concurrent searches and uploads (vision/batcher.py); includes waiting for a turn
    embedding = await services.recogniser.embed(crop)
    timings["embed"] = 1000 * (time.perf_counter() - start)
    return detected_faces(box, landmarks, embedding)[0]


async def probe_face(services: Services, probe: bytes) -> DetectedFace | None:
    """The probe's largest face, embedded; None when it shows none; FaceTooSmall, FaceBlurred or FaceTurned
    when it is too poor to match (privacy.forget uses it too)."""
    return await _probe_face(services, probe, {})


async def search_session(
    services: Services, session_id: int, probe: bytes, threshold: float, limit: int
) -> SearchResult:
    timings: dict[str, float] = {}
    # the session is looked up while the probe is being detected, so the round trip adds no time of its own
    session = asyncio.create_task(require_session(services, session_id))
    try:
        face = await _probe_face(services, probe, timings)
    except asyncio.CancelledError:
        session.cancel()
        raise
    except Exception:
        await asyncio.wait([session])
        session.result()  # a missing session answers 404 whatever the probe was, as when it was checked first
        raise
    start = time.perf_counter()
    await session
    timings["db"] = 1000 * (time.perf_counter() - start)
    if face is None:
        raise NoFaceFound("no face was found in the probe image")
    start = time.perf_counter()
    sims, face_ids = await services.indexes.search(
        session_id, face.embedding[None, :], max(limit * _OVERFETCH, _MIN_CANDIDATES)
    )
    timings["index"] = 1000 * (time.perf_counter() - start)
    distances = 1.0 - sims[0]
    within = (face_ids[0] >= 0) & (distances <= threshold)
    candidates = face_ids[0][within]
    if not len(candidates):
        return SearchResult(face, [], timings)
    start = time.perf_counter()
    hits = await db.faces_with_images(services.pool, session_id, candidates.tolist())
    timings["db"] += 1000 * (time.perf_counter() - start)
    best: dict[int, Match] = {}
    for face_id, distance in zip(candidates.tolist(), distances[within].tolist()):
        hit = hits.get(face_id)
        if hit is None:  # deleted after the index answered
            continue
        if hit.image_id not in best:  # candidates arrive nearest first
            best[hit.image_id] = Match(
                hit.image_id, face_id, layout.identity(session_id, hit.stored_name), max(0.0, distance), hit.box
            )
    matches = sorted(best.values(), key=lambda m: m.distance)[:limit]
    return SearchResult(face, matches, timings)


