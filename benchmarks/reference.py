"""Reference paths the service does not take, that tests and benchmarks time or check the served ones against:
every face of a photo embedded in one call, a probe's largest face embedded without the recogniser batcher,
the exact top k by brute force, and the people graph through an index's search (the service builds it
through cells of its own, index/clustering.py cell_knn_graph).

Imported beside the benchmark scripts (their folder is on sys.path when one runs) and by tests that put
this folder on sys.path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from faceserve.index.clustering import ROW, RowsOfIds, neighbour_lists
from faceserve.index.kinds import top_k
from faceserve.vision import detection
from faceserve.vision.engine import DetectedFace, FaceEngine, detected_faces

# (query rows, k) -> (similarities, face ids) best first, -1 padding: an index's search
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def analyze(engine: FaceEngine, image_bgr: np.ndarray) -> list[DetectedFace]:
    """Every face, embedded, close-ups included (vision/detection.py)."""
    boxes, landmarks = detection.find_faces(engine, image_bgr)
    if not len(boxes):
        return []
    return detected_faces(boxes, landmarks, engine.embed_crops(engine.align(image_bgr, landmarks)))


def find_largest(engine: FaceEngine, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The probe's face, ready for the recogniser: (1, 5) box with score, (1, 5, 2) landmarks and (1, S, S, 3)
    aligned crop of the largest face found, close-ups included (vision/detection.py); None without one."""
    boxes, landmarks = detection.find_faces(engine, image_bgr, selfie=True)
    if not len(boxes):
        return None
    i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    return boxes[i : i + 1], landmarks[i : i + 1], engine.align(image_bgr, landmarks[i : i + 1])


def largest_face(engine: FaceEngine, image_bgr: np.ndarray) -> DetectedFace | None:
    """The probe's face: detect all, embed only the largest."""
    found = find_largest(engine, image_bgr)
    if found is None:
        return None
    box, landmarks, crop = found
    return detected_faces(box, landmarks, engine.embed_crops(crop))[0]


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 262_144) -> np.ndarray:
    """Row numbers of the exact top k."""
    return top_k(vectors, queries, k, chunk)[1]


def knn_graph(search: Search, vectors: np.ndarray, ids: np.ndarray, k: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour rows n x k, similarities n x k) of every face, through an index's search."""
    rows_of = RowsOfIds(ids)
    rows = np.full((len(ids), k), -1, dtype=ROW)
    sims = np.zeros((len(ids), k), dtype=np.float32)
    for start in range(0, len(ids), batch):
        found_sims, found_ids = search(vectors[start : start + batch], k + 1)
        rows[start : start + batch], sims[start : start + batch] = neighbour_lists(
            found_sims, found_ids, rows_of, start, k
        )
    return rows, sims
