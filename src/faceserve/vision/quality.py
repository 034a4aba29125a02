"""How well a face can be matched, from what detection already gave: its size (pixels between the eyes),
its sharpness (second differences of the aligned crop) and how far it is turned (where the nose falls
between the eyes). benchmarks/quality.py measures them on degraded copies of the shipped photos."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..config import Settings

# second differences along four directions: across columns, rows and both diagonals (the Laplacian is the
# sum of the first two; a shaking hand blurs one direction and leaves the others sharp, so their sum hides it)
_SECOND_DIFFERENCES = [
    np.array([[0, 0, 0], [1, -2, 1], [0, 0, 0]], dtype=np.float32),
    np.array([[0, 1, 0], [0, -2, 0], [0, 1, 0]], dtype=np.float32),
    np.array([[1, 0, 0], [0, -2, 0], [0, 0, 1]], dtype=np.float32),
    np.array([[0, 0, 1], [0, -2, 0], [1, 0, 0]], dtype=np.float32),
]


@dataclass(frozen=True)
class FaceQuality:
    eye_distance: float  # pixels of the photo between the eye landmarks
    # variance of the grey aligned crop's second difference along its blurriest direction, per 1000 of the
    # crop's own variance
    sharpness: float
    turn: float  # 0 nose midway between the eyes (frontal) .. 1 nose in line with one eye or beyond


def measure(landmarks: np.ndarray, crop: np.ndarray) -> FaceQuality:
    """(5, 2) landmarks (eyes, nose, mouth corners) in the photo's pixels and the (S, S, 3) aligned crop."""
    left_eye, right_eye, nose = landmarks[0], landmarks[1], landmarks[2]
    eyes = right_eye - left_eye
    eye_distance = float(np.hypot(*eyes))
    # the nose projected on the line between the eyes, 0 at the left eye and 1 at the right: roll cancels out
    along = float(np.dot(nose - left_eye, eyes) / max(eye_distance**2, 1e-6))
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
    # the crop's border rows and columns are left out: a close-up's frame edge inside the crop is no detail
    detail = min(float(cv2.filter2D(grey, -1, kernel)[2:-2, 2:-2].var()) for kernel in _SECOND_DIFFERENCES)
    # per unit of the crop's contrast, so a dim selfie is not taken for a blurred one
    sharpness = 1000 * detail / max(float(grey[2:-2, 2:-2].var()), 1e-6)
    return FaceQuality(eye_distance, sharpness, min(1.0, abs(2 * along - 1)))


# what a face is marked with (faces.quality; NULL: never measured, a photo recorded before the measure)
OK, TOO_SMALL, BLURRED, TURNED = "ok", "too_small", "blurred", "turned"


@dataclass(frozen=True)
class Limits:
    """A face past any of these matches poorly (config.py PROBE_MIN_EYE_DISTANCE, PROBE_MIN_SHARPNESS,
    PROBE_MAX_TURN): a probe's is refused, an upload's is kept and marked."""

    min_eye_distance: float
    min_sharpness: float
    max_turn: float


def limits(settings: Settings) -> Limits:
    """What a probe's face is held to, and an upload's faces are marked by (core/ingest.py)."""
    return Limits(settings.probe_min_eye_distance, settings.probe_min_sharpness, settings.probe_max_turn)


def verdict(measured: FaceQuality, limits: Limits) -> str:
    """OK, or the first limit the face is past, in the order a guest should fix them."""
    if measured.eye_distance < limits.min_eye_distance:
        return TOO_SMALL
    if measured.sharpness < limits.min_sharpness:
        return BLURRED
    if measured.turn > limits.max_turn:
        return TURNED
    return OK


# faces marked so take no part in people (index/clustering.py eligible): a blurred face's embedding drifts
# (0.1-0.3 of distance, README) while its box and detection score pass the people floor, and a too small
# one is mostly below that floor already. A turned face keeps its part: on the shipped photos the only
# ones (t1.jpg's three-quarter man, gdp.jpg's profile) are sharp and sized well, average linkage keeps a
# turned face out of a frontal person unless it is close on average, and clarity ranks it last as a cover
TOO_WEAK_FOR_PEOPLE = (TOO_SMALL, BLURRED)
