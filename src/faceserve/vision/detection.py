"""Faces as phones frame them. SCRFD at its input size misses a face that fills most of the frame (larger
than the faces it learnt from): a close-up selfie answered "no face". When the first pass finds no face, or
one near the frame's size, a second pass sees the image shrunk onto a canvas of the detector's input; its
faces, mapped back to the photo's pixels, join the first pass's (the better of two boxes for one face wins).
An upload whose faces are all small pays for one pass only, and so does a probe whose largest face is
neither near the frame's size nor too small to be the guest's own. The canvas has the detector's input
size, so a GPU sees one input shape (no re-planning, engine.py).

A probe is a selfie, its face large: where PROBE_DETECTOR_SIZE is smaller than the detector's input, its first
pass runs at that size (480 by default: about half the work of 640). The probe falls back to the full-size
pass, as an upload is detected, whenever the small pass finds no face, no face of a selfie's size
(SELFIE_SMALLEST), or any face small at its size (SMALL_PASS_FACE: a group photo, whose smaller faces the small
pass may miss); the close-up pass follows as for any first pass.

Blocking, like FaceEngine: callers run it in the inference thread pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # engine.py runs find_faces for its callers
    from .engine import FaceEngine

# a face whose box's longer side reaches this share of the photo's longer side is near the frame's size: in
# 3:4 close-ups (benchmarks/closeups.py) the first pass finds every face up to a fill of 0.6 (boxes of
# 0.53-0.65 of the frame's height) and misses from 0.7 (0.61-0.73) on
NEAR_FRAME = 0.6
# a selfie's own face is larger than this share of the photo's longer side: when a probe's largest face found
# is smaller (a stranger behind a close-up the first pass missed, tests/test_closeups.py), a second pass looks
# for the close-up; a selfie at a fill of 0.25 has a box of about 0.3
SELFIE_SMALLEST = 0.2
# the second pass's canvas is this many times the photo's longer side, the photo centred on black (black, not
# the photo's edge repeated: a face cut by the frame is found at fills 1.1-1.3 on black, at 1.2 in 3 of 23 on
# repeated edges); 2 finds every face from fill 0.7 to 1.3, 1.5 misses half at 1.3
SHRINK = 2.0
# a face whose box's shorter side is under this many pixels of the probe's small pass's input is small for
# it: faces of that size and smaller are where a smaller input starts to miss faces that the full size finds
SMALL_PASS_FACE = 32
# two boxes overlapping this much (intersection over union) are one face
_SAME_FACE_IOU = 0.4


def find_faces(
    engine: FaceEngine, image_bgr: np.ndarray, selfie: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Every face, as FaceEngine.detect gives them: (n, 5) boxes with scores, (n, 5, 2) landmarks, in the
    photo's pixels. `selfie`: a probe, whose own face is not small (SELFIE_SMALLEST), first looked at with
    the engine's probe_detector_size."""
    boxes, landmarks = _first_pass(engine, image_bgr, selfie)
    if not needs_second_pass(boxes, image_bgr.shape[:2], SELFIE_SMALLEST if selfie else 0.0):
        return boxes, landmarks
    canvas, scale, offset = letterbox(image_bgr, engine.detector_input_size, SHRINK)
    more_boxes, more_landmarks = engine.detect(canvas, scale)
    more_boxes, more_landmarks = to_photo(more_boxes, more_landmarks, scale, offset, image_bgr.shape[:2])
    return merge(boxes, landmarks, more_boxes, more_landmarks)


def _first_pass(engine: FaceEngine, image_bgr: np.ndarray, selfie: bool) -> tuple[np.ndarray, np.ndarray]:
    small = engine.probe_detector_size
    if selfie and small < engine.detector_input_size:
        boxes, landmarks = engine.detect(image_bgr, input_size=small)
        if small_pass_holds(boxes, image_bgr.shape[:2], small):
            # clipped as the close-up pass's are: at this size a close-up's face is found running past the frame
            return clip(boxes, image_bgr.shape[:2]), landmarks
    return engine.detect(image_bgr)


def small_pass_holds(boxes: np.ndarray, shape: tuple[int, int], side: int) -> bool:
    """Whether a probe's pass at input `side` stands: it found a face of a selfie's size (SELFIE_SMALLEST of
    the photo's longer side) and none small at that input (SMALL_PASS_FACE)."""
    if not len(boxes):
        return False
    longer = max(shape)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    largest = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).max()
    return bool(largest >= SELFIE_SMALLEST * longer and sides.min() * side / longer >= SMALL_PASS_FACE)


def needs_second_pass(boxes: np.ndarray, shape: tuple[int, int], smallest: float = 0.0) -> bool:
    """No face, the largest near the frame's size, or smaller than `smallest` of the photo's longer side."""
    if not len(boxes):
        return True
    share = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).max() / max(shape)
    return bool(share >= NEAR_FRAME or share < smallest)


def letterbox(image_bgr: np.ndarray, side: int, shrink: float) -> tuple[np.ndarray, float, np.ndarray]:
    """The image scaled to side/shrink along its longer side, centred on a black side x side canvas. Returns the canvas, canvas pixels per photo pixel, and the photo's (x, y)
    offset on it."""
    height, width = image_bgr.shape[:2]
    scale = side / (shrink * max(height, width))
    scaled = cv2.resize(
        image_bgr, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    top, left = (side - scaled.shape[0]) // 2, (side - scaled.shape[1]) // 2
    canvas = cv2.copyMakeBorder(
        scaled, top, side - scaled.shape[0] - top, left, side - scaled.shape[1] - left, cv2.BORDER_CONSTANT, value=0
    )
    return canvas, scale, np.array([left, top], dtype=np.float32)


def to_photo(
    boxes: np.ndarray, landmarks: np.ndarray, scale: float, offset: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates back to the photo's; boxes clipped to it (a close-up's face runs past the frame)."""
    boxes = boxes.astype(np.float32)
    landmarks = ((landmarks - offset) / scale).astype(np.float32)
    boxes[:, :4] = (boxes[:, :4] - np.tile(offset, 2)) / scale
    return clip(boxes, shape), landmarks


def clip(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boxes (n, 5) clipped to a photo of `shape` (height, width)."""
    boxes = boxes.astype(np.float32)
    height, width = shape
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


def merge(
    boxes: np.ndarray, landmarks: np.ndarray, more_boxes: np.ndarray, more_landmarks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both passes' faces, one per face: of boxes overlapping as one face, the higher score's."""
    all_boxes = np.concatenate([boxes.reshape(-1, 5), more_boxes.reshape(-1, 5)]).astype(np.float32)
    all_landmarks = np.concatenate([landmarks.reshape(-1, 5, 2), more_landmarks.reshape(-1, 5, 2)])
    keep: list[int] = []
    for i in np.argsort(-all_boxes[:, 4]):
        if all(_iou(all_boxes[i], all_boxes[k]) < _SAME_FACE_IOU for k in keep):
            keep.append(int(i))
    return all_boxes[keep], all_landmarks[keep].astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))
