"""Close-up selfies made from the shipped photos, as a phone at arm's length frames a face: a 3:4 portrait
frame in which the face's width is a given share (the fill) of the frame's width. Past a fill of 1 the frame
cuts the face's sides, forehead and chin. Used by tests/test_closeups.py and benchmarks/closeups.py."""

from __future__ import annotations

import cv2
import numpy as np

FRAME = (1080, 1440)  # width, height: a phone's portrait photo


def closeup(pixels: np.ndarray, box: np.ndarray, fill: float, frame: tuple[int, int] = FRAME) -> np.ndarray:
    """The frame around the face whose detector box is `box`, the face's centre a little above the frame's;
    what lies outside the source photo repeats its edge, as a crop of a larger scene would continue."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    width, height = frame
    scale = width * fill / (x2 - x1)  # frame pixels per source pixel
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    # source point (centre) lands on frame point (width/2, 0.45 height)
    to_frame = np.array(
        [[scale, 0.0, width / 2 - scale * centre_x], [0.0, scale, 0.45 * height - scale * centre_y]]
    )
    return cv2.warpAffine(pixels, to_frame, frame, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """The images in a row at the height of the lowest: one photo showing the people of all of them."""
    height = min(image.shape[0] for image in images)
    return np.hstack([cv2.resize(i, (round(i.shape[1] * height / i.shape[0]), height)) for i in images])


def two_faces(engine, yaoming: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """"Me and my partner": Yao Ming larger on the left (probe face 0), t1.jpg's second face, frontal, smaller
    on the right (probe face 1), each in half of a 1080x720 frame."""
    return np.hstack([
        closeup(yaoming, engine.detect(yaoming)[0][0], 0.5, (540, 720)),
        closeup(t1, engine.detect(t1)[0][1], 0.35, (540, 720)),
    ])
