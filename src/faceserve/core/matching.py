"""Search a session for a probe photo's faces: its largest (or the one picked), one match per image, nearest
first; or all of its faces together (up to four), the photos in which every one of them appears."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from .. import db, layout
from ..config import Settings
from ..errors import BadRequest, FaceBlurred, FaceTooSmall, FaceTurned, NoFaceFound
from ..media import decoding
from ..vision import detection, quality
from ..vision.engine import DetectedFace, FaceEngine, detected_faces
from .face_sessions import require_session
from .models import Models
from .services import Services

# Faces fetched from the index per requested match: an image can hold several faces close to the probe.
_OVERFETCH = 4
_MIN_CANDIDATES = 32
# match=all: at most this many of the probe's faces (largest first) must appear together ("me and my partner")
MAX_TOGETHER = 4


@dataclass(frozen=True)
class MatchedFace:
    """One of the probe's faces, found in a matched image (match=all)."""

    probe_index: int
    face_id: int
    distance: float
    box: list[float]
    quality: str | None  # faces.quality: ok, too_small, blurred, turned; None for a face never measured


@dataclass(frozen=True)
class Match:
    image_id: int
    face_id: int
    identity: str
    distance: float  # with match=all, of the farthest of its faces
    box: list[float]
    quality: str | None
    faces: list[MatchedFace] = field(default_factory=list)  # match=all: one per probe face, in probe order


@dataclass(frozen=True)
class ProbeFace:
    index: int  # place among the probe's faces, largest first: what `face` picks
    box: np.ndarray  # (4,) in the probe's pixels
    score: float


@dataclass(frozen=True)
class SearchResult:
    used: list[int]  # indices of the probe faces matched
    probe_faces: list[ProbeFace]
    matches: list[Match]
    embeddings: np.ndarray  # (len(used), dim) float32: the used faces' (a live token seals the one face's)
    # milliseconds per step (decode, detect, embed, index, db): sent as Server-Timing
    timings: dict[str, float]


@dataclass(frozen=True)
class _Found:
    boxes: np.ndarray  # (n, 5) every face of the probe, largest first
    used: list[int]  # those to match
    landmarks: np.ndarray  # (len(used), 5, 2) of the used faces
    crops: np.ndarray  # their aligned crops
    qualities: list[quality.FaceQuality]


def _probe_faces(
    engine: FaceEngine, data: bytes, max_pixels: int, pick: int | None, together: bool, timings: dict[str, float]
) -> _Found | None:
    """The probe's faces, largest first; the picked one (the largest by default), or with `together` up to
    MAX_TOGETHER, aligned and measured. Timed. None without a face."""
    start = time.perf_counter()
    decoding.probe(data, max_pixels)
    pixels = decoding.decode_bgr(data)
    decoded = time.perf_counter()
    boxes, landmarks = detection.find_faces(engine, pixels, selfie=True)
    found = None
    if len(boxes):
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
        boxes, landmarks = boxes[order], landmarks[order]
        if together:
            used = list(range(min(len(boxes), MAX_TOGETHER)))
        elif pick is not None and pick >= len(boxes):
            raise BadRequest(f"face {pick} was asked for, but the probe shows {len(boxes)} (0 to {len(boxes) - 1})")
        else:
            used = [pick or 0]
        crops = engine.align(pixels, landmarks[used])
        qualities = [quality.measure(landmarks[i], crop) for i, crop in zip(used, crops)]
        found = _Found(boxes, used, landmarks[used], crops, qualities)
    timings["decode"], timings["detect"] = 1000 * (decoded - start), 1000 * (time.perf_counter() - decoded)
    return found


def require_quality(measured: quality.FaceQuality, settings: Settings) -> None:
    """A probe face too small, blurred or turned matches poorly: the guest is told what to change instead."""
    verdict = quality.verdict(measured, quality.limits(settings))
    if verdict == quality.TOO_SMALL:
        raise FaceTooSmall(
            f"Move closer: the face is too small to match ({measured.eye_distance:.0f} px between the eyes,"
            f" at least {settings.probe_min_eye_distance:.0f} needed)"
        )
    if verdict == quality.BLURRED:
        raise FaceBlurred(
            f"Hold the phone still: the face is too blurred to match (sharpness {measured.sharpness:.1f},"
            f" at least {settings.probe_min_sharpness:g} needed)"
        )
    if verdict == quality.TURNED:
        raise FaceTurned(
            f"Look at the camera: the face is turned too far to match (turn {measured.turn:.2f},"
            f" at most {settings.probe_max_turn:g})"
        )


async def _embedded_probe(
    models: Models, settings: Settings, probe: bytes, pick: int | None, together: bool, timings: dict[str, float]
) -> tuple[_Found, list[DetectedFace]] | None:
    """The probe's faces and the used ones embedded; None without a face."""
    with models.recogniser.coming():
        found = await models.infer(
            _probe_faces, models.engine, probe, settings.max_image_pixels, pick, together, timings
        )
    if found is None:
        return None
    for measured in found.qualities:
        require_quality(measured, settings)
    start = time.perf_counter()
    # shared with the faces of concurrent searches and uploads (vision/batcher.py); includes waiting for a turn
    embeddings = await models.recogniser.embed(found.crops)
    timings["embed"] = 1000 * (time.perf_counter() - start)
    return found, detected_faces(found.boxes[found.used], found.landmarks, embeddings)


