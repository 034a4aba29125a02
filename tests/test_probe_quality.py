"""A probe face too small, blurred or turned is answered 422 with its own code and advice; sharp frontal
selfies at every fill, dim ones included, never are; uploads are never refused for quality."""

from __future__ import annotations

import cv2
import numpy as np
from helpers import create_session, search, upload
from selfies import closeup, jpeg

from faceserve.vision import quality


def _frontal(engine, photos) -> tuple[np.ndarray, np.ndarray]:
    """yaoming.jpg: one sharp frontal face."""
    pixels = cv2.imread(str(photos["yaoming"]))
    return pixels, engine.detect(pixels)[0][0]


def _small(selfie: np.ndarray, factor: float) -> np.ndarray:
    """The selfie shrunk by factor in the middle of a grey frame of the same size: the face far away."""
    small = cv2.resize(selfie, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    frame = np.full_like(selfie, 128)
    top, left = (frame.shape[0] - small.shape[0]) // 2, (frame.shape[1] - small.shape[1]) // 2
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    return frame


async def test_poor_probes_get_their_own_422(client, photos, engine):
    session_id = await create_session(client)
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    pixels, box = _frontal(engine, photos)
    selfie = closeup(pixels, box, 0.5)
    kernel = np.zeros((61, 61), dtype=np.float32)
    kernel[30, :] = 1 / 61  # a hand shaking sideways
    t1 = cv2.imread(str(photos["t1"]))
    three_quarter = engine.detect(t1)[0][3]  # t1.jpg's man at the top right looks past the camera
    poor = {
        "face_too_small": (_small(selfie, 0.05), "Move closer"),
        "face_blurred": (cv2.filter2D(selfie, -1, kernel), "Hold the phone still"),
        "face_turned": (closeup(t1, three_quarter, 0.5), "Look at the camera"),
    }
    for code, (frame, advice) in poor.items():
        status, body = await search(client, session_id, jpeg(frame))
        assert status == 422, (code, body)
        assert body["error"]["code"] == code
        assert body["error"]["message"].startswith(advice)
    status, body = await search(client, session_id, jpeg(selfie))
    assert status == 200 and len(body["data"]["matches"]) == 1  # the same selfie, undegraded, finds Yao


async def test_sharp_frontal_selfies_are_never_refused(client, photos, engine):
    """Every fill from 0.3 to 1.2, and the same selfie dim (an evening party), for yaoming.jpg and the frontal
    faces of t1.jpg."""
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    t1 = cv2.imread(str(photos["t1"]))
    boxes, landmarks = engine.detect(t1)
    frontal = [
        (t1, boxes[i]) for i in range(len(boxes))
        if quality.measure(landmarks[i], engine.align(t1, landmarks[i : i + 1])[0]).turn < 0.3
    ]
    assert len(frontal) >= 3
    for pixels, box in [_frontal(engine, photos), *frontal]:
        for fill in (0.3, 0.5, 0.7, 0.9, 1.2):
            for frame in (closeup(pixels, box, fill), (closeup(pixels, box, fill) * 0.3).astype(np.uint8)):
                status, body = await search(client, session_id, jpeg(frame))
                assert status == 200, (fill, body)


async def test_uploads_are_never_refused_for_quality(client, photos, engine):
    pixels, box = _frontal(engine, photos)
    blurred = cv2.GaussianBlur(closeup(pixels, box, 0.5), (0, 0), 20)
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("blurred.jpg", jpeg(blurred)))
    assert image["faces"] == 1
    status, body = await search(client, session_id, jpeg(blurred))
    assert status == 422 and body["error"]["code"] == "face_blurred"  # the same photo as a probe is refused


def test_the_measures_on_landmarks_alone():
    """Eye distance in the photo's pixels; the turn from where the nose falls between the eyes, roll aside."""
    crop = np.zeros((112, 112, 3), dtype=np.uint8)
    frontal = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], dtype=np.float32)
    measured = quality.measure(frontal, crop)
    assert measured.eye_distance == 40 and measured.turn == 0
    profile = frontal.copy()
    profile[2] = [40, 70]  # nose under the left eye
    assert quality.measure(profile, crop).turn == 1
    rolled = cv2.transform(frontal[None], cv2.getRotationMatrix2D((60, 60), 30, 1.0))[0]
    assert quality.measure(rolled, crop).turn < 0.01
    assert quality.measure(frontal, crop).sharpness == 0  # a blank crop has no detail
