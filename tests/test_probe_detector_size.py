"""PROBE_DETECTOR_SIZE: a probe's first pass at a smaller detector input (vision/detection.py). A selfie is
found by it alone; a group photo, a photo of small faces or a close-up falls back to what the full size finds,
so no probe loses a face the full-size pass finds."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from selfies import closeup, two_faces

from faceserve.config import Settings
from faceserve.vision import detection
from faceserve.vision.engine import FaceEngine

SMALL = Settings.probe_detector_size  # the default


@pytest.fixture(scope="module")
def engines(models_dir: Path) -> dict[int, FaceEngine]:
    """The default engine kind at probe sizes SMALL and the detector's own (640): one pass for every probe."""
    loaded = {}
    for size in (SMALL, 640):
        engine = FaceEngine.from_settings(Settings(models_dir=models_dir, probe_detector_size=size))
        engine.warm_up()
        loaded[size] = engine
    return loaded


def _same_faces(small: tuple[np.ndarray, np.ndarray], full: tuple[np.ndarray, np.ndarray], tolerance: float) -> None:
    (boxes, _), (full_boxes, _) = small, full
    assert len(boxes) == len(full_boxes)
    order, full_order = np.lexsort(boxes[:, :2].T), np.lexsort(full_boxes[:, :2].T)
    assert np.abs(boxes[order, :4] - full_boxes[full_order, :4]).max() <= tolerance


def test_group_photos_fall_back_to_the_full_size(engines, photos):
    """Small faces at the small pass's size: it does not stand, and the probe has every face the full size
    finds, in the same boxes (the full-size pass's own)."""
    for name in ("t1", "players", "gdp"):
        pixels = cv2.imread(str(photos[name]))
        small_boxes = engines[SMALL].detect(pixels, input_size=SMALL)[0]
        assert not detection.small_pass_holds(small_boxes, pixels.shape[:2], SMALL), name
        found = detection.find_faces(engines[SMALL], pixels, selfie=True)
        _same_faces(found, detection.find_faces(engines[640], pixels, selfie=True), 0.0)


def test_a_selfie_is_found_by_the_small_pass_alone(engines, photos):
    """yaoming.jpg's face stands at the small size; its box within 3 px of the full size's, and its
    embedding as good as the same (the landmarks the crop is aligned on move by about a pixel)."""
    pixels = cv2.imread(str(photos["yaoming"]))
    small_boxes = engines[SMALL].detect(pixels, input_size=SMALL)[0]
    assert detection.small_pass_holds(small_boxes, pixels.shape[:2], SMALL)
    small = detection.find_faces(engines[SMALL], pixels, selfie=True)
    full = detection.find_faces(engines[640], pixels, selfie=True)
    _same_faces(small, full, 3.0)
    embeddings = [engine.embed_crops(engine.align(pixels, found[1])) for engine, found in
                  ((engines[SMALL], small), (engines[640], full))]
    assert float(np.sum(embeddings[0] * embeddings[1])) >= 0.98  # 0.02 of distance; a match is within 0.6


@pytest.mark.parametrize("fill", [0.5, 0.7, 0.9, 1.1])
def test_close_ups_are_still_found(engines, photos, fill):
    """A face filling the frame: the small pass finds it near the frame's size (or not at all), and the
    close-up pass follows as at the full size."""
    yaoming = cv2.imread(str(photos["yaoming"]))
    pixels = closeup(yaoming, engines[640].detect(yaoming)[0][0], fill)
    boxes, _ = detection.find_faces(engines[SMALL], pixels, selfie=True)
    assert len(boxes) == 1
    height, width = pixels.shape[:2]  # in the photo's pixels, even where the face runs past the frame
    assert 0 <= boxes[0, 0] < boxes[0, 2] <= width and 0 <= boxes[0, 1] < boxes[0, 3] <= height
    full_boxes, _ = detection.find_faces(engines[640], pixels, selfie=True)
    assert np.abs(boxes[0, :4] - full_boxes[0, :4]).max() <= 0.03 * max(pixels.shape)


def test_two_people_keep_both_faces(engines, photos):
    """"Me and my partner" (tests/test_probe_faces.py): both faces, as the full size finds them."""
    pixels = two_faces(engines[640], cv2.imread(str(photos["yaoming"])), cv2.imread(str(photos["t1"])))
    small = detection.find_faces(engines[SMALL], pixels, selfie=True)
    _same_faces(small, detection.find_faces(engines[640], pixels, selfie=True), 0.03 * max(pixels.shape))
    assert len(small[0]) == 2


def test_a_faceless_probe_is_looked_at_full_size_too(engines):
    """No face at the small size: the full-size pass and the close-up pass run, and find none either."""
    blank = np.full((1440, 1080, 3), 127, dtype=np.uint8)
    assert not detection.small_pass_holds(engines[SMALL].detect(blank, input_size=SMALL)[0], blank.shape[:2], SMALL)
    assert len(detection.find_faces(engines[SMALL], blank, selfie=True)[0]) == 0


def test_only_the_warmed_up_sizes_run(engines, models_dir):
    """The detector sees two input shapes, both warmed up at start; any other is refused (a GPU would
    re-plan on it)."""
    engine = engines[SMALL]
    assert engine.probe_detector_size == SMALL < engine.detector_input_size == 640
    blank = np.zeros((100, 100, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=f"runs at 640 or {SMALL} only"):
        engine.detect(blank, input_size=SMALL + 32)
    if engine.engine == "openvino":
        assert sorted(engine._detector.resolution_sessions) == [(SMALL, SMALL), (640, 640)]
    assert FaceEngine.from_settings(  # larger than the detector's input: one size, the detector's
        Settings(models_dir=models_dir, probe_detector_size=1024)
    ).probe_detector_size == 640