async def probe_face(models: Models, settings: Settings, probe: bytes) -> DetectedFace | None:
    """The probe's largest face, embedded; None when it shows none; FaceTooSmall, FaceBlurred or FaceTurned
    when it is too poor to match (privacy.forget uses it too)."""
    embedded = await _embedded_probe(models, settings, probe, None, False, {})
    return None if embedded is None else embedded[1][0]


async def search_session(
    services: Services,
    session_id: int,
    probe: bytes,
    threshold: float,
    limit: int,
    pick: int | None = None,
    together: bool = False,
) -> SearchResult:
    """`pick`: the index of the probe face to match (largest first; the largest by default); `together`: the
    images showing all of its faces (up to MAX_TOGETHER)."""
    timings: dict[str, float] = {}
    # the session is looked up while the probe is being detected, so the round trip adds no time of its own
    session = asyncio.create_task(require_session(services, session_id))
    try:
        embedded = await _embedded_probe(services.models, services.settings, probe, pick, together, timings)
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
    if embedded is None:
        raise NoFaceFound("no face was found in the probe image")
    found, faces = embedded
    probe_faces = [ProbeFace(i, box[:4], float(box[4])) for i, box in enumerate(found.boxes)]
    candidates = max(limit * _OVERFETCH, _MIN_CANDIDATES) * (2 if together else 1)
    start = time.perf_counter()
    embeddings = np.stack([face.embedding for face in faces])
    sims, face_ids = await services.indexes.search(session_id, embeddings, candidates)
    timings["index"] = 1000 * (time.perf_counter() - start)
    distances = 1.0 - sims
    within = (face_ids >= 0) & (distances <= threshold)
    if not within.any():
        return SearchResult(found.used, probe_faces, [], embeddings, timings)
    start = time.perf_counter()
    hits = await db.faces_with_images(services.pool, session_id, np.unique(face_ids[within]).tolist())
    timings["db"] += 1000 * (time.perf_counter() - start)
    if together:
        matches = _all_together(session_id, found.used, face_ids, distances, within, hits)
    else:
        matches = _nearest_per_image(session_id, face_ids[0][within[0]], distances[0][within[0]], hits)
    return SearchResult(found.used, probe_faces, matches[:limit], embeddings, timings)


async def embedding_matches(
    services: Services, session_id: int, embedding: np.ndarray, threshold: float, limit: int
) -> list[Match]:
    """The session's images with a face within threshold of one embedded probe face, nearest first (a live
    search's matches at its creation: core/live.py)."""
    sims, face_ids = await services.indexes.search(session_id, embedding[None, :], max(limit * _OVERFETCH, _MIN_CANDIDATES))
    distances = 1.0 - sims
    within = (face_ids >= 0) & (distances <= threshold)
    if not within.any():
        return []
    hits = await db.faces_with_images(services.pool, session_id, np.unique(face_ids[within]).tolist())
    return _nearest_per_image(session_id, face_ids[0][within[0]], distances[0][within[0]], hits)[:limit]


def _nearest_per_image(
    session_id: int, candidates: np.ndarray, distances: np.ndarray, hits: dict[int, db.FaceHit]
) -> list[Match]:
    """One match per image, its face nearest the probe's, nearest first."""
    best: dict[int, Match] = {}
    for face_id, distance in zip(candidates.tolist(), distances.tolist()):
        hit = hits.get(face_id)
        if hit is None:  # deleted after the index answered
            continue
        if hit.image_id not in best:  # candidates arrive nearest first
            best[hit.image_id] = Match(
                hit.image_id,
                face_id,
                layout.identity(session_id, hit.stored_name),
                max(0.0, distance),
                hit.box,
                hit.quality,
            )
    return sorted(best.values(), key=lambda m: m.distance)


def _all_together(
    session_id: int,
    used: list[int],
    face_ids: np.ndarray,
    distances: np.ndarray,
    within: np.ndarray,
    hits: dict[int, db.FaceHit],
) -> list[Match]:
    """The images in which every probe face matches a face of its own; the nearest pairs are taken first,
    and an image ranks by the farthest of its faces."""
    pairs_by_image: dict[int, list[tuple[float, int, int]]] = {}  # image -> (distance, probe row, face id)
    for row in range(len(used)):
        for face_id, distance in zip(face_ids[row][within[row]].tolist(), distances[row][within[row]].tolist()):
            hit = hits.get(face_id)
            if hit is not None:
                pairs_by_image.setdefault(hit.image_id, []).append((max(0.0, distance), row, face_id))
    matches = []
    for image_id, pairs in pairs_by_image.items():
        taken: dict[int, tuple[float, int]] = {}  # probe row -> (distance, face id)
        for distance, row, face_id in sorted(pairs):
            if row not in taken and all(face_id != other for _, other in taken.values()):
                taken[row] = (distance, face_id)
        if len(taken) < len(used):
            continue
        faces = [
            MatchedFace(used[row], face_id, distance, hits[face_id].box, hits[face_id].quality)
            for row, (distance, face_id) in sorted(taken.items())
        ]
        first = hits[faces[0].face_id]
        matches.append(
            Match(
                image_id,
                faces[0].face_id,
                layout.identity(session_id, first.stored_name),
                max(face.distance for face in faces),
                first.box,
                first.quality,
                faces,
            )
        )
    return sorted(matches, key=lambda m: m.distance)
